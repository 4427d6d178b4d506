//! The admin page and its endpoints (`[admin] enabled`), black box over real
//! sockets: off by default, the key on every endpoint, the stats stream's
//! counters after publishes, a user's connections on every node (through
//! Redis with two nodes) and their disconnect, the cap on admin streams.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchboard_redis::testing::RedisServer;
use switchboard_server::config::{BrokerKind, Config, Dur, NamespaceConfig, RedisUrls};
use switchboard_server::http::admin::MAX_STREAMS;

/// Generous: the machine is shared.
const DEADLINE: Duration = Duration::from_secs(15);

fn enabled() -> Config {
    let mut c = config();
    c.admin.enabled = true;
    c
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// An open `GET /api/admin/stats`, read event by event.
struct Stats {
    body: Incoming,
    buf: String,
}

/// Opens the stream, or answers the refusal's status.
async fn open_stats(addr: SocketAddr, key: &str) -> Result<Stats, u16> {
    let client: HttpClient<HttpConnector, Empty<Bytes>> =
        HttpClient::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{addr}/api/admin/stats"))
        .header("authorization", bearer(key))
        .body(Empty::new())
        .expect("request");
    let res = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .expect("an answer")
        .expect("request sent");
    if res.status() != 200 {
        return Err(res.status().as_u16());
    }
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    Ok(Stats {
        body: res.into_body(),
        buf: String::new(),
    })
}

impl Stats {
    /// The next `stats` event's data.
    async fn next(&mut self) -> Value {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let event: String = self.buf.drain(..end + 2).collect();
                    let mut lines = event.lines();
                    assert_eq!(lines.next(), Some("event: stats"), "{event}");
                    let data = lines.next().and_then(|l| l.strip_prefix("data: "));
                    return serde_json::from_str(data.expect("a data line")).expect("JSON");
                }
                let frame = self
                    .body
                    .frame()
                    .await
                    .expect("the stream goes on")
                    .expect("a frame");
                if let Ok(data) = frame.into_data() {
                    self.buf
                        .push_str(std::str::from_utf8(&data).expect("utf-8"));
                }
            }
        })
        .await
        .expect("an event within the deadline")
    }

    /// Events until one satisfies `done`; that one.
    async fn until(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let s = self.next().await;
            if done(&s) {
                return s;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}; last: {s}");
        }
    }
}

#[tokio::test]
async fn the_admin_page_and_its_endpoints_are_off_by_default() {
    let s = TestServer::start(config()).await;
    for path in ["/admin", "/admin/app.js"] {
        let r = http(s.addr, "GET", path, &[], None).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error_code(), "not_found");
    }
    for path in ["/api/admin/stats", "/api/admin/user/alice"] {
        let r = s.http("GET", path, None).await;
        assert_eq!(r.status, 404, "{path} with the key");
    }
}

#[tokio::test]
async fn the_page_is_served_and_every_endpoint_needs_the_key() {
    let s = TestServer::start(enabled()).await;
    let page = http(s.addr, "GET", "/admin", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap_or("")
            .starts_with("text/html")
    );
    assert!(
        page.body
            .contains(r#"<script type="module" src="/admin/app.js">"#)
    );
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let js = http(s.addr, "GET", "/admin/app.js", &[], None).await;
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .unwrap_or("")
            .starts_with("text/javascript")
    );
    assert_eq!(
        http(s.addr, "GET", "/admin/secret.js", &[], None)
            .await
            .status,
        404
    );
    assert_eq!(
        http(s.addr, "GET", "/admin/..%2Fdemo.html", &[], None)
            .await
            .status,
        404
    );

    for path in ["/api/admin/stats", "/api/admin/user/alice"] {
        let r = http(s.addr, "GET", path, &[], None).await;
        assert_eq!(r.status, 401, "{path} without a key");
        assert_eq!(r.error_code(), "unauthorized");
        let wrong = bearer("wrong");
        let r = http(s.addr, "GET", path, &[("Authorization", &wrong)], None).await;
        assert_eq!(r.status, 401, "{path} with a wrong key");
    }
    assert_eq!(open_stats(s.addr, "wrong").await.err(), Some(401));
}

