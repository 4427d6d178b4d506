//! Issue 10, the policy part: what a client or a backend can make the node
//! keep (history of one-off channels), sizes that contradict each other, a
//! handshake racing the drain, the personal channel's presence and join, and
//! the `channels` claim governing every operation (PROTOCOL v1.1 §2, §7).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::proc::{BIN, ServerProcess, base_config};
use common::{API_KEY, Client, SECRET, TestServer, config, http, now, token, upgrade_request};
use serde_json::{Value, json};
use switchboard_server::auth::{Claims, mint_hs256};
use switchboard_server::config::{Dur, NamespaceConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHANNELS: usize = 10_000;

/// `switchboard_history_channels` from `/metrics`.
async fn history_channels(addr: std::net::SocketAddr) -> i64 {
    let r = http(addr, "GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 200);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_history_channels "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no switchboard_history_channels in /metrics"))
}

/// Publishes once to each of `CHANNELS` channels `brief:<i>`, through
/// `/api/broadcast` in batches.
async fn publish_everywhere(addr: std::net::SocketAddr) {
    let auth = format!("Bearer {API_KEY}");
    // Batches small enough to answer well within the client's 5 s on a loaded
    // machine (a debug build's file store takes ~2.5 ms a channel there).
    for batch in (0..CHANNELS).collect::<Vec<_>>().chunks(250) {
        let channels: Vec<String> = batch.iter().map(|i| format!("brief:{i}")).collect();
        let body = json!({"channels": channels, "data": {"n": 1}}).to_string();
        let r = http(
            addr,
            "POST",
            "/api/broadcast",
            &[("Authorization", &auth)],
            Some(&body),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// The history config of these tests: `brief:*` keeps history for 1 s, and
/// heartbeats tick every 200 ms (so the sweep runs every 250 ms).
fn brief_history(store: &str) -> String {
    format!(
        r#"{base}
[[namespaces]]
name = "brief"
history_size = 10
history_ttl = "1s"

[ws]
ping_interval = "1s"
ping_timeout = "1s"

[history]
{store}
"#,
        base = base_config(),
    )
}

/// Publishes to `CHANNELS` channels nobody touches again; the store must
/// hold none of them 3 s later.
async fn untouched_history_expires(server: &ServerProcess) {
    let addr = server.addr;
    let start = Instant::now();
    publish_everywhere(addr).await;
    let published = Instant::now();
    let publish_took = published - start;
    // Stored: readable right after, and counted by the sweep.
    let auth = format!("Bearer {API_KEY}");
    let r = http(
        addr,
        "GET",
        "/api/history/brief:9999",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(r.json()["publications"].as_array().map(Vec::len), Some(1));
    let mut most = 0;
    while published.elapsed() < Duration::from_millis(900) {
        most = most.max(history_channels(addr).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last publications were at most a second old at the first pass.
    assert!(most > 0, "the sweep counted {most} channels with history");
    eprintln!("published {CHANNELS} channels in {publish_took:?}; the sweep counted up to {most}");
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(published.elapsed())).await;
    assert_eq!(
        history_channels(addr).await,
        0,
        "3 s after, history is gone"
    );
    let r = http(
        addr,
        "GET",
        "/api/history/brief:9999",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(r.json()["publications"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_nobody_touches_expires_from_the_memory_store() {
    let server = ServerProcess::start(&brief_history(r#"store = "memory""#), &[]);
    let (rss_before, cpu_before) = (server.rss_kib(), server.cpu());
    untouched_history_expires(&server).await;
    let grown = server.rss_kib().saturating_sub(rss_before);
    eprintln!(
        "memory store: RSS {rss_before} KiB before, +{grown} KiB after; CPU {:?}",
        server.cpu() - cpu_before
    );
    // 10,000 streams cost a few MiB while they live; what stays is the
    // allocator's, not the streams'.
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_nobody_touches_expires_from_the_file_store_and_its_rows() {
    let mut server = ServerProcess::start(
        &brief_history("store = \"file\"\npath = \"history.db\"\nsync = \"batch\""),
        &[],
    );
    untouched_history_expires(&server).await;
    // Stop it cleanly, then count the file's rows.
    let pid = server.pid().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let path = server.dir.path().join("history.db");
    let h = switchboard_core::FileHistory::open(&path, switchboard_core::SyncMode::Always)
        .expect("the history file opens");
    assert_eq!(h.rows().expect("rows"), (0, 0), "(channels, publications)");
}

#[tokio::test]
async fn publishing_past_the_history_channel_cap_is_limit_exceeded() {
    let mut cfg = config();
    cfg.namespaces.push(NamespaceConfig {
        name: "capped".into(),
        publish: true,
        history_size: 10,
        history_ttl: Dur::secs(600),
        history_max_channels: 2,
        ..Default::default()
    });
    let s = TestServer::start(cfg).await;
    s.publish("capped:a", json!(1)).await;
    s.publish("capped:b", json!(1)).await;
    s.publish("capped:a", json!(2)).await;
    let body = json!({"channel": "capped:c", "data": 1}).to_string();
    let r = s.http("POST", "/api/publish", Some(&body)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_code(), "limit_exceeded");
    let mut c = s.client("alice").await;
    let r = c
        .call(json!({"op": "publish", "channel": "capped:d", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], "limit_exceeded", "{r}");
    // Nothing was published: the channel has no stream.
    let r = c
        .call(json!({"op": "publish", "channel": "capped:a", "data": 3}))
        .await;
    assert_eq!(r["result"]["offset"], 3, "{r}");
}

#[test]
fn check_config_refuses_a_body_that_cannot_fit_a_send_queue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let f = dir.path().join("c.toml");
    let run = |toml: &str| {
        std::fs::write(&f, toml).expect("write");
        let out = std::process::Command::new(BIN)
            .arg("check-config")
            .arg(&f)
            .env_clear()
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let base = format!("[auth]\nhmac_secret = \"{SECRET}\"\n");
    let (ok, err) = run(&format!(
        "{base}[api]\nkey = \"k\"\nmax_body_bytes = 1048576\n[ws]\nsend_queue_max_bytes = 1048576\n"
    ));
    assert!(!ok, "{err}");
    assert!(
        err.contains("api.max_body_bytes") && err.contains("ws.send_queue_max_bytes"),
        "{err}"
    );
    let (ok, out) = run(&format!(
        "{base}[api]\nkey = \"k\"\nmax_body_bytes = 1048576\n[ws]\nsend_queue_max_bytes = 2097152\n"
    ));
    assert!(ok, "{out}");
    let (ok, out) = run(&format!("{base}[api]\nkey = \"k\"\n"));
    assert!(ok, "the defaults agree: {out}");
}

/// How one connection of the drain test ended.
#[derive(Debug, PartialEq)]
enum Ending {
    /// Refused before the upgrade (503 while draining), or not connected.
    Refused,
    /// Upgraded, then closed with this code (`None`: TCP closed without one).
    Closed(Option<u16>),
    /// Upgraded and never closed: the straggler shutdown would wait out.
    Open,
    /// Upgraded and closed by the test before SIGTERM (no part of the race).
    Dropped,
}

/// The close code among the server's frames after the `101` head.
fn close_code(mut frames: &[u8]) -> Option<u16> {
    while frames.len() >= 2 {
        let op = frames[0] & 0x0f;
        let (len, head) = match frames[1] & 0x7f {
            126 if frames.len() >= 4 => (u16::from_be_bytes([frames[2], frames[3]]) as usize, 4),
            127 if frames.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&frames[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n if n < 126 => (n as usize, 2),
            _ => return None,
        };
        let payload = frames.get(head..head + len)?;
        if op == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
        frames = &frames[head + len..];
    }
    None
}

/// Opens one upgrade and reads what follows: a connection still quiet 150 ms
/// on is dropped by the test while no SIGTERM was sent (so few are open at
/// once), and otherwise read to its end.
async fn connect_once(
    addr: std::net::SocketAddr,
    user: &str,
    signalled: Arc<AtomicBool>,
    via_hyper: bool,
) -> Option<tokio::task::JoinHandle<Ending>> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    if via_hyper {
        // An upgrade after a plain request on the same connection takes
        // hyper's route: a task hop between the draining check and the node.
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        while !buf.windows(8).any(|w| w == b"\"status\"") {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return Some(tokio::spawn(async { Ending::Refused })),
            }
        }
        buf.clear();
    }
    let req = upgrade_request(addr, &format!("/ws?token={}", token(user, 600, &[])), &[]);
    s.write_all(&req).await.ok()?;
    Some(tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
        loop {
            match tokio::time::timeout(Duration::from_millis(150), s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) if !signalled.load(Ordering::SeqCst) => return Ending::Dropped,
                Err(_) if tokio::time::Instant::now() >= deadline => return Ending::Open,
                Err(_) => {}
            }
        }
        let Some(start) = buf.windows(12).position(|w| w == b"HTTP/1.1 101") else {
            return Ending::Refused;
        };
        let end = buf[start..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(buf.len(), |e| start + e + 4);
        Ending::Closed(close_code(&buf[end..]))
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_racing_sigterm_all_get_1001_and_the_exit_is_prompt() {
    let toml = format!(
        "shutdown_timeout = \"30s\"\n{}\n[limits]\nmax_connections_per_user = 1000\n",
        base_config()
    );
    let mut server = ServerProcess::start(&toml, &[]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let signalled = Arc::new(AtomicBool::new(false));
    let mut connectors = Vec::new();
    for t in 0..8 {
        let stop = stop.clone();
        let signalled = signalled.clone();
        connectors.push(tokio::spawn(async move {
            let mut endings = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 3_000 {
                n += 1;
                let user = format!("u{t}-{n}");
                match connect_once(addr, &user, signalled.clone(), n % 2 == 0).await {
                    Some(h) => endings.push(h),
                    None => break, // the listener is gone
                }
            }
            endings
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = server.pid().to_string();
    signalled.store(true, Ordering::SeqCst);
    let signalled = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = server.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within 15 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut upgraded, mut refused, mut dropped) = (0, 0, 0);
    for c in connectors {
        for h in c.await.expect("connector") {
            match h.await.expect("reader") {
                Ending::Dropped => dropped += 1,
                Ending::Refused => refused += 1,
                Ending::Closed(code) => {
                    upgraded += 1;
                    assert!(
                        matches!(code, Some(1001) | None),
                        "an upgraded client was closed {code:?}"
                    );
                }
                Ending::Open => panic!("an upgraded client was never closed"),
            }
        }
    }
    assert!(status.success(), "{status:?}");
    assert!(
        upgraded > 10,
        "only {upgraded} connections open at SIGTERM ({dropped} dropped before)"
    );
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?} of its 30 s timeout ({upgraded} closed by it, {refused} refused)"
    );
    eprintln!(
        "drain: {upgraded} closed by it, {refused} refused, {dropped} dropped before, {took:?}"
    );
}

/// A `user` namespace with presence and join/leave on.
fn announced_user_namespace() -> switchboard_server::config::Config {
    let mut cfg = config();
    for ns in &mut cfg.namespaces {
        if ns.name == "user" {
            ns.presence = true;
            ns.join_leave = true;
        }
    }
    cfg
}

async fn presence_clients(c: &mut Client, channel: &str) -> Vec<String> {
    let r = c.call(json!({"op": "presence", "channel": channel})).await;
    assert_eq!(r["ok"], true, "{r}");
    let mut ids: Vec<String> = r["result"]["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|e| e["client"].as_str().expect("client").to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn the_personal_channel_announces_connect_and_leave_alike() {
    let s = TestServer::start(announced_user_namespace()).await;
    let mut a1 = s.client("alice").await;
    let a1_id = a1.welcome["client"].as_str().expect("id").to_string();
    // Its own join, as a subscriber gets its own join push.
    let join = a1.recv_type("join").await;
    assert_eq!(
        (join["channel"].as_str(), join["client"].as_str()),
        (Some("user:alice"), Some(a1_id.as_str()))
    );
    assert_eq!(join["info"], json!({"name": "alice"}));
    let a2 = s.client("alice").await;
    let a2_id = a2.welcome["client"].as_str().expect("id").to_string();
    let join = a1.recv_type("join").await;
    assert_eq!(join["client"].as_str(), Some(a2_id.as_str()));
    let mut both = vec![a1_id.clone(), a2_id.clone()];
    both.sort();
    assert_eq!(presence_clients(&mut a1, "user:alice").await, both);
    drop(a2);
    let leave = a1.recv_type("leave").await;
    assert_eq!(
        (leave["channel"].as_str(), leave["client"].as_str()),
        (Some("user:alice"), Some(a2_id.as_str()))
    );
    assert_eq!(presence_clients(&mut a1, "user:alice").await, vec![a1_id]);
    // Leaving the personal channel and joining it again is symmetric too.
    let r = a1
        .call(json!({"op": "unsubscribe", "channel": "user:alice"}))
        .await;
    assert_eq!(r["ok"], true);
    let mut a3 = s.client("alice").await;
    a3.recv_type("join").await;
    assert_eq!(presence_clients(&mut a3, "user:alice").await.len(), 1);
}

#[tokio::test]
async fn without_announcements_the_personal_channel_stays_silent() {
    let s = TestServer::start(config()).await;
    let mut a1 = s.client("alice").await;
    let a2 = s.client("alice").await;
    drop(a2);
    assert!(a1.quiet_for(Duration::from_millis(300)).await);
}

/// A config whose `vip` namespace (subscribe = "claims") has publish,
/// presence and history on.
fn vip_config() -> switchboard_server::config::Config {
    let mut cfg = config();
    for ns in &mut cfg.namespaces {
        if ns.name == "vip" {
            ns.publish = true;
            ns.presence = true;
            ns.join_leave = true;
            ns.history_size = 10;
            ns.history_ttl = Dur::secs(600);
        }
    }
    cfg
}

fn minted(user: &str, channels: &[&str], info: Value) -> String {
    let claims = Claims {
        sub: user.into(),
        exp: Some(now() + 600),
        channels: channels.iter().map(|s| s.to_string()).collect(),
        info: Some(info),
    };
    mint_hs256(SECRET, &claims).expect("mint")
}

async fn ops(c: &mut Client, channel: &str) -> [String; 4] {
    let mut codes = Vec::new();
    for cmd in [
        json!({"op": "subscribe", "channel": channel}),
        json!({"op": "publish", "channel": channel, "data": {"x": 1}}),
        json!({"op": "presence", "channel": channel}),
        json!({"op": "history", "channel": channel}),
    ] {
        let r = c.call(cmd).await;
        codes.push(if r["ok"] == true {
            "ok".to_string()
        } else {
            r["error"]["code"].as_str().unwrap_or("?").to_string()
        });
    }
    codes.try_into().expect("four")
}

#[tokio::test]
async fn in_a_claims_namespace_the_claim_governs_every_operation() {
    let s = TestServer::start(vip_config()).await;
    let mut without = Client::connect(s.addr, &minted("bob", &["vip:other"], json!({}))).await;
    let forbidden = "forbidden".to_string();
    assert_eq!(
        ops(&mut without, "vip:a").await,
        [
            forbidden.clone(),
            forbidden.clone(),
            forbidden.clone(),
            forbidden.clone()
        ]
    );
    let mut with = Client::connect(s.addr, &minted("carol", &["vip:*"], json!({}))).await;
    let ok = "ok".to_string();
    assert_eq!(
        ops(&mut with, "vip:a").await,
        [ok.clone(), ok.clone(), ok.clone(), ok.clone()]
    );
    // The publication refused to bob did not happen: one offset, carol's.
    let h = s.http("GET", "/api/history/vip:a", None).await.json();
    assert_eq!(h["offset"], 1, "{h}");
    // A claim for another channel of the namespace allows that one only.
    let r = without
        .call(json!({"op": "publish", "channel": "vip:other", "data": 1}))
        .await;
    assert_eq!(r["ok"], true, "an exact claim allows its channel: {r}");
}

#[tokio::test]
async fn a_refresh_grants_and_withdraws_channels_and_changes_info() {
    let s = TestServer::start(vip_config()).await;
    let mut bob = Client::connect(s.addr, &minted("bob", &[], json!({"v": 1}))).await;
    let forbidden = "forbidden".to_string();
    assert_eq!(
        ops(&mut bob, "vip:a").await[..2],
        [forbidden.clone(), forbidden.clone()]
    );
    // Granted.
    let r = bob
        .call(json!({"op": "refresh", "token": minted("bob", &["vip:*"], json!({"v": 2}))}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let ok = "ok".to_string();
    assert_eq!(
        ops(&mut bob, "vip:a").await,
        [ok.clone(), ok.clone(), ok.clone(), ok.clone()]
    );
    // The new info is what others see.
    let mut carol = Client::connect(s.addr, &minted("carol", &["vip:*"], json!({}))).await;
    carol.subscribe("vip:a").await;
    let r = carol
        .call(json!({"op": "presence", "channel": "vip:a"}))
        .await;
    let infos: Vec<Value> = r["result"]["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|e| e["info"].clone())
        .collect();
    assert!(infos.contains(&json!({"v": 2})), "{r}");
    // Withdrawn: every operation is refused and the subscription is left.
    let r = bob
        .call(json!({"op": "refresh", "token": minted("bob", &[], json!({"v": 3}))}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        ops(&mut bob, "vip:a").await,
        [
            forbidden.clone(),
            forbidden.clone(),
            forbidden.clone(),
            forbidden.clone()
        ]
    );
    let leave = carol.recv_type("leave").await;
    assert_eq!(leave["user"], "bob", "{leave}");
    s.publish("vip:a", json!({"after": true})).await;
    assert_eq!(carol.recv_type("pub").await["data"], json!({"after": true}));
    assert!(
        bob.quiet_for(Duration::from_millis(300)).await,
        "a withdrawn channel delivers nothing"
    );
    // Another user's token changes nothing.
    let r = bob
        .call(json!({"op": "refresh", "token": minted("mallory", &["vip:*"], json!({}))}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden");
    assert_eq!(ops(&mut bob, "vip:a").await[1], forbidden);
}
