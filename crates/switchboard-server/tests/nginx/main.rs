//! nginx tested live (issue 13): Debian's nginx with the shipped
//! `deploy/nginx-switchboard.conf`, TLS with a certificate made here, in front
//! of two `switchboard` processes on one test redis-server. WebSocket and SSE
//! sessions go through it: the upgrade, an idle session kept open by the
//! server's pings past nginx's `proxy_read_timeout`, a killed node's clients
//! coming back through nginx on the other node with nothing missed.
//!
//! nginx must be installed (`scripts/test` installs Debian's `nginx`); these
//! tests fail, never skip, without it.

#[path = "../common/mod.rs"]
mod common;

mod client;
mod site;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use client::{Endpoint, Frame, Ws};
use common::proc::{ServerProcess, base_config};
use common::{API_KEY, token};
use serde_json::{Value, json};
use site::Site;
use switchboard_redis::testing::RedisServer;

/// Two nodes on one Redis and nginx in front of them.
struct Gateway {
    // Dropped in this order: nginx, then the nodes, then Redis.
    site: Site,
    nodes: Vec<Option<ServerProcess>>,
    _redis: RedisServer,
}

/// How the gateway differs from the shipped defaults.
#[derive(Default)]
struct Setup {
    /// The nodes' `[ws] ping_interval`; 30 s when `None`.
    ping_interval: Option<&'static str>,
    /// The rendered copy's `proxy_read_timeout` (3600 s when `None`).
    read_timeout: Option<Duration>,
    /// The nodes' `[shutdown] ready_grace`; `base_config`'s 0 s when `None`.
    ready_grace: Option<&'static str>,
}

fn node_config(name: &str, redis: &RedisServer, setup: &Setup) -> String {
    let ping = setup.ping_interval.unwrap_or("30s");
    let grace = setup.ready_grace.unwrap_or("0s");
    let base = base_config();
    assert!(
        base.contains("ready_grace = \"0s\""),
        "base_config's [shutdown]"
    );
    let base = base.replace(
        "ready_grace = \"0s\"",
        &format!("ready_grace = \"{grace}\"\ndrain_period = \"1s\""),
    );
    format!(
        r#"node_name = "{name}"
shutdown_timeout = "2s"
{base}
[[namespaces]]
name = "user"
history_size = 100
history_ttl = "10m"

[ws]
ping_interval = "{ping}"

[broker]
kind = "redis"
redis_url = "{url}"
stall_timeout = "2s"

[presence]
ttl = "2s"
"#,
        url = redis.url(),
    )
}

impl Gateway {
    fn start(setup: Setup) -> Gateway {
        let redis = RedisServer::start();
        let nodes: Vec<ServerProcess> = ["n1", "n2"]
            .iter()
            .map(|n| ServerProcess::start(&node_config(n, &redis, &setup), &[]))
            .collect();
        let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
        let site = Site::start(&addrs, setup.read_timeout);
        Gateway {
            site,
            nodes: nodes.into_iter().map(Some).collect(),
            _redis: redis,
        }
    }

    fn nginx(&self) -> &Endpoint {
        &self.site.endpoint
    }

    fn node(&self, name: &str) -> &ServerProcess {
        self.nodes[index(name)].as_ref().expect("node running")
    }

    /// SIGKILL: the node's sockets close with no goodbye.
    fn kill(&mut self, name: &str) {
        if let Some(n) = self.nodes[index(name)].take() {
            n.kill();
        }
    }

    /// SIGTERM: the graceful stop.
    fn terminate(&self, name: &str) {
        let pid = self.node(name).pid().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM {pid}");
    }

    /// Waits for a node to exit by itself; whether it exited 0.
    fn exited_cleanly(&mut self, name: &str) -> bool {
        let node = self.nodes[index(name)].as_mut().expect("node running");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = node.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{name} still running 20 s after SIGTERM");
    }

