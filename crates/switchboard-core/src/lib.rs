//! Switchboard's engine, free of HTTP, JWT, config files and network clients.
//!
//! # Layout
//! - [`node`]: [`Node`], the façade the transport and the HTTP API call.
//! - [`hub`]: the sharded channel → subscribers and user → clients indexes.
//! - [`client`]: [`ClientHandle`] and its [`Outbox`], bounded by bytes.
//! - [`namespace`]: per-namespace policy (publish, presence, history, subscribe rule).
//! - [`broker`]: the [`Broker`] role and [`MemoryBroker`]; every publication
//!   reaches local subscribers through [`BrokerEvents`], on one node as on many.
//! - `subscription`: a channel's stream on this node (position, held
//!   publications, joining subscribers): ordering, duplicates, gap filling
//!   and `lost`, once for every broker.
//! - [`history`]: the [`HistoryStore`] role and [`MemoryHistory`].
//! - [`cursor`]: the [`CursorStore`] role (per-device inbox acks) and
//!   [`MemoryCursors`].
//! - [`idempotency`]: keyed publishes answered once per window.
//! - [`presence`]: the [`PresenceStore`] role and [`MemoryPresence`].
//! - [`metrics`]: every metric the node exports.
//! - [`disconnect`]: why a client is closed, as a value.
//! - [`trace`]: the publish path's spans, for an OpenTelemetry exporter.

pub mod broker;
pub mod client;
pub mod cursor;
pub mod disconnect;
pub mod history;
pub mod hub;
pub mod idempotency;
pub mod metrics;
pub mod namespace;
pub mod node;
pub mod presence;
mod subscription;
pub mod trace;

pub use broker::{Broker, BrokerError, BrokerEvents, BrokerHealth, ControlMessage, MemoryBroker};
pub use client::{ClientClaims, ClientHandle, ClientId, ClientInit, Out, Outbox, PushError};
pub use cursor::{
    Cursor, CursorError, CursorLimits, CursorStore, DEFAULT_MAX_DEVICES, DeviceCursor,
    MemoryCursors,
};
pub use disconnect::Disconnect;
pub use history::{
    HistoryError, HistoryQuery, HistoryRead, HistoryStore, MemoryHistory, Retention, Sweep, Swept,
    new_epoch, select,
};
pub use hub::Hub;
pub use idempotency::{Idempotency, StoredKey};
pub use metrics::Metrics;
pub use namespace::{NamespacePolicy, Namespaces, SubscribeRule};
pub use node::{CommandError, Node, NodeOptions};
pub use presence::{MemoryPresence, PresenceEntry, PresenceStore};
pub use switchboard_protocol as protocol;
pub use switchboard_protocol::IdempotencyKey;
pub mod file_history;
pub use file_history::{FileHistory, SyncMode};
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
