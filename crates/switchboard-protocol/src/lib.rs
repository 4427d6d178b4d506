//! Switchboard's wire contract (see `PROTOCOL.md`): the commands a client sends,
//! the frames the server pushes, channel names, and their JSON codec.
//!
//! This crate does no I/O and owns no runtime, so every parser of client input in
//! it can be fuzzed and property-tested on its own.
//!
//! # Layout
//! - [`channel`]: [`ChannelName`] validation and the `channels` claim patterns.
//! - [`command`]: decoding a client's text frame into a [`Command`].
//! - [`frame`]: encoding replies and pushes into the bytes that go on the wire.
//! - [`idempotency`]: the `idempotency_key` of a publish.

pub mod channel;
pub mod command;
pub mod frame;
pub mod idempotency;
pub mod websocket;

pub use channel::{ChannelName, ChannelNameError, pattern_matches};
pub use command::{Command, CommandError, Op, StreamPosition, decode_command, is_portable_json};
pub use frame::{ErrorCode, Publication};
pub use idempotency::{IdempotencyKey, IdempotencyKeyError};
