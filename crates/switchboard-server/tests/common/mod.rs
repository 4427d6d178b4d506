//! Test kit for black-box tests: a server on port 0 in-process, real
//! WebSocket clients, and a plain HTTP/1.1 client over real sockets.

#![allow(dead_code)]

pub mod proc;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use switchboard_server::auth::{Claims, mint_hs256};
use switchboard_server::config::{Config, Dur, NamespaceConfig};
use switchboard_server::http::SharedState;
use switchboard_server::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789";
pub const API_KEY: &str = "test-api-key";

/// A config for tests: known secret and key, a `chat` namespace with
/// everything on, and a generous rate limit.
pub fn config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".into(),
        shutdown_timeout: Dur::secs(2),
        ..Default::default()
    };
    c.auth.hmac_secret = SECRET.into();
    c.api.key = API_KEY.into();
    c.limits.messages_per_second = 100_000;
    c.shutdown.ready_grace = Dur::secs(0);
    c.namespaces = vec![
        NamespaceConfig {
            name: "chat".into(),
            publish: true,
            presence: true,
            join_leave: true,
            history_size: 1000,
            history_ttl: Dur::secs(600),
            ..Default::default()
        },
        NamespaceConfig {
            name: "user".into(),
            history_size: 100,
            history_ttl: Dur::secs(600),
            ..Default::default()
        },
        NamespaceConfig {
            name: "vip".into(),
            publish: true,
            subscribe: "claims".into(),
            ..Default::default()
        },
    ];
    c
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: SharedState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(cfg: Config) -> TestServer {
        cfg.validate().expect("test config is valid");
        let listener = server::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = server::build_state(cfg, false).await.expect("state");
        let (tx, rx) = oneshot::channel::<()>();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let _ = server::run(st, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        TestServer {
            addr,
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Starts the drain and waits for `run` to return.
    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    pub fn token(&self, user: &str) -> String {
        token(user, 3600, &[])
    }

    pub async fn client(&self, user: &str) -> Client {
        Client::connect(self.addr, &self.token(user)).await
    }

    pub async fn http(&self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        http(
            self.addr,
            method,
            path,
            &[("Authorization", &format!("Bearer {API_KEY}"))],
            body,
        )
        .await
    }

    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let body = serde_json::json!({"channel": channel, "data": data}).to_string();
        let r = self.http("POST", "/api/publish", Some(&body)).await;
        assert_eq!(r.status, 200, "publish failed: {}", r.body);
        r.json()
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

pub fn token(user: &str, ttl: i64, channels: &[&str]) -> String {
    let claims = Claims {
        sub: user.into(),
        exp: Some((now() as i64 + ttl) as u64),
        channels: channels.iter().map(|s| s.to_string()).collect(),
        info: Some(serde_json::json!({"name": user})),
    };
    mint_hs256(SECRET, &claims).expect("mint")
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    next_id: u64,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Client {
    pub async fn connect(addr: SocketAddr, token: &str) -> Client {
        let uri: http::Uri = format!("ws://{addr}/ws?token={token}")
            .parse()
            .expect("uri");
        let (ws, _) = ClientBuilder::from_uri(uri)
            .connect()
            .await
            .expect("websocket connect");
        let mut c = Client {
            ws,
            welcome: Value::Null,
            next_id: 1,
        };
        c.welcome = c.recv().await;
        assert_eq!(c.welcome["type"], "welcome", "first frame: {}", c.welcome);
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws
            .send(Message::text(t.to_string()))
            .await
            .expect("send");
    }

    /// The next text frame, as JSON (panics after 5 s or on close).
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("stream ended")
                .expect("read error");
            if let Some(t) = m.as_text() {
                return serde_json::from_str(t).expect("frame is JSON");
            }
            if m.is_close() {
                panic!("closed: {:?}", m.as_close());
            }
        }
    }

    /// Reads frames until one with `type == ty` arrives.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Sends a command with a fresh id and returns its reply (pushes before it
    /// are skipped: use `call_keep` to see them).
    pub async fn call(&mut self, mut cmd: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        cmd["id"] = id.into();
        self.send(cmd).await;
        loop {
            let v = self.recv().await;
            if v["id"] == id && (v.get("ok").is_some() || v["type"] == "pong") {
                return v;
            }
        }
    }

    /// Like `call`, but also returns the pushes that came before the reply.
    pub async fn call_keep(&mut self, mut cmd: Value) -> (Value, Vec<Value>) {
        let id = self.next_id;
        self.next_id += 1;
        cmd["id"] = id.into();
        self.send(cmd).await;
        let mut before = Vec::new();
        loop {
            let v = self.recv().await;
            if v["id"] == id && v.get("ok").is_some() {
                return (v, before);
            }
            before.push(v);
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let r = self
            .call(serde_json::json!({"op": "subscribe", "channel": channel}))
            .await;
        assert_eq!(r["ok"], true, "subscribe {channel}: {r}");
        r["result"].clone()
    }

    /// Waits for the close frame and returns its code (frames before it are skipped).
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("no close frame within 10 s"),
                Ok(None) => return None,
                Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(m))) => {
                    if let Some((code, _)) = m.as_close() {
                        return Some(code.into());
                    }
                }
            }
        }
    }

    /// Whether nothing arrives within `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        match tokio::time::timeout(d, self.ws.next()).await {
            Err(_) => true,
            Ok(Some(Ok(m))) if m.is_ping() || m.is_pong() => true,
            Ok(_) => false,
        }
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The contract's error body: `{"error": {"code", "message"}}`.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert!(
            v["error"]["message"].is_string(),
            "error body: {}",
            self.body
        );
        v["error"]["code"].as_str().expect("code").to_string()
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    raw_http(addr, request(addr, method, path, headers, body).as_bytes()).await
}

/// Like `http`, but `None` when the connection fails.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<HttpResponse> {
    try_raw_http(addr, request(addr, method, path, headers, body).as_bytes()).await
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    req
}

/// Sends raw bytes and parses the answer (up to the first response's end for
/// a 101, or to EOF otherwise).
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    try_raw_http(addr, request)
        .await
        .expect("the server answers")
}

/// Like `raw_http`, but `None` when the connection fails (a killed server).
pub async fn try_raw_http(addr: SocketAddr, request: &[u8]) -> Option<HttpResponse> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(request).await.ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        if buf.starts_with(b"HTTP/1.1 101") {
                            break;
                        }
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        if len.is_some_and(|n| buf.len() >= end + 4 + n) {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;
    Some(parse_response(&buf))
}

pub fn parse_response(buf: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A WebSocket upgrade request for `/ws` with extra header lines.
pub fn upgrade_request(addr: SocketAddr, path_and_query: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// A masked client text frame, written by hand.
pub fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81u8];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}
