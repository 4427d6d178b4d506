//! The [`Broker`] contract, checked through a [`Node`] the way clients see
//! it: offsets, delivery in order without gaps or duplicates under
//! concurrent publishers and subscribers, gap filling from history, `lost`
//! when the range is gone, resync, pushes and control messages.
//!
//! Each check takes a fresh broker from the factory (call
//! [`broker_conformance`] for all of them) and channels with a random part,
//! so a shared backend (Redis) can serve repeated runs. Between the broker
//! and the node sits a [`Tap`], which can withhold chosen publications (as a
//! dropped pub/sub connection would) and raise a resync. Run it on a
//! multi-thread runtime: the concurrency check needs real parallelism.

use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use switchboard_protocol::{ChannelName, IdempotencyKey, Op, Publication, StreamPosition};

use crate::broker::{Broker, BrokerError, BrokerEvents, BrokerHealth, ControlMessage};
use crate::client::{ClientHandle, ClientInit, Out};
use crate::disconnect::Disconnect;
use crate::history::{HistoryQuery, HistoryRead, Retention, Sweep, Swept};
use crate::idempotency::Idempotency;
use crate::namespace::{NamespacePolicy, Namespaces};
use crate::node::{Node, NodeOptions};
use crate::presence::MemoryPresence;

/// Channels of this namespace keep 10,000 publications.
pub const NAMESPACE: &str = "conformance";
/// Channels of this namespace keep 2.
pub const TINY_NAMESPACE: &str = "conformance_tiny";

/// How long a check waits for a delivery it expects.
const PATIENCE: Duration = Duration::from_secs(10);

/// The suite's namespaces.
pub fn namespaces() -> Namespaces {
    let policy = |name: &str, history_size| NamespacePolicy {
        name: name.into(),
        publish: true,
        presence: true,
        history_size,
        history_ttl: Duration::from_secs(600),
        ..Default::default()
    };
    Namespaces::new([policy(NAMESPACE, 10_000), policy(TINY_NAMESPACE, 2)])
}

/// A channel of `namespace` for `check`, unique to this run.
pub fn channel(namespace: &str, check: &str) -> ChannelName {
    ChannelName::parse(&format!("{namespace}:{check}-{:08x}", fastrand::u32(..)))
        .expect("valid channel name")
}

/// Sits between a broker and its node: forwards everything but the
/// publications it was told to withhold.
#[derive(Default)]
pub struct Tap {
    node: OnceLock<Arc<dyn BrokerEvents>>,
    withheld: Mutex<Vec<(ChannelName, RangeInclusive<u64>)>>,
    /// Delays a quarter of the publications by up to 2 ms (so they arrive
    /// out of order), each history read by up to 2 ms before and after (so
    /// publications arrive while a subscriber's read is under way), and each
    /// push by up to 2 ms.
    jitter: AtomicBool,
}

impl Tap {
    /// Publications of `channel` with an offset in `offsets` never reach the node.
    pub fn withhold(&self, channel: &ChannelName, offsets: RangeInclusive<u64>) {
        self.withheld.lock().push((channel.clone(), offsets));
    }

    /// Turns on the delays of [`Tap::jitter`]: a slow network, nothing lost.
    pub fn jitter(&self, on: bool) {
        self.jitter.store(on, Ordering::Relaxed);
    }

    async fn delay(&self) {
        if self.jitter.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_micros(fastrand::u64(0..2000))).await;
        }
    }

    /// Tells the node it may have missed publications (as a broker does
    /// after its pub/sub connection came back).
    pub fn resync(&self) {
        if let Some(node) = self.node.get() {
            node.on_resync();
        }
    }
}

impl BrokerEvents for Tap {
    fn on_publication(&self, publication: Arc<Publication>) {
        let withheld = self
            .withheld
            .lock()
            .iter()
            .any(|(c, r)| *c == publication.channel && r.contains(&publication.offset));
        let Some(node) = self.node.get().filter(|_| !withheld) else {
            return;
        };
        if self.jitter.load(Ordering::Relaxed) && fastrand::u8(..4) == 0 {
            let node = node.clone();
            let late = Duration::from_micros(fastrand::u64(0..2000));
            tokio::spawn(async move {
                tokio::time::sleep(late).await;
                node.on_publication(publication);
            });
        } else {
            node.on_publication(publication);
        }
    }

