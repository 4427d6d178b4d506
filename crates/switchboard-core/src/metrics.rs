//! Every metric a node exports (PROTOCOL §6), named
//! `switchboard_<subject>_<unit>`. No user or channel is ever a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of `switchboard_handshakes_rejected_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Label of `switchboard_disconnects_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: u16,
}

/// The node's metrics; each is a lock-free atomic.
#[derive(Debug)]
pub struct Metrics {
    pub connections: Gauge,
    pub subscriptions: Gauge,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub publications: Counter,
    pub deliveries: Counter,
    pub publications_stored: Counter,
    pub publications_recovered: Counter,
    /// History reads that filled a hole in a channel's stream on this node.
    pub gap_fills: Counter,
    /// `lost` pushes: holes history no longer covered (PROTOCOL §9).
    pub lost: Counter,
    pub fanout_seconds: Histogram,
    pub slow_clients: Counter,
    pub dropped_deliveries: Counter,
    pub reaped: Counter,
    pub handshakes_rejected: Family<ReasonLabel, Counter>,
    pub disconnects: Family<CodeLabel, Counter>,
    pub open_fds: Gauge,
    /// Channels whose history the store keeps, as of the last sweep pass.
    pub history_channels: Gauge,
}

/// Every reason a handshake is refused, so each series exists from the start.
pub const REJECT_REASONS: &[&str] = &[
    "not_websocket",
    "draining",
    "origin",
    "no_token",
    "invalid_token",
    "expired",
    "not_yet_valid",
    "audience_or_issuer",
    "unknown_key",
    "keys_unavailable",
    "node_full",
    "user_full",
    "bad_device",
];

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            connections: Gauge::default(),
            subscriptions: Gauge::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            publications: Counter::default(),
            deliveries: Counter::default(),
            publications_stored: Counter::default(),
            publications_recovered: Counter::default(),
            gap_fills: Counter::default(),
            lost: Counter::default(),
            // 10 µs .. ~5 s
            fanout_seconds: Histogram::new(exponential_buckets(0.00001, 2.5, 15)),
            slow_clients: Counter::default(),
            dropped_deliveries: Counter::default(),
            reaped: Counter::default(),
            handshakes_rejected: Family::default(),
            disconnects: Family::default(),
            open_fds: Gauge::default(),
            history_channels: Gauge::default(),
        };
        for reason in REJECT_REASONS {
            let _ = m.handshakes_rejected.get_or_create(&ReasonLabel { reason });
        }
        m
    }
}

impl Metrics {
    /// A registry that reads these metrics (they are shared, not copied).
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("switchboard");
        r.register(
            "connections",
            "Clients connected to this node",
            self.connections.clone(),
        );
        r.register(
            "subscriptions",
            "Channel subscriptions on this node",
            self.subscriptions.clone(),
        );
        r.register(
            "messages_in",
            "Frames received from clients",
            self.messages_in.clone(),
        );
        r.register(
            "messages_out",
            "Frames queued to clients",
            self.messages_out.clone(),
        );
        r.register(
            "publications",
            "Publications delivered through this node",
            self.publications.clone(),
        );
        r.register(
            "deliveries",
            "Publications queued to this node's subscribers (one per subscriber)",
            self.deliveries.clone(),
        );
        r.register(
            "publications_stored",
            "Publications kept in history",
            self.publications_stored.clone(),
        );
        r.register(
            "publications_recovered",
            "Publications replayed to clients on subscribe with since",
            self.publications_recovered.clone(),
        );
        r.register(
            "gap_fills",
            "History reads that filled a hole in a channel's delivery on this node",
            self.gap_fills.clone(),
        );
        r.register(
            "lost",
            "lost pushes: holes in a channel's delivery that history no longer covered",
            self.lost.clone(),
        );
        r.register(
            "fanout_seconds",
            "Time to queue one publication to every local subscriber",
            self.fanout_seconds.clone(),
        );
        r.register(
            "slow_clients",
            "Clients closed 1013 because their send queue overflowed",
            self.slow_clients.clone(),
        );
        r.register(
            "dropped_deliveries",
            "Frames discarded with slow clients' queues (publications and pushes)",
            self.dropped_deliveries.clone(),
        );
        r.register(
            "reaped",
            "Clients closed because no heartbeat arrived in time",
            self.reaped.clone(),
        );
        r.register(
            "handshakes_rejected",
            "WebSocket handshakes refused before the upgrade, by reason",
            self.handshakes_rejected.clone(),
        );
        r.register(
            "disconnects",
            "Clients closed by the server, by close code",
            self.disconnects.clone(),
        );
        r.register(
            "open_fds",
            "Open file descriptors of the process",
            self.open_fds.clone(),
        );
        r.register(
            "history_channels",
            "Channels whose history the store keeps (updated by each sweep pass)",
            self.history_channels.clone(),
        );
        r
    }

    pub fn reject(&self, reason: &'static str) {
        self.handshakes_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}
