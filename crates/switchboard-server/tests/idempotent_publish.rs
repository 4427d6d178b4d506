//! `idempotency_key` (PROTOCOL §5) as a backend that retries sees it: every
//! publish is sent three times with the same key, half of them after giving
//! up on an attempt (a forced client-side timeout, so the server may or may
//! not have taken it), through three nodes on one Redis, and on one node
//! with the file store across a kill -9 and a restart. Subscribers get each
//! publication once, in order; every answer to a key is the first one.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::proc::{ServerProcess, base_config};
use common::{API_KEY, Client, TestServer, config, http, token, try_http};
use serde_json::{Value, json};
use switchboard_redis::testing::RedisServer;
use switchboard_server::config::{BrokerKind, Dur, RedisUrls};

const PUBLICATIONS: u64 = 24;

fn body(k: u64, key: &str) -> String {
    json!({"channel": "chat:idem", "data": {"k": k}, "idempotency_key": key}).to_string()
}

/// One publish the way a retrying client does it: three attempts with the
/// same key through `targets` in turn, the first one abandoned after a few
/// hundred microseconds when `give_up_first`. Returns every answer received.
async fn publish_with_retries(targets: &[SocketAddr], k: u64, give_up_first: bool) -> Vec<Value> {
    let key = format!("order-{k}-{:08x}", fastrand::u32(..));
    let auth = format!("Bearer {API_KEY}");
    let headers = [("Authorization", auth.as_str())];
    let mut answers = Vec::new();
    for attempt in 0..3 {
        let addr = targets[(k as usize + attempt) % targets.len()];
        let b = body(k, &key);
        let call = try_http(addr, "POST", "/api/publish", &headers, Some(&b));
        let r = if attempt == 0 && give_up_first {
            let patience = Duration::from_micros(fastrand::u64(50..1500));
            match tokio::time::timeout(patience, call).await {
                Ok(r) => r,
                Err(_) => continue, // gave up waiting: the retry follows
            }
        } else {
            call.await
        };
        let r = r.expect("the node answers");
        assert_eq!(r.status, 200, "publish {k}: {}", r.body);
        answers.push(r.json());
    }
    answers
}

/// Publishes 1..=PUBLICATIONS with retries; returns each one's answer.
async fn publish_all(targets: &[SocketAddr]) -> Vec<Value> {
    let mut firsts = Vec::new();
    for k in 1..=PUBLICATIONS {
        let answers = publish_with_retries(targets, k, k % 2 == 0).await;
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "publish {k}: every attempt answers the first result: {answers:?}"
        );
        assert_eq!(answers[0]["offset"], k, "one publication per key");
        firsts.push(answers[0].clone());
    }
    firsts
}

async fn receive_each_once(c: &mut Client, what: &str) {
    for k in 1..=PUBLICATIONS {
        let p = c.recv_type("pub").await;
        assert_eq!(
            (p["offset"].as_u64(), &p["data"]["k"]),
            (Some(k), &json!(k)),
            "{what}"
        );
    }
    assert!(
        c.quiet_for(Duration::from_millis(500)).await,
        "{what}: no duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_publishes_through_three_nodes_are_delivered_once() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let mut c = config();
        c.node_name = format!("n{i}");
        c.broker.kind = BrokerKind::Redis;
        c.broker.redis_url = RedisUrls::One(redis.url());
        c.broker.stall_timeout = Dur::secs(1);
        nodes.push(TestServer::start(c).await);
    }
    let mut subs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut c = n.client(&format!("u{i}")).await;
        c.subscribe("chat:idem").await;
        subs.push(c);
    }
    let targets: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    publish_all(&targets).await;
    for (i, c) in subs.iter_mut().enumerate() {
        receive_each_once(c, &format!("subscriber on n{}", i + 1)).await;
    }
    let h = nodes[1].http("GET", "/api/history/chat:idem", None).await;
    assert_eq!(h.json()["offset"], PUBLICATIONS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_publishes_survive_a_kill_and_restart_with_the_file_store() {
    let data = tempfile::tempdir().expect("temp dir");
    let toml = format!(
        "{}\n[history]\nstore = \"file\"\npath = \"{}\"\nsync = \"always\"\n",
        base_config(),
        data.path().join("history.db").display()
    );
    let server = ServerProcess::start(&toml, &[]);
    let mut sub = Client::connect(server.addr, &token("u1", 3600, &[])).await;
    sub.subscribe("chat:idem").await;
    let keys: Vec<String> = (1..=PUBLICATIONS).map(|k| format!("restart-{k}")).collect();
    let auth = format!("Bearer {API_KEY}");
    let headers = [("Authorization", auth.as_str())];
    let send = |addr: SocketAddr, k: u64| {
        let b = body(k, &keys[k as usize - 1]);
        async move { http(addr, "POST", "/api/publish", &headers, Some(&b)).await }
    };
    let mut first = Vec::new();
    for k in 1..=PUBLICATIONS {
        if k % 2 == 0 {
            let _ = tokio::time::timeout(Duration::from_micros(500), send(server.addr, k)).await;
        }
        let a = send(server.addr, k).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let b = send(server.addr, k).await;
        assert_eq!(a.json(), b.json(), "publish {k}");
        assert_eq!(a.json()["offset"], k);
        first.push(a.json());
    }
    receive_each_once(&mut sub, "before the kill").await;
    drop(sub);
    server.kill(); // SIGKILL

    let server = ServerProcess::start(&toml, &[]);
    let epoch = first[0]["epoch"].as_str().expect("epoch").to_string();
    // Every key retried after the restart answers its first result.
    for k in 1..=PUBLICATIONS {
        let again = send(server.addr, k).await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert_eq!(
            again.json(),
            first[k as usize - 1],
            "publish {k} after the restart"
        );
    }
    let mut sub = Client::connect(server.addr, &token("u2", 3600, &[])).await;
    let r = sub
        .call(json!({"op": "subscribe", "channel": "chat:idem", "since": {"offset": 0, "epoch": epoch}}))
        .await;
    let result = &r["result"];
    assert_eq!(result["recovered"], true, "{r}");
    let got: Vec<(u64, Value)> = result["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().expect("offset"),
                p["data"]["k"].clone(),
            )
        })
        .collect();
    let want: Vec<(u64, Value)> = (1..=PUBLICATIONS).map(|k| (k, json!(k))).collect();
    assert_eq!(got, want, "each publication once, in order");
}