    fn on_push(&self, channel: &ChannelName, frame: Bytes) {
        if let Some(node) = self.node.get() {
            node.on_push(channel, frame);
        }
    }

    fn on_control(&self, message: ControlMessage) {
        if let Some(node) = self.node.get() {
            node.on_control(message);
        }
    }

    fn on_resync(&self) {
        self.resync();
    }
}

/// A broker whose deliveries go through a [`Tap`].
pub struct Tapped {
    pub inner: Arc<dyn Broker>,
    pub tap: Arc<Tap>,
}

#[async_trait]
impl Broker for Tapped {
    fn bind(&self, events: Arc<dyn BrokerEvents>) {
        let _ = self.tap.node.set(events);
        self.inner.bind(self.tap.clone());
    }
    async fn subscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        self.inner.subscribe(channel).await
    }
    async fn unsubscribe(&self, channel: &ChannelName) -> Result<(), BrokerError> {
        self.inner.unsubscribe(channel).await
    }
    async fn publish(
        &self,
        channel: &ChannelName,
        data: Bytes,
        from: Option<Arc<str>>,
        retention: Retention,
        idempotency: Option<&Idempotency>,
    ) -> Result<StreamPosition, BrokerError> {
        self.inner
            .publish(channel, data, from, retention, idempotency)
            .await
    }
    async fn push(&self, channel: &ChannelName, frame: Bytes) -> Result<(), BrokerError> {
        self.tap.delay().await;
        self.inner.push(channel, frame).await
    }
    async fn control(&self, message: ControlMessage) -> Result<(), BrokerError> {
        self.inner.control(message).await
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn history(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        retention: Retention,
    ) -> Result<HistoryRead, BrokerError> {
        self.tap.delay().await;
        let read = self.inner.history(channel, query, retention).await;
        self.tap.delay().await;
        read
    }
    fn health(&self) -> BrokerHealth {
        self.inner.health()
    }
    fn sweep(&self, pass: &Sweep<'_>) -> Swept {
        self.inner.sweep(pass)
    }
}

/// A node over a tapped broker.
pub struct Rig {
    pub node: Arc<Node>,
    pub broker: Arc<Tapped>,
}

impl Rig {
    pub fn new(broker: Arc<dyn Broker>) -> Rig {
        let broker = Arc::new(Tapped {
            inner: broker,
            tap: Arc::new(Tap::default()),
        });
        let node = Node::new(
            NodeOptions {
                namespaces: namespaces(),
                max_connections_per_user: 1000,
                max_channels_per_client: 16,
                send_queue_max_bytes: 64 << 20,
                ..Default::default()
            },
            broker.clone(),
            Arc::new(MemoryPresence::default()),
        );
        Rig { node, broker }
    }

    pub fn connect(&self, user: &str) -> Arc<ClientHandle> {
        self.node
            .connect(ClientInit {
                user: user.into(),
                ..Default::default()
            })
            .expect("room for the client")
    }

    pub async fn publish(&self, channel: &ChannelName, n: u64) -> StreamPosition {
        self.node
            .publish(channel, Bytes::from(format!("{{\"n\":{n}}}")), None, None)
            .await
            .expect("publish")
    }
}

/// Every frame a client was sent, as JSON, kept across takes.
#[derive(Debug, Default)]
pub struct Log(pub Vec<Value>);

impl Log {
    /// Takes what the client's outbox holds.
    pub fn pull(&mut self, client: &ClientHandle) {
        for out in client.outbox.take().0 {
            if let Out::Frame(bytes) = out {
                self.0
                    .push(serde_json::from_slice(&bytes).expect("every frame is JSON"));
            }
        }
    }

    /// `pub <offset>` and `lost <offset>` of `channel`, in order.
    pub fn stream(&self, channel: &ChannelName) -> Vec<String> {
        self.0
            .iter()
            .filter(|f| f["channel"] == channel.as_str())
            .filter_map(|f| match f["type"].as_str() {
                Some(t @ ("pub" | "lost")) => Some(format!("{t} {}", f["offset"])),
                _ => None,
            })
            .collect()
    }
}

fn pubs(range: RangeInclusive<u64>) -> Vec<String> {
    range.map(|o| format!("pub {o}")).collect()
}

