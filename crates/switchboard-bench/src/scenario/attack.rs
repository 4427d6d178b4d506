//! The attackers of the `hostile` scenario, each a loop that runs until the
//! stop signal and reconnects whenever the server ends its connection. They
//! speak raw bytes where a WebSocket library would read or answer for them
//! (a client that never reads, 1-byte fragments, bad frames, half a
//! request head).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Ctx;
use crate::conn;
use crate::http::ApiClient;

/// What the attackers did, for the report.
#[derive(Debug, Default)]
pub struct AttackStats {
    /// Connections opened (each attacker reconnects when closed).
    pub connections: AtomicU64,
    /// Connections the server ended (closed, reset, refused).
    pub ended_by_server: AtomicU64,
    /// Bytes the attackers got onto the wire.
    pub bytes_sent: AtomicU64,
    /// HTTP requests answered, and of those `503`.
    pub requests: AtomicU64,
    pub refused_503: AtomicU64,
}

impl AttackStats {
    fn sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "connections": self.connections.load(Ordering::Relaxed),
            "ended_by_server": self.ended_by_server.load(Ordering::Relaxed),
            "bytes_sent": self.bytes_sent.load(Ordering::Relaxed),
            "requests": self.requests.load(Ordering::Relaxed),
            "refused_503": self.refused_503.load(Ordering::Relaxed),
        })
    }
}

/// A masked client frame (mask key 0: the payload goes as it is).
pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(first_byte);
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A WebSocket upgrade done by hand: the socket after the `101` head (what
/// follows, the welcome, is left unread).
pub async fn raw_upgrade(ctx: &Ctx, index: usize, user: &str) -> Result<TcpStream> {
    let uri = conn::ws_uri(&ctx.target, index, user)?;
    let node = ctx.target.node(index);
    let path = uri.split_once(&node.to_string()).map_or("/ws", |(_, p)| p);
    let mut s = tokio::time::timeout(
        ctx.target.handshake_timeout,
        conn::tcp_connect(&ctx.target, index),
    )
    .await??;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        node
    );
    s.write_all(head.as_bytes()).await?;
    let mut got = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    // Byte by byte up to the end of the head, so no frame is consumed.
    tokio::time::timeout(ctx.target.handshake_timeout, async {
        while !got.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await? == 0 {
                bail!("closed during the handshake");
            }
            got.push(byte[0]);
            if got.len() > 4096 {
                bail!("handshake answer too long");
            }
        }
        Ok(())
    })
    .await??;
    if !got.starts_with(b"HTTP/1.1 101") {
        bail!(
            "upgrade refused: {}",
            String::from_utf8_lossy(&got).lines().next().unwrap_or("")
        );
    }
    Ok(s)
}

