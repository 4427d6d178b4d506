//! One WebSocket client's life: it reads commands and writes its outbox, in
//! one task. Writing drains everything queued since the last wake-up and
//! flushes once, so a burst of pushes leaves in as few writes as possible.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::Bytes;
use switchboard_core::metrics::CodeLabel;
use switchboard_core::{ClientHandle, ClientInit, Disconnect, Node, Out};
use switchboard_protocol::frame::{self, ErrorCode};
use switchboard_protocol::websocket::{self, Decoder, Message, ProtocolError, opcode};
use switchboard_protocol::{Op, decode_command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::Token;
use crate::http::AppState;

/// Per-client GCRA-style budget: `rate` frames a second, bursts to `2 × rate`.
/// Times are milliseconds on the node's clock; it is kept small because every
/// idle client's task carries one.
#[derive(Debug)]
pub struct RateLimit {
    rate: f32,
    tokens: f32,
    last: u64,
    /// When the current run of refusals began, `NEVER` outside one.
    limited_since: u64,
    last_limited: u64,
}

const NEVER: u64 = u64::MAX;

/// What the rate limit says of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Answer `rate_limited`.
    Limit,
    /// The client kept on past the limit: close it 1008.
    Close,
}

impl RateLimit {
    pub fn new(per_second: u32, now_ms: u64) -> Self {
        let rate = per_second as f32;
        RateLimit {
            rate,
            tokens: rate * 2.0,
            last: now_ms,
            limited_since: NEVER,
            last_limited: NEVER,
        }
    }

    /// Takes one frame's token. A client still refused two seconds after its
    /// first refusal (with no quiet second in between) is to be closed.
    pub fn check(&mut self, now_ms: u64) -> Verdict {
        let elapsed = now_ms.saturating_sub(self.last) as f32 / 1000.0;
        self.last = self.last.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let quiet = self.last_limited == NEVER || now_ms.saturating_sub(self.last_limited) > 1000;
        if quiet {
            self.limited_since = now_ms;
        }
        self.last_limited = now_ms;
        if now_ms.saturating_sub(self.limited_since) >= 2000 {
            Verdict::Close
        } else {
            Verdict::Limit
        }
    }
}

/// How many bytes one wake-up reads at most before letting writes and other
/// clients run.
const READ_BUDGET: usize = 256 * 1024;
const SCRATCH_SIZE: usize = 64 * 1024;
/// The most bytes [`WriteQueue::send_gathered`] copies into one `send`;
/// larger frames are not worth the copy.
const GATHER_MAX: usize = 16 * 1024;

