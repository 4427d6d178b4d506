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
