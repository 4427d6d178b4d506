//! One client's task: it reads commands and writes its outbox, turn by turn.
//!
//! Each turn: read (only while the socket takes our bytes), handle what was
//! read, take the outbox into the write queue once the last batch is gone,
//! write what the socket takes, then wait for whichever sources are ready.
//! Every bound is one line here:
//! - reads: [`super::connection`]'s per-turn budget, and none while the
//!   socket refuses our bytes (the client's TCP window pushes back);
//! - what a client's frames make us queue: replies go to the byte-bounded
//!   outbox, pongs to the write queue's single pong slot, and every frame
//!   passes the rate limit first;
//! - writes: the write queue holds at most one outbox's worth; a stalled
//!   socket lets the outbox fill and overflow (1013), and a socket that
//!   takes nothing for `ping_interval + ping_timeout` is dropped;
//! - CPU: a client past its rate limit is not read for [`THROTTLE`] (its
//!   TCP window pushes back, so a flood costs us what the limit allows, not
//!   what the link carries); a read that spent its budget yields to the
//!   scheduler before the next, and so does a task under sustained load
//!   (`consume_budget`); a turn serves reads and writes alike.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use switchboard_core::metrics::CodeLabel;
use switchboard_core::{ClientHandle, ClientInit, Disconnect, Out};
use switchboard_protocol::decode_command;
use switchboard_protocol::frame::{self, ErrorCode};
use switchboard_protocol::websocket::Message;

use super::commands::handle_frame;
use super::connection::{Close, Connection, PONGS_AT_ONCE, ReadEnd, ReadOutcome};
use super::rate_limit::{RateLimit, Verdict};
use crate::http::AppState;

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
    stream: tokio::net::TcpStream,
    already_read: &[u8],
    head: Bytes,
    init: ClientInit,
    live: LiveTransport,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let mut conn = Connection::new(stream, already_read, head, live.0.cfg.ws.max_message_size);
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

/// How long a client past its rate limit is not read. Its frames keep being
/// refused (and it is closed 1008 if it keeps on), but the node decodes at
/// most one read's budget of them per pause.
const THROTTLE: Duration = Duration::from_millis(250);

/// How long a socket may take none of our bytes before the client is
/// dropped: as long as a live client may take to answer a ping.
fn write_timeout(st: &AppState) -> Duration {
    st.cfg.ws.ping_interval.0 + st.cfg.ws.ping_timeout.0
}

/// What woke the task: every source that was ready, not only the first, so
/// a busy outbox never hides a readable socket.
#[derive(Default, Clone, Copy)]
struct Ready {
    outbox: bool,
    readable: bool,
    writable: bool,
    stall_timeout: bool,
    /// The rate-limit pause is over.
    resume: bool,
}

