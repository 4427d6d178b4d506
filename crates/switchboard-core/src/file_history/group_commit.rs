//! The group commit of `sync = "always"`: concurrent appends share one
//! durable commit. The first append that finds no commit running writes
//! every append queued so far in one transaction (one fsync) while later
//! ones queue behind it; no channel lock is held across the fsync.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use switchboard_protocol::{ChannelName, IdempotencyKey, Publication};

use super::{CHANNELS, Inner, KEYS, PUBLICATIONS, Slot, SyncMode, trim};
use crate::history::{HistoryError, Retention};

/// An append queued for the next group commit.
pub(super) struct Record {
    slot: Slot,
    publication: Arc<Publication>,
    /// Written with the publication, in its transaction.
    key: Option<IdempotencyKey>,
    retention: Retention,
    /// Lowest stored offset of its channel when it was queued.
    first: u64,
    at_ms: u64,
    /// It writes its channel's first row (counted against the cap).
    new_row: bool,
    /// Set once its commit ended: `Err` carries why it failed.
    done: Arc<OnceLock<Result<(), String>>>,
}

#[derive(Default)]
pub(super) struct Group {
    pending: Vec<Record>,
    /// An append is writing a batch now.
    leading: bool,
}

impl Inner {
    /// Sync mode `always`: the offset is handed out under the channel's
    /// lock, the append queued, and the call returns once a group commit
    /// (an fsync shared with every append queued with it) holds it.
    pub(super) fn append(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
        key: Option<&IdempotencyKey>,
    ) -> Result<Arc<Publication>, HistoryError> {
        if matches!(self.sync, SyncMode::Batch { .. }) {
            return self.append_each(channel, data, from, retention, key);
        }
        let slot = self.slot(channel);
        let done = Arc::new(OnceLock::new());
        let publication = {
            let mut guard = slot.lock();
            let chan = self.load(&mut guard, channel)?;
            chan.last_used = tokio::time::Instant::now();
            let next = chan.assigned + 1;
            let publication = Arc::new(Publication::new(
                channel.clone(),
                next,
                chan.epoch.clone(),
                data,
                from,
            ));
            if retention.keeps_nothing() && !chan.on_disk && chan.assigned == chan.offset {
                // Nothing of it would survive a restart: no write.
                chan.offset = next;
                chan.assigned = next;
                return Ok(publication);
            }
            // A channel's first row makes it one of its namespace's channels
            // with history: counted now, given back if its commit fails.
            let new_row = !chan.on_disk && chan.assigned == chan.offset;
            if new_row {
                self.counts
                    .try_add(channel.namespace(), retention.max_channels)?;
            }
            chan.assigned = next;
            // Queued under the channel's lock, so a channel's appends are
            // queued (and committed) in offset order.
            self.group.lock().pending.push(Record {
                slot: slot.clone(),
                publication: publication.clone(),
                key: key.cloned(),
                retention,
                first: chan.first,
                at_ms: self.now_ms(),
                new_row,
                done: done.clone(),
            });
            publication
        };
        self.await_commit(&done)?;
        Ok(publication)
    }

    /// Waits until `done` is set, writing the queued batch itself when no
    /// other append is writing one.
    fn await_commit(&self, done: &OnceLock<Result<(), String>>) -> Result<(), HistoryError> {
        let mut group = self.group.lock();
        loop {
            if let Some(result) = done.get() {
                return result.clone().map_err(HistoryError::Store);
            }
            if group.leading {
                self.group_done.wait(&mut group);
                continue;
            }
            group.leading = true;
            let batch = std::mem::take(&mut group.pending);
            drop(group);
            self.commit_batch(batch);
            group = self.group.lock();
            group.leading = false;
            self.group_done.notify_all();
        }
    }

    /// Writes `batch` in one durable transaction and tells each append how
    /// it went.
    fn commit_batch(&self, batch: Vec<Record>) {
        match self.write_batch(&batch) {
            Ok(updates) => {
                // Readers see the offsets before any append is answered.
                for (slot, offset, first) in updates {
                    if let Some(chan) = slot.lock().as_mut() {
                        chan.offset = chan.offset.max(offset);
                        chan.first = chan.first.max(first);
                        chan.on_disk = true;
                    }
                }
                for r in &batch {
                    let _ = r.done.set(Ok(()));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for r in &batch {
                    let _ = r.done.set(Err(why.clone()));
                    if r.new_row {
                        self.counts.remove(r.publication.channel.namespace());
                    }
                }
                self.give_back(&batch, &why);
            }
        }
    }

    /// After a failed commit: the offsets of its channels that were handed
    /// out but not stored are handed out again, so a channel never gets a
    /// hole where nothing was published. The appends queued behind the
    /// failed ones (their offsets come after) fail with them.
    fn give_back(&self, batch: &[Record], why: &str) {
        let mut seen: Vec<&Slot> = Vec::new();
        for r in batch {
            if seen.iter().any(|s| Arc::ptr_eq(s, &r.slot)) {
                continue;
            }
            seen.push(&r.slot);
            let mut guard = r.slot.lock();
            let mut group = self.group.lock();
            group.pending.retain(|q| {
                let same = Arc::ptr_eq(&q.slot, &r.slot);
                if same {
                    let _ = q.done.set(Err(why.to_string()));
                }
                !same
            });
            if let Some(chan) = guard.as_mut() {
                chan.assigned = chan.offset;
            }
        }
    }

    /// One transaction with every append of `batch`, trimmed per channel;
    /// returns each channel's slot, latest offset and lowest stored offset.
    fn write_batch(&self, batch: &[Record]) -> Result<Vec<(Slot, u64, u64)>, HistoryError> {
        let mut w = self.writer.lock();
        let (tx, _) = self.begin_append(&mut w)?;
        // (index of its last record, lowest stored offset) per channel.
        let mut channels: HashMap<&ChannelName, (usize, u64)> = HashMap::new();
        {
            let mut pubs = tryx!(tx.open_table(PUBLICATIONS), "appending");
            let mut keys = tryx!(tx.open_table(KEYS), "appending");
            for (i, r) in batch.iter().enumerate() {
                let p = &r.publication;
                if !r.retention.keeps_nothing() {
                    tryx!(
                        pubs.insert(
                            (p.channel.as_str(), p.offset),
                            (r.at_ms, p.from.as_deref(), &p.data[..])
                        ),
                        "appending"
                    );
                    if let Some(key) = &r.key {
                        tryx!(
                            keys.insert((p.channel.as_str(), p.offset), key.as_str()),
                            "appending"
                        );
                    }
                }
                channels
                    .entry(&p.channel)
                    .and_modify(|(last, _)| *last = i)
                    .or_insert((i, r.first));
            }
            let mut rows = tryx!(tx.open_table(CHANNELS), "appending");
            let now = self.now_ms();
            for (last, first) in channels.values_mut() {
                let r = &batch[*last];
                let p = &r.publication;
                let name = p.channel.as_str();
                *first = trim(
                    &mut pubs,
                    &mut keys,
                    name,
                    *first,
                    p.offset,
                    r.retention,
                    now,
                )?;
                tryx!(rows.insert(name, (&*p.epoch, p.offset)), "appending");
            }
        }
        tryx!(tx.commit(), "appending");
        self.group_commits.fetch_add(1, Ordering::Relaxed);
        w.dirty_since = None;
        w.flush_failed = false;
        Ok(channels
            .into_values()
            .map(|(last, first)| {
                let r = &batch[last];
                (r.slot.clone(), r.publication.offset, first)
            })
            .collect())
    }
}
