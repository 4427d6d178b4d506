//! The [`HistoryStore`] role: per-channel offsets, epochs and stored
//! publications, and [`MemoryHistory`], kept in this process.
//!
//! The store assigns offsets; the broker calls it while it holds the channel's
//! publish lock, so offsets and delivery order agree.

use std::collections::hash_map::Entry;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_protocol::{ChannelName, IdempotencyKey, Publication, StreamPosition};

use crate::idempotency::StoredKey;
use tokio::time::Instant;

/// How much of a channel's stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Publications kept; 0 keeps none.
    pub size: usize,
    /// Age past which a publication is dropped; zero keeps none.
    pub ttl: Duration,
    /// Channels of the namespace that may keep history at once; 0: no cap.
    /// A publication that would start one more is refused
    /// ([`HistoryError::ChannelLimit`]).
    pub max_channels: usize,
}

impl Retention {
    pub fn keeps_nothing(&self) -> bool {
        self.size == 0 || self.ttl.is_zero()
    }
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Publications strictly after this position; `None`: the latest ones.
    pub since: Option<StreamPosition>,
    /// At most this many; `None`: all that match.
    pub limit: Option<usize>,
}

impl HistoryQuery {
    /// Every publication after `offset` of `epoch`.
    pub fn since(offset: u64, epoch: &str) -> Self {
        HistoryQuery {
            since: Some(StreamPosition {
                offset,
                epoch: epoch.into(),
            }),
            limit: None,
        }
    }
}

/// The answer to a read.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    /// Oldest first.
    pub publications: Vec<Arc<Publication>>,
    /// The channel's latest offset (0 before its first publication).
    pub offset: u64,
    pub epoch: Arc<str>,
    /// With `since`: every publication after it is in `publications`, in order.
    pub recovered: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The store could not be read or written; nothing was changed.
    #[error("history store failed: {0}")]
    Store(String),
    /// The namespace already has `Retention::max_channels` channels with
    /// history; nothing was published.
    #[error("namespace `{0}` has as many channels with history as it may keep")]
    ChannelLimit(String),
}

/// One pass of the history sweep (see [`HistoryStore::sweep`]).
pub struct Sweep<'a> {
    /// The retention that governs a channel now (its namespace's).
    pub retention: &'a (dyn Fn(&ChannelName) -> Retention + Sync),
    /// A stream that never kept history is forgotten after this long untouched.
    pub idle: Duration,
    /// At most about this many streams are looked at in one pass; the next
    /// pass goes on where this one stopped, so a pass never stalls the node.
    pub budget: usize,
}

/// What a sweep pass did, and what the store holds after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Streams looked at.
    pub examined: usize,
    /// Streams forgotten.
    pub dropped: usize,
    /// Channels that keep history now, every namespace together.
    pub history_channels: usize,
}

/// How many channels with history each namespace has: what
/// `Retention::max_channels` is checked against. Touched only when a channel
/// starts or stops keeping history, never per publication.
#[derive(Debug, Default)]
pub(crate) struct ChannelCounts {
    by_namespace: Mutex<HashMap<Box<str>, usize>>,
    total: std::sync::atomic::AtomicUsize,
}