    /// Publishes through nginx with an idempotency key, retrying on 502 (a
    /// request nginx had already sent on a kept-alive connection to a node
    /// that died): the retry cannot publish twice.
    async fn publish(&self, channel: &str, data: Value) -> Value {
        let key = format!("{channel}-{data}");
        let body = json!({"channel": channel, "data": data, "idempotency_key": key}).to_string();
        for _ in 0..3 {
            let r = self
                .nginx()
                .https(
                    "POST",
                    "/api/publish",
                    &[
                        ("Authorization", &format!("Bearer {API_KEY}")),
                        ("Content-Type", "application/json"),
                    ],
                    Some(&body),
                )
                .await;
            if r.status == 502 {
                continue;
            }
            assert_eq!(r.status, 200, "publish through nginx: {}", r.body);
            return r.json();
        }
        panic!("502 three times: {}", self.site.error_log());
    }

    /// A WebSocket through nginx (panics with nginx's log if refused).
    async fn ws(&self, user: &str) -> Ws {
        match self.nginx().ws(&token(user, 3600, &[])).await {
            Ok(c) => c,
            Err(e) => panic!("upgrade through nginx: {e}\n{}", self.site.error_log()),
        }
    }

    /// The node serving `user`'s client in `channel`, from presence.
    async fn node_of(&self, user: &str, channel: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            for n in self.nodes.iter().flatten() {
                let r = common::http(
                    n.addr,
                    "GET",
                    &format!("/api/presence/{channel}"),
                    &[("Authorization", &format!("Bearer {API_KEY}"))],
                    None,
                )
                .await;
                let found = r.json()["clients"].as_array().and_then(|cs| {
                    cs.iter()
                        .find(|c| c["user"] == user)
                        .and_then(|c| c["node"].as_str().map(String::from))
                });
                if let Some(node) = found {
                    return node;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user} never showed in the presence of {channel}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn index(name: &str) -> usize {
    match name {
        "n1" => 0,
        "n2" => 1,
        other => panic!("no node {other}"),
    }
}

fn other(name: &str) -> &'static str {
    if name == "n1" { "n2" } else { "n1" }
}

fn data(pubs: &[Value]) -> Vec<Value> {
    pubs.iter().map(|p| p["data"].clone()).collect()
}

/// The upgrade and the event stream pass through nginx over TLS, nginx
/// spreads clients over both nodes, a publication sent through nginx reaches
/// clients on both, and the operations endpoints stay closed to the outside
/// as the shipped file says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_sse_sessions_pass_through_nginx_over_tls() {
    let gw = Gateway::start(Setup::default());
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = gw.ws(&format!("u{i}")).await;
        let r = c
            .call(json!({"op": "subscribe", "channel": "chat:room"}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
        clients.push(c);
    }
    let nodes: BTreeSet<String> = clients.iter().map(Ws::node).collect();
    assert_eq!(nodes, BTreeSet::from(["n1".into(), "n2".into()]));

    let t = token("reader", 3600, &[]);
    let mut sse = gw
        .nginx()
        .sse(&format!("/sse?channel=chat:room&token={t}"), &[])
        .await;
    sse.positioned(2).await;

    let pos = gw.publish("chat:room", json!("hello")).await;
    assert_eq!(pos["offset"], 1, "{pos}");
    for c in &mut clients {
        let p = c.recv_type("pub").await;
        assert_eq!(
            (p["offset"].clone(), p["data"].clone()),
            (json!(1), json!("hello"))
        );
    }
    // Unbuffered: the event arrives while the response is still open.
    assert_eq!(data(&sse.pubs(1).await), [json!("hello")]);
    assert!(!sse.ended);
    let pong = clients[0].call(json!({"op": "ping"})).await;
    assert_eq!(pong["type"], "pong");

    let ready = gw.nginx().https("GET", "/ready", &[], None).await;
    assert_eq!(
        ready.status, 403,
        "/ready is for the operator's network only"
    );
    let direct = common::http(gw.node("n1").addr, "GET", "/ready", &[], None).await;
    assert_eq!(direct.status, 200, "{}", direct.body);
}

/// With pings every second a session idle for three times nginx's
/// `proxy_read_timeout` (3 s in this copy; 3600 s shipped) stays open, on a
/// WebSocket (protocol pings) and on an event stream (`: ping` comments).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_idle_sessions_open_past_proxy_read_timeout() {
    let read_timeout = Duration::from_secs(3);
    let gw = Gateway::start(Setup {
        ping_interval: Some("1s"),
        read_timeout: Some(read_timeout),
        ..Setup::default()
    });
    let mut ws = gw.ws("idle-ws").await;
    let r = ws
        .call(json!({"op": "subscribe", "channel": "chat:idle"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let t = token("idle-sse", 3600, &[]);
    let mut sse = gw
        .nginx()
        .sse(&format!("/sse?channel=chat:idle&token={t}"), &[])
        .await;
    sse.positioned(2).await;

    let idle = read_timeout * 3;
    let ws_idle = async {
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match ws.frame(left).await {
                None => return,
                Some(Frame::Text(v)) if v["type"] == "join" => {}
                Some(Frame::Text(v)) => panic!("the idle WebSocket got {v}"),
                Some(Frame::Closed(code)) => panic!("closed ({code:?}) while idle"),
            }
        }
    };
    let sse_idle = async {
        let deadline = tokio::time::Instant::now() + idle;
        let mut comments = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match sse.next_within(left).await {
                None => return comments,
                Some(Some(e)) if e.comment.is_some() => comments += 1,
                Some(Some(e)) if e.event.as_deref() == Some("join") => {}
                Some(other) => panic!("the idle stream got {other:?}"),
            }
        }
    };
    let ((), comments) = tokio::join!(ws_idle, sse_idle);
    assert!(ws.pings >= 3, "{} protocol pings in {idle:?}", ws.pings);
    assert!(comments >= 3, "{comments} keep-alive comments in {idle:?}");

    gw.publish("chat:idle", json!("still here")).await;
    assert_eq!(ws.recv_type("pub").await["data"], "still here");
    assert_eq!(data(&sse.pubs(1).await), [json!("still here")]);
}

/// The other side of the previous test: without pings inside the timeout
/// nginx does cut an idle WebSocket, so that test's timeout was in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pings_nginx_cuts_an_idle_websocket_at_proxy_read_timeout() {
    let gw = Gateway::start(Setup {
        ping_interval: Some("30s"),
        read_timeout: Some(Duration::from_secs(2)),
        ..Setup::default()
    });
    let mut ws = gw.ws("quiet").await;
    match ws.frame(Duration::from_secs(15)).await {
        Some(Frame::Closed(_)) => {}
        Some(Frame::Text(v)) => panic!("a frame instead of the cut: {v}"),
        None => panic!("still open after 15 s, past a 2 s proxy_read_timeout"),
    }
    assert_eq!(ws.pings, 0);
}

/// A node dies (SIGKILL): its WebSocket and SSE clients lose their
/// connection, reconnect through nginx, land on the other node (nginx skips
/// the dead one) and recover what was published meanwhile, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_reconnect_through_nginx_and_recover() {
    let mut gw = Gateway::start(Setup::default());
    let mut ws = gw.ws("alice").await;
    let victim = ws.node();
    let sub = ws
        .call(json!({"op": "subscribe", "channel": "chat:room"}))
        .await;
    assert_eq!(sub["ok"], true, "{sub}");
    let epoch = sub["result"]["epoch"].clone();

