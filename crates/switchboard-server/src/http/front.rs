//! The first bytes of every connection. A WebSocket upgrade on `/ws` is
//! answered here rather than by hyper: the `101` and the welcome frame leave in
//! one write, and the client's task is the connection's only task (no hyper
//! connection task, no upgrade hand-off). Anything else goes to hyper, with the
//! bytes already read replayed ahead of the socket.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::SharedState;
use super::storm::Pending;
use super::ws;
use crate::sse::ConnHandle;
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

/// The client's address, on each request hyper serves.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// Serves one accepted connection to its end; `pending` counts it as a
/// handshake in progress until it is a client or hyper's.
pub fn serve(
    st: SharedState,
    app: Router,
    stream: TcpStream,
    peer: SocketAddr,
    pending: Pending,
) -> Serve {
    Serve::Routing(Box::pin(route(st, app, stream, peer.ip(), pending)))
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
async fn route(
    st: SharedState,
    app: Router,
    stream: TcpStream,
    peer: IpAddr,
    mut pending: Pending,
) -> Option<ClientTask> {
    let timeout = st.cfg.ws.handshake_timeout.0;
    let mut head = Head {
        bytes: Vec::with_capacity(1024),
        route: Route::More,
    };
    // Most clients send their head at once: read it before arming a timer.
    match head.read(&stream) {
        Ok(true) => {}
        Ok(false) => {
            pending.pause();
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
            pending.resume();
        }
        Err(_) => return None,
    }
    // No read readiness is cleared here after the fact: a `try_io` that only
    // says `WouldBlock` would clear a readiness set by bytes or a FIN that
    // arrived after the head, and the client would wait forever for an
    // answer. `Head::read` clears it only with the read that emptied the
    // socket.
    if head.route == Route::WebSocket
        && let Some(request) = parse_head(&head.bytes)
    {
        let client = websocket(st, stream, head.bytes, request, peer).await;
        drop(pending);
        return client;
    }
    drop(pending);
    // Boxed: hyper's connection future is large, and the routing future is
    // what a client's handshake allocates.
    Box::pin(with_hyper(app, stream, head.bytes, timeout, peer)).await;
    None
}

/// What arrived before the connection was routed.
struct Head {
    bytes: Vec<u8>,
    route: Route,
}

impl Head {
    /// Reads what the socket has until [`route_head`] decides: `Ok(true)`
    /// once routed, `Ok(false)` when the socket has nothing more now.
    fn read(&mut self, stream: &TcpStream) -> io::Result<bool> {
        loop {
            if self.bytes.len() == self.bytes.capacity() {
                self.bytes.reserve(4096);
            }
            let room = self.bytes.capacity() - self.bytes.len();
            let mut got = None;
            // A read that took less than it could emptied the socket: its
            // read readiness is cleared in the same `try_io` as the read, so
            // tokio clears only the readiness it saw before the read, and
            // bytes or a FIN arriving after it still wake the client. This
            // spares the client's first turn a read that finds nothing.
            let read = stream.try_io(Interest::READABLE, || {
                let n = stream.try_read_buf(&mut self.bytes)?;
                got = Some(n);
                if n > 0 && n < room {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(n)
                }
            });
            let n = match (read, got) {
                (Ok(n), _) => n,
                (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => n,
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                (Err(e), _) => return Err(e),
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.route = route_head(&self.bytes);
            if self.route != Route::More {
                return Ok(true);
            }
        }
    }
}

/// Where the bytes read so far from a new connection go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Not decided yet: a prefix of `GET /ws` or of its head.
    More,
    /// Anything that is not a whole `GET /ws` head within `MAX_HEAD`.
    Hyper,
    /// A whole `GET /ws…` head is in (parsed by [`parse_head`]).
    WebSocket,
}

/// Decides from the bytes read so far; public for the fuzz target.
pub fn route_head(bytes: &[u8]) -> Route {
    const PREFIX: &[u8] = b"GET /ws";
    let ours = if bytes.len() <= PREFIX.len() {
        PREFIX.starts_with(bytes)
    } else {
        bytes.starts_with(PREFIX) && matches!(bytes[PREFIX.len()], b' ' | b'?')
    };
    if !ours || bytes.len() > MAX_HEAD {
        Route::Hyper
    } else if bytes.len() > PREFIX.len() && head_ended(bytes) {
        Route::WebSocket
    } else {
        Route::More
    }
}

/// Whether the head has ended: an empty line, as httparse reads it (bare
/// `\n` line ends are accepted, as by hyper; found by the fuzz target).
fn head_ended(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && bytes.get(i + 2) == Some(&b'\n')))
}