thread_local! {
    /// Reads land here first: an idle client owns no read buffer, only the
    /// bytes of a frame that arrived in part.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}

/// Frames waiting for the socket, written with vectored writes: each frame's
/// header is built on the stack and its payload (shared with every other
/// recipient) is written as it is.
#[derive(Default)]
struct WriteQueue {
    frames: VecDeque<Out>,
    /// Bytes of the first frame (header included) already written.
    offset: usize,
}

/// Not a WebSocket opcode: bytes written as they are, without a frame header
/// (the handshake's `101`, queued so that it and the welcome frame leave in
/// one write).
const RAW: u8 = 0xff;

/// The frame header `out` goes out with (none for [`RAW`] bytes).
fn header_for(out: &Out) -> ([u8; 10], usize) {
    match opcode_and_payload(out) {
        (RAW, _) => ([0; 10], 0),
        (op, payload) => websocket::frame_header(op, payload.len()),
    }
}

fn opcode_and_payload(out: &Out) -> (u8, &[u8]) {
    match out {
        Out::Frame(b) => (opcode::TEXT, b),
        Out::Ping => (opcode::PING, &[]),
        Out::Control(op, b) => (*op, b),
    }
}

impl WriteQueue {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn push_all(&mut self, mut more: VecDeque<Out>) {
        if self.frames.is_empty() {
            // Reuse the taken queue: no copy, no allocation.
            self.frames = more;
        } else {
            self.frames.append(&mut more);
        }
    }

    /// Writes as much as the socket takes now. `Ok(true)` when all is written.
    fn write_now(&mut self, stream: &TcpStream) -> io::Result<bool> {
        const MAX_FRAMES: usize = 64;
        while !self.frames.is_empty() {
            // Small frames are copied into one buffer and sent with `send`:
            // for a frame of a few hundred bytes that costs less than the
            // kernel's vectored-write path, and it is the common case.
            if let Some(sent) = self.send_gathered(stream) {
                match sent {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.advance(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
                continue;
            }
            let mut headers = [([0u8; 10], 0usize); MAX_FRAMES];
            for (h, out) in headers.iter_mut().zip(self.frames.iter()) {
                *h = header_for(out);
            }
            let mut slices = [IoSlice::new(&[]); MAX_FRAMES * 2];
            let mut n_slices = 0;
            for (i, (out, (h, hlen))) in self.frames.iter().zip(headers.iter()).enumerate() {
                let (_, payload) = opcode_and_payload(out);
                let skip = if i == 0 { self.offset } else { 0 };
                if *hlen == 0 {
                    slices[n_slices] = IoSlice::new(&payload[skip..]);
                    n_slices += 1;
                } else if skip < *hlen {
                    slices[n_slices] = IoSlice::new(&h[skip..*hlen]);
                    slices[n_slices + 1] = IoSlice::new(payload);
                    n_slices += 2;
                } else {
                    slices[n_slices] = IoSlice::new(&payload[skip - hlen..]);
                    n_slices += 1;
                }
            }
            let written = match stream.try_write_vectored(&slices[..n_slices]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            self.advance(written);
        }
        if self.frames.capacity() > 0 {
            // An idle client keeps no queue memory.
            self.frames = VecDeque::new();
        }
        Ok(true)
    }

    /// Copies the queue's head (whole frames, up to [`GATHER_MAX`] bytes)
    /// into the thread's scratch buffer and sends it with one `send`. `None`
    /// when the first frame alone is larger: that goes out by vectored write,
    /// its payload uncopied.
    fn send_gathered(&self, stream: &TcpStream) -> Option<io::Result<usize>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.try_borrow_mut().ok()?;
            let buf = &mut scratch[..GATHER_MAX];
            let mut len = 0;
            for (i, out) in self.frames.iter().enumerate() {
                let (h, hlen) = header_for(out);
                let (_, payload) = opcode_and_payload(out);
                let skip = if i == 0 { self.offset } else { 0 };
                let size = hlen + payload.len() - skip;
                if len + size > buf.len() {
                    if i == 0 {
                        return None;
                    }
                    break;
                }
                if skip < hlen {
                    buf[len..len + hlen - skip].copy_from_slice(&h[skip..hlen]);
                    len += hlen - skip;
                    buf[len..len + payload.len()].copy_from_slice(payload);
                    len += payload.len();
                } else {
                    let rest = &payload[skip - hlen..];
                    buf[len..len + rest.len()].copy_from_slice(rest);
                    len += rest.len();
                }
            }
            Some(stream.try_write(&buf[..len]))
        })
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.frames.front() else {
                return;
            };
            let total = header_for(front).1 + opcode_and_payload(front).1.len();
            let left = total - self.offset;
            if n >= left {
                n -= left;
                self.offset = 0;
                self.frames.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }
}

/// One WebSocket connection's I/O: decoding what arrives, writing what is queued.
struct Connection {
    stream: TcpStream,
    /// Decoding state, only while a frame or a fragmented message is
    /// incomplete: an idle client holds none.
    reading: Option<Box<Reading>>,
    max_message: usize,
    out: WriteQueue,
}

/// What a connection keeps between reads while a message is incomplete.
struct Reading {
    decoder: Decoder,
    /// An incomplete frame's bytes.
    partial: Vec<u8>,
}

/// How a connection ends with a close frame.
struct Close {
    code: u16,
    reason: String,
    /// The peer sent its close first.
    by_peer: bool,
}

impl Close {
    fn ours(code: u16, reason: impl Into<String>) -> Self {
        Close {
            code,
            reason: reason.into(),
            by_peer: false,
        }
    }
}

/// What one read produced: the whole messages, then possibly an end.
struct ReadOutcome {
    /// Messages decoded, in order; handled even when the read also ended the
    /// connection, so nothing sent before a bad frame is lost.
    messages: Vec<Message>,
    end: Option<ReadEnd>,
}

enum ReadEnd {
    /// The peer closed the TCP connection.
    Eof,
    /// The peer broke the protocol: close with this code.
    Failed(ProtocolError),
}

impl Connection {
    fn new(stream: TcpStream, already_read: &[u8], head: Bytes, max_message: usize) -> Self {
        Connection {
            stream,
            // Bytes that came with the upgrade request wait here to be decoded.
            reading: (!already_read.is_empty()).then(|| {
                Box::new(Reading {
                    decoder: Decoder::new(max_message),
                    partial: already_read.to_vec(),
                })
            }),
            max_message,
            out: WriteQueue {
                frames: if head.is_empty() {
                    VecDeque::new()
                } else {
                    VecDeque::from([Out::Control(RAW, head)])
                },
                offset: 0,
            },
        }
    }

    /// Bytes of an incomplete frame are waiting to be decoded.
    fn has_partial(&self) -> bool {
        self.reading.as_ref().is_some_and(|r| !r.partial.is_empty())
    }

    fn take_partial(&mut self) -> Vec<u8> {
        self.reading
            .as_mut()
            .map(|r| std::mem::take(&mut r.partial))
            .unwrap_or_default()
    }

    /// Decodes `bytes`. Whole frames decode with a decoder on the stack; the
    /// state is boxed only when a frame or a fragmented message is left
    /// incomplete, and dropped once nothing is.
    fn decode(&mut self, bytes: &[u8], messages: &mut Vec<Message>) -> Result<(), ProtocolError> {
        let (used, idle) = match self.reading.as_mut() {
            Some(r) => (r.decoder.decode(bytes, messages)?, r.decoder.is_idle()),
            None => {
                let mut decoder = Decoder::new(self.max_message);
                let used = decoder.decode(bytes, messages)?;
                let idle = decoder.is_idle();
                if !idle || used < bytes.len() {
                    self.reading = Some(Box::new(Reading {
                        decoder,
                        partial: Vec::new(),
                    }));
                }
                (used, idle)
            }
        };
        let rest = &bytes[used..];
        if rest.is_empty() && idle {
            self.reading = None;
        } else if let Some(r) = self.reading.as_mut() {
            r.partial = rest.to_vec();
        }
        Ok(())
    }

    /// Reads what the socket has now (up to a budget) and decodes it.
    fn read_now(&mut self) -> ReadOutcome {
        let mut messages = Vec::new();
        if self.has_partial() {
            // Bytes that came with the upgrade request, or an incomplete frame
            // (decoding it again only re-reads its header).
            let partial = self.take_partial();
            if let Err(e) = self.decode(&partial, &mut messages) {
                return ReadOutcome {
                    messages,
                    end: Some(ReadEnd::Failed(e)),
                };
            }
        }
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let r: Result<usize, Option<ProtocolError>> = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let n = match self.stream.try_read(&mut scratch[..]) {
                    Ok(0) => return Err(None),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                    Err(_) => return Err(None),
                };
                if !self.has_partial() {
                    self.decode(&scratch[..n], &mut messages).map_err(Some)?;
                } else {
                    let mut partial = self.take_partial();
                    partial.extend_from_slice(&scratch[..n]);
                    self.decode(&partial, &mut messages).map_err(Some)?;
                }
                Ok(n)
            });
            let end = match r {
                Ok(0) => break,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    None
                }
                Err(None) => Some(ReadEnd::Eof),
                Err(Some(e)) => Some(ReadEnd::Failed(e)),
            };
            if end.is_some() {
                return ReadOutcome { messages, end };
            }
            if matches!(messages.last(), Some(Message::Close(..))) {
                break;
            }
        }
        ReadOutcome {
            messages,
            end: None,
        }
    }

    /// Writes everything queued, waiting for the socket up to `timeout`.
    async fn flush(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.out.write_now(&self.stream)? {
            tokio::select! {
                r = self.stream.writable() => r?,
                () = tokio::time::sleep_until(deadline) => {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
        }
        Ok(())
    }

    /// Sends a close frame (after what is queued, waiting up to `timeout` for
    /// the socket). When we started the close, waits briefly for the peer's
    /// close or EOF; when the peer did, drops the connection at once (RFC 6455
    /// §7.1.1: the server closes TCP first).
    async fn close(mut self, close: Close, timeout: Duration) {
        let payload = websocket::close_payload(close.code, &close.reason);
        self.out
            .frames
            .push_back(Out::Control(opcode::CLOSE, Bytes::from(payload)));
        if self.flush(timeout).await.is_err() || close.by_peer {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                if self.stream.readable().await.is_err() {
                    return;
                }
                let read = self.read_now();
                if read.end.is_some()
                    || read
                        .messages
                        .iter()
                        .any(|m| matches!(m, Message::Close(..)))
                {
                    return;
                }
            }
        })
        .await;
    }

    /// Queues the answer a control message needs. Returns the close to answer
    /// with when the peer started the close handshake.
    fn control(&mut self, m: &Message) -> Option<Close> {
        match m {
            Message::Ping(p) => {
                self.out
                    .frames
                    .push_back(Out::Control(opcode::PONG, Bytes::copy_from_slice(p)));
                None
            }
            Message::Close(code, _) => Some(Close {
                code: code.unwrap_or(1000),
                reason: String::new(),
                by_peer: true,
            }),
            _ => None,
        }
    }
}