/// Runs one client until it leaves or is closed.
///
/// Not an `async fn`: that would keep a second copy of its arguments in the
/// future. Everything an idle client's task holds is listed here, because
/// every connection pays for it: the connection, the handle, the rate
/// limit, the stall timer and the readiness flags.
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
        // Armed only while the socket refuses our bytes; pushed back each
        // time it takes some, so only a socket that takes nothing times out.
        let mut stall_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // Armed only while the client is past its rate limit: no reads until it fires.
        let mut read_pause: Option<Pin<Box<tokio::time::Sleep>>> = None;
        // Bytes may have come with the upgrade request: read before waiting.
        let mut ready = Ready {
            readable: conn.has_early_bytes(),
            ..Ready::default()
        };
        let close: Option<Close> = 'run: loop {
            // Read only while the socket takes what we write (the last write
            // finished): a client that does not read its answers is not read
            // from either.
            let mut budget_spent = false;
            if ready.readable && stall_timer.is_none() && read_pause.is_none() {
                ready.readable = false;
                let read = conn.read_now();
                budget_spent = read.budget_spent;
                // Boxed: handling commands needs a large future that lives
                // only while it runs.
                let flow =
                    Box::pin(handle_read(&live.0, &client, &mut conn, &mut limiter, read)).await;
                match flow {
                    Flow::End(close) => break 'run close,
                    Flow::Limited => {
                        read_pause = Some(Box::pin(tokio::time::sleep(THROTTLE)));
                    }
                    Flow::Continue => {}
                }
            }
            // Take more only once the socket took everything: while it is
            // stalled, pushes pile up in the bounded outbox, which is what
            // detects a slow consumer.
            let closing = if conn.out.is_empty() {
                let (queued, closing) = client.outbox.take();
                conn.out.push_all(queued);
                closing
            } else {
                client.outbox.closing()
            };
            let was_stalled = stall_timer.is_some();
            match conn.out.write_now(&conn.stream) {
                Ok(p) => {
                    if was_stalled && p.wrote {
                        // Room in a full send buffer means the client
                        // acknowledged bytes: it is alive, however slowly
                        // it reads, though we do not read it meanwhile.
                        client.touch(live.0.node.now_ms());
                    }
                    if p.done {
                        stall_timer = None;
                    } else {
                        let deadline = tokio::time::Instant::now() + write_timeout(&live.0);
                        match stall_timer.as_mut() {
                            Some(t) if p.wrote => t.as_mut().reset(deadline),
                            Some(_) => {}
                            None => {
                                stall_timer = Some(Box::pin(tokio::time::sleep_until(deadline)))
                            }
                        }
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
                if !d.same_close(&Disconnect::STALE) {
                    conn.out.frames.push_back(Out::Frame(frame::disconnect(
                        d.code,
                        d.reason,
                        d.reconnect_after_ms,
                    )));
                }
                break 'run Some(Close::ours(d.code, d.reason));
            }
            // A client with more to read, or whose outbox never empties,
            // never waits below: let the scheduler run others.
            if budget_spent {
                tokio::task::yield_now().await;
            } else {
                tokio::task::coop::consume_budget().await;
            }
            // Wait for the next thing to do without storing a future per
            // source: readiness is polled straight from the socket and the outbox.
            let woke = std::future::poll_fn(|cx| {
                let stalled = !conn.out.is_empty();
                let mut r = Ready {
                    outbox: client.outbox.poll_ready(cx, !stalled).is_ready(),
                    ..Ready::default()
                };
                if stalled {
                    r.writable = conn.stream.poll_write_ready(cx).is_ready();
                    r.stall_timeout = stall_timer
                        .as_mut()
                        .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                } else if let Some(t) = read_pause.as_mut() {
                    // Paused: the socket's readiness is not watched, or a
                    // flooding client would wake us for nothing.
                    r.resume = t.as_mut().poll(cx).is_ready();
                } else {
                    r.readable = conn.stream.poll_read_ready(cx).is_ready();
                }
                if r.outbox || r.readable || r.writable || r.stall_timeout || r.resume {
                    Poll::Ready(r)
                } else {
                    Poll::Pending
                }
            })
            .await;
            if woke.stall_timeout && !woke.writable {
                tracing::info!(client = %client.id, user = %client.user, "write timed out: the client takes no frames");
                break 'run None;
            }
            if woke.resume {
                read_pause = None;
                // Whatever arrived meanwhile: try it (a read that finds
                // nothing costs one system call).
                ready.readable = true;
            }
            ready.readable |= woke.readable;
        };
        Box::pin(finish(live, conn, client, close)).await;
    }
}

/// What handling a read leaves the client to do.
enum Flow {
    Continue,
    /// Go on, but the client went past its rate limit: pause its reads.
    Limited,
    /// End the client, with a close frame when there is one.
    End(Option<Close>),
}

/// Handles what one read produced: every frame passes the rate limit (PROTOCOL
/// §4: fragments and control frames count), then pings are answered and
/// commands handled in order.
async fn handle_read(
    st: &AppState,
    client: &Arc<ClientHandle>,
    conn: &mut Connection,
    limiter: &mut RateLimit,
    read: ReadOutcome,
) -> Flow {
    let node = &st.node;
    if read.frames == 0 && read.end.is_none() {
        return Flow::Continue;
    }
    let now = node.now_ms();
    if read.frames > 0 {
        client.touch(now);
    }
    // Fragments that did not finish a message: counted, never answered.
    let mut limited_fragments = false;
    for _ in 0..read.frames.saturating_sub(read.messages.len()) {
        match limiter.check(now) {
            Verdict::Close => {
                node.close_client(client, Disconnect::RATE_LIMITED).await;
                // The outbox is closing: the next turn sends the reason.
                return Flow::Continue;
            }
            Verdict::Limit => limited_fragments = true,
            Verdict::Allow => {}
        }
    }
    let mut limited = false;
    let mut pongs_at_once = PONGS_AT_ONCE;
    for m in read.messages {
        if let Some(close) = Close::answer(&m) {
            return Flow::End(Some(close));
        }
        let verdict = limiter.check(now);
        if verdict == Verdict::Close {
            node.close_client(client, Disconnect::RATE_LIMITED).await;
            return Flow::Continue;
        }
        limited |= verdict == Verdict::Limit;
        match m {
            Message::Ping(p) => {
                // A ping past the limit gets no pong.
                if verdict == Verdict::Allow {
                    conn.answer_ping(&p, &mut pongs_at_once);
                }
            }
            Message::Pong(_) | Message::Close(..) => {}
            m => {
                node.metrics.messages_in.inc();
                if verdict == Verdict::Allow {
                    handle_frame(st, client, m).await;
                } else {
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
            }
        }
    }
    match read.end {
        None if limited || limited_fragments => Flow::Limited,
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
