//! The scenarios against an in-process broadcast server speaking the peers'
//! protocol, including faulty ones: the accounting must see every lost and
//! duplicated delivery.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_websockets::{Message, ServerBuilder};

use super::Ctx;
use super::echo::{self, EchoArgs};
use super::fanout::{self, FanoutArgs};
use super::idle::{self, IdleArgs};
use crate::conn::{Protocol, Target};
use crate::procfs::ServerProbe;

/// What the test server does wrong, to client `/ws/s0` only.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Sends every frame twice.
    Duplicate,
    /// Skips every `n`th frame.
    Drop(u64),
}

/// A "text frame is broadcast to all" server on a free loopback port.
async fn broadcast_server(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, _) = broadcast::channel::<String>(4096);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                // Subscribed before the upgrade is answered: no registration race.
                let mut rx = tx.subscribe();
                let Ok((request, ws)) = ServerBuilder::new().accept(stream).await else {
                    return;
                };
                let faulty = request.uri().path() == "/ws/s0";
                let (mut sink, mut stream) = ws.split();
                tokio::spawn(async move {
                    let mut count = 0u64;
                    while let Ok(text) = rx.recv().await {
                        count += 1;
                        let copies = match (faulty, fault) {
                            (true, Fault::Duplicate) => 2,
                            (true, Fault::Drop(n)) if count.is_multiple_of(n) => 0,
                            _ => 1,
                        };
                        for _ in 0..copies {
                            if sink.send(Message::text(text.clone())).await.is_err() {
                                return;
                            }
                        }
                    }
                });
                while let Some(Ok(msg)) = stream.next().await {
                    if let Some(text) = msg.as_text() {
                        let _ = tx.send(format!("User x: {text}"));
                    }
                }
            });
        }
    });
    addr
}

fn ctx(addr: SocketAddr) -> Ctx {
    Ctx {
        target: Target {
            addr,
            nodes: Vec::new(),
            protocol: Protocol::Peer,
            secret: None,
            api_key: None,
            source_addrs: 200,
            handshake_timeout: Duration::from_secs(5),
        },
        probes: vec![ServerProbe::new(std::process::id())],
        broker: None,
        deadline: Instant::now() + Duration::from_secs(30),
        connect_concurrency: 16,
    }
}

fn fanout_args(subscribers: usize, publications: u64, window: usize) -> FanoutArgs {
    FanoutArgs {
        subscribers,
        publications,
        window,
        rate: None,
        drain_timeout: 1.0,
        channel: "bench:all".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_accounts_for_every_delivery() {
    let addr = broadcast_server(Fault::None).await;
    let report = fanout::run(&ctx(addr), &fanout_args(20, 50, 4))
        .await
        .expect("runs");
    let j = &report.json;
    assert!(report.ok, "{j}");
    assert_eq!(j["expected"], 1000);
    assert_eq!(j["delivered"], 1000);
    assert_eq!(j["lost"], 0);
    assert_eq!(j["duplicated"], 0);
    assert_eq!(j["latency"]["count"], 1000);
    assert!(j["server_cpu_s"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_deliveries_are_counted() {
    let addr = broadcast_server(Fault::Duplicate).await;
    let report = fanout::run(&ctx(addr), &fanout_args(5, 30, 1))
        .await
        .expect("runs");
    let j = &report.json;
    assert!(!report.ok, "{j}");
    assert_eq!(j["duplicated"], 30, "{j}");
    assert_eq!(j["lost"], 0, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_deliveries_are_counted_and_the_run_still_ends() {
    // s0 misses every 7th frame (warm-ups included); with a window the publisher
    // stalls on the first loss, the drain timeout ends the run, and the window
    // lets the rest through at the end: loss is what s0 never got.
    let addr = broadcast_server(Fault::Drop(7)).await;
    let started = Instant::now();
    let report = fanout::run(&ctx(addr), &fanout_args(5, 40, 0))
        .await
        .expect("runs");
    let j = &report.json;
    assert!(!report.ok, "{j}");
    assert!(j["lost"].as_u64().is_some_and(|lost| lost >= 4), "{j}");
    assert_eq!(j["duplicated"], 0, "{j}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_every_connection() {
    let addr = broadcast_server(Fault::None).await;
    let args = IdleArgs {
        connections: 50,
        settle: 0.1,
        channel: None,
    };
    let report = idle::run(&ctx(addr), &args).await.expect("runs");
    let j = &report.json;
    assert!(report.ok, "{j}");
    assert_eq!(j["connected"], 50);
    assert_eq!(j["handshake_latency"]["count"], 50);
    assert!(j["memory_per_connection_kib"].is_number(), "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips_come_back() {
    let addr = broadcast_server(Fault::None).await;
    let args = EchoArgs {
        clients: 4,
        rounds: 25,
        channel: "bench:echo".into(),
    };
    let report = echo::run(&ctx(addr), &args).await.expect("runs");
    let j = &report.json;
    assert!(report.ok, "{j}");
    assert_eq!(j["round_trips"], 100);
}