impl ChannelCounts {
    /// Counts one more channel in `namespace`, unless it has `max` already
    /// (0: no cap).
    pub(crate) fn try_add(&self, namespace: &str, max: usize) -> Result<(), HistoryError> {
        let mut map = self.by_namespace.lock();
        let n = match map.get_mut(namespace) {
            Some(n) => n,
            None => map.entry(namespace.into()).or_insert(0),
        };
        if max != 0 && *n >= max {
            return Err(HistoryError::ChannelLimit(namespace.to_string()));
        }
        *n += 1;
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn remove(&self, namespace: &str) {
        let mut map = self.by_namespace.lock();
        if let Some(n) = map.get_mut(namespace) {
            *n -= 1;
            if *n == 0 {
                map.remove(namespace);
            }
            self.total
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Per-channel streams: offsets, epochs, stored publications.
pub trait HistoryStore: Send + Sync + 'static {
    /// Assigns the channel's next offset and stores the publication as
    /// `retention` allows. Returns it with its frame encoded.
    fn append(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
    ) -> Result<Arc<Publication>, HistoryError>;

    /// [`append`](Self::append) for a publish with an idempotency key. A
    /// store whose publications survive a restart keeps `key` with the
    /// publication, in the same write, and hands it back from
    /// [`stored_keys`](Self::stored_keys); others ignore it (the broker
    /// remembers keys in memory).
    fn append_keyed(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
        key: Option<&IdempotencyKey>,
    ) -> Result<Arc<Publication>, HistoryError> {
        let _ = key;
        self.append(channel, data, from, retention)
    }

    /// The keys kept by [`append_keyed`](Self::append_keyed) with
    /// publications still stored, read once when the broker starts.
    fn stored_keys(&self) -> Result<Vec<StoredKey>, HistoryError> {
        Ok(Vec::new())
    }

    /// Reads stored publications as `query` says.
    fn read(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, HistoryError>;

    /// Applies retention to streams nobody touches: trims what their TTL no
    /// longer keeps and forgets streams left empty — at once when they kept
    /// history (it all expired), after `idle` untouched when they never did —
    /// so one-off channels cost nothing forever. A forgotten channel's next
    /// publication starts a new epoch, as the contract allows for lost history.
    fn sweep(&self, pass: &Sweep<'_>) -> Swept;

    /// Whether `append` waits on the disk, so callers keep it off the
    /// async workers' hot path.
    fn blocks(&self) -> bool {
        false
    }

    /// Whether the store can take appends now (a database store that lost
    /// its server says no): the node's broker health, so `/ready` follows.
    fn healthy(&self) -> bool {
        true
    }
}

/// A fresh epoch: random, so a restarted node never reuses one.
pub fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:08x}", fastrand::u32(..)))
}

#[derive(Debug)]
struct Stream {
    epoch: Arc<str>,
    offset: u64,
    stored: VecDeque<(Instant, Arc<Publication>)>,
    last_used: Instant,
    /// Counted in its namespace's channels with history.
    counted: bool,
}

impl Stream {
    fn new(now: Instant) -> Self {
        Stream {
            epoch: new_epoch(),
            offset: 0,
            stored: VecDeque::new(),
            last_used: now,
            counted: false,
        }
    }

    /// Whether the sweep may forget this stream now (after trimming).
    fn forgettable(&self, retention: Retention, idle: Duration, now: Instant) -> bool {
        if !self.stored.is_empty() {
            return false;
        }
        // A stream that kept history and saw it all expire goes as soon as
        // nobody used it for a TTL; one that never kept any, after `idle`.
        let after = if self.counted {
            retention.ttl.min(idle)
        } else {
            idle
        };
        now.duration_since(self.last_used) >= after
    }

    fn trim(&mut self, retention: Retention, now: Instant) {
        while self.stored.len() > retention.size {
            self.stored.pop_front();
        }
        while let Some((at, _)) = self.stored.front() {
            if now.duration_since(*at) >= retention.ttl {
                self.stored.pop_front();
            } else {
                break;
            }
        }
    }
}

const SHARDS: usize = 64;

/// History kept in memory: lost on restart (a new epoch tells clients so).
#[derive(Debug)]
pub struct MemoryHistory {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<ChannelName, Stream>>]>,
    counts: ChannelCounts,
    /// The shard the next sweep pass starts at.
    sweep_next: Mutex<usize>,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryHistory {
    pub fn new() -> Self {
        MemoryHistory {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            counts: ChannelCounts::default(),
            sweep_next: Mutex::new(0),
        }
    }

    /// Streams held now, with history or not.
    pub fn stream_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<HashMap<ChannelName, Stream>> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }
}

/// Applies `query` to a stream's stored publications (shared by every store
/// that keeps a stream in this shape).
pub fn select(
    stored: impl DoubleEndedIterator<Item = Arc<Publication>> + ExactSizeIterator,
    offset: u64,
    epoch: &Arc<str>,
    query: &HistoryQuery,
) -> HistoryRead {
    let mut read = HistoryRead {
        publications: Vec::new(),
        offset,
        epoch: epoch.clone(),
        recovered: false,
    };
    match &query.since {
        Some(since) => {
            if *since.epoch != **epoch || since.offset > offset {
                return read;
            }
            let limit = query.limit.unwrap_or(usize::MAX);
            read.publications = stored
                .filter(|p| p.offset > since.offset)
                .take(limit)
                .collect();
            let first_ok = read
                .publications
                .first()
                .map_or(since.offset == offset, |p| p.offset == since.offset + 1);
            let last_ok = read
                .publications
                .last()
                .map_or(since.offset == offset, |p| p.offset == offset);
            read.recovered = first_ok && last_ok;
        }
        None => {
            let limit = query.limit.unwrap_or(usize::MAX);
            let len = stored.len();
            read.publications = stored.skip(len.saturating_sub(limit)).collect();
        }
    }
    read
}

impl HistoryStore for MemoryHistory {
    fn append(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
    ) -> Result<Arc<Publication>, HistoryError> {
        let now = Instant::now();
        let keeps = !retention.keeps_nothing();
        let mut shard = self.shard(channel).lock();
        let stream = match shard.entry(channel.clone()) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                // Refused before the stream exists, so a refusal costs nothing.
                if keeps {
                    self.counts
                        .try_add(channel.namespace(), retention.max_channels)?;
                }
                let s = v.insert(Stream::new(now));
                s.counted = keeps;
                s
            }
        };
        if keeps && !stream.counted {
            self.counts
                .try_add(channel.namespace(), retention.max_channels)?;
            stream.counted = true;
        }
        stream.offset += 1;
        stream.last_used = now;
        let publication = Arc::new(Publication::new(
            channel.clone(),
            stream.offset,
            stream.epoch.clone(),
            data,
            from,
        ));
        if !retention.keeps_nothing() {
            stream.stored.push_back((now, publication.clone()));
        }
        stream.trim(retention, now);
        Ok(publication)
    }

