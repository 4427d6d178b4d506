//! The inbox (PROTOCOL §10), black box: per-device cursors through the
//! `device` upgrade parameter and the `ack` op, subscribe-without-`since`
//! resuming from the cursor, the welcome's `inbox` object, `GET
//! /api/inbox/{user}`; across a SIGKILL of the node (file and postgres
//! stores), across
//! nodes and a SIGKILL with Redis, and what an epoch change does.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::proc::{ServerProcess, base_config};
use common::*;
use serde_json::{Value, json};
use switchboard_postgres::testing::PgServer;
use switchboard_redis::testing::RedisServer;
use switchboard_server::config::{Config, Dur, NamespaceConfig};

const INBOX: &str = "user:alice";

fn inbox_config() -> Config {
    let mut c = config();
    c.namespaces.retain(|n| n.name != "user");
    c.namespaces.push(NamespaceConfig {
        name: "user".into(),
        history_size: 200,
        history_ttl: Dur::secs(600),
        inbox: true,
        ..Default::default()
    });
    c
}

/// The TOML of a node with an inbox; `more` is appended (sections).
fn inbox_toml(more: &str) -> String {
    format!(
        "{}\n[[namespaces]]\nname = \"user\"\nhistory_size = 200\nhistory_ttl = \"10m\"\ninbox = true\n{more}",
        base_config()
    )
}

/// A connection of alice's `device` (the token is the query's first part).
async fn device(addr: SocketAddr, name: &str) -> Client {
    Client::connect(
        addr,
        &format!("{}&device={name}", token("alice", 3600, &[])),
    )
    .await
}

async fn api(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
    http(
        addr,
        method,
        path,
        &[("Authorization", &format!("Bearer {API_KEY}"))],
        body,
    )
    .await
}

/// Publishes `seq` to alice's inbox; panics unless acknowledged.
async fn publish(addr: SocketAddr, seq: u64) -> Value {
    let body = json!({"channel": INBOX, "data": {"seq": seq}}).to_string();
    let r = api(addr, "POST", "/api/publish", Some(&body)).await;
    assert_eq!(r.status, 200, "publish: {}", r.body);
    r.json()
}

async fn ack(c: &mut Client, offset: u64) -> Value {
    c.call(json!({"op": "ack", "channel": INBOX, "offset": offset}))
        .await
}

/// Reads `n` publications of the inbox as they arrive, acking each one
/// (without an id: no reply), then confirms the last with a reply.
async fn read_and_ack_each(c: &mut Client, n: usize) -> u64 {
    let mut last = 0;
    for _ in 0..n {
        let p = c.recv_type("pub").await;
        assert_eq!(p["channel"], INBOX);
        let offset = p["offset"].as_u64().expect("offset");
        assert!(offset > last, "in order");
        last = offset;
        c.send(json!({"op": "ack", "channel": INBOX, "offset": offset}))
            .await;
    }
    let r = ack(c, last).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"]["acked"], last);
    last
}

/// Subscribes to the inbox without `since`; returns the reply's result.
async fn resume(c: &mut Client) -> Value {
    c.subscribe(INBOX).await
}

fn seqs(result: &Value) -> Vec<u64> {
    result["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["data"]["seq"].as_u64().expect("seq"))
        .collect()
}

fn offsets(result: &Value) -> Vec<u64> {
    result["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect()
}

fn device_row<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["device"] == name)
        .unwrap_or_else(|| panic!("device {name} in {report}"))
}

