//! The [`PresenceStore`] role: who is in a channel now, who is connected
//! (online users, each user's connections, for the per-user limit), and
//! [`MemoryPresence`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use switchboard_protocol::ChannelName;

use crate::broker::Broker;

/// One client present in a channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PresenceEntry {
    pub user: String,
    pub client: String,
    /// The token's `info` claim, or `null`.
    pub info: serde_json::Value,
    pub node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence store failed: {0}")]
    Store(String),
}

/// Per-channel presence, and connections per user.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    async fn add(&self, channel: &ChannelName, entry: PresenceEntry) -> Result<(), PresenceError>;
    async fn remove(&self, channel: &ChannelName, client: &str) -> Result<(), PresenceError>;
    /// Entries ordered by client id.
    async fn get(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, PresenceError>;

    /// Takes `client` out of every channel of `channels` (a disconnect): one
    /// round trip for a shared store, however many channels.
    async fn remove_many(
        &self,
        client: &str,
        channels: &[ChannelName],
    ) -> Result<(), PresenceError> {
        for c in channels {
            self.remove(c, client).await?;
        }
        Ok(())
    }

    /// Adds `entry` and announces it with `join` (its join push) to the
    /// channel's subscribers on every node, as one step: whoever sees the
    /// push finds the entry, and a node stopped half-way (killed, its
    /// connection to a shared store dropped) leaves neither an entry without
    /// its join nor a join without its entry. A shared store does it in one
    /// command of its own; a store inside the process adds and pushes
    /// through `broker` with nothing between the two that can stop.
    async fn join(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        join: Bytes,
        broker: &dyn Broker,
    ) -> Result<(), PresenceError>;

    /// Removes `client` and, only if it was present, announces it with
    /// `leave`, as one step (see [`PresenceStore::join`]): a client removed
    /// twice leaves once. Whether it was present.
    async fn leave(
        &self,
        channel: &ChannelName,
        client: &str,
        leave: Bytes,
        broker: &dyn Broker,
    ) -> Result<bool, PresenceError>;

    /// Takes `client` out of every channel of `leaves` (a disconnect), each
    /// with its leave push when it has one, each channel as one step (see
    /// [`PresenceStore::leave`]): one round trip for a shared store.
    async fn leave_many(
        &self,
        client: &str,
        leaves: &[(ChannelName, Option<Bytes>)],
        broker: &dyn Broker,
    ) -> Result<(), PresenceError> {
        for (channel, push) in leaves {
            match push {
                Some(push) => {
                    self.leave(channel, client, push.clone(), broker).await?;
                }
                None => self.remove(channel, client).await?,
            }
        }
        Ok(())
    }

    /// Counts `client` as a connection of `user` (and `user` as online).
    /// Returns `user`'s connections on every node, this one included.
    async fn add_connection(&self, user: &str, client: &str) -> Result<usize, PresenceError>;
    /// The connection closed; a user left with none is no longer online.
    async fn remove_connection(&self, user: &str, client: &str) -> Result<(), PresenceError>;
    /// `user`'s connections on every node.
    async fn user_connections(&self, user: &str) -> Result<usize, PresenceError>;
    /// Users with at least one connection on any node, sorted.
    async fn online(&self) -> Result<Vec<String>, PresenceError>;

    /// Whether other nodes share this store. When not, the node's hub
    /// already knows every connection exactly, and the node skips the
    /// connection calls above (an idle connection then costs nothing here).
    fn shared(&self) -> bool {
        false
    }
}

/// Presence of this node's clients, kept in memory.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    channels: Mutex<HashMap<ChannelName, BTreeMap<String, PresenceEntry>>>,
    /// user → clients.
    users: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

fn push_failed(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::Store(format!("presence push: {e}"))
}

/// Inside one process the entry and its push live and die together: the
/// add (or removal) and the push follow each other with nothing between
/// them that can stop (the memory broker's push does not wait).
#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn join(
        &self,
        channel: &ChannelName,
        entry: PresenceEntry,
        join: Bytes,
        broker: &dyn Broker,
    ) -> Result<(), PresenceError> {
        self.add(channel, entry).await?;
        broker.push(channel, join).await.map_err(push_failed)
    }

    async fn leave(
        &self,
        channel: &ChannelName,
        client: &str,
        leave: Bytes,
        broker: &dyn Broker,
    ) -> Result<bool, PresenceError> {
        let was = {
            let mut channels = self.channels.lock();
            let was = channels
                .get_mut(channel)
                .is_some_and(|entries| entries.remove(client).is_some());
            if channels.get(channel).is_some_and(BTreeMap::is_empty) {
                channels.remove(channel);
            }
            was
        };
        if was {
            broker.push(channel, leave).await.map_err(push_failed)?;
        }
        Ok(was)
    }

    async fn add(&self, channel: &ChannelName, entry: PresenceEntry) -> Result<(), PresenceError> {
        self.channels
            .lock()
            .entry(channel.clone())
            .or_default()
            .insert(entry.client.clone(), entry);
        Ok(())
    }

    async fn remove(&self, channel: &ChannelName, client: &str) -> Result<(), PresenceError> {
        let mut channels = self.channels.lock();
        if let Some(entries) = channels.get_mut(channel) {
            entries.remove(client);
            if entries.is_empty() {
                channels.remove(channel);
            }
        }
        Ok(())
    }

    async fn get(&self, channel: &ChannelName) -> Result<Vec<PresenceEntry>, PresenceError> {
        Ok(self
            .channels
            .lock()
            .get(channel)
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn add_connection(&self, user: &str, client: &str) -> Result<usize, PresenceError> {
        let mut users = self.users.lock();
        let clients = users.entry(user.to_string()).or_default();
        clients.insert(client.to_string());
        Ok(clients.len())
    }

    async fn remove_connection(&self, user: &str, client: &str) -> Result<(), PresenceError> {
        let mut users = self.users.lock();
        if let Some(clients) = users.get_mut(user) {
            clients.remove(client);
            if clients.is_empty() {
                users.remove(user);
            }
        }
        Ok(())
    }

    async fn user_connections(&self, user: &str) -> Result<usize, PresenceError> {
        Ok(self.users.lock().get(user).map_or(0, BTreeSet::len))
    }

    async fn online(&self) -> Result<Vec<String>, PresenceError> {
        Ok(self.users.lock().keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_come_and_go() {
        let p = MemoryPresence::default();
        let ch = ChannelName::parse("c").expect("valid");
        let e = PresenceEntry {
            user: "u".into(),
            client: "c-1".into(),
            info: serde_json::Value::Null,
            node: "n1".into(),
        };
        p.add(&ch, e.clone()).await.expect("add");
        assert_eq!(p.get(&ch).await.expect("get"), vec![e]);
        p.remove(&ch, "c-1").await.expect("remove");
        assert!(p.get(&ch).await.expect("get").is_empty());
    }
}
