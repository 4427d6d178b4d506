//! [`FileHistory`]: a [`HistoryStore`] kept in one file (a [redb] database),
//! so that offsets, epochs and stored publications survive a restart.
//!
//! # Durability
//! - [`SyncMode::Always`] (the default): `append` returns only after a
//!   commit with `Durability::Immediate` (an fsync) that holds it. Concurrent
//!   appends share that commit (group commit): the first to arrive writes
//!   every append queued so far in one transaction while the next ones queue
//!   behind it, so throughput grows with the number of publishers instead of
//!   being one fsync per publication. No channel lock is held across the
//!   fsync: offsets are handed out in memory, and readers see an offset only
//!   once it is committed. Every publication acknowledged before a crash
//!   (SIGKILL, power loss on a disk that honours fsync) is there after the
//!   restart.
//! - [`SyncMode::Batch`]: appends commit without fsync; a background thread
//!   makes them durable with one fsync'd commit at most `max_delay` after the
//!   first unsynced append. A crash (SIGKILL included: unsynced redb commits
//!   are not visible after a reopen) loses the publications acknowledged in
//!   the last `max_delay` plus the time of one fsync. Since their offsets may
//!   then be reused, a start after such a crash gives **every** channel a new
//!   epoch: clients see `recovered: false` once, never a different publication
//!   under an offset they already saw. A clean close (drop, or [`FileHistory::close`])
//!   avoids that.
//!
//! # What is on disk
//! - `channels`: channel → (epoch, latest offset).
//! - `publications`: (channel, offset) → (unix ms when stored, from, data).
//! - `keys`: (channel, offset) → idempotency key of that publication, written
//!   in its transaction and trimmed with it; read back at start
//!   ([`HistoryStore::stored_keys`]) so a retry after a restart (kill -9
//!   included) still answers the first result while the publication is kept.
//!   Created on first use, so files written before it open unchanged.
//! - `meta`: file format, and whether a batch-mode writer has it open.
//! - `cursors`: (channel, device) → (epoch, offset, expiry, last advance):
//!   inbox cursors (`file_history/cursors.rs`), each advance its own fsync'd
//!   commit.
//!
//! Channels whose retention keeps nothing and that were never stored stay in
//! memory only: nothing of them would survive a restart anyway, so they cost
//! no write; their epoch is new after a restart, as with [`MemoryHistory`](crate::MemoryHistory).
//!
//! The latest offset, epoch and lowest stored offset of each channel in use
//! are kept in memory, so reading a position never touches the disk.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt::Display;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, TableHandle, WriteTransaction,
};
use switchboard_protocol::{ChannelName, IdempotencyKey, Publication, StreamPosition};

use crate::history::{
    ChannelCounts, HistoryError, HistoryQuery, HistoryRead, HistoryStore, Retention, Sweep, Swept,
    new_epoch, select,
};
use crate::idempotency::StoredKey;

/// When an append is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Each append is fsync'd before it returns.
    #[default]
    Always,
    /// Appends are fsync'd together, at most `max_delay` after the first one
    /// not yet on disk; a crash loses the acknowledged ones of that window.
    Batch { max_delay: Duration },
}

impl SyncMode {
    /// The default window of [`SyncMode::Batch`].
    pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(10);

    /// [`SyncMode::Batch`] with [`Self::DEFAULT_BATCH_DELAY`].
    pub fn batch() -> Self {
        SyncMode::Batch {
            max_delay: Self::DEFAULT_BATCH_DELAY,
        }
    }
}

const CHANNELS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("channels");
/// (channel, offset)
type PubKey = (&'static str, u64);
/// (unix ms when stored, from, data)
type PubValue = (u64, Option<&'static str>, &'static [u8]);
const PUBLICATIONS: TableDefinition<PubKey, PubValue> = TableDefinition::new("publications");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (channel, device) → (epoch, offset, expires at unix ms, advanced at unix ms).
const CURSORS: TableDefinition<(&str, &str), (&str, u64, u64, u64)> =
    TableDefinition::new("cursors");
/// (channel, offset) → the idempotency key it was published with.
const KEYS: TableDefinition<PubKey, &str> = TableDefinition::new("keys");

const FORMAT_KEY: &str = "format";
const FORMAT: u64 = 1;
/// 1 while a batch-mode writer may have commits that are not yet durable.
const BATCH_OPEN_KEY: &str = "batch_open";

/// redb's page cache; its default (1 GiB) is sized for a database server.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
const SHARDS: usize = 64;

/// A channel's position, in memory.
#[derive(Debug)]
struct Chan {
    epoch: Arc<str>,
    /// The latest committed offset: what readers see.
    offset: u64,
    /// The latest offset handed out (committed or queued for a group commit).
    assigned: u64,
    /// No stored publication has a lower offset (a lower bound).
    first: u64,
    /// The channel has a row in `channels`.
    on_disk: bool,
    last_used: tokio::time::Instant,
}

impl Chan {
    fn fresh() -> Self {
        Chan {
            epoch: new_epoch(),
            offset: 0,
            assigned: 0,
            first: 1,
            on_disk: false,
            last_used: tokio::time::Instant::now(),
        }
    }
}

/// `None` until loaded from disk; loaded under the slot's own lock so the
/// shard lock is never held across I/O.
type Slot = Arc<Mutex<Option<Chan>>>;

/// What only the writer touches: held across every write transaction (redb
/// allows one at a time anyway), so the batch flags and commits agree.
#[derive(Debug, Default)]
struct Writer {
    /// The `batch_open` flag is durably set.
    marked_open: bool,
    /// The first unsynced commit, if any.
    dirty_since: Option<std::time::Instant>,
    /// The last background fsync failed: appends sync themselves until one succeeds.
    flush_failed: bool,
    stop: bool,
}

struct Inner {
    db: Database,
    path: PathBuf,
    sync: SyncMode,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<ChannelName, Slot>>]>,
    writer: Mutex<Writer>,
    /// Wakes the flusher (batch mode).
    wake: Condvar,
    /// Appends waiting for a group commit (sync mode `always`).
    group: Mutex<Group>,
    /// Wakes them when a group commit ends.
    group_done: Condvar,
    /// Group commits written (each one fsync).
    group_commits: AtomicU64,
    /// Added to the wall clock; tests move time with it.
    clock_skew_ms: AtomicU64,
    /// Channels with a row in `channels`, per namespace (the cap).
    counts: ChannelCounts,
    /// The last channel the previous sweep pass looked at on disk.
    sweep_after: Mutex<Option<String>>,
    /// The shard of in-memory slots the next sweep pass starts at.
    sweep_next: Mutex<usize>,
    /// The last cursor row the previous cursor sweep looked at.
    cursor_sweep_after: Mutex<Option<(String, String)>>,
}

