//! Admission under a reconnect storm: when a deploy or a crash sends every
//! client back at once, handshakes beyond what the node can finish in time
//! are refused at once (503, `Retry-After` spread by jitter) instead of
//! queueing until they all time out; and, when configured, one address's
//! handshakes are held to a rate (429). Both answer before any token work.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// `Retry-After` of a storm refusal: 1 s plus up to this many more, drawn
/// per refusal, so the refused do not all come back in the same second.
const RETRY_SPREAD_S: u32 = 4;

/// Shards of the per-address table (fewer collisions on its locks).
const SHARDS: usize = 16;

/// Addresses the per-address table keeps at most; past it, the addresses
/// whose budget is full again (idle ones) are forgotten first.
const MAX_ADDRESSES: usize = 65_536;

/// Why a handshake is refused before any token work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many handshakes in progress: 503, come back after this many seconds.
    Busy { retry_after_s: u32 },
    /// This address is over its handshake rate: 429, after this many seconds.
    AddressRate { retry_after_s: u32 },
}

/// The node's handshake admission.
pub struct Storm {
    pending: Arc<AtomicUsize>,
    max_pending: usize,
    per_address: Option<AddressRate>,
}

/// A connection counted as a handshake in progress until dropped, except
/// while it waits for its client's bytes: the count is the work this node has
/// in hand (accepted connections its tasks have not yet reached, heads read
/// and not yet admitted), not clients that are slow to send (a slow-loris
/// crowd must not refuse everyone else).
pub struct Pending {
    count: Arc<AtomicUsize>,
    counted: bool,
}

impl Pending {
    /// Not counted while it waits for the client.
    pub fn pause(&mut self) {
        if std::mem::replace(&mut self.counted, false) {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Counted again: its head arrived.
    pub fn resume(&mut self) {
        if !std::mem::replace(&mut self.counted, true) {
            self.count.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.pause();
    }
}

impl Storm {
    /// `max_pending`: handshakes in progress past which new ones are refused;
    /// `per_address_per_second`: 0 for no per-address limit.
    pub fn new(max_pending: usize, per_address_per_second: u32) -> Storm {
        Storm {
            pending: Arc::new(AtomicUsize::new(0)),
            max_pending,
            per_address: (per_address_per_second > 0)
                .then(|| AddressRate::new(per_address_per_second)),
        }
    }

    /// Counts an accepted connection as a handshake in progress.
    pub fn enter(&self) -> Pending {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Pending {
            count: self.pending.clone(),
            counted: true,
        }
    }

    /// Handshakes in progress now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Whether one more handshake (already counted by its own [`Pending`],
    /// when it has one) may go on to the token checks.
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<(), Refusal> {
        if self.pending() > self.max_pending {
            return Err(Refusal::Busy {
                retry_after_s: 1 + fastrand::u32(0..=RETRY_SPREAD_S),
            });
        }
        if let (Some(rate), Some(ip)) = (&self.per_address, peer) {
            rate.take(ip, Instant::now())
                .map_err(|retry_after_s| Refusal::AddressRate { retry_after_s })?;
        }
        Ok(())
    }
}

/// A token bucket per address: `per_second`, bursts up to twice that (as the
/// per-client message limit).
struct AddressRate {
    per_second: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl AddressRate {
    fn new(per_second: u32) -> AddressRate {
        AddressRate {
            per_second: f64::from(per_second),
            burst: 2.0 * f64::from(per_second),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Bucket>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => (u128::from(*v6) >> 64) as usize,
        };
        &self.shards[h.wrapping_mul(0x9E37_79B9) % SHARDS]
    }

    /// Takes one handshake from `ip`'s budget, or says in how many whole
    /// seconds it has one again.
    fn take(&self, ip: IpAddr, now: Instant) -> Result<(), u32> {
        let mut map = self.shard(&ip).lock();
        if !map.contains_key(&ip) && map.len() >= MAX_ADDRESSES / SHARDS {
            // Full: forget the addresses whose budget refilled (they would
            // start full anyway); if none did, the oldest half.
            let (per_second, burst) = (self.per_second, self.burst);
            map.retain(|_, b| refill(b, now, per_second, burst) < burst);
            if map.len() >= MAX_ADDRESSES / SHARDS {
                let mut ages: Vec<Instant> = map.values().map(|b| b.at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                map.retain(|_, b| b.at > cut);
            }
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = refill(b, now, self.per_second, self.burst);
        if tokens >= 1.0 {
            *b = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *b = Bucket { tokens, at: now };
            Err(((1.0 - tokens) / self.per_second).ceil().max(1.0) as u32)
        }
    }
}

fn refill(b: &Bucket, now: Instant, per_second: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * per_second).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n))
    }

    #[test]
    fn past_the_pending_bound_a_handshake_is_busy_with_a_jittered_wait() {
        let storm = Storm::new(2, 0);
        let held: Vec<Pending> = (0..3).map(|_| storm.enter()).collect();
        let mut waits = std::collections::HashSet::new();
        for _ in 0..200 {
            match storm.admit(None) {
                Err(Refusal::Busy { retry_after_s }) => {
                    assert!((1..=1 + RETRY_SPREAD_S).contains(&retry_after_s));
                    waits.insert(retry_after_s);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(waits.len() > 1, "the waits are spread: {waits:?}");
        drop(held);
        assert_eq!(storm.pending(), 0);
        assert_eq!(storm.admit(None), Ok(()));
    }

    #[test]
    fn a_handshake_waiting_for_its_client_is_not_counted() {
        let storm = Storm::new(1, 0);
        let mut slow: Vec<Pending> = (0..5).map(|_| storm.enter()).collect();
        for p in &mut slow {
            p.pause();
            p.pause();
        }
        assert_eq!(storm.pending(), 0);
        assert_eq!(storm.admit(None), Ok(()));
        slow[0].resume();
        slow[0].resume();
        assert_eq!(storm.pending(), 1);
        drop(slow);
        assert_eq!(storm.pending(), 0);
    }

    #[test]
    fn an_address_gets_its_burst_then_its_rate() {
        let rate = AddressRate::new(5);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(rate.take(ip(1), t0), Ok(()));
        }
        assert_eq!(rate.take(ip(1), t0), Err(1));
        // Another address has its own budget.
        assert_eq!(rate.take(ip(2), t0), Ok(()));
        // 200 ms at 5 a second: one more.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(rate.take(ip(1), t1), Ok(()));
        assert_eq!(rate.take(ip(1), t1), Err(1));
    }

    #[test]
    fn the_address_table_stays_bounded() {
        let rate = AddressRate::new(1);
        let t0 = Instant::now();
        for n in 0..(MAX_ADDRESSES as u32 * 3) {
            let _ = rate.take(ip(n), t0 + Duration::from_micros(u64::from(n)));
        }
        let kept: usize = rate.shards.iter().map(|s| s.lock().len()).sum();
        assert!(kept <= MAX_ADDRESSES, "{kept} addresses kept");
    }

    #[test]
    fn without_a_per_address_limit_only_the_bound_refuses() {
        let storm = Storm::new(10, 0);
        for _ in 0..1000 {
            assert_eq!(storm.admit(Some(ip(1))), Ok(()));
        }
    }
}
