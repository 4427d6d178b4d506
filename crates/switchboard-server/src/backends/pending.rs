//! Redis as it becomes reachable: until the first connection, every call
//! answers unavailable and the broker's health is not ok (so `/ready` says
//! 503); a task retries with backoff and jitter, then the calls go through.
//! Channels the node subscribed meanwhile are subscribed once connected.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_core::history::{HistoryQuery, HistoryRead, Retention};
use switchboard_core::idempotency::Idempotency;
use switchboard_core::presence::PresenceError;
use switchboard_core::{
    Broker, BrokerError, BrokerEvents, BrokerHealth, ControlMessage, PresenceEntry, PresenceStore,
};
use switchboard_core::{Cursor, CursorError, CursorLimits, CursorStore, DeviceCursor};
use switchboard_protocol::{ChannelName, StreamPosition};
use switchboard_redis::{RedisBroker, RedisCursors, RedisNodes, RedisOptions, RedisPresence};

const NOT_YET: &str = "redis not reached yet";

struct Connected {
    broker: RedisBroker,
    presence: RedisPresence,
    nodes: Arc<RedisNodes>,
    cursors: RedisCursors,
}

pub struct Pending {
    connected: OnceLock<Connected>,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    /// Channels the node subscribed before Redis was reached.
    wanted: Mutex<HashSet<ChannelName>>,
    ttl: Duration,
}

impl Pending {
    pub fn new(presence_ttl: Duration) -> Self {
        Pending {
            connected: OnceLock::new(),
            events: OnceLock::new(),
            wanted: Mutex::new(HashSet::new()),
            ttl: presence_ttl,
        }
    }

    /// The node binds its events before any background connection starts
    /// (`Backends::cluster` runs after `Node::new`); a connection made
    /// before the node exists is bound by [`LazyBroker::bind`].
    pub fn connected(&self, (broker, presence, nodes, cursors): super::Connections) {
        let _ = self.connected.set(Connected {
            broker,
            presence,
            nodes: Arc::new(nodes),
            cursors,
        });
        if let (Some(events), Some(c)) = (self.events.get(), self.connected.get()) {
            c.broker.bind(events.clone());
        }
    }

    pub fn nodes(&self) -> Option<Arc<RedisNodes>> {
        self.connected.get().map(|c| c.nodes.clone())
    }

    pub fn announce_every(&self) -> Duration {
        self.ttl / 3
    }

    fn broker(&self) -> Result<&RedisBroker, BrokerError> {
        self.connected
            .get()
            .map(|c| &c.broker)
            .ok_or_else(|| BrokerError::Unavailable(NOT_YET.into()))
    }

    fn presence(&self) -> Result<&RedisPresence, PresenceError> {
        self.connected
            .get()
            .map(|c| &c.presence)
            .ok_or_else(|| PresenceError::Store(NOT_YET.into()))
    }
}

