//! The gateway end to end on one node, over real sockets.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_server::config::Dur;

#[tokio::test]
async fn welcome_names_client_user_node_and_ping_interval() {
    let s = TestServer::start(config()).await;
    let c = s.client("alice").await;
    assert_eq!(c.welcome["user"], "alice");
    assert_eq!(c.welcome["node"], "n1");
    assert_eq!(c.welcome["ping_interval"], 30.0);
    assert!(
        c.welcome["client"]
            .as_str()
            .is_some_and(|id| id.starts_with("c-"))
    );
}

#[tokio::test]
async fn both_connections_of_a_user_get_a_personal_message_and_others_do_not() {
    let s = TestServer::start(config()).await;
    let mut a1 = s.client("alice").await;
    let mut a2 = s.client("alice").await;
    let mut b = s.client("bob").await;
    s.publish("user:alice", json!({"n": 1})).await;
    for a in [&mut a1, &mut a2] {
        let p = a.recv_type("pub").await;
        assert_eq!(p["channel"], "user:alice");
        assert_eq!(p["data"]["n"], 1);
        assert_eq!(p["offset"], 1);
        assert!(p.get("from").is_none());
    }
    assert!(b.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn two_hundred_publications_reach_three_subscribers_in_offset_order() {
    let s = TestServer::start(config()).await;
    let mut subs = Vec::new();
    for u in ["u1", "u2", "u3"] {
        let mut c = s.client(u).await;
        c.subscribe("chat:order").await;
        subs.push(c);
    }
    let mut publisher = s.client("pub").await;
    for i in 0..200 {
        publisher
            .send(json!({"op": "publish", "channel": "chat:order", "data": {"i": i}}))
            .await;
    }
    for c in &mut subs {
        for i in 0..200u64 {
            let p = c.recv_type("pub").await;
            assert_eq!(p["offset"], i + 1);
            assert_eq!(p["data"]["i"], i);
            assert_eq!(p["from"], "pub");
        }
    }
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_1013_while_others_get_everything() {
    let mut cfg = config();
    cfg.ws.send_queue_max_bytes = 256 * 1024;
    cfg.api.max_body_bytes = 255 * 1024;
    let s = TestServer::start(cfg).await;
    // The slow client: a tiny receive buffer, and nobody reads it.
    let slow_sock = tokio::net::TcpSocket::new_v4().expect("socket");
    slow_sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = slow_sock.connect(s.addr).await.expect("connect");
    let uri: http::Uri = format!("ws://{}/ws?token={}", s.addr, s.token("slow"))
        .parse()
        .expect("uri");
    let (mut slow_ws, _) = tokio_websockets::ClientBuilder::from_uri(uri)
        .connect_on(stream)
        .await
        .expect("upgrade");
    {
        use futures_util::{SinkExt, StreamExt};
        slow_ws
            .send(tokio_websockets::Message::text(
                json!({"op": "subscribe", "channel": "chat:flood", "id": 1}).to_string(),
            ))
            .await
            .expect("send");
        // welcome, then the reply
        for _ in 0..2 {
            let _ = slow_ws.next().await;
        }
    }
    let mut fast = Vec::new();
    for u in ["f1", "f2"] {
        let mut c = s.client(u).await;
        c.subscribe("chat:flood").await;
        fast.push(c);
    }
    // 8 MB in all: more than the kernel buffers of the slow socket can hold.
    let payload = "x".repeat(8 * 1024);
    let mut publisher = s.client("pub").await;
    let progress: Vec<_> = (0..2)
        .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)))
        .collect();
    let readers: Vec<_> = fast
        .into_iter()
        .zip(progress.clone())
        .map(|(mut c, done)| {
            tokio::spawn(async move {
                for i in 0..1000u64 {
                    let p = c.recv_type("pub").await;
                    assert_eq!(p["offset"], i + 1, "in order, no gaps");
                    done.store(i + 1, std::sync::atomic::Ordering::Release);
                }
            })
        })
        .collect();
    for i in 0..1000u64 {
        // Keep the healthy readers within 16 publications (128 KiB) of the
        // publisher: the test is about the slow one, not about test speed.
        while progress
            .iter()
            .any(|d| d.load(std::sync::atomic::Ordering::Acquire) + 16 < i)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        publisher
            .send(
                json!({"op": "publish", "channel": "chat:flood", "data": {"i": i, "pad": payload}}),
            )
            .await;
    }
    for r in readers {
        r.await.expect("fast subscriber got all 1000 in order");
    }
    // Now read the slow client: what the kernel buffered, then the close.
    let code = {
        use futures_util::StreamExt;
        let mut code = None;
        let mut frames = 0;
        loop {
            let r = tokio::time::timeout(WAIT, slow_ws.next()).await;
            match r {
                Ok(Some(Ok(m))) => {
                    frames += 1;
                    if let Some((c, _)) = m.as_close() {
                        code = Some(u16::from(c));
                        break;
                    }
                }
                other => {
                    eprintln!("slow client: after {frames} frames: {other:?}");
                    break;
                }
            }
        }
        code
    };
    assert_eq!(code, Some(1013));
    let metrics = s.http("GET", "/metrics", None).await.body;
    assert!(
        metrics.contains("switchboard_slow_clients_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_silent_client_is_reaped_within_the_heartbeat_bound_and_a_live_one_stays() {
    let mut cfg = config();
    cfg.ws.ping_interval = Dur(Duration::from_millis(300));
    cfg.ws.ping_timeout = Dur(Duration::from_millis(300));
    let s = TestServer::start(cfg).await;
    let mut live = s.client("live").await;
    live.subscribe("chat:room").await;
    // A hand-rolled client: upgrade, subscribe, then silence (no pongs).
    let mut zombie = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let path = format!("/ws?token={}", s.token("zombie"));
        zombie
            .write_all(&upgrade_request(s.addr, &path, &[]))
            .await
            .expect("write");
        let mut buf = [0u8; 1024];
        let n = zombie.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
        let cmd = json!({"op": "subscribe", "channel": "chat:room"}).to_string();
        zombie
            .write_all(&masked_text_frame(cmd.as_bytes()))
            .await
            .expect("write");
    }
    // A subscriber sees its own join first, then the zombie's.
    assert_eq!(live.recv_type("join").await["user"], "live");
    assert_eq!(live.recv_type("join").await["user"], "zombie");
    let started = std::time::Instant::now();
    // The live client answers pings because it keeps reading.
    let leave = live.recv_type("leave").await;
    let took = started.elapsed();
    assert_eq!(leave["user"], "zombie");
    // bound: ping_interval + ping_timeout (600 ms) plus one sweep tick and slack
    assert!(took < Duration::from_millis(1500), "reaped after {took:?}");
    let health = s.http("GET", "/health", None).await.json();
    assert_eq!(health["connections"], 1);
    let presence = s.http("GET", "/api/presence/chat:room", None).await.json();
    let users: Vec<&str> = presence["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["user"].as_str())
        .collect();
    assert_eq!(users, vec!["live"]);
    // Long after the bound, the live client is still there.
    assert!(live.quiet_for(Duration::from_millis(1200)).await);
    let r = live.call(json!({"op": "ping"})).await;
    assert_eq!(r["type"], "pong");
    let metrics = s.http("GET", "/metrics", None).await.body;
    assert!(metrics.contains("switchboard_reaped_total 1"), "{metrics}");
    drop(zombie);
}

#[tokio::test]
async fn bad_frames_get_bad_request_and_the_connection_lives_on() {
    let s = TestServer::start(config()).await;
    let mut c = s.client("alice").await;
    c.send_text("not json").await;
    let e = c.recv().await;
    assert_eq!(e["ok"], false);
    assert_eq!(e["error"]["code"], "bad_request");
    assert!(e.get("id").is_none());
    c.send(json!({"op": "fly", "id": 9})).await;
    let e = c.recv().await;
    assert_eq!(e["id"], 9);
    assert_eq!(e["error"]["code"], "bad_request");
    c.send(json!({"op": "subscribe", "id": 10, "channel": "bad channel!"}))
        .await;
    assert_eq!(c.recv().await["error"]["code"], "bad_request");
    c.send(json!({"op": "ping", "id": 11})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": 11}));
    c.send(json!({"op": "ping"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn every_command_answers_with_its_id() {
    let s = TestServer::start(config()).await;
    let mut a = s.client("alice").await;
    let r = a.subscribe("chat:x").await;
    assert_eq!(r["offset"], 0);
    assert_eq!(r["recovered"], false);
    assert_eq!(r["publications"], json!([]));
    let (r, pushes) = a
        .call_keep(json!({"op": "publish", "channel": "chat:x", "data": {"hi": 1}}))
        .await;
    assert_eq!(r["ok"], true);
    assert_eq!(r["result"]["offset"], 1);
    let epoch = r["result"]["epoch"].as_str().expect("epoch").to_string();
    let p = pushes
        .iter()
        .find(|p| p["type"] == "pub")
        .expect("a subscriber receives its own publications");
    assert_eq!(p["from"], "alice");
    let r = a.call(json!({"op": "presence", "channel": "chat:x"})).await;
    let clients = r["result"]["clients"].as_array().expect("clients").clone();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["user"], "alice");
    assert_eq!(clients[0]["info"]["name"], "alice");
    assert_eq!(clients[0]["node"], "n1");
    let r = a.call(json!({"op": "history", "channel": "chat:x"})).await;
    assert_eq!(r["result"]["offset"], 1);
    assert_eq!(r["result"]["epoch"], epoch.as_str());
    assert_eq!(r["result"]["publications"][0]["data"]["hi"], 1);
    let r = a
        .call(json!({"op": "unsubscribe", "channel": "chat:x"}))
        .await;
    assert_eq!(r["ok"], true);
    a.call(json!({"op": "publish", "channel": "chat:x", "data": 2}))
        .await;
    assert!(
        a.quiet_for(Duration::from_millis(200)).await,
        "no pushes after unsubscribe"
    );
    let r = a
        .call(json!({"op": "refresh", "token": token("alice", 7200, &[])}))
        .await;
    assert_eq!(r["ok"], true);
    let r = a
        .call(json!({"op": "refresh", "token": token("bob", 7200, &[])}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden");
}

#[tokio::test]
async fn permissions_follow_namespaces_and_claims_without_revealing_channels() {
    let s = TestServer::start(config()).await;
    let mut a = s.client("alice").await;
    for (cmd, code) in [
        (
            json!({"op": "subscribe", "channel": "user:bob"}),
            "forbidden",
        ),
        (
            json!({"op": "publish", "channel": "user:alice", "data": 1}),
            "forbidden",
        ),
        (
            json!({"op": "publish", "channel": "news", "data": 1}),
            "forbidden",
        ),
        (
            json!({"op": "subscribe", "channel": "vip:lounge"}),
            "forbidden",
        ),
        (json!({"op": "presence", "channel": "news"}), "forbidden"),
        (json!({"op": "history", "channel": "news"}), "forbidden"),
    ] {
        let r = a.call(cmd.clone()).await;
        assert_eq!(r["error"]["code"], code, "{cmd}");
    }
    let vip = token("carol", 3600, &["vip:*"]);
    let mut c = Client::connect(s.addr, &vip).await;
    c.subscribe("vip:lounge").await;
    // A channel without a namespace allows subscribe only.
    a.subscribe("news").await;
    s.publish("news", json!("hello")).await;
    assert_eq!(a.recv_type("pub").await["data"], "hello");
}

#[tokio::test]
async fn subscribe_with_since_recovers_exactly_the_missed_range() {
    let s = TestServer::start(config()).await;
    let mut a = s.client("alice").await;
    a.subscribe("chat:r").await;
    for i in 0..3 {
        s.publish("chat:r", json!(i)).await;
    }
    let mut last = serde_json::Value::Null;
    for _ in 0..3 {
        last = a.recv_type("pub").await;
    }
    let epoch = last["epoch"].as_str().expect("epoch").to_string();
    drop(a);
    for i in 3..6 {
        s.publish("chat:r", json!(i)).await;
    }
    let mut a = s.client("alice").await;
    let r = a
        .call(
            json!({"op": "subscribe", "channel": "chat:r", "since": {"offset": 3, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["result"]["recovered"], true);
    let offsets: Vec<u64> = r["result"]["publications"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, vec![4, 5, 6]);
    s.publish("chat:r", json!(6)).await;
    assert_eq!(a.recv_type("pub").await["offset"], 7);
    let r = a
        .call(json!({"op": "subscribe", "channel": "chat:r", "since": {"offset": 3, "epoch": "other"}}))
        .await;
    assert_eq!(r["result"]["recovered"], false);
    assert_eq!(r["result"]["offset"], 7);
    assert_eq!(r["result"]["epoch"], epoch.as_str());
}

#[tokio::test]
async fn the_personal_inbox_recovers_what_was_sent_while_offline() {
    let s = TestServer::start(config()).await;
    let first = s.publish("user:dave", json!({"n": 1})).await;
    let epoch = first["epoch"].as_str().expect("epoch").to_string();
    s.publish("user:dave", json!({"n": 2})).await;
    let mut d = s.client("dave").await;
    let r = d
        .call(json!({"op": "subscribe", "channel": "user:dave", "since": {"offset": 0, "epoch": epoch}}))
        .await;
    assert_eq!(r["result"]["recovered"], true);
    assert_eq!(
        r["result"]["publications"].as_array().map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn join_and_leave_are_pushed_and_presence_follows() {
    let s = TestServer::start(config()).await;
    let mut a = s.client("alice").await;
    a.subscribe("chat:p").await;
    let mut b = s.client("bob").await;
    b.subscribe("chat:p").await;
    assert_eq!(a.recv_type("join").await["user"], "alice");
    let j = a.recv_type("join").await;
    assert_eq!(j["user"], "bob");
    assert_eq!(j["info"]["name"], "bob");
    assert_eq!(j["client"], b.welcome["client"]);
    let online = s.http("GET", "/api/online", None).await.json();
    assert_eq!(online["count"], 2);
    drop(b);
    let l = a.recv_type("leave").await;
    assert_eq!(l["user"], "bob");
    let p = s.http("GET", "/api/presence/chat:p", None).await.json();
    assert_eq!(p["clients"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn text_frames_become_chat_on_the_text_channel() {
    let mut cfg = config();
    cfg.text_channel = "chat:lobby".into();
    let s = TestServer::start(cfg).await;
    let mut a = s.client("alice").await;
    a.subscribe("chat:lobby").await;
    a.send_text("hello everyone").await;
    let p = a.recv_type("pub").await;
    assert_eq!(p["data"], json!({"text": "hello everyone"}));
    assert_eq!(p["from"], "alice");
}

#[tokio::test]
async fn a_frame_over_max_message_size_closes_1009() {
    let mut cfg = config();
    cfg.ws.max_message_size = 1024;
    let s = TestServer::start(cfg).await;
    let mut a = s.client("alice").await;
    a.send_text(&"x".repeat(2048)).await;
    assert_eq!(a.close_code().await, Some(1009));
}

#[tokio::test]
async fn a_flooding_client_gets_rate_limited_then_closed_1008() {
    let mut cfg = config();
    cfg.limits.messages_per_second = 20;
    let s = TestServer::start(cfg).await;
    let mut a = s.client("alice").await;
    let start = std::time::Instant::now();
    let mut limited = false;
    let code = loop {
        a.send(json!({"op": "ping", "id": 1})).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        // drain what arrived without blocking long
        let mut closed = None;
        while let Ok(Some(Ok(m))) = tokio::time::timeout(
            Duration::from_millis(1),
            futures_util::StreamExt::next(&mut a.ws),
        )
        .await
        {
            if m.as_text().is_some_and(|t| t.contains("rate_limited")) {
                limited = true;
            }
            if let Some((c, _)) = m.as_close() {
                closed = Some(u16::from(c));
            }
        }
        if let Some(c) = closed {
            break c;
        }
        assert!(start.elapsed() < Duration::from_secs(8), "not closed");
    };
    assert!(limited, "rate_limited replies came first");
    assert_eq!(code, 1008);
}

#[tokio::test]
async fn api_disconnect_closes_every_connection_of_the_user_with_4000() {
    let s = TestServer::start(config()).await;
    let mut b1 = s.client("bob").await;
    let mut b2 = s.client("bob").await;
    let mut a = s.client("alice").await;
    let r = s
        .http("POST", "/api/disconnect", Some(r#"{"user":"bob"}"#))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["disconnected"], 2);
    for b in [&mut b1, &mut b2] {
        let d = b.recv_type("disconnect").await;
        assert_eq!(d["code"], 4000);
        assert_eq!(b.close_code().await, Some(4000));
    }
    assert_eq!(a.call(json!({"op": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn shutdown_closes_clients_1001_and_ready_turns_503() {
    let mut s = TestServer::start(config()).await;
    assert_eq!(s.http("GET", "/ready", None).await.status, 200);
    let mut a = s.client("alice").await;
    s.state
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(s.http("GET", "/ready", None).await.status, 503);
    s.shutdown().await;
    assert_eq!(a.close_code().await, Some(1001));
}

#[tokio::test]
async fn a_client_cannot_hold_more_than_max_channels() {
    let mut cfg = config();
    cfg.limits.max_channels_per_client = 3;
    let s = TestServer::start(cfg).await;
    let mut a = s.client("alice").await;
    // the personal channel counts: two more fit
    a.subscribe("chat:1").await;
    a.subscribe("chat:2").await;
    let r = a
        .call(json!({"op": "subscribe", "channel": "chat:3"}))
        .await;
    assert_eq!(r["error"]["code"], "limit_exceeded");
    // subscribing again to a channel one is in is still allowed
    a.subscribe("chat:1").await;
    a.call(json!({"op": "unsubscribe", "channel": "chat:2"}))
        .await;
    a.subscribe("chat:3").await;
}

#[tokio::test]
async fn a_kicked_client_leaves_presence_with_a_leave_push() {
    let s = TestServer::start(config()).await;
    let mut a = s.client("alice").await;
    a.subscribe("chat:k").await;
    let mut b = s.client("bob").await;
    b.subscribe("chat:k").await;
    assert_eq!(a.recv_type("join").await["user"], "alice");
    assert_eq!(a.recv_type("join").await["user"], "bob");
    let r = s
        .http("POST", "/api/disconnect", Some(r#"{"user":"bob"}"#))
        .await;
    assert_eq!(r.status, 200);
    let l = a.recv_type("leave").await;
    assert_eq!(l["user"], "bob");
    assert_eq!(l["client"], b.welcome["client"]);
    let p = s.http("GET", "/api/presence/chat:k", None).await.json();
    let users: Vec<&str> = p["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["user"].as_str())
        .collect();
    assert_eq!(users, vec!["alice"]);
    assert_eq!(b.close_code().await, Some(4000));
}

#[tokio::test]
async fn commands_before_a_protocol_error_are_answered_then_the_client_is_closed_1002() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start(config()).await;
    let mut sock = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    let path = format!("/ws?token={}", s.token("alice"));
    // The upgrade, a ping command and an unmasked (illegal) frame, in one write.
    let mut bytes = upgrade_request(s.addr, &path, &[]);
    bytes.extend(masked_text_frame(br#"{"op":"ping","id":5}"#));
    bytes.extend([0x81, 0x01, b'x']);
    sock.write_all(&bytes).await.expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains(r#"{"type":"pong","id":5}"#), "{text}");
    // the close frame: opcode 0x88, then the code 1002 (0x03ea)
    let close = got
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xea);
    assert!(close, "no close 1002 in {got:?}");
}
