//! `RedisPresence` and `RedisNodes` against a real redis-server: entries of
//! every node seen from any node, and a dead node's entries gone within the
//! presence ttl (2 s in these tests).

mod common;

use std::time::Duration;

use common::channel;
use switchboard_core::{PresenceEntry, PresenceStore};
use switchboard_redis::testing::RedisServer;
use switchboard_redis::{NodeInfo, RedisBroker, RedisNodes, RedisPresence};

fn entry(user: &str, client: &str, node: &str) -> PresenceEntry {
    PresenceEntry {
        user: user.into(),
        client: client.into(),
        info: serde_json::json!({"name": user}),
        node: node.into(),
    }
}

/// Longer than the 2 s ttl, so only refreshed entries survive it.
const PAST_TTL: Duration = Duration::from_millis(2600);

#[tokio::test]
async fn entries_of_every_node_come_and_go() {
    let server = RedisServer::start();
    let a = RedisPresence::connect(&server.options("a"))
        .await
        .expect("a");
    let b = RedisPresence::connect(&server.options("b"))
        .await
        .expect("b");
    let ch = channel("room");
    a.add(&ch, entry("alice", "c-2", "a")).await.expect("add");
    b.add(&ch, entry("bob", "c-1", "b")).await.expect("add");
    let seen = a.get(&ch).await.expect("get");
    assert_eq!(
        seen,
        vec![entry("bob", "c-1", "b"), entry("alice", "c-2", "a")],
        "by client id"
    );
    assert_eq!(b.get(&ch).await.expect("get"), seen);
    b.remove(&ch, "c-1").await.expect("remove");
    assert_eq!(
        a.get(&ch).await.expect("get"),
        vec![entry("alice", "c-2", "a")]
    );
    assert!(a.get(&channel("empty")).await.expect("get").is_empty());
}

