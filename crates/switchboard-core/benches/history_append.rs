//! Append throughput of each history store: one channel, a 100-byte
//! payload, 100 publications kept (so every append also trims one).
//!
//! `cargo bench -p switchboard-core --bench history_append`

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard_core::protocol::ChannelName;
use switchboard_core::{FileHistory, HistoryStore, MemoryHistory, Retention, SyncMode};

const RETENTION: Retention = Retention {
    size: 100,
    ttl: Duration::from_secs(600),
    max_channels: 0,
};

fn bench_store(c: &mut Criterion, name: &str, store: &dyn HistoryStore) {
    let channel = ChannelName::parse("bench:a").expect("valid");
    let data = Bytes::from(format!("{{\"text\":\"{}\"}}", "x".repeat(88)));
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

fn history_append(c: &mut Criterion) {
    bench_store(c, "memory", &MemoryHistory::new());
    let dir = tempfile::tempdir().expect("temp dir");
    let always = FileHistory::open(dir.path().join("always.db"), SyncMode::Always).expect("open");
    bench_store(c, "file_sync_always", &always);
    let batch = FileHistory::open(dir.path().join("batch.db"), SyncMode::batch()).expect("open");
    bench_store(c, "file_sync_batch", &batch);
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
