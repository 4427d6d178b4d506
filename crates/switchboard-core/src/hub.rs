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
use hashbrown::HashTable;
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
/// allocation); more go to a boxed vector, so the entry stays two words.
#[derive(Debug)]
enum UserClients {
    One(Arc<ClientHandle>),
    // Boxed so that the entry of the common `One` case stays two words.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Arc<ClientHandle>>>),
}

impl UserClients {
    fn as_slice(&self) -> &[Arc<ClientHandle>] {
        match self {
            UserClients::One(c) => std::slice::from_ref(c),
            UserClients::Many(v) => v,
        }
    }

    /// The user, read from a connection: the table stores no key of its own.
    fn user(&self) -> &str {
        match self {
            UserClients::One(c) => &c.user,
            // A `Many` always holds two or more (see `remove`).
            UserClients::Many(v) => v.first().map_or("", |c| &c.user),
        }
    }

    fn push(&mut self, client: Arc<ClientHandle>) {
        match self {
            UserClients::One(first) => {
                *self = UserClients::Many(Box::new(vec![first.clone(), client]));
            }
            UserClients::Many(v) => v.push(client),
        }
    }

    /// Removes the client with `key`: `None` when it was not there, else
    /// whether none is left.
    fn remove(&mut self, key: u64) -> Option<bool> {
        match self {
            UserClients::One(c) => (c.key == key).then_some(true),
            UserClients::Many(v) => {
                let i = v.iter().position(|c| c.key == key)?;
                v.swap_remove(i);
                if v.len() == 1
                    && let Some(last) = v.pop()
                {
                    *self = UserClients::One(last);
                }
                Some(false)
            }
        }
    }
}

/// One shard of the user index: entries hashed by user with the hub's
/// hasher, the key read from the entry's connections.
#[derive(Debug, Default)]
struct Users(HashTable<UserClients>);

impl Users {
    fn get(&self, hash: u64, user: &str) -> Option<&UserClients> {
        self.0.find(hash, |e| e.user() == user)
    }

    /// Adds `client` (whose user hashes to `hash`) unless its user already
    /// has `max_per_user` connections; false when it was full.
    fn add(
        &mut self,
        hash: u64,
        client: &Arc<ClientHandle>,
        max_per_user: usize,
        hasher: &RandomState,
    ) -> bool {
        match self.0.find_mut(hash, |e| e.user() == &*client.user) {
            Some(list) if list.as_slice().len() >= max_per_user => false,
            Some(list) => {
                list.push(client.clone());
                true
            }
            None if max_per_user == 0 => false,
            None => {
                self.0
                    .insert_unique(hash, UserClients::One(client.clone()), |e| {
                        hasher.hash_one(e.user())
                    });
                true
            }
        }
    }

    /// Removes `client`; false when it was not there. Gives memory back once
    /// the table is mostly empty (after a crowd left).
    fn remove(&mut self, hash: u64, client: &ClientHandle, hasher: &RandomState) -> bool {
        let Ok(mut entry) = self.0.find_entry(hash, |e| e.user() == &*client.user) else {
            return false;
        };
        let Some(emptied) = entry.get_mut().remove(client.key) else {
            return false;
        };
        if emptied {
            entry.remove();
            if is_sparse(self.0.len(), self.0.capacity()) {
                self.0.shrink_to_fit(|e| hasher.hash_one(e.user()));
            }
        }
        true
    }
}

/// A table worth shrinking: mostly empty, and not small.
fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity > 64 && len * 4 < capacity
}

