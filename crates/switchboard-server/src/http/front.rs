//! The first bytes of every connection. A WebSocket upgrade on `/ws` is
//! answered here rather than by hyper: the `101` and the welcome frame leave in
//! one write, and the client's task is the connection's only task (no hyper
//! connection task, no upgrade hand-off). Anything else goes to hyper, with the
//! bytes already read replayed ahead of the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::SharedState;
use super::ws;
use crate::transport;

/// A request head longer than this is not a WebSocket handshake we serve
/// here; hyper gets it (and answers `431`).
const MAX_HEAD: usize = 16 * 1024;
/// Headers a handshake may carry; more go to hyper.
const MAX_HEADERS: usize = 64;

/// A connection's task: routing first, then, for a WebSocket client, the
/// client itself, in the same task. Written by hand so that the task holds one
/// pointer: an idle client's task is the task header and its client future.
pub enum Serve {
    Routing(Pin<Box<dyn Future<Output = Option<ClientTask>> + Send>>),
    Client(ClientTask),
}

/// A WebSocket client's future ([`transport::start`]).
pub type ClientTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves one accepted connection to its end.
pub fn serve(st: SharedState, app: Router, stream: TcpStream) -> Serve {
    Serve::Routing(Box::pin(route(st, app, stream)))
}

impl Future for Serve {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                Serve::Routing(f) => match f.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Ready(Some(client)) => *this = Serve::Client(client),
                },
                Serve::Client(client) => return client.as_mut().poll(cx),
            }
        }
    }
}

/// Reads the request head and answers it: a WebSocket client is returned to
/// run; anything else is served by hyper to the connection's end.
async fn route(st: SharedState, app: Router, stream: TcpStream) -> Option<ClientTask> {
    let timeout = st.cfg.ws.handshake_timeout.0;
    let mut head = Head {
        bytes: Vec::with_capacity(1024),
        websocket: false,
        drained: false,
    };
    // Most clients send their head at once: read it before arming a timer.
    match head.read(&stream) {
        Ok(true) => {}
        Ok(false) => {
            let wait = async {
                loop {
                    stream.readable().await?;
                    if head.read(&stream)? {
                        return Ok::<(), io::Error>(());
                    }
                }
            };
            // Timed out, reset or closed before a whole head: like hyper with
            // its header timeout, drop it.
            tokio::time::timeout(timeout, wait).await.ok()?.ok()?;
        }
        Err(_) => return None,
    }
    if head.websocket
        && let Some(request) = parse(&head.bytes)
    {
        if head.drained {
            // The socket was read to its end: forget its readiness, so the
            // client's first wake-up is not a read that finds nothing.
            let _ = stream.try_io(tokio::io::Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
        return websocket(st, stream, head.bytes, request).await;
    }
    // Boxed: hyper's connection future is large, and the routing future is
    // what a client's handshake allocates.
    Box::pin(with_hyper(app, stream, head.bytes, timeout)).await;
    None
}

/// What arrived before the connection was routed.
struct Head {
    bytes: Vec<u8>,
    /// A whole `GET /ws` request head is in `bytes`.
    websocket: bool,
    /// The last read took less than it could: the socket had nothing more.
    drained: bool,
}

impl Head {
    /// Reads what the socket has until the request is known not to be
    /// `GET /ws…` (hyper's), or its whole head is in: `Ok(true)` once routed,
    /// `Ok(false)` when the socket has nothing more now.
    fn read(&mut self, stream: &TcpStream) -> io::Result<bool> {
        const PREFIX: &[u8] = b"GET /ws";
        loop {
            if self.bytes.len() == self.bytes.capacity() {
                self.bytes.reserve(4096);
            }
            let room = self.bytes.capacity() - self.bytes.len();
            match stream.try_read_buf(&mut self.bytes) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.drained = n < room,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
            let bytes = &self.bytes;
            let ours = if bytes.len() <= PREFIX.len() {
                PREFIX.starts_with(bytes)
            } else {
                bytes.starts_with(PREFIX) && matches!(bytes[PREFIX.len()], b' ' | b'?')
            };
            if !ours || bytes.len() > MAX_HEAD {
                return Ok(true);
            }
            if bytes.len() > PREFIX.len() && find_end(bytes).is_some() {
                self.websocket = true;
                return Ok(true);
            }
        }
    }
}

fn find_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// A parsed handshake request: what the checks read.
struct Request {
    query: Option<String>,
    headers: HeaderMap,
    /// Length of the head; what follows it are the client's first frames.
    len: usize,
}

/// The headers the handshake checks read; the rest are not copied.
const WANTED: [HeaderName; 7] = [
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_KEY,
    header::ORIGIN,
    header::AUTHORIZATION,
    header::COOKIE,
];

/// Parses a `GET /ws` head; `None` when it is not valid HTTP/1.1 that we can
/// read, for hyper to answer.
fn parse(bytes: &[u8]) -> Option<Request> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    if req.version != Some(1) || req.method != Some("GET") {
        return None;
    }
    let path = req.path?;
    let query = match path.split_once('?') {
        Some(("/ws", q)) => Some(q.to_owned()),
        None if path == "/ws" => None,
        _ => return None,
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let Some(name) = WANTED
            .iter()
            .find(|w| w.as_str().eq_ignore_ascii_case(h.name))
        else {
            continue;
        };
        // A value hyper would refuse is refused here too (a 400 from hyper).
        let value = HeaderValue::from_bytes(h.value).ok()?;
        headers.append(name.clone(), value);
    }
    Some(Request {
        query,
        headers,
        len,
    })
}

/// Answers a handshake: on success returns the client's task (to run in this
/// one), with the `101` queued ahead of its welcome frame; on refusal writes
/// the error response and returns `None`.
async fn websocket(
    st: SharedState,
    stream: TcpStream,
    bytes: Vec<u8>,
    request: Request,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
    match ws::check(
        &st,
        &Method::GET,
        request.query.as_deref(),
        &request.headers,
    )
    .await
    {
        Ok(accepted) => {
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                accepted.accept
            );
            let live = transport::LiveTransport::new(&st);
            let rest = bytes.get(request.len..).unwrap_or_default();
            Some(transport::start(
                stream,
                rest,
                Bytes::from(head),
                accepted.init,
                live,
            ))
        }
        Err(refusal) => {
            let out = render(*refusal).await;
            let mut stream = stream;
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                stream.write_all(&out).await?;
                stream.shutdown().await
            })
            .await;
            None
        }
    }
}

