//! Group commit: appends queue here and one task writes whatever is queued
//! in one transaction, so under load many publishes share a commit (and
//! its WAL flush); alone, a publish is one short transaction. The channel
//! row's `top` is advanced in that transaction and the offsets come back
//! from it, so they are contiguous and never reused, whatever the
//! concurrency. Each append is answered only after the commit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use switchboard_core::{HistoryError, Retention, new_epoch};
use switchboard_protocol::{ChannelName, Publication};
use tokio::sync::Notify;

use crate::bridge::Bridge;
use crate::{Shared, store_error};

/// Appends waiting for a commit, at most: past it publishers wait for room.
const MAX_QUEUED: usize = 8192;
/// Appends written in one transaction, at most.
const MAX_BATCH: usize = 1024;
/// TTLs beyond this are stored as this (an interval of centuries overflows
/// nothing and expires never in practice).
const MAX_TTL_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

type Answer = Result<Arc<Publication>, HistoryError>;

/// Where an append's answer lands.
#[derive(Default)]
struct Done {
    answer: Mutex<Option<Answer>>,
    ready: Condvar,
}

impl Done {
    fn set(&self, a: Answer) {
        *self.answer.lock() = Some(a);
        self.ready.notify_one();
    }

    fn wait(&self) -> Answer {
        let mut a = self.answer.lock();
        loop {
            if let Some(a) = a.take() {
                return a;
            }
            self.ready.wait(&mut a);
        }
    }
}

struct Record {
    channel: ChannelName,
    data: Bytes,
    from: Option<Arc<str>>,
    retention: Retention,
    done: Arc<Done>,
}

struct Queue {
    records: Mutex<VecDeque<Record>>,
    /// Room freed in `records`.
    room: Condvar,
    /// Something was queued.
    queued: Notify,
}

pub(crate) struct Committer {
    queue: Arc<Queue>,
}

impl Committer {
    pub(crate) fn start(bridge: &Bridge, shared: Arc<Shared>) -> Committer {
        let queue = Arc::new(Queue {
            records: Mutex::new(VecDeque::new()),
            room: Condvar::new(),
            queued: Notify::new(),
        });
        bridge.spawn(run(queue.clone(), shared));
        Committer { queue }
    }

    pub(crate) fn append(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
    ) -> Answer {
        let done = Arc::new(Done::default());
        {
            let mut q = self.queue.records.lock();
            while q.len() >= MAX_QUEUED {
                self.queue.room.wait(&mut q);
            }
            q.push_back(Record {
                channel: channel.clone(),
                data,
                from,
                retention,
                done: done.clone(),
            });
        }
        self.queue.queued.notify_one();
        done.wait()
    }
}

/// The committing task: one transaction at a time, with everything queued.
async fn run(queue: Arc<Queue>, shared: Arc<Shared>) {
    loop {
        let batch: Vec<Record> = {
            let mut q = queue.records.lock();
            let n = q.len().min(MAX_BATCH);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            queue.queued.notified().await;
            continue;
        }
        queue.room.notify_all();
        let answers = match tokio::time::timeout(shared.timeout * 2, commit(&shared, &batch)).await
        {
            Ok(Ok(answers)) => {
                shared.succeeded();
                answers
            }
            Ok(Err(e)) => {
                shared.failed(&e);
                batch.iter().map(|_| Err(store_error(&e))).collect()
            }
            Err(_) => {
                let e = "no answer in time";
                shared.failed(&e);
                batch.iter().map(|_| Err(store_error(e))).collect()
            }
        };
        for (r, a) in batch.iter().zip(answers) {
            r.done.set(a);
        }
    }
}

/// A channel's share of a batch.
struct Channel<'a> {
    name: &'a ChannelName,
    /// Its records, in queue order.
    records: Vec<usize>,
    retention: Retention,
    /// Offset of its first record, once assigned.
    first: i64,
    epoch: Arc<str>,
    refused: bool,
}

