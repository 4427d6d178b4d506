//! Conformance suites every backend runs: each function asserts one part of a
//! role's contract against any implementation. Enable the `testkit` feature
//! to call them from another crate's tests.
//!
//! - [`HistoryStore`]: [`history_conformance`] runs it all. Each check uses
//!   channels of its own, so one store can serve the whole suite.
//! - [`Broker`](crate::Broker): [`broker_conformance`] (async, from a factory
//!   of fresh brokers; see [`broker`]).
//! - [`PresenceStore`](crate::PresenceStore): [`presence_conformance`] (see
//!   [`presence`]).
//! - [`CursorStore`](crate::CursorStore): [`cursor_conformance`] (see
//!   [`cursor`]).

mod broker_suite;
mod cursor_suite;
mod presence_suite;

/// The [`Broker`](crate::Broker) suite, driven through a [`Node`](crate::Node).
pub mod broker {
    pub use super::broker_suite::*;
}
/// The [`PresenceStore`](crate::PresenceStore) suite.
pub mod presence {
    pub use super::presence_suite::*;
}
pub use broker_suite::broker_conformance;
pub use cursor_suite::cursor_conformance;
/// The [`CursorStore`](crate::CursorStore) suite.
pub mod cursor {
    pub use super::cursor_suite::*;
}
pub use presence_suite::presence_conformance;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_protocol::{ChannelName, Publication, StreamPosition};

use crate::history::{HistoryQuery, HistoryRead, HistoryStore, Retention};

/// The retention the checks use unless they say otherwise.
pub const KEEP: Retention = Retention {
    size: 3,
    ttl: Duration::from_secs(600),
    max_channels: 0,
};

fn channel(check: &str, n: u32) -> ChannelName {
    ChannelName::parse(&format!("conformance:{check}-{n}")).expect("valid channel name")
}

fn publish(
    store: &dyn HistoryStore,
    ch: &ChannelName,
    n: usize,
    retention: Retention,
) -> Vec<Arc<Publication>> {
    (0..n)
        .map(|_| {
            let data = Bytes::from(format!("{{\"n\":{}}}", fastrand::u32(..)));
            let p = store
                .append(ch, data.clone(), Some("alice".into()), retention)
                .expect("append");
            assert_eq!(p.data, data, "append returns what was published");
            p
        })
        .collect()
}

fn read(
    store: &dyn HistoryStore,
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
    store.read(ch, &query, KEEP).expect("read")
}

fn offsets(read: &HistoryRead) -> Vec<u64> {
    read.publications.iter().map(|p| p.offset).collect()
}

/// Runs every check of the suite.
pub fn history_conformance(store: &dyn HistoryStore) {
    offsets_start_at_one_without_gaps(store);
    epoch_is_stable(store);
    position_before_the_first_publication_is_recoverable(store);
    recovery_within_retention_is_whole(store);
    recovery_beyond_retention_or_epoch_is_refused(store);
    history_limit_and_since(store);
    trims_by_size(store);
    retention_keeping_nothing_still_counts_offsets(store);
    channels_are_independent(store);
    stored_publications_are_what_was_published(store);
}