/// Waits until `client`'s log satisfies `done`.
pub async fn until(client: &ClientHandle, log: &mut Log, what: &str, done: impl Fn(&Log) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        log.pull(client);
        if done(log) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; got {:?}",
            log.0
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn subscribe(
    rig: &Rig,
    client: &Arc<ClientHandle>,
    id: u64,
    channel: &ChannelName,
    since: Option<StreamPosition>,
) {
    rig.node
        .handle(
            client,
            Some(id),
            Op::Subscribe {
                channel: channel.clone(),
                since,
            },
        )
        .await;
}

/// Runs every check, each on a broker from `make`.
pub async fn broker_conformance<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    publish_assigns_offsets_and_stores(make().await).await;
    subscribers_get_every_publication_in_order(make().await).await;
    subscribe_with_since_recovers_then_goes_live(make().await).await;
    concurrent_publishers_and_subscribers_see_contiguous_ranges(make().await).await;
    a_withheld_publication_is_filled_from_history(make().await).await;
    a_hole_past_retention_is_reported_lost(make().await).await;
    a_resync_delivers_what_the_broker_dropped(make().await).await;
    pushes_reach_subscribers(make().await).await;
    control_messages_reach_the_node(make().await).await;
    an_idempotency_key_publishes_once(make().await).await;
}

