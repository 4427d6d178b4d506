//! The file store's sweep: retention applied to channels nobody touches,
//! on disk (expired rows, then the channel's row) and in memory (idle slots).

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable};
use switchboard_protocol::ChannelName;

use super::{CHANNELS, Inner, KEYS, PUBLICATIONS, SHARDS, Slot, trim, ttl_ms};
use crate::history::{HistoryError, Retention, Sweep, Swept};

/// Channels a sweep writes in one transaction: what an append may wait for.
const SWEEP_WRITE_CHUNK: usize = 256;

impl Inner {
    pub(super) fn sweep(&self, pass: &Sweep<'_>) -> Swept {
        let mut swept = Swept::default();
        if let Err(e) = self.sweep_disk(pass, &mut swept) {
            tracing::warn!(error = %e, "history sweep failed; the next pass tries again");
        }
        self.sweep_slots(pass, &mut swept);
        swept.history_channels = self.counts.total();
        swept
    }

    /// Applies retention on disk to the next `budget` channels (after those
    /// of the previous pass): deletes expired rows, and the channel's row
    /// when nothing is left and nobody uses it. The channels are looked at in
    /// a read transaction, without the writer; only those with something to
    /// delete are written, `SWEEP_WRITE_CHUNK` per transaction, so appends
    /// wait at most one chunk for the writer.
    fn sweep_disk(&self, pass: &Sweep<'_>, swept: &mut Swept) -> Result<(), HistoryError> {
        let now_ms = self.now_ms();
        let mut after = self.sweep_after.lock();
        let budget = pass.budget.max(1);
        let (work, seen) = {
            let tx = tryx!(self.db.begin_read(), "sweeping");
            let channels = tryx!(tx.open_table(CHANNELS), "sweeping");
            let pubs = tryx!(tx.open_table(PUBLICATIONS), "sweeping");
            let rows = match after.as_deref() {
                Some(a) => tryx!(
                    channels
                        .range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
                    "sweeping"
                ),
                None => tryx!(channels.iter(), "sweeping"),
            };
            let mut work = Vec::new();
            let mut seen = 0;
            let mut last_seen = None;
            for row in rows.take(budget) {
                let (k, v) = tryx!(row, "sweeping");
                seen += 1;
                last_seen = Some(k.value().to_string());
                let Ok(name) = ChannelName::parse(k.value()) else {
                    continue;
                };
                let last = v.value().1;
                let retention = (pass.retention)(&name);
                let key = name.as_str();
                let oldest = match tryx!(pubs.range((key, 0)..=(key, last)), "sweeping").next() {
                    Some(entry) => {
                        let (k, v) = tryx!(entry, "sweeping");
                        Some((k.value().1, v.value().0))
                    }
                    None => None,
                };
                let due = match oldest {
                    // Nothing stored: the row may go, if nobody uses the channel.
                    None => true,
                    Some((offset, at)) => {
                        retention.keeps_nothing()
                            || offset.saturating_add(retention.size as u64) <= last
                            || now_ms.saturating_sub(at) >= ttl_ms(retention.ttl)
                    }
                };
                if due {
                    work.push((name, last, retention));
                }
            }
            *after = if seen < budget { None } else { last_seen };
            (work, seen)
        };
        drop(after);
        swept.examined += seen;
        for chunk in work.chunks(SWEEP_WRITE_CHUNK) {
            self.sweep_write(chunk, pass, now_ms, swept)?;
        }
        Ok(())
    }

    /// Deletes what retention no longer keeps of `chunk`'s channels, in one
    /// transaction.
    fn sweep_write(
        &self,
        chunk: &[(ChannelName, u64, Retention)],
        pass: &Sweep<'_>,
        now_ms: u64,
        swept: &mut Swept,
    ) -> Result<(), HistoryError> {
        // Slots are locked before the writer, as appends do; a slot in use is
        // left for a later pass (`try_lock`: the sweep never waits on one).
        let slots: Vec<Slot> = chunk.iter().map(|(name, _, _)| self.slot(name)).collect();
        let mut held: Vec<_> = chunk
            .iter()
            .zip(&slots)
            .filter_map(|(work, slot)| slot.try_lock().map(|g| (work, g)))
            .collect();
        let now = tokio::time::Instant::now();
        let mut w = self.writer.lock();
        let (tx, unsynced) = self.begin_append(&mut w)?;
        let mut changed = false;
        let mut forgotten = Vec::new();
        {
            let mut pubs = tryx!(tx.open_table(PUBLICATIONS), "sweeping");
            let mut keys = tryx!(tx.open_table(KEYS), "sweeping");
            let mut channels = tryx!(tx.open_table(CHANNELS), "sweeping");
            for (i, ((name, last, retention), chan)) in held.iter_mut().enumerate() {
                let key = name.as_str();
                // A loaded channel may be ahead of the read.
                let last = chan.as_ref().map_or(*last, |c| c.offset.max(*last));
                let lowest = match tryx!(pubs.range((key, 0)..=(key, last)), "sweeping").next() {
                    Some(entry) => tryx!(entry, "sweeping").0.value().1,
                    None => last + 1,
                };
                let keep_from = trim(&mut pubs, &mut keys, key, lowest, last, *retention, now_ms)?;
                changed |= lowest < keep_from;
                if let Some(c) = chan.as_mut() {
                    c.first = keep_from;
                }
                let unused = chan.as_ref().is_none_or(|c| {
                    now.duration_since(c.last_used) >= retention.ttl.min(pass.idle)
                });
                if keep_from > last && unused {
                    tryx!(channels.remove(key), "sweeping");
                    changed = true;
                    forgotten.push(i);
                }
            }
        }
        if !changed {
            tryx!(tx.abort(), "sweeping");
            return Ok(());
        }
        tryx!(tx.commit(), "sweeping");
        self.committed(&mut w, unsynced);
        drop(w);
        for i in forgotten {
            let ((name, _, _), chan) = &mut held[i];
            // Reloaded (with a new epoch) on its next use.
            **chan = None;
            self.counts.remove(name.namespace());
            swept.dropped += 1;
        }
        Ok(())
    }

    /// Forgets in-memory slots nobody holds that were idle for `idle` (or
    /// hold nothing), whole shards at a time within the budget: they reload
    /// from disk.
    fn sweep_slots(&self, pass: &Sweep<'_>, swept: &mut Swept) {
        let now = tokio::time::Instant::now();
        let mut next = self.sweep_next.lock();
        let mut seen = 0;
        for _ in 0..SHARDS {
            let i = *next % SHARDS;
            *next = (i + 1) % SHARDS;
            let mut shard = self.shards[i].lock();
            seen += shard.len();
            // A slot nobody else holds (count 1, checked under the shard lock,
            // where clones are made) can be dropped.
            shard.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot.try_lock().is_some_and(|c| {
                        c.as_ref()
                            .is_some_and(|c| now.duration_since(c.last_used) < pass.idle)
                    })
            });
            drop(shard);
            if seen >= pass.budget {
                break;
            }
        }
        swept.examined += seen;
    }
}
