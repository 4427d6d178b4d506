//! The node's indexes of who is connected and who listens where, with each
//! channel's `Stream` (its position on this node, held publications and
//! joining subscribers).
//!
//! Each index is split into shards, each behind its own `parking_lot` mutex, so
//! that one busy channel or many small ones do not serialize on one lock. Locks
//! are held only to read or change the index and to push onto outboxes (which
//! never waits): never across an `.await`. History reads happen outside, in
//! the node; their results come back through `Hub::finish_join` and
//! `Hub::fill`.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_protocol::{ChannelName, Publication};

use crate::client::{ClientHandle, PushError};
use crate::history::HistoryRead;
use crate::subscription::{Gap, Joined, Sink, Stream};

mod top;
mod users;
use users::{UserClients, Users, is_sparse};

const SHARDS: usize = 64;

type Subscribers = HashMap<u64, Arc<ClientHandle>>;
type Shards<T> = Box<[Mutex<T>]>;

/// A channel with local subscribers (live or joining).
#[derive(Debug, Default)]
struct Channel {
    /// Live subscribers: each is at the stream's position.
    subscribers: Subscribers,
    stream: Stream,
    /// The node's broker subscription to it is confirmed.
    broker: bool,
}

impl Channel {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && !self.stream.has_joiners()
    }
}

/// Which of a channel's streams: a personal channel's owner's connections
/// are served from the user index, anyone else from a channel entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKey {
    Own,
    Shared,
}

/// How a subscribe started.
#[derive(Debug)]
pub(crate) enum Begin {
    /// The channel's position was known and no recovery was asked: the
    /// client is live and its reply queued.
    Live(BroadcastOutcome),
    /// The client buffers; the node reads history and calls `finish_join`.
    /// `broker_subscribe`: the node's broker subscription is not confirmed yet.
    Joining { broker_subscribe: bool },
}

/// The live subscribers a stream's items go to, and what happened.
struct Fanout<'a> {
    live: Live<'a>,
    out: &'a mut BroadcastOutcome,
    promoted: Vec<Arc<ClientHandle>>,
}

enum Live<'a> {
    Channel(&'a Subscribers),
    /// A user's connections that listen on their personal channel.
    Own(Option<&'a UserClients>),
}

impl Sink for Fanout<'_> {
    fn live(&mut self, frame: &Bytes) {
        match self.live {
            Live::Channel(subs) => {
                for client in subs.values() {
                    self.out.push(client, frame);
                }
            }
            Live::Own(Some(list)) => {
                for client in list.as_slice() {
                    if client.personal.load(Ordering::Relaxed) {
                        self.out.push(client, frame);
                    }
                }
            }
            Live::Own(None) => {}
        }
        for client in &self.promoted {
            self.out.push(client, frame);
        }
    }

    fn one(&mut self, client: &Arc<ClientHandle>, frame: &Bytes) {
        self.out.push(client, frame);
    }

    fn promote(&mut self, client: Arc<ClientHandle>) {
        self.promoted.push(client);
    }

    fn lost(&mut self) {
        self.out.lost += 1;
    }

    fn overflowed(&mut self, client: Arc<ClientHandle>) {
        if client.outbox.close(crate::disconnect::Disconnect::SLOW) {
            self.out.overflowed.push(client);
        }
    }
}

/// Why a client could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddError {
    NodeFull,
    UserFull,
}

/// What one broadcast did.
#[derive(Debug, Default)]
#[must_use]
pub struct BroadcastOutcome {
    pub delivered: usize,
    /// Clients whose outbox overflowed: the caller closes them as slow.
    pub overflowed: Vec<Arc<ClientHandle>>,
    /// Frames discarded with the overflowed queues.
    pub dropped: usize,
    /// `lost` pushes sent (once per stream, however many subscribers).
    pub lost: usize,
    /// Whether to note `first_queued` (a traced delivery): otherwise no
    /// clock is read.
    timed: bool,
    /// When the first frame went into an outbox.
    pub first_queued: Option<std::time::Instant>,
}

