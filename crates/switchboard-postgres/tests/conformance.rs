//! Core's conformance suites against `PgHistory` on a PostgreSQL of the
//! test's own: the history suite, the memory broker's suite over it
//! (concurrent publishers and subscribers included), and what only a
//! database store has to show (offsets under concurrency, retention in the
//! database without readers, the store coming back with its server).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_core::testkit::{
    KEEP, broker_conformance, cursor_conformance, history_conformance,
};
use switchboard_core::{
    Broker, CursorStore, HistoryQuery, HistoryStore, MemoryBroker, Retention, Sweep,
};
use switchboard_postgres::testing::PgServer;
use switchboard_postgres::{PgHistory, PgOptions};
use switchboard_protocol::ChannelName;

fn open(url: &str) -> PgHistory {
    let store = PgHistory::open(PgOptions::new(url)).expect("open");
    store.wait_ready(Duration::from_secs(20)).expect("ready");
    store
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("valid channel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_history_conforms() {
    let pg = PgServer::start();
    let url = pg.database("conformance").await;
    let store = tokio::task::spawn_blocking(move || {
        let store = open(&url);
        history_conformance(&store);
        store
    })
    .await
    .expect("suite");
    drop(store);
}

/// Inbox cursors in the same database: forward only, per device, capped,
/// expiring, and concurrent acks of one cursor never moving it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cursors_conform() {
    let pg = PgServer::start();
    let url = pg.database("cursors").await;
    let store = Arc::new(
        tokio::task::spawn_blocking(move || open(&url))
            .await
            .expect("open"),
    );
    cursor_conformance(|| {
        let store = store.clone();
        async move { Arc::new(store.cursors()) as Arc<dyn CursorStore> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_broker_conforms_over_postgres_history() {
    let pg = PgServer::start();
    let n = std::sync::atomic::AtomicU32::new(0);
    let pg = &pg;
    broker_conformance(|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async move {
            let url = pg.database(&format!("broker{i}")).await;
            let store = tokio::task::spawn_blocking(move || open(&url))
                .await
                .expect("open");
            Arc::new(MemoryBroker::new(Arc::new(store))) as Arc<dyn Broker>
        }
    })
    .await;
}

/// Many threads appending to one channel at once: offsets 1..=N without a
/// gap or a duplicate, every one stored with its own data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_one_channel_get_contiguous_offsets() {
    let pg = PgServer::start();
    let url = pg.database("concurrent").await;
    const THREADS: usize = 8;
    const EACH: usize = 150;
    let keep = Retention {
        size: THREADS * EACH,
        ..KEEP
    };
    let (offsets, epochs) = tokio::task::spawn_blocking(move || {
        let store = Arc::new(open(&url));
        let c = ch("conformance:one");
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = store.clone();
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            let data = Bytes::from(format!("{{\"t\":{t},\"i\":{i}}}"));
                            let p = store.append(&c, data.clone(), None, keep).expect("append");
                            (p.offset, p.epoch.to_string(), data)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().expect("publisher"))
            .collect();
        all.sort_by_key(|(o, _, _)| *o);
        let read = store
            .read(&c, &HistoryQuery::default(), keep)
            .expect("read");
        assert_eq!(read.publications.len(), THREADS * EACH, "every one stored");
        for (p, (o, _, data)) in read.publications.iter().zip(&all) {
            assert_eq!(p.offset, *o);
            assert_eq!(
                &p.data, data,
                "offset {o} holds what was acknowledged for it"
            );
        }
        let offsets: Vec<u64> = all.iter().map(|(o, _, _)| *o).collect();
        let epochs: std::collections::HashSet<String> =
            all.into_iter().map(|(_, e, _)| e).collect();
        (offsets, epochs)
    })
    .await
    .expect("publishers");
    assert_eq!(offsets, (1..=(THREADS * EACH) as u64).collect::<Vec<_>>());
    assert_eq!(epochs.len(), 1);
}

/// Publications past their TTL leave the database through the sweep alone:
/// nothing reads the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_publications_leave_the_database_without_a_reader() {
    let pg = PgServer::start();
    let url = pg.database("ttl").await;
    let short = Retention {
        size: 100,
        ttl: Duration::from_secs(1),
        max_channels: 0,
    };
    let store = Arc::new(open(&url));
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..20 {
            s.append(
                &ch("conformance:ttl"),
                Bytes::from(i.to_string()),
                None,
                short,
            )
            .expect("append");
        }
        s.append(
            &ch("conformance:long"),
            Bytes::from_static(b"1"),
            None,
            KEEP,
        )
        .expect("append");
    })
    .await
    .expect("append");
    let db = pg.client_to(&url).await;
    let count = |channel: &'static str| {
        let db = &db;
        async move {
            db.query_one(
                "SELECT count(*) FROM sb_publications WHERE channel = $1",
                &[&channel],
            )
            .await
            .expect("count")
            .get::<_, i64>(0)
        }
    };
    assert_eq!(count("conformance:ttl").await, 20);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = store.clone();
        tokio::task::spawn_blocking(move || {
            let retention = |_: &ChannelName| short;
            s.sweep(&Sweep {
                retention: &retention,
                idle: Duration::from_secs(300),
                budget: 16_384,
            })
        })
        .await
        .expect("sweep");
        if count("conformance:ttl").await == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "expired rows still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count("conformance:long").await, 1, "unexpired rows stay");
}

