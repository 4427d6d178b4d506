//! The server API (PROTOCOL §5) and the operations endpoints (§6).

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn api_calls_need_the_key() {
    let s = TestServer::start(config()).await;
    for (m, p) in [
        ("POST", "/api/publish"),
        ("GET", "/api/online"),
        ("GET", "/api/info"),
    ] {
        let r = http(s.addr, m, p, &[], Some("{}")).await;
        assert_eq!(r.status, 401, "{p}");
        assert_eq!(r.error_code(), "unauthorized");
        let r = http(
            s.addr,
            m,
            p,
            &[("Authorization", "Bearer wrong")],
            Some("{}"),
        )
        .await;
        assert_eq!(r.status, 401, "{p}");
    }
}

#[tokio::test]
async fn malformed_bodies_get_400_and_change_nothing() {
    let s = TestServer::start(config()).await;
    for body in [
        "not json",
        "{}",
        r#"{"channel": "chat:a"}"#,
        r#"{"channel": "bad name", "data": 1}"#,
        r#"{"channel": 5, "data": 1}"#,
        r#"{"channel": "chat:a", "data": 1, "extra": true}"#,
    ] {
        let r = s.http("POST", "/api/publish", Some(body)).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.error_code(), "bad_request");
    }
    let r = s
        .http(
            "POST",
            "/api/broadcast",
            Some(r#"{"channels": ["chat:a", "bad name"], "data": 1}"#),
        )
        .await;
    assert_eq!(r.status, 400);
    let h = s.http("GET", "/api/history/chat:a", None).await.json();
    assert_eq!(h["offset"], 0, "nothing was published");
}

