//! The edges a hostile or careless client reaches first: the front path's
//! first bytes, origins, the backend API under a flood, and what the config
//! prints. Bounds on memory and CPU are read from `/proc` of the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until `want` appears in what arrived, the peer closes, or `within`
/// passes; returns everything read.
async fn read_until(s: &mut TcpStream, want: &[u8], within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&chunk[..n]);
                    if !want.is_empty() && got.windows(want.len()).any(|w| w == want) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    got
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A command frame sent right behind the upgrade request, in the same write
/// or in the next one (its own TCP segment, arriving while the head is being
/// parsed), is answered: no wake-up for its bytes is lost. The loss is a race
/// of microseconds: with the readiness cleared without a read, 3,000 rounds
/// lost a frame in about half the runs; hence the many rounds (~2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pipelined_behind_the_upgrade_request_are_answered() {
    let srv = TestServer::start(config()).await;
    let path = format!("/ws?token={}", srv.token("pipelined"));
    let head = upgrade_request(srv.addr, &path, &[]);
    for round in 0..6000u32 {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let frame = masked_text_frame(format!(r#"{{"op":"ping","id":{round}}}"#).as_bytes());
        match round % 3 {
            // One segment: head and frame together.
            0 => {
                let mut both = head.clone();
                both.extend_from_slice(&frame);
                s.write_all(&both).await.expect("write");
            }
            // Two segments back to back.
            1 => {
                s.write_all(&head).await.expect("write head");
                s.write_all(&frame).await.expect("write frame");
            }
            // The frame 0-150 µs later, while the server routes the head.
            _ => {
                s.write_all(&head).await.expect("write head");
                let until = Instant::now() + Duration::from_micros(u64::from(round % 150));
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                s.write_all(&frame).await.expect("write frame");
            }
        }
        let want = format!(r#""id":{round}"#);
        let got = read_until(&mut s, want.as_bytes(), Duration::from_secs(3)).await;
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "round {round}: no 101: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            contains(&got, b"\"pong\"") && contains(&got, want.as_bytes()),
            "round {round}: the pipelined ping was not answered within 3 s: {}",
            String::from_utf8_lossy(&got)
        );
    }
}

/// A client that sends its upgrade request and at once its FIN (half-close)
/// is noticed: the server ends the connection instead of holding it until
/// the heartbeat reaps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fin_right_after_the_upgrade_request_is_noticed() {
    let srv = TestServer::start(config()).await;
    let path = format!("/ws?token={}", srv.token("finisher"));
    let head = upgrade_request(srv.addr, &path, &[]);
    for round in 0..100u32 {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.write_all(&head).await.expect("write head");
        if round % 2 == 1 {
            tokio::task::yield_now().await;
        }
        s.shutdown().await.expect("half-close");
        // Everything the server sends, up to its end of the connection.
        let started = Instant::now();
        let got = read_until(&mut s, b"", Duration::from_secs(3)).await;
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "round {round}: no 101: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "round {round}: the server kept a half-closed client open"
        );
    }
    // And the node let every one of them go.
    let deadline = Instant::now() + Duration::from_secs(3);
    while srv.state.node.hub.connection_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(srv.state.node.hub.connection_count(), 0);
}

/// A history store that fails every append to channels named `chat:fail…`,
/// as a store that lost its disk (or its connection) would.
struct FailingHistory(switchboard_core::MemoryHistory);

impl switchboard_core::HistoryStore for FailingHistory {
    fn append(
        &self,
        channel: &switchboard_protocol::ChannelName,
        data: bytes::Bytes,
        from: Option<std::sync::Arc<str>>,
        retention: switchboard_core::Retention,
    ) -> Result<std::sync::Arc<switchboard_protocol::Publication>, switchboard_core::HistoryError>
    {
        if channel.as_str().starts_with("chat:fail") {
            return Err(switchboard_core::HistoryError::Store(
                "the disk is gone".into(),
            ));
        }
        self.0.append(channel, data, from, retention)
    }

    fn read(
        &self,
        channel: &switchboard_protocol::ChannelName,
        query: &switchboard_core::HistoryQuery,
        retention: switchboard_core::Retention,
    ) -> Result<switchboard_core::HistoryRead, switchboard_core::HistoryError> {
        self.0.read(channel, query, retention)
    }

    fn sweep(&self, pass: &switchboard_core::Sweep<'_>) -> switchboard_core::Swept {
        self.0.sweep(pass)
    }
}

