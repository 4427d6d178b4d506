//! The `switchboard` binary as a user runs it: subcommands, development mode,
//! and SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::proc::KillOnDrop;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Starts `switchboard serve` and returns it with the address it printed.
fn spawn(
    envs: &[(&str, &str)],
    args: &[&str],
) -> (KillOnDrop, SocketAddr, std::thread::JoinHandle<String>) {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .env_clear()
        .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn switchboard");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("a line").expect("utf8");
        if let Some(a) = line.strip_prefix("listening on http://") {
            break a.parse().expect("address");
        }
    };
    let stderr = child.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || {
        let mut s = String::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    (KillOnDrop(child), addr, logs)
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

#[tokio::test]
async fn sigterm_closes_clients_1001_and_exits_0() {
    let (mut child, addr, logs) = spawn(
        &[
            ("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET),
            ("SWITCHBOARD_API_KEY", API_KEY),
            ("SWITCHBOARD_SHUTDOWN_READY_GRACE", "0s"),
        ],
        &[],
    );
    let mut a = Client::connect(addr, &token("alice", 600, &[])).await;
    let mut b = Client::connect(addr, &token("bob", 600, &[])).await;
    signal(&child, "-TERM");
    assert_eq!(a.recv_type("disconnect").await["code"], 1001);
    assert_eq!(a.close_code().await, Some(1001));
    assert_eq!(b.close_code().await, Some(1001));
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status:?}");
    let logs = logs.join().expect("logs");
    assert!(logs.contains("SIGTERM"), "{logs}");
    assert!(!logs.contains(SECRET), "the secret leaked into the logs");
}

/// PROTOCOL §8 `[shutdown]`: on SIGTERM `/ready` answers 503 at once while
/// the node still takes clients and delivers; only after `ready_grace` are
/// clients closed, 1001, each told when to come back.
#[tokio::test]
async fn sigterm_is_unready_first_then_drains_telling_each_client_when_to_return() {
    let (mut child, addr, logs) = spawn(
        &[
            ("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET),
            ("SWITCHBOARD_API_KEY", API_KEY),
            ("SWITCHBOARD_SHUTDOWN_READY_GRACE", "3s"),
            ("SWITCHBOARD_SHUTDOWN_DRAIN_PERIOD", "1s"),
        ],
        &[],
    );
    let mut a = Client::connect(addr, &token("alice", 600, &[])).await;
    assert_eq!(http(addr, "GET", "/ready", &[], None).await.status, 200);
    signal(&child, "-TERM");
    wait_unready(addr).await;
    // Unready, yet serving: a new client is welcomed and both get what is
    // published to them.
    let mut b = Client::connect(addr, &token("bob", 600, &[])).await;
    for user in ["alice", "bob"] {
        let body = format!(r#"{{"channel":"user:{user}","data":{{"hi":1}}}}"#);
        let auth = format!("Bearer {API_KEY}");
        let r = http(
            addr,
            "POST",
            "/api/publish",
            &[("Authorization", &auth)],
            Some(&body),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(a.recv_type("pub").await["data"]["hi"], 1);
    assert_eq!(b.recv_type("pub").await["data"]["hi"], 1);
    // Then the drain: 1001 with a wait within the drain's pacing.
    for c in [&mut a, &mut b] {
        let d = c.recv_type("disconnect").await;
        assert_eq!(d["code"], 1001, "{d}");
        let wait = d["reconnect_after_ms"]
            .as_u64()
            .expect("reconnect_after_ms");
        assert!(wait < 1000, "{d}");
        assert_eq!(c.close_code().await, Some(1001));
    }
    let status = wait_exit(&mut child, Duration::from_secs(15)).expect("exited");
    assert!(status.success(), "{status:?}");
    let logs = logs.join().expect("logs");
    assert!(logs.contains("paced batches"), "{logs}");
}

/// Until `/ready` answers 503 (the stop began).
async fn wait_unready(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while http(addr, "GET", "/ready", &[], None).await.status != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "/ready never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A second SIGTERM cuts the grace short: a stuck deploy can still be hurried.
#[tokio::test]
async fn a_second_sigterm_closes_everyone_at_once() {
    let (mut child, addr, _logs) = spawn(
        &[
            ("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET),
            ("SWITCHBOARD_API_KEY", API_KEY),
            ("SWITCHBOARD_SHUTDOWN_READY_GRACE", "10m"),
        ],
        &[],
    );
    let mut a = Client::connect(addr, &token("alice", 600, &[])).await;
    signal(&child, "-TERM");
    wait_unready(addr).await;
    signal(&child, "-TERM");
    let d = a.recv_type("disconnect").await;
    assert_eq!(d["code"], 1001, "{d}");
    assert_eq!(a.close_code().await, Some(1001));
    let status = wait_exit(&mut child, Duration::from_secs(15)).expect("exited");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn with_no_config_it_runs_in_development_mode() {
    let (mut child, addr, logs) = spawn(&[], &[]);
    let page = http(addr, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<html") || page.body.contains("<!doctype"));
    // The page is built on the SDK the binary serves, not on code of its own.
    assert!(page.body.contains(r#"from "/sdk/switchboard.js""#));
    assert_eq!(
        http(addr, "GET", "/sdk/switchboard.js", &[], None)
            .await
            .status,
        200
    );
    let t = http(addr, "GET", "/dev/token?user=alice", &[], None)
        .await
        .json();
    let token = t["token"].as_str().expect("token").to_string();
    let mut c = Client::connect(addr, &token).await;
    assert_eq!(c.subscribe("chat:lobby").await["offset"], 0);
    signal(&child, "-INT");
    assert_eq!(c.close_code().await, Some(1001));
    assert!(wait_exit(&mut child, Duration::from_secs(10)).is_some_and(|s| s.success()));
    let logs = logs.join().expect("logs");
    assert!(logs.contains("DEVELOPMENT MODE"), "{logs}");
    assert!(logs.contains("SWITCHBOARD_AUTH_HMAC_SECRET="), "{logs}");
    assert!(!logs.contains(&token), "a token reached the logs");
}

#[tokio::test]
async fn outside_development_mode_there_is_no_demo_page_or_token_endpoint() {
    let (mut child, addr, _logs) = spawn(
        &[
            ("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET),
            ("SWITCHBOARD_API_KEY", API_KEY),
        ],
        &[],
    );
    assert_eq!(http(addr, "GET", "/", &[], None).await.status, 404);
    assert_eq!(
        http(addr, "GET", "/dev/token?user=a", &[], None)
            .await
            .status,
        404
    );
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).is_some_and(|s| s.success()));
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(envs.iter().copied())
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_wrong_config_stops_the_start_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("sb-proc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("bad.toml");
    std::fs::write(&f, "[limits]\nmax_conections = 5\n").expect("write");
    let path = f.to_str().expect("utf8");
    let (ok, _, err) = run(&["serve", "--config", path], &[]);
    assert!(!ok);
    assert!(err.contains("max_conections"), "{err}");
    let (ok, _, err) = run(&["check-config", path], &[]);
    assert!(!ok && err.contains("max_conections"), "{err}");
    std::fs::write(&f, "listen = \"127.0.0.1:0\"\n").expect("write");
    let (ok, _, err) = run(&["serve", "--config", path], &[]);
    assert!(!ok);
    assert!(
        err.contains("auth.hmac_secret") && err.contains("api.key"),
        "{err}"
    );
    let (ok, out, _) = run(
        &["check-config", path],
        &[
            ("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET),
            ("SWITCHBOARD_API_KEY", "k"),
        ],
    );
    assert!(ok, "{out}");
}

#[test]
fn default_config_prints_every_key_and_token_mints_a_valid_token() {
    let (ok, out, _) = run(&["default-config"], &[]);
    assert!(ok);
    let parsed: switchboard_server::config::Config = toml::from_str(&out).expect("parses");
    assert_eq!(parsed, switchboard_server::config::Config::default());
    let (ok, out, err) = run(
        &[
            "token",
            "--sub",
            "alice",
            "--ttl",
            "10m",
            "--channel",
            "vip:*",
        ],
        &[
            ("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET),
            ("SWITCHBOARD_API_KEY", "k"),
        ],
    );
    assert!(ok, "{err}");
    let cfg = switchboard_server::config::AuthConfig {
        hmac_secret: SECRET.into(),
        ..Default::default()
    };
    let v = switchboard_server::auth::Verifier::from_config(&cfg).expect("verifier");
    let claims = v
        .verify(&switchboard_server::auth::Token::new(out.trim()))
        .expect("valid");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.channels, vec!["vip:*".to_string()]);
}

#[tokio::test]
async fn token_needs_only_the_secret_and_the_server_accepts_what_it_mints() {
    // No API key anywhere: minting needs the secret only.
    let (ok, out, err) = run(
        &["token", "--sub", "alice"],
        &[("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET)],
    );
    assert!(ok, "token refused without an API key: {err}");
    let minted = out.trim().to_string();
    let (mut child, addr, _logs) = spawn(
        &[
            ("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET),
            ("SWITCHBOARD_API_KEY", API_KEY),
        ],
        &[],
    );
    let c = Client::connect(addr, &minted).await;
    assert_eq!(c.welcome["user"], "alice");
    signal(&child, "-TERM");
    wait_exit(&mut child, Duration::from_secs(10));

    // A config file with an audience and issuer (and still no API key): the
    // token carries them, so a server checking them accepts it.
    let dir = tempfile::tempdir().expect("dir");
    let f = dir.path().join("auth.toml");
    std::fs::write(
        &f,
        format!("[auth]\nhmac_secret = \"{SECRET}\"\naudience = \"app\"\nissuer = \"me\"\n"),
    )
    .expect("write");
    let path = f.to_str().expect("utf8");
    let (ok, out, err) = run(&["token", "--sub", "bob", "--config", path], &[]);
    assert!(ok, "{err}");
    let cfg = switchboard_server::config::AuthConfig {
        hmac_secret: SECRET.into(),
        audience: "app".into(),
        issuer: "me".into(),
        ..Default::default()
    };
    let v = switchboard_server::auth::Verifier::from_config(&cfg).expect("verifier");
    let claims = v
        .verify(&switchboard_server::auth::Token::new(out.trim()))
        .expect("valid for the configured audience and issuer");
    assert_eq!(claims.sub, "bob");

    // Without a secret it says which key is missing; a short one is refused.
    let (ok, _, err) = run(&["token", "--sub", "alice"], &[]);
    assert!(!ok && err.contains("auth.hmac_secret"), "{err}");
    let (ok, _, err) = run(
        &["token", "--sub", "alice"],
        &[("SWITCHBOARD_AUTH_HMAC_SECRET", "short")],
    );
    assert!(!ok && err.contains("16 bytes"), "{err}");
}

#[tokio::test]
async fn no_token_reaches_the_logs_at_any_level() {
    let (mut child, addr, logs) = spawn(
        &[
            ("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET),
            ("SWITCHBOARD_API_KEY", API_KEY),
            ("RUST_LOG", "trace"),
        ],
        &[],
    );
    let good = token("alice", 600, &[]);
    let expired = token("alice", -600, &[]);
    let forged = format!("{}x", &good[..good.len() - 1]);
    let mut c = Client::connect(addr, &good).await;
    c.send(serde_json::json!({"op": "refresh", "token": good, "id": 1}))
        .await;
    c.recv().await;
    for t in [&expired, &forged, &good] {
        http(addr, "GET", &format!("/ws?token={t}"), &[], None).await;
        raw_http(addr, &upgrade_request(addr, &format!("/ws?token={t}"), &[])).await;
        raw_http(
            addr,
            &upgrade_request(addr, "/ws", &[("Authorization", &format!("Bearer {t}"))]),
        )
        .await;
        raw_http(
            addr,
            &upgrade_request(addr, "/ws", &[("Cookie", &format!("sb_token={t}"))]),
        )
        .await;
    }
    drop(c);
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).is_some());
    let logs = logs.join().expect("logs");
    assert!(logs.len() > 1000, "trace logs were captured");
    for (what, t) in [("valid", &good), ("expired", &expired), ("forged", &forged)] {
        // Any third of a token (its signature included) is enough to leak it.
        let sig = t.rsplit('.').next().unwrap_or(t);
        assert!(
            !logs.contains(sig),
            "the {what} token's signature is in the logs"
        );
        assert!(
            !logs.contains(t.as_str()),
            "the {what} token is in the logs"
        );
    }
}

#[tokio::test]
async fn an_expired_connection_is_closed_1008_unless_refreshed() {
    let (mut child, addr, _logs) = spawn(
        &[
            ("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET),
            ("SWITCHBOARD_API_KEY", API_KEY),
            ("SWITCHBOARD_AUTH_EXPIRE_CONNECTIONS", "true"),
            ("SWITCHBOARD_AUTH_LEEWAY", "0s"),
        ],
        &[],
    );
    // exp in 2 s (whole seconds, so between 1 and 2 s from now)
    let mut lapsing = Client::connect(addr, &token("alice", 2, &[])).await;
    let mut refreshed = Client::connect(addr, &token("bob", 2, &[])).await;
    let r = refreshed
        .call(serde_json::json!({"op": "refresh", "token": token("bob", 600, &[])}))
        .await;
    assert_eq!(r["ok"], true);
    let started = std::time::Instant::now();
    assert_eq!(lapsing.close_code().await, Some(1008));
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(refreshed.quiet_for(Duration::from_millis(1500)).await);
    assert_eq!(
        refreshed.call(serde_json::json!({"op": "ping"})).await["type"],
        "pong"
    );
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(10)).is_some());
}