#[tokio::test]
async fn an_idempotency_key_answers_the_first_result_and_publishes_nothing() {
    let s = TestServer::start(config()).await;
    let mut a = s.client("alice").await;
    a.subscribe("chat:k").await;
    let publish = |key: &str| {
        let body = json!({"channel": "chat:k", "data": {"key": key}, "idempotency_key": key});
        let s = &s;
        async move {
            let r = s
                .http("POST", "/api/publish", Some(&body.to_string()))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()
        }
    };
    let first = publish("k1").await;
    assert_eq!(
        publish("k1").await,
        first,
        "the same key answers the first result"
    );
    assert_eq!(publish("k2").await["offset"], 2);
    // Broadcast: per channel; a retry publishes only where the key is new.
    let r = s
        .http(
            "POST",
            "/api/broadcast",
            Some(r#"{"channels": ["chat:k", "chat:other"], "data": 3, "idempotency_key": "k1"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].clone();
    assert_eq!(results[0]["offset"], first["offset"], "{results}");
    assert_eq!(results[1]["offset"], 1, "{results}");
    // A client publish with a key, retried.
    let pub_k = |id: u64| json!({"op": "publish", "id": id, "channel": "chat:k", "data": 4, "idempotency_key": "c1"});
    let (r1, mut seen) = a.call_keep(pub_k(0)).await;
    let (r2, more) = a.call_keep(pub_k(0)).await;
    assert_eq!(r1["result"], r2["result"], "{r1} {r2}");
    assert_eq!(r1["result"]["offset"], 3);
    seen.extend(more);
    let mut offsets: Vec<Value> = seen
        .into_iter()
        .filter(|v| v["type"] == "pub")
        .map(|v| v["offset"].clone())
        .collect();
    while offsets.len() < 3 {
        offsets.push(a.recv_type("pub").await["offset"].clone());
    }
    assert_eq!(offsets, [json!(1), json!(2), json!(3)]);
    assert!(
        a.quiet_for(std::time::Duration::from_millis(300)).await,
        "no duplicate"
    );
    // Bad keys: 400 bad_request, nothing published.
    for bad in [
        "5",
        r#""""#,
        &format!(r#""{}""#, "x".repeat(129)),
        r#""tab\there""#,
    ] {
        let body = format!(r#"{{"channel": "chat:k", "data": 1, "idempotency_key": {bad}}}"#);
        let r = s.http("POST", "/api/publish", Some(&body)).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert_eq!(r.error_code(), "bad_request");
    }
    let h = s.http("GET", "/api/history/chat:k", None).await;
    assert_eq!(h.json()["offset"], 3, "nothing more was published");
}

#[tokio::test]
async fn publish_broadcast_and_history() {
    let s = TestServer::start(config()).await;
    let mut a = s.client("alice").await;
    a.subscribe("chat:a").await;
    a.subscribe("chat:b").await;
    let r = s.publish("chat:a", json!({"x": 1})).await;
    assert_eq!(r["offset"], 1);
    assert!(r["epoch"].is_string());
    let r = s
        .http(
            "POST",
            "/api/broadcast",
            Some(r#"{"channels": ["chat:a", "chat:b"], "data": {"y": 2}}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    let results = r.json()["results"].clone();
    assert_eq!(results[0]["channel"], "chat:a");
    assert_eq!(results[0]["offset"], 2);
    assert_eq!(results[1]["channel"], "chat:b");
    assert_eq!(results[1]["offset"], 1);
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = a.recv_type("pub").await;
        got.push((
            p["channel"].as_str().unwrap_or("").to_string(),
            p["offset"].as_u64(),
        ));
    }
    assert!(got.contains(&("chat:b".into(), Some(1))));
    let h = s
        .http("GET", "/api/history/chat:a?limit=1", None)
        .await
        .json();
    assert_eq!(h["offset"], 2);
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(1));
    assert_eq!(h["publications"][0]["data"]["y"], 2);
    let epoch = h["epoch"].as_str().unwrap_or_default().to_string();
    let h = s
        .http(
            "GET",
            &format!("/api/history/chat:a?since_offset=0&epoch={epoch}"),
            None,
        )
        .await
        .json();
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(2));
    let r = s.http("GET", "/api/history/chat:a?limit=many", None).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn online_presence_and_info() {
    let s = TestServer::start(config()).await;
    let mut a = s.client("alice").await;
    let _a2 = s.client("alice").await;
    let _b = s.client("bob").await;
    a.subscribe("chat:room").await;
    let o = s.http("GET", "/api/online", None).await.json();
    assert_eq!(o["count"], 2);
    assert_eq!(o["users"], json!(["alice", "bob"]));
    let p = s.http("GET", "/api/presence/chat:room", None).await.json();
    assert_eq!(p["clients"][0]["user"], "alice");
    assert_eq!(p["clients"][0]["client"], a.welcome["client"]);
    let i = s.http("GET", "/api/info", None).await.json();
    assert_eq!(i["nodes"][0]["name"], "n1");
    assert_eq!(i["nodes"][0]["connections"], 3);
    assert_eq!(i["nodes"][0]["subscriptions"], 4);
    let r = s.http("GET", "/api/nothing", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "not_found");
}

#[tokio::test]
async fn oversized_api_bodies_get_413() {
    let mut cfg = config();
    cfg.api.max_body_bytes = 1024;
    let s = TestServer::start(cfg).await;
    let body = json!({"channel": "chat:a", "data": "x".repeat(2000)}).to_string();
    let r = s.http("POST", "/api/publish", Some(&body)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "too_large");
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let s = TestServer::start(config()).await;
    let _a = s.client("alice").await;
    let h = s.http("GET", "/health", None).await.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["connections"], 1);
    assert!(h["open_fds"].as_u64().is_some_and(|n| n > 0));
    assert!(h["fd_limit"].as_u64().is_some_and(|n| n > 0));
    assert!(h["uptime_s"].is_u64());
    assert_eq!(s.http("GET", "/ready", None).await.status, 200);
    let m = s.http("GET", "/metrics", None).await.body;
    for name in [
        "switchboard_connections 1",
        "switchboard_subscriptions",
        "switchboard_messages_in_total",
        "switchboard_messages_out_total",
        "switchboard_fanout_seconds_bucket",
        "switchboard_slow_clients_total",
        "switchboard_reaped_total",
        "switchboard_open_fds",
        "switchboard_handshakes_rejected_total",
    ] {
        assert!(m.contains(name), "{name} missing from:\n{m}");
    }
}

#[tokio::test]
async fn odd_paths_and_queries_get_json_errors() {
    let s = TestServer::start(config()).await;
    for path in [
        "/api/history/chat:a?limit=1&limit=2",
        "/api/presence/%FF",
        "/api/history/%FF",
    ] {
        let r = s.http("GET", path, None).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.error_code(), "bad_request", "{path}");
    }
    let r = s.http("POST", "/health", Some("{}")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.error_code(), "bad_request");
}