/// A channel's first publication has offset 1, each next one adds one.
pub fn offsets_start_at_one_without_gaps(store: &dyn HistoryStore) {
    let ch = channel("offsets", 0);
    let p = publish(store, &ch, 5, KEEP);
    assert_eq!(
        p.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(read(store, &ch, None, Some(0)).offset, 5);
}

/// The epoch does not change while history is kept.
pub fn epoch_is_stable(store: &dyn HistoryStore) {
    let ch = channel("epoch", 0);
    let p = publish(store, &ch, 4, KEEP);
    assert!(p.iter().all(|q| q.epoch == p[0].epoch));
    let r = read(store, &ch, None, None);
    assert_eq!(r.epoch, p[0].epoch);
    assert!(r.publications.iter().all(|q| q.epoch == p[0].epoch));
}

/// A subscriber that joined before anything was published (offset 0) gets
/// every publication since.
pub fn position_before_the_first_publication_is_recoverable(store: &dyn HistoryStore) {
    let ch = channel("before-first", 0);
    let start = read(store, &ch, None, Some(0));
    assert_eq!(start.offset, 0);
    assert!(start.publications.is_empty());
    let p = publish(store, &ch, 2, KEEP);
    assert_eq!(
        p[0].epoch, start.epoch,
        "publishing keeps the epoch readers saw"
    );
    let r = read(store, &ch, Some((0, &start.epoch)), None);
    assert!(r.recovered);
    assert_eq!(offsets(&r), vec![1, 2]);
}

/// With `since` inside retention: every publication after it, in order.
pub fn recovery_within_retention_is_whole(store: &dyn HistoryStore) {
    let ch = channel("recovery", 0);
    let p = publish(store, &ch, 5, KEEP);
    let e = &*p[0].epoch;
    let r = read(store, &ch, Some((3, e)), None);
    assert!(r.recovered);
    assert_eq!(offsets(&r), vec![4, 5]);
    assert_eq!(r.offset, 5);
    let r = read(store, &ch, Some((5, e)), None);
    assert!(
        r.recovered && r.publications.is_empty(),
        "nothing missed is whole"
    );
    let r = read(store, &ch, Some((2, e)), None);
    assert!(
        r.recovered,
        "the oldest kept one is the one right after since"
    );
    assert_eq!(offsets(&r), vec![3, 4, 5]);
}

/// Past retention, with another epoch, or from the future: `recovered: false`.
pub fn recovery_beyond_retention_or_epoch_is_refused(store: &dyn HistoryStore) {
    let ch = channel("refused", 0);
    let p = publish(store, &ch, 5, KEEP);
    let e = &*p[0].epoch;
    assert!(
        !read(store, &ch, Some((1, e)), None).recovered,
        "offset 2 was trimmed"
    );
    assert!(!read(store, &ch, Some((0, e)), None).recovered);
    let other = format!("{e}x");
    let r = read(store, &ch, Some((4, &other)), None);
    assert!(!r.recovered, "unknown epoch");
    assert_eq!(r.epoch, p[0].epoch, "the answer names the current epoch");
    assert!(
        !read(store, &ch, Some((9, e)), None).recovered,
        "offset from the future"
    );
}

/// PROTOCOL §2 `history`: with `since`, the first `limit` after it; without,
/// the latest `limit`; always oldest first.
pub fn history_limit_and_since(store: &dyn HistoryStore) {
    let ch = channel("limit", 0);
    let p = publish(store, &ch, 5, KEEP);
    let e = &*p[0].epoch;
    assert_eq!(offsets(&read(store, &ch, None, None)), vec![3, 4, 5]);
    assert_eq!(offsets(&read(store, &ch, None, Some(2))), vec![4, 5]);
    assert_eq!(offsets(&read(store, &ch, None, Some(0))), Vec::<u64>::new());
    assert_eq!(offsets(&read(store, &ch, None, Some(99))), vec![3, 4, 5]);
    let r = read(store, &ch, Some((2, e)), Some(2));
    assert_eq!(offsets(&r), vec![3, 4]);
    assert!(!r.recovered, "a list cut by limit is not whole");
    let r = read(store, &ch, Some((3, e)), Some(2));
    assert_eq!(offsets(&r), vec![4, 5]);
    assert!(r.recovered);
}

/// Only the latest `size` publications are kept.
pub fn trims_by_size(store: &dyn HistoryStore) {
    let ch = channel("size", 0);
    let small = Retention { size: 2, ..KEEP };
    publish(store, &ch, 6, small);
    let r = store
        .read(&ch, &HistoryQuery::default(), small)
        .expect("read");
    assert_eq!(offsets(&r), vec![5, 6]);
    // Reading with a smaller retention than was stored with trims too.
    let one = Retention { size: 1, ..KEEP };
    let r = store
        .read(&ch, &HistoryQuery::default(), one)
        .expect("read");
    assert_eq!(offsets(&r), vec![6]);
    // Growing it back does not bring back what was trimmed on append.
    let r = store
        .read(&ch, &HistoryQuery::default(), KEEP)
        .expect("read");
    assert!(matches!(offsets(&r)[..], [5, 6] | [6]));
    assert_eq!(r.offset, 6);
}

/// A channel without history still numbers its publications.
pub fn retention_keeping_nothing_still_counts_offsets(store: &dyn HistoryStore) {
    let ch = channel("nothing", 0);
    let p = publish(store, &ch, 3, Retention::default());
    assert_eq!(
        p.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let r = store
        .read(&ch, &HistoryQuery::default(), Retention::default())
        .expect("read");
    assert!(r.publications.is_empty());
    assert_eq!(r.offset, 3);
    assert_eq!(r.epoch, p[0].epoch);
    let r = store
        .read(
            &ch,
            &HistoryQuery {
                since: Some(StreamPosition {
                    offset: 2,
                    epoch: p[0].epoch.to_string(),
                }),
                limit: None,
            },
            Retention::default(),
        )
        .expect("read");
    assert!(!r.recovered);
}

/// Each channel has its own offsets.
pub fn channels_are_independent(store: &dyn HistoryStore) {
    let a = channel("independent", 0);
    let b = channel("independent", 1);
    publish(store, &a, 3, KEEP);
    let pb = publish(store, &b, 1, KEEP);
    assert_eq!(pb[0].offset, 1);
    assert_eq!(read(store, &a, None, Some(0)).offset, 3);
    assert_eq!(offsets(&read(store, &b, None, None)), vec![1]);
}

/// What a read returns is what was published: channel, data, sender, frame.
pub fn stored_publications_are_what_was_published(store: &dyn HistoryStore) {
    let ch = channel("content", 0);
    let p = publish(store, &ch, 2, KEEP);
    let anonymous = store
        .append(&ch, Bytes::from_static(b"[1,\"x\"]"), None, KEEP)
        .expect("append");
    let r = read(store, &ch, None, None);
    assert_eq!(r.publications.len(), 3);
    for (got, want) in r.publications.iter().zip(p.iter().chain([&anonymous])) {
        assert_eq!(got.channel, want.channel);
        assert_eq!(got.offset, want.offset);
        assert_eq!(got.epoch, want.epoch);
        assert_eq!(got.data, want.data);
        assert_eq!(got.from, want.from);
        assert_eq!(got.frame(), want.frame());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Broker, MemoryBroker};
    use crate::cursor::{CursorStore, MemoryCursors};
    use crate::file_history::{FileHistory, SyncMode};
    use crate::history::MemoryHistory;
    use crate::presence::{MemoryPresence, PresenceStore};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_broker_conforms_over_memory_history() {
        broker_conformance(|| async {
            Arc::new(MemoryBroker::new(Arc::new(MemoryHistory::new()))) as Arc<dyn Broker>
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_broker_conforms_over_file_history() {
        let dir = tempfile::tempdir().expect("temp dir");
        let n = std::sync::atomic::AtomicU32::new(0);
        broker_conformance(|| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.path().join(format!("h{i}.db"));
            async move {
                let history = FileHistory::open(path, SyncMode::Always).expect("open");
                Arc::new(MemoryBroker::new(Arc::new(history))) as Arc<dyn Broker>
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_cursors_conform() {
        cursor_conformance(|| async { Arc::new(MemoryCursors::default()) as Arc<dyn CursorStore> })
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn file_cursors_conform() {
        let dir = tempfile::tempdir().expect("temp dir");
        let n = std::sync::atomic::AtomicU32::new(0);
        cursor_conformance(|| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.path().join(format!("c{i}.db"));
            async move {
                Arc::new(FileHistory::open(path, SyncMode::Always).expect("open"))
                    as Arc<dyn CursorStore>
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_presence_conforms() {
        presence_conformance(|| async {
            Arc::new(MemoryPresence::default()) as Arc<dyn PresenceStore>
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_presence_joins_and_leaves_with_their_pushes() {
        crate::testkit::presence::join_and_leave_carry_their_pushes(
            Arc::new(MemoryPresence::default()),
            Arc::new(MemoryBroker::new(Arc::new(MemoryHistory::new()))),
        )
        .await;
    }

    #[test]
    fn memory_history_conforms() {
        history_conformance(&MemoryHistory::new());
    }

    #[test]
    fn file_history_conforms_with_sync_always() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileHistory::open(dir.path().join("h.db"), SyncMode::Always).expect("open");
        history_conformance(&store);
    }

    #[test]
    fn file_history_conforms_with_sync_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileHistory::open(dir.path().join("h.db"), SyncMode::batch()).expect("open");
        history_conformance(&store);
    }
}
