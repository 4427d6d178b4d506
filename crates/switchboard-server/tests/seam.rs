//! The subscribe path end to end: recovery without a reply id, replies
//! capped below the send queue, and a personal inbox recovered while
//! publications keep arriving.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn offsets(frames: &[serde_json::Value]) -> Vec<u64> {
    frames.iter().filter_map(|f| f["offset"].as_u64()).collect()
}

#[tokio::test]
async fn subscribe_with_since_and_no_id_delivers_what_it_recovered_as_pub_frames() {
    let s = TestServer::start(config()).await;
    let first = s.publish("chat:quiet", json!({"n": 1})).await;
    let epoch = first["epoch"].as_str().expect("epoch").to_string();
    for n in 2..=5 {
        s.publish("chat:quiet", json!({ "n": n })).await;
    }
    let mut c = s.client("alice").await;
    c.send(json!({"op": "subscribe", "channel": "chat:quiet",
                  "since": {"offset": 2, "epoch": epoch}}))
        .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(c.recv_type("pub").await);
    }
    assert_eq!(offsets(&got), [3, 4, 5]);
    s.publish("chat:quiet", json!({"n": 6})).await;
    assert_eq!(c.recv_type("pub").await["offset"], 6);

    // What cannot be recovered is said with `lost`, never left a silent hole.
    let mut d = s.client("bob").await;
    d.send(json!({"op": "subscribe", "channel": "chat:quiet",
                  "since": {"offset": 2, "epoch": "not-the-epoch"}}))
        .await;
    let lost = d.recv().await;
    assert_eq!(lost["type"], "lost", "{lost}");
    assert_eq!(lost["channel"], "chat:quiet");
    assert_eq!(lost["epoch"], first["epoch"]);
    assert_eq!(lost["offset"], 6);
    s.publish("chat:quiet", json!({"n": 7})).await;
    assert_eq!(d.recv_type("pub").await["offset"], 7);
}

#[tokio::test]
async fn a_history_larger_than_the_send_queue_never_closes_its_reader() {
    let mut cfg = config();
    cfg.ws.send_queue_max_bytes = 16 * 1024;
    cfg.api.max_body_bytes = 8 * 1024;
    let s = TestServer::start(cfg).await;
    let text = "x".repeat(1000);
    let mut epoch = String::new();
    // ~100 KiB of history: six times the send queue.
    for n in 0..100 {
        let r = s.publish("chat:big", json!({ "n": n, "text": text })).await;
        epoch = r["epoch"].as_str().expect("epoch").into();
    }
    let mut c = s.client("alice").await;
    // Recovery of all of it: more than fits, so `recovered: false`, no list.
    let r = c
        .call(json!({"op": "subscribe", "channel": "chat:big",
                     "since": {"offset": 0, "epoch": epoch}}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["recovered"], false);
    assert_eq!(r["result"]["offset"], 100);
    assert_eq!(r["result"]["publications"], json!([]));
    // History replies are cut to what fits: the latest without since...
    let r = c
        .call(json!({"op": "history", "channel": "chat:big", "limit": 100}))
        .await;
    let latest = offsets(r["result"]["publications"].as_array().expect("list"));
    assert!(!latest.is_empty() && latest.len() < 100, "{latest:?}");
    assert_eq!(latest.last(), Some(&100));
    // ...the first after since with it, so the client pages on.
    let r = c
        .call(json!({"op": "history", "channel": "chat:big",
                     "since": {"offset": 0, "epoch": epoch}}))
        .await;
    let first = offsets(r["result"]["publications"].as_array().expect("list"));
    assert_eq!(first.first(), Some(&1));
    assert!(first.len() < 100);
    // A recovery that fits is whole, and the client is still connected.
    let r = c
        .call(json!({"op": "subscribe", "channel": "chat:big",
                     "since": {"offset": 95, "epoch": epoch}}))
        .await;
    assert_eq!(r["result"]["recovered"], true);
    assert_eq!(
        offsets(r["result"]["publications"].as_array().expect("list")),
        [96, 97, 98, 99, 100]
    );
    let pong = c.call(json!({"op": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    assert!(c.quiet_for(Duration::from_millis(200)).await, "not closed");
}

#[tokio::test]
async fn a_personal_inbox_recovered_under_load_has_no_hole_and_no_duplicate() {
    let s = TestServer::start(config()).await;
    let mut c = s.client("carol").await;
    let first = s.publish("user:carol", json!({"n": 1})).await;
    assert_eq!(c.recv_type("pub").await["offset"], 1);
    // Publications keep coming from several publishers while the client
    // recovers its inbox from offset 1.
    let addr = s.addr;
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            tokio::spawn(async move {
                for n in 0..25 {
                    let body = json!({"channel": "user:carol", "data": {"p": p, "n": n}});
                    let r = http(
                        addr,
                        "POST",
                        "/api/publish",
                        &[("Authorization", &format!("Bearer {API_KEY}"))],
                        Some(&body.to_string()),
                    )
                    .await;
                    assert_eq!(r.status, 200, "{}", r.body);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (reply, before) = c
        .call_keep(json!({"op": "subscribe", "channel": "user:carol",
                          "since": {"offset": 1, "epoch": first["epoch"]}}))
        .await;
    for p in publishers {
        p.await.expect("publisher");
    }
    // Live ones before the reply, the reply's recovery (which may repeat
    // them: the client asked), then live ones after it, up to 101.
    let mut seen: Vec<u64> = offsets(&before);
    let recovered = offsets(reply["result"]["publications"].as_array().expect("list"));
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let at = reply["result"]["offset"].as_u64().expect("offset");
    assert_eq!(recovered, (2..=at).collect::<Vec<_>>());
    assert_eq!(seen, (2..2 + seen.len() as u64).collect::<Vec<_>>());
    seen.clear();
    let mut next = at + 1;
    while next <= 101 {
        let f = c.recv_type("pub").await;
        assert_eq!(f["offset"], next, "contiguous after the reply");
        next += 1;
    }
    assert!(
        c.quiet_for(Duration::from_millis(200)).await,
        "no duplicate"
    );
}
