//! This node's subscriptions: pub/sub names taken and dropped as the node
//! asks, spread over a few lanes (connections), and what arrives on them
//! handed to the node.
//!
//! Each lane has one task that owns its subscription set, so subscribing,
//! unsubscribing and recovering never race: requests queued while a command
//! is in flight go out together as one SUBSCRIBE (or UNSUBSCRIBE). When the
//! lane's connection drops, the task resubscribes everything with backoff
//! and jitter, then tells the node to resync (it may have missed messages).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, RedisResult, Value};
use switchboard_protocol::ChannelName;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::RedisOptions;
use crate::conn::{self, Conn, Kind};
use crate::envelope::{self, Envelope};
use crate::health::Health;
use crate::keys;
use switchboard_core::{BrokerEvents, ControlMessage};

/// What every lane's receiving side shares with the broker.
pub(crate) struct Shared {
    pub events: OnceLock<Arc<dyn BrokerEvents>>,
    pub health: Health,
    /// This node's probe names, by lane.
    pub probes: Vec<String>,
}

impl Shared {
    /// One pub/sub message. Runs on the connection's reading task: it only
    /// decodes and hands over, never waits.
    fn deliver(&self, name: &[u8], payload: Bytes) {
        if let Some(lane) = self.probes.iter().position(|p| p.as_bytes() == name) {
            if let Some(sent) = envelope::decode_probe(&payload) {
                self.health.probe_back(lane, sent);
            }
            return;
        }
        let Some(events) = self.events.get() else {
            return;
        };
        if name == keys::CONTROL.as_bytes() {
            match serde_json::from_slice::<ControlMessage>(&payload) {
                Ok(message) => events.on_control(message),
                Err(e) => tracing::warn!(error = %e, "undecodable control message dropped"),
            }
            return;
        }
        let Some(channel) = keys::channel_of_pubsub(name).and_then(|c| ChannelName::parse(c).ok())
        else {
            tracing::warn!("message on an unknown pub/sub name dropped");
            return;
        };
        match envelope::decode(channel.clone(), payload) {
            Ok(Envelope::Publication(p)) => events.on_publication(p),
            Ok(Envelope::Push(frame)) => events.on_push(&channel, frame),
            Err(e) => tracing::warn!(%channel, error = %e, "message dropped"),
        }
    }
}

fn bytes(value: Value) -> Option<Bytes> {
    match value {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s)),
        _ => None,
    }
}

/// Names a server unsubscribed its lane from. Redis Cluster does that,
/// without closing the connection, when a slot moves to another shard
/// (failover, resharding); the lane's task tells those apart from its own
/// unsubscriptions (it forgets a name before unsubscribing it).
#[derive(Default)]
pub(crate) struct Unsubscribed {
    names: Mutex<Vec<Bytes>>,
    notify: Notify,
}

/// More than this many unread: the lane resubscribes everything anyway.
const UNSUBSCRIBED_MAX: usize = 4096;

/// What a lane's task and the connections it opens share.
pub(crate) struct LaneLink {
    pub lane: usize,
    pub shared: Arc<Shared>,
    /// The connection dropped.
    pub lost: Notify,
    pub unsubscribed: Unsubscribed,
    /// Which of the lane's connections is current: a replaced one's
    /// disconnection is not news.
    pub generation: AtomicU64,
    /// To open a fresh connection on a Cluster (see [`Worker::recover`]).
    pub options: RedisOptions,
}

