//! [`RedisBroker`]: a channel's offsets, epoch and history in Redis, its
//! publications sent to every node through Redis pub/sub (sharded on a
//! Cluster).
//!
//! A publish is one script on the channel's slot (next offset, stream
//! append, send), so every node sees one offset sequence per channel. What
//! a node receives may still arrive out of order across a reconnection, or
//! not at all while its subscription was down: the node orders, drops
//! duplicates and fills gaps from [`RedisBroker::history`], and a lost
//! connection ends with [`BrokerEvents::on_resync`].

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use switchboard_core::history::HistoryError;
use switchboard_core::history::{new_epoch, select};
use switchboard_core::{BrokerError, HistoryQuery, HistoryRead, Idempotency, Retention};
use switchboard_protocol::{ChannelName, Publication, StreamPosition};
use tokio::sync::Notify;

use crate::admit::Admitted;
use crate::config::RedisOptions;
use crate::conn::{self, Conn, Kind};
use crate::envelope;
use crate::health::Health;
use crate::keys;
use crate::pubsub::{Lane, LaneLink, PushSink, Shared, Unsubscribed};
use crate::scripts::Scripts;
use switchboard_core::{Broker, BrokerEvents, BrokerHealth, ControlMessage};

/// The Redis broker of one node.
pub struct RedisBroker {
    inner: Arc<Inner>,
    probe: tokio::task::JoinHandle<()>,
}

struct Inner {
    options: RedisOptions,
    /// Channels recently counted against `history_max_channels`.
    admitted: Admitted,
    /// Commands (publish, history, probe): one multiplexed connection.
    conn: Conn,
    lanes: Vec<Lane>,
    shared: Arc<Shared>,
    scripts: Scripts,
    /// Names each unkeyed publish when `min_replicas` is set (see
    /// `publish_once`): this run's random id and a counter.
    requests: RequestIds,
}

/// Ids for publishes the caller gave no key: unique across restarts of a
/// node with the same name, since a reused id would answer a new publication
/// with an old one's position.
struct RequestIds {
    run: Arc<str>,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        RequestIds {
            run: new_epoch(),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn next(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// How long a publish's own request id is kept: past any retry of it by the
/// Cluster client (its retries end within a few response timeouts).
const REQUEST_WINDOW: Duration = Duration::from_secs(60);

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &"<redacted>")
            .field("node", &self.inner.options.node)
            .field("lanes", &self.inner.lanes.len())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

pub(crate) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Redis refuses expiries past about 2^63 ms; no window needs more than a year.
const MAX_WINDOW_MS: u64 = 366 * 24 * 3600 * 1000;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Retention as the scripts read it: size 0 or ttl 0 keeps nothing.
fn retention_args(retention: Retention) -> (usize, u64) {
    if retention.keeps_nothing() {
        (0, 0)
    } else {
        (retention.size, millis(retention.ttl).max(1))
    }
}

impl RedisBroker {
    /// Connects (commands and pub/sub), subscribes this node's probe and the
    /// control channel, and starts probing. Fails when Redis cannot be reached.
    pub async fn connect(options: RedisOptions) -> Result<Self, BrokerError> {
        let conn = conn::connect(&options, None::<PushSink>)
            .await
            .map_err(unavailable)?;
        let lanes_wanted = if conn.is_cluster() {
            // One cluster connection holds one connection per shard.
            1
        } else {
            options.pubsub_connections.max(1)
        };
        let shared = Arc::new(Shared {
            events: OnceLock::new(),
            health: Health::new(lanes_wanted, options.stall_timeout),
            probes: (0..lanes_wanted)
                .map(|lane| keys::probe(&options.node, lane))
                .collect(),
        });
        let mut lanes = Vec::with_capacity(lanes_wanted);
        for lane in 0..lanes_wanted {
            let link = Arc::new(LaneLink {
                lane,
                shared: shared.clone(),
                lost: Notify::new(),
                unsubscribed: Unsubscribed::default(),
                generation: AtomicU64::new(0),
                options: options.clone(),
            });
            lanes.push(Lane::start(link).await.map_err(unavailable)?);
        }
        for (lane, name) in lanes.iter().zip(&shared.probes) {
            lane.subscribe(name.clone(), Kind::Sharded)
                .await
                .map_err(unavailable)?;
        }
        lanes[0]
            .subscribe(keys::CONTROL.to_string(), Kind::Plain)
            .await
            .map_err(unavailable)?;
        let inner = Arc::new(Inner {
            options,
            admitted: Admitted::default(),
            conn,
            lanes,
            shared,
            scripts: Scripts::new(),
            requests: RequestIds::new(),
        });
        let probe = tokio::spawn(probe(Arc::downgrade(&inner)));
        Ok(RedisBroker { inner, probe })
    }

    /// Binds the node the broker delivers to. Called once, before anything else.
    pub fn bind(&self, events: Arc<dyn BrokerEvents>) {
        let _ = self.inner.shared.events.set(events);
    }

    fn lane(&self, channel: &ChannelName) -> &Lane {
        let mut h = DefaultHasher::new();
        channel.as_str().hash(&mut h);
        let lanes = &self.inner.lanes;
        &lanes[(h.finish() % lanes.len() as u64) as usize]
    }

    /// Starts delivering `channel`'s publications and pushes to this node;
    /// answers once Redis confirmed the subscription, so every publication
    /// stored after it returns reaches `on_publication`. Idempotent.
    pub async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        self.lane(channel)
            .subscribe(keys::pubsub(channel), Kind::Sharded)
            .await
            .map_err(unavailable)
    }

    /// Stops it (the node's last local subscriber left).
    pub async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        self.lane(channel)
            .unsubscribe(keys::pubsub(channel), Kind::Sharded)
            .await
            .map_err(unavailable)
    }

