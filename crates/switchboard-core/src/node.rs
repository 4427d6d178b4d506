//! [`Node`]: the façade a transport and the HTTP API call. It owns the hub and
//! the role implementations, and is the [`BrokerEvents`] sink of its broker.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use switchboard_protocol::frame::{self, ErrorCode};
use switchboard_protocol::{ChannelName, IdempotencyKey, Op, Publication, StreamPosition};
use tokio::time::Instant;

use crate::broker::{Broker, BrokerError, BrokerEvents, ControlMessage};
use crate::client::{ClientClaims, ClientHandle, ClientInit};
use crate::cursor::{CursorStore, MemoryCursors};
use crate::disconnect::Disconnect;
use crate::history::{HistoryError, HistoryQuery, HistoryRead, Sweep};
use crate::hub::{AddError, Hub};
use crate::idempotency::Idempotency;
use crate::metrics::{CodeLabel, Metrics};
use crate::namespace::Namespaces;
use crate::presence::{PresenceEntry, PresenceStore};

mod cluster;
mod inbox;
mod subscribe;

pub use inbox::InboxState;

pub use subscribe::REORDER_WINDOW;

/// Runs `fut` on the current runtime; outside one (some unit tests) the work is
/// skipped, as nothing could be waiting for it.
fn spawn(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(fut);
    }
}

/// A node's settings, validated by whoever builds them.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub name: String,
    pub namespaces: Namespaces,
    pub max_connections: usize,
    pub max_connections_per_user: usize,
    pub max_channels_per_client: usize,
    pub send_queue_max_bytes: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Extra time a token is honoured past its `exp`.
    pub leeway: Duration,
    /// How long an `idempotency_key` answers with its first publish's result.
    pub idempotency_window: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            name: "n1".into(),
            namespaces: Namespaces::default(),
            max_connections: 100_000,
            max_connections_per_user: 32,
            max_channels_per_client: 128,
            send_queue_max_bytes: 1 << 20,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            leeway: Duration::from_secs(5),
            idempotency_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// A command's failure, as its error reply says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl CommandError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        CommandError {
            code,
            message: message.into(),
        }
    }

    fn forbidden() -> Self {
        // The same answer whether or not the channel exists.
        Self::new(ErrorCode::Forbidden, "not allowed")
    }
}

impl From<BrokerError> for CommandError {
    fn from(e: BrokerError) -> Self {
        tracing::warn!(error = %e, "broker request failed");
        match e {
            BrokerError::Unavailable(_) => {
                CommandError::new(ErrorCode::Internal, "temporarily unavailable, retry")
            }
            BrokerError::History(HistoryError::ChannelLimit(ns)) => CommandError::new(
                ErrorCode::LimitExceeded,
                format!("namespace `{ns}` keeps history for as many channels as it may"),
            ),
            BrokerError::History(_) => CommandError::new(ErrorCode::Internal, "history failed"),
        }
    }
}

mod personal;

pub struct Node {
    pub opts: NodeOptions,
    pub hub: Hub,
    pub metrics: Metrics,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn PresenceStore>,
    cursors: Arc<dyn CursorStore>,
    started: Instant,
    next_key: AtomicU64,
    /// Scrambles client ids (see `ClientId::new`).
    id_salt: u64,
    /// Set once draining began: a client that connects after it is closed
    /// at once (its handshake may have passed the server's check just before).
    draining: AtomicBool,
    me: Weak<Node>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.opts.name)
            .finish_non_exhaustive()
    }
}

/// The broker's way back into the node; weak so the node can be dropped.
struct Events(Weak<Node>);

impl BrokerEvents for Events {
    fn on_publication(&self, publication: Arc<Publication>) {
        if let Some(node) = self.0.upgrade() {
            node.deliver_publication(&publication);
        }
    }

    fn on_push(&self, channel: &ChannelName, frame: Bytes) {
        if let Some(node) = self.0.upgrade() {
            let out = node.hub.broadcast(channel, &frame);
            node.account(out, None);
        }
    }

