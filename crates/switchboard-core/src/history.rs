//! The [`HistoryStore`] role: per-channel offsets, epochs and stored
//! publications, and [`MemoryHistory`], kept in this process.
//!
//! The store assigns offsets; the broker calls it while it holds the channel's
//! publish lock, so offsets and delivery order agree.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_protocol::{ChannelName, Publication, StreamPosition};
use tokio::time::Instant;

/// How much of a channel's stream is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Publications kept; 0 keeps none.
    pub size: usize,
    /// Age past which a publication is dropped; zero keeps none.
    pub ttl: Duration,
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

    /// Reads stored publications as `query` says.
    fn read(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, HistoryError>;

    /// Forgets streams that keep nothing and were idle for `idle`, so that
    /// one-off channels do not grow memory forever (their next publication
    /// starts a new epoch, as the contract allows for lost history).
    fn sweep(&self, idle: Duration);

    /// Whether `append` waits on the disk, so callers keep it off the
    /// async workers' hot path.
    fn blocks(&self) -> bool {
        false
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
}

impl Stream {
    fn new(now: Instant) -> Self {
        Stream {
            epoch: new_epoch(),
            offset: 0,
            stored: VecDeque::new(),
            last_used: now,
        }
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
        }
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
        let mut shard = self.shard(channel).lock();
        let stream = shard
            .entry(channel.clone())
            .or_insert_with(|| Stream::new(now));
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

    fn sweep(&self, idle: Duration) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            shard
                .lock()
                .retain(|_, s| !s.stored.is_empty() || now.duration_since(s.last_used) < idle);
        }
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
        h.sweep(Duration::from_secs(300));
        let next = h
            .append(&c, Bytes::from_static(b"1"), None, Retention::default())
            .expect("append");
        assert_eq!(next.offset, 1);
        assert_ne!(next.epoch, first.epoch);
    }
}