/// A parsed handshake request: what the checks read.
#[derive(Debug)]
pub struct UpgradeHead {
    query: Option<String>,
    headers: HeaderMap,
    /// Length of the head; what follows it are the client's first frames.
    len: usize,
}

impl UpgradeHead {
    /// The request's query string, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The headers the handshake checks read (the others are not kept).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Bytes of the head; what follows are the client's first frames.
    pub fn head_len(&self) -> usize {
        self.len
    }
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
/// read, for hyper to answer. Public for the fuzz target.
pub fn parse_head(bytes: &[u8]) -> Option<UpgradeHead> {
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
    Some(UpgradeHead {
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
    request: UpgradeHead,
    peer: IpAddr,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
    match ws::check(
        &st,
        Some(peer),
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

async fn with_hyper(
    app: Router,
    stream: TcpStream,
    read: Vec<u8>,
    header_timeout: Duration,
    peer: IpAddr,
) {
    let conn_handle = Arc::new(ConnHandle::default());
    let service = TowerToHyperService::new(WithConn {
        app,
        conn: conn_handle.clone(),
        peer: Peer(peer),
    });
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
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        }
        // A handler called for the end (an SSE stream whose socket takes
        // nothing): dropping the connection drops the socket.
        () = conn_handle.killed() => {}
    }
    conn_handle.set_ended();
}

/// The router, with each request carrying its connection's [`ConnHandle`].
#[derive(Clone)]
struct WithConn {
    app: Router,
    conn: Arc<ConnHandle>,
    peer: Peer,
}

impl tower_service::Service<http::Request<hyper::body::Incoming>> for WithConn {
    type Response =
        <Router as tower_service::Service<http::Request<hyper::body::Incoming>>>::Response;
    type Error = <Router as tower_service::Service<http::Request<hyper::body::Incoming>>>::Error;
    type Future = <Router as tower_service::Service<http::Request<hyper::body::Incoming>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Request<hyper::body::Incoming>>::poll_ready(
            &mut self.app,
            cx,
        )
    }

    fn call(&mut self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.conn.clone());
        req.extensions_mut().insert(self.peer);
        self.app.call(req)
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
        let r = parse_head(head).expect("parsed");
        assert_eq!(r.query.as_deref(), Some("token=abc"));
        assert_eq!(r.headers.len(), 1);
        assert_eq!(&head[r.len..], b"{\"op\"");
        assert!(parse_head(b"GET /wsx HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_head(b"GET /ws HTTP/1.0\r\n\r\n").is_none());
        assert!(parse_head(b"POST /ws HTTP/1.1\r\n\r\n").is_none());
        assert!(parse_head(b"GET /ws HTTP/1.1\r\nBad Header\r\n\r\n").is_none());
        assert!(parse_head(b"GET /ws HTTP/1.1\r\nHost: x\r\n").is_none());
    }

    #[test]
    fn a_head_is_routed_once_whole_or_once_it_cannot_be_ours() {
        assert_eq!(route_head(b""), Route::More);
        assert_eq!(route_head(b"GET /w"), Route::More);
        assert_eq!(route_head(b"GET /ws?token=x HTTP/1.1\r\n"), Route::More);
        assert_eq!(route_head(b"GET /ws HTTP/1.1\r\n\r\n"), Route::WebSocket);
        assert_eq!(
            route_head(b"GET /ws HTTP/1.1\nHost: x\n\n"),
            Route::WebSocket
        );
        assert_eq!(
            route_head(b"GET /ws HTTP/1.1\nHost: x\n\r\n"),
            Route::WebSocket
        );
        assert_eq!(route_head(b"GET /ws HTTP/1.1\r\nHost: x\r\n"), Route::More);
        assert_eq!(route_head(b"GET /wsx"), Route::Hyper);
        assert_eq!(route_head(b"POST /ws"), Route::Hyper);
        assert_eq!(route_head(b"GET /health HTTP/1.1\r\n\r\n"), Route::Hyper);
        let mut long = b"GET /ws HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert_eq!(route_head(&long), Route::Hyper);
    }
}
