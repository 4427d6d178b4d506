//! `[history] store = "postgres"` through the real binary, against a
//! PostgreSQL of the test's own: acknowledged publications survive a crash
//! of PostgreSQL (`pg_ctl stop -m immediate`) during publishing, once each;
//! the node is not ready while it is down and recovers by itself; a
//! subscriber recovers with `since` across a gateway restart; expired
//! publications leave the database without a reader; `check-config`
//! reports the database and its migrations.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::proc::KillOnDrop;
use common::*;
use serde_json::json;
use switchboard_postgres::testing::PgServer;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

fn start(config: &Path) -> (KillOnDrop, SocketAddr) {
    common::proc::serve_file(config, SECRET, API_KEY)
}

/// A config in a fresh temp dir: memory broker, history in `url`, a `chat`
/// namespace keeping `size` publications for `ttl`.
fn config(url: &str, size: usize, ttl: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("switchboard.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\n\n[history]\nstore = \"postgres\"\npostgres_url = \"{url}\"\n\
             postgres_pool_size = 4\n\n[[namespaces]]\nname = \"chat\"\npublish = true\n\
             history_size = {size}\nhistory_ttl = \"{ttl}\"\n"
        ),
    )
    .expect("config");
    (dir, path)
}

async fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    try_http(addr, "GET", path, &[], None)
        .await
        .map(|r| r.status)
}

