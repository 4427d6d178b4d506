//! The node's subscribe path against concurrent removal.

use std::collections::HashMap;

use super::*;
use crate::broker::MemoryBroker;
use crate::client::Out;
use crate::history::MemoryHistory;
use crate::namespace::NamespacePolicy;
use crate::presence::MemoryPresence;
use crate::testkit::broker::{Tap, Tapped};

/// A subscribe races its client's removal (a close while the history read
/// and the join push are under way): whatever the interleaving, every join
/// push is followed by that client's leave push, never the other way round,
/// and nothing of it is left in the hub or presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscribe_racing_removal_never_sends_a_join_without_its_leave() {
    let broker = Arc::new(Tapped {
        inner: Arc::new(MemoryBroker::new(Arc::new(MemoryHistory::new()))),
        tap: Arc::new(Tap::default()),
    });
    broker.tap.jitter(true);
    let node = Node::new(
        NodeOptions {
            namespaces: Namespaces::new([NamespacePolicy {
                name: "room".into(),
                presence: true,
                join_leave: true,
                history_size: 10,
                history_ttl: Duration::from_secs(60),
                ..Default::default()
            }]),
            max_connections_per_user: 1000,
            ..Default::default()
        },
        broker,
        Arc::new(MemoryPresence::default()),
    );
    let ch = ChannelName::parse("room:race").expect("valid");
    let observer = node
        .connect(ClientInit {
            user: "observer".into(),
            ..Default::default()
        })
        .expect("room");
    node.subscribe(&observer, Some(1), &ch, None)
        .await
        .expect("observer subscribes");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let node = node.clone();
            let ch = ch.clone();
            tokio::spawn(async move {
                let c = node
                    .connect(ClientInit {
                        user: format!("u{i}"),
                        ..Default::default()
                    })
                    .expect("room");
                let subscribing = {
                    let (node, c, ch) = (node.clone(), c.clone(), ch.clone());
                    tokio::spawn(async move {
                        let _ = node.subscribe(&c, Some(1), &ch, None).await;
                    })
                };
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..4000))).await;
                node.remove_client(&c).await;
                subscribing.await.expect("subscribe task");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    // Pushes may still be on their way (the tap delays them).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for out in observer.outbox.take().0 {
        let Out::Frame(bytes) = out else { continue };
        let f: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        if let Some(t @ ("join" | "leave")) = f["type"].as_str()
            && f["user"] != "observer"
        {
            seen.entry(f["client"].to_string())
                .or_default()
                .push(t.to_string());
        }
    }
    let joined = seen.values().filter(|s| !s.is_empty()).count();
    for (client, pushes) in &seen {
        assert_eq!(pushes, &["join", "leave"], "client {client}");
    }
    assert!(joined > 0, "some subscribes completed before their removal");
    assert_eq!(
        node.hub.subscriber_count(&ch),
        1,
        "only the observer is left"
    );
    let present = node.presence(&ch).await.expect("presence");
    assert_eq!(present.len(), 1, "{present:?}");
}

// The drain and refresh paths.

fn plain_node() -> Arc<Node> {
    Node::new(
        NodeOptions::default(),
        Arc::new(MemoryBroker::new(Arc::new(MemoryHistory::new()))),
        Arc::new(MemoryPresence::default()),
    )
}

fn init(user: &str) -> ClientInit {
    ClientInit {
        user: user.into(),
        ..Default::default()
    }
}

/// The race of a handshake with SIGTERM, made deterministic: the
/// handshake passed its check, the drain began, then the client connects.
#[tokio::test]
async fn a_client_connecting_after_the_drain_began_is_closed_1001() {
    let node = plain_node();
    let before = node.connect(init("a")).expect("connect");
    node.drain(Disconnect::SHUTDOWN).await;
    assert_eq!(before.outbox.closing(), Some(Disconnect::SHUTDOWN));
    let late = node.connect(init("b")).expect("connect");
    assert_eq!(late.outbox.closing(), Some(Disconnect::SHUTDOWN));
    // It leaves the hub as every drained client does.
    for _ in 0..100 {
        if node.hub.connection_count() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(node.hub.connection_count(), 0);
}

#[tokio::test]
async fn a_refresh_for_another_user_changes_nothing() {
    let node = plain_node();
    let c = node
        .connect(ClientInit {
            user: "a".into(),
            channels: vec!["vip:*".into()],
            expires_at: 100,
            ..Default::default()
        })
        .expect("connect");
    let err = node
        .refresh(
            &c,
            ClientInit {
                user: "b".into(),
                expires_at: 200,
                ..Default::default()
            },
        )
        .expect_err("another user");
    assert_eq!(err.code, ErrorCode::Forbidden);
    assert_eq!(c.expires_at(), 100);
    assert_eq!(&*c.claims().channels, ["vip:*".to_string()]);
    node.refresh(
        &c,
        ClientInit {
            user: "a".into(),
            info: Some("{\"v\":2}".into()),
            expires_at: 200,
            ..Default::default()
        },
    )
    .expect("same user");
    assert_eq!(c.expires_at(), 200);
    assert!(c.claims().channels.is_empty());
    assert_eq!(c.claims().info.as_deref(), Some("{\"v\":2}"));
}