/// Retries until Redis answers (backoff 200 ms doubling to 5 s, with
/// jitter), then subscribes what the node asked for meanwhile.
pub async fn connect_in_background(pending: Arc<Pending>, options: RedisOptions) {
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::time::sleep(backoff + Duration::from_millis(fastrand::u64(..100))).await;
        match super::connect(&options).await {
            Ok(connected) => {
                pending.connected(connected);
                tracing::info!("connected to redis");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "redis still unreachable");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    let wanted: Vec<ChannelName> = pending.wanted.lock().drain().collect();
    if let Ok(broker) = pending.broker() {
        for channel in &wanted {
            if let Err(e) = broker.subscribe(channel).await {
                tracing::warn!(error = %e, "subscribing a channel after connecting failed");
            }
        }
    }
}

pub struct LazyBroker(pub Arc<Pending>);

#[async_trait]
impl Broker for LazyBroker {
    fn bind(&self, events: Arc<dyn BrokerEvents>) {
        let _ = self.0.events.set(events.clone());
        if let Some(c) = self.0.connected.get() {
            c.broker.bind(events);
        }
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        match self.0.broker() {
            Ok(b) => b.subscribe(channel).await,
            Err(e) => {
                self.0.wanted.lock().insert(channel.clone());
                Err(e)
            }
        }
    }

    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        match self.0.broker() {
            Ok(b) => b.unsubscribe(channel).await,
            Err(e) => {
                self.0.wanted.lock().remove(channel);
                Err(e)
            }
        }
    }

    async fn publish(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
        idempotency: Option<&Idempotency>,
    ) -> Result<StreamPosition, BrokerError> {
        self.0
            .broker()?
            .publish_once(channel, data, from, retention, idempotency)
            .await
    }

    async fn push(&self, channel: &ChannelName, frame: Bytes) -> Result<(), BrokerError> {
        self.0.broker()?.push(channel, frame).await
    }

    async fn control(&self, message: ControlMessage) -> Result<(), BrokerError> {
        self.0.broker()?.control(message).await
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, BrokerError> {
        self.0.broker()?.history(channel, query, retention).await
    }

    fn health(&self) -> BrokerHealth {
        match self.0.broker() {
            Ok(b) => b.health(),
            Err(_) => BrokerHealth {
                ok: false,
                lag: None,
            },
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

pub struct LazyPresence(pub Arc<Pending>);

#[async_trait]
impl PresenceStore for LazyPresence {
    async fn add(&self, channel: &ChannelName, entry: PresenceEntry) -> Result<(), PresenceError> {
        self.0.presence()?.add(channel, entry).await
    }

    async fn remove(&self, channel: &ChannelName, client: &str) -> Result<(), PresenceError> {
        PresenceStore::remove(self.0.presence()?, channel, client).await
    }

    async fn get(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, PresenceError> {
        self.0.presence()?.get(channel).await
    }

    async fn remove_many(
        &self,
        client: &str,
        channels: &[ChannelName],
    ) -> Result<(), PresenceError> {
        self.0.presence()?.remove_many(client, channels).await
    }

    async fn join(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        join: Bytes,
        broker: &dyn Broker,
    ) -> Result<(), PresenceError> {
        PresenceStore::join(self.0.presence()?, channel, entry, join, broker).await
    }

    async fn leave(
        &self,
        channel: &ChannelName,
        client: &str,
        leave: Bytes,
        broker: &dyn Broker,
    ) -> Result<bool, PresenceError> {
        PresenceStore::leave(self.0.presence()?, channel, client, leave, broker).await
    }

    async fn leave_many(
        &self,
        client: &str,
        leaves: &[(ChannelName, Option<Bytes>)],
        broker: &dyn Broker,
    ) -> Result<(), PresenceError> {
        PresenceStore::leave_many(self.0.presence()?, client, leaves, broker).await
    }

    async fn add_connection(&self, user: &str, client: &str) -> Result<usize, PresenceError> {
        self.0.presence()?.add_connection(user, client).await
    }

    async fn remove_connection(&self, user: &str, client: &str) -> Result<(), PresenceError> {
        self.0.presence()?.remove_connection(user, client).await
    }

    async fn user_connections(&self, user: &str) -> Result<usize, PresenceError> {
        self.0.presence()?.user_connections(user).await
    }

    async fn online(&self) -> Result<Vec<String>, PresenceError> {
        self.0.presence()?.online().await
    }

    fn shared(&self) -> bool {
        true
    }
}

/// Inbox cursors in Redis, once reached.
pub struct LazyCursors(pub Arc<Pending>);

impl LazyCursors {
    fn cursors(&self) -> Result<&RedisCursors, CursorError> {
        self.0
            .connected
            .get()
            .map(|c| &c.cursors)
            .ok_or_else(|| CursorError::Unavailable(NOT_YET.into()))
    }
}

#[async_trait]
impl CursorStore for LazyCursors {
    async fn get(
        &self,
        channel: &ChannelName,
        device: &str,
    ) -> Result<Option<Cursor>, CursorError> {
        self.cursors()?.get(channel, device).await
    }

    async fn devices(&self, channel: &ChannelName) -> Result<Vec<DeviceCursor>, CursorError> {
        self.cursors()?.devices(channel).await
    }

    async fn advance(
        &self,
        channel: &ChannelName,
        device: &str,
        to: Cursor,
        limits: CursorLimits,
    ) -> Result<Cursor, CursorError> {
        self.cursors()?.advance(channel, device, to, limits).await
    }
}
