//! The [`PresenceStore`] contract, for any implementation. Each check takes a
//! fresh store from the factory and uses channels of its own (with a random
//! part, so a shared backend such as Redis can serve repeated runs).

use std::future::Future;
use std::sync::Arc;

use switchboard_protocol::ChannelName;

use crate::presence::{PresenceEntry, PresenceStore};

fn channel(check: &str) -> ChannelName {
    ChannelName::parse(&format!(
        "conformance:presence-{check}-{:08x}",
        fastrand::u32(..)
    ))
    .expect("valid channel name")
}

fn entry(user: &str, client: &str) -> PresenceEntry {
    PresenceEntry {
        user: user.into(),
        client: client.into(),
        info: serde_json::json!({ "name": user }),
        node: "n1".into(),
    }
}

/// Runs every check, each on a store from `make`.
pub async fn presence_conformance<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn PresenceStore>>,
{
    entries_come_and_go(&*make().await).await;
    entries_are_ordered_by_client(&*make().await).await;
    removal_is_idempotent_and_adding_twice_replaces(&*make().await).await;
    channels_are_independent(&*make().await).await;
    concurrent_adds_and_removes_settle(make().await).await;
    remove_many_takes_a_client_out_of_every_channel(&*make().await).await;
    connections_are_counted_per_user_and_online(&*make().await).await;
}

/// `remove_many` leaves the client's other channels and other clients alone.
pub async fn remove_many_takes_a_client_out_of_every_channel(store: &dyn PresenceStore) {
    let chs: Vec<ChannelName> = (0..5).map(|i| channel(&format!("many{i}"))).collect();
    for ch in &chs {
        store.add(ch, entry("a", "c-1")).await.expect("add");
        store.add(ch, entry("b", "c-2")).await.expect("add");
    }
    store
        .remove_many("c-1", &chs[..4])
        .await
        .expect("remove_many");
    for ch in &chs[..4] {
        assert_eq!(store.get(ch).await.expect("get"), vec![entry("b", "c-2")]);
    }
    assert_eq!(store.get(&chs[4]).await.expect("get").len(), 2);
    store.remove_many("c-1", &[]).await.expect("nothing");
}

/// Each user's connections are counted; a user is online while it has one.
pub async fn connections_are_counted_per_user_and_online(store: &dyn PresenceStore) {
    let tag = format!("{:08x}", fastrand::u32(..));
    let (a, b) = (format!("a-{tag}"), format!("b-{tag}"));
    assert_eq!(store.user_connections(&a).await.expect("count"), 0);
    assert_eq!(store.add_connection(&a, "c-1").await.expect("add"), 1);
    assert_eq!(store.add_connection(&a, "c-2").await.expect("add"), 2);
    assert_eq!(store.add_connection(&a, "c-2").await.expect("again"), 2);
    assert_eq!(store.add_connection(&b, "c-3").await.expect("add"), 1);
    assert_eq!(store.user_connections(&a).await.expect("count"), 2);
    let online = store.online().await.expect("online");
    assert!(online.contains(&a) && online.contains(&b), "{online:?}");
    assert!(
        online.windows(2).all(|w| w[0] <= w[1]),
        "sorted: {online:?}"
    );
    store.remove_connection(&a, "c-1").await.expect("remove");
    assert_eq!(store.user_connections(&a).await.expect("count"), 1);
    store.remove_connection(&a, "c-2").await.expect("remove");
    store.remove_connection(&a, "c-2").await.expect("again");
    assert_eq!(store.user_connections(&a).await.expect("count"), 0);
    let online = store.online().await.expect("online");
    assert!(!online.contains(&a) && online.contains(&b), "{online:?}");
    store.remove_connection(&b, "c-3").await.expect("remove");
}

/// What is added is read back as it was; what is removed is gone.
pub async fn entries_come_and_go(store: &dyn PresenceStore) {
    let ch = channel("come-go");
    assert!(store.get(&ch).await.expect("get").is_empty());
    let e = entry("alice", "c-1");
    store.add(&ch, e.clone()).await.expect("add");
    assert_eq!(store.get(&ch).await.expect("get"), vec![e]);
    store.remove(&ch, "c-1").await.expect("remove");
    assert!(store.get(&ch).await.expect("get").is_empty());
}

/// `get` lists entries ordered by client id.
pub async fn entries_are_ordered_by_client(store: &dyn PresenceStore) {
    let ch = channel("order");
    for c in ["c-3", "c-1", "c-2"] {
        store.add(&ch, entry("u", c)).await.expect("add");
    }
    let clients: Vec<String> = store
        .get(&ch)
        .await
        .expect("get")
        .into_iter()
        .map(|e| e.client)
        .collect();
    assert_eq!(clients, ["c-1", "c-2", "c-3"]);
}

/// Removing an absent client changes nothing; adding a client again keeps one entry.
pub async fn removal_is_idempotent_and_adding_twice_replaces(store: &dyn PresenceStore) {
    let ch = channel("idempotent");
    store.remove(&ch, "c-9").await.expect("remove of nothing");
    store.add(&ch, entry("a", "c-1")).await.expect("add");
    let mut again = entry("a", "c-1");
    again.info = serde_json::json!({ "v": 2 });
    store.add(&ch, again.clone()).await.expect("add again");
    assert_eq!(store.get(&ch).await.expect("get"), vec![again]);
    store.remove(&ch, "c-1").await.expect("remove");
    store.remove(&ch, "c-1").await.expect("remove again");
    assert!(store.get(&ch).await.expect("get").is_empty());
}

