//! [`Node`]: the façade a transport and the HTTP API call. It owns the hub and
//! the role implementations, and is the [`BrokerEvents`] sink of its broker.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use switchboard_protocol::frame::{self, ErrorCode};
use switchboard_protocol::{ChannelName, Op, Publication, StreamPosition};
use tokio::time::Instant;

use crate::broker::{Broker, BrokerError, BrokerEvents, ControlMessage};
use crate::client::{ClientHandle, ClientInit};
use crate::disconnect::Disconnect;
use crate::history::{HistoryQuery, HistoryRead, Retention};
use crate::hub::{AddError, Begin, BroadcastOutcome, Hub, StreamKey};
use crate::metrics::{CodeLabel, Metrics};
use crate::namespace::Namespaces;
use crate::presence::{PresenceEntry, PresenceStore};
use crate::subscription::{Gap, Joined};

/// How long a channel's stream holds a publication that came early before
/// it reads the hole from history. Concurrent publishers on one node hand
/// theirs over out of order by microseconds, and that must not cost a read;
/// a hole that lasts this long is a loss to fill (or to report `lost`).
pub const REORDER_WINDOW: Duration = Duration::from_millis(100);

/// History reads one subscribe makes at most before it gives up.
const MAX_JOIN_READS: usize = 4;

/// How long a failed gap fill waits before it tries again.
const FILL_RETRY: Duration = Duration::from_secs(1);

/// Runs `fut` on the current runtime, if there is one.
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
            BrokerError::History(_) => CommandError::new(ErrorCode::Internal, "history failed"),
        }
    }
}

