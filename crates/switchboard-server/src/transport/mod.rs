//! The WebSocket transport: one task per client over the raw `TcpStream`.
//!
//! - `client_task`: the client's turn loop and where every bound is kept;
//! - `connection`: its read state (decoder, only while something is
//!   incomplete) and write state, and the close handshake;
//! - `write_queue`: what the socket has not taken yet, and how it is written;
//! - `rate_limit`: the per-client frame budget;
//! - `commands`: what text frames ask for;
//! - `echo`: the same connection code as an echo server, for Autobahn.

use std::cell::RefCell;

mod client_task;
mod commands;
mod connection;
mod echo;
mod rate_limit;
mod write_queue;

pub use client_task::{LiveTransport, start};
pub use echo::echo;
pub use rate_limit::{RateLimit, Verdict};

const SCRATCH_SIZE: usize = 64 * 1024;
/// The most bytes the write queue copies into one `send`; larger frames are
/// not worth the copy.
const GATHER_MAX: usize = 16 * 1024;

thread_local! {
    /// Reads land here first, and small frames are gathered here for one
    /// `send`: an idle client owns no buffer, only the state of a frame or
    /// message that arrived in part.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}