/// The scenario every store runs: `laptop` acks publication 1 and goes
/// away; 50 more arrive while `phone` acks each; then the laptop comes
/// back and gets exactly the 50, in order, and the phone gets none.
/// `before_reconnect` runs between the publications and the reconnects
/// (a kill and restart); it returns the address to reconnect to.
async fn two_devices<F, Fut>(addr: SocketAddr, before_reconnect: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = SocketAddr>,
{
    let mut laptop = device(addr, "laptop").await;
    let mut phone = device(addr, "phone").await;
    publish(addr, 0).await;
    assert_eq!(read_and_ack_each(&mut laptop, 1).await, 1);
    assert_eq!(read_and_ack_each(&mut phone, 1).await, 1);
    drop(laptop);
    for seq in 1..=50 {
        publish(addr, seq).await;
    }
    assert_eq!(read_and_ack_each(&mut phone, 50).await, 51);
    drop(phone);

    let addr = before_reconnect().await;
    let mut laptop = device(addr, "laptop").await;
    let inbox = &laptop.welcome["inbox"];
    assert_eq!(inbox["channel"], INBOX, "{}", laptop.welcome);
    assert_eq!(inbox["offset"], 51);
    assert_eq!(inbox["acked"], 1);
    assert_eq!(inbox["unread"], 50);
    let got = resume(&mut laptop).await;
    assert_eq!(got["recovered"], true, "{got}");
    assert_eq!(
        seqs(&got),
        (1..=50).collect::<Vec<_>>(),
        "exactly the 50, in order"
    );
    assert_eq!(offsets(&got), (2..=51).collect::<Vec<_>>());

    let mut phone = device(addr, "phone").await;
    assert_eq!(phone.welcome["inbox"]["acked"], 51);
    assert_eq!(phone.welcome["inbox"]["unread"], 0);
    let got = resume(&mut phone).await;
    assert_eq!(got["recovered"], true);
    assert!(seqs(&got).is_empty(), "the phone acked everything: {got}");

    let report = api(addr, "GET", "/api/inbox/alice", None).await;
    assert_eq!(report.status, 200, "{}", report.body);
    let report = report.json();
    assert_eq!(report["offset"], 51);
    assert_eq!(device_row(&report, "laptop")["acked"], 1);
    assert_eq!(device_row(&report, "laptop")["unread"], 50);
    assert_eq!(device_row(&report, "phone")["acked"], 51);
    assert_eq!(device_row(&report, "phone")["unread"], 0);

    // Once the laptop acks, it is even.
    assert_eq!(ack(&mut laptop, 51).await["result"]["acked"], 51);
    let report = api(addr, "GET", "/api/inbox/alice", None).await.json();
    assert_eq!(device_row(&report, "laptop")["unread"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_gets_exactly_what_it_did_not_ack() {
    let server = TestServer::start(inbox_config()).await;
    let addr = server.addr;
    two_devices(addr, || async move { addr }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_only_move_forward_and_bad_ones_are_refused() {
    let server = TestServer::start(inbox_config()).await;
    let addr = server.addr;
    let mut c = device(addr, "tablet").await;
    assert_eq!(c.welcome["inbox"]["offset"], 0);
    assert_eq!(c.welcome["inbox"]["acked"], 0);
    assert_eq!(c.welcome["inbox"]["unread"], 0);
    for seq in 1..=5 {
        publish(addr, seq).await;
    }
    assert_eq!(ack(&mut c, 4).await["result"]["acked"], 4);
    assert_eq!(
        ack(&mut c, 2).await["result"]["acked"],
        4,
        "an older ack leaves the cursor"
    );
    let beyond = ack(&mut c, 6).await;
    assert_eq!(beyond["ok"], false);
    assert_eq!(beyond["error"]["code"], "bad_request", "{beyond}");
    let other = c
        .call(json!({"op": "ack", "channel": "user:bob", "offset": 1}))
        .await;
    assert_eq!(other["error"]["code"], "forbidden", "{other}");
    let not_inbox = c
        .call(json!({"op": "ack", "channel": "chat:a", "offset": 1}))
        .await;
    assert_eq!(not_inbox["error"]["code"], "bad_request", "{not_inbox}");
    let negative = c
        .call(json!({"op": "ack", "channel": INBOX, "offset": -1}))
        .await;
    assert_eq!(negative["error"]["code"], "bad_request", "{negative}");

    // No device: no cursor, no inbox object, and an ack says why.
    let mut plain = Client::connect(addr, &token("alice", 3600, &[])).await;
    assert!(plain.welcome.get("inbox").is_none(), "{}", plain.welcome);
    let r = ack(&mut plain, 1).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");

    // A device that never acked starts at the oldest retained publication.
    let mut fresh = device(addr, "fresh").await;
    assert_eq!(fresh.welcome["inbox"]["unread"], 5);
    let got = resume(&mut fresh).await;
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
    assert_eq!(got["recovered"], true);

    // A subscribe with `since` is the ordinary recovery, cursor or not.
    let got = fresh
        .call(json!({"op": "subscribe", "channel": INBOX,
            "since": {"offset": 3, "epoch": got["epoch"]}}))
        .await;
    assert_eq!(seqs(&got["result"]), vec![4, 5]);

    // Bad device ids are refused before the upgrade.
    for bad in ["a.b", "", "x%20y"] {
        let path = format!("/ws?token={}&device={bad}", token("alice", 3600, &[]));
        let r = raw_http(addr, &upgrade_request(addr, &path, &[])).await;
        assert_eq!(r.status, 400, "device `{bad}`: {}", r.body);
        assert_eq!(r.error_code(), "bad_request");
    }
    let long = "d".repeat(65);
    let path = format!("/ws?token={}&device={long}", token("alice", 3600, &[]));
    let r = raw_http(addr, &upgrade_request(addr, &path, &[])).await;
    assert_eq!(r.status, 400);

    let none = api(addr, "GET", "/api/inbox/nobody", None).await.json();
    assert_eq!(none["devices"], json!([]));
    let unauth = http(addr, "GET", "/api/inbox/alice", &[], None).await;
    assert_eq!(unauth.status, 401);
}

/// A device on server-sent events acks through `POST /sse/ack` with its own
/// token and `?device=`, under the `ack` op's rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_sse_acks_through_post_sse_ack() {
    let server = TestServer::start(inbox_config()).await;
    let addr = server.addr;
    for seq in 0..3 {
        publish(addr, seq).await;
    }
    let alice = format!("Bearer {}", token("alice", 600, &[]));
    let post = |path: &'static str, auth: String, body: &'static str| async move {
        http(addr, "POST", path, &[("Authorization", &auth)], Some(body)).await
    };
    let r = post(
        "/sse/ack?device=tablet",
        alice.clone(),
        r#"{"channel":"user:alice","offset":2}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["acked"], 2);
    // Forward only: an older offset leaves it at 2.
    let r = post(
        "/sse/ack?device=tablet",
        alice.clone(),
        r#"{"channel":"user:alice","offset":1}"#,
    )
    .await;
    assert_eq!(r.json()["acked"], 2, "{}", r.body);
    let report = api(addr, "GET", "/api/inbox/alice", None).await.json();
    assert_eq!(device_row(&report, "tablet")["acked"], 2);
    assert_eq!(device_row(&report, "tablet")["unread"], 1);
    // Refusals, each a status and the contract's error body.
    for (path, auth, body, status, code) in [
        (
            "/sse/ack?device=tablet",
            alice.clone(),
            r#"{"channel":"user:alice","offset":99}"#,
            400,
            "bad_request",
        ),
        (
            "/sse/ack",
            alice.clone(),
            r#"{"channel":"user:alice","offset":1}"#,
            400,
            "bad_request",
        ),
        (
            "/sse/ack?device=tablet",
            alice.clone(),
            r#"{"channel":"user:bob","offset":1}"#,
            403,
            "forbidden",
        ),
        (
            "/sse/ack?device=tablet",
            alice.clone(),
            r#"{"channel":"chat:lobby","offset":1}"#,
            400,
            "bad_request",
        ),
        (
            "/sse/ack?device=tablet",
            alice.clone(),
            r#"{"channel":"user:alice"}"#,
            400,
            "bad_request",
        ),
        (
            "/sse/ack?device=tablet",
            "Bearer nonsense".to_string(),
            r#"{"channel":"user:alice","offset":1}"#,
            401,
            "unauthorized",
        ),
    ] {
        let r = post(path, auth, body).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.body);
        assert_eq!(r.error_code(), code, "{path} {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_inbox_namespace_there_is_no_inbox() {
    let server = TestServer::start(config()).await;
    let mut c = device(server.addr, "phone").await;
    assert!(c.welcome.get("inbox").is_none(), "{}", c.welcome);
    let r = ack(&mut c, 0).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = server.http("GET", "/api/inbox/alice", None).await;
    assert_eq!(r.status, 404, "{}", r.body);
}

/// A node on the file store, killed with SIGKILL between the publications
/// and the reconnects: nothing acknowledged (publication or cursor) is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_loses_no_publication_and_no_cursor() {
    let data = tempfile::tempdir().expect("dir");
    let toml = inbox_toml(&format!(
        "\n[history]\nstore = \"file\"\nsync = \"always\"\npath = \"{}\"\n",
        data.path().join("history.db").display()
    ));
    two_devices_across_a_sigkill(&toml).await;
}

/// The same on the postgres store: publications and cursors are both in
/// PostgreSQL, so a SIGKILLed node's successor knows every device's cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_loses_no_publication_and_no_cursor_on_postgres() {
    let pg = tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("postgres");
    let url = pg.database("inbox").await;
    let toml = inbox_toml(&format!(
        "\n[history]\nstore = \"postgres\"\npostgres_url = \"{url}\"\npostgres_pool_size = 4\n"
    ));
    two_devices_across_a_sigkill(&toml).await;
}

/// [`two_devices`] on a node of `toml`, SIGKILLed between the publications
/// and the reconnects and started again on the same store.
async fn two_devices_across_a_sigkill(toml: &str) {
    let first = ServerProcess::start(toml, &[]);
    let addr = first.addr;
    wait_ready(addr).await;
    let mut slot = Some(first);
    let mut second = None;
    two_devices(addr, || {
        let second = &mut second;
        let first = slot.take();
        async move {
            if let Some(p) = first {
                p.kill();
            }
            let p = ServerProcess::start(toml, &[]);
            let addr = p.addr;
            wait_ready(addr).await;
            *second = Some(p);
            addr
        }
    })
    .await;
}

/// Until `/ready` answers 200 (the store reached its database).
async fn wait_ready(addr: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http(addr, "GET", "/ready", &[], None).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With `sync = "batch"`, a SIGKILL renews every epoch: a cursor of the old
/// epoch names nothing, so the device counts as never having acked and gets
/// every publication the inbox still holds, `recovered: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_epoch_change_a_device_gets_everything_still_held() {
    let data = tempfile::tempdir().expect("dir");
    let toml = inbox_toml(&format!(
        "\n[history]\nstore = \"file\"\nsync = \"batch\"\npath = \"{}\"\n",
        data.path().join("history.db").display()
    ));
    let first = ServerProcess::start(&toml, &[]);
    let mut c = device(first.addr, "phone").await;
    let mut old_epoch = String::new();
    for seq in 1..=3 {
        old_epoch = publish(first.addr, seq).await["epoch"]
            .as_str()
            .expect("epoch")
            .to_string();
    }
    assert_eq!(read_and_ack_each(&mut c, 3).await, 3);
    // Past the batch window, so the publications are on disk.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(c);
    first.kill();

    let second = ServerProcess::start(&toml, &[]);
    let mut c = device(second.addr, "phone").await;
    let inbox = c.welcome["inbox"].clone();
    assert_ne!(inbox["epoch"], old_epoch.as_str(), "a new epoch: {inbox}");
    assert_eq!(inbox["acked"], 0, "the old cursor names nothing: {inbox}");
    let got = resume(&mut c).await;
    assert_eq!(got["recovered"], false, "{got}");
    assert_eq!(got["epoch"], inbox["epoch"]);
    assert_eq!(seqs(&got), vec![1, 2, 3], "everything still held: {got}");
    assert_eq!(inbox["unread"], 3);
    assert_eq!(ack(&mut c, 3).await["result"]["acked"], 3);
    let got = resume(&mut c).await;
    assert_eq!(got["recovered"], true);
    assert!(seqs(&got).is_empty());
}

/// Two nodes on Redis: the devices ack on one node, which is then killed
/// with SIGKILL; they reconnect to the other and find their cursors there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_are_shared_by_nodes_on_redis_and_outlive_a_killed_node() {
    let redis = RedisServer::start();
    let toml = |name: &str| {
        inbox_toml(&format!(
            "\n[broker]\nkind = \"redis\"\nredis_url = \"{}\"\n",
            redis.url()
        ))
        .replacen("[auth]", &format!("node_name = \"{name}\"\n\n[auth]"), 1)
    };
    let one = ServerProcess::start(&toml("n1"), &[]);
    let two = ServerProcess::start(&toml("n2"), &[]);
    let two_addr = two.addr;
    let mut slot = Some(one);
    two_devices(slot.as_ref().expect("n1").addr, || {
        let first = slot.take();
        async move {
            if let Some(p) = first {
                p.kill();
            }
            two_addr
        }
    })
    .await;
    drop(two);
}
