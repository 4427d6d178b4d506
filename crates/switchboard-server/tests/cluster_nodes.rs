//! Many nodes, one gateway (PROTOCOL.md §9), shown on real processes: a
//! `redis-server` (AOF `appendfsync always`) or a Redis Cluster, three
//! `switchboard` binaries on it, and clients over real sockets spread over
//! the nodes. Each test breaks something while publications flow (a dropped
//! pub/sub connection, a dead node, a dead Redis, a failover) and checks what
//! every subscriber saw: one contiguous, duplicate-free range of offsets per
//! subscription, every acknowledged publication in it, and `lost` rather
//! than a silent hole where history no longer has the range.
//!
//! Every test stops by itself: readers and publishers run against deadlines,
//! and the processes are killed when the harness drops.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::proc::{ServerProcess, base_config};
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard_redis::testing::{RedisCluster, RedisServer};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `[presence] ttl` of the nodes: a dead node's clients must be gone by then.
const TTL: Duration = Duration::from_secs(2);
/// `[broker] stall_timeout` of the nodes.
const STALL: Duration = Duration::from_secs(2);
/// Node names: distinct enough to look for in `/api/info`'s text.
const NAMES: [&str; 3] = ["node-alpha", "node-bravo", "node-charlie"];

// --- the harness -------------------------------------------------------------

/// `redis_url` as a TOML value: one URL, or a Cluster's seed list.
fn single(url: &str) -> String {
    format!("{url:?}")
}

fn seeds(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The process tests' config plus a `tiny` namespace (5 publications of
/// history, to trim past a gap), a `long` one (history that outlasts any
/// recovery here: a pub/sub connection may come back seconds after Redis,
/// its backoff capped at 2 s plus jitter, while publishes flow through the
/// others), the Redis broker and short timings.
fn node_config(redis_url: &str) -> String {
    node_config_with(redis_url, "")
}

/// [`node_config`] with `broker` lines added to its `[broker]` table.
fn node_config_with(redis_url: &str, broker: &str) -> String {
    format!(
        r#"{base}
[[namespaces]]
name = "tiny"
publish = true
history_size = 5
history_ttl = "10m"

[[namespaces]]
name = "long"
publish = true
history_size = 10000
history_ttl = "10m"

[broker]
kind = "redis"
redis_url = {redis_url}
stall_timeout = "{stall}s"
{broker}

[presence]
ttl = "{ttl}s"
"#,
        base = base_config(),
        stall = STALL.as_secs(),
        ttl = TTL.as_secs(),
    )
}

/// Switchboard nodes as processes on one broker. `None`: a node killed.
struct Nodes {
    nodes: Vec<Option<ServerProcess>>,
}

impl Nodes {
    /// One node per URL value (so nodes may log in as different Redis users).
    fn start(urls: &[String]) -> Nodes {
        let nodes = urls
            .iter()
            .zip(NAMES)
            .map(|(url, name)| {
                Some(ServerProcess::start(
                    &node_config(url),
                    &[("SWITCHBOARD_NODE_NAME", name)],
                ))
            })
            .collect();
        Nodes { nodes }
    }

    /// Three nodes on `url` with `broker` lines in their `[broker]` table.
    fn three_with(url: &str, broker: &str) -> Nodes {
        let nodes = NAMES
            .iter()
            .map(|name| {
                Some(ServerProcess::start(
                    &node_config_with(url, broker),
                    &[("SWITCHBOARD_NODE_NAME", name)],
                ))
            })
            .collect();
        Nodes { nodes }
    }

    fn three(url: &str) -> Nodes {
        Nodes::start(&[url.to_string(), url.to_string(), url.to_string()])
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].as_ref().expect("node running").addr
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().flatten().map(|n| n.addr).collect()
    }

    /// SIGKILL (what `Child::kill` sends): no shutdown, nothing cleaned up.
    fn sigkill(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.kill();
        }
    }
}

/// An API call with the key.
async fn api(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
    http(
        addr,
        method,
        path,
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        body,
    )
    .await
}

/// What a publish was answered: its offset and epoch, or a 503.
#[derive(Debug, Clone)]
enum Answer {
    Stored(u64, String),
    Unavailable,
}