/// Many tasks publishing the same key to one channel at once: one
/// publication, every answer the same. Different keys, or the same key on
/// another channel, publish each; past its window a key publishes again.
pub async fn an_idempotency_key_publishes_once(broker: Arc<dyn Broker>) {
    let rig = Rig::new(broker);
    let ch = channel(NAMESPACE, "idempotent");
    let retention = namespaces().policy(&ch).retention();
    let idem = |key: &str, window| Idempotency {
        key: IdempotencyKey::parse(key).expect("valid key"),
        window,
    };
    let window = Duration::from_secs(600);
    let publish_all = |keys: Vec<Idempotency>, ch: ChannelName| {
        let tasks: Vec<_> = keys
            .into_iter()
            .enumerate()
            .map(|(i, idem)| {
                let (broker, ch) = (rig.broker.clone(), ch.clone());
                tokio::spawn(async move {
                    let data = Bytes::from(format!("{{\"try\":{i}}}"));
                    broker
                        .publish(&ch, data, None, retention, Some(&idem))
                        .await
                        .expect("publish")
                })
            })
            .collect();
        async move {
            let mut answers = Vec::new();
            for t in tasks {
                answers.push(t.await.expect("publisher"));
            }
            answers
        }
    };
    let answers = publish_all(vec![idem("same", window); 32], ch.clone()).await;
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "every duplicate answers the first result: {answers:?}"
    );
    let first = answers[0].clone();
    assert_eq!(first.offset, 1);
    let stored = |rig: &Rig, ch: ChannelName, epoch: String| {
        let node = rig.node.clone();
        async move {
            let read = node
                .history(&ch, HistoryQuery::since(0, &epoch))
                .await
                .expect("history");
            assert!(read.recovered);
            read.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(stored(&rig, ch.clone(), first.epoch.clone()).await, [1]);

    let keys = (0..8).map(|i| idem(&format!("k{i}"), window)).collect();
    let mut offsets: Vec<u64> = publish_all(keys, ch.clone())
        .await
        .iter()
        .map(|a| a.offset)
        .collect();
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (2..=9).collect::<Vec<_>>(),
        "different keys never collide"
    );
    let other = channel(NAMESPACE, "idempotent-other");
    let there = publish_all(vec![idem("same", window)], other.clone()).await;
    assert_eq!(there[0].offset, 1, "a key is per channel");
    let again = publish_all(vec![idem("same", window)], ch.clone()).await;
    assert_eq!(again[0], first, "still the first answer");
    assert_eq!(
        stored(&rig, ch.clone(), first.epoch.clone()).await,
        (1..=9).collect::<Vec<_>>()
    );

    let brief = Duration::from_millis(200);
    let before = publish_all(vec![idem("brief", brief)], ch.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = publish_all(vec![idem("brief", brief)], ch.clone()).await;
    assert_eq!(
        after[0].offset,
        before[0].offset + 1,
        "the window has passed"
    );
}

/// Offsets start at 1 and add one; what is acknowledged is stored.
pub async fn publish_assigns_offsets_and_stores(broker: Arc<dyn Broker>) {
    let rig = Rig::new(broker);
    let ch = channel(NAMESPACE, "offsets");
    let mut epoch = String::new();
    for n in 1..=5 {
        let pos = rig.publish(&ch, n).await;
        assert_eq!(pos.offset, n);
        if n > 1 {
            assert_eq!(pos.epoch, epoch, "the epoch holds while history is kept");
        }
        epoch = pos.epoch;
    }
    let read = rig
        .node
        .history(&ch, HistoryQuery::since(0, &epoch))
        .await
        .expect("history");
    assert!(read.recovered);
    assert_eq!((read.offset, &*read.epoch), (5, epoch.as_str()));
    let data: Vec<_> = read.publications.iter().map(|p| p.data.clone()).collect();
    let want: Vec<_> = (1..=5)
        .map(|n| Bytes::from(format!("{{\"n\":{n}}}")))
        .collect();
    assert_eq!(data, want);
}

/// A subscriber gets its reply, then every later publication once, in order.
pub async fn subscribers_get_every_publication_in_order(broker: Arc<dyn Broker>) {
    let rig = Rig::new(broker);
    let ch = channel(NAMESPACE, "in-order");
    let client = rig.connect("reader");
    subscribe(&rig, &client, 1, &ch, None).await;
    for n in 1..=20 {
        rig.publish(&ch, n).await;
    }
    let mut log = Log::default();
    until(&client, &mut log, "20 publications", |l| {
        l.stream(&ch).len() >= 20
    })
    .await;
    assert_eq!(log.stream(&ch), pubs(1..=20));
    let reply = log.0.iter().find(|f| f["id"] == 1).expect("the reply");
    assert_eq!(reply["result"]["offset"], 0);
}

/// `since` recovers what was missed; live publications follow without a gap.
pub async fn subscribe_with_since_recovers_then_goes_live(broker: Arc<dyn Broker>) {
    let rig = Rig::new(broker);
    let ch = channel(NAMESPACE, "since");
    let first = rig.publish(&ch, 1).await;
    for n in 2..=5 {
        rig.publish(&ch, n).await;
    }
    let client = rig.connect("reader");
    let since = StreamPosition {
        offset: 2,
        epoch: first.epoch.clone(),
    };
    subscribe(&rig, &client, 1, &ch, Some(since.clone())).await;
    rig.publish(&ch, 6).await;
    let mut log = Log::default();
    until(&client, &mut log, "publication 6", |l| {
        !l.stream(&ch).is_empty()
    })
    .await;
    let reply = &log.0.iter().find(|f| f["id"] == 1).expect("the reply")["result"];
    assert_eq!(reply["recovered"], true);
    let recovered: Vec<&Value> = reply["publications"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| &p["offset"])
        .collect();
    assert_eq!(recovered, [3, 4, 5]);
    assert_eq!(log.stream(&ch), pubs(6..=6));

    // Without an id, the recovered ones arrive as pub frames.
    let quiet = rig.connect("quiet");
    rig.node
        .handle(
            &quiet,
            None,
            Op::Subscribe {
                channel: ch.clone(),
                since: Some(since),
            },
        )
        .await;
    let mut log = Log::default();
    until(&quiet, &mut log, "recovered as frames", |l| {
        l.stream(&ch).len() >= 4
    })
    .await;
    assert_eq!(log.stream(&ch), pubs(3..=6));
}

/// Many publishers and many subscribers joining and leaving one channel at
/// once: each subscriber sees, from each join to its leave, a contiguous
/// range without duplicates; a join with `since` continues where the last
/// one stopped; those still in at the end got everything.
pub async fn concurrent_publishers_and_subscribers_see_contiguous_ranges(broker: Arc<dyn Broker>) {
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 150;
    const SUBSCRIBERS: usize = 8;
    let rig = Arc::new(Rig::new(broker));
    let ch = channel(NAMESPACE, "concurrent");
    rig.broker.tap.jitter(true);
    let publishing = Arc::new(AtomicBool::new(true));
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|s| {
            let rig = rig.clone();
            let ch = ch.clone();
            let publishing = publishing.clone();
            tokio::spawn(async move {
                let client = rig.connect(&format!("s{s}"));
                let mut log = Log::default();
                // Joins and leaves while the publishers run, then stays.
                for round in 0.. {
                    // Every other join recovers from where the last one stopped.
                    let since = (round % 2 == 1).then(|| last_position(&log, &ch)).flatten();
                    subscribe(&rig, &client, 2 * round + 1, &ch, since).await;
                    if !publishing.load(Ordering::Acquire) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3000))).await;
                    rig.node
                        .handle(
                            &client,
                            Some(2 * round + 2),
                            Op::Unsubscribe {
                                channel: ch.clone(),
                            },
                        )
                        .await;
                    log.pull(&client);
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..2000))).await;
                }
                (client, log)
            })
        })
        .collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let rig = rig.clone();
            let ch = ch.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    rig.publish(&ch, p * EACH + n).await;
                    if n % 16 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    publishing.store(false, Ordering::Release);
    let total = PUBLISHERS * EACH;
    for s in subscribers {
        let (client, mut log) = s.await.expect("subscriber");
        until(&client, &mut log, "the last publication", |l| {
            last_position(l, &ch).is_some_and(|p| p.offset == total)
        })
        .await;
        check_sessions(&log, &ch, total);
    }
}

