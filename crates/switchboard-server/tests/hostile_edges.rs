//! The edges a hostile or careless client reaches first: the front path's
//! first bytes, origins, the backend API under a flood, and what the config
//! prints. Bounds on memory and CPU are read from `/proc` of the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until `want` appears in what arrived, the peer closes, or `within`
/// passes; returns everything read.
async fn read_until(s: &mut TcpStream, want: &[u8], within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&chunk[..n]);
                    if !want.is_empty() && got.windows(want.len()).any(|w| w == want) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    got
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A command frame sent right behind the upgrade request, in the same write
/// or in the next one (its own TCP segment, arriving while the head is being
/// parsed), is answered: no wake-up for its bytes is lost. The loss is a race
/// of microseconds: with the readiness cleared without a read, 3,000 rounds
/// lost a frame in about half the runs; hence the many rounds (~2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pipelined_behind_the_upgrade_request_are_answered() {
    let srv = TestServer::start(config()).await;
    let path = format!("/ws?token={}", srv.token("pipelined"));
    let head = upgrade_request(srv.addr, &path, &[]);
    for round in 0..6000u32 {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        let frame = masked_text_frame(format!(r#"{{"op":"ping","id":{round}}}"#).as_bytes());
        match round % 3 {
            // One segment: head and frame together.
            0 => {
                let mut both = head.clone();
                both.extend_from_slice(&frame);
                s.write_all(&both).await.expect("write");
            }
            // Two segments back to back.
            1 => {
                s.write_all(&head).await.expect("write head");
                s.write_all(&frame).await.expect("write frame");
            }
            // The frame 0-150 µs later, while the server routes the head.
            _ => {
                s.write_all(&head).await.expect("write head");
                let until = Instant::now() + Duration::from_micros(u64::from(round % 150));
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                s.write_all(&frame).await.expect("write frame");
            }
        }
        let want = format!(r#""id":{round}"#);
        let got = read_until(&mut s, want.as_bytes(), Duration::from_secs(3)).await;
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "round {round}: no 101: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            contains(&got, b"\"pong\"") && contains(&got, want.as_bytes()),
            "round {round}: the pipelined ping was not answered within 3 s: {}",
            String::from_utf8_lossy(&got)
        );
    }
}

/// A client that sends its upgrade request and at once its FIN (half-close)
/// is noticed: the server ends the connection instead of holding it until
/// the heartbeat reaps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fin_right_after_the_upgrade_request_is_noticed() {
    let srv = TestServer::start(config()).await;
    let path = format!("/ws?token={}", srv.token("finisher"));
    let head = upgrade_request(srv.addr, &path, &[]);
    for round in 0..100u32 {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.write_all(&head).await.expect("write head");
        if round % 2 == 1 {
            tokio::task::yield_now().await;
        }
        s.shutdown().await.expect("half-close");
        // Everything the server sends, up to its end of the connection.
        let started = Instant::now();
        let got = read_until(&mut s, b"", Duration::from_secs(3)).await;
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "round {round}: no 101: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "round {round}: the server kept a half-closed client open"
        );
    }
    // And the node let every one of them go.
    let deadline = Instant::now() + Duration::from_secs(3);
    while srv.state.node.hub.connection_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(srv.state.node.hub.connection_count(), 0);
}
