//! One WebSocket client's life: it reads commands and writes its outbox, in
//! one task. Writing drains everything queued since the last wake-up and
//! flushes once, so a burst of pushes leaves in as few writes as possible.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchboard_core::{ClientHandle, ClientInit, Disconnect, Node, Out};
use switchboard_protocol::frame::{self, ErrorCode};
use switchboard_protocol::{Op, decode_command};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_websockets::{CloseCode, Limits, Message, Payload, WebSocketStream};

use crate::auth::Token;
use crate::http::AppState;

/// Per-client GCRA-style budget: `rate` frames a second, bursts to `2 × rate`.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    limited_since: Option<Instant>,
    last_limited: Option<Instant>,
}

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
    pub fn new(per_second: u32, now: Instant) -> Self {
        let rate = f64::from(per_second);
        RateLimit {
            rate,
            burst: rate * 2.0,
            tokens: rate * 2.0,
            last: now,
            limited_since: None,
            last_limited: None,
        }
    }

    /// Takes one frame's token. A client still refused two seconds after its
    /// first refusal (with no quiet second in between) is to be closed.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let quiet = self
            .last_limited
            .is_none_or(|t| now.saturating_duration_since(t) > Duration::from_secs(1));
        if quiet {
            self.limited_since = Some(now);
        }
        self.last_limited = Some(now);
        match self.limited_since {
            Some(since) if now.saturating_duration_since(since) >= Duration::from_secs(2) => {
                Verdict::Close
            }
            _ => Verdict::Limit,
        }
    }
}

async fn send_close<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, d: Disconnect) {
    let push = frame::disconnect(d.code, d.reason);
    let close = Message::close(CloseCode::try_from(d.code).ok(), d.reason);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if d != Disconnect::STALE {
            ws.feed(Message::text(Payload::from(push))).await?;
        }
        ws.send(close).await?;
        ws.close().await
    })
    .await;
}

async fn write_batch<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    batch: &mut Vec<Out>,
) -> Result<(), tokio_websockets::Error> {
    for out in batch.drain(..) {
        let msg = match out {
            Out::Frame(bytes) => Message::text(Payload::from(bytes)),
            Out::Ping => Message::ping(Payload::from(bytes::Bytes::new())),
        };
        ws.feed(msg).await?;
    }
    ws.flush().await
}

/// The WebSocket codec exactly as `/ws` configures it (the Autobahn echo
/// example uses this too, so conformance is tested on the real settings).
pub fn ws_builder(max_message_size: usize) -> tokio_websockets::ServerBuilder {
    tokio_websockets::ServerBuilder::new()
        .limits(Limits::default().max_payload_len(Some(max_message_size)))
}

/// Runs one client until it leaves or is closed.
pub async fn run<S>(st: &Arc<AppState>, io: S, init: ClientInit)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ws = ws_builder(st.cfg.ws.max_message_size).serve(io);
    let node = &st.node;
    let client = match node.connect(init) {
        Ok(c) => c,
        Err(_) => {
            send_close(
                &mut ws,
                Disconnect {
                    code: 1013,
                    reason: "connection limit",
                },
            )
            .await;
            return;
        }
    };
    let span = tracing::info_span!("client", client = %client.id, user = %client.user, node = %node.name());
    let _enter = span.enter();
    tracing::debug!("connected");
    let write_timeout = st.cfg.ws.ping_interval.0 + st.cfg.ws.ping_timeout.0;
    let mut limiter = RateLimit::new(st.cfg.limits.messages_per_second, Instant::now());
    let mut batch = Vec::new();
    loop {
        let closing = client.outbox.drain(&mut batch);
        if !batch.is_empty() {
            match tokio::time::timeout(write_timeout, write_batch(&mut ws, &mut batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "write failed");
                    batch.clear();
                    break;
                }
                Err(_) => {
                    tracing::info!("write timed out: the client takes no frames");
                    batch.clear();
                    break;
                }
            }
        }
        if let Some(d) = closing {
            send_close(&mut ws, d).await;
            break;
        }
        tokio::select! {
            biased;
            () = client.outbox.ready() => {}
            msg = ws.next() => match msg {
                None => break,
                Some(Err(e)) => {
                    if matches!(e, tokio_websockets::Error::PayloadTooLong { .. }) {
                        // The codec has queued a 1009 close; let it out.
                        node.metrics.disconnects.get_or_create(
                            &switchboard_core::metrics::CodeLabel { code: 1009 }).inc();
                        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close()).await;
                    }
                    tracing::debug!(error = %e, "read failed");
                    break;
                }
                Some(Ok(m)) => {
                    client.touch(node.now_ms());
                    if m.is_close() {
                        continue;
                    }
                    if m.is_ping() || m.is_pong() {
                        continue;
                    }
                    node.metrics.messages_in.inc();
                    match limiter.check(Instant::now()) {
                        Verdict::Allow => handle_frame(st, &client, &m).await,
                        Verdict::Limit => {
                            let id = m.as_text().and_then(|t| decode_command(t).ok()).and_then(|c| c.id);
                            let _ = client.outbox.push(frame::error_reply(id, ErrorCode::RateLimited, "too many messages"));
                        }
                        Verdict::Close => {
                            node.close_client(&client, Disconnect::RATE_LIMITED).await;
                        }
                    }
                }
            }
        }
    }
    node.remove_client(&client).await;
    tracing::debug!("disconnected");
}

async fn handle_frame(st: &AppState, client: &Arc<ClientHandle>, m: &Message) {
    let node = &st.node;
    let Some(text) = m.as_text() else {
        let _ = client.outbox.push(frame::error_reply(
            None,
            ErrorCode::BadRequest,
            "binary frames are not commands",
        ));
        return;
    };
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
    client: &ClientHandle,
    token: &Token,
) -> Result<bytes::Bytes, switchboard_core::CommandError> {
    use switchboard_core::CommandError;
    let claims = st
        .verifier
        .verify(token)
        .map_err(|e| CommandError::new(ErrorCode::Unauthorized, e.to_string()))?;
    if claims.sub != *client.user {
        return Err(CommandError::new(
            ErrorCode::Forbidden,
            "the token names another user",
        ));
    }
    client
        .expires_at
        .store(claims.exp.unwrap_or(0), Ordering::Relaxed);
    let body = serde_json::json!({ "expires_at": claims.exp });
    Ok(bytes::Bytes::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_pass_and_sustained_floods_close() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(10, t0);
        for _ in 0..20 {
            assert_eq!(rl.check(t0), Verdict::Allow);
        }
        assert_eq!(rl.check(t0), Verdict::Limit);
        // 100 frames a second against 10 allowed: closed within 3 s.
        let mut closed_at = None;
        for i in 1..400u64 {
            let now = t0 + Duration::from_millis(i * 10);
            if rl.check(now) == Verdict::Close {
                closed_at = Some(i * 10);
                break;
            }
        }
        let at = closed_at.expect("closed");
        assert!(at <= 3000, "closed after {at} ms");
    }

    #[test]
    fn a_client_within_its_rate_is_never_limited() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(10, t0);
        for i in 0..1000u64 {
            assert_eq!(
                rl.check(t0 + Duration::from_millis(i * 100)),
                Verdict::Allow
            );
        }
    }
}
