//! Reads: the channel's row (created, with its epoch, on a first read, so a
//! reader's epoch is the one its first publication keeps) and its stored
//! publications within retention, through the primary key.

use std::sync::Arc;

use switchboard_core::{HistoryError, HistoryQuery, HistoryRead, Retention, new_epoch, select};
use switchboard_protocol::{ChannelName, Publication};

use crate::{Shared, describe, store_error};

pub(crate) async fn read(
    shared: &Shared,
    channel: &ChannelName,
    query: &HistoryQuery,
    retention: Retention,
) -> Result<HistoryRead, HistoryError> {
    let result = read_inner(shared, channel, query, retention).await;
    match &result {
        Err(HistoryError::Store(e)) => shared.failed(e),
        _ => shared.succeeded(),
    }
    result
}

async fn read_inner(
    shared: &Shared,
    channel: &ChannelName,
    query: &HistoryQuery,
    retention: Retention,
) -> Result<HistoryRead, HistoryError> {
    let client = shared.client().await?;
    let name = channel.as_str();
    let mut row = None;
    // A first read inserts the row; a concurrent first read or publish may
    // insert it first (then the next statement, with a new snapshot, sees it).
    for _ in 0..3 {
        row = client
            .query_opt(
                "SELECT epoch, top FROM sb_channels WHERE channel = $1",
                &[&name],
            )
            .await
            .map_err(|e| store_error(describe(&e)))?;
        if row.is_some() {
            break;
        }
        row = client
            .query_opt(
                "INSERT INTO sb_channels (channel, namespace, epoch, top, touched_at)
                 VALUES ($1, $2, $3, 0, now()) ON CONFLICT (channel) DO NOTHING
                 RETURNING epoch, top",
                &[&name, &channel.namespace(), &new_epoch().to_string()],
            )
            .await
            .map_err(|e| store_error(describe(&e)))?;
        if row.is_some() {
            break;
        }
    }
    let row = row.ok_or_else(|| store_error("the channel's row kept vanishing"))?;
    let epoch: Arc<str> = Arc::from(row.get::<_, String>(0));
    let top: i64 = row.get(1);
    let offset = u64::try_from(top).unwrap_or(0);
    let size = i64::try_from(retention.size).unwrap_or(i64::MAX);
    let ttl_ms = i64::try_from(retention.ttl.as_millis()).unwrap_or(i64::MAX);
    let limit = query
        .limit
        .map_or(size, |l| i64::try_from(l).unwrap_or(i64::MAX).min(size));
    let rows = match &query.since {
        Some(since) => {
            if *since.epoch != *epoch || since.offset > offset || limit == 0 {
                return Ok(select(
                    std::iter::empty::<Arc<Publication>>(),
                    offset,
                    &epoch,
                    query,
                ));
            }
            let after = i64::try_from(since.offset).unwrap_or(i64::MAX);
            client
                .query(
                    "SELECT off, sender, data FROM sb_publications
                     WHERE channel = $1 AND off > $2 AND off > $3::int8 - $4::int8
                       AND at > now() - $5::int8 * interval '1 millisecond'
                     ORDER BY off LIMIT $6",
                    &[&name, &after, &top, &size, &ttl_ms, &limit],
                )
                .await
                .map_err(|e| store_error(describe(&e)))?
        }
        None => {
            let mut rows = client
                .query(
                    "SELECT off, sender, data FROM sb_publications
                     WHERE channel = $1 AND off > $2::int8 - $3::int8
                       AND at > now() - $4::int8 * interval '1 millisecond'
                     ORDER BY off DESC LIMIT $5",
                    &[&name, &top, &size, &ttl_ms, &limit],
                )
                .await
                .map_err(|e| store_error(describe(&e)))?;
            rows.reverse();
            rows
        }
    };
    let publications: Vec<Arc<Publication>> = rows
        .into_iter()
        .map(|row| {
            let off: i64 = row.get(0);
            let sender: Option<String> = row.get(1);
            let data: Vec<u8> = row.get(2);
            Arc::new(Publication::new(
                channel.clone(),
                u64::try_from(off).unwrap_or(0),
                epoch.clone(),
                data.into(),
                sender.map(Arc::from),
            ))
        })
        .collect();
    Ok(select(publications.into_iter(), offset, &epoch, query))
}