/// An HTTP/1.1 response as bytes (the refusals carry a small JSON body).
async fn render(response: axum::response::Response) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    out
}

async fn with_hyper(app: Router, stream: TcpStream, read: Vec<u8>, header_timeout: Duration) {
    let service = TowerToHyperService::new(app);
    let io = Prefixed {
        prefix: read,
        pos: 0,
        io: TokioIo::new(stream),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

/// The socket, with the bytes read before routing replayed first.
pub struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    io: TokioIo<TcpStream>,
}

impl Prefixed {
    /// The socket and what of the replayed bytes hyper did not read.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        let unread = self.prefix.get(self.pos..).unwrap_or_default().to_vec();
        (self.io.into_inner(), unread)
    }
}

impl hyper::rt::Read for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.pos);
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_whole_get_ws_head_is_parsed_here() {
        let head = b"GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Other: 1\r\n\r\n{\"op\"";
        let r = parse(head).expect("parsed");
        assert_eq!(r.query.as_deref(), Some("token=abc"));
        assert_eq!(r.headers.len(), 1);
        assert_eq!(&head[r.len..], b"{\"op\"");
        assert!(parse(b"GET /wsx HTTP/1.1\r\n\r\n").is_none());
        assert!(parse(b"GET /ws HTTP/1.0\r\n\r\n").is_none());
        assert!(parse(b"POST /ws HTTP/1.1\r\n\r\n").is_none());
        assert!(parse(b"GET /ws HTTP/1.1\r\nBad Header\r\n\r\n").is_none());
        assert!(parse(b"GET /ws HTTP/1.1\r\nHost: x\r\n").is_none());
    }
}