/// History kept in a file; see the module docs for what is durable when.
pub struct FileHistory {
    inner: Arc<Inner>,
    flusher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FileHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileHistory")
            .field("path", &self.inner.path)
            .field("sync", &self.inner.sync)
            .finish_non_exhaustive()
    }
}

macro_rules! tryx {
    ($e:expr, $ctx:literal) => {
        $e.map_err(|e| HistoryError::Store(format!(concat!($ctx, ": {}"), e)))?
    };
}

// After `tryx!`, which they use.
mod cursors;
mod group_commit;
mod sweep;
use group_commit::Group;

impl FileHistory {
    /// Opens the history file at `path`, creating it (and its directory) when
    /// it does not exist. An existing file that is not a readable Switchboard
    /// history is an error and is left exactly as it is: it is never
    /// recreated or emptied.
    pub fn open(path: impl AsRef<Path>, sync: SyncMode) -> Result<Self, HistoryError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        let refuse = |why: &dyn Display| {
            HistoryError::Store(format!(
                "cannot open history file {shown}: {why}. The file was left untouched; \
                 restore it from a backup or move it away to start with an empty history"
            ))
        };
        let existing = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => return Err(refuse(&"it is a directory")),
            Ok(meta) => meta.len() > 0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        HistoryError::Store(format!(
                            "cannot create the directory of history file {shown}: {e}"
                        ))
                    })?;
                }
                false
            }
            Err(e) => return Err(refuse(&e)),
        };
        // redb answers some damage (a truncated file) with a panic, not an
        // error: catch it, so a bad file is a clear refusal, not a crash.
        let opened = std::panic::catch_unwind(|| {
            let mut builder = Database::builder();
            builder.set_cache_size(CACHE_BYTES);
            // `open` never initializes a file; `create` does so only for a
            // missing or empty one.
            let db = if existing {
                builder.open(&path)
            } else {
                builder.create(&path)
            }
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    refuse(&"another process (or this one) already has it open")
                }
                e => refuse(&e),
            })?;
            let inner = Inner {
                db,
                path: path.clone(),
                sync,
                hasher: RandomState::new(),
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                writer: Mutex::new(Writer::default()),
                wake: Condvar::new(),
                group: Mutex::new(Group::default()),
                group_done: Condvar::new(),
                group_commits: AtomicU64::new(0),
                clock_skew_ms: AtomicU64::new(0),
                counts: ChannelCounts::default(),
                sweep_after: Mutex::new(None),
                sweep_next: Mutex::new(0),
                cursor_sweep_after: Mutex::new(None),
            };
            inner.prepare().map_err(|e| refuse(&e))?;
            Ok(inner)
        });
        let inner = match opened {
            Ok(opened) => Arc::new(opened?),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown".into());
                return Err(refuse(&format_args!("the file is damaged ({why})")));
            }
        };
        let flusher = match sync {
            SyncMode::Always => None,
            SyncMode::Batch { max_delay } => {
                let inner = inner.clone();
                Some(
                    std::thread::Builder::new()
                        .name("history-flush".into())
                        .spawn(move || inner.flush_loop(max_delay))
                        .map_err(|e| {
                            HistoryError::Store(format!("cannot start the history flusher: {e}"))
                        })?,
                )
            }
        };
        Ok(FileHistory { inner, flusher })
    }

    /// Makes every append so far durable now.
    pub fn flush(&self) -> Result<(), HistoryError> {
        let mut w = self.inner.writer.lock();
        self.inner.commit_durable(&mut w, false)
    }

    /// Makes every append so far durable and records a clean close, so the
    /// next start keeps the epochs (batch mode). Dropping does the same; call
    /// this where the store may outlive the process's orderly exit. Appends
    /// after it still work (they mark the file open again).
    pub fn close(&self) -> Result<(), HistoryError> {
        let mut w = self.inner.writer.lock();
        self.inner.commit_durable(&mut w, true)
    }

    /// Rows in the file now: `(channels, publications)` (tests and checks).
    pub fn rows(&self) -> Result<(u64, u64), HistoryError> {
        self.inner.rows()
    }

    /// Moves this store's wall clock forward (TTL tests).
    #[cfg(test)]
    fn advance_clock(&self, by: Duration) {
        self.inner
            .clock_skew_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    /// Drops without the clean close, as a crash would leave the flags.
    #[cfg(test)]
    fn crash(mut self) {
        self.stop_flusher();
        self.inner.writer.lock().marked_open = false;
    }

    fn stop_flusher(&mut self) {
        if let Some(handle) = self.flusher.take() {
            self.inner.writer.lock().stop = true;
            self.inner.wake.notify_all();
            let _ = handle.join();
        }
    }
}