impl BroadcastOutcome {
    pub(crate) fn push(&mut self, client: &Arc<ClientHandle>, frame: &Bytes) {
        match client.outbox.push(frame.clone()) {
            Ok(()) => {
                if self.timed && self.first_queued.is_none() {
                    self.first_queued = Some(std::time::Instant::now());
                }
                self.delivered += 1;
            }
            Err(PushError::Overflow(n)) => {
                self.overflowed.push(client.clone());
                self.dropped += n;
            }
            Err(PushError::Closed) => {}
        }
    }
}

#[derive(Debug)]
pub struct Hub {
    hasher: RandomState,
    channels: Shards<HashMap<ChannelName, Channel>>,
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

    /// Adds a client, unless the node or its user is at the limit; true
    /// when it is its user's first connection on this node (decided under
    /// the user's lock, so two first connections at once cannot both miss it).
    pub fn add_client(
        &self,
        client: &Arc<ClientHandle>,
        max_connections: usize,
        max_per_user: usize,
    ) -> Result<bool, AddError> {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(AddError::NodeFull);
        }
        let (shard, hash) = self.user_slot(&client.user);
        let added = self.users[shard]
            .lock()
            .add(hash, client, max_per_user, &self.hasher);
        let Some(first) = added else {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(AddError::UserFull);
        };
        Ok(first)
    }

    /// Removes a client from the user index (not from channels); a second
    /// call does nothing.
    pub fn remove_client(&self, client: &ClientHandle) {
        let (shard, hash) = self.user_slot(&client.user);
        if self.users[shard].lock().remove(hash, client, &self.hasher) {
            self.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Adds `client` to `channel` as a live subscriber without a position of
    /// its own (a connection's personal channel: it starts at the first
    /// publication that reaches it); false when it was already there.
    pub fn subscribe(&self, channel: &ChannelName, client: &Arc<ClientHandle>) -> bool {
        if channel.personal_owner() == Some(&*client.user) {
            // Served from the user index: a flag, not a channel entry.
            let mut users = self.users[self.user_slot(&client.user).0].lock();
            let joining = users
                .1
                .get_mut(&*client.user)
                .is_some_and(|s| s.remove_joiner(client.key));
            let added = !client.personal.swap(true, Ordering::Relaxed) && !joining;
            if added {
                self.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            return added;
        }
        let mut shard = self.channels[self.shard(channel)].lock();
        let entry = shard.entry(channel.clone()).or_default();
        let joining = entry.stream.remove_joiner(client.key);
        let added = entry
            .subscribers
            .insert(client.key, client.clone())
            .is_none()
            && !joining;
        if added {
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        added
    }

    /// Removes `client` from `channel`; false when it was not there.
    pub fn unsubscribe(&self, channel: &ChannelName, client: &ClientHandle) -> bool {
        self.leave(channel, client).is_some()
    }

    /// Removes `client` from `channel` (live or joining): `None` when it was
    /// not there, else whether the channel has no channel entry left (a
    /// personal channel's broker subscription follows its owner's
    /// connections instead).
    pub(crate) fn leave(&self, channel: &ChannelName, client: &ClientHandle) -> Option<bool> {
        let mut removed = false;
        let mut last = true;
        if let Some(owner) = channel.personal_owner() {
            let (shard, hash) = self.user_slot(owner);
            let mut users = self.users[shard].lock();
            if owner == &*client.user {
                removed |= client.personal.swap(false, Ordering::Relaxed);
            }
            removed |= users
                .1
                .get_mut(owner)
                .is_some_and(|s| s.remove_joiner(client.key));
            users.tidy(hash, owner);
        }
        let mut shard = self.channels[self.shard(channel)].lock();
        if let Some(entry) = shard.get_mut(channel) {
            removed |= entry.subscribers.remove(&client.key).is_some();
            removed |= entry.stream.remove_joiner(client.key);
            // Memory goes back once a table is mostly empty.
            if is_sparse(entry.subscribers.len(), entry.subscribers.capacity()) {
                entry.subscribers.shrink_to_fit();
            }
            if entry.is_empty() {
                shard.remove(channel);
                if is_sparse(shard.len(), shard.capacity()) {
                    shard.shrink_to_fit();
                }
            } else {
                last = false;
            }
        }
        if !removed {
            return None;
        }
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        Some(last)
    }

    /// Starts a subscribe. Without `recover`, on a channel whose position is
    /// known, the client goes live at once and `reply` (given the position)
    /// is queued under the lock, before any later publication. Otherwise it
    /// joins as a buffering subscriber (a live one stops being live until its
    /// join ends, so its recovery and live publications stay in order).
    pub(crate) fn begin_join(
        &self,
        channel: &ChannelName,
        client: &Arc<ClientHandle>,
        recover: bool,
        reply: impl FnOnce(&str, u64) -> Option<Bytes>,
    ) -> Begin {
        let mut out = BroadcastOutcome::default();
        if channel.personal_owner() == Some(&*client.user) {
            let (shard, _) = self.user_slot(&client.user);
            let mut users = self.users[shard].lock();
            let stream = users.1.entry(client.user.clone()).or_default();
            let was_live = client.personal.load(Ordering::Relaxed);
            if let (false, Some((epoch, offset))) = (recover, stream.position()) {
                let frame = reply(epoch, offset);
                if !was_live && !stream.is_joining(client.key) {
                    self.subscriptions.fetch_add(1, Ordering::Relaxed);
                }
                stream.remove_joiner(client.key);
                if let Some(frame) = frame {
                    out.push(client, &frame);
                }
                client.personal.store(true, Ordering::Relaxed);
                return Begin::Live(out);
            }
            if !was_live && !stream.is_joining(client.key) {
                self.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            client.personal.store(false, Ordering::Relaxed);
            stream.add_joiner(client.clone());
            return Begin::Joining {
                broker_subscribe: false,
            };
        }
        let mut shard = self.channels[self.shard(channel)].lock();
        let entry = shard.entry(channel.clone()).or_default();
        let was_there =
            entry.subscribers.contains_key(&client.key) || entry.stream.is_joining(client.key);
        if !was_there {
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        if entry.broker
            && !recover
            && let Some((epoch, offset)) = entry.stream.position()
        {
            if let Some(frame) = reply(epoch, offset) {
                out.push(client, &frame);
            }
            entry.stream.remove_joiner(client.key);
            entry.subscribers.insert(client.key, client.clone());
            return Begin::Live(out);
        }
        entry.subscribers.remove(&client.key);
        entry.stream.add_joiner(client.clone());
        Begin::Joining {
            broker_subscribe: !entry.broker,
        }
    }

    /// The node's broker subscription to `channel` is confirmed; false when
    /// the channel has no local subscriber any more.
    pub(crate) fn broker_subscribed(&self, channel: &ChannelName) -> bool {
        match self.channels[self.shard(channel)].lock().get_mut(channel) {
            Some(entry) => {
                entry.broker = true;
                true
            }
            None => false,
        }
    }

    /// Whether the node has local subscribers of `channel` in a channel
    /// entry (so it needs its broker subscription).
    pub(crate) fn has_channel(&self, channel: &ChannelName) -> bool {
        self.channels[self.shard(channel)]
            .lock()
            .contains_key(channel)
    }

    /// Ends a join whose reads cover `epoch` up to `covered` (see
    /// [`Stream::finish_join`]): `head` is queued first, then what the reads
    /// did not cover. A client removed meanwhile is dropped instead.
    pub(crate) fn finish_join(
        &self,
        channel: &ChannelName,
        client: &Arc<ClientHandle>,
        epoch: &Arc<str>,
        covered: u64,
        head: &[Bytes],
    ) -> (Joined, BroadcastOutcome, Gap) {
        let mut out = BroadcastOutcome::default();
        if channel.personal_owner() == Some(&*client.user) {
            let (shard, hash) = self.user_slot(&client.user);
            let mut guard = self.users[shard].lock();
            let users = &mut *guard;
            let Some(stream) = users.1.get_mut(&*client.user) else {
                return (Joined::Gone, out, Gap::None);
            };
            if client.is_removed() {
                stream.remove_joiner(client.key);
                users.tidy(hash, &client.user.clone());
                return (Joined::Gone, out, Gap::None);
            }
            let mut sink = Fanout {
                live: Live::Own(users.0.find(hash, |e| e.user() == &*client.user)),
                out: &mut out,
                promoted: Vec::new(),
            };
            let joined = stream.finish_join(channel, client, epoch, covered, head, &mut sink);
            if joined == Joined::Live {
                sink.promoted.push(client.clone());
            }
            let gap = stream.resume(channel, &mut sink);
            for c in sink.promoted {
                c.personal.store(true, Ordering::Relaxed);
            }
            return (joined, out, gap);
        }
        let mut shard = self.channels[self.shard(channel)].lock();
        let Some(entry) = shard.get_mut(channel) else {
            return (Joined::Gone, out, Gap::None);
        };
        if client.is_removed() {
            entry.stream.remove_joiner(client.key);
            return (Joined::Gone, out, Gap::None);
        }
        let Channel {
            subscribers,
            stream,
            ..
        } = entry;
        let mut sink = Fanout {
            live: Live::Channel(subscribers),
            out: &mut out,
            promoted: Vec::new(),
        };
        let joined = stream.finish_join(channel, client, epoch, covered, head, &mut sink);
        if joined == Joined::Live {
            sink.promoted.push(client.clone());
        }
        let gap = stream.resume(channel, &mut sink);
        let promoted = sink.promoted;
        for c in promoted {
            subscribers.insert(c.key, c);
        }
        (joined, out, gap)
    }

    /// Hands a publication to `channel`'s streams. Returns what was pushed,
    /// and which streams now have a hole to fill; `timed`: note when the
    /// first frame was queued.
    pub(crate) fn publication(
        &self,
        p: &Arc<Publication>,
        timed: bool,
    ) -> (BroadcastOutcome, Vec<StreamKey>) {
        let channel = &p.channel;
        let mut out = BroadcastOutcome {
            timed,
            ..BroadcastOutcome::default()
        };
        let mut gaps = Vec::new();
        if let Some(owner) = channel.personal_owner() {
            let (shard, hash) = self.user_slot(owner);
            let mut guard = self.users[shard].lock();
            let users = &mut *guard;
            let list = users.0.find(hash, |e| e.user() == owner);
            let has_live = list.is_some_and(|l| {
                l.as_slice()
                    .iter()
                    .any(|c| c.personal.load(Ordering::Relaxed))
            });
            let stream = match (users.1.get_mut(owner), list) {
                (Some(s), _) => Some(s),
                (None, Some(l)) if has_live => {
                    Some(users.1.entry(l.as_slice()[0].user.clone()).or_default())
                }
                _ => None,
            };
            if let Some(stream) = stream {
                let mut sink = Fanout {
                    live: Live::Own(list),
                    out: &mut out,
                    promoted: Vec::new(),
                };
                if stream.publication(channel, p.clone(), has_live, &mut sink) == Gap::New {
                    gaps.push(StreamKey::Own);
                }
                for c in sink.promoted {
                    c.personal.store(true, Ordering::Relaxed);
                }
            }
        }
        let mut shard = self.channels[self.shard(channel)].lock();
        if let Some(entry) = shard.get_mut(channel) {
            let has_live = !entry.subscribers.is_empty();
            let Channel {
                subscribers,
                stream,
                ..
            } = entry;
            let mut sink = Fanout {
                live: Live::Channel(subscribers),
                out: &mut out,
                promoted: Vec::new(),
            };
            if stream.publication(channel, p.clone(), has_live, &mut sink) == Gap::New {
                gaps.push(StreamKey::Shared);
            }
            let promoted = sink.promoted;
            for c in promoted {
                subscribers.insert(c.key, c);
            }
        }
        (out, gaps)
    }

    /// Runs `f` on one of `channel`'s streams with its live subscribers,
    /// then adds the subscribers it promoted.
    fn with_stream<R>(
        &self,
        channel: &ChannelName,
        key: StreamKey,
        f: impl FnOnce(&mut Stream, &mut Fanout<'_>) -> R,
    ) -> Option<(R, BroadcastOutcome)> {
        let mut out = BroadcastOutcome::default();
        match (key, channel.personal_owner()) {
            (StreamKey::Own, Some(owner)) => {
                let (shard, hash) = self.user_slot(owner);
                let mut guard = self.users[shard].lock();
                let users = &mut *guard;
                let stream = users.1.get_mut(owner)?;
                let mut sink = Fanout {
                    live: Live::Own(users.0.find(hash, |e| e.user() == owner)),
                    out: &mut out,
                    promoted: Vec::new(),
                };
                let r = f(stream, &mut sink);
                for c in sink.promoted {
                    c.personal.store(true, Ordering::Relaxed);
                }
                Some((r, out))
            }
            (StreamKey::Own, None) => None,
            (StreamKey::Shared, _) => {
                let mut shard = self.channels[self.shard(channel)].lock();
                let Channel {
                    subscribers,
                    stream,
                    ..
                } = shard.get_mut(channel)?;
                let mut sink = Fanout {
                    live: Live::Channel(subscribers),
                    out: &mut out,
                    promoted: Vec::new(),
                };
                let r = f(stream, &mut sink);
                let promoted = sink.promoted;
                for c in promoted {
                    subscribers.insert(c.key, c);
                }
                Some((r, out))
            }
        }
    }

    /// Where a fill of the stream must read from, when one is still due.
    pub(crate) fn fill_from(
        &self,
        channel: &ChannelName,
        key: StreamKey,
    ) -> Option<(Arc<str>, u64)> {
        self.with_stream(channel, key, |s, _| s.fill_from())
            .and_then(|(r, _)| r)
    }

    /// The stream's position, for a resync.
    pub(crate) fn position(
        &self,
        channel: &ChannelName,
        key: StreamKey,
    ) -> Option<(Arc<str>, u64)> {
        self.with_stream(channel, key, |s, _| {
            s.position().map(|(e, o)| (e.clone(), o))
        })
        .and_then(|(r, _)| r)
    }

    /// Applies a history read to a stream (see [`Stream::fill`]).
    pub(crate) fn fill(
        &self,
        channel: &ChannelName,
        key: StreamKey,
        read: &HistoryRead,
        definitive: bool,
    ) -> (BroadcastOutcome, Gap) {
        self.with_stream(channel, key, |s, sink| {
            s.fill(channel, read, definitive, sink)
        })
        .map_or_else(|| (BroadcastOutcome::default(), Gap::None), |(g, o)| (o, g))
    }

    /// Every stream that has a position (for a resync).
    pub(crate) fn streams(&self) -> Vec<(ChannelName, StreamKey)> {
        let mut all = Vec::new();
        for shard in self.channels.iter() {
            all.extend(
                shard
                    .lock()
                    .iter()
                    .filter(|(_, e)| e.stream.position().is_some())
                    .map(|(c, _)| (c.clone(), StreamKey::Shared)),
            );
        }
        for shard in self.users.iter() {
            all.extend(
                shard
                    .lock()
                    .1
                    .iter()
                    .filter(|(_, s)| s.position().is_some())
                    .filter_map(|(u, _)| ChannelName::personal(u).ok())
                    .map(|c| (c, StreamKey::Own)),
            );
        }
        all
    }

    /// Pushes `frame` (encoded once, shared) to every subscriber of
    /// `channel`, joining ones included: a push that is not a publication
    /// (join, leave) has no offset to order it by.
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
            if let Some(stream) = users.1.get(owner) {
                for client in stream.joiners() {
                    out.push(client, frame);
                }
            }
        }
        let shard = self.channels[self.shard(channel)].lock();
        if let Some(entry) = shard.get(channel) {
            for client in entry.subscribers.values() {
                out.push(client, frame);
            }
            for client in entry.stream.joiners() {
                out.push(client, frame);
            }
        }
        out
    }

    /// Number of local subscribers of `channel`, joining ones included.
    pub fn subscriber_count(&self, channel: &ChannelName) -> usize {
        let personal = channel.personal_owner().map_or(0, |owner| {
            let (shard, hash) = self.user_slot(owner);
            let users = self.users[shard].lock();
            users.get(hash, owner).map_or(0, |l| {
                l.as_slice()
                    .iter()
                    .filter(|c| c.personal.load(Ordering::Relaxed))
                    .count()
            }) + users.1.get(owner).map_or(0, Stream::joiner_count)
        });
        personal
            + self.channels[self.shard(channel)]
                .lock()
                .get(channel)
                .map_or(0, |e| e.subscribers.len() + e.stream.joiner_count())
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
        assert_eq!(hub.add_client(&client(1, "a", 10), 3, 2), Ok(true));
        assert_eq!(hub.add_client(&client(2, "a", 10), 3, 2), Ok(false));
        assert_eq!(
            hub.add_client(&client(3, "a", 10), 3, 2),
            Err(AddError::UserFull)
        );
        assert_eq!(hub.add_client(&client(4, "b", 10), 3, 2), Ok(true));
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

    fn publication(channel: &ChannelName, offset: u64) -> Arc<Publication> {
        Arc::new(Publication::new(
            channel.clone(),
            offset,
            Arc::from("e"),
            Bytes::from_static(b"1"),
            None,
        ))
    }

    fn offsets(client: &ClientHandle) -> Vec<u64> {
        client
            .outbox
            .take()
            .0
            .into_iter()
            .filter_map(|o| match o {
                crate::client::Out::Frame(b) => serde_json::from_slice::<serde_json::Value>(&b)
                    .ok()
                    .and_then(|v| v["offset"].as_u64()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_personal_channel_keeps_order_and_its_stream_lives_only_while_someone_listens() {
        let hub = Hub::new();
        let own = ChannelName::personal("a").expect("valid");
        let (a1, a2) = (client(1, "a", 1 << 20), client(2, "a", 1 << 20));
        for c in [&a1, &a2] {
            hub.add_client(c, 10, 10).expect("added");
            hub.subscribe(&own, c);
        }
        assert!(
            hub.users.iter().all(|s| s.lock().1.is_empty()),
            "no stream while idle"
        );
        // The first publication places the stream; a later one that comes
        // early waits for the one before it.
        let (out, gaps) = hub.publication(&publication(&own, 7), false);
        assert_eq!((out.delivered, gaps.len()), (2, 0));
        let (out, gaps) = hub.publication(&publication(&own, 9), false);
        assert_eq!((out.delivered, gaps), (0, vec![StreamKey::Own]));
        let (out, _) = hub.publication(&publication(&own, 8), false);
        assert_eq!(out.delivered, 4);
        let (out, _) = hub.publication(&publication(&own, 8), false);
        assert_eq!(out.delivered, 0, "a duplicate is dropped");
        assert_eq!(offsets(&a1), [7, 8, 9]);
        assert_eq!(offsets(&a2), [7, 8, 9]);
        for c in [&a1, &a2] {
            hub.remove_client(c);
            assert_eq!(hub.leave(&own, c), Some(true));
        }
        assert!(
            hub.users.iter().all(|s| s.lock().1.is_empty()),
            "the stream is gone"
        );
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
