//! The broker's own health: whether Redis answers, and whether this node's
//! subscriptions still carry messages (its probe comes back). A pub/sub
//! connection can look alive while delivering nothing (the failure that
//! leaves other gateways green and silent), so only a probe that made the
//! round trip counts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use switchboard_core::BrokerHealth;

pub(crate) struct Health {
    started: Instant,
    stall_timeout: Duration,
    /// The last command to Redis succeeded.
    reachable: AtomicBool,
    /// Per subscription lane: when its probe last came back.
    back: Mutex<Vec<Instant>>,
    /// Per lane: its connection dropped and it has not resubscribed yet.
    down: Mutex<Vec<bool>>,
    lag: Mutex<Option<Duration>>,
}

impl Health {
    pub fn new(lanes: usize, stall_timeout: Duration) -> Self {
        let now = Instant::now();
        Health {
            started: now,
            stall_timeout,
            reachable: AtomicBool::new(true),
            back: Mutex::new(vec![now; lanes]),
            down: Mutex::new(vec![false; lanes]),
            lag: Mutex::new(None),
        }
    }

    /// Microseconds since start: the probe's timestamp, read back by this
    /// same process, so no clock is compared across machines.
    pub fn now_micros(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn reachable(&self, ok: bool) {
        self.reachable.store(ok, Ordering::Relaxed);
    }

    /// A lane lost its connection (`true`) or resubscribed everything.
    /// A lost lane means Redis went away for the command connection too:
    /// it counts as reachable again only once a command made it through
    /// after this (the next probe), so `/ready` never turns 200 while the
    /// publish path still reconnects.
    pub fn lane_down(&self, lane: usize, down: bool) {
        if down {
            self.reachable(false);
        }
        if let Some(d) = self.down.lock().get_mut(lane) {
            *d = down;
        }
    }

    pub fn probe_back(&self, lane: usize, sent_micros: u64) {
        let now = Instant::now();
        if let Some(at) = self.back.lock().get_mut(lane) {
            *at = now;
        }
        let lag = Duration::from_micros(self.now_micros().saturating_sub(sent_micros));
        *self.lag.lock() = Some(lag);
    }

    pub fn get(&self) -> BrokerHealth {
        let now = Instant::now();
        let fresh = self
            .back
            .lock()
            .iter()
            .all(|at| now.duration_since(*at) < self.stall_timeout);
        let up = !self.down.lock().iter().any(|&d| d);
        BrokerHealth {
            ok: self.reachable.load(Ordering::Relaxed) && fresh && up,
            lag: *self.lag.lock(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_stops_coming_back_turns_health_false() {
        let h = Health::new(2, Duration::from_secs(5));
        assert!(h.get().ok, "healthy during the first stall_timeout");
        tokio::time::advance(Duration::from_secs(4)).await;
        h.probe_back(0, h.now_micros());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!h.get().ok, "lane 1 has been silent for 6 s");
        h.probe_back(1, h.now_micros());
        assert!(h.get().ok);
        h.lane_down(1, true);
        assert!(
            !h.get().ok,
            "a lane that lost its connection is not healthy"
        );
        h.lane_down(1, false);
        assert!(
            !h.get().ok,
            "the command connection is not proven back by the lane"
        );
        h.reachable(true);
        assert!(h.get().ok);
        h.reachable(false);
        assert!(!h.get().ok);
        assert_eq!(h.get().lag, Some(Duration::ZERO));
    }
}
