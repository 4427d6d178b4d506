//! How a node stops (PROTOCOL §8 `[shutdown]`): unready for `ready_grace`
//! while it still serves, then its clients closed 1001 in paced batches over
//! `drain_period`, each told when to come back. A deploy then moves clients
//! to the other nodes at a steady rate instead of all in the same second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchboard_core::Disconnect;
use tokio::sync::Notify;

use crate::http::AppState;

/// Batches are this far apart (or the whole period, when shorter).
const TICK: Duration = Duration::from_millis(100);

/// A drain never closes fewer clients a second than this: a node with few
/// clients need not hold them for the whole period, and the other nodes take
/// this many handshakes a second with ease.
const MIN_CLOSES_PER_SEC: usize = 1000;

/// The stop's progress, shared by the signal handler and the server.
#[derive(Default)]
pub struct Stop {
    begun: AtomicBool,
    hurry: AtomicBool,
    hurried: Notify,
}

impl Stop {
    /// The stop began: `/ready` answers 503 from now on.
    pub fn begin(&self) {
        self.begun.store(true, Ordering::Release);
    }

    pub fn begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// Skips what is left of the grace and the pacing (a second signal, or
    /// SIGINT): the remaining clients are closed at once.
    pub fn hurry(&self) {
        self.begin();
        self.hurry.store(true, Ordering::Release);
        self.hurried.notify_waiters();
    }

    pub fn hurried(&self) -> bool {
        self.hurry.load(Ordering::Acquire)
    }

    /// Resolves once `hurry` was called (at once if it already was).
    pub async fn until_hurried(&self) {
        let notified = self.hurried.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.hurried() {
            return;
        }
        notified.await;
    }
}

/// How many clients each batch closes, and how far apart batches are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pace {
    pub tick: Duration,
    pub per_tick: usize,
}

impl Pace {
    pub(crate) fn new(clients: usize, period: Duration) -> Pace {
        if period.is_zero() {
            return Pace {
                tick: Duration::ZERO,
                per_tick: clients.max(1),
            };
        }
        let tick = TICK.min(period);
        let ticks = (period.as_nanos() / tick.as_nanos()).max(1) as usize;
        let by_period = clients.div_ceil(ticks);
        let floor = (MIN_CLOSES_PER_SEC as f64 * tick.as_secs_f64()).ceil() as usize;
        Pace {
            tick,
            per_tick: by_period.max(floor).max(1),
        }
    }

    /// The wait each closed client is told: spread over one tick, so the
    /// returns of one batch do not arrive as one burst.
    fn reconnect_after(&self) -> Disconnect {
        let ms = self.tick.as_millis() as u32;
        let wait = if ms == 0 { 0 } else { fastrand::u32(0..ms) };
        Disconnect::SHUTDOWN.reconnect_after(wait)
    }
}

/// Stops taking clients and closes every one with 1001 in paced batches,
/// then waits up to `shutdown_timeout` for their transports to end.
pub async fn drain(state: &AppState) {
    state.stop.begin();
    state.draining.store(true, Ordering::Release);
    // From here `connect` closes any client whose handshake passed the
    // draining check just before.
    state.node.stop_admitting();
    let mut clients = state.node.hub.clients();
    fastrand::shuffle(&mut clients);
    let pace = Pace::new(clients.len(), state.cfg.shutdown.drain_period.0);
    tracing::info!(
        clients = clients.len(),
        per_batch = pace.per_tick,
        every_ms = pace.tick.as_millis() as u64,
        "draining: closing clients with 1001 in paced batches"
    );
    let start = tokio::time::Instant::now();
    for (i, batch) in clients.chunks(pace.per_tick).enumerate() {
        if i > 0 && !state.stop.hurried() {
            let at = start + pace.tick * i as u32;
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = state.stop.until_hurried() => {}
            }
        }
        if state.stop.hurried() {
            state
                .node
                .close_clients(batch, || Disconnect::SHUTDOWN)
                .await;
        } else {
            state
                .node
                .close_clients(batch, || pace.reconnect_after())
                .await;
        }
    }
    // Anyone admitted while the batches went out.
    state.node.close_all(Disconnect::SHUTDOWN).await;
    let deadline = tokio::time::Instant::now() + state.cfg.shutdown_timeout.0;
    while state.live_transports.load(Ordering::Acquire) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = state.live_transports.load(Ordering::Acquire);
    if left > 0 {
        tracing::warn!(left, "shutdown timeout passed with clients still closing");
    }
}

/// Turns the process's signals into the stop: the first SIGTERM begins the
/// graceful stop (the returned future resolves); SIGINT, or a second signal,
/// hurries it.
pub async fn on_signals(state: Arc<AppState>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for signals; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(
            ready_grace = %state.cfg.shutdown.ready_grace,
            drain_period = %state.cfg.shutdown.drain_period,
            "SIGTERM: shutting down: unready, then a paced drain"
        ),
        _ = int.recv() => {
            tracing::info!("SIGINT: shutting down now");
            state.stop.hurry();
        }
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("second signal: closing the remaining clients at once");
        state.stop.hurry();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_drain_spreads_evenly_over_the_period() {
        let p = Pace::new(19_000, Duration::from_secs(10));
        assert_eq!(p.tick, TICK);
        // 100 batches of 190: the last one goes out at 9.9 s.
        assert_eq!(p.per_tick, 1900 / 10);
        assert_eq!(19_000usize.div_ceil(p.per_tick), 100);
    }

    #[test]
    fn a_small_drain_closes_at_the_floor_rate_not_over_the_whole_period() {
        let p = Pace::new(150, Duration::from_secs(10));
        assert_eq!(p.per_tick, 100, "1,000 a second in 100 ms batches");
        assert_eq!(150usize.div_ceil(p.per_tick), 2);
    }

    #[test]
    fn no_period_closes_everyone_in_one_batch() {
        let p = Pace::new(500, Duration::ZERO);
        assert_eq!(
            p,
            Pace {
                tick: Duration::ZERO,
                per_tick: 500
            }
        );
        assert_eq!(Pace::new(0, Duration::ZERO).per_tick, 1);
    }

    #[test]
    fn a_period_shorter_than_a_tick_is_one_batch() {
        let p = Pace::new(5000, Duration::from_millis(40));
        assert_eq!(p.tick, Duration::from_millis(40));
        assert_eq!(p.per_tick, 5000);
    }

    #[test]
    fn each_client_is_told_a_wait_within_one_tick() {
        let p = Pace::new(19_000, Duration::from_secs(10));
        for _ in 0..1000 {
            let d = p.reconnect_after();
            assert_eq!((d.code, d.reason), (1001, "server shutting down"));
            assert!(d.reconnect_after_ms.is_some_and(|ms| ms < 100), "{d:?}");
        }
    }

    #[tokio::test]
    async fn hurrying_wakes_a_waiter_and_a_late_waiter_returns_at_once() {
        let stop = Arc::new(Stop::default());
        let waiter = tokio::spawn({
            let stop = stop.clone();
            async move { stop.until_hurried().await }
        });
        tokio::task::yield_now().await;
        assert!(!stop.begun());
        stop.hurry();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert!(stop.begun() && stop.hurried());
        stop.until_hurried().await;
    }
}
