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
