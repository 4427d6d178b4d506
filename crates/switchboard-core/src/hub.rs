//! The node's indexes of who is connected and who listens where.
//!
//! Each index is split into shards, each behind its own `parking_lot` mutex, so
//! that one busy channel or many small ones do not serialize on one lock. Locks
//! are held only to read or change the index and to push onto outboxes (which
//! never waits): never across an `.await`.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_protocol::ChannelName;

use crate::client::{ClientHandle, PushError};

const SHARDS: usize = 64;

type Subscribers = HashMap<u64, Arc<ClientHandle>>;
type Shards<T> = Box<[Mutex<T>]>;

/// Why a client could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    NodeFull,
    UserFull,
}

/// What one broadcast did.
#[derive(Debug, Default)]
pub struct BroadcastOutcome {
    pub delivered: usize,
    /// Clients whose outbox overflowed: the caller closes them as slow.
    pub overflowed: Vec<Arc<ClientHandle>>,
    /// Frames discarded with the overflowed queues.
    pub dropped: usize,
}

#[derive(Debug)]
pub struct Hub {
    hasher: RandomState,
    channels: Shards<HashMap<ChannelName, Subscribers>>,
    users: Shards<HashMap<Arc<str>, Vec<Arc<ClientHandle>>>>,
    clients: Shards<Subscribers>,
    connections: AtomicUsize,
    subscriptions: AtomicUsize,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

fn shards<T: Default>() -> Shards<T> {
    (0..SHARDS).map(|_| Mutex::new(T::default())).collect()
}

impl Hub {
    pub fn new() -> Self {
        Hub {
            hasher: RandomState::new(),
            channels: shards(),
            users: shards(),
            clients: shards(),
            connections: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
        }
    }

    fn shard<T: Hash + ?Sized>(&self, key: &T) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// Adds a client, unless the node or its user is at the limit.
    pub fn add_client(
        &self,
        client: &Arc<ClientHandle>,
        max_connections: usize,
        max_per_user: usize,
    ) -> Result<(), AddError> {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(AddError::NodeFull);
        }
        {
            let mut users = self.users[self.shard(&*client.user)].lock();
            let list = users.entry(client.user.clone()).or_default();
            if list.len() >= max_per_user {
                drop(users);
                self.connections.fetch_sub(1, Ordering::AcqRel);
                return Err(AddError::UserFull);
            }
            list.push(client.clone());
        }
        self.clients[self.shard(&client.key)]
            .lock()
            .insert(client.key, client.clone());
        Ok(())
    }

    /// Removes a client from the client and user indexes (not from channels).
    pub fn remove_client(&self, client: &ClientHandle) {
        if self.clients[self.shard(&client.key)]
            .lock()
            .remove(&client.key)
            .is_none()
        {
            return;
        }
        self.connections.fetch_sub(1, Ordering::AcqRel);
        let mut users = self.users[self.shard(&*client.user)].lock();
        if let Some(list) = users.get_mut(&*client.user) {
            list.retain(|c| c.key != client.key);
            if list.is_empty() {
                users.remove(&*client.user);
            }
        }
    }

