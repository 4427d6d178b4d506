//! An echo server on the same connection code as `/ws`, for the Autobahn
//! conformance suite (`examples/autobahn_echo.rs`, `scripts/autobahn`).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use switchboard_core::Out;
use switchboard_protocol::websocket::{Message, opcode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connection::{Close, Connection, PONGS_AT_ONCE, ReadEnd};

/// Answers the upgrade itself and echoes every message.
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
    let mut first = conn.has_early_bytes();
    loop {
        conn.flush(Duration::from_secs(30)).await?;
        if !first {
            conn.stream.readable().await?;
        }
        first = false;
        let read = conn.read_now();
        let mut pongs_at_once = PONGS_AT_ONCE;
        for m in read.messages {
            if let Some(close) = Close::answer(&m) {
                conn.close(close, Duration::from_secs(5)).await;
                return Ok(());
            }
            match m {
                Message::Ping(p) => conn.answer_ping(&p, &mut pongs_at_once),
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
