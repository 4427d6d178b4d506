//! [`RedisPresence`]: who is where, across every node.
//!
//! Every entry carries an expiry (Redis server time) that its node pushes
//! forward every ttl/3 for all its local entries at once; a node that dies
//! stops refreshing, and its entries drop out of every answer within the ttl
//! without anyone scanning for them. The same holds for the users online
//! (a sorted set user → expiry, so `/api/online` reads one key) and for each
//! user's connections (a sorted set per user, for `max_connections_per_user`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::RedisResult;
use switchboard_core::presence::PresenceError;
use switchboard_core::{Broker, PresenceEntry, PresenceStore};
use switchboard_protocol::ChannelName;

use crate::config::RedisOptions;
use crate::conn::{self, Conn, Kind};
use crate::envelope;
use crate::keys;
use crate::pubsub::PushSink;
use crate::scripts::Scripts;

/// Presence in Redis, for one node.
pub struct RedisPresence {
    inner: Arc<Inner>,
    refresher: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisPresence {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

struct Inner {
    conn: Conn,
    scripts: Scripts,
    ttl: Duration,
    timeout: Duration,
    /// What this node added, to refresh it: channel → client → entry JSON,
    /// and user → clients.
    local: Mutex<Local>,
}

#[derive(Default)]
struct Local {
    channels: HashMap<ChannelName, HashMap<String, String>>,
    users: HashMap<String, HashSet<String>>,
}

/// `PresenceEntry` as stored (core's type only serializes).
#[derive(serde::Deserialize)]
struct Stored {
    user: String,
    client: String,
    #[serde(default)]
    info: serde_json::Value,
    node: String,
}

fn store_error(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::Store(e.to_string())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisPresence {
    /// Connects and starts refreshing this node's entries every ttl/3.
    pub async fn connect(options: &RedisOptions) -> Result<Self, PresenceError> {
        let conn = conn::connect(options, None::<PushSink>)
            .await
            .map_err(store_error)?;
        let inner = Arc::new(Inner {
            conn,
            scripts: Scripts::new(),
            ttl: options.presence_ttl,
            timeout: options.response_timeout,
            local: Mutex::new(Local::default()),
        });
        let refresher = tokio::spawn(refresh_every(
            Arc::downgrade(&inner),
            options.presence_ttl / 3,
        ));
        Ok(RedisPresence { inner, refresher })
    }

    /// Adds `entry` and sends `frame` (the join push) to the channel's
    /// subscribers on every node, atomically.
    pub async fn join(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        frame: &[u8],
    ) -> Result<(), PresenceError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let mut call = inner.entry_call(&inner.scripts.presence_join, channel, &entry)?;
        call.arg(keys::pubsub(channel))
            .arg(conn.publish_command(Kind::Sharded))
            .arg(envelope::push(frame));
        let _: i64 = inner
            .timed(call.invoke_async(&mut conn))
            .await?
            .map_err(store_error)?;
        Ok(())
    }

    /// Removes `client` and, if it was present, sends `frame` (the leave
    /// push) to every node, atomically. Whether it was present.
    pub async fn leave(
        &self,
        channel: &ChannelName,
        client: &str,
        frame: &[u8],
    ) -> Result<bool, PresenceError> {
        forget(&mut self.inner.local.lock(), channel, client);
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let mut call = inner
            .scripts
            .presence_leave
            .key(keys::presence_entries(channel));
        call.key(keys::presence_expiries(channel))
            .arg(client)
            .arg(keys::pubsub(channel))
            .arg(conn.publish_command(Kind::Sharded))
            .arg(envelope::push(frame));
        let removed: i64 = inner
            .timed(call.invoke_async(&mut conn))
            .await?
            .map_err(store_error)?;
        Ok(removed == 1)
    }

    /// Takes this node's client out of every channel of `leaves` (a
    /// disconnect), each channel in one step with its leave push when it
    /// has one (see [`RedisPresence::leave`]): all sent at once, one round trip.
    pub async fn leave_many(
        &self,
        client: &str,
        leaves: &[(ChannelName, Option<bytes::Bytes>)],
    ) -> Result<(), PresenceError> {
        {
            let mut local = self.inner.local.lock();
            for (c, _) in leaves {
                forget(&mut local, c, client);
            }
        }
        let calls = leaves.iter().map(|(c, push)| {
            let mut conn = self.inner.conn.clone();
            let scripts = &self.inner.scripts;
            let call = match push {
                Some(push) => {
                    let mut call = scripts.presence_leave.key(keys::presence_entries(c));
                    call.key(keys::presence_expiries(c))
                        .arg(client)
                        .arg(keys::pubsub(c))
                        .arg(conn.publish_command(Kind::Sharded))
                        .arg(envelope::push(push));
                    call
                }
                None => {
                    let mut call = scripts.presence_remove.key(keys::presence_entries(c));
                    call.key(keys::presence_expiries(c)).arg(client);
                    call
                }
            };
            async move { call.invoke_async::<i64>(&mut conn).await }
        });
        self.inner
            .timed(futures_util::future::join_all(calls))
            .await?
            .into_iter()
            .collect::<RedisResult<Vec<_>>>()
            .map_err(store_error)?;
        Ok(())
    }

    /// Takes this node's client out of every channel in `channels` (a
    /// disconnect), in one round trip.
    pub async fn remove_many(
        &self,
        client: &str,
        channels: &[ChannelName],
    ) -> Result<(), PresenceError> {
        {
            let mut local = self.inner.local.lock();
            for c in channels {
                forget(&mut local, c, client);
            }
        }
        let calls = channels.iter().map(|c| {
            let mut conn = self.inner.conn.clone();
            let mut call = self
                .inner
                .scripts
                .presence_remove
                .key(keys::presence_entries(c));
            call.key(keys::presence_expiries(c)).arg(client);
            async move { call.invoke_async::<i64>(&mut conn).await }
        });
        self.inner
            .timed(futures_util::future::join_all(calls))
            .await?
            .into_iter()
            .collect::<RedisResult<Vec<_>>>()
            .map_err(store_error)?;
        Ok(())
    }

    /// Counts `client` as one of `user`'s connections (and `user` as online)
    /// until this node stops refreshing it. Returns the user's live
    /// connections on every node, this one included.
    pub async fn add_connection(&self, user: &str, client: &str) -> Result<usize, PresenceError> {
        self.inner
            .local
            .lock()
            .users
            .entry(user.to_string())
            .or_default()
            .insert(client.to_string());
        let inner = &self.inner;
        let ttl = millis(inner.ttl);
        let mut conn = inner.conn.clone();
        let mut count = inner.scripts.set_add.key(keys::user_connections(user));
        count.arg(ttl).arg(client);
        let mut online = inner.scripts.set_add.key(keys::ONLINE);
        online.arg(ttl).arg(user);
        let mut c2 = conn.clone();
        let (count, online) = inner
            .timed(async {
                tokio::join!(
                    count.invoke_async::<u64>(&mut conn),
                    online.invoke_async::<u64>(&mut c2)
                )
            })
            .await?;
        online.map_err(store_error)?;
        Ok(usize::try_from(count.map_err(store_error)?).unwrap_or(usize::MAX))
    }

    /// The connection closed. A user left with none on any node stops being
    /// online. (On a Cluster the two keys live on different shards, so a
    /// connection opened on another node at that very moment can miss the
    /// online set until its node's next refresh, ttl/3 later.)
    pub async fn remove_connection(&self, user: &str, client: &str) -> Result<(), PresenceError> {
        {
            let mut local = self.inner.local.lock();
            if let Some(clients) = local.users.get_mut(user) {
                clients.remove(client);
                if clients.is_empty() {
                    local.users.remove(user);
                }
            }
        }
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let mut call = inner.scripts.set_remove.key(keys::user_connections(user));
        call.arg(client);
        let left: u64 = inner
            .timed(call.invoke_async(&mut conn))
            .await?
            .map_err(store_error)?;
        if left == 0 {
            let _: i64 = inner
                .timed(
                    redis::cmd("zrem")
                        .arg(keys::ONLINE)
                        .arg(user)
                        .query_async(&mut conn),
                )
                .await?
                .map_err(store_error)?;
        }
        Ok(())
    }

    /// `user`'s live connections on every node.
    pub async fn user_connections(&self, user: &str) -> Result<usize, PresenceError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let call = inner.scripts.set_live.key(keys::user_connections(user));
        let live: Vec<String> = inner
            .timed(call.invoke_async(&mut conn))
            .await?
            .map_err(store_error)?;
        Ok(live.len())
    }

    /// Users with at least one live connection on any node, sorted.
    pub async fn online(&self) -> Result<Vec<String>, PresenceError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let call = inner.scripts.set_live.key(keys::ONLINE);
        let mut users: Vec<String> = inner
            .timed(call.invoke_async(&mut conn))
            .await?
            .map_err(store_error)?;
        users.sort();
        Ok(users)
    }