    async fn timed<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        let result = tokio::time::timeout(self.inner.options.response_timeout, call)
            .await
            .map_err(|_| unavailable(conn::timed_out("command")))?;
        self.inner.shared.health.reachable(result.is_ok());
        result.map_err(unavailable)
    }

    /// Assigns the next offset, stores as `retention` says and sends the
    /// publication to every subscribed node, in one script. Answers only once
    /// Redis ran it (with AOF `appendfsync always`, once it is on disk);
    /// `Unavailable` when Redis cannot take it.
    pub async fn publish(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
    ) -> Result<StreamPosition, BrokerError> {
        self.publish_once(channel, data, from, retention, None)
            .await
    }

    /// [`publish`](Self::publish) with an idempotency key, claimed in the
    /// same script as the offset, so duplicates on any node publish once: a
    /// key seen within its window answers the first position.
    pub async fn publish_once(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
        idempotency: Option<&Idempotency>,
    ) -> Result<StreamPosition, BrokerError> {
        let (size, ttl) = retention_args(retention);
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        if inner.admitted.must_ask(channel, retention) {
            self.admit(channel, retention).await?;
        }
        let mut call = inner.scripts.publish.key(keys::stream(channel));
        call.key(keys::meta(channel))
            .arg(size)
            .arg(ttl)
            .arg(millis(inner.options.meta_ttl).max(ttl))
            .arg(&*new_epoch())
            .arg(from.as_deref().unwrap_or(""))
            .arg(if from.is_some() { "1" } else { "0" })
            .arg(&data[..])
            .arg(keys::pubsub(channel))
            .arg(conn.publish_command(Kind::Sharded));
        if let Some(idem) = idempotency {
            call.key(keys::idempotency(channel, &idem.key))
                .arg(millis(idem.window).clamp(1, MAX_WINDOW_MS));
        } else if inner.options.min_replicas > 0 {
            // A master that dies after running the script but before its
            // answer: the Cluster client retries the same call on the
            // promoted replica, which already holds the publication (and
            // this id, replicated with it), so the retry answers the first
            // position instead of storing it twice.
            let id = inner.requests.next();
            call.key(keys::request(channel, &inner.requests.run, id))
                .arg(millis(REQUEST_WINDOW));
        }
        let (offset, epoch): (u64, String) = self.timed(call.invoke_async(&mut conn)).await?;
        let wanted = inner.options.min_replicas;
        if wanted > 0 {
            // Sent after the script on the same connection: it covers it.
            let meta = keys::meta(channel);
            let wait = conn.wait_replicas(&meta, wanted, inner.options.replica_timeout);
            let reached = tokio::time::timeout(
                inner.options.replica_timeout + inner.options.response_timeout,
                wait,
            )
            .await
            .map_err(|_| unavailable(conn::timed_out("wait for replicas")))?
            .map_err(unavailable)?;
            if reached < wanted {
                // Stored on the master only: a crash now would lose it, so
                // it is not acknowledged (a retry may deliver it twice).
                return Err(unavailable(format!(
                    "publication reached {reached} of {wanted} replicas in time"
                )));
            }
        }
        Ok(StreamPosition { offset, epoch })
    }

    /// Counts `channel` against its namespace's `history_max_channels`
    /// across every node (see `admit`); refused past the cap.
    async fn admit(&self, channel: &ChannelName, retention: Retention) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let namespace = channel.namespace();
        let mut call = inner
            .scripts
            .history_admit
            .key(keys::history_channels(namespace));
        call.arg(channel.as_str())
            .arg(millis(retention.ttl).max(1))
            .arg(retention.max_channels);
        let counted: i64 = self.timed(call.invoke_async(&mut conn)).await?;
        if counted == 0 {
            return Err(BrokerError::History(HistoryError::ChannelLimit(
                namespace.to_string(),
            )));
        }
        inner.admitted.admitted(channel, retention);
        Ok(())
    }

    /// A non-publication push to the channel's subscribers on every node.
    pub async fn push(&self, channel: &ChannelName, frame: Bytes) -> Result<(), BrokerError> {
        let mut conn = self.inner.conn.clone();
        let payload = envelope::push(&frame);
        self.timed(conn.publish(Kind::Sharded, &keys::pubsub(channel), payload))
            .await
    }

    /// A control message to every node (this one included).
    pub async fn control(&self, message: ControlMessage) -> Result<(), BrokerError> {
        let payload = serde_json::to_vec(&message).map_err(unavailable)?;
        let mut conn = self.inner.conn.clone();
        self.timed(conn.publish(Kind::Plain, keys::CONTROL, payload))
            .await
    }

    /// Stored publications, with `MemoryHistory`'s rules: `recovered` only
    /// for the whole range after `since` in the same epoch.
    pub async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, BrokerError> {
        let (size, ttl) = retention_args(retention);
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let mut call = inner.scripts.history.key(keys::stream(channel));
        call.key(keys::meta(channel))
            .arg(size)
            .arg(ttl)
            .arg(millis(inner.options.meta_ttl).max(ttl))
            .arg(&*new_epoch())
            .arg(
                query
                    .since
                    .as_ref()
                    .map(|s| s.offset.to_string())
                    .unwrap_or_default(),
            )
            .arg(query.limit.map(|l| l.to_string()).unwrap_or_default());
        let values: Vec<Value> = self.timed(call.invoke_async(&mut conn)).await?;
        let (offset, epoch, stored) = parse_history(channel, values).map_err(unavailable)?;
        Ok(select(stored.into_iter(), offset, &epoch, query))
    }

    pub fn health(&self) -> BrokerHealth {
        self.inner.shared.health.get()
    }

    /// Periodic housekeeping: Redis expires what is idle by itself.
    pub fn sweep(&self, _idle: Duration) {}
}

