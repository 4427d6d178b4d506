//! `GET /api/admin/stats`: this node's counters as a `text/event-stream`, one
//! `event: stats` a second, for the admin page.
//!
//! A task samples and sends each event into a channel of one; the response
//! body takes from it whenever hyper asks, which it does only while the
//! reader takes bytes. So nothing queues for a page that stops reading: its
//! sample waits, and after [`STALL`] its connection is ended. The stream
//! also ends when the page goes (the body is dropped), when the node drains,
//! and after [`LIFETIME`] (the page reconnects): a stalled reader holds one
//! of the [`super::MAX_STREAMS`] slots for that long at most.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, header};
use http_body::Frame;
use serde::Serialize;
use switchboard_core::metrics::{REJECT_REASONS, ReasonLabel};
use tokio::sync::mpsc;

use super::{StreamSlot, StreamSlots};
use crate::backends::NodeSummary;
use crate::http::{AppState, SharedState, unavailable};
use crate::sse::ConnHandle;

/// One event each this often.
const EVERY: Duration = Duration::from_secs(1);
/// A sample not taken by the reader for this long ends its connection.
const STALL: Duration = Duration::from_secs(15);
/// A stream ends after this long; the page opens the next one.
const LIFETIME: Duration = Duration::from_secs(300);
/// Channels listed by local subscribers.
const TOP_CHANNELS: usize = 10;

/// One event's data.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// The node that answers (the counters are this node's).
    pub node: String,
    pub uptime_s: u64,
    pub draining: bool,
    pub connections: usize,
    pub subscriptions: usize,
    /// Channels with a local subscriber, personal channels not counted.
    pub channels: usize,
    pub publications_total: u64,
    pub deliveries_total: u64,
    /// Since this stream's previous event (0 in the first).
    pub publications_per_s: f64,
    pub deliveries_per_s: f64,
    /// Clients closed 1013 because their send queue overflowed.
    pub slow_consumers_total: u64,
    pub handshakes_rejected_total: u64,
    /// The reasons seen so far, with their counts.
    pub handshakes_rejected: BTreeMap<&'static str, u64>,
    pub broker: Broker,
    pub top_channels: Vec<TopChannel>,
    /// Every live node, as `/api/info` lists them.
    pub nodes: Vec<NodeSummary>,
    /// Why `nodes` holds only this node, when the list could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Broker {
    pub kind: &'static str,
    pub ok: bool,
    /// The last probe's round trip through the broker (Redis), if any.
    pub lag_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct TopChannel {
    pub channel: String,
    pub subscribers: usize,
}

/// The counters a rate is taken from.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    publications: u64,
    deliveries: u64,
}

fn per_second(now: u64, then: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    // Rounded to a tenth: the page shows it, nothing computes with it.
    (now.saturating_sub(then) as f64 / seconds * 10.0).round() / 10.0
}

fn this_node(st: &AppState) -> NodeSummary {
    let node = &st.node;
    NodeSummary {
        name: node.name().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        connections: node.hub.connection_count() as u64,
        subscriptions: node.hub.subscription_count() as u64,
    }
}

/// Reads every figure once; `last` is the previous event's sample.
async fn sample(st: &AppState, last: Option<Sample>) -> (Stats, Sample) {
    let node = &st.node;
    let m = &node.metrics;
    let now = Sample {
        at: Instant::now(),
        publications: m.publications.get(),
        deliveries: m.deliveries.get(),
    };
    let (publications_per_s, deliveries_per_s) = match last {
        Some(l) => {
            let s = now.at.duration_since(l.at).as_secs_f64();
            (
                per_second(now.publications, l.publications, s),
                per_second(now.deliveries, l.deliveries, s),
            )
        }
        None => (0.0, 0.0),
    };
    let mut rejected = BTreeMap::new();
    for &reason in REJECT_REASONS {
        let n = m
            .handshakes_rejected
            .get_or_create(&ReasonLabel { reason })
            .get();
        if n > 0 {
            rejected.insert(reason, n);
        }
    }
    let health = node.broker_health();
    let (nodes, nodes_error) = match st.cluster.nodes(node).await {
        None => (vec![this_node(st)], None),
        Some(Ok(nodes)) => (nodes, None),
        Some(Err(e)) => (vec![this_node(st)], Some(e)),
    };
    let stats = Stats {
        node: node.name().to_string(),
        uptime_s: node.uptime().as_secs(),
        draining: st.draining.load(Ordering::Acquire),
        connections: node.hub.connection_count(),
        subscriptions: node.hub.subscription_count(),
        channels: node.hub.channel_count(),
        publications_total: now.publications,
        deliveries_total: now.deliveries,
        publications_per_s,
        deliveries_per_s,
        slow_consumers_total: m.slow_clients.get(),
        handshakes_rejected_total: rejected.values().sum(),
        handshakes_rejected: rejected,
        broker: Broker {
            kind: st.cfg.broker.kind.as_str(),
            ok: health.ok,
            lag_ms: health.lag.map(|l| l.as_secs_f64() * 1000.0),
        },
        top_channels: node
            .hub
            .top_channels(TOP_CHANNELS)
            .into_iter()
            .map(|(c, n)| TopChannel {
                channel: c.as_str().to_string(),
                subscribers: n,
            })
            .collect(),
        nodes,
        nodes_error,
    };
    (stats, now)
}

