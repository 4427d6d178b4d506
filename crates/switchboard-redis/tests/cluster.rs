//! `RedisBroker` and `RedisPresence` on a 3-master Redis Cluster made by the
//! test (sharded pub/sub, one slot per channel). One cluster for the whole
//! file, to keep its start-up cost paid once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{KEEP, Recorder, channel, history_conformance};
use switchboard_core::{PresenceEntry, PresenceStore};
use switchboard_redis::testing::RedisCluster;
use switchboard_redis::{ControlMessage, RedisBroker, RedisPresence};

const SOON: Duration = Duration::from_secs(5);

async fn node(cluster: &RedisCluster, name: &str) -> (RedisBroker, Arc<Recorder>) {
    let b = RedisBroker::connect(cluster.options(name))
        .await
        .expect("connect");
    let r = Recorder::bound(&b);
    (b, r)
}

#[tokio::test]
async fn the_broker_works_the_same_on_a_three_master_cluster() {
    let cluster = RedisCluster::start();
    eprintln!("cluster created in {:?}", cluster.created_in);
    let (a, ra) = node(&cluster, "a").await;
    let (b, rb) = node(&cluster, "b").await;

    history_conformance(&a).await;

    // Channels land on every shard, and each node gets each publication once, in order.
    let channels: Vec<_> = (0..30).map(|_| channel("spread")).collect();
    for c in &channels {
        a.subscribe(c).await.expect("subscribe");
        b.subscribe(c).await.expect("subscribe");
    }
    let shards: std::collections::HashSet<String> = channels
        .iter()
        .map(|c| {
            cluster
                .cli(
                    cluster.ports()[0],
                    &["cluster", "keyslot", &format!("sb:{{{c}}}:pub")],
                )
                .trim()
                .parse::<u16>()
                .map(|slot| (slot / 5462).to_string())
                .unwrap_or_default()
        })
        .collect();
    assert!(shards.len() > 1, "the channels spread over shards");
    for (i, c) in channels.iter().enumerate() {
        let from = if i % 2 == 0 { &a } else { &b };
        for _ in 0..3 {
            from.publish(c, Bytes::from_static(b"1"), None, KEEP)
                .await
                .expect("publish");
        }
    }
    for r in [&ra, &rb] {
        assert!(
            r.wait(SOON, |r| channels.iter().all(|c| r.offsets(c) == [1, 2, 3]))
                .await,
            "every node got every publication once, in order"
        );
    }

    // Concurrent publishers on one channel: contiguous offsets.
    let a = Arc::new(a);
    let hot = channel("hot");
    b.subscribe(&hot).await.expect("subscribe");
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (a, hot) = (a.clone(), hot.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    a.publish(&hot, Bytes::from_static(b"1"), None, KEEP)
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert!(rb.wait(SOON, |r| r.offsets(&hot).len() == 200).await);
    assert_eq!(rb.offsets(&hot), (1..=200).collect::<Vec<u64>>());

    // Subscribe, then publish: never missed.
    let fresh: Vec<_> = (0..30).map(|_| channel("fresh")).collect();
    for c in &fresh {
        b.subscribe(c).await.expect("subscribe");
        a.publish(c, Bytes::from_static(b"1"), None, KEEP)
            .await
            .expect("publish");
    }
    assert!(
        rb.wait(SOON, |r| fresh.iter().all(|c| r.offsets(c) == [1]))
            .await
    );

    // Pushes on the channel's shard, control messages cluster-wide.
    a.push(&hot, Bytes::from_static(b"{}")).await.expect("push");
    assert!(rb.wait(SOON, |r| r.pushes.lock().len() == 1).await);
    let kick = ControlMessage::Disconnect {
        user: "bob".into(),
        code: 4000,
        reason: "kicked".into(),
    };
    b.control(kick.clone()).await.expect("control");
    for r in [&ra, &rb] {
        assert!(
            r.wait(SOON, |r| r.controls.lock().as_slice() == [kick.clone()])
                .await
        );
    }

    // Killing every shard's pub/sub connections: resubscribed, resynced.
    for &port in cluster.ports() {
        cluster.cli(port, &["client", "kill", "type", "pubsub"]);
    }
    assert!(
        rb.wait(SOON, |r| r.resyncs() >= 1).await,
        "on_resync called"
    );
    let deadline = tokio::time::Instant::now() + SOON;
    while !b.health().ok {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in &channels {
        a.publish(c, Bytes::from_static(b"1"), None, KEEP)
            .await
            .expect("publish");
    }
    assert!(
        rb.wait(SOON, |r| channels
            .iter()
            .all(|c| r.offsets(c) == [1, 2, 3, 4]))
            .await,
        "every channel resubscribed on its shard"
    );

    // Presence across shards.
    let p = RedisPresence::connect(&cluster.options("a"))
        .await
        .expect("presence");
    let room = channel("room");
    let e = PresenceEntry {
        user: "u".into(),
        client: "c-1".into(),
        info: serde_json::Value::Null,
        node: "a".into(),
    };
    p.add(&room, e.clone()).await.expect("add");
    assert_eq!(p.get(&room).await.expect("get"), vec![e]);
    assert_eq!(p.add_connection("u", "c-1").await.expect("conn"), 1);
    assert_eq!(p.online().await.expect("online"), vec!["u"]);
    p.remove_many("c-1", std::slice::from_ref(&room))
        .await
        .expect("remove");
    assert!(p.get(&room).await.expect("get").is_empty());
}