    /// Pushes every local entry's expiry forward: one script call per
    /// channel and per user, all sent at once. Runs every ttl/3 by itself.
    pub async fn refresh(&self) -> Result<(), PresenceError> {
        self.inner.refresh().await
    }
}

fn forget(local: &mut Local, channel: &ChannelName, client: &str) {
    if let Some(clients) = local.channels.get_mut(channel) {
        clients.remove(client);
        if clients.is_empty() {
            local.channels.remove(channel);
        }
    }
}

impl Inner {
    /// Remembers `entry` for the refresh and starts the script call that
    /// stores it: the keys and arguments `add` and `join` share.
    fn entry_call<'a>(
        &self,
        script: &'a redis::Script,
        channel: &ChannelName,
        entry: &PresenceEntry,
    ) -> Result<redis::ScriptInvocation<'a>, PresenceError> {
        let json = serde_json::to_string(entry).map_err(store_error)?;
        self.local
            .lock()
            .channels
            .entry(channel.clone())
            .or_default()
            .insert(entry.client.clone(), json.clone());
        let mut call = script.key(keys::presence_entries(channel));
        call.key(keys::presence_expiries(channel))
            .arg(millis(self.ttl))
            .arg(&entry.client)
            .arg(json);
        Ok(call)
    }

    async fn timed<T>(&self, call: impl Future<Output = T>) -> Result<T, PresenceError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| store_error(conn::timed_out("presence command")))
    }

    async fn refresh(&self) -> Result<(), PresenceError> {
        let ttl = millis(self.ttl);
        let mut calls = Vec::new();
        {
            let local = self.local.lock();
            for (channel, clients) in &local.channels {
                let mut call = self
                    .scripts
                    .presence_add
                    .key(keys::presence_entries(channel));
                call.key(keys::presence_expiries(channel)).arg(ttl);
                for (client, json) in clients {
                    call.arg(client).arg(json);
                }
                calls.push(call);
            }
            for (user, clients) in &local.users {
                let mut call = self.scripts.set_add.key(keys::user_connections(user));
                call.arg(ttl);
                for client in clients {
                    call.arg(client);
                }
                calls.push(call);
            }
            if !local.users.is_empty() {
                let mut call = self.scripts.set_add.key(keys::ONLINE);
                call.arg(ttl);
                for user in local.users.keys() {
                    call.arg(user);
                }
                calls.push(call);
            }
        }
        let sent = calls.iter().map(|call| {
            let mut conn = self.conn.clone();
            async move { call.invoke_async::<redis::Value>(&mut conn).await }
        });
        self.timed(futures_util::future::join_all(sent))
            .await?
            .into_iter()
            .collect::<RedisResult<Vec<_>>>()
            .map_err(store_error)?;
        Ok(())
    }
}

