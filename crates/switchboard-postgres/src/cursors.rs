//! [`PgCursors`]: inbox cursors (PROTOCOL §10) in PostgreSQL, beside the
//! history they point into, so a device's acknowledgements survive restarts
//! of every node. Each advance is one upsert: the row lock orders concurrent
//! acks of one cursor, and the forward-only rule is in its `CASE`, the same
//! rule as [`switchboard_core::cursor::advanced`].

use std::sync::Arc;

use async_trait::async_trait;
use switchboard_core::{Cursor, CursorError, CursorLimits, CursorStore, DeviceCursor};
use switchboard_protocol::ChannelName;

use crate::{Shared, describe};

/// Cursors in PostgreSQL; made by [`crate::PgHistory::cursors`].
pub struct PgCursors {
    pub(crate) shared: Arc<Shared>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for PgCursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCursors").finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> CursorError {
    CursorError::Unavailable(format!("postgres: {e}"))
}

fn offset(off: i64) -> u64 {
    u64::try_from(off).unwrap_or(0)
}

impl PgCursors {
    /// Runs `f` with a pooled client on the store's runtime (where the
    /// driver's connections live) and waits for it from any runtime.
    async fn with_client<T, F, Fut>(&self, f: F) -> Result<T, CursorError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send,
    {
        if !self.shared.ready.load(std::sync::atomic::Ordering::Acquire) {
            return Err(unavailable("not reached yet"));
        }
        let shared = self.shared.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.runtime.spawn(async move {
            let result = match shared.client().await {
                Ok(client) => match f(client).await {
                    Ok(v) => {
                        shared.succeeded();
                        Ok(v)
                    }
                    Err(e) => {
                        let said = describe(&e);
                        shared.failed(&said);
                        Err(unavailable(said))
                    }
                },
                Err(e) => Err(unavailable(e)),
            };
            let _ = tx.send(result);
        });
        rx.await.map_err(|_| unavailable("the store stopped"))?
    }
}

#[async_trait]
impl CursorStore for PgCursors {
    async fn get(
        &self,
        channel: &ChannelName,
        device: &str,
    ) -> Result<Option<Cursor>, CursorError> {
        let (channel, device) = (channel.as_str().to_owned(), device.to_owned());
        let row = self
            .with_client(move |client| async move {
                client
                    .query_opt(
                        "SELECT epoch, off FROM sb_cursors
                         WHERE channel = $1 AND device = $2 AND expires_at > clock_timestamp()",
                        &[&channel, &device],
                    )
                    .await
            })
            .await?;
        Ok(row.map(|r| Cursor {
            epoch: Arc::from(r.get::<_, String>(0)),
            offset: offset(r.get(1)),
        }))
    }

    async fn devices(&self, channel: &ChannelName) -> Result<Vec<DeviceCursor>, CursorError> {
        let channel = channel.as_str().to_owned();
        let rows = self
            .with_client(move |client| async move {
                client
                    .query(
                        "SELECT device, epoch, off FROM sb_cursors
                         WHERE channel = $1 AND expires_at > clock_timestamp()",
                        &[&channel],
                    )
                    .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| DeviceCursor {
                device: Arc::from(r.get::<_, String>(0)),
                cursor: Cursor {
                    epoch: Arc::from(r.get::<_, String>(1)),
                    offset: offset(r.get(2)),
                },
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
        let (channel, device) = (channel.as_str().to_owned(), device.to_owned());
        let epoch = to.epoch.to_string();
        let off = i64::try_from(to.offset)
            .map_err(|_| CursorError::Store("offset out of range".into()))?;
        let ttl = limits.ttl.as_secs_f64();
        let keep = i64::try_from(limits.max_devices.max(1)).unwrap_or(i64::MAX);
        let row = self
            .with_client(move |client| async move {
                // An expired cursor counts as none: replaced, not compared.
                let row = client
                    .query_one(
                        "INSERT INTO sb_cursors AS c
                             (channel, device, epoch, off, advanced_at, expires_at)
                         VALUES ($1, $2, $3, $4, clock_timestamp(),
                                 clock_timestamp() + make_interval(secs => $5))
                         ON CONFLICT (channel, device) DO UPDATE SET
                             off = CASE WHEN c.epoch = EXCLUDED.epoch AND c.off >= EXCLUDED.off
                                             AND c.expires_at > clock_timestamp()
                                        THEN c.off ELSE EXCLUDED.off END,
                             epoch = EXCLUDED.epoch,
                             advanced_at = EXCLUDED.advanced_at,
                             expires_at = EXCLUDED.expires_at
                         RETURNING epoch, off",
                        &[&channel, &device, &epoch, &off, &ttl],
                    )
                    .await?;
                // Past the cap: the least recently advanced devices go (the
                // one just advanced is the most recent, so it stays).
                client
                    .execute(
                        "DELETE FROM sb_cursors WHERE channel = $1 AND device IN (
                             SELECT device FROM sb_cursors WHERE channel = $1
                             ORDER BY advanced_at DESC, device OFFSET $2)",
                        &[&channel, &keep],
                    )
                    .await?;
                Ok(row)
            })
            .await?;
        Ok(Cursor {
            epoch: Arc::from(row.get::<_, String>(0)),
            offset: offset(row.get(1)),
        })
    }

    /// Deletes expired cursors in the background through the expiry index
    /// (reads already skip them): housekeeping never waits on the database.
    fn sweep(&self, budget: usize) {
        if !self.shared.ready.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let shared = self.shared.clone();
        let budget = i64::try_from(budget.max(1)).unwrap_or(i64::MAX);
        self.runtime.spawn(async move {
            let Ok(client) = shared.client().await else {
                return;
            };
            if let Err(e) = client
                .execute(
                    "DELETE FROM sb_cursors WHERE ctid IN (
                         SELECT ctid FROM sb_cursors WHERE expires_at <= clock_timestamp()
                         ORDER BY expires_at LIMIT $1)",
                    &[&budget],
                )
                .await
            {
                tracing::warn!(error = %describe(&e), "cursor sweep failed; the next pass tries again");
            }
        });
    }
}