/// One `POST /api/publish`; anything but 200 or 503 (or no answer within
/// 8 s: Redis's connect and response timeouts are 2 s and 3 s) fails the
/// test: a down broker is answered, never hung on.
async fn publish(addr: SocketAddr, channel: &str, n: u64) -> Answer {
    let body = json!({"channel": channel, "data": {"n": n}}).to_string();
    let r = tokio::time::timeout(
        Duration::from_secs(8),
        try_http(
            addr,
            "POST",
            "/api/publish",
            &[("Authorization", &format!("Bearer {API_KEY}"))],
            Some(&body),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("publish through {addr} not answered within 8 s"))
    .unwrap_or_else(|| panic!("publish through {addr}: connection failed"));
    match r.status {
        200 => {
            let v = r.json();
            let offset = v["offset"].as_u64().expect("offset");
            let epoch = v["epoch"].as_str().expect("epoch").to_string();
            Answer::Stored(offset, epoch)
        }
        503 => {
            assert!(
                r.body.contains("error"),
                "503 without a JSON error: {}",
                r.body
            );
            Answer::Unavailable
        }
        s => panic!("publish through {addr}: {s} {}", r.body),
    }
}

/// Publishes through the nodes in turn, one every `every`, until `stop`.
fn publish_continuously(
    addrs: Vec<SocketAddr>,
    channel: &'static str,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Vec<Answer>> {
    tokio::spawn(async move {
        let mut answers = Vec::new();
        let give_up = Instant::now() + Duration::from_secs(25);
        let mut n = 0u64;
        while !*stop.borrow() && Instant::now() < give_up {
            let addr = addrs[n as usize % addrs.len()];
            answers.push(publish(addr, channel, n).await);
            n += 1;
            let _ = tokio::time::timeout(every, stop.changed()).await;
        }
        answers
    })
}

fn stored(answers: &[Answer]) -> Vec<u64> {
    answers
        .iter()
        .filter_map(|a| match a {
            Answer::Stored(o, _) => Some(*o),
            Answer::Unavailable => None,
        })
        .collect()
}

/// The sum over `addrs` of a metric's samples (`name` and its suffixes).
async fn metric(addrs: &[SocketAddr], name: &str) -> f64 {
    let mut sum = 0.0;
    for &addr in addrs {
        let r = http(addr, "GET", "/metrics", &[], None).await;
        assert_eq!(r.status, 200);
        sum += r
            .body
            .lines()
            .filter(|l| l.starts_with(name) && !l.contains("_created"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    sum
}

/// Polls `/ready` on `addr` until it answers `status`; how long that took.
async fn ready_becomes(addr: SocketAddr, status: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Some(r) = try_http(addr, "GET", "/ready", &[], None).await
            && r.status == status
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "/ready of {addr} did not turn {status} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- subscribers -------------------------------------------------------------

/// What one subscription saw of its channel: the subscribe reply's offset and
/// epoch, then every `pub` and `lost` of the channel, as `(type, offset)`.
#[derive(Debug, Clone)]
struct Seen {
    who: String,
    from: u64,
    epoch: String,
    frames: Vec<(String, u64, String)>,
}

impl Seen {
    fn offsets(&self) -> Vec<u64> {
        self.frames.iter().map(|(_, o, _)| *o).collect()
    }

    fn last(&self) -> u64 {
        self.frames.last().map_or(self.from, |(_, o, _)| *o)
    }

    /// Nothing but `pub` frames of one epoch, offsets `from+1, from+2, ...`
    /// with no hole and no repeat.
    fn assert_contiguous(&self) {
        for (i, (ty, offset, epoch)) in self.frames.iter().enumerate() {
            assert_eq!(
                ty, "pub",
                "{}: unexpected {ty} {offset}: {self:?}",
                self.who
            );
            assert_eq!(epoch, &self.epoch, "{}: epoch changed: {self:?}", self.who);
            assert_eq!(
                *offset,
                self.from + 1 + i as u64,
                "{}: a hole or a repeat at frame {i}: {:?}",
                self.who,
                self.offsets()
            );
        }
    }
}

/// The next text frame within `within` (`None`: nothing came); panics on a
/// close: these tests' clients must stay connected through every failure.
async fn next_frame(c: &mut Client, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) => return None,
            Ok(m) => m.expect("the connection stayed open").expect("read error"),
        };
        if let Some((code, reason)) = m.as_close() {
            panic!("client closed {code:?} {reason}");
        }
        if let Some(t) = m.as_text() {
            return Some(serde_json::from_str(t).expect("frame is JSON"));
        }
    }
}

/// Keeps a frame when it is a `pub` or `lost` of `channel`.
fn keep(seen: &mut Seen, channel: &str, f: &Value) {
    let ty = f["type"].as_str().unwrap_or_default();
    if (ty == "pub" || ty == "lost") && f["channel"] == channel {
        seen.frames.push((
            ty.to_string(),
            f["offset"].as_u64().expect("offset"),
            f["epoch"].as_str().expect("epoch").to_string(),
        ));
    }
}

/// Subscribes `c` to `channel`; fails if a publication of it arrives before
/// the reply (the reply comes first, then what followed it).
async fn subscribe(c: &mut Client, channel: &str, id: u64, who: &str) -> Seen {
    c.send(json!({"op": "subscribe", "channel": channel, "id": id}))
        .await;
    loop {
        let f = next_frame(c, WAIT)
            .await
            .unwrap_or_else(|| panic!("{who}: no subscribe reply"));
        if f["id"] == id {
            assert_eq!(f["ok"], true, "{who}: subscribe {channel}: {f}");
            return Seen {
                who: who.to_string(),
                from: f["result"]["offset"].as_u64().expect("offset"),
                epoch: f["result"]["epoch"].as_str().expect("epoch").to_string(),
                frames: Vec::new(),
            };
        }
        assert!(
            f["channel"] != channel,
            "{who}: {f} before the subscribe reply"
        );
    }
}

/// A client that stays subscribed for the whole test.
struct Steady {
    client: Client,
    seen: Seen,
    channel: &'static str,
}

impl Steady {
    async fn join(addr: SocketAddr, user: &str, channel: &'static str) -> Steady {
        let mut client = Client::connect(addr, &token(user, 3600, &[])).await;
        let seen = subscribe(&mut client, channel, 1, &format!("{user}@{addr}")).await;
        Steady {
            client,
            seen,
            channel,
        }
    }

    /// Reads until it has offset `target` (sent once known), or 10 s after
    /// the target is known: then what it saw is judged as it is.
    fn read(mut self, mut target: watch::Receiver<Option<u64>>) -> JoinHandle<Seen> {
        tokio::spawn(async move {
            let mut known_at: Option<Instant> = None;
            let hard = Instant::now() + Duration::from_secs(40);
            loop {
                let want = *target.borrow_and_update();
                if let Some(want) = want {
                    let at = *known_at.get_or_insert_with(Instant::now);
                    if self.seen.last() >= want || at.elapsed() > Duration::from_secs(10) {
                        return self.seen;
                    }
                }
                if Instant::now() > hard {
                    return self.seen;
                }
                if let Some(f) = next_frame(&mut self.client, Duration::from_millis(100)).await {
                    keep(&mut self.seen, self.channel, &f);
                }
            }
        })
    }
}

/// `per_node` steady subscribers of `channel` on each node.
async fn steady_on_each(
    addrs: &[SocketAddr],
    per_node: usize,
    channel: &'static str,
    target: &watch::Receiver<Option<u64>>,
) -> Vec<JoinHandle<Seen>> {
    let mut readers = Vec::new();
    for (i, &addr) in addrs.iter().enumerate() {
        for k in 0..per_node {
            let s = Steady::join(addr, &format!("steady-{i}-{k}"), channel).await;
            readers.push(s.read(target.clone()));
        }
    }
    readers
}

async fn collect(readers: Vec<JoinHandle<Seen>>) -> Vec<Seen> {
    let mut all = Vec::new();
    for r in readers {
        all.push(r.await.expect("reader"));
    }
    all
}

/// Every steady subscriber saw `from+1 ..= last` whole, the range holds
/// every acknowledged offset after its `from`, and it reached `last`.
fn assert_every_subscriber_whole(seen: &[Seen], acked: &[u64], last: u64) {
    for s in seen {
        s.assert_contiguous();
        assert_eq!(
            s.last(),
            last,
            "{}: stopped short: {:?}",
            s.who,
            s.offsets()
        );
        for &o in acked.iter().filter(|&&o| o > s.from) {
            assert!(
                s.offsets().contains(&o),
                "{}: acknowledged {o} missing",
                s.who
            );
        }
    }
}

/// Subscribes and leaves over and over on one node until `stop`: each
/// session's frames, from its subscribe reply to its unsubscribe reply (or
/// to a dropped connection, every third session).
fn churn(
    addr: SocketAddr,
    user: String,
    channel: &'static str,
    stop: watch::Receiver<bool>,
) -> JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut sessions = Vec::new();
        let mut id = 1;
        let mut client = Client::connect(addr, &token(&user, 3600, &[])).await;
        let give_up = Instant::now() + Duration::from_secs(25);
        while !*stop.borrow() && Instant::now() < give_up {
            let who = format!("{user}@{addr}#{}", sessions.len());
            let mut seen = subscribe(&mut client, channel, id, &who).await;
            id += 1;
            let stay = Duration::from_millis(fastrand::u64(20..250));
            let until = tokio::time::Instant::now() + stay;
            while let Some(f) = next_frame(&mut client, until - tokio::time::Instant::now()).await {
                keep(&mut seen, channel, &f);
            }
            if sessions.len() % 3 == 2 {
                // Leaving by closing: the next session is a new connection.
                drop(client);
                client = Client::connect(addr, &token(&user, 3600, &[])).await;
            } else {
                client
                    .send(json!({"op": "unsubscribe", "channel": channel, "id": id}))
                    .await;
                loop {
                    let f = next_frame(&mut client, WAIT)
                        .await
                        .unwrap_or_else(|| panic!("{who}: no unsubscribe reply"));
                    if f["id"] == id {
                        assert_eq!(f["ok"], true, "{who}: unsubscribe: {f}");
                        break;
                    }
                    keep(&mut seen, channel, &f);
                }
                id += 1;
            }
            sessions.push(seen);
        }
        // Whatever arrives after the last unsubscribe reply is a leak.
        if let Some(f) = next_frame(&mut client, Duration::from_millis(200)).await {
            assert!(f["channel"] != channel, "{user}: {f} after unsubscribing");
        }
        sessions
    })
}