pub struct Node {
    pub opts: NodeOptions,
    pub hub: Hub,
    pub metrics: Metrics,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn PresenceStore>,
    started: Instant,
    next_key: AtomicU64,
    /// Scrambles client ids (see `ClientId::new`).
    id_salt: u64,
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
        let node = Arc::new_cyclic(|weak: &Weak<Node>| Node {
            opts,
            hub: Hub::new(),
            metrics: Metrics::default(),
            broker: broker.clone(),
            presence,
            started: Instant::now(),
            next_key: AtomicU64::new(1),
            id_salt: fastrand::u64(..),
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

    /// A publication from the broker, through its channel's streams.
    fn deliver_publication(&self, publication: &Arc<Publication>) {
        let start = std::time::Instant::now();
        let (out, gaps) = self.hub.publication(publication);
        self.account(out, Some(start));
        for key in gaps {
            self.schedule_fill(publication.channel.clone(), key, REORDER_WINDOW);
        }
    }

    /// Counts what a push did and closes the clients that overflowed.
    /// `publication`: when the fan-out of a publication began.
    fn account(&self, out: BroadcastOutcome, publication: Option<std::time::Instant>) {
        self.metrics.messages_out.inc_by(out.delivered as u64);
        if let Some(start) = publication {
            self.metrics.publications.inc();
            self.metrics.deliveries.inc_by(out.delivered as u64);
            self.metrics
                .fanout_seconds
                .observe(start.elapsed().as_secs_f64());
        }
        if !out.overflowed.is_empty() {
            self.metrics
                .slow_clients
                .inc_by(out.overflowed.len() as u64);
            for client in out.overflowed {
                self.metrics.dropped_deliveries.inc();
                self.count_disconnect(Disconnect::SLOW);
                tracing::info!(client = %client.id, user = %client.user, "closing slow consumer");
                // Removal awaits presence: it runs on its own task, never
                // under the caller's locks.
                if let Some(node) = self.me.upgrade() {
                    spawn(async move { node.remove_client(&client).await });
                }
            }
        }
    }

    /// Fills a stream's hole after `delay`, if it is still there then.
    fn schedule_fill(&self, channel: ChannelName, key: StreamKey, delay: Duration) {
        if let Some(node) = self.me.upgrade() {
            spawn(async move {
                tokio::time::sleep(delay).await;
                node.fill(&channel, key, false).await;
            });
        }
    }

    /// Reads a stream's hole (or, `definitive`, everything after its
    /// position: after a resync) from history and hands it on.
    async fn fill(&self, channel: &ChannelName, key: StreamKey, definitive: bool) {
        let from = if definitive {
            self.hub.position(channel, key)
        } else {
            self.hub.fill_from(channel, key)
        };
        let Some((epoch, offset)) = from else {
            return;
        };
        let retention = self.opts.namespaces.policy(channel).retention();
        let query = HistoryQuery::since(offset, &epoch);
        match self.broker.history(channel, &query, retention).await {
            Ok(read) => {
                self.metrics.gap_fills.inc();
                let (out, gap) = self.hub.fill(channel, key, &read, definitive);
                self.account(out, None);
                if gap == Gap::New {
                    self.schedule_fill(channel.clone(), key, REORDER_WINDOW);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "filling a gap from history failed; retrying");
                self.schedule_fill(channel.clone(), key, FILL_RETRY);
            }
        }
    }

    /// The broker may have dropped publications of every channel: each
    /// stream reads what follows its position.
    pub async fn resync(&self) {
        for (channel, key) in self.hub.streams() {
            self.fill(&channel, key, true).await;
        }
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
    pub fn connect(&self, init: ClientInit) -> Result<Arc<ClientHandle>, AddError> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(ClientHandle::new(
            key,
            self.id_salt,
            init,
            self.opts.send_queue_max_bytes,
            self.now_ms(),
        ));
        self.hub.add_client(
            &client,
            self.opts.max_connections,
            self.opts.max_connections_per_user,
        )?;
        self.metrics.connections.inc();
        let _ = client.outbox.push(frame::welcome(
            &client.id,
            &client.user,
            &self.opts.name,
            self.opts.ping_interval.as_secs_f64(),
        ));
        if let Ok(personal) = ChannelName::personal(&client.user) {
            client.subscriptions.lock().insert(&client.user, &personal);
            self.hub.subscribe(&personal, &client);
            self.metrics.subscriptions.inc();
            if self.hub.user_connection_count(&client.user) == 1 {
                self.broker_subscribe_now(personal);
            }
        }
        Ok(client)
    }

    /// Subscribes the node to `channel` on the broker without waiting when
    /// the broker answers at once (the memory broker always does), else on a
    /// task of its own: a connection's personal channel, taken at connect.
    fn broker_subscribe_now(&self, channel: ChannelName) {
        let broker = self.broker.clone();
        let mut subscribing = Box::pin(async move {
            if let Err(e) = broker.subscribe(&channel).await {
                tracing::warn!(error = %e, "broker subscribe failed");
            }
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if subscribing.as_mut().poll(&mut cx).is_pending() {
            spawn(subscribing);
        }
    }

    /// The node's last local subscriber of `channel` left: stops its broker
    /// subscription, and takes it again if a subscriber came back meanwhile
    /// (then fills whatever passed while it was off).
    async fn release_broker(&self, channel: &ChannelName) {
        let still_needed = |node: &Node| match channel.personal_owner() {
            Some(owner) => node.hub.user_connection_count(owner) > 0,
            None => node.hub.has_channel(channel),
        };
        if still_needed(self) {
            return;
        }
        if let Err(e) = self.broker.unsubscribe(channel).await {
            tracing::warn!(error = %e, "broker unsubscribe failed");
        }
        if still_needed(self) {
            match self.broker.subscribe(channel).await {
                Ok(()) => {
                    self.hub.broker_subscribed(channel);
                    let key = match channel.personal_owner() {
                        Some(_) => StreamKey::Own,
                        None => StreamKey::Shared,
                    };
                    self.fill(channel, key, true).await;
                }
                Err(e) => tracing::warn!(error = %e, "broker subscribe failed"),
            }
        }
    }

    /// Closes a client: its transport sends `reason` and ends; the client
    /// leaves every index and presence now.
    pub async fn close_client(&self, client: &Arc<ClientHandle>, reason: Disconnect) {
        if client.outbox.close(reason) {
            self.count_disconnect(reason);
        }
        self.remove_client(client).await;
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
        for channel in channels {
            self.leave_channel(client, &channel).await;
        }
        if let Ok(personal) = ChannelName::personal(&client.user) {
            self.release_broker(&personal).await;
        }
    }

    async fn leave_channel(&self, client: &ClientHandle, channel: &ChannelName) {
        let Some(last) = self.hub.leave(channel, client) else {
            return;
        };
        self.metrics.subscriptions.dec();
        if last && channel.personal_owner() != Some(&*client.user) {
            self.release_broker(channel).await;
        }
        let policy = self.opts.namespaces.policy(channel);
        if policy.presence
            && let Err(e) = self.presence.remove(channel, &client.id).await
        {
            tracing::warn!(error = %e, "presence remove failed");
        }
        if policy.join_leave {
            let push = frame::leave(channel, &client.user, &client.id);
            if let Err(e) = self.broker.push(channel, push).await {
                tracing::warn!(error = %e, "leave push failed");
            }
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
            Op::Publish { channel, data } => self
                .client_publish(client, &channel, Bytes::from(data.into_boxed_bytes()))
                .await
                .and_then(|pos| json(&pos)),
            Op::Presence { channel } => self.client_presence(client, &channel).await,
            Op::History {
                channel,
                since,
                limit,
            } => self.client_history(client, &channel, since, limit).await,
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

    /// Joins `channel`, recovering from `since`, and queues the reply (when
    /// `id` is set) before any publication that follows it. Returns how many
    /// publications were recovered.
    ///
    /// The subscriber is added as buffering, history is read, and the two
    /// are merged by offset ([`Hub::finish_join`]): no lock is held across
    /// the read, and a broker that delivers out of order loses nothing.
    /// Without `id`, recovered publications arrive as `pub` frames (or a
    /// `lost` push when they cannot be recovered).
    pub async fn subscribe(
        &self,
        client: &Arc<ClientHandle>,
        id: Option<u64>,
        channel: &ChannelName,
        since: Option<StreamPosition>,
    ) -> Result<usize, CommandError> {
        let ns = &self.opts.namespaces;
        if !ns.may_subscribe(channel, &client.user, &client.channels_claim) {
            return Err(CommandError::forbidden());
        }
        let closing = || CommandError::new(ErrorCode::Internal, "client is closing");
        let already = {
            let mut subs = client.subscriptions.lock();
            if client.is_removed() {
                return Err(closing());
            }
            if subs.contains(&client.user, channel) {
                true
            } else if subs.len() >= self.opts.max_channels_per_client {
                return Err(CommandError::new(
                    ErrorCode::LimitExceeded,
                    "too many channels on this connection",
                ));
            } else {
                // Pending until its join push is out: see `Subscriptions`.
                subs.insert_pending(&client.user, channel);
                false
            }
        };
        if !already {
            self.metrics.subscriptions.inc();
        }
        let policy = ns.policy(channel);
        if policy.presence && !already {
            let entry = PresenceEntry {
                user: client.user.to_string(),
                client: client.id.to_string(),
                info: client
                    .info
                    .as_deref()
                    .and_then(|i| serde_json::from_str(i).ok())
                    .unwrap_or(serde_json::Value::Null),
                node: self.opts.name.clone(),
            };
            if let Err(e) = self.presence.add(channel, entry).await {
                tracing::warn!(error = %e, "presence add failed");
                self.abandon(client, channel, false).await;
                return Err(CommandError::new(ErrorCode::Internal, "presence failed"));
            }
        }
        let recovered = match self
            .join(client, id, channel, since, policy.retention())
            .await
        {
            Ok(n) => n,
            Err(e) => {
                if already {
                    // It stays subscribed; the failed join only ends.
                    if !client.is_removed() {
                        self.hub.subscribe(channel, client);
                    }
                } else {
                    self.abandon(client, channel, false).await;
                }
                return Err(e);
            }
        };
        if !already {
            let mut join_sent = false;
            if policy.join_leave && !client.is_removed() {
                let push = frame::join(channel, &client.user, &client.id, client.info.as_deref());
                match self.broker.push(channel, push).await {
                    Ok(()) => join_sent = true,
                    Err(e) => tracing::warn!(error = %e, "join push failed"),
                }
            }
            let confirmed = client.subscriptions.lock().confirm(&client.user, channel);
            if !confirmed {
                // Removed meanwhile: its removal left this channel to us.
                self.abandon(client, channel, join_sent).await;
                return Err(closing());
            }
        }
        self.metrics.publications_recovered.inc_by(recovered as u64);
        Ok(recovered)
    }

    /// Undoes a subscribe that did not complete: out of the client's set,
    /// the hub and presence, with a leave push when its join went out.
    async fn abandon(&self, client: &Arc<ClientHandle>, channel: &ChannelName, join_sent: bool) {
        client.subscriptions.lock().remove(&client.user, channel);
        self.metrics.subscriptions.dec();
        if let Some(true) = self.hub.leave(channel, client) {
            self.release_broker(channel).await;
        }
        let policy = self.opts.namespaces.policy(channel);
        if policy.presence
            && let Err(e) = self.presence.remove(channel, &client.id).await
        {
            tracing::warn!(error = %e, "presence remove failed");
        }
        if join_sent {
            let push = frame::leave(channel, &client.user, &client.id);
            if let Err(e) = self.broker.push(channel, push).await {
                tracing::warn!(error = %e, "leave push failed");
            }
        }
    }

    /// The most a subscribe or history reply may carry, in bytes: half the
    /// outbox, so one large history never closes its reader as slow.
    fn reply_cap(&self) -> usize {
        self.opts.send_queue_max_bytes / 2
    }

    /// A client's history reply cut to [`Self::reply_cap`] bytes: the first
    /// publications that fit after `since` (the client pages on from the
    /// last), or without it the latest that fit.
    fn capped(&self, mut read: HistoryRead, since_given: bool) -> HistoryRead {
        let cap = self.reply_cap();
        let mut bytes = 0;
        let mut fits = |p: &Arc<Publication>| {
            bytes += p.frame().len();
            bytes <= cap
        };
        if since_given {
            let keep = read.publications.iter().take_while(|p| fits(p)).count();
            read.publications.truncate(keep);
        } else {
            let keep = read
                .publications
                .iter()
                .rev()
                .take_while(|p| fits(p))
                .count();
            let drop = read.publications.len() - keep;
            read.publications.drain(..drop);
        }
        read
    }

    /// The hub side of a subscribe: buffer, read, merge (see [`Node::subscribe`]).
    async fn join(
        &self,
        client: &Arc<ClientHandle>,
        id: Option<u64>,
        channel: &ChannelName,
        since: Option<StreamPosition>,
        retention: Retention,
    ) -> Result<usize, CommandError> {
        let recover = since.is_some();
        let begin = self
            .hub
            .begin_join(channel, client, recover, |epoch, offset| {
                id.map(|_| frame::ok_reply(id, &position_result(epoch, offset)))
            });
        let broker_subscribe = match begin {
            Begin::Live(out) => {
                self.account(out, None);
                return Ok(0);
            }
            Begin::Joining { broker_subscribe } => broker_subscribe,
        };
        let key = match channel.personal_owner() {
            Some(owner) if owner == &*client.user => StreamKey::Own,
            _ => StreamKey::Shared,
        };
        if broker_subscribe {
            // Before the read: every publication stored after it reaches us.
            self.broker.subscribe(channel).await?;
            self.hub.broker_subscribed(channel);
        }
        let query = HistoryQuery {
            limit: if recover { None } else { Some(0) },
            since,
        };
        let mut read = self.broker.history(channel, &query, retention).await?;
        let bytes: usize = read.publications.iter().map(|p| p.frame().len()).sum();
        if !read.recovered || bytes > self.reply_cap() {
            // Never a partial list, and never more than the outbox takes.
            read.recovered = false;
            read.publications.clear();
        }
        let head: Vec<Bytes> = match id {
            Some(_) => vec![frame::ok_reply(id, &subscribe_result(&read))],
            None if !recover => Vec::new(),
            None if read.recovered => read
                .publications
                .iter()
                .map(|p| p.frame().clone())
                .collect(),
            None => vec![frame::lost(channel, &read.epoch, read.offset)],
        };
        let (mut head, mut epoch, mut covered) = (head, read.epoch.clone(), read.offset);
        // Another subscriber's read may have placed the channel's stream past
        // this one's: then what lies between is read too (rarely more than once).
        for _ in 0..MAX_JOIN_READS {
            let (joined, out, gap) = self
                .hub
                .finish_join(channel, client, &epoch, covered, &head);
            self.account(out, None);
            if gap == Gap::New {
                self.schedule_fill(channel.clone(), key, REORDER_WINDOW);
            }
            match joined {
                Joined::Live | Joined::Catching => return Ok(read.publications.len()),
                Joined::Gone => {
                    return Err(CommandError::new(ErrorCode::Internal, "client is closing"));
                }
                Joined::Behind => {}
            }
            let more = self
                .broker
                .history(channel, &HistoryQuery::since(covered, &epoch), retention)
                .await?;
            let bytes: usize = more.publications.iter().map(|p| p.frame().len()).sum();
            if more.recovered && bytes <= self.reply_cap() {
                head.extend(more.publications.iter().map(|p| p.frame().clone()));
            } else {
                head.push(frame::lost(channel, &more.epoch, more.offset));
            }
            epoch = more.epoch;
            covered = more.offset;
        }
        Err(CommandError::new(
            ErrorCode::Internal,
            "the channel moved on during the subscribe, retry",
        ))
    }

    async fn client_publish(
        &self,
        client: &ClientHandle,
        channel: &ChannelName,
        data: Bytes,
    ) -> Result<StreamPosition, CommandError> {
        if !self.opts.namespaces.may_publish(channel) {
            return Err(CommandError::forbidden());
        }
        self.publish(channel, data, Some(client.user.clone())).await
    }

    /// Publishes to `channel`: stored, then delivered on every node.
    pub async fn publish(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
    ) -> Result<StreamPosition, CommandError> {
        let retention = self.opts.namespaces.policy(channel).retention();
        let pos = self.broker.publish(channel, data, from, retention).await?;
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
            || !ns.may_subscribe(channel, &client.user, &client.channels_claim)
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
            || !ns.may_subscribe(channel, &client.user, &client.channels_claim)
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
        let mut sweep_at = Instant::now() + Duration::from_secs(60);
        loop {
            ticker.tick().await;
            self.heartbeat(expire_connections).await;
            if Instant::now() >= sweep_at {
                self.broker.sweep(Duration::from_secs(300));
                sweep_at = Instant::now() + Duration::from_secs(60);
            }
        }
    }

    pub fn heartbeat_tick(&self) -> Duration {
        ((self.opts.ping_interval + self.opts.ping_timeout) / 10)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

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

/// A subscribe reply's result without recovery: where the channel is.
fn position_result(epoch: &str, offset: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(80);
    out.put_slice(b"{\"offset\":");
    out.put_slice(offset.to_string().as_bytes());
    out.put_slice(b",\"epoch\":");
    out.put_slice(&json_str(epoch));
    out.put_slice(b",\"recovered\":false,\"publications\":[]}");
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