/// Writes `batch` in one transaction; the answers are in `batch`'s order.
async fn commit(shared: &Shared, batch: &[Record]) -> Result<Vec<Answer>, String> {
    let e = |e: tokio_postgres::Error| crate::describe(&e);
    let mut by_name: HashMap<&ChannelName, usize> = HashMap::new();
    let mut channels: Vec<Channel<'_>> = Vec::new();
    for (i, r) in batch.iter().enumerate() {
        let at = *by_name.entry(&r.channel).or_insert_with(|| {
            channels.push(Channel {
                name: &r.channel,
                records: Vec::new(),
                retention: r.retention,
                first: 0,
                epoch: Arc::from(""),
                refused: false,
            });
            channels.len() - 1
        });
        channels[at].records.push(i);
        // The latest retention wins, as for a channel published to alone.
        channels[at].retention = r.retention;
    }
    // Rows are locked in name order: two writers never wait on each other
    // in a cycle.
    channels.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));

    let mut client = shared.client().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(e)?;

    let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
    let namespaces: Vec<&str> = channels.iter().map(|c| c.name.namespace()).collect();
    let epochs: Vec<String> = channels.iter().map(|_| new_epoch().to_string()).collect();
    let counts: Vec<i64> = channels.iter().map(|c| c.records.len() as i64).collect();
    let rows = tx
        .query(
            "INSERT INTO sb_channels (channel, namespace, epoch, top, touched_at)
             SELECT c, ns, e, n, now() FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[])
                 AS t(c, ns, e, n)
             ON CONFLICT (channel) DO UPDATE
                 SET top = sb_channels.top + EXCLUDED.top, touched_at = now()
             RETURNING channel, epoch, top",
            &[&names, &namespaces, &epochs, &counts],
        )
        .await
        .map_err(e)?;
    let mut tops: HashMap<String, (String, i64)> = rows
        .into_iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();

    // A channel that had nothing before this batch starts keeping history:
    // refused when its namespace keeps as many as it may.
    let mut added: HashMap<&str, usize> = HashMap::new();
    {
        let counts = shared.counts.lock();
        for c in channels.iter_mut() {
            let (epoch, top) = tops
                .remove(c.name.as_str())
                .ok_or_else(|| format!("no row returned for {}", c.name))?;
            let n = c.records.len() as i64;
            c.first = top - n + 1;
            c.epoch = Arc::from(epoch);
            if c.first == 1 {
                let ns = c.name.namespace();
                let have =
                    counts.get(ns).copied().unwrap_or(0) + added.get(ns).copied().unwrap_or(0);
                let max = c.retention.max_channels;
                if max != 0 && have >= max {
                    c.refused = true;
                } else {
                    *added.entry(ns).or_insert(0) += 1;
                }
            }
        }
    }
    let refused: Vec<&Channel<'_>> = channels.iter().filter(|c| c.refused).collect();
    if !refused.is_empty() {
        let names: Vec<&str> = refused.iter().map(|c| c.name.as_str()).collect();
        let counts: Vec<i64> = refused.iter().map(|c| c.records.len() as i64).collect();
        tx.execute(
            "UPDATE sb_channels s SET top = s.top - t.n
             FROM unnest($1::text[], $2::int8[]) AS t(c, n) WHERE s.channel = t.c",
            &[&names, &counts],
        )
        .await
        .map_err(e)?;
    }

    let mut p_channel: Vec<&str> = Vec::with_capacity(batch.len());
    let mut p_off: Vec<i64> = Vec::with_capacity(batch.len());
    let mut p_ttl: Vec<i64> = Vec::with_capacity(batch.len());
    let mut p_from: Vec<Option<&str>> = Vec::with_capacity(batch.len());
    let mut p_data: Vec<&[u8]> = Vec::with_capacity(batch.len());
    let mut trim_channel: Vec<&str> = Vec::new();
    let mut trim_below: Vec<i64> = Vec::new();
    for c in channels.iter().filter(|c| !c.refused) {
        for (k, &i) in c.records.iter().enumerate() {
            let r = &batch[i];
            p_channel.push(c.name.as_str());
            p_off.push(c.first + k as i64);
            p_ttl.push(
                i64::try_from(r.retention.ttl.as_millis())
                    .unwrap_or(MAX_TTL_MS)
                    .min(MAX_TTL_MS),
            );
            p_from.push(r.from.as_deref());
            p_data.push(&r.data[..]);
        }
        let top = c.first + c.records.len() as i64 - 1;
        let size = i64::try_from(c.retention.size).unwrap_or(i64::MAX);
        if top > size {
            trim_channel.push(c.name.as_str());
            trim_below.push(top - size + 1);
        }
    }
    if !p_channel.is_empty() {
        tx.execute(
            "INSERT INTO sb_publications (channel, off, at, expires_at, sender, data)
             SELECT c, o, now(), now() + ttl * interval '1 millisecond', s, d
             FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::bytea[])
                 AS t(c, o, ttl, s, d)",
            &[&p_channel, &p_off, &p_ttl, &p_from, &p_data],
        )
        .await
        .map_err(e)?;
    }
    if !trim_channel.is_empty() {
        // Through the primary key: each channel's rows below its bound.
        tx.execute(
            "DELETE FROM sb_publications p USING unnest($1::text[], $2::int8[]) AS t(c, below)
             WHERE p.channel = t.c AND p.off < t.below",
            &[&trim_channel, &trim_below],
        )
        .await
        .map_err(e)?;
    }
    tx.commit().await.map_err(e)?;

    {
        let mut counts = shared.counts.lock();
        for (ns, n) in added {
            *counts.entry(ns.to_string()).or_insert(0) += n;
        }
    }
    let mut answers: Vec<Option<Answer>> = batch.iter().map(|_| None).collect();
    for c in &channels {
        for (k, &i) in c.records.iter().enumerate() {
            let r = &batch[i];
            answers[i] = Some(if c.refused {
                Err(HistoryError::ChannelLimit(c.name.namespace().to_string()))
            } else {
                Ok(Arc::new(Publication::new(
                    r.channel.clone(),
                    (c.first + k as i64) as u64,
                    c.epoch.clone(),
                    r.data.clone(),
                    r.from.clone(),
                )))
            });
        }
    }
    Ok(answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(store_error("not answered"))))
        .collect())
}
