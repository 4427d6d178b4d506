//! What the Redis tests share: a recorder of broker events, and the
//! `HistoryStore` conformance cases of core's testkit, ported to the async
//! `RedisBroker::history`/`publish`.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_core::{BrokerEvents, ControlMessage};
use switchboard_core::{HistoryQuery, HistoryRead, Retention};
use switchboard_protocol::{ChannelName, Publication, StreamPosition};
use switchboard_redis::RedisBroker;
use tokio::sync::Notify;

/// Records what a broker hands its node.
#[derive(Default)]
pub struct Recorder {
    pub publications: Mutex<Vec<Arc<Publication>>>,
    pub pushes: Mutex<Vec<(ChannelName, Bytes)>>,
    pub controls: Mutex<Vec<ControlMessage>>,
    pub resyncs: AtomicUsize,
    changed: Notify,
}

impl BrokerEvents for Recorder {
    fn on_publication(&self, publication: Arc<Publication>) {
        self.publications.lock().push(publication);
        self.changed.notify_waiters();
    }
    fn on_push(&self, channel: &ChannelName, frame: Bytes) {
        self.pushes.lock().push((channel.clone(), frame));
        self.changed.notify_waiters();
    }
    fn on_control(&self, message: ControlMessage) {
        self.controls.lock().push(message);
        self.changed.notify_waiters();
    }
    fn on_resync(&self) {
        self.resyncs.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

impl Recorder {
    pub fn bound(broker: &RedisBroker) -> Arc<Recorder> {
        let r = Arc::new(Recorder::default());
        broker.bind(r.clone());
        r
    }

    /// Waits (at most `within`) until `done` holds; whether it did.
    pub async fn wait(&self, within: Duration, mut done: impl FnMut(&Recorder) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(self);
            }
        }
    }

    /// Offsets received on `channel`, in arrival order.
    pub fn offsets(&self, channel: &ChannelName) -> Vec<u64> {
        self.publications
            .lock()
            .iter()
            .filter(|p| &p.channel == channel)
            .map(|p| p.offset)
            .collect()
    }

    pub fn resyncs(&self) -> usize {
        self.resyncs.load(Ordering::SeqCst)
    }
}

pub fn channel(name: &str) -> ChannelName {
    ChannelName::parse(&format!("{name}-{}", fastrand::u32(..))).expect("valid channel name")
}

pub const KEEP: Retention = Retention {
    size: 3,
    ttl: Duration::from_secs(600),
    max_channels: 0,
};

pub async fn publish(
    b: &RedisBroker,
    ch: &ChannelName,
    n: usize,
    retention: Retention,
) -> Vec<StreamPosition> {
    let mut out = Vec::new();
    for _ in 0..n {
        let data = Bytes::from(format!("{{\"n\":{}}}", fastrand::u32(..)));
        out.push(
            b.publish(ch, data, Some("alice".into()), retention)
                .await
                .expect("publish"),
        );
    }
    out
}

pub async fn read(
    b: &RedisBroker,
    ch: &ChannelName,
    since: Option<(u64, &str)>,
    limit: Option<usize>,
) -> HistoryRead {
    let query = HistoryQuery {
        since: since.map(|(offset, epoch)| StreamPosition {
            offset,
            epoch: epoch.to_string(),
        }),
        limit,
    };
    b.history(ch, &query, KEEP).await.expect("history")
}

pub fn offsets(read: &HistoryRead) -> Vec<u64> {
    read.publications.iter().map(|p| p.offset).collect()
}