/// The position a log's last session reached: its reply's, or its last pub.
fn last_position(log: &Log, channel: &ChannelName) -> Option<StreamPosition> {
    let mut at = None;
    for f in &log.0 {
        let (offset, epoch) = match f["type"].as_str() {
            Some("pub") if f["channel"] == channel.as_str() => (&f["offset"], &f["epoch"]),
            None if f["result"]["epoch"].is_string() => {
                (&f["result"]["offset"], &f["result"]["epoch"])
            }
            _ => continue,
        };
        at = Some(StreamPosition {
            offset: offset.as_u64().expect("offset"),
            epoch: epoch.as_str().expect("epoch").into(),
        });
    }
    at
}

/// Walks a subscriber's frames: subscribe replies (odd ids) open a session
/// at their offset, unsubscribe replies (even ids) close it; every pub must
/// fall inside a session and be the next offset.
fn check_sessions(log: &Log, channel: &ChannelName, total: u64) {
    let mut next: Option<u64> = None;
    let mut last_seen: Option<u64> = None;
    // The frames up to the one being checked, for a failure's message.
    let context = |i: usize| {
        log.0[i.saturating_sub(12)..=i]
            .iter()
            .map(|f| match f["type"].as_str() {
                Some(t) => format!("{t} {}", f["offset"]),
                None => format!(
                    "reply {} at {} recovered {} {}",
                    f["id"],
                    f["result"]["offset"],
                    f["result"]["recovered"],
                    f["result"]["publications"]
                        .as_array()
                        .map_or(0, |l| l.len())
                ),
            })
            .collect::<Vec<_>>()
    };
    for (i, f) in log.0.iter().enumerate() {
        if let Some(id) = f["id"].as_u64() {
            assert_eq!(f["ok"], true, "{f}");
            if id % 2 == 1 {
                let r = &f["result"];
                let offset = r["offset"].as_u64().expect("offset");
                if r["recovered"] == true {
                    let from = last_seen.expect("a recovery follows a session");
                    let got: Vec<u64> = r["publications"]
                        .as_array()
                        .expect("list")
                        .iter()
                        .filter_map(|p| p["offset"].as_u64())
                        .collect();
                    let want: Vec<u64> = (from + 1..=offset).collect();
                    assert_eq!(got, want, "a recovery is whole and in order");
                }
                next = Some(offset + 1);
                last_seen = Some(offset);
            } else {
                next = None;
            }
            continue;
        }
        if f["type"] == "lost" {
            panic!("nothing is lost with this much history: {f}");
        }
        if f["type"] != "pub" || f["channel"] != channel.as_str() {
            continue;
        }
        let offset = f["offset"].as_u64().expect("offset");
        let want = next.unwrap_or_else(|| panic!("pub {offset} outside a subscription"));
        assert_eq!(
            offset,
            want,
            "each subscriber sees a contiguous, duplicate-free range: {:?}",
            context(i)
        );
        next = Some(offset + 1);
        last_seen = Some(offset);
    }
    assert_eq!(next, Some(total + 1), "the last session got everything");
}