impl Drop for FileHistory {
    fn drop(&mut self) {
        self.stop_flusher();
        let mut w = self.inner.writer.lock();
        if w.marked_open
            && let Err(e) = self.inner.commit_durable(&mut w, true)
        {
            tracing::error!(error = %e, "history file not closed cleanly; its channels get new epochs at the next start");
        }
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

impl Inner {
    fn now_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        wall.saturating_add(self.clock_skew_ms.load(Ordering::Relaxed))
    }

    /// Creates the tables of a new file, checks those of an existing one,
    /// and gives every channel a new epoch after an unclean batch-mode stop.
    fn prepare(&self) -> Result<(), HistoryError> {
        let read = tryx!(self.db.begin_read(), "reading");
        let tables: Vec<String> = tryx!(read.list_tables(), "listing tables")
            .map(|t| t.name().to_string())
            .collect();
        drop(read);
        let tx = tryx!(self.db.begin_write(), "writing");
        if tables.is_empty() {
            {
                tryx!(tx.open_table(CHANNELS), "creating tables");
                tryx!(tx.open_table(PUBLICATIONS), "creating tables");
                tryx!(tx.open_table(CURSORS), "creating tables");
                let mut meta = tryx!(tx.open_table(META), "creating tables");
                tryx!(meta.insert(FORMAT_KEY, FORMAT), "creating tables");
                tryx!(meta.insert(BATCH_OPEN_KEY, 0), "creating tables");
            }
            tryx!(tx.commit(), "creating tables");
            return Ok(());
        }
        if !tables.iter().any(|t| t == META.name()) {
            return Err(HistoryError::Store(
                "it is a redb database but not a Switchboard history file".into(),
            ));
        }
        let renewed = {
            let mut meta = tryx!(tx.open_table(META), "reading meta");
            let format = tryx!(meta.get(FORMAT_KEY), "reading meta").map(|v| v.value());
            if format != Some(FORMAT) {
                return Err(HistoryError::Store(format!(
                    "unsupported history file format {format:?} (this build reads {FORMAT})"
                )));
            }
            let unclean =
                tryx!(meta.get(BATCH_OPEN_KEY), "reading meta").is_some_and(|v| v.value() != 0);
            tryx!(meta.insert(BATCH_OPEN_KEY, 0), "writing meta");
            if unclean {
                let mut channels = tryx!(tx.open_table(CHANNELS), "reading channels");
                let rows: Vec<(String, u64)> = tryx!(channels.iter(), "reading channels")
                    .map(|row| {
                        let (k, v) = row?;
                        Ok((k.value().to_string(), v.value().1))
                    })
                    .collect::<Result<_, redb::StorageError>>()
                    .map_err(|e| HistoryError::Store(format!("reading channels: {e}")))?;
                for (name, offset) in &rows {
                    tryx!(
                        channels.insert(name.as_str(), (&*new_epoch(), *offset)),
                        "renewing epochs"
                    );
                }
                Some(rows.len())
            } else {
                None
            }
        };
        // Files from before inbox cursors get the table now.
        tryx!(tx.open_table(CURSORS), "creating the cursors table");
        tryx!(tx.commit(), "writing meta");
        self.count_channels()?;
        if let Some(n) = renewed {
            tracing::warn!(
                path = %self.path.display(),
                channels = n,
                "history file was not closed cleanly after batch-mode writes; \
                 publications of the last sync window may be lost, so every channel has a new epoch"
            );
        }
        Ok(())
    }

    /// Counts the channels on disk per namespace (once, at open).
    fn count_channels(&self) -> Result<(), HistoryError> {
        let tx = tryx!(self.db.begin_read(), "counting channels");
        let channels = tryx!(tx.open_table(CHANNELS), "counting channels");
        for row in tryx!(channels.iter(), "counting channels") {
            let (name, _) = tryx!(row, "counting channels");
            if let Ok(name) = ChannelName::parse(name.value()) {
                self.counts.try_add(name.namespace(), 0)?;
            }
        }
        Ok(())
    }

    /// Every idempotency key whose publication is still stored.
    fn stored_keys(&self) -> Result<Vec<StoredKey>, HistoryError> {
        let tx = tryx!(self.db.begin_read(), "reading keys");
        let keys = match tx.open_table(KEYS) {
            Ok(keys) => keys,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(HistoryError::Store(format!("reading keys: {e}"))),
        };
        let pubs = tryx!(tx.open_table(PUBLICATIONS), "reading keys");
        let channels = tryx!(tx.open_table(CHANNELS), "reading keys");
        let mut out = Vec::new();
        for row in tryx!(keys.iter(), "reading keys") {
            let (at, key) = tryx!(row, "reading keys");
            let (name, offset) = at.value();
            let Some(stored) = tryx!(pubs.get((name, offset)), "reading keys") else {
                continue;
            };
            let Some(chan) = tryx!(channels.get(name), "reading keys") else {
                continue;
            };
            let (Ok(channel), Ok(key)) =
                (ChannelName::parse(name), IdempotencyKey::parse(key.value()))
            else {
                continue;
            };
            out.push(StoredKey {
                channel,
                key,
                position: StreamPosition {
                    offset,
                    epoch: chan.value().0.to_string(),
                },
                stored_at: UNIX_EPOCH + Duration::from_millis(stored.value().0),
            });
        }
        Ok(out)
    }

    /// Rows in the file: (channels, publications).
    fn rows(&self) -> Result<(u64, u64), HistoryError> {
        let tx = tryx!(self.db.begin_read(), "counting rows");
        let channels = tryx!(tx.open_table(CHANNELS), "counting rows");
        let pubs = tryx!(tx.open_table(PUBLICATIONS), "counting rows");
        Ok((
            tryx!(channels.len(), "counting rows"),
            tryx!(pubs.len(), "counting rows"),
        ))
    }

    fn slot(&self, channel: &ChannelName) -> Slot {
        let shard = &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS];
        shard.lock().entry(channel.clone()).or_default().clone()
    }