/// Runs `attempt` again and again until `stop`, pausing `pause` between
/// attempts; each attempt is one connection.
async fn repeat<F, Fut>(
    stop: &watch::Receiver<bool>,
    stats: &AttackStats,
    pause: Duration,
    mut attempt: F,
) where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut n = 0u64;
    while !*stop.borrow() {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let mut stop = stop.clone();
        tokio::select! {
            r = attempt(n) => {
                if r.is_err() {
                    stats.ended_by_server.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = stop.changed() => return,
        }
        n += 1;
        tokio::time::sleep(pause).await;
    }
}

/// Empty pings as fast as the socket takes them, never reading: the
/// server's answers may only cost it a bounded amount.
pub async fn ping_flood(
    ctx: Ctx,
    who: usize,
    stop: watch::Receiver<bool>,
    stats: Arc<AttackStats>,
) {
    let batch: Vec<u8> = (0..1024).flat_map(|_| client_frame(0x89, b"")).collect();
    repeat(&stop, &stats, Duration::from_millis(200), |n| {
        let (ctx, batch, stats) = (&ctx, &batch, &stats);
        async move {
            let mut s = raw_upgrade(
                ctx,
                who,
                &ctx.client_id("atk-ping", who * 1000 + n as usize),
            )
            .await?;
            loop {
                s.write_all(batch).await?;
                stats.sent(batch.len());
            }
        }
    })
    .await;
}

/// A text message of `size` bytes sent as 1-byte fragments, a few frames
/// per TCP segment, again and again.
pub async fn tiny_fragments(
    ctx: Ctx,
    who: usize,
    size: usize,
    stop: watch::Receiver<bool>,
    stats: Arc<AttackStats>,
) {
    // `{"op":"ping","pad":"xxx…"}`: valid once whole.
    let mut message = br#"{"op":"ping","pad":""#.to_vec();
    message.resize(size.saturating_sub(2).max(message.len()), b'x');
    message.extend_from_slice(br#""}"#);
    let last = message.len() - 1;
    let frames: Vec<u8> = message
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            let opcode = if i == 0 { 0x1 } else { 0x0 };
            let fin = if i == last { 0x80 } else { 0 };
            client_frame(fin | opcode, &[*b])
        })
        .collect();
    repeat(&stop, &stats, Duration::from_millis(200), |n| {
        let (ctx, frames, stats) = (&ctx, &frames, &stats);
        async move {
            let mut s = raw_upgrade(
                ctx,
                who,
                &ctx.client_id("atk-frag", who * 1000 + n as usize),
            )
            .await?;
            // 8 frames (56 bytes) per write: many small segments.
            loop {
                for chunk in frames.chunks(56) {
                    s.write_all(chunk).await?;
                    stats.sent(chunk.len());
                }
            }
        }
    })
    .await;
}