    fn on_control(&self, message: ControlMessage) {
        if let Some(node) = self.0.upgrade() {
            spawn(async move { node.control(message).await });
        }
    }

    fn on_resync(&self) {
        if let Some(node) = self.0.upgrade() {
            spawn(async move { node.resync().await });
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Node {
    pub fn new(
        opts: NodeOptions,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
    ) -> Arc<Node> {
        Self::with_cursors(opts, broker, presence, Arc::new(MemoryCursors::default()))
    }

    /// A node whose inbox cursors (PROTOCOL §10) live in `cursors`: the
    /// store that keeps the history, on every node.
    pub fn with_cursors(
        opts: NodeOptions,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
        cursors: Arc<dyn CursorStore>,
    ) -> Arc<Node> {
        let node = Arc::new_cyclic(|weak: &Weak<Node>| Node {
            opts,
            hub: Hub::new(),
            metrics: Metrics::default(),
            broker: broker.clone(),
            presence,
            cursors,
            started: Instant::now(),
            next_key: AtomicU64::new(1),
            id_salt: fastrand::u64(..),
            draining: AtomicBool::new(false),
            me: weak.clone(),
        });
        broker.bind(Arc::new(Events(Arc::downgrade(&node))));
        node
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// Milliseconds since the node started: the clock of heartbeats.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    async fn control(&self, message: ControlMessage) {
        match message {
            ControlMessage::Disconnect { user, code, .. } => {
                let reason = if code == Disconnect::KICKED.code {
                    Disconnect::KICKED
                } else {
                    Disconnect {
                        code,
                        reason: "disconnected",
                        reconnect_after_ms: None,
                    }
                };
                self.disconnect_user(&user, reason).await;
            }
        }
    }

    fn count_disconnect(&self, d: Disconnect) {
        self.metrics
            .disconnects
            .get_or_create(&CodeLabel { code: d.code })
            .inc();
    }

    /// Whether a new client of `user` would fit now (checked before the upgrade;
    /// [`Node::connect`] checks again).
    pub fn admission(&self, user: &str) -> Result<(), AddError> {
        if self.hub.connection_count() >= self.opts.max_connections {
            return Err(AddError::NodeFull);
        }
        if self.hub.user_connection_count(user) >= self.opts.max_connections_per_user {
            return Err(AddError::UserFull);
        }
        Ok(())
    }

    /// Registers a client: subscribes it to its personal channel and queues
    /// the welcome frame.
    pub fn connect(&self, mut init: ClientInit) -> Result<Arc<ClientHandle>, AddError> {
        let inbox = init.inbox.take();
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(ClientHandle::new(
            key,
            self.id_salt,
            init,
            self.opts.send_queue_max_bytes,
            self.now_ms(),
        ));
        let first = self.hub.add_client(
            &client,
            self.opts.max_connections,
            self.opts.max_connections_per_user,
        )?;
        self.metrics.connections.inc();
        self.count_connection(&client);
        let _ = client.outbox.push(frame::welcome_with_inbox(
            &client.id,
            &client.user,
            &self.opts.name,
            self.opts.ping_interval.as_secs_f64(),
            inbox.as_ref(),
        ));
        if let Ok(personal) = ChannelName::personal(&client.user) {
            client.subscriptions.lock().insert(&client.user, &personal);
            self.hub.subscribe(&personal, &client);
            self.metrics.subscriptions.inc();
            if first {
                self.broker_subscribe_now(personal.clone());
            }
            self.announce_personal(&client, personal);
        }
        // After the hub has the client: a drain that began before this point
        // either finds it there or is seen here (both orders are SeqCst), so
        // no client is left for shutdown to wait out.
        if self.draining.load(Ordering::SeqCst) && client.outbox.close(Disconnect::SHUTDOWN) {
            self.count_disconnect(Disconnect::SHUTDOWN);
            if let Some(node) = self.me.upgrade() {
                let client = client.clone();
                spawn(async move { node.remove_client(&client).await });
            }
        }
        Ok(client)
    }

    /// Applies a refreshed token (PROTOCOL §2: its `exp` and its claims,
    /// `channels` and `info`, from now on). A token for another user changes
    /// nothing. Channels the new claims no longer allow are left, as an
    /// unsubscribe would leave them.
    pub fn refresh(
        &self,
        client: &Arc<ClientHandle>,
        token: ClientInit,
    ) -> Result<(), CommandError> {
        if token.user != *client.user {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "the token names another user",
            ));
        }
        client.set_expires_at(token.expires_at);
        let device = client.claims().device.clone();
        client.set_claims(ClientClaims::new(token.info, token.channels).with_device(device));
        let claims = client.claims();
        let withdrawn: Vec<ChannelName> = {
            let mut subs = client.subscriptions.lock();
            let gone: Vec<ChannelName> = subs
                .others()
                .filter(|c| {
                    !self
                        .opts
                        .namespaces
                        .may_subscribe(c, &client.user, &claims.channels)
                })
                .cloned()
                .collect();
            for c in &gone {
                subs.remove(&client.user, c);
            }
            gone
        };
        if !withdrawn.is_empty()
            && let Some(node) = self.me.upgrade()
        {
            let client = client.clone();
            spawn(async move {
                for channel in withdrawn {
                    node.leave_channel(&client, &channel).await;
                }
            });
        }
        Ok(())
    }

    /// Stops taking clients and closes every one with `reason`: a client
    /// whose handshake passed the server's draining check just before is
    /// closed by `connect` itself.
    pub async fn drain(&self, reason: Disconnect) {
        self.stop_admitting();
        self.close_all(reason).await;
    }

    /// Stops taking clients: from now on `connect` closes each one it admits
    /// (with 1001) as soon as the hub has it. The clients already here stay
    /// until closed, so a drain can pace their closes.
    pub fn stop_admitting(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Closes a client: its transport sends `reason` and ends; the client
    /// leaves every index and presence now.
    pub async fn close_client(&self, client: &Arc<ClientHandle>, reason: Disconnect) {
        if client.outbox.close(reason) {
            self.count_disconnect(reason);
        }
        self.remove_client(client).await;
    }

    /// Closes several clients: every transport is told first (each with the
    /// reason `reason` gives it), then each leaves every index and presence,
    /// so no close waits on another's presence round trip.
    pub async fn close_clients(
        &self,
        clients: &[Arc<ClientHandle>],
        mut reason: impl FnMut() -> Disconnect,
    ) {
        for c in clients {
            let r = reason();
            if c.outbox.close(r) {
                self.count_disconnect(r);
            }
        }
        for c in clients {
            self.remove_client(c).await;
        }
    }

    /// Removes a client from every index and presence, with leave pushes.
    /// Idempotent: the transport calls it when it ends, whoever closed it.
    pub async fn remove_client(&self, client: &Arc<ClientHandle>) {
        // Marked under the subscriptions lock: a concurrent subscribe either
        // sees `removed` and adds nothing, or added its channel before we drain.
        let channels: Vec<ChannelName> = {
            let mut subs = client.subscriptions.lock();
            if client.removed.swap(true, Ordering::AcqRel) {
                return;
            }
            subs.drain(&client.user)
        };
        self.hub.remove_client(client);
        self.metrics.connections.dec();
        self.uncount_connection(client).await;
        // Presence leaves every channel in one call, each with its leave
        // push in the same step; the other channels' leaves follow.
        let leaves: Vec<(ChannelName, Option<Bytes>)> = channels
            .iter()
            .filter(|c| {
                self.opts.namespaces.policy(c).presence && c.personal_owner() != Some(&*client.user)
            })
            .map(|c| {
                let push = self
                    .opts
                    .namespaces
                    .policy(c)
                    .join_leave
                    .then(|| frame::leave(c, &client.user, &client.id));
                (c.clone(), push)
            })
            .collect();
        if !leaves.is_empty()
            && let Err(e) = self
                .presence
                .leave_many(&client.id, &leaves, &*self.broker)
                .await
        {
            tracing::warn!(error = %e, "presence leave failed");
        }
        for channel in channels {
            let left = leaves.iter().any(|(c, _)| c == &channel);
            self.leave_channel_with(client, &channel, !left).await;
        }
        if let Ok(personal) = ChannelName::personal(&client.user) {
            self.release_broker(&personal).await;
        }
    }

    async fn leave_channel(&self, client: &ClientHandle, channel: &ChannelName) {
        self.leave_channel_with(client, channel, true).await;
    }

    /// `announce`: false when the caller already took the client out of the
    /// channel's presence, with its leave push.
    async fn leave_channel_with(
        &self,
        client: &ClientHandle,
        channel: &ChannelName,
        announce: bool,
    ) {
        let Some(last) = self.hub.leave(channel, client) else {
            return;
        };
        self.metrics.subscriptions.dec();
        if last && channel.personal_owner() != Some(&*client.user) {
            self.release_broker(channel).await;
        }
        if channel.personal_owner() == Some(&*client.user) && !self.leave_personal(client) {
            return;
        }
        if announce {
            self.denounce(client, channel).await;
        }
    }

    /// Handles one decoded command (all but `refresh`, which needs the
    /// transport's token verifier) and queues its reply when it has an id.
    pub async fn handle(&self, client: &Arc<ClientHandle>, id: Option<u64>, op: Op) {
        let result = match op {
            Op::Subscribe { channel, since } => {
                // The reply is queued by subscribe itself, in order with pushes.
                match self.subscribe(client, id, &channel, since).await {
                    Ok(_) => return,
                    Err(e) => Err(e),
                }
            }
            Op::Unsubscribe { channel } => {
                if client.subscriptions.lock().remove(&client.user, &channel) {
                    self.leave_channel(client, &channel).await;
                }
                Ok(Bytes::from_static(b"{}"))
            }
            Op::Publish {
                channel,
                data,
                idempotency_key,
            } => self
                .client_publish(
                    client,
                    &channel,
                    Bytes::from(data.into_boxed_bytes()),
                    idempotency_key,
                )
                .await
                .and_then(|pos| json(&pos)),
            Op::Presence { channel } => self.client_presence(client, &channel).await,
            Op::History {
                channel,
                since,
                limit,
            } => self.client_history(client, &channel, since, limit).await,
            Op::Ack { channel, offset } => self.ack(client, &channel, offset).await,
            Op::Ping => {
                let _ = client.outbox.push(frame::pong(id));
                return;
            }
            Op::Refresh { .. } => Err(CommandError::new(
                ErrorCode::Internal,
                "refresh is handled by the transport",
            )),
        };
        self.reply(client, id, result);
    }

    /// Queues a reply when the command had an id.
    pub fn reply(
        &self,
        client: &ClientHandle,
        id: Option<u64>,
        result: Result<Bytes, CommandError>,
    ) {
        if id.is_none() {
            return;
        }
        let bytes = match result {
            Ok(r) => frame::ok_reply(id, &r),
            Err(e) => frame::error_reply(id, e.code, &e.message),
        };
        let _ = client.outbox.push(bytes);
    }

    async fn client_publish(
        &self,
        client: &ClientHandle,
        channel: &ChannelName,
        data: Bytes,
        key: Option<IdempotencyKey>,
    ) -> Result<StreamPosition, CommandError> {
        if !self
            .opts
            .namespaces
            .may_publish(channel, &client.user, &client.claims().channels)
        {
            return Err(CommandError::forbidden());
        }
        self.publish(channel, data, Some(client.user.clone()), key)
            .await
    }

    /// Publishes to `channel`: stored, then delivered on every node. With a
    /// `key`, a repeat within `idempotency_window` answers the first
    /// publish's position and publishes nothing.
    pub async fn publish(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        key: Option<IdempotencyKey>,
    ) -> Result<StreamPosition, CommandError> {
        let retention = self.opts.namespaces.policy(channel).retention();
        let idempotency = key.map(|key| Idempotency {
            key,
            window: self.opts.idempotency_window,
        });
        let span = crate::trace::publish_span(self.broker.kind(), channel.as_str());
        let publish = self
            .broker
            .publish(channel, data, from, retention, idempotency.as_ref());
        let pos = match crate::trace::in_publish(&span, publish).await {
            Ok(pos) => {
                span.record("offset", crate::trace::int(pos.offset));
                pos
            }
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                return Err(e.into());
            }
        };
        if !retention.keeps_nothing() {
            self.metrics.publications_stored.inc();
        }
        Ok(pos)
    }

    async fn client_presence(
        &self,
        client: &ClientHandle,
        channel: &ChannelName,
    ) -> Result<Bytes, CommandError> {
        let ns = &self.opts.namespaces;
        if !ns.policy(channel).presence
            || !ns.may_subscribe(channel, &client.user, &client.claims().channels)
        {
            return Err(CommandError::forbidden());
        }
        let clients = self.presence(channel).await?;
        json(&serde_json::json!({ "clients": clients }))
    }

    /// Who is in `channel` now.
    pub async fn presence(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<PresenceEntry>, CommandError> {
        self.presence.get(channel).await.map_err(|e| {
            tracing::warn!(error = %e, "presence read failed");
            CommandError::new(ErrorCode::Internal, "presence failed")
        })
    }

    async fn client_history(
        &self,
        client: &ClientHandle,
        channel: &ChannelName,
        since: Option<StreamPosition>,
        limit: Option<usize>,
    ) -> Result<Bytes, CommandError> {
        let ns = &self.opts.namespaces;
        if ns.policy(channel).retention().keeps_nothing()
            || !ns.may_subscribe(channel, &client.user, &client.claims().channels)
        {
            return Err(CommandError::forbidden());
        }
        let since_given = since.is_some();
        let read = self.history(channel, HistoryQuery { since, limit }).await?;
        Ok(history_result(&self.capped(read, since_given)))
    }

    /// Stored publications of `channel`.
    pub async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<HistoryRead, CommandError> {
        let retention = self.opts.namespaces.policy(channel).retention();
        Ok(self.broker.history(channel, &query, retention).await?)
    }

    /// Closes every connection of `user` on this node; returns how many.
    pub async fn disconnect_user(&self, user: &str, reason: Disconnect) -> usize {
        let clients = self.hub.user_clients(user);
        for c in &clients {
            self.close_client(c, reason).await;
        }
        clients.len()
    }

    /// Closes every client with `reason` (shutdown and drain).
    pub async fn close_all(&self, reason: Disconnect) {
        for c in self.hub.clients() {
            self.close_client(&c, reason).await;
        }
    }

    /// One heartbeat pass: pings idle clients, reaps silent ones and closes
    /// those whose token expired. Returns the clients it closed.
    pub async fn heartbeat(&self, expire_connections: bool) -> usize {
        let now = self.now_ms();
        let interval = self.opts.ping_interval.as_millis() as u64;
        let deadline = interval + self.opts.ping_timeout.as_millis() as u64;
        let unix = unix_now();
        let leeway = self.opts.leeway.as_secs();
        let mut to_close = Vec::new();
        for shard in 0..self.hub.shard_count() {
            self.hub.for_each_client_in_shard(shard, |c| {
                let seen = c.last_seen_ms.load(Ordering::Relaxed);
                let idle = now.saturating_sub(seen);
                if idle >= deadline {
                    to_close.push((c.clone(), Disconnect::STALE));
                    return;
                }
                if expire_connections {
                    let exp = c.expires_at();
                    if exp != 0 && unix >= exp.saturating_add(leeway) {
                        to_close.push((c.clone(), Disconnect::EXPIRED));
                        return;
                    }
                }
                let pinged = c.last_ping_ms.load(Ordering::Relaxed);
                if idle >= interval && now.saturating_sub(pinged) >= interval {
                    c.last_ping_ms.store(now, Ordering::Relaxed);
                    c.outbox.push_ping();
                }
            });
        }
        let n = to_close.len();
        for (c, reason) in to_close {
            if reason == Disconnect::STALE {
                self.metrics.reaped.inc();
                tracing::info!(client = %c.id, user = %c.user, "reaping client: no heartbeat");
            }
            self.close_client(&c, reason).await;
        }
        n
    }

    /// Runs heartbeat passes until the node is dropped. The tick is a tenth
    /// of `ping_interval + ping_timeout` (at most 1 s, at least 10 ms), so a
    /// silent client is closed within that bound plus one tick; there is one
    /// timer for the whole node, none per client.
    pub async fn run_heartbeats(self: Arc<Self>, expire_connections: bool) {
        let tick = self.heartbeat_tick();
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Retention is applied every tick (at most every 250 ms): a TTL holds
        // within a tick or two. Each pass does a bounded amount of work.
        let sweep_every = tick.max(Duration::from_millis(250));
        let mut sweep_at = Instant::now();
        loop {
            ticker.tick().await;
            self.heartbeat(expire_connections).await;
            if Instant::now() >= sweep_at {
                // On the blocking pool: the file store reads (and may fsync)
                // there, never on a worker that serves clients. Awaited, so
                // passes never overlap.
                let node = self.clone();
                let _ = tokio::task::spawn_blocking(move || node.sweep_history()).await;
                sweep_at = Instant::now() + sweep_every;
            }
        }
    }

    /// One pass of the history sweep, under each channel's namespace retention.
    pub fn sweep_history(&self) {
        let namespaces = &self.opts.namespaces;
        let retention = |c: &ChannelName| namespaces.policy(c).retention();
        let swept = self.broker.sweep(&Sweep {
            retention: &retention,
            idle: SWEEP_IDLE,
            budget: SWEEP_BUDGET,
        });
        self.metrics
            .history_channels
            .set(i64::try_from(swept.history_channels).unwrap_or(i64::MAX));
        self.cursors.sweep(SWEEP_BUDGET);
    }

    pub fn heartbeat_tick(&self) -> Duration {
        ((self.opts.ping_interval + self.opts.ping_timeout) / 10)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// A stream that never kept history is forgotten after this long untouched.
const SWEEP_IDLE: Duration = Duration::from_secs(300);
/// Streams one sweep pass looks at, at most (about 1-2 ms of work); more
/// channels than that take several passes.
const SWEEP_BUDGET: usize = 16_384;

fn json<T: serde::Serialize>(v: &T) -> Result<Bytes, CommandError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|_| CommandError::new(ErrorCode::Internal, "could not encode the result"))
}

/// `{"offset","epoch","recovered","publications"}` of a subscribe reply.
pub fn subscribe_result(read: &HistoryRead) -> Bytes {
    let mut out = BytesMut::with_capacity(96);
    out.put_slice(b"{\"offset\":");
    out.put_slice(read.offset.to_string().as_bytes());
    out.put_slice(b",\"epoch\":");
    out.put_slice(&json_str(&read.epoch));
    out.put_slice(b",\"recovered\":");
    out.put_slice(if read.recovered { b"true" } else { b"false" });
    out.put_slice(b",\"publications\":");
    frame::write_publications(&mut out, &read.publications);
    out.put_u8(b'}');
    out.freeze()
}

/// `{"publications","offset","epoch"}` of a history reply or API answer.
pub fn history_result(read: &HistoryRead) -> Bytes {
    let mut out = BytesMut::with_capacity(96);
    out.put_slice(b"{\"publications\":");
    frame::write_publications(&mut out, &read.publications);
    out.put_slice(b",\"offset\":");
    out.put_slice(read.offset.to_string().as_bytes());
    out.put_slice(b",\"epoch\":");
    out.put_slice(&json_str(&read.epoch));
    out.put_u8(b'}');
    out.freeze()
}

fn json_str(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