impl LaneLink {
    /// A sink for the lane's next connection (which becomes the current one).
    pub fn next_sink(self: &Arc<Self>) -> PushSink {
        PushSink {
            link: self.clone(),
            generation: self.generation.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }
}

/// Where a lane's connection delivers its pushes.
pub(crate) struct PushSink {
    link: Arc<LaneLink>,
    generation: u64,
}

impl AsyncPushSender for PushSink {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let mut data = info.data.into_iter();
                if let (Some(name), Some(payload)) =
                    (data.next().and_then(bytes), data.next().and_then(bytes))
                {
                    self.link.shared.deliver(&name, payload);
                }
            }
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                let link = &self.link;
                if let Some(name) = info.data.into_iter().next().and_then(bytes) {
                    let mut names = link.unsubscribed.names.lock();
                    if names.len() < UNSUBSCRIBED_MAX {
                        names.push(name);
                    } else {
                        names.clear();
                        link.lost.notify_one();
                    }
                }
                link.unsubscribed.notify.notify_one();
            }
            PushKind::Disconnection => {
                let link = &self.link;
                if link.generation.load(Ordering::SeqCst) == self.generation {
                    link.shared.health.lane_down(link.lane, true);
                    link.lost.notify_one();
                }
            }
            _ => {}
        }
        Ok(())
    }
}

struct Op {
    subscribe: bool,
    name: String,
    kind: Kind,
    reply: oneshot::Sender<Result<(), String>>,
}

/// One subscription connection and the task that owns its set.
pub(crate) struct Lane {
    ops: mpsc::Sender<Op>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests one lane takes at once (one SUBSCRIBE of up to this many names).
const BATCH: usize = 512;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Kept short: while a lane waits, the other nodes may go on publishing,
/// and what this node's subscribers missed must still be in history when
/// the lane is back (a retry against a Redis that is away costs one
/// connection attempt). With jitter a lane retries within a second.
const BACKOFF_MAX: Duration = Duration::from_millis(500);

impl Lane {
    /// Opens the lane's connection and starts its task.
    pub async fn start(link: Arc<LaneLink>) -> RedisResult<Self> {
        let conn = conn::connect(&link.options, Some(link.next_sink())).await?;
        let (ops, rx) = mpsc::channel(4 * BATCH);
        let worker = Worker {
            link,
            conn,
            names: HashMap::new(),
            confirmations: HashMap::new(),
        };
        Ok(Lane {
            ops,
            task: tokio::spawn(worker.run(rx)),
        })
    }

    async fn ask(&self, subscribe: bool, name: String, kind: Kind) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op {
                subscribe,
                name,
                kind,
                reply,
            })
            .await
            .map_err(|_| "subscription task stopped".to_string())?;
        answer
            .await
            .map_err(|_| "subscription task stopped".to_string())?
    }

    /// Answers once Redis confirmed the subscription.
    pub async fn subscribe(&self, name: String, kind: Kind) -> Result<(), String> {
        self.ask(true, name, kind).await
    }

    pub async fn unsubscribe(&self, name: String, kind: Kind) -> Result<(), String> {
        self.ask(false, name, kind).await
    }
}