/// Core's seam, by delegation: the inherent methods are the implementation
/// (and what this crate's tests call).
#[async_trait::async_trait]
impl Broker for RedisBroker {
    fn bind(&self, events: Arc<dyn BrokerEvents>) {
        RedisBroker::bind(self, events);
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        RedisBroker::subscribe(self, channel).await
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        RedisBroker::unsubscribe(self, channel).await
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
        idempotency: Option<&Idempotency>,
    ) -> Result<StreamPosition, BrokerError> {
        RedisBroker::publish_once(self, channel, data, from, retention, idempotency).await
    }

    async fn push(&self, channel: &ChannelName, frame: Bytes) -> Result<(), BrokerError> {
        RedisBroker::push(self, channel, frame).await
    }

    async fn control(&self, message: ControlMessage) -> Result<(), BrokerError> {
        RedisBroker::control(self, message).await
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, BrokerError> {
        RedisBroker::history(self, channel, query, retention).await
    }

    fn health(&self) -> BrokerHealth {
        RedisBroker::health(self)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected history reply from redis")]
struct BadReply;

fn text(v: Value) -> Result<Vec<u8>, BadReply> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        _ => Err(BadReply),
    }
}

type Stored = (u64, Arc<str>, Vec<Arc<Publication>>);

fn parse_history(channel: &ChannelName, values: Vec<Value>) -> Result<Stored, BadReply> {
    let mut it = values.into_iter();
    let offset = match it.next() {
        Some(Value::Int(i)) => u64::try_from(i).map_err(|_| BadReply)?,
        _ => return Err(BadReply),
    };
    let epoch: Arc<str> = String::from_utf8(text(it.next().ok_or(BadReply)?)?)
        .map_err(|_| BadReply)?
        .into();
    let mut stored = Vec::with_capacity(it.len() / 3);
    while let Some(id) = it.next() {
        let id = String::from_utf8(text(id)?).map_err(|_| BadReply)?;
        let n: u64 = id
            .strip_prefix("0-")
            .and_then(|n| n.parse().ok())
            .ok_or(BadReply)?;
        let data = Bytes::from(text(it.next().ok_or(BadReply)?)?);
        let from = text(it.next().ok_or(BadReply)?)?;
        let (from, rest) = envelope::decode_from(&from).map_err(|_| BadReply)?;
        if !rest.is_empty() {
            return Err(BadReply);
        }
        stored.push(Arc::new(Publication::new(
            channel.clone(),
            n,
            epoch.clone(),
            data,
            from,
        )));
    }
    Ok((offset, epoch, stored))
}

/// Publishes this node's probe on every lane each interval; the lanes mark
/// it back on receipt (see [`Health`]).
async fn probe(inner: Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(i) => i.options.probe_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let sent = inner.shared.health.now_micros();
        let calls = inner.shared.probes.iter().map(|name| {
            let mut conn = inner.conn.clone();
            let mut call = inner.scripts.probe.key(name);
            call.arg(conn.publish_command(Kind::Sharded))
                .arg(envelope::probe(sent));
            async move { call.invoke_async::<i64>(&mut conn).await }
        });
        let all = tokio::time::timeout(
            inner.options.response_timeout,
            futures_util::future::join_all(calls),
        )
        .await;
        let ok = matches!(&all, Ok(results) if results.iter().all(Result::is_ok));
        inner.shared.health.reachable(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only if every call's future is `Send`, as core's
    /// `#[async_trait] Broker` needs.
    #[allow(dead_code)]
    fn futures_are_send(b: &RedisBroker, c: &ChannelName, q: &HistoryQuery) {
        fn send<T: Send>(_: T) {}
        fn shared<T: Send + Sync + 'static>() {}
        shared::<RedisBroker>();
        send(b.subscribe(c));
        send(b.unsubscribe(c));
        send(b.publish(c, Bytes::new(), None, Retention::default()));
        send(b.push(c, Bytes::new()));
        send(b.control(ControlMessage::Disconnect {
            user: String::new(),
            code: 4000,
            reason: String::new(),
        }));
        send(b.history(c, q, Retention::default()));
    }

    #[test]
    fn history_replies_parse_or_fail_cleanly() {
        let c = ChannelName::parse("a").expect("valid");
        let ok = vec![
            Value::Int(4),
            Value::BulkString(b"e1".to_vec()),
            Value::BulkString(b"0-4".to_vec()),
            Value::BulkString(b"{}".to_vec()),
            Value::BulkString(b"3 bob".to_vec()),
        ];
        let (offset, epoch, stored) = parse_history(&c, ok).expect("parses");
        assert_eq!((offset, &*epoch), (4, "e1"));
        assert_eq!(stored[0].offset, 4);
        assert_eq!(stored[0].from.as_deref(), Some("bob"));
        for bad in [
            vec![],
            vec![Value::Int(-1), Value::BulkString(b"e".to_vec())],
            vec![Value::Int(1), Value::Nil],
            vec![
                Value::Int(1),
                Value::BulkString(b"e".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ],
        ] {
            assert!(parse_history(&c, bad).is_err());
        }
    }
}
