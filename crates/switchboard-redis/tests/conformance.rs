//! Core's conformance suites (the same every broker, presence and cursor store
//! runs, concurrency included) against `RedisBroker`, `RedisPresence` and `RedisCursors` on a
//! real redis-server (the Cluster run is in `conformance_cluster.rs`: its own
//! binary, so it does not compete with these for the CPU).

use std::sync::Arc;

use switchboard_core::testkit::{broker_conformance, cursor_conformance, presence_conformance};
use switchboard_core::{Broker, CursorStore, PresenceStore};
use switchboard_redis::testing::RedisServer;
use switchboard_redis::{RedisBroker, RedisCursors, RedisPresence};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_broker_conforms() {
    let server = RedisServer::start();
    broker_conformance(|| async {
        Arc::new(
            RedisBroker::connect(server.options("n1"))
                .await
                .expect("connect"),
        ) as Arc<dyn Broker>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_presence_conforms() {
    let server = RedisServer::start();
    presence_conformance(|| async {
        Arc::new(
            RedisPresence::connect(&server.options("n1"))
                .await
                .expect("connect"),
        ) as Arc<dyn PresenceStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cursors_conform() {
    let server = RedisServer::start();
    cursor_conformance(|| async {
        Arc::new(
            RedisCursors::connect(&server.options("n1"))
                .await
                .expect("connect"),
        ) as Arc<dyn CursorStore>
    })
    .await;
}

/// Presence entries and their join/leave pushes go together even when the
/// store's connections are cut every few milliseconds mid-step.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_presence_joins_and_leaves_with_their_pushes_across_dropped_connections() {
    let server = Arc::new(RedisServer::start());
    let store = RedisPresence::connect(&server.options("n1"))
        .await
        .expect("connect");
    let broker = RedisBroker::connect(server.options("n1"))
        .await
        .expect("connect");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (server, stop) = (server.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut kills = 0;
            // About a second and a half of cuts: the joins and leaves run
            // inside it; the check's reads after them need the store back.
            while kills < 100 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Command connections only: the broker's pub/sub connection
                // is the test's witness of every push.
                server.cli(&["client", "kill", "type", "normal"]);
                kills += 1;
                std::thread::sleep(std::time::Duration::from_millis(15));
            }
            kills
        })
    };
    switchboard_core::testkit::presence::join_and_leave_carry_their_pushes(
        Arc::new(store),
        Arc::new(broker),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(killer.join().expect("killer") > 0);
}
