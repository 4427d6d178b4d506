//! Switchboard on Redis: any number of nodes behind a load balancer share
//! channels, history, presence and control messages through one Redis or a
//! Redis Cluster (PROTOCOL §9).
//!
//! # Layout
//! - [`RedisBroker`] (`broker`): publish (one Lua script per channel: next
//!   offset, stream append, send), history from the stream, subscriptions,
//!   health probe.
//! - `pubsub`: subscription lanes, batching, reconnect and resubscribe.
//! - [`RedisPresence`] (`presence`): per-channel presence, online users,
//!   per-user connection counts, refreshed by their node and expiring with it.
//! - [`RedisNodes`] (`nodes`): node announcements.
//! - `keys`: every key and pub/sub name. `lua/`: the scripts.
//! - `testing` (feature `testing`): a redis-server or a 3-master Redis
//!   Cluster on free ports, for tests.

mod admit;
mod broker;
mod config;
mod conn;
mod cursors;
mod envelope;
mod health;
mod keys;
mod nodes;
mod presence;
mod pubsub;
mod scripts;
#[cfg(feature = "testing")]
pub mod testing;

pub use broker::RedisBroker;
pub use config::{RedisOptions, RedisUrl};
pub use cursors::RedisCursors;
pub use nodes::{NodeInfo, RedisNodes};
pub use presence::RedisPresence;
// The seam's types are core's; re-exported so callers of the broker need
// not name both crates.
pub use switchboard_core::{BrokerHealth, ControlMessage};