    fn read(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, HistoryError> {
        let now = Instant::now();
        let mut shard = self.shard(channel).lock();
        let stream = shard
            .entry(channel.clone())
            .or_insert_with(|| Stream::new(now));
        stream.last_used = now;
        stream.trim(retention, now);
        let stored = stream.stored.iter().map(|(_, p)| p.clone());
        Ok(select(stored, stream.offset, &stream.epoch, query))
    }

    fn sweep(&self, pass: &Sweep<'_>) -> Swept {
        let now = Instant::now();
        let mut swept = Swept::default();
        // Whole shards (a shard's lock is held for one `retain`), as many as
        // the budget allows and at least one; the next pass goes on from there.
        let mut next = self.sweep_next.lock();
        for _ in 0..SHARDS {
            let i = *next % SHARDS;
            *next = (i + 1) % SHARDS;
            let mut shard = self.shards[i].lock();
            swept.examined += shard.len();
            shard.retain(|name, s| {
                let retention = (pass.retention)(name);
                s.trim(retention, now);
                if !s.forgettable(retention, pass.idle, now) {
                    return true;
                }
                if s.counted {
                    self.counts.remove(name.namespace());
                }
                swept.dropped += 1;
                false
            });
            if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
                shard.shrink_to_fit();
            }
            drop(shard);
            if swept.examined >= pass.budget {
                break;
            }
        }
        swept.history_channels = self.counts.total();
        swept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch() -> ChannelName {
        ChannelName::parse("chat:a").expect("valid")
    }

    const KEEP: Retention = Retention {
        size: 3,
        ttl: Duration::from_secs(60),
        max_channels: 0,
    };

    fn append(h: &MemoryHistory, n: usize) -> Vec<Arc<Publication>> {
        (0..n)
            .map(|i| {
                h.append(&ch(), Bytes::from(i.to_string()), None, KEEP)
                    .expect("memory never fails")
            })
            .collect()
    }

    fn since(offset: u64, epoch: &str) -> HistoryQuery {
        HistoryQuery::since(offset, epoch)
    }

    #[test]
    fn offsets_start_at_one_and_keep_the_epoch() {
        let h = MemoryHistory::new();
        let p = append(&h, 2);
        assert_eq!(p[0].offset, 1);
        assert_eq!(p[1].offset, 2);
        assert_eq!(p[0].epoch, p[1].epoch);
    }

    #[test]
    fn recovery_within_retention_is_whole() {
        let h = MemoryHistory::new();
        let p = append(&h, 5);
        let r = h.read(&ch(), &since(3, &p[0].epoch), KEEP).expect("read");
        assert!(r.recovered);
        assert_eq!(
            r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![4, 5]
        );
        let r = h.read(&ch(), &since(5, &p[0].epoch), KEEP).expect("read");
        assert!(r.recovered && r.publications.is_empty());
    }

    #[test]
    fn recovery_beyond_retention_or_epoch_is_refused() {
        let h = MemoryHistory::new();
        let p = append(&h, 5);
        assert!(
            !h.read(&ch(), &since(1, &p[0].epoch), KEEP)
                .expect("read")
                .recovered
        );
        assert!(
            !h.read(&ch(), &since(4, "other"), KEEP)
                .expect("read")
                .recovered
        );
        assert!(
            !h.read(&ch(), &since(9, &p[0].epoch), KEEP)
                .expect("read")
                .recovered
        );
    }

    #[test]
    fn latest_without_since_is_oldest_first() {
        let h = MemoryHistory::new();
        append(&h, 5);
        let r = h
            .read(
                &ch(),
                &HistoryQuery {
                    since: None,
                    limit: Some(2),
                },
                KEEP,
            )
            .expect("read");
        assert_eq!(
            r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(r.offset, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn publications_past_their_ttl_are_trimmed() {
        let h = MemoryHistory::new();
        let p = append(&h, 2);
        tokio::time::advance(Duration::from_secs(61)).await;
        let r = h.read(&ch(), &since(0, &p[0].epoch), KEEP).expect("read");
        assert!(r.publications.is_empty());
        assert!(!r.recovered);
        assert_eq!(r.offset, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_streams_without_history_are_forgotten() {
        let h = MemoryHistory::new();
        let c = ChannelName::parse("x").expect("valid");
        let first = h
            .append(&c, Bytes::from_static(b"1"), None, Retention::default())
            .expect("append");
        tokio::time::advance(Duration::from_secs(600)).await;
        h.sweep(&pass(&|_| Retention::default(), usize::MAX));
        let next = h
            .append(&c, Bytes::from_static(b"1"), None, Retention::default())
            .expect("append");
        assert_eq!(next.offset, 1);
        assert_ne!(next.epoch, first.epoch);
    }

    fn pass<'a>(
        retention: &'a (dyn Fn(&ChannelName) -> Retention + Sync),
        budget: usize,
    ) -> Sweep<'a> {
        Sweep {
            retention,
            idle: Duration::from_secs(300),
            budget,
        }
    }

    const BRIEF: Retention = Retention {
        size: 10,
        ttl: Duration::from_secs(1),
        max_channels: 0,
    };

    #[tokio::test(start_paused = true)]
    async fn the_sweep_forgets_streams_whose_history_expired_untouched() {
        let h = MemoryHistory::new();
        for i in 0..10_000 {
            let c = ChannelName::parse(&format!("chat:{i}")).expect("valid");
            h.append(&c, Bytes::from_static(b"1"), None, BRIEF)
                .expect("append");
        }
        let policy = |_: &ChannelName| BRIEF;
        let before = h.sweep(&pass(&policy, usize::MAX));
        assert_eq!((before.dropped, before.history_channels), (0, 10_000));
        tokio::time::advance(Duration::from_millis(1500)).await;
        let after = h.sweep(&pass(&policy, usize::MAX));
        assert_eq!(after.examined, 10_000);
        assert_eq!((after.dropped, after.history_channels), (10_000, 0));
        assert_eq!(h.stream_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_pass_stays_within_its_budget_and_the_next_goes_on() {
        let h = MemoryHistory::new();
        for i in 0..6_400 {
            let c = ChannelName::parse(&format!("chat:{i}")).expect("valid");
            h.append(&c, Bytes::from_static(b"1"), None, BRIEF)
                .expect("append");
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let policy = |_: &ChannelName| BRIEF;
        let mut passes = 0;
        while h.stream_count() > 0 {
            let s = h.sweep(&pass(&policy, 1_000));
            // Whole shards of ~100 streams each: at most one shard past the budget.
            assert!(s.examined < 1_400, "{s:?}");
            passes += 1;
            assert!(passes <= 10, "the passes must cover every shard");
        }
        assert!(passes >= 6, "{passes}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_used_stream_and_unexpired_history_stay() {
        let h = MemoryHistory::new();
        let p = append(&h, 2);
        let policy = |_: &ChannelName| KEEP;
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(h.sweep(&pass(&policy, usize::MAX)).dropped, 0);
        let r = h.read(&ch(), &since(0, &p[0].epoch), KEEP).expect("read");
        assert!(r.recovered);
    }

    #[tokio::test(start_paused = true)]
    async fn history_channels_per_namespace_are_capped() {
        let h = MemoryHistory::new();
        let capped = Retention {
            max_channels: 2,
            ..BRIEF
        };
        let c = |n: &str| ChannelName::parse(n).expect("valid");
        for name in ["chat:a", "chat:b"] {
            h.append(&c(name), Bytes::from_static(b"1"), None, capped)
                .expect("under the cap");
        }
        // An existing channel goes on; a third is refused and not created.
        h.append(&c("chat:a"), Bytes::from_static(b"1"), None, capped)
            .expect("existing");
        let err = h
            .append(&c("chat:c"), Bytes::from_static(b"1"), None, capped)
            .expect_err("over the cap");
        assert!(matches!(err, HistoryError::ChannelLimit(ref ns) if ns == "chat"));
        assert_eq!(h.stream_count(), 2);
        // Other namespaces and channels without history are not counted.
        h.append(&c("room:c"), Bytes::from_static(b"1"), None, capped)
            .expect("another namespace");
        h.append(
            &c("chat:d"),
            Bytes::from_static(b"1"),
            None,
            Retention::default(),
        )
        .expect("no history");
        // Once the sweep forgets expired ones, there is room again.
        tokio::time::advance(Duration::from_secs(2)).await;
        h.sweep(&pass(&|_| capped, usize::MAX));
        let p = h
            .append(&c("chat:c"), Bytes::from_static(b"1"), None, capped)
            .expect("room again");
        assert_eq!(p.offset, 1);
    }
}