/// Runs one client until it leaves or is closed.
/// Counts a running transport; the drain waits for the count to reach zero.
pub struct LiveTransport(Arc<AppState>);

impl LiveTransport {
    pub fn new(st: &Arc<AppState>) -> Self {
        st.live_transports.fetch_add(1, Ordering::AcqRel);
        LiveTransport(st.clone())
    }
}

impl Drop for LiveTransport {
    fn drop(&mut self) {
        self.0.live_transports.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Registers the client and returns its task. Set-up is synchronous so the
/// long-lived future holds only what the client needs while it lives.
/// `head` (the `101`, when hyper did not write it) goes out ahead of the
/// first frame.
pub fn start(
    stream: TcpStream,
    already_read: &[u8],
    head: Bytes,
    init: ClientInit,
    live: LiveTransport,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let conn = Connection::new(stream, already_read, head, live.0.cfg.ws.max_message_size);
    let mut conn = conn;
    match live.0.node.connect(init) {
        Ok(client) => {
            // The welcome joins the `101` now, so both leave in the first write.
            let (queued, _) = client.outbox.take();
            conn.out.push_all(queued);
            Box::pin(run(live, conn, client))
        }
        Err(_) => Box::pin(async move {
            conn.close(
                Close::ours(1013, "connection limit"),
                Duration::from_secs(2),
            )
            .await;
            drop(live);
        }),
    }
}

/// How long a socket may refuse our bytes before the client is dropped: as
/// long as a live client may take to answer a ping.
fn write_timeout(st: &AppState) -> Duration {
    st.cfg.ws.ping_interval.0 + st.cfg.ws.ping_timeout.0
}

/// Runs one client until it leaves or is closed.
///
/// Not an `async fn`: that would keep a second copy of its arguments in the
/// future. Everything an idle client's task holds is listed here, because
/// every connection pays for it: the connection, the state, the handle, the
/// rate limit, the stall timer and a flag.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
fn run(
    live: LiveTransport,
    mut conn: Connection,
    client: Arc<ClientHandle>,
) -> impl Future<Output = ()> + Send {
    async move {
        // No span per client: an entered span would be wrong across awaits,
        // and an instrumented one costs every idle client an allocation.
        tracing::debug!(client = %client.id, user = %client.user, "connected");
        let mut limiter =
            RateLimit::new(live.0.cfg.limits.messages_per_second, live.0.node.now_ms());
        let mut stall_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // Bytes may have come with the upgrade request: read before waiting.
        let mut readable = conn.has_partial();
        let close: Option<Close> = 'run: loop {
            if readable {
                readable = false;
                let read = conn.read_now();
                // Boxed: handling commands needs a large future that lives
                // only while it runs.
                let flow =
                    Box::pin(handle_read(&live.0, &client, &mut conn, &mut limiter, read)).await;
                if let Flow::End(close) = flow {
                    break 'run close;
                }
            }
            // Take more only once the socket took everything: while it is
            // stalled, pushes pile up in the bounded outbox, which is what
            // detects a slow consumer.
            let closing = if conn.out.frames.is_empty() {
                let (queued, closing) = client.outbox.take();
                conn.out.push_all(queued);
                closing
            } else {
                client.outbox.closing()
            };
            match conn.out.write_now(&conn.stream) {
                Ok(true) => stall_timer = None,
                Ok(false) => {
                    if stall_timer.is_none() {
                        // One timer, and only while the socket refuses our bytes.
                        stall_timer = Some(Box::pin(tokio::time::sleep(write_timeout(&live.0))));
                    }
                }
                Err(e) => {
                    tracing::debug!(client = %client.id, error = %e, "write failed");
                    break 'run None;
                }
            }
            if let Some(d) = closing {
                // What was queued before the close goes out first, then the reason.
                let (rest, _) = client.outbox.take();
                conn.out.push_all(rest);
                if d != Disconnect::STALE {
                    conn.out
                        .frames
                        .push_back(Out::Frame(frame::disconnect(d.code, d.reason)));
                }
                break 'run Some(Close::ours(d.code, d.reason));
            }
            // Wait for the next thing to do without storing a future per
            // source: readiness is polled straight from the socket and the outbox.
            let event = std::future::poll_fn(|cx| {
                let stalled = !conn.out.is_empty();
                if client.outbox.poll_ready(cx, !stalled).is_ready() {
                    return Poll::Ready(Event::Outbox);
                }
                if stalled {
                    if conn.stream.poll_write_ready(cx).is_ready() {
                        return Poll::Ready(Event::Writable);
                    }
                    if let Some(t) = stall_timer.as_mut()
                        && t.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(Event::StallTimeout);
                    }
                }
                if conn.stream.poll_read_ready(cx).is_ready() {
                    return Poll::Ready(Event::Readable);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Outbox | Event::Writable => {}
                Event::Readable => readable = true,
                Event::StallTimeout => {
                    tracing::info!(client = %client.id, user = %client.user, "write timed out: the client takes no frames");
                    break 'run None;
                }
            }
        };
        Box::pin(finish(live, conn, client, close)).await;
    }
}

/// What handling a read leaves the client to do.
enum Flow {
    Continue,
    /// End the client, with a close frame when there is one.
    End(Option<Close>),
}

/// Handles what one read produced: control frames, then commands in order.
async fn handle_read(
    st: &AppState,
    client: &Arc<ClientHandle>,
    conn: &mut Connection,
    limiter: &mut RateLimit,
    read: ReadOutcome,
) -> Flow {
    let node = &st.node;
    if !read.messages.is_empty() {
        client.touch(node.now_ms());
    }
    for m in read.messages {
        if let Some(close) = conn.control(&m) {
            return Flow::End(Some(close));
        }
        if !matches!(m, Message::Text(_) | Message::Binary(_)) {
            continue;
        }
        node.metrics.messages_in.inc();
        match limiter.check(node.now_ms()) {
            Verdict::Allow => handle_frame(st, client, m).await,
            Verdict::Limit => {
                let id = match &m {
                    Message::Text(t) => decode_command(t).ok().and_then(|c| c.id),
                    _ => None,
                };
                let _ = client.outbox.push(frame::error_reply(
                    id,
                    ErrorCode::RateLimited,
                    "too many messages",
                ));
            }
            Verdict::Close => {
                node.close_client(client, Disconnect::RATE_LIMITED).await;
                // The outbox is closing: the next turn sends the reason.
                return Flow::Continue;
            }
        }
    }
    match read.end {
        None => Flow::Continue,
        Some(ReadEnd::Eof) => Flow::End(None),
        Some(ReadEnd::Failed(e)) => {
            node.metrics
                .disconnects
                .get_or_create(&CodeLabel {
                    code: e.close_code(),
                })
                .inc();
            Flow::End(Some(Close::ours(e.close_code(), e.reason())))
        }
    }
}

/// The client's end: it leaves every index, then gets its close frame after
/// whatever its outbox still holds.
async fn finish(
    live: LiveTransport,
    mut conn: Connection,
    client: Arc<ClientHandle>,
    close: Option<Close>,
) {
    let st = &live.0;
    st.node.remove_client(&client).await;
    if let Some(close) = close {
        let (queued, _) = client.outbox.take();
        conn.out.push_all(queued);
        // A slow consumer gets its close once it reads what its socket
        // holds, for as long as a live client may take to answer a ping.
        conn.close(close, write_timeout(st)).await;
    }
    tracing::debug!(client = %client.id, user = %client.user, "disconnected");
}

/// What woke an idle client's task.
enum Event {
    Outbox,
    Writable,
    Readable,
    StallTimeout,
}

/// An echo server on the same connection code as `/ws`, for the Autobahn
/// conformance suite: it answers the upgrade itself and echoes every message.
pub async fn echo(mut stream: TcpStream, max_message: usize) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 16 * 1024 {
            return Ok(());
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_string();
    let key = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        crate::http::ws::accept_key(key.as_bytes())
    );
    stream.write_all(response.as_bytes()).await?;
    let mut conn = Connection::new(stream, &head[end..], Bytes::new(), max_message);
    // Bytes may have come with the upgrade request: decode them before waiting.
    let mut first = conn.has_partial();
    loop {
        conn.flush(Duration::from_secs(30)).await?;
        if !first {
            conn.stream.readable().await?;
        }
        first = false;
        let read = conn.read_now();
        for m in read.messages {
            if let Some(close) = conn.control(&m) {
                conn.close(close, Duration::from_secs(5)).await;
                return Ok(());
            }
            match m {
                Message::Text(t) => conn.out.frames.push_back(Out::Frame(Bytes::from(t))),
                Message::Binary(b) => conn
                    .out
                    .frames
                    .push_back(Out::Control(opcode::BINARY, Bytes::from(b))),
                _ => {}
            }
        }
        match read.end {
            None => {}
            Some(ReadEnd::Eof) => return Ok(()),
            Some(ReadEnd::Failed(e)) => {
                conn.close(
                    Close::ours(e.close_code(), e.reason()),
                    Duration::from_secs(5),
                )
                .await;
                return Ok(());
            }
        }
    }
}

async fn handle_frame(st: &AppState, client: &Arc<ClientHandle>, m: Message) {
    let node = &st.node;
    let Message::Text(text) = m else {
        let _ = client.outbox.push(frame::error_reply(
            None,
            ErrorCode::BadRequest,
            "binary frames are not commands",
        ));
        return;
    };
    let text = text.as_str();
    let cmd = match decode_command(text) {
        Ok(c) => c,
        Err(e) => {
            if let Some(channel) = &st.text_channel
                && e.id.is_none()
                && serde_json::from_str::<serde::de::IgnoredAny>(text).is_err()
            {
                text_chat(node, client, channel, text).await;
                return;
            }
            let _ = client
                .outbox
                .push(frame::error_reply(e.id, ErrorCode::BadRequest, &e.message));
            return;
        }
    };
    match cmd.op {
        Op::Refresh { token } => {
            let result = refresh(st, client, &Token::new(token));
            node.reply(client, cmd.id, result);
        }
        op => node.handle(client, cmd.id, op).await,
    }
}

/// A plain-text frame on a server with `text_channel`: published as
/// `{"text": ...}` from the sender, under the channel's namespace rules.
async fn text_chat(
    node: &Node,
    client: &Arc<ClientHandle>,
    channel: &switchboard_protocol::ChannelName,
    text: &str,
) {
    let data = serde_json::json!({ "text": text }).to_string();
    node.handle(
        client,
        None,
        Op::Publish {
            channel: channel.clone(),
            data: data.into_boxed_str(),
        },
    )
    .await;
}

fn refresh(
    st: &AppState,
    client: &Arc<ClientHandle>,
    token: &Token,
) -> Result<bytes::Bytes, switchboard_core::CommandError> {
    use switchboard_core::CommandError;
    let claims = st
        .verifier
        .verify(token)
        .map_err(|e| CommandError::new(ErrorCode::Unauthorized, e.to_string()))?;
    let exp = claims.exp;
    // The node applies the token's exp and claims (PROTOCOL §2).
    let token = switchboard_core::ClientInit {
        user: claims.sub,
        info: claims.info.map(|v| v.to_string()),
        channels: claims.channels,
        expires_at: exp.unwrap_or(0),
    };
    st.node.refresh(client, token)?;
    Ok(bytes::Bytes::from(
        serde_json::json!({ "expires_at": exp }).to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever mix of small (gathered) and large (vectored) frames, raw
    /// bytes and partial writes, the peer reads exactly the frames in order.
    #[tokio::test]
    async fn queued_frames_reach_the_peer_byte_exact() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.expect("read");
            all
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut q = WriteQueue::default();
        let mut expected = Vec::new();
        q.frames.push_back(Out::Control(
            RAW,
            Bytes::from_static(b"HTTP/1.1 101 x\r\n\r\n"),
        ));
        expected.extend_from_slice(b"HTTP/1.1 101 x\r\n\r\n");
        for i in 0..400usize {
            let size = match i % 7 {
                0 => 70_000,
                1 => 20_000,
                2 => 0,
                _ => i * 13 % 900,
            };
            let payload = Bytes::from(vec![(i % 251) as u8; size]);
            let (h, hlen) = websocket::frame_header(opcode::TEXT, size);
            expected.extend_from_slice(&h[..hlen]);
            expected.extend_from_slice(&payload);
            q.frames.push_back(Out::Frame(payload));
        }
        let mut stream = stream;
        while !q.write_now(&stream).expect("write") {
            stream.writable().await.expect("writable");
        }
        stream.shutdown().await.expect("shutdown");
        let got = reader.await.expect("reader");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes differ");
    }

    /// A client frame, masked as RFC 6455 requires (payloads under 126 bytes).
    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [7u8, 1, 9, 3];
        let mut f = vec![u8::from(fin) << 7 | op, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// Decoding state lives only while a frame or a fragmented message is
    /// incomplete, and survives between reads while it is.
    #[tokio::test]
    async fn decoding_state_is_kept_only_while_a_message_is_incomplete() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut conn = Connection::new(server, &[], Bytes::new(), 1 << 20);
        assert!(conn.reading.is_none());

        let continuation = client_frame(true, opcode::CONTINUATION, b"lo");
        let steps: [(Vec<u8>, Vec<Message>, bool); 4] = [
            // A whole first fragment: the message is incomplete.
            (client_frame(false, opcode::TEXT, b"hel"), vec![], true),
            // Half a frame header.
            (continuation[..3].to_vec(), vec![], true),
            (
                continuation[3..].to_vec(),
                vec![Message::Text("hello".into())],
                false,
            ),
            // A whole unfragmented frame needs no state at all.
            (
                client_frame(true, opcode::TEXT, b"x"),
                vec![Message::Text("x".into())],
                false,
            ),
        ];
        for (i, (bytes, expected, kept)) in steps.into_iter().enumerate() {
            client.write_all(&bytes).await.expect("write");
            // Each read drains the socket, so the next readiness is the next step's bytes.
            let mut got = Vec::new();
            loop {
                conn.stream.readable().await.expect("readable");
                let out = conn.read_now();
                assert!(out.end.is_none(), "step {i}: the read ended the connection");
                got.extend(out.messages);
                if got.len() >= expected.len() {
                    break;
                }
            }
            assert_eq!(got, expected, "step {i}");
            assert_eq!(conn.reading.is_some(), kept, "step {i}");
        }
    }

    #[test]
    fn bursts_pass_and_sustained_floods_close() {
        let t0 = 1_000;
        let mut rl = RateLimit::new(10, t0);
        for _ in 0..20 {
            assert_eq!(rl.check(t0), Verdict::Allow);
        }
        assert_eq!(rl.check(t0), Verdict::Limit);
        // 100 frames a second against 10 allowed: closed within 3 s.
        let mut closed_at = None;
        for i in 1..400u64 {
            let now = t0 + i * 10;
            if rl.check(now) == Verdict::Close {
                closed_at = Some(i * 10);
                break;
            }
        }
        let at = closed_at.expect("closed");
        assert!(at <= 3000, "closed after {at} ms");
    }

    proptest::proptest! {
        /// Over any window, no more than the burst plus the rate times the
        /// window's length is allowed, whatever the arrival pattern.
        #[test]
        fn allowed_frames_never_exceed_burst_plus_rate(
            rate in 1u32..200,
            gaps in proptest::collection::vec(0u64..50, 1..400),
        ) {
            let t0 = 1_000;
            let mut rl = RateLimit::new(rate, t0);
            let mut now = t0;
            let mut allowed = Vec::new();
            for g in gaps {
                now += g;
                if rl.check(now) == Verdict::Allow {
                    allowed.push(now);
                }
            }
            for (i, start) in allowed.iter().enumerate() {
                for (j, end) in allowed.iter().enumerate().skip(i) {
                    let window = (end - start) as f64 / 1000.0;
                    let n = (j - i + 1) as f64;
                    proptest::prop_assert!(n <= 2.0 * f64::from(rate) + f64::from(rate) * window + 1.0);
                }
            }
        }

        /// A client that keeps to its rate is never refused.
        #[test]
        fn a_steady_client_is_never_refused(rate in 1u32..200, frames in 1usize..500) {
            let t0 = 1_000;
            let mut rl = RateLimit::new(rate, t0);
            for i in 0..frames as u64 {
                // Each frame at or after its slot (whole milliseconds, rounded up).
                let at = t0 + (i * 1000).div_ceil(u64::from(rate));
                proptest::prop_assert_eq!(rl.check(at), Verdict::Allow);
            }
        }
    }

    #[test]
    fn a_client_within_its_rate_is_never_limited() {
        let t0 = 1_000;
        let mut rl = RateLimit::new(10, t0);
        for i in 0..1000u64 {
            assert_eq!(rl.check(t0 + i * 100), Verdict::Allow);
        }
    }
}
