//! The hot path of a publication, piece by piece: encoding its frame once,
//! pushing it to every subscriber's outbox, and a transport taking its outbox.
//!
//! `cargo bench -p switchboard-core --bench fanout`

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard_core::protocol::{ChannelName, Publication};
use switchboard_core::{
    ClientInit, MemoryBroker, MemoryHistory, MemoryPresence, Node, NodeOptions, Outbox,
};

fn payload() -> Bytes {
    Bytes::from(format!("{{\"text\":\"{}\"}}", "x".repeat(88)))
}

fn encode(c: &mut Criterion) {
    let channel = ChannelName::parse("chat:lobby").expect("valid");
    let epoch: Arc<str> = Arc::from("1a2b3c4d");
    let data = payload();
    let from: Option<Arc<str>> = Some(Arc::from("alice"));
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pub_frame_100_bytes", |b| {
        let mut offset = 0;
        b.iter(|| {
            offset += 1;
            black_box(Publication::new(
                channel.clone(),
                offset,
                epoch.clone(),
                data.clone(),
                from.clone(),
            ))
        })
    });
    g.finish();
}

fn hub_broadcast(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 1000;
    let node = Node::new(
        NodeOptions {
            max_connections_per_user: 1,
            send_queue_max_bytes: 1 << 30,
            ..Default::default()
        },
        Arc::new(MemoryBroker::new(Arc::new(MemoryHistory::new()))),
        Arc::new(MemoryPresence::default()),
    );
    let channel = ChannelName::parse("chat:lobby").expect("valid");
    let clients: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let client = node
                .connect(ClientInit {
                    user: format!("u{i}"),
                    ..Default::default()
                })
                .expect("room for the client");
            node.hub.subscribe(&channel, &client);
            client
        })
        .collect();
    let frame = Bytes::from(vec![b'x'; 120]);
    let mut g = c.benchmark_group("hub");
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    g.bench_function("broadcast_to_1000", |b| {
        b.iter(|| {
            let out = node.hub.broadcast(&channel, &frame);
            black_box(out.delivered);
            // What each transport does next: take its queue.
            for client in &clients {
                black_box(client.outbox.take());
            }
        })
    });
    g.finish();
}

fn outbox(c: &mut Criterion) {
    let outbox = Outbox::new(1 << 20);
    let frame = Bytes::from(vec![b'x'; 120]);
    let mut g = c.benchmark_group("outbox");
    g.throughput(Throughput::Elements(16));
    g.bench_function("push_16_then_take", |b| {
        b.iter(|| {
            for _ in 0..16 {
                let _ = outbox.push(frame.clone());
            }
            black_box(outbox.take())
        })
    });
    g.finish();
}

criterion_group!(benches, encode, hub_broadcast, outbox);
criterion_main!(benches);