/// A publication the broker never delivered is read from history before
/// anything newer reaches the subscriber.
pub async fn a_withheld_publication_is_filled_from_history(broker: Arc<dyn Broker>) {
    let rig = Rig::new(broker);
    let ch = channel(NAMESPACE, "withheld");
    let client = rig.connect("reader");
    subscribe(&rig, &client, 1, &ch, None).await;
    rig.broker.tap.withhold(&ch, 3..=3);
    for n in 1..=5 {
        rig.publish(&ch, n).await;
    }
    let mut log = Log::default();
    until(&client, &mut log, "publications 1..5", |l| {
        l.stream(&ch).len() >= 5
    })
    .await;
    assert_eq!(log.stream(&ch), pubs(1..=5));
    assert!(
        rig.node.metrics.gap_fills.get() >= 1,
        "the hole was read from history"
    );
}

/// Where history no longer has the hole, the subscriber gets `lost` with
/// the offset it now stands at, and delivery goes on after it.
pub async fn a_hole_past_retention_is_reported_lost(broker: Arc<dyn Broker>) {
    let rig = Rig::new(broker);
    let ch = channel(TINY_NAMESPACE, "lost");
    let client = rig.connect("reader");
    subscribe(&rig, &client, 1, &ch, None).await;
    rig.broker.tap.withhold(&ch, 2..=5);
    for n in 1..=8 {
        rig.publish(&ch, n).await;
    }
    let mut log = Log::default();
    until(&client, &mut log, "publication 8", |l| {
        l.stream(&ch).last().is_some_and(|s| s == "pub 8")
    })
    .await;
    assert_eq!(
        log.stream(&ch),
        ["pub 1", "lost 5", "pub 6", "pub 7", "pub 8"]
    );
    let lost = log.0.iter().find(|f| f["type"] == "lost").expect("lost");
    let first = log.0.iter().find(|f| f["type"] == "pub").expect("pub");
    assert_eq!(lost["epoch"], first["epoch"]);
    assert_eq!(rig.node.metrics.lost.get(), 1, "counted once");
}

/// After a resync, a stream reads what followed its position, even when no
/// later publication showed the hole.
pub async fn a_resync_delivers_what_the_broker_dropped(broker: Arc<dyn Broker>) {
    let rig = Rig::new(broker);
    let ch = channel(NAMESPACE, "resync");
    let client = rig.connect("reader");
    subscribe(&rig, &client, 1, &ch, None).await;
    rig.broker.tap.withhold(&ch, 4..=5);
    for n in 1..=5 {
        rig.publish(&ch, n).await;
    }
    let mut log = Log::default();
    until(&client, &mut log, "publications 1..3", |l| {
        l.stream(&ch).len() >= 3
    })
    .await;
    rig.broker.tap.resync();
    until(&client, &mut log, "publications 4 and 5", |l| {
        l.stream(&ch).len() >= 5
    })
    .await;
    assert_eq!(log.stream(&ch), pubs(1..=5));
}

/// A push reaches the channel's subscribers.
pub async fn pushes_reach_subscribers(broker: Arc<dyn Broker>) {
    let rig = Rig::new(broker);
    let ch = channel(NAMESPACE, "push");
    let client = rig.connect("reader");
    subscribe(&rig, &client, 1, &ch, None).await;
    let frame =
        format!("{{\"type\":\"join\",\"channel\":\"{ch}\",\"user\":\"x\",\"client\":\"c-1\"}}");
    rig.broker
        .push(&ch, Bytes::from(frame))
        .await
        .expect("push");
    let mut log = Log::default();
    until(&client, &mut log, "the push", |l| {
        l.0.iter().any(|f| f["type"] == "join")
    })
    .await;
}

/// A control message reaches this node: its clients of that user are closed.
pub async fn control_messages_reach_the_node(broker: Arc<dyn Broker>) {
    let rig = Rig::new(broker);
    let user = format!("kicked-{:08x}", fastrand::u32(..));
    let client = rig.connect(&user);
    rig.broker
        .control(ControlMessage::Disconnect {
            user,
            code: Disconnect::KICKED.code,
            reason: "conformance".into(),
        })
        .await
        .expect("control");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while client.outbox.closing() != Some(Disconnect::KICKED) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client was not closed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