    /// Adds `client` to `channel`; false when it was already there.
    pub fn subscribe(&self, channel: &ChannelName, client: &Arc<ClientHandle>) -> bool {
        let added = self.channels[self.shard(channel)]
            .lock()
            .entry(channel.clone())
            .or_default()
            .insert(client.key, client.clone())
            .is_none();
        if added {
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        added
    }

    /// Removes `client` from `channel`; false when it was not there.
    pub fn unsubscribe(&self, channel: &ChannelName, client: &ClientHandle) -> bool {
        let mut shard = self.channels[self.shard(channel)].lock();
        let Some(subs) = shard.get_mut(channel) else {
            return false;
        };
        let removed = subs.remove(&client.key).is_some();
        if subs.is_empty() {
            shard.remove(channel);
        }
        if removed {
            self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Pushes `frame` (encoded once, shared) to every subscriber of `channel`.
    pub fn broadcast(&self, channel: &ChannelName, frame: &Bytes) -> BroadcastOutcome {
        let mut out = BroadcastOutcome::default();
        let shard = self.channels[self.shard(channel)].lock();
        if let Some(subs) = shard.get(channel) {
            for client in subs.values() {
                match client.outbox.push(frame.clone()) {
                    Ok(()) => out.delivered += 1,
                    Err(PushError::Overflow(n)) => {
                        out.overflowed.push(client.clone());
                        out.dropped += n;
                    }
                    Err(PushError::Closed) => {}
                }
            }
        }
        out
    }

    /// Number of local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &ChannelName) -> usize {
        self.channels[self.shard(channel)]
            .lock()
            .get(channel)
            .map_or(0, HashMap::len)
    }

    /// Every connection of `user` on this node.
    pub fn user_clients(&self, user: &str) -> Vec<Arc<ClientHandle>> {
        self.users[self.shard(user)]
            .lock()
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// Users with at least one connection on this node.
    pub fn users(&self) -> Vec<Arc<str>> {
        let mut all = Vec::new();
        for shard in self.users.iter() {
            all.extend(shard.lock().keys().cloned());
        }
        all
    }

    /// Every client, collected shard by shard (no lock is held while the
    /// caller works on the list).
    pub fn clients(&self) -> Vec<Arc<ClientHandle>> {
        let mut all = Vec::with_capacity(self.connection_count());
        for shard in self.clients.iter() {
            all.extend(shard.lock().values().cloned());
        }
        all
    }

    /// Calls `f` for each client of one shard; used by the heartbeat sweep to
    /// visit the node a shard at a time without copying every handle.
    pub fn for_each_client_in_shard(&self, shard: usize, mut f: impl FnMut(&Arc<ClientHandle>)) {
        if let Some(s) = self.clients.get(shard) {
            for c in s.lock().values() {
                f(c);
            }
        }
    }

    pub const fn shard_count(&self) -> usize {
        SHARDS
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Number of channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientInit;

    fn client(key: u64, user: &str, max: usize) -> Arc<ClientHandle> {
        Arc::new(ClientHandle::new(
            key,
            0,
            ClientInit {
                user: user.into(),
                ..Default::default()
            },
            max,
            0,
        ))
    }

    #[test]
    fn per_user_and_node_limits_hold() {
        let hub = Hub::new();
        assert_eq!(hub.add_client(&client(1, "a", 10), 3, 2), Ok(()));
        assert_eq!(hub.add_client(&client(2, "a", 10), 3, 2), Ok(()));
        assert_eq!(
            hub.add_client(&client(3, "a", 10), 3, 2),
            Err(AddError::UserFull)
        );
        assert_eq!(hub.add_client(&client(4, "b", 10), 3, 2), Ok(()));
        assert_eq!(
            hub.add_client(&client(5, "c", 10), 3, 2),
            Err(AddError::NodeFull)
        );
        assert_eq!(hub.connection_count(), 3);
        assert_eq!(hub.user_clients("a").len(), 2);
    }

    #[test]
    fn broadcast_shares_one_frame_and_reports_overflow() {
        let hub = Hub::new();
        let ch = ChannelName::parse("c").expect("valid");
        let small = client(1, "a", 4);
        let big = client(2, "b", 100);
        hub.subscribe(&ch, &small);
        hub.subscribe(&ch, &big);
        let out = hub.broadcast(&ch, &Bytes::from_static(b"12345"));
        assert_eq!(out.delivered, 1);
        assert_eq!(out.overflowed.len(), 1);
        assert_eq!(out.overflowed[0].key, 1);
        assert!(hub.unsubscribe(&ch, &small));
        assert!(!hub.unsubscribe(&ch, &small));
        assert_eq!(hub.subscriber_count(&ch), 1);
    }
}
