//! The broker seam of the lead's spec, defined here until `switchboard-core`
//! carries it: [`BrokerEvents2`] is the spec's `BrokerEvents`, and
//! [`ControlMessage`] and [`BrokerHealth`] are its types. When core's land,
//! this file is deleted and its names are imported from core instead.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_protocol::{ChannelName, Publication};

/// What a broker hands a node. Calls for one channel may come out of order,
/// duplicated, or with gaps: the node's per-channel state drops duplicates,
/// reorders and fills gaps from history (never the broker).
pub trait BrokerEvents2: Send + Sync + 'static {
    /// A publication of a channel this node subscribed to.
    fn on_publication(&self, publication: Arc<Publication>);
    /// A push that is not a publication (join, leave) for the channel's local subscribers.
    fn on_push(&self, channel: &ChannelName, frame: Bytes);
    /// A cluster-wide control message (e.g. disconnect a user on every node).
    fn on_control(&self, message: ControlMessage);
    /// Publications may have been missed for every subscribed channel.
    fn on_resync(&self);
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Close every connection of `user` on every node with `code`/`reason`.
    Disconnect {
        user: String,
        code: u16,
        reason: String,
    },
}

/// The broker's own view of its health (for /health, /ready and metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BrokerHealth {
    pub ok: bool,
    /// Last probe round trip, if any.
    pub lag: Option<Duration>,
}
