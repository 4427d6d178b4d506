//! The [`CursorStore`] role: per device, the offset of an inbox channel it
//! has acknowledged (PROTOCOL §10), and [`MemoryCursors`], kept in this
//! process.
//!
//! A cursor is `(epoch, offset)`: an offset means nothing outside its epoch.
//! Within one epoch a cursor only moves forward, whatever order concurrent
//! acks arrive in; an ack in another epoch replaces it (the channel's history
//! was lost and started again, so the old offset no longer names anything).
//!
//! Bounded: at most [`CursorLimits::max_devices`] cursors per channel (an
//! advance past it forgets the device that advanced least recently, which
//! then starts again at the oldest retained publication: delivered twice,
//! never lost), and a cursor not advanced for [`CursorLimits::ttl`] is
//! forgotten — by then every publication it covered has expired from the
//! inbox's history anyway, so a forgotten cursor and an old one resume at the
//! same place.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use switchboard_protocol::ChannelName;
use tokio::time::Instant;

/// Devices a user's inbox keeps cursors for, unless configured otherwise.
pub const DEFAULT_MAX_DEVICES: usize = 32;

/// What a device has acknowledged: everything up to `offset` of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: Arc<str>,
    pub offset: u64,
}

/// One device's cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCursor {
    pub device: Arc<str>,
    pub cursor: Cursor,
}

/// The bounds an advance applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorLimits {
    /// Cursors kept per channel; an advance of one more device forgets the
    /// least recently advanced one.
    pub max_devices: usize,
    /// A cursor not advanced for this long is forgotten (the inbox's
    /// `history_ttl`).
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// The store cannot take the request now; the caller may retry.
    #[error("cursor store unavailable: {0}")]
    Unavailable(String),
    /// The store failed; nothing was changed.
    #[error("cursor store failed: {0}")]
    Store(String),
}

/// Per device cursors of inbox channels. Implementations: [`MemoryCursors`],
/// [`FileHistory`](crate::FileHistory) (in its file), `RedisCursors`
/// (shared by every node). Every one runs
/// `testkit::cursor_conformance` (feature `testkit`).
#[async_trait]
pub trait CursorStore: Send + Sync + 'static {
    /// `device`'s cursor of `channel`, if it has one that has not expired.
    async fn get(&self, channel: &ChannelName, device: &str)
    -> Result<Option<Cursor>, CursorError>;

    /// Every device's cursor of `channel` (at most `max_devices`), in no
    /// particular order.
    async fn devices(&self, channel: &ChannelName) -> Result<Vec<DeviceCursor>, CursorError>;

    /// Moves `device`'s cursor to `to`: within the same epoch only forward
    /// (an older offset leaves it where it is), from another epoch (or none)
    /// to `to`. Atomic against concurrent advances of the same cursor on
    /// every node sharing the store. Returns the cursor as it stands after.
    async fn advance(
        &self,
        channel: &ChannelName,
        device: &str,
        to: Cursor,
        limits: CursorLimits,
    ) -> Result<Cursor, CursorError>;

    /// Periodic housekeeping: forgets expired cursors of channels nobody
    /// advances, looking at about `budget` of them per call. Stores whose
    /// backend expires keys itself do nothing.
    fn sweep(&self, _budget: usize) {}
}

/// The rule every store applies, in one place: what a cursor becomes.
pub fn advanced(current: Option<&Cursor>, to: Cursor) -> Cursor {
    match current {
        Some(c) if c.epoch == to.epoch && c.offset >= to.offset => c.clone(),
        _ => to,
    }
}

#[derive(Debug)]
struct Entry {
    device: Arc<str>,
    cursor: Cursor,
    at: Instant,
    ttl: Duration,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        now.duration_since(self.at) < self.ttl
    }
}

const SHARDS: usize = 64;

/// One shard: each inbox channel's device cursors.
type Shard = Mutex<HashMap<ChannelName, Vec<Entry>>>;

/// Cursors kept in this process (the memory history's companion: both are
/// lost with the process).
pub struct MemoryCursors {
    hasher: RandomState,
    shards: Box<[Shard]>,
    sweep_next: Mutex<usize>,
}

impl Default for MemoryCursors {
    fn default() -> Self {
        MemoryCursors {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            sweep_next: Mutex::new(0),
        }
    }
}

impl std::fmt::Debug for MemoryCursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCursors").finish_non_exhaustive()
    }
}

impl MemoryCursors {
    fn shard(&self, channel: &ChannelName) -> &Mutex<HashMap<ChannelName, Vec<Entry>>> {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }
}

#[async_trait]
impl CursorStore for MemoryCursors {
    async fn get(
        &self,
        channel: &ChannelName,
        device: &str,
    ) -> Result<Option<Cursor>, CursorError> {
        let now = Instant::now();
        let shard = self.shard(channel).lock();
        Ok(shard.get(channel).and_then(|list| {
            list.iter()
                .find(|e| &*e.device == device && e.live(now))
                .map(|e| e.cursor.clone())
        }))
    }

    async fn devices(&self, channel: &ChannelName) -> Result<Vec<DeviceCursor>, CursorError> {
        let now = Instant::now();
        let shard = self.shard(channel).lock();
        Ok(shard
            .get(channel)
            .map(|list| {
                list.iter()
                    .filter(|e| e.live(now))
                    .map(|e| DeviceCursor {
                        device: e.device.clone(),
                        cursor: e.cursor.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn advance(
        &self,
        channel: &ChannelName,
        device: &str,
        to: Cursor,
        limits: CursorLimits,
    ) -> Result<Cursor, CursorError> {
        let now = Instant::now();
        let mut shard = self.shard(channel).lock();
        let list = shard.entry(channel.clone()).or_default();
        list.retain(|e| e.live(now));
        let cursor = match list.iter_mut().find(|e| &*e.device == device) {
            Some(e) => {
                e.cursor = advanced(Some(&e.cursor), to);
                e.at = now;
                e.ttl = limits.ttl;
                e.cursor.clone()
            }
            None => {
                while !list.is_empty() && list.len() >= limits.max_devices.max(1) {
                    // The least recently advanced device goes.
                    let oldest = list
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, e)| e.at)
                        .map_or(0, |(i, _)| i);
                    list.swap_remove(oldest);
                }
                list.push(Entry {
                    device: Arc::from(device),
                    cursor: to.clone(),
                    at: now,
                    ttl: limits.ttl,
                });
                to
            }
        };
        Ok(cursor)
    }

    fn sweep(&self, budget: usize) {
        let now = Instant::now();
        let mut next = self.sweep_next.lock();
        let mut examined = 0;
        for _ in 0..SHARDS {
            let mut shard = self.shards[*next].lock();
            examined += shard.len();
            shard.retain(|_, list| {
                list.retain(|e| e.live(now));
                !list.is_empty()
            });
            if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
                shard.shrink_to_fit();
            }
            drop(shard);
            *next = (*next + 1) % SHARDS;
            if examined >= budget {
                break;
            }
        }
    }
}