/// Every case of core's `testkit::history_conformance`, against Redis.
pub async fn history_conformance(b: &RedisBroker) {
    // offsets_start_at_one_without_gaps
    let ch = channel("offsets");
    let p = publish(b, &ch, 5, KEEP).await;
    assert_eq!(
        p.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(read(b, &ch, None, Some(0)).await.offset, 5);

    // epoch_is_stable
    let ch = channel("epoch");
    let p = publish(b, &ch, 4, KEEP).await;
    assert!(p.iter().all(|q| q.epoch == p[0].epoch));
    let r = read(b, &ch, None, None).await;
    assert_eq!(*r.epoch, p[0].epoch);
    assert!(r.publications.iter().all(|q| *q.epoch == p[0].epoch));

    // position_before_the_first_publication_is_recoverable
    let ch = channel("before-first");
    let start = read(b, &ch, None, Some(0)).await;
    assert_eq!(start.offset, 0);
    assert!(start.publications.is_empty());
    let p = publish(b, &ch, 2, KEEP).await;
    assert_eq!(
        p[0].epoch, *start.epoch,
        "publishing keeps the epoch readers saw"
    );
    let r = read(b, &ch, Some((0, &start.epoch)), None).await;
    assert!(r.recovered);
    assert_eq!(offsets(&r), vec![1, 2]);

    // recovery_within_retention_is_whole
    let ch = channel("recovery");
    let p = publish(b, &ch, 5, KEEP).await;
    let e = &*p[0].epoch;
    let r = read(b, &ch, Some((3, e)), None).await;
    assert!(r.recovered);
    assert_eq!(offsets(&r), vec![4, 5]);
    assert_eq!(r.offset, 5);
    let r = read(b, &ch, Some((5, e)), None).await;
    assert!(
        r.recovered && r.publications.is_empty(),
        "nothing missed is whole"
    );
    let r = read(b, &ch, Some((2, e)), None).await;
    assert!(
        r.recovered,
        "the oldest kept one is the one right after since"
    );
    assert_eq!(offsets(&r), vec![3, 4, 5]);

    // recovery_beyond_retention_or_epoch_is_refused
    let ch = channel("refused");
    let p = publish(b, &ch, 5, KEEP).await;
    let e = &*p[0].epoch;
    let r = read(b, &ch, Some((1, e)), None).await;
    assert!(!r.recovered, "offset 2 was trimmed");
    assert!(!read(b, &ch, Some((0, e)), None).await.recovered);
    let other = format!("{e}x");
    let r = read(b, &ch, Some((4, &other)), None).await;
    assert!(!r.recovered, "unknown epoch");
    assert!(
        r.publications.is_empty(),
        "no publications without recovery"
    );
    assert_eq!(*r.epoch, p[0].epoch, "the answer names the current epoch");
    assert!(
        !read(b, &ch, Some((9, e)), None).await.recovered,
        "offset from the future"
    );

    // history_limit_and_since
    let ch = channel("limit");
    let p = publish(b, &ch, 5, KEEP).await;
    let e = &*p[0].epoch;
    assert_eq!(offsets(&read(b, &ch, None, None).await), vec![3, 4, 5]);
    assert_eq!(offsets(&read(b, &ch, None, Some(2)).await), vec![4, 5]);
    assert_eq!(
        offsets(&read(b, &ch, None, Some(0)).await),
        Vec::<u64>::new()
    );
    assert_eq!(offsets(&read(b, &ch, None, Some(99)).await), vec![3, 4, 5]);
    let r = read(b, &ch, Some((2, e)), Some(2)).await;
    assert_eq!(offsets(&r), vec![3, 4]);
    assert!(!r.recovered, "a list cut by limit is not whole");
    let r = read(b, &ch, Some((3, e)), Some(2)).await;
    assert_eq!(offsets(&r), vec![4, 5]);
    assert!(r.recovered);

    // trims_by_size
    let ch = channel("size");
    let small = Retention { size: 2, ..KEEP };
    publish(b, &ch, 6, small).await;
    let all = HistoryQuery::default();
    let r = b.history(&ch, &all, small).await.expect("read");
    assert_eq!(offsets(&r), vec![5, 6]);
    let one = Retention { size: 1, ..KEEP };
    let r = b.history(&ch, &all, one).await.expect("read");
    assert_eq!(
        offsets(&r),
        vec![6],
        "reading with a smaller retention trims too"
    );
    let r = b.history(&ch, &all, KEEP).await.expect("read");
    assert!(matches!(offsets(&r)[..], [5, 6] | [6]));
    assert_eq!(r.offset, 6);

    // retention_keeping_nothing_still_counts_offsets
    let ch = channel("nothing");
    let p = publish(b, &ch, 3, Retention::default()).await;
    assert_eq!(
        p.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let r = b
        .history(&ch, &all, Retention::default())
        .await
        .expect("read");
    assert!(r.publications.is_empty());
    assert_eq!(r.offset, 3);
    assert_eq!(*r.epoch, p[0].epoch);
    let r = b
        .history(
            &ch,
            &HistoryQuery::since(2, &p[0].epoch),
            Retention::default(),
        )
        .await
        .expect("read");
    assert!(!r.recovered);

    // channels_are_independent
    let a = channel("independent");
    let c = channel("independent");
    publish(b, &a, 3, KEEP).await;
    let pc = publish(b, &c, 1, KEEP).await;
    assert_eq!(pc[0].offset, 1);
    assert_eq!(read(b, &a, None, Some(0)).await.offset, 3);
    assert_eq!(offsets(&read(b, &c, None, None).await), vec![1]);

    // stored_publications_are_what_was_published
    let ch = channel("content");
    let datas = [&b"{\"x\":1}"[..], b"\"a b \\\" c\"", b"[1,\"x\"]"];
    let froms = [Some("bob"), Some("a user with spaces \u{e9}"), None];
    let mut want = Vec::new();
    for (data, from) in datas.iter().zip(froms) {
        let at = b
            .publish(&ch, Bytes::copy_from_slice(data), from.map(Arc::from), KEEP)
            .await
            .expect("publish");
        want.push(Publication::new(
            ch.clone(),
            at.offset,
            at.epoch.as_str().into(),
            Bytes::copy_from_slice(data),
            from.map(Arc::from),
        ));
    }
    let r = read(b, &ch, None, None).await;
    assert_eq!(r.publications.len(), 3);
    for (got, want) in r.publications.iter().zip(&want) {
        assert_eq!(got.channel, want.channel);
        assert_eq!(got.offset, want.offset);
        assert_eq!(got.epoch, want.epoch);
        assert_eq!(got.data, want.data);
        assert_eq!(got.from, want.from);
        assert_eq!(got.frame(), want.frame());
    }
}
