//! Server-sent events (PROTOCOL §11), black box over real sockets: the §1
//! answers before the stream, channels plus the personal one, resuming with
//! `Last-Event-ID` (and `recovered: false` when history is gone), keep-alive
//! comments, the slow-consumer bound (RSS measured from /proc), the
//! connection limits, and resuming on another node through Redis.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::proc::{ServerProcess, base_config};
use common::{TestServer, config, http, token};
use serde_json::{Value, json};
use switchboard_redis::testing::RedisServer;
use switchboard_server::config::{BrokerKind, Config, Dur, RedisUrls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// One event as a browser's `EventSource` would see it; a comment is an
/// event with `comment` set and nothing else.
#[derive(Debug, Default, Clone)]
struct Event {
    event: Option<String>,
    id: Option<String>,
    data: String,
    comment: Option<String>,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// A raw SSE client: the request, then the chunked body read as events.
struct Sse {
    stream: TcpStream,
    /// Bytes of the chunked body not decoded yet.
    raw: Vec<u8>,
    /// Decoded body not parsed into events yet.
    body: Vec<u8>,
    /// The stream's last event id, as a browser keeps it.
    last_id: Option<String>,
    ended: bool,
}

/// The answer to an SSE request: the stream, or a refusal with its body.
enum Opened {
    Stream(Sse),
    Refused(u16, Vec<(String, String)>, Value),
}

async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Opened {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let end = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return end;
            }
            let n = stream.read(&mut chunk).await.expect("read head");
            assert!(n > 0, "closed before a response head");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response head");
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let hs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = buf[end + 4..].to_vec();
    if status != 200 {
        let r = common::parse_response(&[head.as_bytes(), b"\r\n\r\n", &rest].concat());
        let mut full = r.body;
        // The refusal is small; read it whole.
        let len = hs
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut bytes = rest;
        while bytes.len() < len {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("body")
                .expect("read body");
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        if full.len() < len {
            full = String::from_utf8_lossy(&bytes).to_string();
        }
        let body = serde_json::from_str(&full).unwrap_or(Value::Null);
        return Opened::Refused(status, hs, body);
    }
    let ct = hs
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str());
    assert_eq!(ct, Some("text/event-stream"));
    Opened::Stream(Sse {
        stream,
        raw: rest,
        body: Vec::new(),
        last_id: None,
        ended: false,
    })
}

async fn stream(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
    match open(addr, path, headers).await {
        Opened::Stream(s) => s,
        Opened::Refused(status, _, body) => panic!("refused {status}: {body}"),
    }
}

impl Sse {
    /// Moves whole chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_line = String::from_utf8_lossy(&self.raw[..eol]).to_string();
            let size = usize::from_str_radix(size_line.trim(), 16).expect("chunk size");
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// The next whole event already read, if any.
    fn parse_one(&mut self) -> Option<Event> {
        let end = self.body.windows(2).position(|w| w == b"\n\n")?;
        let text = String::from_utf8(self.body[..end].to_vec()).expect("utf-8");
        self.body.drain(..end + 2);
        let mut e = Event::default();
        let mut data: Vec<&str> = Vec::new();
        for line in text.split('\n') {
            if let Some(c) = line.strip_prefix(':') {
                e.comment = Some(c.trim().to_string());
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => e.event = Some(value.to_string()),
                "id" => e.id = Some(value.to_string()),
                "data" => data.push(value),
                other => panic!("unknown field {other:?}"),
            }
        }
        e.data = data.join("\n");
        if let Some(id) = &e.id {
            self.last_id = Some(id.clone());
        }
        Some(e)
    }

    /// The next event (comments included), or `None` at the stream's end.
    async fn next_any(&mut self) -> Option<Event> {
        tokio::time::timeout(WAIT, async {
            loop {
                self.dechunk();
                if let Some(e) = self.parse_one() {
                    return Some(e);
                }
                if self.ended {
                    return None;
                }
                let mut chunk = [0u8; 16384];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.raw.extend_from_slice(&chunk[..n]),
                }
                self.dechunk();
            }
        })
        .await
        .expect("an event within the wait")
    }

    /// The next event that is dispatched (has data): comments and `id`-only
    /// records only move the last id.
    async fn next(&mut self) -> Event {
        loop {
            let e = self.next_any().await.expect("the stream goes on");
            if e.comment.is_none() && !e.data.is_empty() {
                return e;
            }
        }
    }

    /// The data of the next `pub` events, skipping others.
    async fn pubs(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let e = self.next().await;
            if e.event.as_deref() == Some("pub") {
                out.push(e.json());
            }
        }
        out
    }

    /// Waits until the stream has told its starting position (the `id`
    /// records that follow each channel's join).
    async fn positioned(&mut self, channels: usize) {
        while self
            .last_id
            .as_deref()
            .is_none_or(|id| id.split(';').count() < channels)
        {
            let e = self.next_any().await.expect("the stream goes on");
            // Its own joins may come first (join/leave is on in `chat`).
            let join = matches!(e.event.as_deref(), Some("join") | Some("leave"));
            assert!(
                e.data.is_empty() || join,
                "an event before the start: {e:?}"
            );
        }
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// A request (path, headers) and the status and error code it gets.
type Case = (String, Vec<(&'static str, String)>, u16, &'static str);

#[tokio::test]
async fn refusals_come_before_the_stream_with_a_status_and_json() {
    let mut cfg = config();
    cfg.ws.allowed_origins = vec!["http://app.example".into()];
    cfg.limits.max_channels_per_client = 3;
    let server = TestServer::start(cfg).await;
    let addr = server.addr;
    let good = token("alice", 3600, &[]);
    let auth = bearer(&good);
    let cases: Vec<Case> = vec![
        ("/sse".into(), vec![], 401, "unauthorized"),
        ("/sse?token=garbage".into(), vec![], 401, "unauthorized"),
        (
            "/sse".into(),
            vec![("Authorization", bearer(&token("alice", -100, &[])))],
            401,
            "unauthorized",
        ),
        (
            "/sse".into(),
            vec![
                ("Authorization", auth.clone()),
                ("Origin", "http://evil.example".into()),
            ],
            403,
            "forbidden",
        ),
        (
            "/sse?channel=bad%20name".into(),
            vec![("Authorization", auth.clone())],
            400,
            "bad_request",
        ),
        (
            "/sse?channel=vip:room".into(),
            vec![("Authorization", auth.clone())],
            403,
            "forbidden",
        ),
        (
            "/sse?channel=user:bob".into(),
            vec![("Authorization", auth.clone())],
            403,
            "forbidden",
        ),
        (
            "/sse?channel=a&channel=b&channel=c".into(),
            vec![("Authorization", auth.clone())],
            400,
            "limit_exceeded",
        ),
        (
            "/sse?channel=chat:a".into(),
            vec![
                ("Authorization", auth.clone()),
                ("Last-Event-ID", "chat:a:nope".into()),
            ],
            400,
            "bad_request",
        ),
        (
            format!("/sse?channel=chat:a&since=chat:a&token={good}"),
            vec![],
            400,
            "bad_request",
        ),
    ];
    for (path, headers, status, code) in cases {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match open(addr, &path, &hs).await {
            Opened::Refused(s, _, body) => {
                assert_eq!(s, status, "{path} {hs:?}: {body}");
                assert_eq!(body["error"]["code"], code, "{path}: {body}");
                assert!(body["error"]["message"].is_string(), "{path}: {body}");
            }
            Opened::Stream(_) => panic!("{path} {hs:?} was streamed"),
        }
    }
    // A cookie is a token source too, and an allowed origin passes.
    let cookie = format!("sb_token={good}");
    let mut s = stream(
        addr,
        "/sse?channel=chat:a",
        &[("Cookie", &cookie), ("Origin", "http://app.example")],
    )
    .await;
    s.positioned(2).await;
    let r = http(addr, "POST", "/sse", &[("Authorization", &auth)], None).await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn channels_and_the_personal_one_arrive_as_pub_events() {
    let server = TestServer::start(config()).await;
    let t = token("alice", 3600, &[]);
    let mut s = stream(
        server.addr,
        &format!("/sse?channel=chat:a&channel=news&token={t}"),
        &[],
    )
    .await;
    s.positioned(3).await;
    server.publish("chat:a", json!({"n": 1})).await;
    server.publish("user:alice", json!({"n": 2})).await;
    server.publish("news", json!({"n": 3})).await;
    server.publish("chat:other", json!({"n": 0})).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let e = s.next().await;
        if e.event.as_deref() != Some("pub") {
            continue;
        }
        let v = e.json();
        assert_eq!(v["type"], "pub");
        let id = e.id.expect("a pub has an id");
        let own = format!(
            "{}:{}:{}",
            v["channel"].as_str().expect("channel"),
            v["epoch"].as_str().expect("epoch"),
            v["offset"]
        );
        assert!(id.starts_with(&own), "id {id} starts with {own}");
        assert_eq!(id.split(';').count(), 3, "{id} names every channel");
        got.push((v["channel"].clone(), v["data"]["n"].clone()));
    }
    assert_eq!(
        got,
        vec![
            (json!("chat:a"), json!(1)),
            (json!("user:alice"), json!(2)),
            (json!("news"), json!(3))
        ]
    );
}

#[tokio::test]
async fn last_event_id_resumes_every_channel_without_loss_or_duplicates() {
    let server = TestServer::start(config()).await;
    let t = token("alice", 3600, &[]);
    let path = format!("/sse?channel=chat:a&channel=chat:b&token={t}");
    let mut s = stream(server.addr, &path, &[]).await;
    s.positioned(3).await;
    for i in 1..=3 {
        server.publish("chat:a", json!(i)).await;
        server.publish("chat:b", json!(i)).await;
    }
    server.publish("user:alice", json!("inbox-1")).await;
    let seen = s.pubs(7).await;
    let last = s.last_id.clone().expect("an id");
    drop(s);
    // Missed while away, on every channel.
    for i in 4..=5 {
        server.publish("chat:a", json!(i)).await;
        server.publish("chat:b", json!(i)).await;
    }
    server.publish("user:alice", json!("inbox-2")).await;
    let mut s = stream(server.addr, &path, &[("Last-Event-ID", &last)]).await;
    let first = s.next().await;
    assert_eq!(first.event.as_deref(), Some("recovered"), "{first:?}");
    let mut recovered = vec![first.json()];
    let mut after = Vec::new();
    while after.len() < 5 {
        let e = s.next().await;
        match e.event.as_deref() {
            Some("recovered") => recovered.push(e.json()),
            Some("pub") => after.push(e.json()),
            Some("join") | Some("leave") => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(recovered.len(), 3, "{recovered:?}");
    assert!(
        recovered.iter().all(|r| r["recovered"] == true),
        "{recovered:?}"
    );
    // Each names where its channel stood at the join: the replay ends there.
    let at = |c: &str| {
        recovered
            .iter()
            .find(|r| r["channel"] == c)
            .map(|r| r["offset"].clone())
    };
    assert_eq!(at("chat:a"), Some(json!(5)), "{recovered:?}");
    assert_eq!(at("chat:b"), Some(json!(5)), "{recovered:?}");
    assert!(
        recovered.iter().all(|r| r["epoch"].is_string()),
        "{recovered:?}"
    );
    let key = |v: &Value| (v["channel"].to_string(), v["offset"].as_u64());
    let mut all: Vec<_> = seen.iter().chain(after.iter()).map(key).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a duplicate across the reconnect");
    let data: Vec<Value> = after.iter().map(|v| v["data"].clone()).collect();
    assert_eq!(data.len(), 5);
    for want in [json!(4), json!(5), json!("inbox-2")] {
        assert!(data.contains(&want), "{want} missing from {data:?}");
    }
    // Live again after the recovery.
    server.publish("chat:b", json!(6)).await;
    assert_eq!(s.pubs(1).await[0]["data"], 6);
}

#[tokio::test]
async fn a_resume_whose_history_is_gone_is_not_recovered() {
    let server = TestServer::start(config()).await;
    let t = token("alice", 3600, &[]);
    // `news` keeps no history; `chat:a` is asked at an epoch it never had.
    let path = format!("/sse?channel=news&channel=chat:a&token={t}");
    let id = "news:0000beef:3;chat:a:0000beef:1";
    let mut s = stream(server.addr, &path, &[("Last-Event-ID", id)]).await;
    let mut recovered = Vec::new();
    while recovered.len() < 3 {
        let e = s.next().await;
        if e.event.as_deref() == Some("join") {
            continue;
        }
        assert_eq!(e.event.as_deref(), Some("recovered"), "{e:?}");
        recovered.push(e.json());
    }
    let by = |c: &str| {
        recovered
            .iter()
            .find(|r| r["channel"] == c)
            .cloned()
            .unwrap_or_else(|| panic!("no recovered for {c}: {recovered:?}"))
    };
    assert_eq!(by("news")["recovered"], false);
    assert_eq!(by("chat:a")["recovered"], false);
    // The personal channel was not in the id: nothing to recover from.
    assert_eq!(by("user:alice")["recovered"], false);
    // The ids now hold the channels' real positions.
    let last = s.last_id.clone().expect("id");
    assert!(!last.contains("0000beef"), "{last}");
    server.publish("chat:a", json!("live")).await;
    assert_eq!(s.pubs(1).await[0]["data"], "live");
}

#[tokio::test]
async fn an_idle_stream_gets_keep_alive_comments() {
    let mut cfg = config();
    cfg.ws.ping_interval = Dur(Duration::from_millis(300));
    cfg.ws.ping_timeout = Dur(Duration::from_millis(300));
    let server = TestServer::start(cfg).await;
    let t = token("alice", 3600, &[]);
    let mut s = stream(server.addr, &format!("/sse?token={t}"), &[]).await;
    let mut pings = 0;
    while pings < 3 {
        let e = s.next_any().await.expect("the stream goes on");
        if e.comment.as_deref() == Some("ping") {
            pings += 1;
        }
    }
    // Still alive and delivering after several ping rounds.
    server.publish("user:alice", json!("hi")).await;
    assert_eq!(s.pubs(1).await[0]["data"], "hi");
}

#[tokio::test]
async fn connection_limits_count_sse_streams_with_websockets() {
    let mut cfg = config();
    cfg.limits.max_connections_per_user = 2;
    let server = TestServer::start(cfg).await;
    let t = token("alice", 3600, &[]);
    let path = format!("/sse?token={t}");
    let mut a = stream(server.addr, &path, &[]).await;
    a.positioned(1).await;
    let _ws = server.client("alice").await;
    match open(server.addr, &path, &[]).await {
        Opened::Refused(status, headers, body) => {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "limit_exceeded");
            assert!(headers.iter().any(|(k, _)| k == "retry-after"));
        }
        Opened::Stream(_) => panic!("a third connection was let in"),
    }
    // Closing a stream frees its place.
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open(server.addr, &path, &[]).await {
            Opened::Stream(_) => break,
            Opened::Refused(503, _, _) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Opened::Refused(s, _, b) => panic!("refused {s}: {b}"),
        }
    }
}

#[tokio::test]
async fn draining_ends_streams_with_a_disconnect_event_and_refuses_new_ones() {
    let mut server = TestServer::start(config()).await;
    let addr = server.addr;
    let t = token("alice", 3600, &[]);
    let mut s = stream(addr, &format!("/sse?token={t}"), &[]).await;
    s.positioned(1).await;
    let state = server.state.clone();
    let shutting = tokio::spawn(async move { server.shutdown().await });
    let e = s.next().await;
    assert_eq!(e.event.as_deref(), Some("disconnect"), "{e:?}");
    assert_eq!(e.json()["code"], 1001);
    assert!(s.next_any().await.is_none(), "the stream ends");
    assert!(state.draining.load(std::sync::atomic::Ordering::Acquire));
    shutting.await.expect("shutdown");
}

/// A client that opens a stream and never reads it is closed as a slow
/// consumer (counted in the same metric as WebSocket ones) and costs the
/// server a bounded amount of memory, measured from /proc.
#[tokio::test]
async fn a_stream_that_is_never_read_is_closed_as_slow_and_bounded() {
    let extra = r#"
[ws]
ping_interval = "1s"
ping_timeout = "1s"
send_queue_max_bytes = 262144
"#;
    let server = ServerProcess::start(
        &format!("{}{extra}", base_config()),
        &[("SWITCHBOARD_API_MAX_BODY_BYTES", "65536")],
    );
    let addr = server.addr;
    let t = token("hog", 3600, &[]);
    // Ten streams that never read a byte.
    let mut hogs = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET /sse?channel=flood&token={t} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        hogs.push(s);
    }
    // A well-behaved stream on the same channel reads everything.
    let good = token("reader", 3600, &[]);
    let mut reader = stream(addr, &format!("/sse?channel=flood&token={good}"), &[]).await;
    reader.positioned(2).await;
    let base = server.rss_kib();
    let payload = "x".repeat(48 * 1024);
    let mut peak = base;
    let published = 300;
    let reading = tokio::spawn(async move {
        let got = reader.pubs(published).await;
        got.iter()
            .map(|v| v["offset"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    for i in 0..published {
        let body = json!({"channel": "flood", "data": {"i": i, "pad": payload}}).to_string();
        let r = http(
            addr,
            "POST",
            "/api/publish",
            &[("Authorization", &format!("Bearer {}", common::API_KEY))],
            Some(&body),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        peak = peak.max(server.rss_kib());
    }
    let offsets = reading.await.expect("reader");
    assert_eq!(offsets, (1..=published as u64).collect::<Vec<_>>());
    // Every hog is counted slow and its connection ends.
    let metric = |text: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("switchboard_slow_clients_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = http(addr, "GET", "/metrics", &[], None).await;
        if metric(&m.body) >= 10.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow clients: {}",
            metric(&m.body)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, mut h) in hogs.into_iter().enumerate() {
        // Drain what the kernel holds; the server must have closed its end.
        let mut bytes = 0;
        let ended = tokio::time::timeout(WAIT, async {
            let mut buf = vec![0u8; 65536];
            loop {
                match h.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => bytes += n,
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "slow stream {i}'s connection was left open ({bytes} bytes read)"
        );
    }
    peak = peak.max(server.rss_kib());
    let growth = peak.saturating_sub(base);
    eprintln!(
        "10 unread SSE streams, {published} x 48 KiB publications: server RSS {base} KiB -> peak {peak} KiB (+{growth} KiB)"
    );
    // Unbounded, the server would hold each unread stream's 14 MiB: 140 MiB.
    // Bounded, each costs at most its outbox (256 KiB) and hyper's write
    // buffer (~400 KiB) before it is closed.
    assert!(growth <= 16 * 1024, "server RSS grew by {growth} KiB");
    server.kill();
}

fn node_config(redis: &RedisServer, name: &str) -> Config {
    let mut c = config();
    c.node_name = name.into();
    c.broker.kind = BrokerKind::Redis;
    c.broker.redis_url = RedisUrls::One(redis.url());
    c.broker.stall_timeout = Dur::secs(1);
    c.presence.ttl = Dur::secs(2);
    c
}

/// No sticky sessions: read on node A, reconnect to node B with the last id,
/// and the stream goes on where it stopped.
#[tokio::test]
async fn a_stream_resumes_on_another_node_through_redis() {
    let redis = RedisServer::start();
    let a = TestServer::start(node_config(&redis, "n1")).await;
    let b = TestServer::start(node_config(&redis, "n2")).await;
    let t = token("alice", 3600, &[]);
    let path = format!("/sse?channel=chat:room&token={t}");
    let mut s = stream(a.addr, &path, &[]).await;
    s.positioned(2).await;
    for i in 1..=5 {
        a.publish("chat:room", json!(i)).await;
    }
    b.publish("user:alice", json!("dm-1")).await;
    let first = s.pubs(6).await;
    let last = s.last_id.clone().expect("id");
    drop(s);
    for i in 6..=9 {
        b.publish("chat:room", json!(i)).await;
    }
    a.publish("user:alice", json!("dm-2")).await;
    let mut s = stream(b.addr, &path, &[("Last-Event-ID", &last)]).await;
    let mut recovered = Vec::new();
    let mut rest = Vec::new();
    while rest.len() < 5 {
        let e = s.next().await;
        match e.event.as_deref() {
            Some("recovered") => recovered.push(e.json()),
            Some("pub") => rest.push(e.json()),
            Some("join") | Some("leave") => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(recovered.len(), 2, "{recovered:?}");
    assert!(
        recovered.iter().all(|r| r["recovered"] == true),
        "{recovered:?}"
    );
    let room: Vec<Value> = first
        .iter()
        .chain(rest.iter())
        .filter(|v| v["channel"] == "chat:room")
        .map(|v| v["data"].clone())
        .collect();
    assert_eq!(room, (1..=9).map(|i| json!(i)).collect::<Vec<_>>());
    let dms: Vec<Value> = first
        .iter()
        .chain(rest.iter())
        .filter(|v| v["channel"] == "user:alice")
        .map(|v| v["data"].clone())
        .collect();
    assert_eq!(dms, vec![json!("dm-1"), json!("dm-2")]);
    a.publish("chat:room", json!(10)).await;
    assert_eq!(s.pubs(1).await[0]["data"], 10);
}