/// An in-process server whose node stores history in `FailingHistory`.
async fn start_with_failing_history() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    use std::sync::Arc;
    use switchboard_core::{MemoryBroker, MemoryPresence, Namespaces, Node, NodeOptions};
    let cfg = config();
    let state = switchboard_server::server::build_state(cfg.clone(), false)
        .await
        .expect("state");
    let Ok(mut st) = Arc::try_unwrap(state) else {
        panic!("the state is shared before the server runs");
    };
    let history = Arc::new(FailingHistory(switchboard_core::MemoryHistory::new()));
    let node = Node::new(
        NodeOptions {
            namespaces: Namespaces::new(cfg.namespace_policies()),
            ..Default::default()
        },
        Arc::new(MemoryBroker::new(history)),
        Arc::new(MemoryPresence::default()),
    );
    st.registry = node.metrics.registry();
    st.node = node;
    let listener =
        switchboard_server::server::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(switchboard_server::server::run(
        Arc::new(st),
        listener,
        async {
            let _ = rx.await;
        },
    ));
    (addr, tx)
}

/// A broadcast that fails part-way publishes every channel it can and says,
/// channel by channel, which were published (offset, epoch) and which were
/// not (error): the caller retries only those, and nothing is duplicated.
#[tokio::test]
async fn a_broadcast_that_fails_part_way_says_which_channels_were_published() {
    let (addr, _stop) = start_with_failing_history().await;
    let key = format!("Bearer {API_KEY}");
    let auth = [("Authorization", key.as_str())];
    let mut watcher = Client::connect(addr, &token("watcher", 3600, &[])).await;
    watcher.subscribe("chat:a").await;
    watcher.subscribe("chat:b").await;

    let body = r#"{"channels":["chat:a","chat:fail","chat:b"],"data":{"n":1}}"#;
    let r = http(addr, "POST", "/api/broadcast", &auth, Some(body)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    let v = r.json();
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 of 3")),
        "{v}"
    );
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{v}");
    assert_eq!(results[0]["channel"], "chat:a");
    assert_eq!(results[0]["offset"], 1, "{v}");
    assert!(results[0]["epoch"].is_string() && results[0].get("error").is_none());
    assert_eq!(results[1]["channel"], "chat:fail");
    assert_eq!(results[1]["error"]["code"], "unavailable", "{v}");
    assert!(results[1]["error"]["message"].is_string() && results[1].get("offset").is_none());
    assert_eq!(results[2]["channel"], "chat:b");
    assert_eq!(results[2]["offset"], 1, "{v}");

    // The watcher got each published channel once.
    for ch in ["chat:a", "chat:b"] {
        let p = watcher.recv_type("pub").await;
        assert_eq!(p["channel"], ch);
        assert_eq!(p["offset"], 1);
    }
    // Retrying what failed publishes nothing twice.
    let retry = r#"{"channels":["chat:fail"],"data":{"n":1}}"#;
    let r = http(addr, "POST", "/api/broadcast", &auth, Some(retry)).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(watcher.quiet_for(Duration::from_millis(300)).await);

    // All published: 200 and results only.
    let ok = r#"{"channels":["chat:a","chat:b"],"data":{"n":2}}"#;
    let r = http(addr, "POST", "/api/broadcast", &auth, Some(ok)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert!(v.get("error").is_none(), "{v}");
    assert_eq!(v["results"][0]["offset"], 2, "{v}");
    assert_eq!(v["results"][1]["offset"], 2, "{v}");
}

/// Under a flood of `/api` requests from a backend (slow bodies that hold
/// memory, and fast publishes on fresh connections), `/health`, `/ready` and
/// `/metrics` keep answering quickly, the flood past
/// `api.max_concurrent_requests` gets `503` + `Retry-After`, the server's
/// memory stays within a bound (without the bound, every slow body held its
/// megabyte: ~200 MiB here), and the API serves again once the flood is gone.
#[test]
fn an_api_flood_leaves_health_answering_and_memory_bounded() {
    let srv = common::proc::ServerProcess::start(
        &common::proc::base_config(),
        &[("SWITCHBOARD_API_MAX_CONCURRENT_REQUESTS", "16")],
    );
    let addr = srv.addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let baseline = srv.rss_kib();
    let cpu_before = srv.cpu();
    let flood_for = Duration::from_secs(4);
    let (health_max, rss_max, answered_503, answered_200) = rt.block_on(async {
        let started = Instant::now();
        let key = format!("Bearer {API_KEY}");
        // 200 connections each sending most of a ~1 MB body, then holding it.
        let mut slow = Vec::new();
        for i in 0..200u32 {
            let key = key.clone();
            slow.push(tokio::spawn(async move {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    return;
                };
                let len = 1_040_000usize;
                let head = format!(
                    "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n\
                     Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n\
                     {{\"channel\":\"chat:slow-{i}\",\"data\":\""
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'a'; 64 * 1024];
                let mut sent = head.len();
                while sent + chunk.len() < len - 1024 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
                // Hold the connection (and the server's buffer) open.
                tokio::time::sleep(flood_for).await;
            }));
        }
        // 32 publishers as fast as they can, each on fresh connections.
        let mut fast = Vec::new();
        for i in 0..32u32 {
            let key = key.clone();
            fast.push(tokio::spawn(async move {
                let (mut ok, mut busy) = (0u32, 0u32);
                let mut n = 0u32;
                while started.elapsed() < flood_for {
                    n += 1;
                    let body = format!(r#"{{"channel":"chat:flood-{i}-{n}","data":{{"n":{n}}}}}"#);
                    let auth = [("Authorization", key.as_str())];
                    let Some(r) = try_http(addr, "POST", "/api/publish", &auth, Some(&body)).await
                    else {
                        continue;
                    };
                    match r.status {
                        200 => ok += 1,
                        503 => {
                            assert!(r.header("retry-after").is_some(), "503 without Retry-After");
                            busy += 1;
                        }
                        s => panic!("unexpected {s}: {}", r.body),
                    }
                }
                (ok, busy)
            }));
        }
        // Meanwhile: the operations endpoints, polled, and the server's RSS.
        let mut health_max = Duration::ZERO;
        let mut rss_max = baseline;
        let mut polls = 0u32;
        while started.elapsed() < flood_for {
            for path in ["/health", "/ready", "/metrics"] {
                let t = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    http(addr, "GET", path, &[], None),
                )
                .await
                .unwrap_or_else(|_| panic!("{path} did not answer within 10 s"));
                assert_eq!(r.status, 200, "{path}: {}", r.body);
                health_max = health_max.max(t.elapsed());
                polls += 1;
            }
            rss_max = rss_max.max(common::proc::rss_kib(srv.pid()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(polls >= 15, "only {polls} operations polls");
        let (mut ok, mut busy) = (0, 0);
        for f in fast {
            let (o, b) = f.await.expect("publisher");
            ok += o;
            busy += b;
        }
        for s in slow {
            s.abort();
        }
        // The slow bodies held every permit; once their connections are
        // gone, so are the permits, and the API serves again.
        let key = [("Authorization", key.as_str())];
        let body = r#"{"channel":"chat:after","data":{}}"#;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let r = http(addr, "POST", "/api/publish", &key, Some(body)).await;
            if r.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the API stayed busy after the flood: {}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (health_max, rss_max, busy, ok)
    });
    let cpu = srv.cpu() - cpu_before;
    let growth_mib = (rss_max.saturating_sub(baseline)) as f64 / 1024.0;
    eprintln!(
        "api flood: /health, /ready, /metrics slowest {health_max:?}; RSS {baseline} KiB -> max {rss_max} KiB \
         (+{growth_mib:.1} MiB); publishes 200: {answered_200}, 503: {answered_503}; server CPU {cpu:?}"
    );
    assert!(
        health_max < Duration::from_secs(1),
        "an operations endpoint took {health_max:?} under the flood"
    );
    assert!(answered_503 > 0, "the flood never met the bound");
    assert!(
        growth_mib <= 64.0,
        "server RSS grew {growth_mib:.1} MiB under the API flood"
    );
}

/// With an allowlist, the `Origin` of a handshake is parsed and compared by
/// scheme, host and port (default ports normalized); a `*.` entry matches
/// whole labels only; anything that is not a well-formed origin, or two
/// `Origin` headers, is refused `403` before the upgrade.
#[tokio::test]
async fn origins_are_compared_parsed_and_malformed_ones_are_refused_403() {
    let mut cfg = config();
    cfg.ws.allowed_origins = vec![
        "http://localhost:8000".into(),
        "https://*.example.com".into(),
        "https://app.example.org:443".into(),
    ];
    let srv = TestServer::start(cfg).await;
    let path = format!("/ws?token={}", srv.token("origin"));
    let cases: &[(&[&str], u16)] = &[
        (&[], 101),
        (&["http://localhost:8000"], 101),
        (&["HTTP://LOCALHOST:8000"], 101),
        (&["https://a.example.com"], 101),
        (&["https://a.b.example.com:443"], 101),
        (&["https://app.example.org"], 101),
        (&["http://localhost:8001"], 403),
        (&["http://localhost"], 403),
        (&["https://example.com"], 403),
        (&["https://badexample.com"], 403),
        (&["https://example.com.evil.net"], 403),
        (&["https://a.example.com.evil.net"], 403),
        (&["http://a.example.com"], 403),
        (&["null"], 403),
        (&["http://localhost:8000/"], 403),
        (&["http://user@localhost:8000"], 403),
        (&["http://local host:8000"], 403),
        (&["https://a..example.com"], 403),
        (&["http://localhost:8000", "http://localhost:8000"], 403),
    ];
    for (origins, want) in cases {
        let extra: Vec<(&str, &str)> = origins.iter().map(|o| ("Origin", *o)).collect();
        let r = raw_http(srv.addr, &upgrade_request(srv.addr, &path, &extra)).await;
        assert_eq!(r.status, *want, "Origin {origins:?}: {}", r.body);
        if *want == 403 {
            assert_eq!(r.error_code(), "forbidden");
        }
    }
}

/// A config whose `ws.allowed_origins` holds something that is not an
/// origin stops the start, with a message naming the key.
#[test]
fn an_allowed_origin_that_is_not_an_origin_stops_the_start() {
    let dir = tempfile::tempdir().expect("tmp");
    for bad in [
        "example.com",
        "https://example.com/",
        "https://a.*.com",
        "https://x:99999",
    ] {
        let f = dir.path().join("c.toml");
        let text = format!(
            "{}\n",
            common::proc::base_config().replace(
                "[api]",
                &format!("[ws]\nallowed_origins = [\"http://localhost:8000\", \"{bad}\"]\n\n[api]")
            )
        );
        std::fs::write(&f, text).expect("write");
        let out = std::process::Command::new(common::proc::BIN)
            .arg("check-config")
            .arg(&f)
            .env_clear()
            .output()
            .expect("run check-config");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: accepted");
        assert!(err.contains("ws.allowed_origins[1]"), "{bad}: {err}");
    }
}

/// Secrets, and credentials inside URLs, appear in no output of the binary:
/// the start log (at debug level, the whole effective config),
/// `default-config`, and `check-config`'s errors.
#[test]
fn no_secret_or_url_credential_is_printed() {
    let config = common::proc::base_config().replace(
        "[api]",
        "[broker]\nredis_url = \"redis://:redis-pass-xyz@cache:6379/0\"\n\n[api]",
    );
    let srv = common::proc::ServerProcess::start(&config, &[("RUST_LOG", "debug")]);
    std::thread::sleep(Duration::from_millis(300));
    let logs = srv.kill();
    assert!(logs.contains("effective configuration"), "{logs}");
    assert!(logs.contains("redis://<redacted>@cache:6379/0"), "{logs}");
    for secret in [SECRET, API_KEY, "redis-pass-xyz"] {
        assert!(!logs.contains(secret), "{secret} in the start log:\n{logs}");
    }

    let out = std::process::Command::new(common::proc::BIN)
        .arg("default-config")
        .env_clear()
        .output()
        .expect("default-config");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("[broker]"));

    let dir = tempfile::tempdir().expect("tmp");
    let f = dir.path().join("c.toml");
    for (text, secret) in [
        (
            "[auth]\nhmac_secret = \"unterminated-secret-0123\n",
            "unterminated-secret-0123",
        ),
        ("[api]\nkey = 1234567890123\n", "1234567890123"),
        (
            "[auth]\njwks_url = \"ftp://user:jwks-pass-xyz@idp/jwks\"\n[api]\nkey = \"k\"\n",
            "jwks-pass-xyz",
        ),
    ] {
        std::fs::write(&f, text).expect("write");
        let out = std::process::Command::new(common::proc::BIN)
            .arg("check-config")
            .arg(&f)
            .env_clear()
            .output()
            .expect("check-config");
        assert!(!out.status.success(), "{text}: accepted");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains(secret),
            "{secret} printed by check-config: {all}"
        );
    }
}
