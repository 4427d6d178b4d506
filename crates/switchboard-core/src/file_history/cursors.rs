//! Inbox cursors in the history file (the `cursors` table), so they survive
//! a restart with the history they point into. Each advance is one write
//! transaction with an fsync, under the file's writer lock (redb takes one
//! writer at a time anyway): advances of one cursor are serialized, so the
//! forward-only rule needs no more than reading the row first.

use std::sync::Arc;

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable};
use switchboard_protocol::ChannelName;

use super::{CURSORS, FileHistory, Inner, ttl_ms};
use crate::broker::blocking;
use crate::cursor::{Cursor, CursorError, CursorLimits, CursorStore, DeviceCursor, advanced};

macro_rules! tryc {
    ($e:expr, $ctx:literal) => {
        $e.map_err(|e| CursorError::Store(format!(concat!($ctx, ": {}"), e)))?
    };
}

/// A row: device, cursor, expires at, advanced at (unix ms).
type Row = (String, Cursor, u64, u64);

impl Inner {
    fn cursor_rows(&self, channel: &ChannelName) -> Result<Vec<Row>, CursorError> {
        let tx = tryc!(self.db.begin_read(), "reading cursors");
        let table = tryc!(tx.open_table(CURSORS), "reading cursors");
        let name = channel.as_str();
        let now = self.now_ms();
        let mut rows = Vec::new();
        for entry in tryc!(table.range((name, "")..), "reading cursors") {
            let (key, value) = tryc!(entry, "reading cursors");
            let (ch, device) = key.value();
            if ch != name {
                break;
            }
            let (epoch, offset, expires, at) = value.value();
            if expires > now {
                rows.push((
                    device.to_string(),
                    Cursor {
                        epoch: Arc::from(epoch),
                        offset,
                    },
                    expires,
                    at,
                ));
            }
        }
        Ok(rows)
    }

    fn advance_cursor(
        &self,
        channel: &ChannelName,
        device: &str,
        to: Cursor,
        limits: CursorLimits,
    ) -> Result<Cursor, CursorError> {
        let name = channel.as_str();
        let _w = self.writer.lock();
        let now = self.now_ms();
        let tx = tryc!(self.db.begin_write(), "advancing a cursor");
        let cursor = {
            let mut table = tryc!(tx.open_table(CURSORS), "advancing a cursor");
            let mut rows: Vec<(String, Option<Cursor>, u64)> = Vec::new();
            for entry in tryc!(table.range((name, "")..), "advancing a cursor") {
                let (key, value) = tryc!(entry, "advancing a cursor");
                let (ch, d) = key.value();
                if ch != name {
                    break;
                }
                let (epoch, offset, expires, at) = value.value();
                let live = (expires > now).then(|| Cursor {
                    epoch: Arc::from(epoch),
                    offset,
                });
                rows.push((d.to_string(), live, at));
            }
            let mut doomed: Vec<String> = rows
                .iter()
                .filter(|(_, c, _)| c.is_none())
                .map(|(d, _, _)| d.clone())
                .collect();
            rows.retain(|(_, c, _)| c.is_some());
            let current = rows
                .iter()
                .find(|(d, _, _)| d == device)
                .and_then(|(_, c, _)| c.clone());
            if current.is_none() {
                rows.sort_by_key(|(_, _, at)| *at);
                let over = (rows.len() + 1).saturating_sub(limits.max_devices.max(1));
                doomed.extend(rows.iter().take(over).map(|(d, _, _)| d.clone()));
            }
            for d in &doomed {
                tryc!(table.remove((name, d.as_str())), "advancing a cursor");
            }
            let cursor = advanced(current.as_ref(), to);
            let expires = now.saturating_add(ttl_ms(limits.ttl));
            tryc!(
                table.insert(
                    (name, device),
                    (&*cursor.epoch, cursor.offset, expires, now)
                ),
                "advancing a cursor"
            );
            cursor
        };
        tryc!(tx.commit(), "advancing a cursor");
        Ok(cursor)
    }

    /// Deletes expired cursors among the next `budget` rows.
    fn sweep_cursors(&self, budget: usize) -> Result<(), CursorError> {
        let now = self.now_ms();
        let mut after = self.cursor_sweep_after.lock();
        let mut expired: Vec<(String, String)> = Vec::new();
        let mut last = None;
        let mut looked = 0;
        {
            let tx = tryc!(self.db.begin_read(), "sweeping cursors");
            let table = tryc!(tx.open_table(CURSORS), "sweeping cursors");
            let start = after.clone().unwrap_or_default();
            let range = tryc!(
                table.range((start.0.as_str(), start.1.as_str())..),
                "sweeping cursors"
            );
            for entry in range.take(budget.max(1)) {
                looked += 1;
                let (key, value) = tryc!(entry, "sweeping cursors");
                let (ch, d) = key.value();
                if after.as_ref().is_some_and(|(c, x)| c == ch && x == d) {
                    continue;
                }
                let row = (ch.to_string(), d.to_string());
                if value.value().2 <= now {
                    expired.push(row.clone());
                }
                last = Some(row);
            }
        }
        // At the end of the table the next pass starts over.
        *after = if looked < budget.max(1) { None } else { last };
        if expired.is_empty() {
            return Ok(());
        }
        let _w = self.writer.lock();
        let tx = tryc!(self.db.begin_write(), "sweeping cursors");
        {
            let mut table = tryc!(tx.open_table(CURSORS), "sweeping cursors");
            for (ch, d) in &expired {
                // Advanced again since the read: keep it.
                let still = tryc!(table.get((ch.as_str(), d.as_str())), "sweeping cursors")
                    .is_some_and(|v| v.value().2 <= now);
                if still {
                    tryc!(table.remove((ch.as_str(), d.as_str())), "sweeping cursors");
                }
            }
        }
        tryc!(tx.commit(), "sweeping cursors");
        Ok(())
    }
}

#[async_trait]
impl CursorStore for FileHistory {
    async fn get(
        &self,
        channel: &ChannelName,
        device: &str,
    ) -> Result<Option<Cursor>, CursorError> {
        let rows = blocking(|| self.inner.cursor_rows(channel))?;
        Ok(rows
            .into_iter()
            .find(|(d, ..)| d == device)
            .map(|(_, c, ..)| c))
    }

    async fn devices(&self, channel: &ChannelName) -> Result<Vec<DeviceCursor>, CursorError> {
        let rows = blocking(|| self.inner.cursor_rows(channel))?;
        Ok(rows
            .into_iter()
            .map(|(d, cursor, ..)| DeviceCursor {
                device: Arc::from(d),
                cursor,
            })
            .collect())
    }

    async fn advance(
        &self,
        channel: &ChannelName,
        device: &str,
        to: Cursor,
        limits: CursorLimits,
    ) -> Result<Cursor, CursorError> {
        blocking(|| self.inner.advance_cursor(channel, device, to, limits))
    }

    fn sweep(&self, budget: usize) {
        if let Err(e) = self.inner.sweep_cursors(budget) {
            tracing::warn!(error = %e, "sweeping inbox cursors failed");
        }
    }
}
