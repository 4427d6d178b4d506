//! Append throughput of each history store: one channel, a 100-byte
//! payload, 100 publications kept (so every append also trims one); then
//! the file store with `sync = "always"` under 1, 8 and 64 concurrent
//! publishers (one channel and one channel each), where commits can share
//! an fsync.
//!
//! `cargo bench -p switchboard-core --bench history_append`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard_core::protocol::ChannelName;
use switchboard_core::{FileHistory, HistoryStore, MemoryHistory, Retention, SyncMode};

const RETENTION: Retention = Retention {
    size: 100,
    ttl: Duration::from_secs(600),
    max_channels: 0,
};

fn payload() -> Bytes {
    Bytes::from(format!("{{\"text\":\"{}\"}}", "x".repeat(88)))
}

fn bench_store(c: &mut Criterion, name: &str, store: &dyn HistoryStore) {
    let channel = ChannelName::parse("bench:a").expect("valid");
    let data = payload();
    let mut group = c.benchmark_group("history_append");
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter(|| {
            black_box(
                store
                    .append(&channel, data.clone(), None, RETENTION)
                    .expect("append"),
            )
        })
    });
    group.finish();
}

/// Appends per second with `threads` publishers for about `run`.
fn concurrent(store: &Arc<FileHistory>, threads: usize, channels: usize, run: Duration) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let channel =
                    ChannelName::parse(&format!("bench:c{}", t % channels)).expect("valid");
                let data = payload();
                let mut n = 0u64;
                while start.elapsed() < run {
                    store
                        .append(&channel, data.clone(), None, RETENTION)
                        .expect("append");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().expect("join")).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

fn history_append(c: &mut Criterion) {
    bench_store(c, "memory", &MemoryHistory::new());
    let dir = tempfile::tempdir().expect("temp dir");
    let always = FileHistory::open(dir.path().join("always.db"), SyncMode::Always).expect("open");
    bench_store(c, "file_sync_always", &always);
    let batch = FileHistory::open(dir.path().join("batch.db"), SyncMode::batch()).expect("open");
    bench_store(c, "file_sync_batch", &batch);
    drop((always, batch));

    // Not a criterion group: throughput under contention is the figure.
    let store = Arc::new(
        FileHistory::open(dir.path().join("concurrent.db"), SyncMode::Always).expect("open"),
    );
    for threads in [1, 8, 64] {
        for channels in [1, threads] {
            if threads == 1 && channels == 1 && channels != threads {
                continue;
            }
            let rate = concurrent(&store, threads, channels, Duration::from_secs(2));
            println!(
                "history_append/file_sync_always_concurrent: {threads} publishers, \
                 {channels} channel(s): {rate:.0} appends/s"
            );
            if threads == 1 {
                break;
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = history_append
}
criterion_main!(benches);
