//! Several nodes on one redis-server are one gateway (PROTOCOL §9): fan-out
//! and personal messages across nodes, presence, online, info and
//! disconnect from any node, the per-user limit counted on every node, a
//! dead node gone within `[presence] ttl`, and `/health` / `/ready` that
//! follow Redis going away and coming back.

mod common;

use std::time::Duration;

use common::proc::ServerProcess;
use common::{Client, TestServer, config, raw_http, token, upgrade_request};
use serde_json::{Value, json};
use switchboard_redis::testing::RedisServer;
use switchboard_server::config::{BrokerKind, Config, Dur, RedisUrls};

fn node_config(redis: &RedisServer, name: &str) -> Config {
    let mut c = config();
    c.node_name = name.into();
    c.broker.kind = BrokerKind::Redis;
    c.broker.redis_url = RedisUrls::One(redis.url());
    c.broker.stall_timeout = Dur::secs(1);
    c.presence.ttl = Dur::secs(2);
    c
}

async fn nodes(redis: &RedisServer, n: usize) -> Vec<TestServer> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(TestServer::start(node_config(redis, &format!("n{i}"))).await);
    }
    out
}

/// Polls `probe` every 50 ms until it holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(v: &Value, list: &str, field: &str) -> Vec<String> {
    let mut n: Vec<String> = v[list]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e[field].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_reach_every_node_once_and_in_order() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 3).await;
    let mut subs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut c = n.client(&format!("u{i}")).await;
        c.subscribe("chat:fan").await;
        subs.push(c);
    }
    for k in 1..=30u64 {
        let via = &nodes[k as usize % 3];
        let pos = via.publish("chat:fan", json!({ "k": k })).await;
        assert_eq!(pos["offset"], k, "one offset sequence across nodes");
    }
    for c in &mut subs {
        for k in 1..=30u64 {
            let p = c.recv_type("pub").await;
            assert_eq!(
                (p["offset"].as_u64(), &p["data"]["k"]),
                (Some(k), &json!(k))
            );
        }
        assert!(
            c.quiet_for(Duration::from_millis(300)).await,
            "no duplicate"
        );
    }
    // A personal message published on one node reaches the user on another.
    let mut bob = nodes[2].client("bob").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    nodes[0]
        .publish("user:bob", json!({ "text": "hi from n1" }))
        .await;
    let p = bob.recv_type("pub").await;
    assert_eq!(p["channel"], "user:bob");
    assert_eq!(p["data"]["text"], "hi from n1");
    // History from any node.
    let h = nodes[1]
        .http("GET", "/api/history/chat:fan?limit=3", None)
        .await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.json()["offset"], 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_online_info_and_disconnect_answer_for_every_node() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 3).await;
    let mut alice = nodes[0].client("alice").await;
    alice.subscribe("chat:room").await;
    let mut bob = nodes[1].client("bob").await;
    bob.subscribe("chat:room").await;
    let c = &nodes[2];
    eventually(Duration::from_secs(3), "both present from n3", || async {
        let r = c.http("GET", "/api/presence/chat:room", None).await;
        names(&r.json(), "clients", "user") == ["alice", "bob"]
    })
    .await;
    let p = c.http("GET", "/api/presence/chat:room", None).await.json();
    let mut at: Vec<String> = names(&p, "clients", "node");
    at.dedup();
    assert_eq!(at, ["n1", "n2"], "{p}");
    eventually(Duration::from_secs(3), "online from n3", || async {
        let v = c.http("GET", "/api/online", None).await.json();
        v["users"] == json!(["alice", "bob"]) && v["count"] == 2
    })
    .await;
    let info = c.http("GET", "/api/info", None).await.json();
    assert_eq!(names(&info, "nodes", "name"), ["n1", "n2", "n3"], "{info}");
    assert!(info["nodes"][0]["version"].is_string(), "{info}");
    // Other nodes' figures are as of their last announcement (ttl/3).
    eventually(
        Duration::from_secs(3),
        "n1's connections seen from n3",
        || async {
            let info = c.http("GET", "/api/info", None).await.json();
            info["nodes"][0]["connections"] == 1 && info["nodes"][0]["subscriptions"] == 2
        },
    )
    .await;
    // A leave on n1 reaches bob on n2 (join/leave pushes across nodes).
    let r = c
        .http("POST", "/api/disconnect", Some(r#"{"user":"alice"}"#))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["disconnected"], 1, "counted on every node");
    assert_eq!(
        alice.close_code().await,
        Some(4000),
        "closed on its own node"
    );
    let leave = bob.recv_type("leave").await;
    assert_eq!(leave["user"], "alice");
    eventually(Duration::from_secs(3), "alice gone everywhere", || async {
        let v = c.http("GET", "/api/online", None).await.json();
        let p = c.http("GET", "/api/presence/chat:room", None).await.json();
        v["users"] == json!(["bob"]) && names(&p, "clients", "user") == ["bob"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_counts_connections_on_every_node() {
    let redis = RedisServer::start();
    let mut cfgs: Vec<Config> = (1..=3)
        .map(|i| node_config(&redis, &format!("n{i}")))
        .collect();
    for c in &mut cfgs {
        c.limits.max_connections_per_user = 2;
    }
    let mut nodes = Vec::new();
    for c in cfgs {
        nodes.push(TestServer::start(c).await);
    }
    let _one = nodes[0].client("carol").await;
    let _two = nodes[1].client("carol").await;
    // Counted in Redis by a task after the welcome: wait for it.
    eventually(Duration::from_secs(3), "the third is refused", || async {
        let t = token("carol", 3600, &[]);
        let r = raw_http(
            nodes[2].addr,
            &upgrade_request(nodes[2].addr, &format!("/ws?token={t}"), &[]),
        )
        .await;
        if r.status == 101 {
            // Admitted before both counts landed; closed by its count.
            return false;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.error_code(), "limit_exceeded");
        true
    })
    .await;
    // Another user is not affected.
    let _dave = nodes[2].client("dave").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_presence_online_and_info_within_the_ttl() {
    let redis = RedisServer::start();
    let survivor = TestServer::start(node_config(&redis, "n1")).await;
    let toml = common::proc::base_config();
    let envs = [
        ("SWITCHBOARD_NODE_NAME", "doomed"),
        ("SWITCHBOARD_BROKER_KIND", "redis"),
        ("SWITCHBOARD_BROKER_REDIS_URL", &*redis.url()),
        ("SWITCHBOARD_PRESENCE_TTL", "2s"),
    ];
    let doomed = ServerProcess::start(&toml, &envs);
    let mut eve = Client::connect(doomed.addr, &token("eve", 3600, &[])).await;
    eve.subscribe("chat:room").await;
    eventually(Duration::from_secs(3), "eve seen from n1", || async {
        let v = survivor.http("GET", "/api/online", None).await.json();
        let i = survivor.http("GET", "/api/info", None).await.json();
        v["users"] == json!(["eve"]) && names(&i, "nodes", "name") == ["doomed", "n1"]
    })
    .await;
    let killed = tokio::time::Instant::now();
    let _ = doomed.kill();
    eventually(
        Duration::from_millis(3500),
        "the dead node's clients and announcement expire",
        || async {
            let v = survivor.http("GET", "/api/online", None).await.json();
            let p = survivor
                .http("GET", "/api/presence/chat:room", None)
                .await
                .json();
            let i = survivor.http("GET", "/api/info", None).await.json();
            v["count"] == 0 && p["clients"] == json!([]) && names(&i, "nodes", "name") == ["n1"]
        },
    )
    .await;
    assert!(killed.elapsed() <= Duration::from_millis(3500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_follow_redis_down_and_back() {
    let mut redis = RedisServer::start();
    let node = TestServer::start(node_config(&redis, "n1")).await;
    let mut sub = node.client("ann").await;
    sub.subscribe("chat:h").await;
    let h = node.http("GET", "/health", None).await.json();
    assert_eq!(h["broker"]["kind"], "redis");
    eventually(Duration::from_secs(3), "ok with a lag", || async {
        let h = node.http("GET", "/health", None).await.json();
        h["broker"]["ok"] == true && node.http("GET", "/ready", None).await.status == 200
    })
    .await;
    node.publish("chat:h", json!(1)).await;
    assert_eq!(sub.recv_type("pub").await["offset"], 1);

    redis.kill();
    eventually(
        Duration::from_secs(5),
        "not ready without redis",
        || async {
            let h = node.http("GET", "/health", None).await.json();
            h["broker"]["ok"] == false && node.http("GET", "/ready", None).await.status == 503
        },
    )
    .await;
    let body = json!({"channel": "chat:h", "data": 2}).to_string();
    let r = node.http("POST", "/api/publish", Some(&body)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    let r = sub
        .call(json!({"op": "publish", "channel": "chat:h", "data": 2}))
        .await;
    assert_eq!(r["error"]["code"], "internal", "a client's publish: {r}");
    let m = node.http("GET", "/metrics", None).await.body;
    for name in [
        "switchboard_broker_lag_seconds_bucket",
        "switchboard_broker_ok 0",
        "switchboard_gap_fills_total",
        "switchboard_lost_total",
    ] {
        assert!(m.contains(name), "{name} in {m}");
    }

    redis.restart();
    eventually(
        Duration::from_secs(10),
        "ready again, no restart",
        || async { node.http("GET", "/ready", None).await.status == 200 },
    )
    .await;
    let pos = node.publish("chat:h", json!(3)).await;
    let p = sub.recv_type("pub").await;
    assert_eq!(p["offset"], pos["offset"], "delivered after recovery: {p}");
    assert!(sub.quiet_for(Duration::from_millis(200)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_redis_serves_unready_then_becomes_ready() {
    let mut redis = RedisServer::start();
    redis.kill();
    let node = TestServer::start(node_config(&redis, "n1")).await;
    assert_eq!(node.http("GET", "/ready", None).await.status, 503);
    let h = node.http("GET", "/health", None).await.json();
    assert_eq!(
        h["broker"],
        json!({"kind": "redis", "ok": false, "lag_ms": 0})
    );
    let body = json!({"channel": "chat:late", "data": 1}).to_string();
    let r = node.http("POST", "/api/publish", Some(&body)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(node.http("GET", "/api/online", None).await.status, 503);
    redis.restart();
    eventually(
        Duration::from_secs(10),
        "ready once redis answers",
        || async { node.http("GET", "/ready", None).await.status == 200 },
    )
    .await;
    let mut c = node.client("late").await;
    c.subscribe("chat:late").await;
    let pos = node.publish("chat:late", json!(2)).await;
    assert_eq!(c.recv_type("pub").await["offset"], pos["offset"]);
    let info = node.http("GET", "/api/info", None).await.json();
    assert_eq!(names(&info, "nodes", "name"), ["n1"], "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_connected_while_redis_was_down_gets_its_personal_messages_after() {
    let mut redis = RedisServer::start();
    let node = TestServer::start(node_config(&redis, "n1")).await;
    redis.kill();
    eventually(
        Duration::from_secs(5),
        "not ready without redis",
        || async { node.http("GET", "/ready", None).await.status == 503 },
    )
    .await;
    let mut zed = node.client("zed").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.restart();
    eventually(Duration::from_secs(10), "ready again", || async {
        node.http("GET", "/ready", None).await.status == 200
    })
    .await;
    // Ready includes the publish path (its probe is a script through the
    // command connection, after the lanes came back): the first publish
    // after it is accepted.
    node.publish("user:zed", json!({"text": "after the outage"}))
        .await;
    let p = zed.recv_type("pub").await;
    assert_eq!(p["data"]["text"], "after the outage");
}

/// Connects, or `None` when the upgrade is refused.
async fn connect_or_refused(
    addr: std::net::SocketAddr,
    token: &str,
) -> Option<
    tokio_websockets::WebSocketStream<tokio_websockets::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let uri: http::Uri = format!("ws://{addr}/ws?token={token}")
        .parse()
        .expect("uri");
    tokio_websockets::ClientBuilder::from_uri(uri)
        .connect()
        .await
        .ok()
        .map(|(ws, _)| ws)
}

/// Whether the connection is still open after `d` (frames are read and
/// skipped; a close frame or the end means closed).
async fn open_after(
    ws: &mut tokio_websockets::WebSocketStream<
        tokio_websockets::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    d: Duration,
) -> (bool, Option<u16>) {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return (true, None),
            Ok(Some(Ok(m))) => {
                if let Some((code, _)) = m.as_close() {
                    return (false, Some(code.into()));
                }
            }
            Ok(_) => return (false, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_admitting_one_user_at_once_keep_at_most_the_limit() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let mut c = node_config(&redis, &format!("n{i}"));
        c.limits.max_connections_per_user = 1;
        nodes.push(TestServer::start(c).await);
    }
    for round in 0..3 {
        let user = format!("fay{round}");
        let t = token(&user, 3600, &[]);
        let (a, b) = tokio::join!(
            connect_or_refused(nodes[0].addr, &t),
            connect_or_refused(nodes[1].addr, &t)
        );
        let mut open = 0;
        for mut ws in [a, b].into_iter().flatten() {
            match open_after(&mut ws, Duration::from_millis(1500)).await {
                (true, _) => open += 1,
                (false, code) => assert_eq!(code, Some(1008), "closed by the limit"),
            }
        }
        assert_eq!(
            open, 1,
            "round {round}: exactly one of two connections stays"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_redis_over_tls_with_a_password_and_a_private_ca() {
    let redis = RedisServer::start_tls("s3cret-pw");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, redis.tls_root_cert()).expect("write ca");
    let mut c = node_config(&redis, "n1");
    assert!(redis.url().starts_with("rediss://:s3cret-pw@"));
    c.broker.redis_tls_ca_file = ca.to_string_lossy().into_owned();
    assert!(!c.redacted_toml().contains("s3cret-pw"));
    let node = TestServer::start(c).await;
    eventually(Duration::from_secs(5), "ready over TLS", || async {
        node.http("GET", "/ready", None).await.status == 200
    })
    .await;
    let mut c = node.client("tia").await;
    c.subscribe("chat:tls").await;
    node.publish("chat:tls", json!("over tls")).await;
    assert_eq!(c.recv_type("pub").await["data"], "over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_channel_cap_holds_across_nodes_and_expired_channels_stop_counting() {
    let redis = RedisServer::start();
    let capped = |name: &str| {
        let mut c = node_config(&redis, name);
        c.namespaces
            .push(switchboard_server::config::NamespaceConfig {
                name: "capped".into(),
                publish: true,
                history_size: 10,
                history_ttl: Dur::secs(3),
                history_max_channels: 2,
                ..Default::default()
            });
        c
    };
    let n1 = TestServer::start(capped("n1")).await;
    let n2 = TestServer::start(capped("n2")).await;
    // One channel started on each node: the namespace is full for both.
    n1.publish("capped:a", json!(1)).await;
    n2.publish("capped:b", json!(1)).await;
    n2.publish("capped:a", json!(2)).await;
    for node in [&n1, &n2] {
        let body = json!({"channel": "capped:c", "data": 1}).to_string();
        let r = node.http("POST", "/api/publish", Some(&body)).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.error_code(), "limit_exceeded");
    }
    let mut c = n2.client("alice").await;
    let r = c
        .call(json!({"op": "publish", "channel": "capped:d", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], "limit_exceeded", "{r}");
    let r = c
        .call(json!({"op": "publish", "channel": "capped:b", "data": 2}))
        .await;
    assert_eq!(r["result"]["offset"], 2, "{r}");
    // Their streams expire (history_ttl 3 s): they stop counting, and new
    // channels may keep history again, from either node.
    eventually(Duration::from_secs(10), "room after expiry", || async {
        let body = json!({"channel": "capped:c", "data": 1}).to_string();
        let r = n1.http("POST", "/api/publish", Some(&body)).await;
        assert!(r.status == 200 || r.status == 400, "{}", r.body);
        r.status == 200
    })
    .await;
    n2.publish("capped:e", json!(1)).await;
    let body = json!({"channel": "capped:f", "data": 1}).to_string();
    let r = n1.http("POST", "/api/publish", Some(&body)).await;
    assert_eq!(r.status, 400, "two live again: {}", r.body);
}