#[tokio::test]
async fn the_stats_stream_counts_publications_deliveries_and_refusals() {
    let s = TestServer::start(enabled()).await;
    let mut alice = s.client("alice").await;
    let mut bob = s.client("bob").await;
    alice.subscribe("chat:room").await;
    bob.subscribe("chat:room").await;
    bob.subscribe("chat:other").await;

    let mut stats = open_stats(s.addr, API_KEY).await.expect("stream");
    let first = stats
        .until("two clients and their channels", |v| v["connections"] == 2)
        .await;
    assert_eq!(first["node"], "n1");
    assert_eq!(first["publications_total"], 0);
    assert_eq!(
        first["top_channels"],
        json!([{"channel": "chat:room", "subscribers": 2}, {"channel": "chat:other", "subscribers": 1}])
    );
    assert_eq!(first["broker"]["kind"], "memory");
    assert_eq!(first["broker"]["ok"], true);
    assert_eq!(first["nodes"][0]["name"], "n1");
    assert_eq!(first["nodes"][0]["connections"], 2);
    assert_eq!(first["slow_consumers_total"], 0);

    for i in 0..3 {
        s.publish("chat:room", json!(i)).await;
    }
    for c in [&mut alice, &mut bob] {
        for _ in 0..3 {
            c.recv_type("pub").await;
        }
    }
    let moved = stats
        .until("3 publications, 6 deliveries", |v| {
            v["publications_total"] == 3 && v["deliveries_total"] == 6
        })
        .await;
    assert_eq!(moved["connections"], 2);

    // A refused handshake is counted by its reason.
    let refused = raw_http(s.addr, &upgrade_request(s.addr, "/ws?token=not-a-jwt", &[])).await;
    assert_eq!(refused.status, 401);
    let counted = stats
        .until("one rejected handshake", |v| {
            v["handshakes_rejected_total"] == 1
        })
        .await;
    assert_eq!(counted["handshakes_rejected"], json!({"invalid_token": 1}));

    // The same counters in /metrics.
    let m = s.http("GET", "/metrics", None).await.body;
    assert!(m.contains("switchboard_deliveries_total 6"), "{m}");
    assert!(m.contains("switchboard_publications_total 3"), "{m}");
}