/// Each channel has its own entries.
pub async fn channels_are_independent(store: &dyn PresenceStore) {
    let (a, b) = (channel("independent-a"), channel("independent-b"));
    store.add(&a, entry("x", "c-1")).await.expect("add");
    store.add(&b, entry("y", "c-2")).await.expect("add");
    store.remove(&a, "c-2").await.expect("remove elsewhere");
    assert_eq!(store.get(&a).await.expect("get"), vec![entry("x", "c-1")]);
    assert_eq!(store.get(&b).await.expect("get"), vec![entry("y", "c-2")]);
}

/// Many clients joining and leaving one channel at once: what is left is
/// exactly those that stayed.
pub async fn concurrent_adds_and_removes_settle(store: Arc<dyn PresenceStore>) {
    let ch = channel("concurrent");
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            let ch = ch.clone();
            tokio::spawn(async move {
                let client = format!("c-{i:03}");
                for _ in 0..5 {
                    store
                        .add(&ch, entry(&format!("u{i}"), &client))
                        .await
                        .expect("add");
                    tokio::task::yield_now().await;
                    store.remove(&ch, &client).await.expect("remove");
                }
                if i % 2 == 0 {
                    store
                        .add(&ch, entry(&format!("u{i}"), &client))
                        .await
                        .expect("add");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let clients: Vec<String> = store
        .get(&ch)
        .await
        .expect("get")
        .into_iter()
        .map(|e| e.client)
        .collect();
    let want: Vec<String> = (0..64)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("c-{i:03}"))
        .collect();
    assert_eq!(clients, want);
}

/// Records the join and leave pushes a broker hands its node.
#[derive(Default)]
struct Pushes(parking_lot::Mutex<Vec<(String, String)>>);

impl crate::broker::BrokerEvents for Pushes {
    fn on_publication(&self, _publication: Arc<switchboard_protocol::Publication>) {}
    fn on_push(&self, _channel: &ChannelName, frame: bytes::Bytes) {
        let v: serde_json::Value = serde_json::from_slice(&frame).expect("push is JSON");
        let kind = v["type"].as_str().unwrap_or_default().to_string();
        let client = v["client"].as_str().unwrap_or_default().to_string();
        self.0.lock().push((client, kind));
    }
    fn on_control(&self, _message: crate::broker::ControlMessage) {}
    fn on_resync(&self) {}
}

/// `join` and `leave` put the entry and its push in one step: clients
/// joining and leaving one channel at once (a caller may cut the store's
/// connections meanwhile, so that steps fail half-way), each doing what the
/// node does on a failure (a failed join is undone with a leave, a failed
/// leave is tried again). Once everything has arrived, a client is present
/// exactly when its last push is a join, and its pushes alternate join,
/// leave, starting with a join. Two separate steps (add, then push) fail it
/// as soon as a connection drops between them.
///
/// `broker` must be fresh (this binds it) and deliver the store's pushes.
pub async fn join_and_leave_carry_their_pushes(
    store: Arc<dyn PresenceStore>,
    broker: Arc<dyn crate::Broker>,
) {
    use switchboard_protocol::frame;
    let ch = channel("announce");
    let pushes = Arc::new(Pushes::default());
    broker.bind(pushes.clone());
    broker.subscribe(&ch).await.expect("subscribe");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, broker, ch) = (store.clone(), broker.clone(), ch.clone());
            tokio::spawn(async move {
                let (user, client) = (format!("u{i}"), format!("c-{i:03}"));
                let leave = || async {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while let Err(e) = store
                        .leave(&ch, &client, frame::leave(&ch, &user, &client), &*broker)
                        .await
                    {
                        assert!(std::time::Instant::now() < deadline, "leave: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                };
                for round in 0..12 {
                    let join = frame::join(&ch, &user, &client, None);
                    if store
                        .join(&ch, entry(&user, &client), join, &*broker)
                        .await
                        .is_err()
                    {
                        leave().await;
                        continue;
                    }
                    tokio::task::yield_now().await;
                    if round == 11 && i % 2 == 0 {
                        break; // stays
                    }
                    leave().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    // Pushes travel after their step: wait for them to agree.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let present: std::collections::BTreeSet<String> = match store.get(&ch).await {
            Ok(entries) => entries.into_iter().map(|e| e.client).collect(),
            Err(_) => Default::default(),
        };
        let (announced, order_ok) = {
            let seen = pushes.0.lock();
            let mut last: std::collections::BTreeMap<&str, &str> = Default::default();
            let mut order_ok = Ok(());
            for (client, kind) in seen.iter() {
                let before = last.insert(client, kind).unwrap_or("leave");
                if before == kind.as_str() && order_ok.is_ok() {
                    order_ok = Err(format!("{client}: {kind} after {before}"));
                }
            }
            let announced: std::collections::BTreeSet<String> = last
                .into_iter()
                .filter(|(_, k)| *k == "join")
                .map(|(c, _)| c.to_string())
                .collect();
            (announced, order_ok)
        };
        if let Err(e) = order_ok {
            panic!("pushes out of step: {e}");
        }
        if present == announced {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "present {present:?} but announced {announced:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = broker.unsubscribe(&ch).await;
}
