//! Retention without readers: expired publications are deleted through the
//! expiry index, oldest first, in bounded statements; a channel's row goes
//! once it stores nothing and nobody published to it for `idle` (its next
//! publication starts a new epoch, as the contract allows for lost history).

use std::time::Duration;

use crate::Shared;

/// Rows one statement deletes, at most: a statement never holds many locks
/// or runs for long, so appends never wait behind a big sweep.
const CHUNK: i64 = 2000;

#[derive(Default)]
pub(crate) struct DbSwept {
    pub examined: usize,
    pub dropped: usize,
}

pub(crate) async fn sweep(
    shared: &Shared,
    idle: Duration,
    budget: usize,
) -> Result<DbSwept, String> {
    let e = |e: tokio_postgres::Error| crate::describe(&e);
    let client = shared.client().await.map_err(|e| e.to_string())?;
    let mut swept = DbSwept::default();
    let rounds = (budget as i64 / CHUNK).max(1);
    for _ in 0..rounds {
        let n = client
            .execute(
                "DELETE FROM sb_publications WHERE (channel, off) IN (
                     SELECT channel, off FROM sb_publications
                     WHERE expires_at <= now() ORDER BY expires_at LIMIT $1)",
                &[&CHUNK],
            )
            .await
            .map_err(e)?;
        swept.examined += n as usize;
        if (n as i64) < CHUNK {
            break;
        }
    }
    let idle_ms = i64::try_from(idle.as_millis()).unwrap_or(i64::MAX);
    // The conditions are repeated on the outer row: a publication that
    // touched the row meanwhile keeps it (they are checked again on the row
    // as it is when the delete gets its lock).
    let rows = client
        .query(
            "DELETE FROM sb_channels c
             WHERE c.channel IN (
                 SELECT channel FROM sb_channels
                 WHERE touched_at < now() - $1::int8 * interval '1 millisecond'
                 ORDER BY touched_at LIMIT $2)
               AND c.touched_at < now() - $1::int8 * interval '1 millisecond'
               AND NOT EXISTS (SELECT 1 FROM sb_publications p WHERE p.channel = c.channel)
             RETURNING c.namespace, c.top",
            &[&idle_ms, &CHUNK],
        )
        .await
        .map_err(e)?;
    swept.dropped = rows.len();
    if !rows.is_empty() {
        let mut counts = shared.counts.lock();
        for row in rows {
            let ns: String = row.get(0);
            let top: i64 = row.get(1);
            if top > 0
                && let Some(n) = counts.get_mut(&ns)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&ns);
                }
            }
        }
    }
    shared.succeeded();
    Ok(swept)
}