#[tokio::test]
async fn join_and_leave_store_the_entry_and_push_to_every_node_once() {
    let server = RedisServer::start();
    let a = RedisPresence::connect(&server.options("a"))
        .await
        .expect("a");
    let broker = RedisBroker::connect(server.options("b")).await.expect("b");
    let rec = common::Recorder::bound(&broker);
    let ch = channel("joins");
    broker.subscribe(&ch).await.expect("subscribe");
    a.join(&ch, entry("alice", "c-1", "a"), b"{\"type\":\"join\"}")
        .await
        .expect("join");
    assert_eq!(
        a.get(&ch).await.expect("get"),
        vec![entry("alice", "c-1", "a")]
    );
    assert!(
        a.leave(&ch, "c-1", b"{\"type\":\"leave\"}")
            .await
            .expect("leave")
    );
    assert!(
        !a.leave(&ch, "c-1", b"{\"type\":\"leave\"}")
            .await
            .expect("leave"),
        "already gone"
    );
    assert!(a.get(&ch).await.expect("get").is_empty());
    assert!(
        rec.wait(Duration::from_secs(5), |r| r.pushes.lock().len() == 2)
            .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frames: Vec<Vec<u8>> = rec.pushes.lock().iter().map(|(_, f)| f.to_vec()).collect();
    assert_eq!(
        frames,
        vec![
            b"{\"type\":\"join\"}".to_vec(),
            b"{\"type\":\"leave\"}".to_vec()
        ]
    );
}

#[tokio::test]
async fn remove_many_takes_a_client_out_of_every_channel() {
    let server = RedisServer::start();
    let a = RedisPresence::connect(&server.options("a"))
        .await
        .expect("a");
    let channels: Vec<_> = (0..100).map(|_| channel("many")).collect();
    for c in &channels {
        a.add(c, entry("alice", "c-1", "a")).await.expect("add");
        a.add(c, entry("bob", "c-2", "a")).await.expect("add");
    }
    // Every channel's script leaves at once: Redis reads them in a few
    // calls (counted from /proc), not one round trip per channel.
    let reads = server.read_calls();
    a.refresh().await.expect("refresh");
    let refresh_reads = server.read_calls() - reads;
    let reads = server.read_calls();
    a.remove_many("c-1", &channels).await.expect("remove_many");
    let remove_reads = server.read_calls() - reads;
    eprintln!("100 channels: refresh {refresh_reads} server reads, remove_many {remove_reads}");
    assert!(
        refresh_reads < 20 && remove_reads < 20,
        "100 channels: refresh took {refresh_reads} reads, remove_many {remove_reads}"
    );
    for c in &channels {
        assert_eq!(a.get(c).await.expect("get"), vec![entry("bob", "c-2", "a")]);
    }
}

#[tokio::test]
async fn a_dead_nodes_entries_expire_while_a_live_nodes_are_refreshed() {
    let server = RedisServer::start();
    let live = RedisPresence::connect(&server.options("live"))
        .await
        .expect("live");
    let dead = RedisPresence::connect(&server.options("dead"))
        .await
        .expect("dead");
    let ch = channel("ttl");
    live.add(&ch, entry("alice", "c-1", "live"))
        .await
        .expect("add");
    dead.add(&ch, entry("bob", "c-2", "dead"))
        .await
        .expect("add");
    live.add_connection("alice", "c-1").await.expect("conn");
    dead.add_connection("bob", "c-2").await.expect("conn");
    dead.add_connection("alice", "c-3").await.expect("conn");
    assert_eq!(live.online().await.expect("online"), vec!["alice", "bob"]);
    assert_eq!(live.user_connections("alice").await.expect("count"), 2);
    // The node dies: nothing refreshes its entries any more.
    drop(dead);
    tokio::time::sleep(PAST_TTL).await;
    assert_eq!(
        live.get(&ch).await.expect("get"),
        vec![entry("alice", "c-1", "live")]
    );
    assert_eq!(live.online().await.expect("online"), vec!["alice"]);
    assert_eq!(live.user_connections("alice").await.expect("count"), 1);
    assert_eq!(live.user_connections("bob").await.expect("count"), 0);
}

#[tokio::test]
async fn per_user_connections_count_every_node_and_online_follows_the_last_one() {
    let server = RedisServer::start();
    let a = RedisPresence::connect(&server.options("a"))
        .await
        .expect("a");
    let b = RedisPresence::connect(&server.options("b"))
        .await
        .expect("b");
    assert_eq!(a.add_connection("carol", "c-1").await.expect("add"), 1);
    assert_eq!(b.add_connection("carol", "c-2").await.expect("add"), 2);
    assert_eq!(a.user_connections("carol").await.expect("count"), 2);
    a.remove_connection("carol", "c-1").await.expect("remove");
    assert_eq!(b.online().await.expect("online"), vec!["carol"]);
    b.remove_connection("carol", "c-2").await.expect("remove");
    assert!(a.online().await.expect("online").is_empty());
    assert_eq!(a.user_connections("carol").await.expect("count"), 0);
}

#[tokio::test]
async fn nodes_announce_themselves_and_a_silent_one_expires() {
    let server = RedisServer::start();
    let a = RedisNodes::connect(&server.options("a")).await.expect("a");
    let b = RedisNodes::connect(&server.options("b")).await.expect("b");
    let info = |name: &str, connections| NodeInfo {
        name: name.into(),
        version: "0.1.0".into(),
        connections,
        subscriptions: 3,
    };
    a.announce(&info("a", 5)).await.expect("announce");
    b.announce(&info("b", 7)).await.expect("announce");
    assert_eq!(
        a.nodes().await.expect("nodes"),
        vec![info("a", 5), info("b", 7)]
    );
    assert_eq!(a.announce_every(), Duration::from_secs(2) / 3);
    // a keeps announcing, b has died.
    for _ in 0..4 {
        tokio::time::sleep(a.announce_every()).await;
        a.announce(&info("a", 6)).await.expect("announce");
    }
    assert_eq!(b.nodes().await.expect("nodes"), vec![info("a", 6)]);
    a.leave("a").await.expect("leave");
    assert!(b.nodes().await.expect("nodes").is_empty());
}
