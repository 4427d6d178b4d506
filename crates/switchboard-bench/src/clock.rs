//! One process-wide monotonic clock.
//!
//! The generator both stamps a publication (`t`) and receives it, so latency is
//! the difference of two readings of the same `Instant` base (CLOCK_MONOTONIC):
//! no wall clock, no cross-machine skew.

use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Fixes the base; call once at start so the first reading is not paid later.
pub fn init() {
    BASE.get_or_init(Instant::now);
}

/// Nanoseconds since the process-wide base.
pub fn now_ns() -> u64 {
    let nanos = BASE.get_or_init(Instant::now).elapsed().as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX)
}
