//! Every row of PROTOCOL §1's rejection table, answered before any `101`.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn sign(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn handshake(s: &TestServer, query: &str, extra: &[(&str, &str)]) -> HttpResponse {
    raw_http(
        s.addr,
        &upgrade_request(s.addr, &format!("/ws{query}"), extra),
    )
    .await
}

async fn assert_refused(
    s: &TestServer,
    query: &str,
    extra: &[(&str, &str)],
    status: u16,
    code: &str,
) {
    let r = handshake(s, query, extra).await;
    assert_eq!(r.status, status, "{query} {extra:?}: {}", r.body);
    assert_eq!(r.error_code(), code);
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn a_valid_token_upgrades_from_header_query_or_cookie() {
    let s = TestServer::start(config()).await;
    let t = s.token("alice");
    for (q, h) in [
        (
            "".to_string(),
            vec![("Authorization".to_string(), format!("Bearer {t}"))],
        ),
        (format!("?token={t}"), vec![]),
        (
            "".to_string(),
            vec![("Cookie".to_string(), format!("other=1; sb_token={t}"))],
        ),
    ] {
        let extra: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = handshake(&s, &q, &extra).await;
        assert_eq!(r.status, 101, "{q} {extra:?}");
        assert_eq!(
            r.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_401_before_the_upgrade() {
    let s = TestServer::start(config()).await;
    let now = now() as i64;
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "a", "exp": now + 60}),
        &EncodingKey::from_secret(b"not-the-secret-at-all"),
    )
    .expect("sign");
    let cases = [
        ("no token", "".to_string()),
        ("malformed", "?token=abc.def".to_string()),
        ("bad signature", format!("?token={forged}")),
        // {"alg":"none"} with a valid-looking body and no signature
        (
            "alg none",
            "?token=eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ."
                .to_string(),
        ),
        (
            "expired",
            format!("?token={}", sign(json!({"sub": "a", "exp": now - 60}))),
        ),
        (
            "not yet valid",
            format!(
                "?token={}",
                sign(json!({"sub": "a", "exp": now + 600, "nbf": now + 300}))
            ),
        ),
        ("no exp", format!("?token={}", sign(json!({"sub": "a"})))),
        (
            "no sub",
            format!("?token={}", sign(json!({"exp": now + 60}))),
        ),
    ];
    for (what, q) in cases {
        let r = handshake(&s, &q, &[]).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(r.error_code(), "unauthorized", "{what}");
        assert!(
            !r.body.contains(q.trim_start_matches("?token=")) || q.is_empty(),
            "{what}: token echoed"
        );
    }
    let metrics = s.http("GET", "/metrics", None).await.body;
    assert!(
        metrics.contains("switchboard_handshakes_rejected_total{reason=\"expired\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn audience_and_issuer_must_match_when_configured() {
    let mut cfg = config();
    cfg.auth.audience = "my-app".into();
    cfg.auth.issuer = "my-auth".into();
    let s = TestServer::start(cfg).await;
    let exp = now() + 600;
    let good = sign(json!({"sub": "a", "exp": exp, "aud": "my-app", "iss": "my-auth"}));
    assert_eq!(
        handshake(&s, &format!("?token={good}"), &[]).await.status,
        101
    );
    for claims in [
        json!({"sub": "a", "exp": exp, "aud": "other", "iss": "my-auth"}),
        json!({"sub": "a", "exp": exp, "aud": "my-app", "iss": "other"}),
        json!({"sub": "a", "exp": exp, "iss": "my-auth"}),
        json!({"sub": "a", "exp": exp, "aud": "my-app"}),
    ] {
        let t = sign(claims.clone());
        assert_refused(&s, &format!("?token={t}"), &[], 401, "unauthorized").await;
    }
}

#[tokio::test]
async fn a_foreign_origin_is_refused_403_and_no_origin_is_allowed() {
    let mut cfg = config();
    cfg.ws.allowed_origins = vec![
        "http://localhost:8000".into(),
        "https://*.example.com".into(),
    ];
    let s = TestServer::start(cfg).await;
    let q = format!("?token={}", s.token("a"));
    assert_refused(&s, &q, &[("Origin", "https://evil.com")], 403, "forbidden").await;
    assert_eq!(
        handshake(&s, &q, &[("Origin", "https://app.example.com")])
            .await
            .status,
        101
    );
    assert_eq!(
        handshake(&s, &q, &[("Origin", "http://localhost:8000")])
            .await
            .status,
        101
    );
    assert_eq!(handshake(&s, &q, &[]).await.status, 101);
}

#[tokio::test]
async fn node_and_user_limits_answer_503_with_retry_after() {
    let mut cfg = config();
    cfg.limits.max_connections = 3;
    cfg.limits.max_connections_per_user = 2;
    let s = TestServer::start(cfg).await;
    let _a1 = s.client("alice").await;
    let _a2 = s.client("alice").await;
    let r = handshake(&s, &format!("?token={}", s.token("alice")), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "limit_exceeded");
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u32>().is_ok())
    );
    let _b = s.client("bob").await;
    let r = handshake(&s, &format!("?token={}", s.token("carol")), &[]).await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn a_plain_request_to_ws_is_not_an_upgrade() {
    let s = TestServer::start(config()).await;
    let r = http(
        s.addr,
        "GET",
        &format!("/ws?token={}", s.token("a")),
        &[],
        None,
    )
    .await;
    assert!(r.status == 400 || r.status == 426, "{}", r.status);
    assert_eq!(r.error_code(), "bad_request");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_is_dropped_after_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = config();
    cfg.ws.handshake_timeout =
        switchboard_server::config::Dur(std::time::Duration::from_millis(500));
    let s = TestServer::start(cfg).await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    let mut trickle = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    let trickler = tokio::spawn(async move {
        for b in b"GET /ws HTTP/1.1\r\nHost: x\r\n".iter().cycle().take(200) {
            if trickle.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    });
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("dropped within the bound");
    assert!(matches!(n, Ok(_) | Err(_)));
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    let dropped = tokio::time::timeout(std::time::Duration::from_secs(5), trickler)
        .await
        .expect("trickler dropped")
        .expect("task");
    assert!(dropped, "the one-byte-at-a-time client was dropped");
}

/// Reads from `s` until `needle` appears in what arrived, or 5 s pass.
async fn read_until(s: &mut tokio::net::TcpStream, needle: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !got.windows(needle.len()).any(|w| w == needle) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => panic!(
                "no {:?} in {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&got)
            ),
        }
    }
    got
}

#[tokio::test]
async fn a_handshake_in_pieces_with_a_command_behind_it_is_answered_in_order() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start(config()).await;
    let mut request = upgrade_request(s.addr, &format!("/ws?token={}", s.token("a")), &[]);
    // The first command rides in the same bytes as the head's end.
    request.extend_from_slice(&masked_text_frame(br#"{"op":"ping","id":7}"#));
    let mut tcp = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    for piece in request.chunks(5) {
        tcp.write_all(piece).await.expect("write");
        tcp.flush().await.expect("flush");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let got = read_until(&mut tcp, br#""id":7"#).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    let welcome = text.find(r#""type":"welcome""#).expect("welcome");
    let pong = text.find(r#""type":"pong""#).expect("pong");
    assert!(welcome < pong, "{text}");
}

#[tokio::test]
async fn an_upgrade_after_a_plain_request_on_the_same_connection_works() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start(config()).await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_until(&mut tcp, b"\"status\"").await;
    let mut request = upgrade_request(s.addr, &format!("/ws?token={}", s.token("b")), &[]);
    request.extend_from_slice(&masked_text_frame(br#"{"op":"ping","id":9}"#));
    tcp.write_all(&request).await.expect("write");
    let got = read_until(&mut tcp, br#""id":9"#).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("HTTP/1.1 101 "), "{text}");
    assert!(text.contains(r#""type":"welcome""#), "{text}");
}