    /// The channel's state, read from disk on first use.
    fn load<'a>(
        &self,
        slot: &'a mut Option<Chan>,
        channel: &ChannelName,
    ) -> Result<&'a mut Chan, HistoryError> {
        if slot.is_none() {
            let tx = tryx!(self.db.begin_read(), "reading channel");
            let channels = tryx!(tx.open_table(CHANNELS), "reading channel");
            let row = tryx!(channels.get(channel.as_str()), "reading channel");
            let chan = match row {
                None => Chan::fresh(),
                Some(row) => {
                    let (epoch, offset) = row.value();
                    let pubs = tryx!(tx.open_table(PUBLICATIONS), "reading channel");
                    let name = channel.as_str();
                    let mut range =
                        tryx!(pubs.range((name, 0)..=(name, offset)), "reading channel");
                    let first = match range.next() {
                        Some(entry) => tryx!(entry, "reading channel").0.value().1,
                        None => offset + 1,
                    };
                    Chan {
                        epoch: Arc::from(epoch),
                        offset,
                        assigned: offset,
                        first,
                        on_disk: true,
                        last_used: tokio::time::Instant::now(),
                    }
                }
            };
            *slot = Some(chan);
        }
        slot.as_mut()
            .ok_or_else(|| HistoryError::Store("channel state missing".into()))
    }

    /// Commits an empty fsync'd transaction, which makes every earlier
    /// unsynced one durable; with `clean`, records that no unsynced commit is pending.
    fn commit_durable(&self, w: &mut Writer, clean: bool) -> Result<(), HistoryError> {
        let tx = tryx!(self.db.begin_write(), "syncing");
        if clean && w.marked_open {
            let mut meta = tryx!(tx.open_table(META), "syncing");
            tryx!(meta.insert(BATCH_OPEN_KEY, 0), "syncing");
        }
        tryx!(tx.commit(), "syncing");
        w.dirty_since = None;
        w.flush_failed = false;
        if clean {
            w.marked_open = false;
        }
        Ok(())
    }

    /// The batch-mode background loop: one fsync'd commit at most `max_delay`
    /// after the first unsynced append.
    fn flush_loop(&self, max_delay: Duration) {
        let mut w = self.writer.lock();
        while !w.stop {
            match w.dirty_since {
                None => self.wake.wait(&mut w),
                Some(since) => {
                    let due = since + max_delay;
                    if std::time::Instant::now() < due {
                        self.wake.wait_until(&mut w, due);
                        continue;
                    }
                    if let Err(e) = self.commit_durable(&mut w, false) {
                        tracing::error!(error = %e, "history sync failed; appends sync themselves until it works");
                        w.flush_failed = true;
                        w.dirty_since = None;
                    }
                }
            }
        }
    }

    /// Opens a write transaction with the durability `sync` asks for; in
    /// batch mode, first durably marks the file as having unsynced commits.
    fn begin_append(&self, w: &mut Writer) -> Result<(WriteTransaction, bool), HistoryError> {
        let unsynced = matches!(self.sync, SyncMode::Batch { .. }) && !w.flush_failed;
        if unsynced && !w.marked_open {
            let tx = tryx!(self.db.begin_write(), "marking the file open");
            {
                let mut meta = tryx!(tx.open_table(META), "marking the file open");
                tryx!(meta.insert(BATCH_OPEN_KEY, 1), "marking the file open");
            }
            tryx!(tx.commit(), "marking the file open");
            w.marked_open = true;
        }
        let mut tx = tryx!(self.db.begin_write(), "appending");
        if unsynced {
            tryx!(tx.set_durability(Durability::None), "appending");
        }
        Ok((tx, unsynced))
    }

    /// Batch mode: each append commits at once, without an fsync.
    fn append_each(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
        key: Option<&IdempotencyKey>,
    ) -> Result<Arc<Publication>, HistoryError> {
        let slot = self.slot(channel);
        let mut slot = slot.lock();
        let chan = self.load(&mut slot, channel)?;
        chan.last_used = tokio::time::Instant::now();
        let next = chan.offset + 1;
        if retention.keeps_nothing() && !chan.on_disk {
            chan.offset = next;
            chan.assigned = next;
            return Ok(Arc::new(Publication::new(
                channel.clone(),
                next,
                chan.epoch.clone(),
                data,
                from,
            )));
        }
        // A channel's first row makes it one of its namespace's channels with
        // history; counted before the write, given back if the write fails.
        let new_row = !chan.on_disk;
        if new_row {
            self.counts
                .try_add(channel.namespace(), retention.max_channels)?;
        }
        let written = self.write_append(
            channel,
            chan,
            next,
            (&data, from.as_deref(), key),
            retention,
        );
        if new_row && written.is_err() {
            self.counts.remove(channel.namespace());
        }
        written?;
        Ok(Arc::new(Publication::new(
            channel.clone(),
            next,
            chan.epoch.clone(),
            data,
            from,
        )))
    }

    /// The disk part of an append: the row, the trim and the channel's position.
    fn write_append(
        &self,
        channel: &ChannelName,
        chan: &mut Chan,
        next: u64,
        (data, from, key): (&[u8], Option<&str>, Option<&IdempotencyKey>),
        retention: Retention,
    ) -> Result<(), HistoryError> {
        let name = channel.as_str();
        let now = self.now_ms();
        let mut w = self.writer.lock();
        let (tx, unsynced) = self.begin_append(&mut w)?;
        let first = {
            let mut pubs = tryx!(tx.open_table(PUBLICATIONS), "appending");
            let mut keys = tryx!(tx.open_table(KEYS), "appending");
            if !retention.keeps_nothing() {
                tryx!(pubs.insert((name, next), (now, from, data)), "appending");
                if let Some(key) = key {
                    tryx!(keys.insert((name, next), key.as_str()), "appending");
                }
            }
            let first = trim(&mut pubs, &mut keys, name, chan.first, next, retention, now)?;
            let mut channels = tryx!(tx.open_table(CHANNELS), "appending");
            tryx!(channels.insert(name, (&*chan.epoch, next)), "appending");
            first
        };
        tryx!(tx.commit(), "appending");
        self.committed(&mut w, unsynced);
        drop(w);
        chan.offset = next;
        chan.assigned = next;
        chan.first = first;
        chan.on_disk = true;
        Ok(())
    }

    /// Bookkeeping after a commit opened by `begin_append`.
    fn committed(&self, w: &mut Writer, unsynced: bool) {
        if unsynced {
            if w.dirty_since.is_none() {
                w.dirty_since = Some(std::time::Instant::now());
                self.wake.notify_all();
            }
        } else {
            w.dirty_since = None;
            w.flush_failed = false;
        }
    }

    fn read(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, HistoryError> {
        let slot = self.slot(channel);
        let mut slot = slot.lock();
        let chan = self.load(&mut slot, channel)?;
        chan.last_used = tokio::time::Instant::now();
        let limit = query.limit.unwrap_or(usize::MAX) as u64;
        // The offsets retention still keeps, then the part the query can use.
        let keep_from = if retention.keeps_nothing() {
            chan.offset + 1
        } else {
            chan.first
                .max((chan.offset + 1).saturating_sub(retention.size as u64))
        };
        let (lo, hi) = match &query.since {
            Some(since) if *since.epoch == *chan.epoch && since.offset < chan.offset => (
                keep_from.max(since.offset + 1),
                chan.offset.min(since.offset.saturating_add(limit)),
            ),
            Some(_) => (1, 0),
            None => (
                keep_from.max((chan.offset + 1).saturating_sub(limit)),
                chan.offset,
            ),
        };
        let mut stored = Vec::new();
        if chan.on_disk && lo <= hi {
            let now = self.now_ms();
            let ttl = ttl_ms(retention.ttl);
            let name = channel.as_str();
            let tx = tryx!(self.db.begin_read(), "reading history");
            let pubs = tryx!(tx.open_table(PUBLICATIONS), "reading history");
            let mut fresh = false;
            for entry in tryx!(pubs.range((name, lo)..=(name, hi)), "reading history") {
                let (key, value) = tryx!(entry, "reading history");
                let (at, from, data) = value.value();
                // Expired ones go from the front only, as trimming does, so
                // what remains has no gap.
                fresh = fresh || now.saturating_sub(at) < ttl;
                if fresh {
                    stored.push(Arc::new(Publication::new(
                        channel.clone(),
                        key.value().1,
                        chan.epoch.clone(),
                        Bytes::copy_from_slice(data),
                        from.map(Arc::from),
                    )));
                }
            }
        }
        Ok(select(stored.into_iter(), chan.offset, &chan.epoch, query))
    }
}