#[tokio::test]
async fn a_user_is_listed_with_every_connection_and_disconnected() {
    let s = TestServer::start(enabled()).await;
    let t = s.token("alice");
    let mut laptop = Client::connect(s.addr, &format!("{t}&device=laptop")).await;
    let mut phone = s.client("alice").await;
    let _bob = s.client("bob").await;
    phone.subscribe("chat:room").await;

    let r = s.http("GET", "/api/admin/user/alice", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["total"], 2);
    assert_eq!(v["unlisted"], 0);
    assert_eq!(v["source"], "hub");
    let conns = v["connections"].as_array().expect("list");
    assert_eq!(conns.len(), 2);
    assert!(
        conns
            .iter()
            .all(|c| c["node"] == "n1" && c["info"]["name"] == "alice")
    );
    let ids: Vec<&str> = conns.iter().filter_map(|c| c["client"].as_str()).collect();
    assert!(ids.contains(&laptop.welcome["client"].as_str().expect("id")));
    assert!(conns.iter().any(|c| c["device"] == "laptop"));
    // The personal channel and chat:room.
    assert!(conns.iter().any(|c| c["subscriptions"] == 2), "{v}");

    let none = s.http("GET", "/api/admin/user/nobody", None).await.json();
    assert_eq!(none["total"], 0);
    assert_eq!(none["connections"], json!([]));
    let bad = s.http("GET", "/api/admin/user/a%20b", None).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_code(), "bad_request");

    // The page's button is the API's disconnect.
    let d = s
        .http("POST", "/api/disconnect", Some(r#"{"user":"alice"}"#))
        .await
        .json();
    assert_eq!(d["disconnected"], 2);
    assert_eq!(laptop.close_code().await, Some(4000));
    assert_eq!(phone.close_code().await, Some(4000));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let v = s.http("GET", "/api/admin/user/alice", None).await.json();
        if v["total"] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still listed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn admin_streams_are_capped_and_a_closed_one_frees_its_slot() {
    let s = TestServer::start(enabled()).await;
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS {
        let mut st = open_stats(s.addr, API_KEY).await.expect("under the cap");
        st.next().await;
        open.push(st);
    }
    assert_eq!(open_stats(s.addr, API_KEY).await.err(), Some(503));
    // The page goes: its stream's slot is given back once the server
    // notices (its next event finds the connection closed).
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut again = loop {
        match open_stats(s.addr, API_KEY).await {
            Ok(st) => break st,
            Err(status) => {
                assert_eq!(status, 503);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(again.next().await["connections"].is_u64());
}

fn node_config(redis: &RedisServer, name: &str, user_presence: bool) -> Config {
    let mut c = enabled();
    c.node_name = name.into();
    c.broker.kind = BrokerKind::Redis;
    c.broker.redis_url = RedisUrls::One(redis.url());
    c.broker.stall_timeout = Dur::secs(2);
    c.presence.ttl = Dur::secs(3);
    c.namespaces.retain(|n| n.name != "user");
    c.namespaces.push(NamespaceConfig {
        name: "user".into(),
        presence: user_presence,
        history_size: 100,
        history_ttl: Dur::secs(600),
        ..Default::default()
    });
    c
}

/// Polls `path` on `s` until `done` holds.
async fn poll(s: &TestServer, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let r = s.http("GET", path, None).await;
        if r.status == 200 && done(&r.json()) {
            return r.json();
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: {}", r.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With Redis, a user's connections on another node are listed from
/// presence on their personal channel, and only counted without it; the
/// disconnect from one node closes them on the other; the stats list both
/// nodes.
#[tokio::test]
async fn a_user_on_another_node_is_found_and_disconnected_through_redis() {
    let redis = RedisServer::start();
    let a = TestServer::start(node_config(&redis, "na", true)).await;
    let b = TestServer::start(node_config(&redis, "nb", true)).await;
    let mut on_b = b.client("carol").await;
    let _on_a = a.client("carol").await;
    let v = poll(&a, "/api/admin/user/carol", |v| {
        v["connections"].as_array().is_some_and(|c| c.len() == 2)
    })
    .await;
    assert_eq!(v["source"], "presence");
    assert_eq!(v["total"], 2);
    let nodes: Vec<&str> = v["connections"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["node"].as_str())
        .collect();
    assert_eq!(nodes, ["na", "nb"]);
    let remote = &v["connections"][1];
    assert_eq!(remote["client"], on_b.welcome["client"]);
    assert!(
        remote.get("queued_bytes").is_none(),
        "only the hub knows: {remote}"
    );

    let mut stats = open_stats(a.addr, API_KEY).await.expect("stream");
    let both = stats
        .until("both nodes listed", |v| {
            v["nodes"].as_array().is_some_and(|n| n.len() == 2)
        })
        .await;
    assert_eq!(both["broker"]["kind"], "redis");

    let d = a
        .http("POST", "/api/disconnect", Some(r#"{"user":"carol"}"#))
        .await;
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(on_b.close_code().await, Some(4000));
    poll(&a, "/api/admin/user/carol", |v| v["total"] == 0).await;

    // Without presence in the `user` namespace other nodes' connections are
    // counted, not named.
    let c = TestServer::start(node_config(&redis, "nc", false)).await;
    let d = TestServer::start(node_config(&redis, "nd", false)).await;
    let _far = d.client("dave").await;
    let v = poll(&c, "/api/admin/user/dave", |v| v["total"] == 1).await;
    assert_eq!(v["source"], "count");
    assert_eq!(v["unlisted"], 1);
    assert_eq!(v["connections"], json!([]));
}
