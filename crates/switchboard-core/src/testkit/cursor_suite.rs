//! The [`CursorStore`] contract, for any implementation. Each check takes a
//! fresh store from the factory and uses channels of its own (with a random
//! part, so a shared backend such as Redis can serve repeated runs).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::ChannelName;

use crate::cursor::{Cursor, CursorLimits, CursorStore};

fn channel(check: &str) -> ChannelName {
    ChannelName::parse(&format!("user:cursor-{check}-{:08x}", fastrand::u32(..)))
        .expect("valid channel name")
}

fn at(epoch: &str, offset: u64) -> Cursor {
    Cursor {
        epoch: Arc::from(epoch),
        offset,
    }
}

/// The limits the checks use unless they say otherwise.
pub const LIMITS: CursorLimits = CursorLimits {
    max_devices: 8,
    ttl: Duration::from_secs(600),
};

/// Runs every check, each on a store from `make`.
pub async fn cursor_conformance<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn CursorStore>>,
{
    cursors_only_move_forward(&*make().await).await;
    another_epoch_replaces_the_cursor(&*make().await).await;
    devices_and_channels_are_independent(&*make().await).await;
    devices_past_the_cap_forget_the_least_recent(&*make().await).await;
    cursors_expire_after_their_ttl(&*make().await).await;
    concurrent_acks_never_move_a_cursor_back(make().await).await;
}

/// An older offset leaves the cursor where it is.
pub async fn cursors_only_move_forward(store: &dyn CursorStore) {
    let ch = channel("forward");
    assert_eq!(store.get(&ch, "d1").await.expect("get"), None);
    assert_eq!(
        store
            .advance(&ch, "d1", at("e", 5), LIMITS)
            .await
            .expect("advance"),
        at("e", 5)
    );
    assert_eq!(
        store
            .advance(&ch, "d1", at("e", 3), LIMITS)
            .await
            .expect("advance"),
        at("e", 5),
        "an older ack does not move it back"
    );
    assert_eq!(store.get(&ch, "d1").await.expect("get"), Some(at("e", 5)));
    assert_eq!(
        store
            .advance(&ch, "d1", at("e", 9), LIMITS)
            .await
            .expect("advance"),
        at("e", 9)
    );
    assert_eq!(store.get(&ch, "d1").await.expect("get"), Some(at("e", 9)));
}

/// A cursor of another epoch names nothing in the new one: it is replaced.
pub async fn another_epoch_replaces_the_cursor(store: &dyn CursorStore) {
    let ch = channel("epoch");
    store
        .advance(&ch, "d", at("old", 40), LIMITS)
        .await
        .expect("advance");
    assert_eq!(
        store
            .advance(&ch, "d", at("new", 2), LIMITS)
            .await
            .expect("advance"),
        at("new", 2)
    );
    assert_eq!(store.get(&ch, "d").await.expect("get"), Some(at("new", 2)));
}

/// Devices of one channel, and channels, do not share cursors.
pub async fn devices_and_channels_are_independent(store: &dyn CursorStore) {
    let (a, b) = (channel("indep-a"), channel("indep-b"));
    store
        .advance(&a, "phone", at("e", 3), LIMITS)
        .await
        .expect("advance");
    store
        .advance(&a, "laptop", at("e", 7), LIMITS)
        .await
        .expect("advance");
    store
        .advance(&b, "phone", at("f", 1), LIMITS)
        .await
        .expect("advance");
    let mut devices = store.devices(&a).await.expect("devices");
    devices.sort_by(|x, y| x.device.cmp(&y.device));
    let listed: Vec<(String, Cursor)> = devices
        .into_iter()
        .map(|d| (d.device.to_string(), d.cursor))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("laptop".to_string(), at("e", 7)),
            ("phone".to_string(), at("e", 3))
        ]
    );
    assert_eq!(store.get(&b, "phone").await.expect("get"), Some(at("f", 1)));
    assert_eq!(store.get(&b, "laptop").await.expect("get"), None);
    assert!(
        store
            .devices(&channel("none"))
            .await
            .expect("devices")
            .is_empty()
    );
}

/// At most `max_devices` cursors per channel; the newest is always kept.
pub async fn devices_past_the_cap_forget_the_least_recent(store: &dyn CursorStore) {
    let ch = channel("cap");
    let limits = CursorLimits {
        max_devices: 3,
        ..LIMITS
    };
    for i in 0..6u64 {
        store
            .advance(&ch, &format!("d{i}"), at("e", i + 1), limits)
            .await
            .expect("advance");
        // Distinct advance times, for stores that order by a clock.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let devices = store.devices(&ch).await.expect("devices");
    assert!(
        devices.len() <= 3,
        "{} cursors kept past the cap",
        devices.len()
    );
    assert_eq!(store.get(&ch, "d5").await.expect("get"), Some(at("e", 6)));
    assert_eq!(
        store.get(&ch, "d0").await.expect("get"),
        None,
        "the least recently advanced device is forgotten"
    );
}

/// A cursor not advanced for its ttl is gone (with or without a sweep).
pub async fn cursors_expire_after_their_ttl(store: &dyn CursorStore) {
    let ch = channel("ttl");
    let limits = CursorLimits {
        ttl: Duration::from_millis(300),
        ..LIMITS
    };
    store
        .advance(&ch, "d", at("e", 1), limits)
        .await
        .expect("advance");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        store.sweep(1 << 20);
        if store.get(&ch, "d").await.expect("get").is_none()
            && store.devices(&ch).await.expect("devices").is_empty()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cursor outlived its ttl"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Several tasks ack shuffled offsets for several devices at once: each
/// device ends at the highest offset acked, every advance answers at least
/// what it asked, and what a task reads never goes back.
pub async fn concurrent_acks_never_move_a_cursor_back(store: Arc<dyn CursorStore>) {
    const TASKS: usize = 8;
    const DEVICES: usize = 3;
    const OFFSETS: u64 = 60;
    let ch = channel("concurrent");
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, ch) = (store.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut offsets: Vec<u64> = (1..=OFFSETS).collect();
            fastrand::shuffle(&mut offsets);
            let mut seen = [0u64; DEVICES];
            let mut acked = [0u64; DEVICES];
            for (i, offset) in offsets.into_iter().enumerate() {
                let d = (t + i) % DEVICES;
                let device = format!("dev{d}");
                acked[d] = acked[d].max(offset);
                let now = store
                    .advance(&ch, &device, at("e", offset), LIMITS)
                    .await
                    .expect("advance");
                assert_eq!(&*now.epoch, "e");
                assert!(
                    now.offset >= offset,
                    "advance answered less than it was told"
                );
                let read = store.get(&ch, &device).await.expect("get").expect("cursor");
                assert!(
                    read.offset >= seen[d],
                    "device {device} went back from {} to {}",
                    seen[d],
                    read.offset
                );
                seen[d] = read.offset;
            }
            acked
        }));
    }
    let mut highest = [0u64; DEVICES];
    for t in tasks {
        let acked = t.await.expect("task");
        for d in 0..DEVICES {
            highest[d] = highest[d].max(acked[d]);
        }
    }
    for (d, &offset) in highest.iter().enumerate() {
        assert_eq!(
            store.get(&ch, &format!("dev{d}")).await.expect("get"),
            Some(at("e", offset)),
            "every device ends at the highest ack"
        );
    }
}