/// `event: stats` with the figures as one `data` line (JSON has no raw
/// newline).
fn event(stats: &Stats) -> Bytes {
    let json = serde_json::to_string(stats).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: stats\ndata: {json}\n\n"))
}

/// The response body: whatever the feed sent, when hyper asks for it.
struct StatsBody {
    rx: mpsc::Receiver<Bytes>,
    _slot: StreamSlot,
}

impl http_body::Body for StatsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|e| e.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Samples once a second into `tx` until the page goes, stops reading, the
/// node drains or the stream's lifetime is over.
async fn feed(st: SharedState, tx: mpsc::Sender<Bytes>, conn: Option<Arc<ConnHandle>>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tx.closed() => return,
        }
        if st.draining.load(Ordering::Acquire) || started.elapsed() >= LIFETIME {
            break;
        }
        let (stats, now) = sample(&st, last).await;
        last = Some(now);
        match tokio::time::timeout(STALL, tx.send(event(&stats))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return, // the page went
            Err(_) => break,      // the page stopped reading
        }
    }
    // The body ends once hyper takes what is left; a connection that
    // takes nothing more is never asked again, so it is ended here.
    drop(tx);
    drop(st);
    tokio::time::sleep(STALL).await;
    if let Some(conn) = conn {
        conn.kill();
    }
}

pub async fn open(
    State(st): State<SharedState>,
    Extension(slots): Extension<Arc<StreamSlots>>,
    req: Request,
) -> Response {
    let Some(slot) = slots.take() else {
        return unavailable(
            "limit_exceeded",
            "too many admin streams open on this node; close another admin page",
            5,
        );
    };
    let conn = req.extensions().get::<Arc<ConnHandle>>().cloned();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(feed(st, tx, conn));
    let mut r = Response::new(Body::new(StatsBody { rx, _slot: slot }));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // The connection ends with the stream, so ending it ends nothing else.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert_eq!(per_second(30, 10, 2.0), 10.0);
        assert_eq!(per_second(5, 10, 1.0), 0.0, "a counter never goes back");
        assert_eq!(per_second(10, 0, 0.0), 0.0);
        assert_eq!(per_second(1, 0, 3.0), 0.3);
    }

    #[test]
    fn an_event_is_one_data_line() {
        let stats = Stats {
            node: "n1".into(),
            uptime_s: 1,
            draining: false,
            connections: 2,
            subscriptions: 3,
            channels: 1,
            publications_total: 4,
            deliveries_total: 5,
            publications_per_s: 0.0,
            deliveries_per_s: 0.0,
            slow_consumers_total: 0,
            handshakes_rejected_total: 0,
            handshakes_rejected: BTreeMap::new(),
            broker: Broker {
                kind: "memory",
                ok: true,
                lag_ms: None,
            },
            top_channels: vec![TopChannel {
                channel: "chat:a\nb".into(),
                subscribers: 1,
            }],
            nodes: vec![],
            nodes_error: None,
        };
        let e = String::from_utf8(event(&stats).to_vec()).expect("utf-8");
        let lines: Vec<&str> = e.trim_end().lines().collect();
        assert_eq!(lines.len(), 2, "{e}");
        assert_eq!(lines[0], "event: stats");
        let v: serde_json::Value =
            serde_json::from_str(lines[1].strip_prefix("data: ").expect("data")).expect("json");
        assert_eq!(v["connections"], 2);
        assert!(v.get("nodes_error").is_none());
    }
}