/// Deletes what `retention` no longer keeps of `name` (offsets from `first`
/// up to `last`); returns the new lower bound of stored offsets.
fn trim(
    pubs: &mut Table<PubKey, PubValue>,
    keys: &mut Table<PubKey, &str>,
    name: &str,
    first: u64,
    last: u64,
    retention: Retention,
    now: u64,
) -> Result<u64, HistoryError> {
    let mut keep_from = if retention.keeps_nothing() {
        last + 1
    } else {
        first.max((last + 1).saturating_sub(retention.size as u64))
    };
    if keep_from <= last {
        let ttl = ttl_ms(retention.ttl);
        for entry in tryx!(pubs.range((name, keep_from)..=(name, last)), "trimming") {
            let (key, value) = tryx!(entry, "trimming");
            if now.saturating_sub(value.value().0) < ttl {
                break;
            }
            keep_from = key.value().1 + 1;
        }
    }
    if first < keep_from {
        tryx!(
            pubs.retain_in((name, first)..(name, keep_from), |_, _| false),
            "trimming"
        );
        tryx!(
            keys.retain_in((name, first)..(name, keep_from), |_, _| false),
            "trimming"
        );
    }
    Ok(keep_from)
}

impl HistoryStore for FileHistory {
    fn blocks(&self) -> bool {
        // Only `always` waits for an fsync on every append.
        matches!(self.inner.sync, SyncMode::Always)
    }

    fn append(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
    ) -> Result<Arc<Publication>, HistoryError> {
        self.inner.append(channel, data, from, retention, None)
    }

    fn append_keyed(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
        key: Option<&IdempotencyKey>,
    ) -> Result<Arc<Publication>, HistoryError> {
        self.inner.append(channel, data, from, retention, key)
    }

    fn stored_keys(&self) -> Result<Vec<StoredKey>, HistoryError> {
        self.inner.stored_keys()
    }