/// Subscribes to `channels`, then never reads again, until the server closes
/// it (a slow consumer) or `hold` passes; then does it again.
pub async fn never_reader(
    ctx: Ctx,
    who: usize,
    channels: Vec<String>,
    hold: Duration,
    stop: watch::Receiver<bool>,
    stats: Arc<AttackStats>,
) {
    repeat(&stop, &stats, Duration::from_millis(200), |n| {
        let (ctx, channels, stats) = (&ctx, &channels, &stats);
        async move {
            let mut s = raw_upgrade(
                ctx,
                who,
                &ctx.client_id("atk-slow", who * 1000 + n as usize),
            )
            .await?;
            for (i, ch) in channels.iter().enumerate() {
                let cmd = format!(r#"{{"op":"subscribe","channel":"{ch}","id":{i}}}"#);
                let f = client_frame(0x81, cmd.as_bytes());
                s.write_all(&f).await?;
                stats.sent(f.len());
            }
            // Not a byte read from here on. Whether the server has closed it
            // shows only as a write error, so poke it now and then.
            let ping = client_frame(0x89, b"");
            let mut waited = Duration::ZERO;
            while waited < hold {
                tokio::time::sleep(Duration::from_secs(1)).await;
                waited += Duration::from_secs(1);
                s.write_all(&ping).await?;
            }
            Ok(())
        }
    })
    .await;
}

/// Publishes once to each of ever new channels of a namespace that keeps
/// history, at `per_s` a second.
pub async fn history_spam(
    api: ApiClient,
    who: usize,
    namespace: String,
    per_s: f64,
    stop: watch::Receiver<bool>,
    stats: Arc<AttackStats>,
) {
    let mut api = api;
    let period = Duration::from_secs_f64(1.0 / per_s.max(0.1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !*stop.borrow() {
        tick.tick().await;
        n += 1;
        let body = format!(r#"{{"channel":"{namespace}:spam-{who}-{n}","data":{{"n":{n}}}}}"#);
        match api.post_json("/api/publish", &body).await {
            Ok(r) => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                if r.status == 503 {
                    stats.refused_503.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                stats.ended_by_server.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `/api` requests back to back on one kept-alive connection: publishes to a
/// channel nobody reads, and node info.
pub async fn api_flood(
    api: ApiClient,
    who: usize,
    stop: watch::Receiver<bool>,
    stats: Arc<AttackStats>,
) {
    let mut api = api;
    let mut n = 0u64;
    while !*stop.borrow() {
        n += 1;
        let body = format!(r#"{{"channel":"bench:flood-{who}","data":{{"n":{n}}}}}"#);
        match api.post_json("/api/publish", &body).await {
            Ok(r) => {
                stats.requests.fetch_add(1, Ordering::Relaxed);
                if r.status == 503 {
                    stats.refused_503.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
            Err(_) => {
                stats.ended_by_server.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Half an upgrade request, one byte a second, on a connection the server
/// should drop after its handshake timeout.
pub async fn slowloris(ctx: Ctx, who: usize, stop: watch::Receiver<bool>, stats: Arc<AttackStats>) {
    let head = format!(
        "GET /ws?token=x HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: ",
        ctx.target.addr
    );
    repeat(&stop, &stats, Duration::from_millis(100), |_| {
        let (ctx, head, stats) = (&ctx, &head, &stats);
        async move {
            let mut s = conn::tcp_connect(&ctx.target, who).await?;
            for b in head.as_bytes().iter().cycle() {
                s.write_all(&[*b]).await?;
                stats.sent(1);
                // Sleeping in steps, so a close by the server shows soon.
                let mut buf = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => bail!("dropped by the server"),
                    Ok(Ok(_)) => bail!("answered"),
                    Err(_) => {}
                }
            }
            Ok(())
        }
    })
    .await;
}

/// Bad frames of every kind, each on its own connection: text that is not
/// JSON, unknown ops, a binary frame, invalid UTF-8, a reserved opcode, an
/// unmasked frame, a frame over the size limit.
pub async fn bad_frames(
    ctx: Ctx,
    who: usize,
    stop: watch::Receiver<bool>,
    stats: Arc<AttackStats>,
) {
    let kinds: Vec<Vec<u8>> = vec![
        client_frame(0x81, b"this is not json"),
        client_frame(0x81, br#"{"op":"no-such-op","id":1}"#),
        client_frame(
            0x81,
            br#"{"op":"subscribe","channel":"bad channel!","id":2}"#,
        ),
        client_frame(0x82, b"\x00\x01binary"),
        client_frame(0x81, b"\xff\xfe not utf-8"),
        client_frame(0x83, b"reserved opcode"),
        {
            let mut f = client_frame(0x81, b"{}");
            f[1] &= 0x7f; // unmasked
            f.truncate(2);
            f.extend_from_slice(b"{}");
            f
        },
        {
            // Announces 1 GiB.
            let mut f = vec![0x82, 0x80 | 127];
            f.extend_from_slice(&(1u64 << 30).to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0]);
            f
        },
    ];
    repeat(&stop, &stats, Duration::from_millis(50), |n| {
        let (ctx, kinds, stats) = (&ctx, &kinds, &stats);
        async move {
            let mut s =
                raw_upgrade(ctx, who, &ctx.client_id("atk-bad", who * 1000 + n as usize)).await?;
            let f = &kinds[n as usize % kinds.len()];
            // A burst of the same bad frame, then read what comes back.
            for _ in 0..20 {
                s.write_all(f).await?;
                stats.sent(f.len());
            }
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            })
            .await;
            Ok(())
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_masked_with_the_right_length_encoding() {
        let ping = client_frame(0x89, b"");
        assert_eq!(ping, [0x89, 0x80, 0, 0, 0, 0]);
        let small = client_frame(0x01, b"x");
        assert_eq!(small, [0x01, 0x81, 0, 0, 0, 0, b'x']);
        let mid = client_frame(0x81, &[b'a'; 300]);
        assert_eq!(&mid[..4], &[0x81, 0x80 | 126, 0x01, 0x2c]);
        assert_eq!(mid.len(), 4 + 4 + 300);
        let big = client_frame(0x82, &vec![0; 70_000]);
        assert_eq!(big[1], 0x80 | 127);
        assert_eq!(&big[2..10], &70_000u64.to_be_bytes());
        assert_eq!(big.len(), 10 + 4 + 70_000);
    }
}
