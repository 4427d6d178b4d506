//! Clients that reach Switchboard through nginx over TLS, trusting only the
//! test's own CA: a WebSocket client, a server-sent events reader and
//! one-shot HTTPS requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

/// Generous: the machine is shared and nginx adds a hop.
pub const WAIT: Duration = Duration::from_secs(10);

/// Where nginx listens and the CA its certificate chains to.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    connector: TlsConnector,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, ca_der: rustls::pki_types::CertificateDer<'static>) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).expect("the test CA is a valid root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Endpoint {
            addr,
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// A TLS connection whose certificate was checked against the test CA
    /// for the name 127.0.0.1.
    pub async fn tls(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .expect("connect to nginx");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
        self.connector
            .connect(name, tcp)
            .await
            .expect("TLS handshake with nginx")
    }

    /// One request over a fresh connection (`Connection: close`), read to
    /// its end.
    pub async fn https(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> crate::common::HttpResponse {
        let mut s = self.tls().await;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Length: {}\r\n",
            body.map_or(0, str::len)
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        s.write_all(req.as_bytes()).await.expect("write request");
        let mut buf = Vec::new();
        // nginx closes after a `Connection: close` answer; a missing TLS
        // close_notify is an error here, but the answer is whole by then.
        let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
            .await
            .expect("an answer within the wait");
        crate::common::parse_response(&buf)
    }

    /// A WebSocket upgrade through nginx: the welcome, or the status nginx or
    /// the node refused it with.
    pub async fn ws(&self, token: &str) -> Result<Ws, String> {
        let uri: http::Uri = format!("wss://127.0.0.1:{}/ws?token={token}", self.addr.port())
            .parse()
            .expect("uri");
        let stream = self.tls().await;
        let (ws, _) = ClientBuilder::from_uri(uri)
            .connect_on(stream)
            .await
            .map_err(|e| e.to_string())?;
        let mut c = Ws {
            ws,
            welcome: Value::Null,
            next_id: 1,
            pings: 0,
        };
        c.welcome = c.recv().await;
        assert_eq!(c.welcome["type"], "welcome", "first frame: {}", c.welcome);
        Ok(c)
    }

    /// `GET path` as an `EventSource` sends it; panics unless it is a 200
    /// `text/event-stream`.
    pub async fn sse(&self, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut stream = self.tls().await;
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n");
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
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        Sse {
            stream,
            chunked: head.contains("transfer-encoding: chunked"),
            raw: buf[end + 4..].to_vec(),
            body: Vec::new(),
            last_id: None,
            ended: false,
        }
    }
}

/// A WebSocket client through nginx.
pub struct Ws {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    pub welcome: Value,
    next_id: u64,
    /// Protocol pings received (tokio-websockets answers them itself).
    pub pings: usize,
}

/// What the next frame was.
pub enum Frame {
    Text(Value),
    Closed(Option<u16>),
}

impl Ws {
    pub fn node(&self) -> String {
        self.welcome["node"].as_str().expect("node").to_string()
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    /// The next text frame or the end of the connection (a close frame's
    /// code, or `None` when the connection just ended); `None` when nothing
    /// came within `within`.
    pub async fn frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(Frame::Closed(None)),
                Ok(Some(Ok(m))) => m,
            };
            if let Some(t) = m.as_text() {
                return Some(Frame::Text(serde_json::from_str(t).expect("JSON frame")));
            }
            if let Some((code, _)) = m.as_close() {
                return Some(Frame::Closed(Some(code.into())));
            }
            if m.is_ping() {
                self.pings += 1;
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        match self.frame(WAIT).await {
            Some(Frame::Text(v)) => v,
            Some(Frame::Closed(code)) => panic!("closed ({code:?}) while waiting for a frame"),
            None => panic!("no frame within {WAIT:?}"),
        }
    }

    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Sends a command with a fresh id and returns its reply.
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

    /// Waits for the connection to end; the close code, if one came.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.frame(WAIT).await {
                Some(Frame::Closed(code)) => return code,
                Some(Frame::Text(_)) => {}
                None => panic!("the connection is still open after {WAIT:?}"),
            }
        }
    }
}

/// One event as a browser's `EventSource` sees it; a comment is an event
/// with only `comment` set.
#[derive(Debug, Default)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
    pub comment: Option<String>,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// A server-sent events stream read through nginx, chunked or not.
pub struct Sse {
    stream: TlsStream<TcpStream>,
    chunked: bool,
    /// Bytes read and not decoded from the chunked framing yet.
    raw: Vec<u8>,
    /// Decoded body not parsed into events yet.
    body: Vec<u8>,
    /// The last event id seen, as a browser keeps it for `Last-Event-ID`.
    pub last_id: Option<String>,
    pub ended: bool,
}

impl Sse {
    /// Moves what is whole in `raw` to `body`.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        while let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") {
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

    /// The next event or comment, `Some(None)` when the stream ended, `None`
    /// when nothing came within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Option<Event>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.decode();
            if let Some(e) = self.parse_one() {
                return Some(Some(e));
            }
            if self.ended {
                return Some(None);
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.ended = true;
                    return Some(None);
                }
                Ok(Ok(n)) => self.raw.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next event or comment; `None` once the stream ended.
    pub async fn next_any(&mut self) -> Option<Event> {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("nothing on the stream within {WAIT:?}"))
    }

    /// The next event with data (comments and `id`-only records skipped).
    pub async fn next(&mut self) -> Event {
        loop {
            let e = self.next_any().await.expect("the stream goes on");
            if e.comment.is_none() && !e.data.is_empty() {
                return e;
            }
        }
    }

    /// The data of the next `n` `pub` events, other events skipped.
    pub async fn pubs(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let e = self.next().await;
            if e.event.as_deref() == Some("pub") {
                out.push(e.json());
            }
        }
        out
    }

    /// Waits for the `id` records that tell the stream's starting position
    /// on each of its `channels`.
    pub async fn positioned(&mut self, channels: usize) {
        while self
            .last_id
            .as_deref()
            .is_none_or(|id| id.split(';').count() < channels)
        {
            self.next_any().await.expect("the stream goes on");
        }
    }

    /// Reads until the stream ends (panics if it goes on past the wait).
    pub async fn ended(&mut self) {
        while self.next_any().await.is_some() {}
    }
}