    fn read(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, HistoryError> {
        self.inner.read(channel, query, retention)
    }

    fn sweep(&self, pass: &Sweep<'_>) -> Swept {
        self.inner.sweep(pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Retention = Retention {
        size: 3,
        ttl: Duration::from_secs(60),
        max_channels: 0,
    };

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse(name).expect("valid")
    }

    fn append(h: &FileHistory, c: &ChannelName, n: usize) -> Vec<Arc<Publication>> {
        (0..n)
            .map(|i| {
                h.append(c, Bytes::from(i.to_string()), Some("bob".into()), KEEP)
                    .expect("append")
            })
            .collect()
    }

    fn since(offset: u64, epoch: &str) -> HistoryQuery {
        HistoryQuery::since(offset, epoch)
    }

    fn all(h: &FileHistory, c: &ChannelName) -> HistoryRead {
        h.read(c, &HistoryQuery::default(), KEEP).expect("read")
    }

    #[test]
    fn a_restart_keeps_offsets_epoch_and_data() {
        for sync in [SyncMode::Always, SyncMode::batch()] {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("sub/dir/history.db");
            let c = ch("chat:a");
            let before = {
                let h = FileHistory::open(&path, sync).expect("open");
                append(&h, &c, 5);
                all(&h, &c)
            };
            let h = FileHistory::open(&path, sync).expect("reopen");
            let after = all(&h, &c);
            assert_eq!(after.offset, 5);
            assert_eq!(after.epoch, before.epoch, "{sync:?}");
            assert_eq!(after.publications.len(), 3);
            for (a, b) in after.publications.iter().zip(&before.publications) {
                assert_eq!((a.offset, &a.data, &a.from), (b.offset, &b.data, &b.from));
                assert_eq!(a.frame(), b.frame());
            }
            let next = append(&h, &c, 1);
            assert_eq!(next[0].offset, 6, "offsets are never reused");
            assert_eq!(next[0].epoch, before.epoch);
            let r = h.read(&c, &since(3, &before.epoch), KEEP).expect("read");
            assert!(r.recovered);
            assert_eq!(r.publications.len(), 3);
        }
    }

    #[test]
    fn idempotency_keys_survive_a_restart_while_their_publication_is_kept() {
        for sync in [SyncMode::Always, SyncMode::batch()] {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("history.db");
            let c = ch("chat:a");
            let key = |k: &str| IdempotencyKey::parse(k).expect("valid");
            let epoch = {
                let h = FileHistory::open(&path, sync).expect("open");
                let p = h
                    .append_keyed(&c, Bytes::from_static(b"1"), None, KEEP, Some(&key("k1")))
                    .expect("append");
                h.append_keyed(&c, Bytes::from_static(b"2"), None, KEEP, Some(&key("k2")))
                    .expect("append");
                p.epoch.to_string()
            };
            let h = FileHistory::open(&path, sync).expect("reopen");
            let mut keys = h.stored_keys().expect("keys");
            keys.sort_by_key(|k| k.position.offset);
            let got: Vec<_> = keys
                .iter()
                .map(|k| (k.key.as_str(), k.position.offset, k.position.epoch.as_str()))
                .collect();
            assert_eq!(got, [("k1", 1, &*epoch), ("k2", 2, &*epoch)], "{sync:?}");
            // Trimmed with their publications (KEEP holds 3).
            append(&h, &c, 3);
            let left: Vec<_> = h
                .stored_keys()
                .expect("keys")
                .iter()
                .map(|k| k.key.to_string())
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }

    #[test]
    fn a_garbage_file_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("history.db");
        let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&path, &garbage).expect("write");
        for sync in [SyncMode::Always, SyncMode::batch()] {
            let err = FileHistory::open(&path, sync).expect_err("garbage must not open");
            let msg = err.to_string();
            assert!(
                msg.contains("history.db") && msg.contains("left untouched"),
                "{msg}"
            );
            assert_eq!(std::fs::read(&path).expect("read"), garbage);
        }
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("history.db");
        {
            let h = FileHistory::open(&path, SyncMode::Always).expect("open");
            append(&h, &ch("chat:a"), 50);
        }
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() / 3]).expect("truncate");
        let err = FileHistory::open(&path, SyncMode::Always).expect_err("truncated must not open");
        assert!(err.to_string().contains("left untouched"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read").len(), bytes.len() / 3);
    }

    #[test]
    fn another_redb_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("other.db");
        {
            let db = Database::create(&path).expect("create");
            let tx = db.begin_write().expect("write");
            {
                let mut t = tx
                    .open_table(TableDefinition::<&str, u64>::new("stuff"))
                    .expect("table");
                t.insert("k", 1).expect("insert");
            }
            tx.commit().expect("commit");
        }
        let err = FileHistory::open(&path, SyncMode::Always).expect_err("not ours");
        assert!(
            err.to_string().contains("not a Switchboard history file"),
            "{err}"
        );
    }

