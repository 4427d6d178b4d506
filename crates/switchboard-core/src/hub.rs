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

impl BroadcastOutcome {
    fn push(&mut self, client: &Arc<ClientHandle>, frame: &Bytes) {
        match client.outbox.push(frame.clone()) {
            Ok(()) => self.delivered += 1,
            Err(PushError::Overflow(n)) => {
                self.overflowed.push(client.clone());
                self.dropped += n;
            }
            Err(PushError::Closed) => {}
        }
    }
}

/// A user's connections on this node: most users have one, kept inline (no
/// allocation); more go to a vector.
#[derive(Debug)]
enum UserClients {
    One(Arc<ClientHandle>),
    Many(Vec<Arc<ClientHandle>>),
}

impl UserClients {
    fn as_slice(&self) -> &[Arc<ClientHandle>] {
        match self {
            UserClients::One(c) => std::slice::from_ref(c),
            UserClients::Many(v) => v,
        }
    }

    fn push(&mut self, client: Arc<ClientHandle>) {
        match self {
            UserClients::One(first) => {
                *self = UserClients::Many(vec![first.clone(), client]);
            }
            UserClients::Many(v) => v.push(client),
        }
    }

    /// Removes the client with `key`; true when none is left.
    fn remove(&mut self, key: u64) -> bool {
        match self {
            UserClients::One(c) => c.key == key,
            UserClients::Many(v) => {
                v.retain(|c| c.key != key);
                let empty = v.is_empty();
                if v.len() == 1
                    && let Some(last) = v.pop()
                {
                    *self = UserClients::One(last);
                }
                empty
            }
        }
    }
}

#[derive(Debug)]
pub struct Hub {
    hasher: RandomState,
    channels: Shards<HashMap<ChannelName, Subscribers>>,
    users: Shards<HashMap<Arc<str>, UserClients>>,
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
            match users.get_mut(&*client.user) {
                Some(list) if list.as_slice().len() >= max_per_user => {
                    drop(users);
                    self.connections.fetch_sub(1, Ordering::AcqRel);
                    return Err(AddError::UserFull);
                }
                Some(list) => list.push(client.clone()),
                None if max_per_user == 0 => {
                    drop(users);
                    self.connections.fetch_sub(1, Ordering::AcqRel);
                    return Err(AddError::UserFull);
                }
                None => {
                    users.insert(client.user.clone(), UserClients::One(client.clone()));
                }
            }
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
        if let Some(list) = users.get_mut(&*client.user)
            && list.remove(client.key)
        {
            users.remove(&*client.user);
        }
    }

    /// Adds `client` to `channel`; false when it was already there.
    pub fn subscribe(&self, channel: &ChannelName, client: &Arc<ClientHandle>) -> bool {
        if channel.personal_owner() == Some(&*client.user) {
            // Served from the user index: a flag, not a channel entry.
            let _users = self.users[self.shard(&*client.user)].lock();
            let added = !client.personal.swap(true, Ordering::Relaxed);
            if added {
                self.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            return added;
        }
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
        if channel.personal_owner() == Some(&*client.user) {
            let _users = self.users[self.shard(&*client.user)].lock();
            let removed = client.personal.swap(false, Ordering::Relaxed);
            if removed {
                self.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
            return removed;
        }
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
        if let Some(owner) = channel.personal_owner() {
            let users = self.users[self.shard(owner)].lock();
            if let Some(list) = users.get(owner) {
                for client in list.as_slice() {
                    if client.personal.load(Ordering::Relaxed) {
                        out.push(client, frame);
                    }
                }
            }
        }
        let shard = self.channels[self.shard(channel)].lock();
        if let Some(subs) = shard.get(channel) {
            for client in subs.values() {
                out.push(client, frame);
            }
        }
        out
    }

    /// Number of local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &ChannelName) -> usize {
        let personal = channel.personal_owner().map_or(0, |owner| {
            self.users[self.shard(owner)]
                .lock()
                .get(owner)
                .map_or(0, |l| {
                    l.as_slice()
                        .iter()
                        .filter(|c| c.personal.load(Ordering::Relaxed))
                        .count()
                })
        });
        personal
            + self.channels[self.shard(channel)]
                .lock()
                .get(channel)
                .map_or(0, HashMap::len)
    }

    /// Every connection of `user` on this node.
    pub fn user_clients(&self, user: &str) -> Vec<Arc<ClientHandle>> {
        self.users[self.shard(user)]
            .lock()
            .get(user)
            .map(|l| l.as_slice().to_vec())
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

    /// Number of channels with at least one local subscriber, personal
    /// channels not counted (they are served from the user index).
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

    #[test]
    fn personal_channels_reach_the_connections_that_listen_on_them() {
        let hub = Hub::new();
        let own = ChannelName::personal("a").expect("valid");
        let (a1, a2, b) = (
            client(1, "a", 100),
            client(2, "a", 100),
            client(3, "b", 100),
        );
        for c in [&a1, &a2, &b] {
            hub.add_client(c, 10, 10).expect("added");
        }
        assert!(hub.subscribe(&own, &a1));
        assert!(!hub.subscribe(&own, &a1));
        assert!(hub.subscribe(&own, &a2));
        assert_eq!(hub.subscriber_count(&own), 2);
        assert_eq!(hub.subscription_count(), 2);
        // Another user's connection subscribed to it is served too.
        assert!(hub.subscribe(&own, &b));
        assert_eq!(hub.broadcast(&own, &Bytes::from_static(b"x")).delivered, 3);
        assert!(hub.unsubscribe(&own, &a2));
        assert!(!hub.unsubscribe(&own, &a2));
        assert_eq!(hub.broadcast(&own, &Bytes::from_static(b"y")).delivered, 2);
        assert_eq!(a2.outbox.take().0.len(), 1);
        hub.remove_client(&a1);
        assert_eq!(hub.broadcast(&own, &Bytes::from_static(b"z")).delivered, 1);
        assert_eq!(hub.subscriber_count(&own), 1);
        assert_eq!(hub.channel_count(), 1);
    }
}
