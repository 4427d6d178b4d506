//! Core's conformance suites against `RedisBroker` and `RedisPresence` on a
//! 3-master Redis Cluster (sharded pub/sub, one connection per shard).

use std::sync::Arc;

use switchboard_core::testkit::{broker_conformance, presence_conformance};
use switchboard_core::{Broker, PresenceStore};
use switchboard_redis::testing::RedisCluster;
use switchboard_redis::{RedisBroker, RedisPresence};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_broker_and_presence_conform_on_a_cluster() {
    let cluster = RedisCluster::start();
    broker_conformance(|| async {
        Arc::new(
            RedisBroker::connect(cluster.options("n1"))
                .await
                .expect("connect"),
        ) as Arc<dyn Broker>
    })
    .await;
    presence_conformance(|| async {
        Arc::new(
            RedisPresence::connect(&cluster.options("n1"))
                .await
                .expect("connect"),
        ) as Arc<dyn PresenceStore>
    })
    .await;
}
