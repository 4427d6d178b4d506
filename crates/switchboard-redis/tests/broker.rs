//! `RedisBroker` against a real redis-server this test starts itself.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{KEEP, Recorder, channel, history_conformance, publish, read};
use switchboard_core::{BrokerError, HistoryQuery, Retention};
use switchboard_redis::testing::RedisServer;
use switchboard_redis::{ControlMessage, RedisBroker, RedisUrl};

async fn node(server: &RedisServer, name: &str) -> (RedisBroker, Arc<Recorder>) {
    let b = RedisBroker::connect(server.options(name))
        .await
        .expect("connect");
    let r = Recorder::bound(&b);
    (b, r)
}

const SOON: Duration = Duration::from_secs(5);

/// Health turns true only once every lane resubscribed and its probe came back.
async fn healthy_again(b: &RedisBroker) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !b.health().ok {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn history_on_redis_conforms_to_memory_history() {
    let server = RedisServer::start();
    let (b, _) = node(&server, "n1").await;
    history_conformance(&b).await;
}

#[tokio::test]
async fn publications_past_their_ttl_are_trimmed_but_offsets_stay() {
    let server = RedisServer::start();
    let (b, _) = node(&server, "n1").await;
    let ch = channel("ttl");
    let short = Retention {
        size: 10,
        ttl: Duration::from_millis(300),
        max_channels: 0,
    };
    let p = publish(&b, &ch, 2, short).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = b
        .history(&ch, &HistoryQuery::since(0, &p[0].epoch), short)
        .await
        .expect("read");
    assert!(r.publications.is_empty());
    assert!(!r.recovered);
    assert_eq!((r.offset, &*r.epoch), (2, p[0].epoch.as_str()));
}

/// A channel nobody publishes to leaves nothing behind in Redis: its stream
/// expires with its history ttl, its offset and epoch with `meta_ttl`.
#[tokio::test]
async fn an_idle_channel_leaves_no_keys_behind() {
    let server = RedisServer::start();
    let mut options = server.options("n1");
    options.meta_ttl = Duration::from_millis(500);
    let b = RedisBroker::connect(options).await.expect("connect");
    let ch = channel("idle");
    let short = Retention {
        size: 10,
        ttl: Duration::from_millis(300),
        max_channels: 0,
    };
    publish(&b, &ch, 3, short).await;
    let count = || {
        server
            .cli(&["keys", &format!("sb:{{{ch}}}:*")])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    };
    assert_eq!(count(), 2, "stream and meta");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(count(), 0);
    let next = publish(&b, &ch, 1, short).await;
    assert_eq!(next[0].offset, 1, "a new epoch starts at 1");
}

#[tokio::test]
async fn a_channel_whose_meta_is_gone_starts_a_new_epoch_at_offset_one() {
    let server = RedisServer::start();
    let (b, _) = node(&server, "n1").await;
    let ch = channel("lost");
    let before = publish(&b, &ch, 3, KEEP).await;
    server.cli(&["del", &format!("sb:{{{ch}}}:meta")]);
    let after = publish(&b, &ch, 1, KEEP).await;
    assert_eq!(after[0].offset, 1);
    assert_ne!(after[0].epoch, before[0].epoch);
    let r = read(&b, &ch, None, None).await;
    assert_eq!(
        common::offsets(&r),
        vec![1],
        "the old epoch's stream went with it"
    );
    let r = read(&b, &ch, Some((3, &before[0].epoch)), None).await;
    assert!(!r.recovered, "the old epoch cannot be recovered");
}

#[tokio::test]
async fn concurrent_publishers_on_one_channel_get_contiguous_offsets_delivered_in_order() {
    let server = RedisServer::start();
    let (b, rec) = node(&server, "n1").await;
    let b = Arc::new(b);
    let ch = channel("race");
    b.subscribe(&ch).await.expect("subscribe");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (b, ch) = (b.clone(), ch.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..100 {
                    got.push(
                        b.publish(&ch, Bytes::from_static(b"1"), None, KEEP)
                            .await
                            .expect("publish")
                            .offset,
                    );
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(all, (1..=800).collect::<Vec<u64>>());
    assert!(rec.wait(SOON, |r| r.offsets(&ch).len() >= 800).await);
    assert_eq!(
        rec.offsets(&ch),
        (1..=800).collect::<Vec<u64>>(),
        "once each, in order"
    );
}

/// Many callers publishing at once share round trips: the multiplexed
/// connection writes their scripts together, and Redis reads many per read
/// call (counted from /proc). One at a time, each would need its own read.
#[tokio::test]
async fn concurrent_publishes_are_pipelined_on_one_connection() {
    let server = RedisServer::start();
    let (b, _) = node(&server, "n1").await;
    let b = Arc::new(b);
    let channels: Vec<_> = (0..64).map(|_| channel("pipe")).collect();
    let start = std::time::Instant::now();
    let reads_before = server.read_calls();
    let cpu_before = server.cpu_time();
    let tasks: Vec<_> = channels
        .iter()
        .map(|ch| {
            let (b, ch) = (b.clone(), ch.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    b.publish(&ch, Bytes::from_static(b"{\"x\":1}"), None, KEEP)
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let reads = server.read_calls() - reads_before;
    let cpu = server.cpu_time() - cpu_before;
    let n = 64 * 50;
    eprintln!(
        "{n} publications from 64 callers: {:?}, {reads} server reads, redis CPU {:?} ({:.1} us/publication)",
        start.elapsed(),
        cpu,
        cpu.as_secs_f64() * 1e6 / n as f64
    );
    assert!(
        reads < n / 4,
        "{reads} reads for {n} publications: not pipelined"
    );
}

#[tokio::test]
async fn two_nodes_each_receive_every_publication_once() {
    let server = RedisServer::start();
    let (a, ra) = node(&server, "a").await;
    let (b, rb) = node(&server, "b").await;
    let ch = channel("fanout");
    a.subscribe(&ch).await.expect("subscribe");
    b.subscribe(&ch).await.expect("subscribe");
    b.subscribe(&ch)
        .await
        .expect("subscribing twice is harmless");
    for i in 0..50 {
        let from = if i % 2 == 0 { &a } else { &b };
        from.publish(&ch, Bytes::from(format!("{i}")), Some("u".into()), KEEP)
            .await
            .expect("publish");
    }
    let want: Vec<u64> = (1..=50).collect();
    for r in [&ra, &rb] {
        assert!(r.wait(SOON, |r| r.offsets(&ch).len() >= 50).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(r.offsets(&ch), want);
    }
    let p = ra.publications.lock()[7].clone();
    assert_eq!(&p.data[..], b"7");
    assert_eq!(p.from.as_deref(), Some("u"));
    assert!(
        std::str::from_utf8(p.frame())
            .expect("utf8")
            .starts_with(&format!(
                "{{\"type\":\"pub\",\"channel\":\"{ch}\",\"offset\":8,"
            )),
        "each node builds the pub frame"
    );
}

#[tokio::test]
async fn a_publication_right_after_subscribe_returns_is_never_missed() {
    let server = RedisServer::start();
    let (a, ra) = node(&server, "a").await;
    let (b, _) = node(&server, "b").await;
    let mut channels = Vec::new();
    for _ in 0..100 {
        let ch = channel("join");
        a.subscribe(&ch).await.expect("subscribe");
        b.publish(&ch, Bytes::from_static(b"1"), None, KEEP)
            .await
            .expect("publish");
        channels.push(ch);
    }
    assert!(
        ra.wait(SOON, |r| channels.iter().all(|c| r.offsets(c) == [1]))
            .await,
        "every channel's first publication arrived"
    );
}

#[tokio::test]
async fn unsubscribed_channels_stop_arriving() {
    let server = RedisServer::start();
    let (a, ra) = node(&server, "a").await;
    let (keep, gone) = (channel("keep"), channel("gone"));
    a.subscribe(&keep).await.expect("subscribe");
    a.subscribe(&gone).await.expect("subscribe");
    a.unsubscribe(&gone).await.expect("unsubscribe");
    a.publish(&gone, Bytes::from_static(b"1"), None, KEEP)
        .await
        .expect("publish");
    a.publish(&keep, Bytes::from_static(b"1"), None, KEEP)
        .await
        .expect("publish");
    assert!(ra.wait(SOON, |r| r.offsets(&keep) == [1]).await);
    assert!(ra.offsets(&gone).is_empty());
}

#[tokio::test]
async fn many_concurrent_subscribes_are_each_confirmed() {
    let server = RedisServer::start();
    let (a, ra) = node(&server, "a").await;
    let a = Arc::new(a);
    let channels: Vec<_> = (0..300).map(|_| channel("many")).collect();
    let subs = channels.iter().map(|c| a.subscribe(c));
    for r in futures_util::future::join_all(subs).await {
        r.expect("subscribe");
    }
    let clients = server.cli(&["pubsub", "numsub"]);
    assert!(clients.is_empty() || !clients.contains("ERR"));
    for c in &channels {
        a.publish(c, Bytes::from_static(b"1"), None, KEEP)
            .await
            .expect("publish");
    }
    assert!(
        ra.wait(SOON, |r| channels.iter().all(|c| r.offsets(c) == [1]))
            .await
    );
    let numsub = server.cli(&["pubsub", "channels", "sb:{many-*"]);
    assert_eq!(numsub.lines().count(), 300);
}

#[tokio::test]
async fn pushes_and_control_messages_reach_every_node() {
    let server = RedisServer::start();
    let (a, ra) = node(&server, "a").await;
    let (b, rb) = node(&server, "b").await;
    let ch = channel("push");
    a.subscribe(&ch).await.expect("subscribe");
    b.push(&ch, Bytes::from_static(b"{\"type\":\"join\"}"))
        .await
        .expect("push");
    assert!(ra.wait(SOON, |r| r.pushes.lock().len() == 1).await);
    assert_eq!(&ra.pushes.lock()[0].1[..], b"{\"type\":\"join\"}");
    assert!(rb.pushes.lock().is_empty(), "b did not subscribe");
    let kick = ControlMessage::Disconnect {
        user: "bob".into(),
        code: 4000,
        reason: "kicked".into(),
    };
    a.control(kick.clone()).await.expect("control");
    for r in [&ra, &rb] {
        assert!(r.wait(SOON, |r| r.controls.lock().len() == 1).await);
        assert_eq!(r.controls.lock()[0], kick);
    }
}

#[tokio::test]
async fn a_killed_pubsub_connection_is_resubscribed_then_resynced() {
    let server = RedisServer::start();
    let (a, ra) = node(&server, "a").await;
    let channels: Vec<_> = (0..20).map(|_| channel("kill")).collect();
    for c in &channels {
        a.subscribe(c).await.expect("subscribe");
    }
    let killed = server.cli(&["client", "kill", "type", "pubsub"]);
    assert!(
        killed.trim().parse::<u32>().unwrap_or(0) >= 1,
        "killed: {killed}"
    );
    assert!(
        ra.wait(SOON, |r| r.resyncs() >= 1).await,
        "on_resync called"
    );
    healthy_again(&a).await;
    for c in &channels {
        a.publish(c, Bytes::from_static(b"1"), None, KEEP)
            .await
            .expect("publish");
    }
    assert!(
        ra.wait(SOON, |r| channels.iter().all(|c| r.offsets(c) == [1]))
            .await,
        "every channel resubscribed"
    );
    assert!(a.health().ok);
}

/// What a node does on `on_resync`, done by the test: read the channel's tail
/// from history after the last offset it saw. Publishing never stops while
/// the pub/sub connection is killed, and live plus history cover every
/// offset: no hole.
#[tokio::test]
async fn publications_missed_while_resubscribing_are_all_in_history() {
    let server = RedisServer::start();
    let (a, ra) = node(&server, "a").await;
    let a = Arc::new(a);
    let ch = channel("gap");
    a.subscribe(&ch).await.expect("subscribe");
    let keep = Retention {
        size: 10_000,
        ttl: Duration::from_secs(600),
        max_channels: 0,
    };
    let publisher = {
        let (a, ch) = (a.clone(), ch.clone());
        tokio::spawn(async move {
            let mut last = None;
            for _ in 0..300 {
                last = Some(
                    a.publish(&ch, Bytes::from_static(b"1"), None, keep)
                        .await
                        .expect("publish"),
                );
            }
            last.expect("published")
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.cli(&["client", "kill", "type", "pubsub"]);
    let mut last = publisher.await.expect("publisher");
    assert!(
        ra.wait(SOON, |r| r.resyncs() >= 1).await,
        "the kill was noticed"
    );
    // On a loaded machine the 300 may all be published before the kill lands,
    // so the lane's return is shown by a publication made after it arriving
    // live, not by the last of the 300.
    let mut arrived = false;
    for _ in 0..50 {
        last = a
            .publish(&ch, Bytes::from_static(b"1"), None, keep)
            .await
            .expect("publish");
        let want = last.offset;
        if ra
            .wait(Duration::from_millis(200), |r| {
                r.offsets(&ch).contains(&want)
            })
            .await
        {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "publications arrive live again after the kill");
    let live = ra.offsets(&ch);
    let mut seen: Vec<u64> = live.clone();
    let mut contiguous = 0;
    while live.contains(&(contiguous + 1)) {
        contiguous += 1;
    }
    let tail = a
        .history(&ch, &HistoryQuery::since(contiguous, &last.epoch), keep)
        .await
        .expect("history");
    assert!(tail.recovered, "the whole missed range is stored");
    seen.extend(tail.publications.iter().map(|p| p.offset));
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (1..=last.offset).collect::<Vec<u64>>());
    eprintln!(
        "live deliveries: {} of {}; first hole after {contiguous}",
        live.len(),
        last.offset
    );
}

#[tokio::test]
async fn redis_killed_and_restarted_gives_unavailable_then_recovers_by_itself() {
    let mut server = RedisServer::start();
    let (a, ra) = node(&server, "a").await;
    let ch = channel("crash");
    a.subscribe(&ch).await.expect("subscribe");
    let before = publish(&a, &ch, 3, KEEP).await;
    assert!(ra.wait(SOON, |r| r.offsets(&ch).len() == 3).await);
    assert!(a.health().ok);

    server.kill();
    let err = a
        .publish(&ch, Bytes::from_static(b"1"), None, KEEP)
        .await
        .expect_err("redis is down");
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    let err = a
        .subscribe(&channel("new"))
        .await
        .expect_err("redis cannot confirm it");
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.health().ok {
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never went false"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        match a.publish(&ch, Bytes::from_static(b"2"), None, KEEP).await {
            Ok(p) => break p,
            Err(BrokerError::Unavailable(_)) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publish never worked again"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(after.epoch, before[0].epoch, "AOF kept the channel");
    assert_eq!(after.offset, 4, "and every acknowledged offset");
    assert!(
        ra.wait(SOON, |r| r.resyncs() >= 1).await,
        "on_resync after resubscribing"
    );
    healthy_again(&a).await;
    a.publish(&ch, Bytes::from_static(b"3"), None, KEEP)
        .await
        .expect("publish");
    assert!(
        ra.wait(SOON, |r| r.offsets(&ch).contains(&5)).await,
        "delivery through the resubscribed connection"
    );
    assert!(a.health().lag.is_some());
}

#[tokio::test]
async fn a_password_protected_redis_works_and_a_wrong_password_is_unavailable() {
    let server = RedisServer::start_with_password("s3cret");
    let (a, _) = node(&server, "a").await;
    let ch = channel("auth");
    assert_eq!(publish(&a, &ch, 1, KEEP).await[0].offset, 1);
    let mut wrong = server.options("b");
    wrong.url = RedisUrl::Single(format!("redis://:nope@127.0.0.1:{}", server.port()));
    let err = RedisBroker::connect(wrong)
        .await
        .expect_err("wrong password");
    assert!(matches!(err, BrokerError::Unavailable(_)));
}

#[tokio::test]
async fn rediss_with_a_password_works_and_an_untrusted_certificate_is_refused() {
    let server = RedisServer::start_tls("s3cret");
    let (a, ra) = node(&server, "a").await;
    let ch = channel("tls");
    a.subscribe(&ch).await.expect("subscribe over TLS");
    assert_eq!(publish(&a, &ch, 2, KEEP).await[1].offset, 2);
    assert!(ra.wait(SOON, |r| r.offsets(&ch) == [1, 2]).await);
    let mut untrusted = server.options("b");
    untrusted.tls_root_cert = None;
    let err = RedisBroker::connect(untrusted)
        .await
        .expect_err("not the system's CA");
    assert!(matches!(err, BrokerError::Unavailable(_)));
}

#[tokio::test]
async fn an_unreachable_redis_fails_connect_cleanly() {
    let server = RedisServer::start();
    let mut options = server.options("a");
    drop(server);
    options.connect_timeout = Duration::from_millis(300);
    let err = RedisBroker::connect(options)
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, BrokerError::Unavailable(_)));
}
