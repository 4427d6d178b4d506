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
//! - `seam`: the broker seam's types until core carries them.
//! - `testing` (feature `testing`): a redis-server or a 3-master Redis
//!   Cluster on free ports, for tests.

mod broker;
mod config;
mod conn;
mod envelope;
mod health;
mod keys;
mod nodes;
mod presence;
mod pubsub;
mod scripts;
pub mod seam;
#[cfg(feature = "testing")]
pub mod testing;

pub use broker::RedisBroker;
pub use config::{RedisOptions, RedisUrl};
pub use nodes::{NodeInfo, RedisNodes};
pub use presence::RedisPresence;
pub use seam::{BrokerEvents2, BrokerHealth, ControlMessage};