// --- the tests -----------------------------------------------------------------

/// Six publishers (two through each node) on one channel while subscribers
/// join and leave on all three nodes: the channel has one offset sequence,
/// and each subscription sees a contiguous, duplicate-free part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_three_nodes_every_subscription_sees_a_contiguous_range() {
    const CH: &str = "chat:race";
    const EACH: u64 = 50;
    let redis = RedisServer::start();
    let nodes = Nodes::three(&single(&redis.url()));
    let addrs = nodes.addrs();
    let (target_tx, target) = watch::channel(None);
    let (stop_tx, stop) = watch::channel(false);

    let steady = steady_on_each(&addrs, 2, CH, &target).await;
    let churners: Vec<_> = addrs
        .iter()
        .enumerate()
        .flat_map(|(i, &addr)| {
            let stop = stop.clone();
            (0..2).map(move |k| churn(addr, format!("churn-{i}-{k}"), CH, stop.clone()))
        })
        .collect();
    let publishers: Vec<JoinHandle<Vec<Answer>>> = addrs
        .iter()
        .flat_map(|&addr| {
            (0..2).map(move |_| {
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for n in 0..EACH {
                        answers.push(publish(addr, CH, n).await);
                        // Paced so that the churn overlaps the whole run.
                        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..20))).await;
                    }
                    answers
                })
            })
        })
        .collect();
    let mut answers = Vec::new();
    for p in publishers {
        answers.extend(p.await.expect("publisher"));
    }
    let _ = stop_tx.send(true);
    let mut acked = stored(&answers);
    assert_eq!(acked.len(), answers.len(), "no 503 with Redis up");
    let epochs: std::collections::HashSet<String> = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Stored(_, e) => Some(e.clone()),
            Answer::Unavailable => None,
        })
        .collect();
    assert_eq!(epochs.len(), 1, "one epoch across nodes: {epochs:?}");
    acked.sort_unstable();
    let total = 6 * EACH;
    assert_eq!(
        acked,
        (1..=total).collect::<Vec<_>>(),
        "one offset sequence across the nodes"
    );
    let _ = target_tx.send(Some(total));

    let steady = collect(steady).await;
    for s in &steady {
        assert_eq!(s.from, 0, "subscribed before the first publication");
    }
    assert_every_subscriber_whole(&steady, &acked, total);
    let mut sessions = 0;
    let mut with_pubs = 0;
    for c in churners {
        for s in c.await.expect("churner") {
            s.assert_contiguous();
            sessions += 1;
            with_pubs += usize::from(!s.frames.is_empty());
        }
    }
    assert!(
        sessions >= 12 && with_pubs >= 6,
        "churn happened during publishing: {sessions} sessions, {with_pubs} saw publications"
    );
}