/// The namespace's cap on channels with history holds in the database too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_keeps_at_most_max_channels() {
    let pg = PgServer::start();
    let url = pg.database("cap").await;
    tokio::task::spawn_blocking(move || {
        let store = open(&url);
        let capped = Retention {
            max_channels: 2,
            ..KEEP
        };
        let data = || Bytes::from_static(b"1");
        store
            .append(&ch("capped:a"), data(), None, capped)
            .expect("a");
        store
            .append(&ch("capped:b"), data(), None, capped)
            .expect("b");
        store
            .append(&ch("capped:a"), data(), None, capped)
            .expect("a again");
        let err = store
            .append(&ch("capped:c"), data(), None, capped)
            .expect_err("a third channel is refused");
        assert!(
            matches!(err, switchboard_core::HistoryError::ChannelLimit(_)),
            "{err}"
        );
        // Refused without a trace: its first publication later is offset 1.
        let r = store
            .read(&ch("capped:c"), &HistoryQuery::default(), capped)
            .expect("read");
        assert_eq!(r.offset, 0);
        // Reopened, the store counts what the database holds.
        drop(store);
        let store = open(&url);
        assert!(store.append(&ch("capped:d"), data(), None, capped).is_err());
        assert_eq!(
            store
                .append(&ch("capped:b"), data(), None, capped)
                .expect("b again")
                .offset,
            2
        );
    })
    .await
    .expect("checks");
}

/// PostgreSQL stopped hard and started again: the store answers errors
/// (never a false success) and is unhealthy meanwhile, then serves again by
/// itself with the same offsets and epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_comes_back_with_its_server() {
    let pg = Arc::new(PgServer::start());
    let url = pg.url();
    let store = Arc::new(
        tokio::task::spawn_blocking(move || open(&url))
            .await
            .expect("open"),
    );
    let s = store.clone();
    let first = tokio::task::spawn_blocking(move || {
        s.append(
            &ch("conformance:back"),
            Bytes::from_static(b"1"),
            None,
            KEEP,
        )
        .expect("append")
    })
    .await
    .expect("append");
    assert!(store.healthy());
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop_immediate())
        .await
        .expect("stop");
    let s = store.clone();
    let failed = tokio::task::spawn_blocking(move || {
        s.append(
            &ch("conformance:back"),
            Bytes::from_static(b"2"),
            None,
            KEEP,
        )
    })
    .await
    .expect("append");
    assert!(failed.is_err(), "no acknowledgement without the database");
    assert!(!store.healthy());
    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.start_again())
        .await
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !store.healthy() {
        assert!(Instant::now() < deadline, "store healthy again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = store.clone();
    let next = tokio::task::spawn_blocking(move || {
        s.append(
            &ch("conformance:back"),
            Bytes::from_static(b"3"),
            None,
            KEEP,
        )
        .expect("append after the restart")
    })
    .await
    .expect("append");
    assert_eq!(next.epoch, first.epoch);
    assert_eq!(next.offset, 2, "the failed append took no offset");
}