#[derive(Debug)]
pub struct Hub {
    hasher: RandomState,
    channels: Shards<HashMap<ChannelName, Subscribers>>,
    /// Every client, by user: also how the node enumerates its clients.
    users: Shards<Users>,
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
            connections: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
        }
    }

    fn shard<T: Hash + ?Sized>(&self, key: &T) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// A user's shard and hash in it: the shard from high bits, so that
    /// entries of one shard still spread over their table's buckets.
    fn user_slot(&self, user: &str) -> (usize, u64) {
        let hash = self.hasher.hash_one(user);
        ((hash >> 40) as usize % SHARDS, hash)
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
        let (shard, hash) = self.user_slot(&client.user);
        let added = self.users[shard]
            .lock()
            .add(hash, client, max_per_user, &self.hasher);
        if !added {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(AddError::UserFull);
        }
        Ok(())
    }

    /// Removes a client from the user index (not from channels); a second
    /// call does nothing.
    pub fn remove_client(&self, client: &ClientHandle) {
        let (shard, hash) = self.user_slot(&client.user);
        if self.users[shard].lock().remove(hash, client, &self.hasher) {
            self.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Adds `client` to `channel`; false when it was already there.
    pub fn subscribe(&self, channel: &ChannelName, client: &Arc<ClientHandle>) -> bool {
        if channel.personal_owner() == Some(&*client.user) {
            // Served from the user index: a flag, not a channel entry.
            let _users = self.users[self.user_slot(&client.user).0].lock();
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
            let _users = self.users[self.user_slot(&client.user).0].lock();
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
        // Memory goes back once a table is mostly empty.
        if is_sparse(subs.len(), subs.capacity()) {
            subs.shrink_to_fit();
        }
        if subs.is_empty() {
            shard.remove(channel);
            if is_sparse(shard.len(), shard.capacity()) {
                shard.shrink_to_fit();
            }
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
            let (shard, hash) = self.user_slot(owner);
            let users = self.users[shard].lock();
            if let Some(list) = users.get(hash, owner) {
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
            let (shard, hash) = self.user_slot(owner);
            self.users[shard].lock().get(hash, owner).map_or(0, |l| {
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

    /// How many connections `user` has on this node.
    pub fn user_connection_count(&self, user: &str) -> usize {
        let (shard, hash) = self.user_slot(user);
        self.users[shard]
            .lock()
            .get(hash, user)
            .map_or(0, |l| l.as_slice().len())
    }

    /// Every connection of `user` on this node.
    pub fn user_clients(&self, user: &str) -> Vec<Arc<ClientHandle>> {
        let (shard, hash) = self.user_slot(user);
        self.users[shard]
            .lock()
            .get(hash, user)
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default()
    }

    /// Users with at least one connection on this node.
    pub fn users(&self) -> Vec<Arc<str>> {
        let mut all = Vec::new();
        for shard in self.users.iter() {
            all.extend(
                shard
                    .lock()
                    .0
                    .iter()
                    .filter_map(|e| e.as_slice().first().map(|c| c.user.clone())),
            );
        }
        all
    }

    /// Every client, collected shard by shard (no lock is held while the
    /// caller works on the list).
    pub fn clients(&self) -> Vec<Arc<ClientHandle>> {
        let mut all = Vec::with_capacity(self.connection_count());
        for shard in self.users.iter() {
            for e in shard.lock().0.iter() {
                all.extend_from_slice(e.as_slice());
            }
        }
        all
    }

    /// Calls `f` for each client of one shard; used by the heartbeat sweep to
    /// visit the node a shard at a time without copying every handle.
    pub fn for_each_client_in_shard(&self, shard: usize, mut f: impl FnMut(&Arc<ClientHandle>)) {
        if let Some(s) = self.users.get(shard) {
            for e in s.lock().0.iter() {
                e.as_slice().iter().for_each(&mut f);
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

    #[test]
    fn the_user_index_follows_connections_in_any_order() {
        let hub = Hub::new();
        // Enough users to fill and then empty every shard's table.
        let clients: Vec<_> = (0..3000u64)
            .map(|k| client(k, &format!("u{}", k % 1000), 10))
            .collect();
        for c in &clients {
            hub.add_client(c, usize::MAX, 3).expect("added");
        }
        assert_eq!(hub.connection_count(), 3000);
        assert_eq!(hub.users().len(), 1000);
        let mut keys: Vec<u64> = hub.clients().iter().map(|c| c.key).collect();
        keys.sort_unstable();
        assert_eq!(keys, (0..3000).collect::<Vec<_>>());
        let mut visited = 0;
        for shard in 0..hub.shard_count() {
            hub.for_each_client_in_shard(shard, |_| visited += 1);
        }
        assert_eq!(visited, 3000);
        assert_eq!(hub.user_clients("u7").len(), 3);
        assert_eq!(hub.user_connection_count("u7"), 3);
        assert_eq!(hub.user_connection_count("nobody"), 0);

        // The middle connection of each user first, then the others.
        for c in clients.iter().skip(1000).take(1000) {
            hub.remove_client(c);
            hub.remove_client(c); // a second removal changes nothing
        }
        assert_eq!(hub.connection_count(), 2000);
        let u7: Vec<u64> = hub.user_clients("u7").iter().map(|c| c.key).collect();
        assert_eq!(u7.len(), 2);
        assert!(u7.contains(&7) && u7.contains(&2007));
        for c in clients.iter().take(1000) {
            hub.remove_client(c);
        }
        assert_eq!(hub.user_clients("u7").len(), 1);
        assert_eq!(hub.users().len(), 1000);
        for c in clients.iter().skip(2000) {
            hub.remove_client(c);
        }
        assert_eq!(hub.connection_count(), 0);
        assert!(hub.users().is_empty() && hub.clients().is_empty());
        assert!(hub.user_clients("u7").is_empty());
        // Emptied tables gave their memory back.
        assert!(hub.users.iter().all(|s| s.lock().0.capacity() <= 64));
        // And the index still works.
        hub.add_client(&clients[0], usize::MAX, 3)
            .expect("added again");
        assert_eq!(hub.user_clients("u0").len(), 1);
    }
}