    #[test]
    fn a_file_open_elsewhere_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("history.db");
        let _h = FileHistory::open(&path, SyncMode::Always).expect("open");
        let err = FileHistory::open(&path, SyncMode::Always).expect_err("locked");
        assert!(err.to_string().contains("already has it open"), "{err}");
    }

    #[test]
    fn publications_past_their_ttl_are_trimmed_across_restarts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("history.db");
        let c = ch("chat:a");
        let epoch = {
            let h = FileHistory::open(&path, SyncMode::Always).expect("open");
            append(&h, &c, 2)[0].epoch.clone()
        };
        let h = FileHistory::open(&path, SyncMode::Always).expect("reopen");
        assert!(h.read(&c, &since(0, &epoch), KEEP).expect("read").recovered);
        h.advance_clock(Duration::from_secs(61));
        let r = h.read(&c, &since(0, &epoch), KEEP).expect("read");
        assert!(r.publications.is_empty() && !r.recovered);
        assert_eq!((r.offset, &*r.epoch), (2, &*epoch));
        // The next append deletes them from the file.
        let p = append(&h, &c, 1);
        assert_eq!(p[0].offset, 3);
        assert_eq!(h.inner.slot(&c).lock().as_ref().map(|s| s.first), Some(3));
        let r = h.read(&c, &since(2, &epoch), KEEP).expect("read");
        assert!(r.recovered);
    }

    #[test]
    fn sweep_forgets_memory_only_and_keeps_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let h = FileHistory::open(dir.path().join("h.db"), SyncMode::Always).expect("open");
        let stored = ch("chat:a");
        let bare = ch("x");
        let p = append(&h, &stored, 4);
        let b = h
            .append(&bare, Bytes::from_static(b"1"), None, Retention::default())
            .expect("append");
        h.sweep(&pass(&|_| KEEP, usize::MAX, Duration::ZERO));
        assert!(h.inner.shards.iter().all(|s| s.lock().is_empty()));
        let r = all(&h, &stored);
        assert_eq!((r.offset, &r.epoch), (4, &p[0].epoch));
        assert_eq!(r.publications.len(), 3);
        let b2 = h
            .append(&bare, Bytes::from_static(b"1"), None, Retention::default())
            .expect("append");
        assert_eq!(b2.offset, 1, "a channel without history starts over");
        assert_ne!(b2.epoch, b.epoch);
    }

    fn pass<'a>(
        retention: &'a (dyn Fn(&ChannelName) -> Retention + Sync),
        budget: usize,
        idle: Duration,
    ) -> Sweep<'a> {
        Sweep {
            retention,
            idle,
            budget,
        }
    }

    const BRIEF: Retention = Retention {
        size: 10,
        ttl: Duration::from_secs(1),
        max_channels: 0,
    };

    #[test]
    fn the_sweep_deletes_expired_rows_and_channels_from_the_file() {
        for sync in [SyncMode::Always, SyncMode::batch()] {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("h.db");
            let keep = ch("keep:a");
            {
                let h = FileHistory::open(&path, sync).expect("open");
                for i in 0..500 {
                    let c = ch(&format!("chat:{i}"));
                    h.append(&c, Bytes::from_static(b"1"), None, KEEP)
                        .expect("append");
                }
                append(&h, &keep, 2);
                assert_eq!(h.rows().expect("rows"), (501, 502));
            }
            // Reopened: nobody touches these channels again.
            let h = FileHistory::open(&path, sync).expect("reopen");
            let policy = |c: &ChannelName| {
                if c.namespace() == "chat" {
                    KEEP
                } else {
                    Retention {
                        ttl: Duration::from_secs(3600),
                        ..KEEP
                    }
                }
            };
            let first = h.sweep(&pass(&policy, usize::MAX, Duration::from_secs(300)));
            assert_eq!((first.dropped, first.history_channels), (0, 501));
            h.advance_clock(Duration::from_secs(61));
            // A budget of 150 channels a pass: four passes cover them all.
            let mut dropped = 0;
            for _ in 0..4 {
                let s = h.sweep(&pass(&policy, 150, Duration::from_secs(300)));
                assert!(s.dropped <= 150, "{s:?}");
                dropped += s.dropped;
            }
            assert_eq!(dropped, 500, "{sync:?}");
            h.flush().expect("flush");
            assert_eq!(h.rows().expect("rows"), (1, 2), "{sync:?}");
            drop(h);
            let h = FileHistory::open(&path, sync).expect("reopen");
            assert_eq!(h.rows().expect("rows"), (1, 2), "deletions are on disk");
            assert_eq!(all(&h, &keep).publications.len(), 2);
            // A forgotten channel starts over.
            let p = h
                .append(&ch("chat:7"), Bytes::from_static(b"1"), None, KEEP)
                .expect("append");
            assert_eq!(p.offset, 1);
        }
    }

    #[test]
    fn a_loaded_channel_in_use_keeps_its_row_and_epoch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let h = FileHistory::open(dir.path().join("h.db"), SyncMode::Always).expect("open");
        let c = ch("chat:a");
        let p = h
            .append(&c, Bytes::from_static(b"1"), None, BRIEF)
            .expect("append");
        h.advance_clock(Duration::from_secs(2));
        // Used within the last TTL (tokio's clock, not the file's): kept.
        h.sweep(&pass(&|_| BRIEF, usize::MAX, Duration::from_secs(300)));
        assert_eq!(h.rows().expect("rows"), (1, 0), "the expired row is gone");
        let next = h
            .append(&c, Bytes::from_static(b"1"), None, BRIEF)
            .expect("append");
        assert_eq!((next.offset, &next.epoch), (2, &p.epoch));
    }

    #[test]
    fn history_channels_per_namespace_are_capped_and_counted_from_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("h.db");
        let capped = Retention {
            max_channels: 2,
            ..KEEP
        };
        {
            let h = FileHistory::open(&path, SyncMode::Always).expect("open");
            for name in ["chat:a", "chat:b"] {
                append(&h, &ch(name), 1);
            }
        }
        let h = FileHistory::open(&path, SyncMode::Always).expect("reopen");
        let err = h
            .append(&ch("chat:c"), Bytes::from_static(b"1"), None, capped)
            .expect_err("the file's channels count");
        assert!(matches!(err, HistoryError::ChannelLimit(_)), "{err}");
        h.append(&ch("chat:a"), Bytes::from_static(b"1"), None, capped)
            .expect("an existing channel goes on");
        h.append(&ch("room:a"), Bytes::from_static(b"1"), None, capped)
            .expect("another namespace");
        assert_eq!(h.rows().expect("rows").0, 3);
    }

    #[test]
    fn a_channel_that_stops_keeping_history_keeps_counting_on_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("h.db");
        let c = ch("chat:a");
        let epoch = {
            let h = FileHistory::open(&path, SyncMode::Always).expect("open");
            let e = append(&h, &c, 2)[0].epoch.clone();
            let p = h
                .append(&c, Bytes::from_static(b"1"), None, Retention::default())
                .expect("append");
            assert_eq!(p.offset, 3);
            e
        };
        let h = FileHistory::open(&path, SyncMode::Always).expect("reopen");
        let r = all(&h, &c);
        assert_eq!((r.offset, &r.epoch), (3, &epoch));
        assert!(
            r.publications.is_empty(),
            "retention 0 deleted what was stored"
        );
    }

    #[test]
    fn an_unclean_stop_after_batch_writes_renews_every_epoch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("h.db");
        let c = ch("chat:a");
        let h = FileHistory::open(&path, SyncMode::batch()).expect("open");
        let before = append(&h, &c, 3)[0].epoch.clone();
        h.crash();
        let h = FileHistory::open(&path, SyncMode::Always).expect("reopen");
        let r = all(&h, &c);
        assert_ne!(r.epoch, before);
        assert_eq!(r.offset, 3, "what was synced is kept, under the new epoch");
        assert!(
            !h.read(&c, &since(2, &before), KEEP)
                .expect("read")
                .recovered
        );
        drop(h);
        // A clean stop in between keeps it.
        let h = FileHistory::open(&path, SyncMode::batch()).expect("reopen");
        append(&h, &c, 1);
        h.close().expect("close");
        h.crash();
        let again = FileHistory::open(&path, SyncMode::batch()).expect("reopen");
        assert_eq!(all(&again, &c).epoch, r.epoch);
    }

    #[test]
    fn concurrent_appends_share_fsyncs_and_keep_offsets_contiguous() {
        let dir = tempfile::tempdir().expect("temp dir");
        let h =
            Arc::new(FileHistory::open(dir.path().join("h.db"), SyncMode::Always).expect("open"));
        let keep = Retention {
            size: 10_000,
            ttl: Duration::from_secs(600),
            max_channels: 0,
        };
        const THREADS: usize = 16;
        const EACH: usize = 40;
        let acks: Vec<Vec<(String, u64)>> = (0..THREADS)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    let c = ch(&format!("chat:{}", t % 3));
                    (0..EACH)
                        .map(|i| {
                            let p = h
                                .append(&c, Bytes::from(format!("[{t},{i}]")), None, keep)
                                .expect("append");
                            // Acknowledged means readable.
                            let r = h.read(&c, &HistoryQuery::default(), keep).expect("read");
                            assert!(r.offset >= p.offset);
                            (c.to_string(), p.offset)
                        })
                        .collect()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|j| j.join().expect("thread"))
            .collect();
        for n in 0..3 {
            let c = ch(&format!("chat:{n}"));
            let mut got: Vec<u64> = acks
                .iter()
                .flatten()
                .filter(|(name, _)| *name == c.to_string())
                .map(|(_, o)| *o)
                .collect();
            got.sort_unstable();
            let want: Vec<u64> = (1..=got.len() as u64).collect();
            assert_eq!(got, want, "offsets of {c} are 1..n, each once");
            let r = h
                .read(&c, &HistoryQuery::since(0, &all(&h, &c).epoch), keep)
                .expect("read");
            assert!(r.recovered);
            assert_eq!(r.publications.len(), got.len());
        }
        let commits = h.inner.group_commits.load(Ordering::Relaxed);
        assert!(
            commits < (THREADS * EACH) as u64,
            "{commits} commits for {} appends: none was shared",
            THREADS * EACH
        );
    }

    #[test]
    fn batch_mode_syncs_within_its_delay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let h = FileHistory::open(dir.path().join("h.db"), SyncMode::batch()).expect("open");
        append(&h, &ch("chat:a"), 3);
        assert!(h.inner.writer.lock().dirty_since.is_some());
        std::thread::sleep(SyncMode::DEFAULT_BATCH_DELAY * 20);
        assert!(h.inner.writer.lock().dirty_since.is_none());
    }

    /// The child side of `acknowledged_appends_survive_sigkill`.
    #[test]
    #[ignore = "run by acknowledged_appends_survive_sigkill in a child process"]
    fn sigkill_child() {
        let Ok(path) = std::env::var("SWITCHBOARD_SIGKILL_CHILD") else {
            return;
        };
        let sync = if std::env::var("SWITCHBOARD_SIGKILL_BATCH").is_ok() {
            SyncMode::batch()
        } else {
            SyncMode::Always
        };
        let h = FileHistory::open(&path, sync).expect("open");
        let c = ch("chat:a");
        let keep = Retention {
            size: 1_000_000,
            ttl: Duration::from_secs(3600),
            max_channels: 0,
        };
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for i in 0u64.. {
            let p = h
                .append(&c, Bytes::from(format!("{{\"i\":{i}}}")), None, keep)
                .expect("append");
            writeln!(out, "ACK {} {}", p.offset, p.epoch).expect("stdout");
            out.flush().expect("stdout");
        }
    }

    fn kill_child_after(acks: u64, batch: bool) -> (tempfile::TempDir, u64, String) {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("h.db");
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([
            "--ignored",
            "--exact",
            "file_history::tests::sigkill_child",
            "--nocapture",
        ])
        .env("SWITCHBOARD_SIGKILL_CHILD", &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
        if batch {
            cmd.env("SWITCHBOARD_SIGKILL_BATCH", "1");
        }
        let mut child = cmd.spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (mut last, mut epoch) = (0, String::new());
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.expect("line");
            let mut parts = line
                .strip_prefix("ACK ")
                .map(|l| l.split(' '))
                .into_iter()
                .flatten();
            if let (Some(o), Some(e)) = (parts.next(), parts.next()) {
                last = o.parse().expect("offset");
                epoch = e.to_string();
                if last >= acks {
                    child.kill().expect("SIGKILL");
                    break;
                }
            }
        }
        child.wait().expect("wait");
        assert!(last >= acks, "the child acknowledged {last}");
        (dir, last, epoch)
    }

    #[test]
    fn acknowledged_appends_survive_sigkill() {
        let (dir, acked, epoch) = kill_child_after(200, false);
        let h = FileHistory::open(dir.path().join("h.db"), SyncMode::Always).expect("reopen");
        let keep = Retention {
            size: 1_000_000,
            ttl: Duration::from_secs(3600),
            max_channels: 0,
        };
        let r = h
            .read(&ch("chat:a"), &since(0, &epoch), keep)
            .expect("read");
        assert_eq!(&*r.epoch, epoch, "sync=always keeps the epoch");
        assert!(r.offset >= acked);
        assert!(r.recovered, "every publication from 1 is there");
        for (i, p) in r.publications.iter().enumerate() {
            assert_eq!(p.offset, i as u64 + 1);
            assert_eq!(&p.data[..], format!("{{\"i\":{i}}}").as_bytes());
        }
    }

    #[test]
    fn a_sigkill_in_batch_mode_renews_the_epoch() {
        let (dir, _, epoch) = kill_child_after(200, true);
        let h = FileHistory::open(dir.path().join("h.db"), SyncMode::Always).expect("reopen");
        let r = all(&h, &ch("chat:a"));
        assert_ne!(&*r.epoch, epoch);
        let r = h
            .read(
                &ch("chat:a"),
                &since(0, &r.epoch),
                Retention {
                    size: 1_000_000,
                    ttl: Duration::from_secs(3600),
                    max_channels: 0,
                },
            )
            .expect("read");
        assert!(r.recovered, "what was synced has no gap");
    }
}