struct Worker {
    link: Arc<LaneLink>,
    conn: Conn,
    /// What this lane is subscribed to (and resubscribes after a loss).
    names: HashMap<String, Kind>,
    /// Unsubscribe confirmations still to come for our own unsubscribes: a
    /// name unsubscribed and at once subscribed again (subscribers leaving
    /// and joining) must not read its late confirmation as Redis dropping it.
    confirmations: HashMap<String, u32>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        loop {
            tokio::select! {
                biased;
                _ = self.link.lost.notified() => self.recover(&mut rx).await,
                _ = self.link.unsubscribed.notify.notified() => {
                    let names = std::mem::take(&mut *self.link.unsubscribed.names.lock());
                    let mut ours = false;
                    for n in names.iter().filter_map(|n| std::str::from_utf8(n).ok()) {
                        match self.confirmations.get_mut(n) {
                            Some(left) => {
                                *left -= 1;
                                if *left == 0 {
                                    self.confirmations.remove(n);
                                }
                            }
                            None => ours |= self.names.contains_key(n),
                        }
                    }
                    if ours {
                        tracing::warn!("redis dropped subscriptions (slot moved?); resubscribing");
                        self.link.shared.health.lane_down(self.link.lane, true);
                        self.recover(&mut rx).await;
                    }
                }
                op = rx.recv() => {
                    let Some(op) = op else { return };
                    let mut batch = vec![op];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    self.apply(batch).await;
                }
            }
        }
    }

    /// Sends a batch as runs of the same kind of request, in order, so a
    /// subscribe followed by an unsubscribe of one name ends unsubscribed.
    async fn apply(&mut self, mut batch: Vec<Op>) {
        while !batch.is_empty() {
            let subscribe = batch[0].subscribe;
            let split = batch
                .iter()
                .position(|op| op.subscribe != subscribe)
                .unwrap_or(batch.len());
            let rest = batch.split_off(split);
            let mut names: Vec<(String, Kind)> =
                batch.iter().map(|op| (op.name.clone(), op.kind)).collect();
            names.sort();
            names.dedup();
            let result = if subscribe {
                // Kept even when this fails: a caller that gives up
                // unsubscribes (the node does for a client's subscribe), and
                // one that cannot (a personal channel taken at connect) is
                // subscribed when the lane recovers, instead of never.
                let r = self.conn.subscribe(&names).await;
                self.names.extend(names);
                r
            } else {
                for (name, _) in &names {
                    self.names.remove(name);
                    *self.confirmations.entry(name.clone()).or_default() += 1;
                }
                let r = self.conn.unsubscribe(&names).await;
                if r.is_err() {
                    // No confirmation will come for these.
                    for (name, _) in &names {
                        if let Some(left) = self.confirmations.get_mut(name) {
                            *left -= 1;
                            if *left == 0 {
                                self.confirmations.remove(name);
                            }
                        }
                    }
                }
                r
            };
            let result = result.map_err(|e| e.to_string());
            for op in batch {
                let _ = op.reply.send(result.clone());
            }
            batch = rest;
        }
    }

    /// The connection dropped: resubscribe everything (retrying with backoff
    /// and jitter while Redis is away), then tell the node to resync.
    /// Requests that come meanwhile are answered at once: subscribing
    /// fails (Redis cannot confirm it), unsubscribing just forgets the name.
    async fn recover(&mut self, rx: &mut mpsc::Receiver<Op>) {
        // The old connection's confirmations will not come.
        self.confirmations.clear();
        let mut delay = BACKOFF_MIN;
        loop {
            let wait = delay + delay.mul_f64(fastrand::f64());
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    op = rx.recv() => {
                        let Some(op) = op else { return };
                        if op.subscribe {
                            // Taken when the lane recovers (see `apply`).
                            self.names.insert(op.name, op.kind);
                            let _ = op.reply.send(Err("redis connection lost; reconnecting".into()));
                        } else {
                            self.names.remove(&op.name);
                            let _ = op.reply.send(Ok(()));
                        }
                    }
                }
            }
            // A Cluster connection may route by a slot map from before the
            // change (a demoted master still accepts SSUBSCRIBE, then never
            // delivers): a fresh connection reads the map anew. Dropping the
            // old one drops its subscriptions with it.
            if self.conn.is_cluster() {
                match conn::connect(&self.link.options, Some(self.link.next_sink())).await {
                    Ok(fresh) => self.conn = fresh,
                    Err(e) => {
                        tracing::warn!(error = %e, "reconnecting to the cluster failed; retrying");
                        delay = (delay * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let names: Vec<(String, Kind)> =
                self.names.iter().map(|(n, k)| (n.clone(), *k)).collect();
            let mut ok = true;
            for chunk in names.chunks(BATCH) {
                if let Err(e) = self.conn.subscribe(chunk).await {
                    tracing::warn!(error = %e, "resubscribing failed; retrying");
                    ok = false;
                    break;
                }
            }
            if ok {
                break;
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
        tracing::info!(
            names = self.names.len(),
            "pub/sub connection back, resubscribed"
        );
        self.link.shared.health.lane_down(self.link.lane, false);
        if let Some(events) = self.link.shared.events.get() {
            events.on_resync();
        }
    }
}
