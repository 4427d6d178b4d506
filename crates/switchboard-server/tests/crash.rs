//! Durability: every publication the API acknowledged before a SIGKILL is in
//! the file history after a restart, in order, with no gap or duplicate.
//! `scripts/crash-loop N` runs this test N times.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::proc::KillOnDrop;
use common::*;

fn start(config: &std::path::Path) -> (KillOnDrop, SocketAddr) {
    common::proc::serve_file(config, SECRET, API_KEY)
}

async fn publish(addr: SocketAddr, seq: u64) -> Option<(u64, String)> {
    let body = format!(r#"{{"channel":"chat:crash","data":{{"seq":{seq}}}}}"#);
    let r = try_http(
        addr,
        "POST",
        "/api/publish",
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        Some(&body),
    )
    .await?;
    if r.status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    Some((v["offset"].as_u64()?, v["epoch"].as_str()?.to_string()))
}

/// A fresh directory with a config for a file history and a `chat` namespace.
fn file_history_config(
    kind: &str,
    history_size: usize,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "sb-{kind}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\n\n[history]\nstore = \"file\"\npath = \"{}\"\nsync = \"always\"\n\n\
             [[namespaces]]\nname = \"chat\"\npublish = true\nhistory_size = {history_size}\nhistory_ttl = \"1h\"\n",
            dir.join("history.db").display()
        ),
    )
    .expect("config");
    (dir, config)
}

#[tokio::test]
async fn acknowledged_publications_survive_sigkill() {
    let (dir, config) = file_history_config("crash", 1_000_000);
    let (mut child, addr) = start(&config);
    // Publish from four concurrent publishers until a random moment, then SIGKILL.
    let kill_after = Duration::from_millis(300 + fastrand::u64(..700));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..4u64 {
        let stop = stop.clone();
        publishers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut seq = p * 1_000_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                match publish(addr, seq).await {
                    Some((offset, epoch)) => acked.push((offset, epoch, seq)),
                    None => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(kill_after).await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.expect("publisher"));
    }
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the kill"
    );
    let (mut child, addr) = start(&config);
    let r = http(
        addr,
        "GET",
        "/api/history/chat:crash",
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        None,
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r.status, 200, "{}", r.body);
    let h = r.json();
    let stored: Vec<(u64, u64)> = h["publications"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| {
            (
                p["offset"].as_u64().expect("offset"),
                p["data"]["seq"].as_u64().expect("seq"),
            )
        })
        .collect();
    // Offsets 1..=n with no gap or duplicate.
    for (i, (offset, _)) in stored.iter().enumerate() {
        assert_eq!(*offset, i as u64 + 1, "gap or duplicate at {i}");
    }
    let epoch = h["epoch"].as_str().expect("epoch");
    for (offset, e, seq) in &acked {
        assert_eq!(e, epoch, "the epoch changed across the restart");
        let found = stored.get((*offset - 1) as usize);
        assert_eq!(
            found,
            Some(&(*offset, *seq)),
            "acknowledged offset {offset} lost"
        );
    }
    eprintln!(
        "crash test: {} acknowledged, {} stored, killed after {kill_after:?}",
        acked.len(),
        stored.len()
    );
}

#[tokio::test]
async fn a_restart_keeps_offsets_epochs_and_data() {
    let (dir, config) = file_history_config("restart", 100);
    let (mut child, addr) = start(&config);
    let mut epoch = String::new();
    for seq in 1..=3 {
        let (offset, e) = publish(addr, seq).await.expect("published");
        assert_eq!(offset, seq);
        epoch = e;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let (mut child, addr) = start(&config);
    let mut c = Client::connect(addr, &token("alice", 600, &[])).await;
    let r = c
        .call(
            serde_json::json!({"op": "subscribe", "channel": "chat:crash",
            "since": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    let (offset, e) = publish(addr, 4).await.expect("published");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r["result"]["recovered"], true, "{r}");
    let seqs: Vec<u64> = r["result"]["publications"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["data"]["seq"].as_u64())
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    assert_eq!((offset, e), (4, epoch));
}
