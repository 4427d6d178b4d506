//! A Redis Cluster whose masters change under a running broker: a graceful
//! `CLUSTER FAILOVER` (the old master drops its sharded subscriptions
//! without closing the connection) and a SIGKILLed master replaced by its
//! replica. Subscriptions come back by themselves, with `on_resync`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{KEEP, Recorder, channel};
use switchboard_core::BrokerError;
use switchboard_protocol::{ChannelName, StreamPosition};
use switchboard_redis::RedisBroker;
use switchboard_redis::testing::RedisCluster;

const SOON: Duration = Duration::from_secs(10);

async fn publish_retrying(b: &RedisBroker, ch: &ChannelName) -> StreamPosition {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        match b.publish(ch, Bytes::from_static(b"1"), None, KEEP).await {
            Ok(p) => return p,
            Err(BrokerError::Unavailable(e)) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still unavailable: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

async fn healthy(b: &RedisBroker) {
    let deadline = tokio::time::Instant::now() + SOON;
    while !b.health().ok {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn subscriptions_survive_a_failover_and_a_killed_master() {
    let mut cluster = RedisCluster::start_with_replicas(1);
    eprintln!(
        "cluster of 3 masters + 3 replicas created in {:?}",
        cluster.created_in
    );
    let a = RedisBroker::connect(cluster.options("a")).await.expect("a");
    let b = RedisBroker::connect(cluster.options("b")).await.expect("b");
    let rb: Arc<Recorder> = Recorder::bound(&b);
    let channels: Vec<_> = (0..30).map(|_| channel("failover")).collect();
    for c in &channels {
        b.subscribe(c).await.expect("subscribe");
        publish_retrying(&a, c).await;
    }
    assert!(
        rb.wait(SOON, |r| channels.iter().all(|c| r.offsets(c) == [1]))
            .await
    );

    let started = std::time::Instant::now();
    cluster.failover();
    assert!(
        rb.wait(SOON, |r| r.resyncs() >= 1).await,
        "on_resync after the failover"
    );
    healthy(&b).await;
    eprintln!("graceful failover: resubscribed in {:?}", started.elapsed());
    for c in &channels {
        assert_eq!(
            publish_retrying(&a, c).await.offset,
            2,
            "nothing lost in a graceful failover"
        );
    }
    assert!(
        rb.wait(SOON, |r| channels.iter().all(|c| r.offsets(c) == [1, 2]))
            .await,
        "every channel delivered again"
    );

    let started = std::time::Instant::now();
    let resyncs = rb.resyncs();
    cluster.kill_a_master();
    assert!(
        rb.wait(SOON, |r| r.resyncs() > resyncs).await,
        "on_resync after the crash"
    );
    healthy(&b).await;
    eprintln!("killed master: resubscribed in {:?}", started.elapsed());
    let mut want = Vec::new();
    for c in &channels {
        want.push(publish_retrying(&a, c).await.offset);
    }
    assert!(
        rb.wait(SOON, |r| channels
            .iter()
            .zip(&want)
            .all(|(c, w)| r.offsets(c).last() == Some(w)))
            .await,
        "every channel delivered after the crash"
    );
}