async fn wait_status(addr: SocketAddr, path: &str, want: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(addr, path).await != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{what}: {path} never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `Some((offset, epoch))` when acknowledged; `Err(status)` otherwise.
async fn publish(addr: SocketAddr, channel: &str, seq: u64) -> Result<(u64, String), u16> {
    let body = json!({"channel": channel, "data": {"seq": seq}}).to_string();
    let r = try_http(
        addr,
        "POST",
        "/api/publish",
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        Some(&body),
    )
    .await
    .ok_or(0u16)?;
    if r.status != 200 {
        return Err(r.status);
    }
    let v = r.json();
    Ok((
        v["offset"].as_u64().expect("offset"),
        v["epoch"].as_str().expect("epoch").to_string(),
    ))
}

/// (offset, seq) of every stored publication of `channel`, by offset.
async fn stored(pg: &PgServer, url: &str, channel: &str) -> Vec<(u64, u64)> {
    let db = pg.client_to(url).await;
    db.query(
        "SELECT off, data FROM sb_publications WHERE channel = $1 ORDER BY off",
        &[&channel],
    )
    .await
    .expect("query")
    .into_iter()
    .map(|row| {
        let off: i64 = row.get(0);
        let data: Vec<u8> = row.get(1);
        let v: serde_json::Value = serde_json::from_slice(&data).expect("json");
        (off as u64, v["seq"].as_u64().expect("seq"))
    })
    .collect()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking step")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publications_survive_a_postgres_crash() {
    let pg = Arc::new(blocking(PgServer::start).await);
    let url = pg.database("crash").await;
    let (_dir, cfg) = config(&url, 1_000_000, "1h");
    let (_server, addr) = start(&cfg);
    wait_status(addr, "/ready", 200, "start").await;

    let stop = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4u64)
        .map(|p| {
            let (stop, restarted) = (stop.clone(), restarted.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let (mut refused, mut after_restart) = (0, 0);
                let mut seq = p * 1_000_000;
                while !stop.load(Ordering::Acquire) {
                    seq += 1;
                    match publish(addr, "chat:crash", seq).await {
                        Ok((offset, epoch)) => {
                            acked.push((offset, epoch, seq));
                            if restarted.load(Ordering::Acquire) {
                                after_restart += 1;
                            }
                        }
                        Err(status) => {
                            assert_eq!(status, 503, "a refused publish is a 503");
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (acked, refused, after_restart)
            })
        })
        .collect();

    // Publishing runs a while, PostgreSQL dies hard mid-stream.
    tokio::time::sleep(Duration::from_millis(300 + fastrand::u64(..500))).await;
    let p = pg.clone();
    blocking(move || p.stop_immediate()).await;
    wait_status(addr, "/ready", 503, "postgres down").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = pg.clone();
    blocking(move || p.start_again()).await;
    wait_status(addr, "/ready", 200, "postgres back").await;
    restarted.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Release);

    let (mut acked, mut refused, mut after) = (Vec::new(), 0, 0);
    for p in publishers {
        let (a, r, n) = p.await.expect("publisher");
        acked.extend(a);
        refused += r;
        after += n;
    }
    assert!(refused > 0, "publishes during the outage were refused");
    assert!(after > 0, "publishing went on after postgres came back");
    let epochs: std::collections::HashSet<&str> =
        acked.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(epochs.len(), 1, "one epoch throughout");

    let rows = stored(&pg, &url, "chat:crash").await;
    let offsets: Vec<u64> = rows.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=rows.len() as u64).collect::<Vec<_>>(),
        "offsets without a gap"
    );
    let mut seqs: Vec<u64> = rows.iter().map(|(_, s)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), rows.len(), "no publication stored twice");
    let by_offset: std::collections::HashMap<u64, u64> = rows.into_iter().collect();
    for (offset, _, seq) in &acked {
        assert_eq!(
            by_offset.get(offset),
            Some(seq),
            "acknowledged publication {seq} at offset {offset} is stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_recovers_with_since_across_a_gateway_restart() {
    let pg = blocking(PgServer::start).await;
    let url = pg.database("restart").await;
    let (_dir, cfg) = config(&url, 100, "1h");
    let (server, addr) = start(&cfg);
    wait_status(addr, "/ready", 200, "start").await;
    let mut client = Client::connect(addr, &token("alice", 600, &[])).await;
    let reply = client.subscribe("chat:room").await;
    assert_eq!(reply["offset"], 0, "{reply}");
    for seq in 1..=3 {
        publish(addr, "chat:room", seq).await.expect("publish");
    }
    let mut last = None;
    while last.as_ref().map(|(o, _)| *o) != Some(3) {
        let p = client.recv_type("pub").await;
        last = Some((
            p["offset"].as_u64().expect("offset"),
            p["epoch"].as_str().expect("epoch").to_string(),
        ));
    }
    let (offset, epoch) = last.expect("position");
    drop(client);

    // The gateway dies; a new one serves the same database.
    drop(server);
    let (_server, addr) = start(&cfg);
    wait_status(addr, "/ready", 200, "restart").await;
    for seq in 4..=8 {
        let (o, e) = publish(addr, "chat:room", seq).await.expect("publish");
        assert_eq!(e, epoch, "the epoch survives the restart");
        assert_eq!(o, seq);
    }
    let mut client = Client::connect(addr, &token("alice", 600, &[])).await;
    let reply = client
        .call(json!({"op": "subscribe", "channel": "chat:room",
                     "since": {"offset": offset, "epoch": epoch}}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let got: Vec<u64> = reply["result"]["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["data"]["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(got, vec![4, 5, 6, 7, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_publications_leave_postgres_without_a_reader() {
    let pg = blocking(PgServer::start).await;
    let url = pg.database("ttl").await;
    let (_dir, cfg) = config(&url, 100, "1s");
    let (_server, addr) = start(&cfg);
    wait_status(addr, "/ready", 200, "start").await;
    for seq in 1..=5 {
        publish(addr, "chat:short", seq).await.expect("publish");
    }
    assert_eq!(stored(&pg, &url, "chat:short").await.len(), 5);
    // Nothing reads the channel: the node's sweep alone removes them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stored(&pg, &url, "chat:short").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "expired publications still stored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn check_config(path: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .env_clear()
        .env("SWITCHBOARD_AUTH_HMAC_SECRET", SECRET)
        .env("SWITCHBOARD_API_KEY", API_KEY)
        .output()
        .expect("check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_the_database_and_its_migrations() {
    let pg = blocking(PgServer::start).await;
    pg.database("check").await;
    // trust auth takes any password: this one must never be printed.
    let url = format!(
        "postgres://postgres:hunter2secret@127.0.0.1:{}/check",
        pg.port()
    );
    let (_dir, cfg) = config(&url, 100, "1h");
    let c = cfg.clone();
    let (ok, text) = blocking(move || check_config(&c)).await;
    assert!(ok, "{text}");
    assert!(
        text.contains("pending migrations")
            && text.contains("1 history")
            && text.contains("2 cursors"),
        "{text}"
    );
    assert!(!text.contains("hunter2secret"), "password printed: {text}");

    let (server, addr) = start(&cfg);
    wait_status(addr, "/ready", 200, "migrated").await;
    drop(server);
    let c = cfg.clone();
    let (ok, text) = blocking(move || check_config(&c)).await;
    assert!(ok, "{text}");
    assert!(
        text.contains("schema version 2") && !text.contains("pending"),
        "{text}"
    );

    // Nothing listens there: a clear error, not a hang.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let (_dir2, down) = config(
        &format!("postgres://postgres:hunter2secret@127.0.0.1:{port}/check"),
        100,
        "1h",
    );
    let (ok, text) = blocking(move || check_config(&down)).await;
    assert!(!ok, "{text}");
    assert!(text.contains("cannot reach"), "{text}");
    assert!(!text.contains("hunter2secret"), "password printed: {text}");
}
