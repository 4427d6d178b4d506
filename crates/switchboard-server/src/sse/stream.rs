//! An SSE client's response body, and what bounds it.
//!
//! The body takes the client's outbox whenever hyper asks for more, which it
//! does only while its bounded write buffer has room: a client that does not
//! read stops the asking, its outbox overflows, and the node closes it as a
//! slow consumer (1013, counted like a WebSocket one). Each time hyper asks
//! counts as hearing from the client, as a socket taking our bytes does for
//! a WebSocket; an idle stream gets the node's pings as `: ping` comments.
//!
//! A body that hyper no longer asks for cannot end its connection itself:
//! a watcher does, through the connection's [`ConnHandle`], once the client
//! is closed (or gone) and its connection has not ended within
//! `ping_interval + ping_timeout`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use switchboard_core::{ClientHandle, Disconnect};
use switchboard_protocol::frame;
use tokio::sync::Notify;

use super::encode::Encoder;
use crate::http::AppState;
use crate::transport::LiveTransport;

/// One hyper connection's end, which a request's handler may call for.
/// Every connection served by hyper carries one in its requests' extensions.
#[derive(Debug, Default)]
pub struct ConnHandle {
    kill: Notify,
    ended: AtomicBool,
}

impl ConnHandle {
    /// Ends the connection now (its socket is dropped).
    pub fn kill(&self) {
        self.kill.notify_one();
    }

    /// Resolves once [`ConnHandle::kill`] was called.
    pub async fn killed(&self) {
        self.kill.notified().await;
    }

    /// The connection has ended on its own.
    pub fn set_ended(&self) {
        self.ended.store(true, Ordering::Release);
    }

    fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

pub(super) struct SseBody {
    st: Arc<AppState>,
    client: Arc<ClientHandle>,
    enc: Encoder,
    /// The last chunk is out: the next poll ends the body.
    done: bool,
    _live: LiveTransport,
}

impl SseBody {
    pub(super) fn new(
        st: Arc<AppState>,
        client: Arc<ClientHandle>,
        enc: Encoder,
        conn: Option<Arc<ConnHandle>>,
    ) -> Self {
        let live = LiveTransport::new(&st);
        if let Some(conn) = conn {
            tokio::spawn(watch(st.clone(), client.clone(), conn));
        }
        SseBody {
            st,
            client,
            enc,
            done: false,
            _live: live,
        }
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            // Hyper asks only while it can write: the client is taking bytes.
            this.client.touch(this.st.node.now_ms());
            if this.client.outbox.poll_ready(cx, true).is_pending() {
                return Poll::Pending;
            }
            let (queued, closing) = this.client.outbox.take();
            let mut buf = BytesMut::new();
            for out in &queued {
                this.enc.encode(out, &mut buf);
            }
            if let Some(d) = closing {
                this.done = true;
                if !d.same_close(&Disconnect::STALE) {
                    this.enc.disconnect(
                        &frame::disconnect(d.code, d.reason, d.reconnect_after_ms),
                        &mut buf,
                    );
                }
            }
            if !buf.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
            }
        }
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        // The stream is over (the client left, or hyper dropped it): the
        // client leaves every index, on a task (removal awaits presence).
        let st = self.st.clone();
        let client = self.client.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                st.node.remove_client(&client).await;
                tracing::debug!(client = %client.id, user = %client.user, "sse stream ended");
            });
        }
    }
}

/// Ends the connection of a client that was closed (or left) but whose
/// connection has not ended `ping_interval + ping_timeout` later: a socket
/// that takes nothing, which hyper would otherwise wait on for ever.
async fn watch(st: Arc<AppState>, client: Arc<ClientHandle>, conn: Arc<ConnHandle>) {
    let grace = st.cfg.ws.ping_interval.0 + st.cfg.ws.ping_timeout.0;
    let tick = st.node.heartbeat_tick();
    drop(st);
    let mut closed_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        if conn.has_ended() {
            return;
        }
        if closed_at.is_none() && (client.is_removed() || client.outbox.closing().is_some()) {
            closed_at = Some(tokio::time::Instant::now());
        }
        if closed_at.is_some_and(|t| t.elapsed() >= grace) {
            tracing::info!(client = %client.id, user = %client.user, "sse stream takes nothing: dropping its connection");
            conn.kill();
            return;
        }
    }
}