/// `CLIENT KILL TYPE pubsub` (every node's pub/sub connections) three times
/// while publications flow: every subscriber still sees every publication
/// once, in order, no `lost`; each node counts the history read that filled
/// its hole in `switchboard_gap_fills`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connections_leave_no_hole_and_the_fill_is_counted() {
    const CH: &str = "long:killed";
    let redis = std::sync::Arc::new(RedisServer::start());
    let nodes = Nodes::three(&single(&redis.url()));
    let addrs = nodes.addrs();
    let (target_tx, target) = watch::channel(None);
    let (stop_tx, stop) = watch::channel(false);
    let steady = steady_on_each(&addrs, 2, CH, &target).await;
    let mut fills_before = Vec::new();
    for &a in &addrs {
        fills_before.push(metric(&[a], "switchboard_gap_fills").await);
    }

    let publisher = publish_continuously(addrs.clone(), CH, Duration::from_millis(5), stop.clone());
    let second = publish_continuously(addrs.clone(), CH, Duration::from_millis(7), stop);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let r = redis.clone();
        let killed =
            tokio::task::spawn_blocking(move || r.cli(&["client", "kill", "type", "pubsub"]))
                .await
                .expect("redis-cli");
        assert!(
            killed.trim().parse::<u32>().is_ok_and(|n| n >= 3),
            "every node's pub/sub connection killed: {killed}"
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _ = stop_tx.send(true);
    let mut answers = publisher.await.expect("publisher");
    answers.extend(second.await.expect("publisher"));
    let acked = stored(&answers);
    let last = acked
        .iter()
        .copied()
        .max()
        .expect("something was published");
    let _ = target_tx.send(Some(last));
    let steady = collect(steady).await;
    assert_every_subscriber_whole(&steady, &acked, last);
    eprintln!("{} publishes: {} stored", answers.len(), acked.len());
    for (i, &a) in addrs.iter().enumerate() {
        let after = metric(&[a], "switchboard_gap_fills").await;
        eprintln!("{}: gap_fills {} -> {after}", NAMES[i], fills_before[i]);
        assert!(
            after > fills_before[i],
            "{}: the resync after the killed connection read history (gap_fills {} -> {after})",
            NAMES[i],
            fills_before[i]
        );
    }
}