    // Round robin alternates: open streams until one is on the same node.
    let mut sse = None;
    for i in 0..6 {
        let user = format!("reader{i}");
        let t = token(&user, 3600, &[]);
        let mut s = gw
            .nginx()
            .sse(&format!("/sse?channel=chat:room&token={t}"), &[])
            .await;
        s.positioned(2).await;
        if gw.node_of(&user, "chat:room").await == victim {
            sse = Some((s, t));
            break;
        }
    }
    let (mut sse, t) = sse.expect("a stream on the WebSocket's node within 6 tries");

    for i in 1..=3 {
        gw.publish("chat:room", json!(i)).await;
    }
    let mut seen = Vec::new();
    for _ in 1..=3 {
        seen.push(ws.recv_type("pub").await["data"].clone());
    }
    assert_eq!(seen, [json!(1), json!(2), json!(3)]);
    assert_eq!(data(&sse.pubs(3).await), [json!(1), json!(2), json!(3)]);
    let last_id = sse.last_id.clone().expect("an event id");

    gw.kill(&victim);
    ws.closed().await;
    sse.ended().await;
    for i in 4..=6 {
        gw.publish("chat:room", json!(i)).await;
    }

    let mut ws = gw.ws("alice").await;
    assert_eq!(ws.node(), other(&victim), "nginx passed the dead node over");
    let r = ws
        .call(json!({
            "op": "subscribe",
            "channel": "chat:room",
            "since": {"offset": 3, "epoch": epoch}
        }))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["recovered"], true, "{r}");
    let recovered: Vec<Value> = r["result"]["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(recovered, [json!(4), json!(5), json!(6)]);

    let mut sse = gw
        .nginx()
        .sse(
            &format!("/sse?channel=chat:room&token={t}"),
            &[("Last-Event-ID", &last_id)],
        )
        .await;
    let mut rest = Vec::new();
    while rest.len() < 3 {
        let e = sse.next().await;
        match e.event.as_deref() {
            Some("recovered") => assert_eq!(e.json()["recovered"], true, "{e:?}"),
            Some("pub") => rest.push(e.json()),
            _ => {}
        }
    }
    assert_eq!(data(&rest), [json!(4), json!(5), json!(6)]);

    gw.publish("chat:room", json!(7)).await;
    assert_eq!(ws.recv_type("pub").await["data"], 7);
    assert_eq!(data(&sse.pubs(1).await), [json!(7)]);
}

