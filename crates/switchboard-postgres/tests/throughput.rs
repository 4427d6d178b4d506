//! Acknowledged appends per second, postgres store vs file store, 32
//! concurrent publishers over 64 channels for 3 s each. A measurement, not
//! a check: `cargo test --release -p switchboard-postgres --test throughput
//! -- --ignored --nocapture`; the figures go into BENCHMARKS.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_core::{FileHistory, HistoryStore, Retention, SyncMode};
use switchboard_postgres::testing::PgServer;
use switchboard_postgres::{PgHistory, PgOptions};
use switchboard_protocol::ChannelName;

const RETENTION: Retention = Retention {
    size: 100,
    ttl: Duration::from_secs(600),
    max_channels: 0,
};

fn measure(name: &str, store: Arc<dyn HistoryStore>) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let ch = ChannelName::parse(&format!("bench:c{}", t % 64)).expect("channel");
                let data = Bytes::from(vec![b'x'; 100]);
                while !stop.load(Ordering::Relaxed) {
                    store
                        .append(&ch, data.clone(), None, RETENTION)
                        .expect("append");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("publisher");
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "{name}: {n} acknowledged appends in {:.1} s = {:.0}/s",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "a measurement"]
fn acknowledged_append_throughput() {
    let pg = PgServer::start();
    let store = PgHistory::open(PgOptions::new(pg.url())).expect("open");
    store.wait_ready(Duration::from_secs(20)).expect("ready");
    measure("postgres", Arc::new(store));
    let dir = tempfile::tempdir().expect("dir");
    let file = FileHistory::open(dir.path().join("h.db"), SyncMode::Always).expect("open");
    measure("file (sync = always)", Arc::new(file));
}