/// SIGKILL of a node: its clients are gone from presence and `/api/online`,
/// and the node from `/api/info`, on the other nodes within `[presence] ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_leave_presence_and_online_within_the_ttl() {
    const CH: &str = "chat:room";
    let redis = RedisServer::start();
    let mut nodes = Nodes::three(&single(&redis.url()));
    let mut watcher = Client::connect(nodes.addr(0), &token("watcher", 3600, &[])).await;
    watcher.subscribe(CH).await;
    let mut ghost = Client::connect(nodes.addr(2), &token("ghost", 3600, &[])).await;
    ghost.subscribe(CH).await;

    let has_ghost = |addr: SocketAddr| async move {
        let presence = api(addr, "GET", &format!("/api/presence/{CH}"), None).await;
        assert_eq!(presence.status, 200, "{}", presence.body);
        let online = api(addr, "GET", "/api/online", None).await;
        assert_eq!(online.status, 200, "{}", online.body);
        let info = api(addr, "GET", "/api/info", None).await;
        assert_eq!(info.status, 200, "{}", info.body);
        let in_presence = presence.json()["clients"]
            .as_array()
            .expect("clients")
            .iter()
            .any(|c| c["user"] == "ghost");
        let in_online = online.json()["users"]
            .as_array()
            .expect("users")
            .iter()
            .any(|u| u == "ghost");
        let in_info = info.body.contains(NAMES[2]);
        (in_presence, in_online, in_info)
    };
    // Across nodes first: node 0 and node 1 both see the ghost on node 2.
    for i in [0, 1] {
        let start = Instant::now();
        while has_ghost(nodes.addr(i)).await != (true, true, true) {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{} sees ghost and its node: {:?}",
                NAMES[i],
                has_ghost(nodes.addr(i)).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    nodes.sigkill(2);
    let killed = Instant::now();
    let mut gone = [None, None];
    while gone.iter().any(Option::is_none) {
        for (i, g) in gone.iter_mut().enumerate() {
            if g.is_none() && has_ghost(nodes.addr(i)).await == (false, false, false) {
                *g = Some(killed.elapsed());
            }
        }
        assert!(
            killed.elapsed() < TTL + Duration::from_secs(3),
            "still there {:?} after the kill: {:?}",
            killed.elapsed(),
            [
                has_ghost(nodes.addr(0)).await,
                has_ghost(nodes.addr(1)).await
            ]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Polling adds up to one round of three requests per node.
    let slack = Duration::from_millis(500);
    for (i, g) in gone.iter().enumerate() {
        let g = g.expect("gone");
        eprintln!("{}: the ghost gone {g:?} after the kill", NAMES[i]);
        assert!(
            g <= TTL + slack,
            "{}: ghost gone {g:?} after the kill, ttl {TTL:?}",
            NAMES[i]
        );
    }
    // The survivors keep serving their clients.
    assert_eq!(watcher.call(json!({"op": "ping"})).await["type"], "pong");
}

/// SIGKILL and restart of redis-server (AOF `appendfsync always`) while
/// publications flow through all three nodes: every publish is answered
/// 200 or 503; each node's `/ready` turns 503 and back to 200 by itself;
/// clients stay connected; every subscriber gets every acknowledged
/// publication exactly once, in order, with no hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_publishes_are_503_or_delivered_exactly_once() {
    const CH: &str = "long:phoenix";
    let mut redis = RedisServer::start();
    let nodes = Nodes::three(&single(&redis.url()));
    let addrs = nodes.addrs();
    for &a in &addrs {
        ready_becomes(a, 200, Duration::from_secs(5)).await;
    }
    let (target_tx, target) = watch::channel(None);
    let (stop_tx, stop) = watch::channel(false);
    let steady = steady_on_each(&addrs, 2, CH, &target).await;
    let publisher = publish_continuously(addrs.clone(), CH, Duration::from_millis(10), stop);

    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill();
    for &a in &addrs {
        let took = ready_becomes(a, 503, STALL + Duration::from_secs(3)).await;
        eprintln!("{a}: /ready 503 {took:?} after Redis died");
    }
    let health = http(addrs[0], "GET", "/health", &[], None).await;
    assert_eq!(health.json()["broker"]["ok"], false, "{}", health.body);
    // Down for a while: publishes keep coming and must be refused.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .expect("restart");
    for &a in &addrs {
        let took = ready_becomes(a, 200, Duration::from_secs(15)).await;
        eprintln!("{a}: /ready 200 again {took:?} after Redis came back");
    }
    let health = http(addrs[0], "GET", "/health", &[], None).await;
    assert_eq!(health.json()["broker"]["ok"], true, "{}", health.body);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _ = stop_tx.send(true);

    let answers = publisher.await.expect("publisher");
    let acked = stored(&answers);
    let refused = answers.len() - acked.len();
    eprintln!(
        "{} publishes: {} stored, {refused} refused",
        answers.len(),
        acked.len()
    );
    assert!(
        refused > 0,
        "publishes while Redis was down were refused 503"
    );
    let last = acked
        .iter()
        .copied()
        .max()
        .expect("something was published");
    assert!(
        acked.windows(2).all(|w| w[0] < w[1]),
        "acknowledged offsets rise: {acked:?}"
    );
    let _ = target_tx.send(Some(last));
    let steady = collect(steady).await;
    assert_every_subscriber_whole(&steady, &acked, last);
    drop(redis);
}

/// A node that misses more publications than the channel keeps (here: its
/// Redis user may not SUBSCRIBE for a while, and its pub/sub connection is
/// killed) tells its subscriber `lost` and goes on after it: never a
/// silent skip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_past_the_kept_history_is_reported_lost() {
    const CH: &str = "tiny:t";
    let redis = RedisServer::start();
    let acl = redis.cli(&["acl", "setuser", "reader", "on", ">pw", "~*", "&*", "+@all"]);
    assert_eq!(acl.trim(), "OK", "acl setuser");
    let reader_url = format!("redis://reader:pw@127.0.0.1:{}", redis.port());
    let nodes = Nodes::start(&[single(&redis.url()), single(&reader_url)]);
    let (publisher, reader) = (nodes.addr(0), nodes.addr(1));
    let (target_tx, target) = watch::channel(None);
    let sub = Steady::join(reader, "reader", CH).await;
    let read = sub.read(target);
    for n in 1..=2 {
        assert!(matches!(publish(publisher, CH, n).await, Answer::Stored(o, _) if o == n));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let deny = redis.cli(&[
        "acl",
        "setuser",
        "reader",
        "-subscribe",
        "-ssubscribe",
        "-psubscribe",
    ]);
    assert_eq!(deny.trim(), "OK", "acl deny");
    let killed = redis.cli(&["client", "kill", "user", "reader", "type", "pubsub"]);
    assert!(
        killed.trim().parse::<u32>().is_ok_and(|n| n >= 1),
        "killed: {killed}"
    );
    // Twice the five publications the channel keeps.
    for n in 3..=12 {
        assert!(matches!(publish(publisher, CH, n).await, Answer::Stored(o, _) if o == n));
    }
    let allow = redis.cli(&["acl", "setuser", "reader", "+@all"]);
    assert_eq!(allow.trim(), "OK", "acl allow");
    ready_becomes(reader, 200, Duration::from_secs(15)).await;
    assert!(matches!(
        publish(publisher, CH, 13).await,
        Answer::Stored(13, _)
    ));
    let _ = target_tx.send(Some(13));

    let seen = read.await.expect("reader");
    eprintln!("the reader saw {:?}", seen.frames);
    let mut previous = seen.from;
    let mut lost = 0;
    for (ty, offset, epoch) in &seen.frames {
        assert_eq!(epoch, &seen.epoch, "{seen:?}");
        if ty == "lost" {
            assert!(*offset > previous, "lost moves forward: {seen:?}");
            lost += 1;
        } else {
            assert_eq!(*offset, previous + 1, "a silent skip: {seen:?}");
        }
        previous = *offset;
    }
    assert_eq!(lost, 1, "the trimmed range is reported once: {seen:?}");
    assert_eq!(previous, 13, "delivery goes on after lost: {seen:?}");
    let first_pubs: Vec<u64> = seen.frames.iter().take(2).map(|f| f.1).collect();
    assert_eq!(first_pubs, [1, 2], "{seen:?}");
}

/// The same fan-out on a Redis Cluster of three masters with a replica each,
/// through a `CLUSTER FAILOVER` during publishing: every publish is 200 or
/// 503, and every subscriber gets every acknowledged publication exactly
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_during_publishing_delivers_every_acknowledged_publication_once() {
    const CH: &str = "long:failover";
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start_with_replicas(1))
        .await
        .expect("cluster");
    eprintln!("cluster created in {:?}", cluster.created_in);
    let nodes = Nodes::three(&seeds(&cluster.urls()));
    let addrs = nodes.addrs();
    for &a in &addrs {
        ready_becomes(a, 200, Duration::from_secs(10)).await;
    }
    let (target_tx, target) = watch::channel(None);
    let (stop_tx, stop) = watch::channel(false);
    let steady = steady_on_each(&addrs, 2, CH, &target).await;
    let publisher = publish_continuously(addrs.clone(), CH, Duration::from_millis(10), stop);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let cluster = tokio::task::spawn_blocking(move || {
        fail_over_the_master_of(&cluster, CH);
        cluster
    })
    .await
    .expect("failover");
    for &a in &addrs {
        ready_becomes(a, 200, Duration::from_secs(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _ = stop_tx.send(true);
    let answers = publisher.await.expect("publisher");
    let acked = stored(&answers);
    let last = acked
        .iter()
        .copied()
        .max()
        .expect("something was published");
    let _ = target_tx.send(Some(last));
    let steady = collect(steady).await;
    assert_every_subscriber_whole(&steady, &acked, last);
    drop(cluster);
}

/// With `redis_min_replicas = 1`, a publication is acknowledged only once a
/// replica holds it: while the replica of the channel's master is frozen
/// (SIGSTOP) publishes answer 503, never ok; and a SIGKILL of that master
/// during continuous publishing, its replica promoted, loses nothing that
/// was answered ok: every such publication is in history exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_loses_no_publication_acknowledged_with_min_replicas() {
    const CH: &str = "long:crash";
    // The set-up's publications are retried while they answer 503 (which
    // may have stored them): numbered apart from the continuous publisher's.
    const SETUP: u64 = 1_000_000;
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start_with_replicas(1))
        .await
        .expect("cluster");
    let nodes = Nodes::three_with(
        &seeds(&cluster.urls()),
        "redis_min_replicas = 1\nredis_replica_timeout = \"500ms\"",
    );
    let addrs = nodes.addrs();
    for &a in &addrs {
        ready_becomes(a, 200, Duration::from_secs(10)).await;
    }
    let (master, replica) = master_and_replica_of(&cluster, CH);
    // A replica still in its first sync holds nothing yet: publishes answer
    // 503 until it does.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !matches!(publish(addrs[0], CH, SETUP).await, Answer::Stored(..)) {
        assert!(Instant::now() < deadline, "the replica never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A replica that cannot take it: not acknowledged.
    let pid = |port: u16| -> String {
        cluster
            .cli(port, &["info", "server"])
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .expect("process_id")
            .trim()
            .to_string()
    };
    let signal = |sig: &str, pid: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    let replica_pid = pid(replica);
    signal("-STOP", &replica_pid);
    let frozen = publish(addrs[1], CH, SETUP + 1).await;
    signal("-CONT", &replica_pid);
    assert!(
        matches!(frozen, Answer::Unavailable),
        "acknowledged without a replica: {frozen:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(publish(addrs[2], CH, SETUP + 2).await, Answer::Stored(..)) {
        assert!(Instant::now() < deadline, "publishes not ok after SIGCONT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The master dies mid-stream; its replica takes over.
    let (stop_tx, stop) = watch::channel(false);
    let publisher = publish_continuously(addrs.clone(), CH, Duration::from_millis(5), stop);
    tokio::time::sleep(Duration::from_millis(700)).await;
    signal("-KILL", &pid(master));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(cluster.role(replica) == "master"
        && cluster
            .cli(replica, &["cluster", "info"])
            .contains("cluster_state:ok"))
    {
        assert!(Instant::now() < deadline, "the replica was not promoted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop_tx.send(true);
    let answers = publisher.await.expect("publisher");
    let acked: Vec<(u64, u64)> = answers
        .iter()
        .enumerate()
        .filter_map(|(n, a)| match a {
            Answer::Stored(offset, _) => Some((n as u64, *offset)),
            Answer::Unavailable => None,
        })
        .collect();
    assert!(
        acked.iter().any(|(n, _)| *n as usize > answers.len() / 2),
        "publishing went on after the promotion: {answers:?}"
    );
    // Every acknowledged publication (by its `n`) in history, once.
    let mut counts = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let history = loop {
        let r = api(
            addrs[0],
            "GET",
            &format!("/api/history/{CH}?limit=10000"),
            None,
        )
        .await;
        if r.status == 200 {
            break r.json();
        }
        assert!(
            Instant::now() < deadline,
            "history: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for p in history["publications"].as_array().expect("publications") {
        if let Some(n) = p["data"]["n"].as_u64() {
            *counts.entry(n).or_insert(0u32) += 1;
        }
    }
    let missing: Vec<u64> = acked
        .iter()
        .filter(|(n, _)| !counts.contains_key(n))
        .map(|(n, _)| *n)
        .collect();
    assert!(missing.is_empty(), "acknowledged, then lost: {missing:?}");
    let twice: Vec<u64> = acked
        .iter()
        .filter(|(n, _)| counts.get(n).is_some_and(|c| *c > 1))
        .map(|(n, _)| *n)
        .collect();
    assert!(
        twice.is_empty(),
        "acknowledged publications stored twice: {twice:?}"
    );
    eprintln!(
        "{} publishes: {} ok, {} answered 503",
        answers.len(),
        acked.len(),
        answers.len() - acked.len()
    );
    drop(cluster);
}

/// The ports of the master that holds `channel`'s keys (their hash tag is
/// the channel) and of its replica.
fn master_and_replica_of(cluster: &RedisCluster, channel: &str) -> (u16, u16) {
    let any = cluster.ports()[0];
    let slot: u16 = cluster
        .cli(any, &["cluster", "keyslot", channel])
        .trim()
        .parse()
        .expect("keyslot");
    let nodes = cluster.cli(any, &["cluster", "nodes"]);
    let rows: Vec<Vec<&str>> = nodes.lines().map(|l| l.split(' ').collect()).collect();
    let holds = |row: &Vec<&str>| {
        row.iter().skip(8).any(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
        })
    };
    let master = rows
        .iter()
        .find(|r| r.len() > 8 && r[2].contains("master") && holds(r))
        .expect("the slot's master");
    let replica = rows
        .iter()
        .find(|r| r.len() > 3 && r[2].contains("slave") && r[3] == master[0])
        .expect("its replica");
    let port = |row: &Vec<&str>| -> u16 {
        row[1]
            .split(['@', ':'])
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("port")
    };
    (port(master), port(replica))
}

/// `CLUSTER FAILOVER` on the replica of the master that holds `channel`'s
/// keys (their hash tag is the channel): its publications move to a new
/// master mid-stream.
fn fail_over_the_master_of(cluster: &RedisCluster, channel: &str) {
    let any = cluster.ports()[0];
    let slot: u16 = cluster
        .cli(any, &["cluster", "keyslot", channel])
        .trim()
        .parse()
        .expect("keyslot");
    let nodes = cluster.cli(any, &["cluster", "nodes"]);
    let rows: Vec<Vec<&str>> = nodes.lines().map(|l| l.split(' ').collect()).collect();
    let holds = |row: &Vec<&str>| {
        row.iter().skip(8).any(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
        })
    };
    let master = rows
        .iter()
        .find(|r| r.len() > 8 && r[2].contains("master") && holds(r))
        .expect("the slot's master");
    let replica = rows
        .iter()
        .find(|r| r.len() > 3 && r[2].contains("slave") && r[3] == master[0])
        .expect("its replica");
    let port: u16 = replica[1]
        .split(['@', ':'])
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("replica port");
    let answer = cluster.cli(port, &["cluster", "failover"]);
    assert_eq!(answer.trim(), "OK", "cluster failover: {answer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.role(port) != "master" {
        assert!(Instant::now() < deadline, "the replica was not promoted");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.wait_ok();
}