/// nginx OSS has no active health checks, so "/ready taking a draining node
/// out" means, with it: on SIGTERM the node answers /ready 503 for
/// `ready_grace` (for balancers that probe) while it still serves, new
/// clients through nginx included; then it closes its listener and its
/// clients (1001, with a `reconnect_after_ms`, passed on by nginx), and nginx,
/// failing to connect to it, sends every new client to the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_is_unready_then_nginx_sends_every_new_client_to_the_other() {
    let mut gw = Gateway::start(Setup {
        ready_grace: Some("5s"),
        ..Setup::default()
    });
    let mut ws = gw.ws("alice").await;
    let victim = ws.node();
    let direct = gw.node(&victim).addr;
    gw.terminate(&victim);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while common::http(direct, "GET", "/ready", &[], None)
        .await
        .status
        != 503
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready never answered 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // ready_grace: unready, and still serving everyone.
    assert_eq!(ws.call(json!({"op": "ping"})).await["type"], "pong");
    let mut during = Vec::new();
    for i in 0..2 {
        during.push(gw.ws(&format!("early{i}")).await.node());
    }
    assert!(
        during.contains(&victim),
        "round robin reached the unready node and it admitted: {during:?}"
    );

    let bye = ws.recv_type("disconnect").await;
    assert_eq!(bye["code"], 1001, "{bye}");
    assert!(bye["reconnect_after_ms"].is_u64(), "{bye}");
    assert_eq!(ws.closed().await, Some(1001));

    for i in 0..4 {
        let c = gw.ws(&format!("late{i}")).await;
        assert_eq!(
            c.node(),
            other(&victim),
            "nginx passed the stopped node over"
        );
    }
    assert!(gw.exited_cleanly(&victim), "exit status 0 after the drain");
}
