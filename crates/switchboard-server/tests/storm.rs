//! Admission under a reconnect storm, over real sockets against the binary:
//! past `max_pending_handshakes` an upgrade is refused 503 with a jittered
//! `Retry-After`, and past `handshakes_per_address_per_second` 429, both
//! before any token work.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::proc::{ServerProcess, base_config};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A storm of upgrades at once against a node that keeps at most one in
/// hand: every one is answered (admitted, or 503 with a jittered
/// `Retry-After`), none is left to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_storm_past_the_pending_bound_upgrades_get_503_with_a_retry_after() {
    let server = ServerProcess::start(
        &format!("{}\n[limits]\nmax_pending_handshakes = 1\n", base_config()),
        &[],
    );
    let addr = server.addr;
    // One user each: the per-user limit must not be what refuses them.
    let upgrades: Vec<Vec<u8>> = (0..1500)
        .map(|i| {
            let t = token(&format!("u{i}"), 600, &[]);
            upgrade_request(addr, &format!("/ws?token={t}"), &[])
        })
        .collect();
    let storm: Vec<_> = upgrades
        .into_iter()
        .map(|upgrade| tokio::spawn(async move { try_raw_http(addr, &upgrade).await }))
        .collect();
    let (mut admitted, mut busy, mut waits) = (0, 0, HashSet::new());
    for t in storm {
        let r = t.await.expect("joined").expect("connected");
        match r.status {
            101 => admitted += 1,
            503 => {
                busy += 1;
                assert_eq!(r.error_code(), "unavailable", "{}", r.body);
                let wait: u32 = r
                    .header("retry-after")
                    .expect("Retry-After")
                    .parse()
                    .expect("whole seconds");
                assert!((1..=5).contains(&wait), "Retry-After {wait}");
                waits.insert(wait);
            }
            s => panic!("unanswered or unexpected: {s} {}", r.body),
        }
    }
    eprintln!("{admitted} admitted, {busy} refused busy, waits {waits:?}");
    assert!(admitted > 0, "none admitted");
    assert!(busy > 0, "none refused: the bound never held");
    let metrics = http(addr, "GET", "/metrics", &[], None).await.body;
    assert!(metrics.contains("reason=\"busy\""), "{metrics}");
}

/// Clients slow to send their head are waited for, not counted: a crowd of
/// them does not get everyone else refused.
#[tokio::test]
async fn handshakes_waiting_for_their_client_do_not_count_against_the_bound() {
    let server = ServerProcess::start(
        &format!("{}\n[limits]\nmax_pending_handshakes = 2\n", base_config()),
        &[],
    );
    let addr = server.addr;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        stalled.push(s);
    }
    let upgrade = upgrade_request(
        addr,
        &format!("/ws?token={}", token("alice", 600, &[])),
        &[],
    );
    // Until the node has read what each stalled one sent, those count as
    // work in hand; once read, they wait uncounted for as long as they stall.
    let deadline = Instant::now() + Duration::from_secs(20);
    while raw_http(addr, &upgrade).await.status != 101 {
        assert!(
            Instant::now() < deadline,
            "the stalled handshakes kept counting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        let r = raw_http(addr, &upgrade).await;
        assert_eq!(r.status, 101, "{} {}", r.status, r.body);
    }
    drop(stalled);
}

#[tokio::test]
async fn an_address_past_its_handshake_rate_gets_429_before_its_token_is_read() {
    let server = ServerProcess::start(
        &format!(
            "{}\n[limits]\nhandshakes_per_address_per_second = 2\n",
            base_config()
        ),
        &[],
    );
    let addr = server.addr;
    // An invalid token: 401 while the address has budget, 429 once it has
    // none (the rate is checked first).
    let upgrade = upgrade_request(addr, "/ws?token=nonsense", &[]);
    let start = Instant::now();
    let (mut unauthorized, mut limited) = (0u32, 0u32);
    for _ in 0..40 {
        let r = raw_http(addr, &upgrade).await;
        match r.status {
            401 => unauthorized += 1,
            429 => {
                limited += 1;
                assert_eq!(r.error_code(), "rate_limited", "{}", r.body);
                let wait: u32 = r
                    .header("retry-after")
                    .expect("Retry-After")
                    .parse()
                    .expect("whole seconds");
                assert!(wait >= 1, "Retry-After {wait}");
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    // A burst of 4, then 2 a second for as long as the loop took.
    let allowed = 4 + (2.0 * start.elapsed().as_secs_f64()).ceil() as u32 + 1;
    assert!(
        unauthorized <= allowed,
        "{unauthorized} reached the token check (at most {allowed})"
    );
    assert!(limited > 0, "none limited");
    // /api and other paths are not handshakes: untouched by the limit.
    assert_eq!(http(addr, "GET", "/health", &[], None).await.status, 200);
}