async fn refresh_every(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = inner.refresh().await {
            tracing::warn!(error = %e, "presence refresh failed; next try in ttl/3");
        }
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn add(&self, channel: &ChannelName, entry: PresenceEntry) -> Result<(), PresenceError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let call = inner.entry_call(&inner.scripts.presence_add, channel, &entry)?;
        let _: i64 = inner
            .timed(call.invoke_async(&mut conn))
            .await?
            .map_err(store_error)?;
        Ok(())
    }

    async fn remove(&self, channel: &ChannelName, client: &str) -> Result<(), PresenceError> {
        RedisPresence::remove_many(self, client, std::slice::from_ref(channel)).await
    }

    async fn remove_many(
        &self,
        client: &str,
        channels: &[ChannelName],
    ) -> Result<(), PresenceError> {
        RedisPresence::remove_many(self, client, channels).await
    }

    /// The entry and its push in one script (`presence_join.lua`): the
    /// broker's own pub/sub channel and envelope, without the broker.
    async fn join(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        join: bytes::Bytes,
        _broker: &dyn Broker,
    ) -> Result<(), PresenceError> {
        RedisPresence::join(self, channel, entry, &join).await
    }

    async fn leave(
        &self,
        channel: &ChannelName,
        client: &str,
        leave: bytes::Bytes,
        _broker: &dyn Broker,
    ) -> Result<bool, PresenceError> {
        RedisPresence::leave(self, channel, client, &leave).await
    }

    async fn leave_many(
        &self,
        client: &str,
        leaves: &[(ChannelName, Option<bytes::Bytes>)],
        _broker: &dyn Broker,
    ) -> Result<(), PresenceError> {
        RedisPresence::leave_many(self, client, leaves).await
    }

    async fn add_connection(&self, user: &str, client: &str) -> Result<usize, PresenceError> {
        RedisPresence::add_connection(self, user, client).await
    }

    async fn remove_connection(&self, user: &str, client: &str) -> Result<(), PresenceError> {
        RedisPresence::remove_connection(self, user, client).await
    }

    async fn user_connections(&self, user: &str) -> Result<usize, PresenceError> {
        RedisPresence::user_connections(self, user).await
    }

    async fn online(&self) -> Result<Vec<String>, PresenceError> {
        RedisPresence::online(self).await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn get(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, PresenceError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let mut call = inner
            .scripts
            .presence_get
            .key(keys::presence_entries(channel));
        call.key(keys::presence_expiries(channel));
        let raw: Vec<Vec<u8>> = inner
            .timed(call.invoke_async(&mut conn))
            .await?
            .map_err(store_error)?;
        let mut entries: Vec<PresenceEntry> = raw
            .iter()
            .filter_map(|json| match serde_json::from_slice::<Stored>(json) {
                Ok(s) => Some(PresenceEntry {
                    user: s.user,
                    client: s.client,
                    info: s.info,
                    node: s.node,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable presence entry skipped");
                    None
                }
            })
            .collect();
        entries.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(entries)
    }
}
