//! The per-client rate limit of PROTOCOL §4: every frame a client sends counts.

/// Per-client GCRA-style budget: `rate` frames a second, bursts to `2 × rate`.
/// Times are milliseconds on the node's clock; it is kept small because every
/// idle client's task carries one.
#[derive(Debug)]
pub struct RateLimit {
    rate: f32,
    tokens: f32,
    last: u64,
    /// When the current run of refusals began, `NEVER` outside one.
    limited_since: u64,
    last_limited: u64,
}

const NEVER: u64 = u64::MAX;

/// What the rate limit says of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Answer `rate_limited`.
    Limit,
    /// The client kept on past the limit: close it 1008.
    Close,
}

impl RateLimit {
    pub fn new(per_second: u32, now_ms: u64) -> Self {
        let rate = per_second as f32;
        RateLimit {
            rate,
            tokens: rate * 2.0,
            last: now_ms,
            limited_since: NEVER,
            last_limited: NEVER,
        }
    }

    /// Takes one frame's token. A client still refused two seconds after its
    /// first refusal (with no quiet second in between) is to be closed.
    pub fn check(&mut self, now_ms: u64) -> Verdict {
        let elapsed = now_ms.saturating_sub(self.last) as f32 / 1000.0;
        self.last = self.last.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let quiet = self.last_limited == NEVER || now_ms.saturating_sub(self.last_limited) > 1000;
        if quiet {
            self.limited_since = now_ms;
        }
        self.last_limited = now_ms;
        if now_ms.saturating_sub(self.limited_since) >= 2000 {
            Verdict::Close
        } else {
            Verdict::Limit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_pass_and_sustained_floods_close() {
        let t0 = 1_000;
        let mut rl = RateLimit::new(10, t0);
        for _ in 0..20 {
            assert_eq!(rl.check(t0), Verdict::Allow);
        }
        assert_eq!(rl.check(t0), Verdict::Limit);
        // 100 frames a second against 10 allowed: closed within 3 s.
        let mut closed_at = None;
        for i in 1..400u64 {
            let now = t0 + i * 10;
            if rl.check(now) == Verdict::Close {
                closed_at = Some(i * 10);
                break;
            }
        }
        let at = closed_at.expect("closed");
        assert!(at <= 3000, "closed after {at} ms");
    }

    proptest::proptest! {
        /// Over any window, no more than the burst plus the rate times the
        /// window's length is allowed, whatever the arrival pattern.
        #[test]
        fn allowed_frames_never_exceed_burst_plus_rate(
            rate in 1u32..200,
            gaps in proptest::collection::vec(0u64..50, 1..400),
        ) {
            let t0 = 1_000;
            let mut rl = RateLimit::new(rate, t0);
            let mut now = t0;
            let mut allowed = Vec::new();
            for g in gaps {
                now += g;
                if rl.check(now) == Verdict::Allow {
                    allowed.push(now);
                }
            }
            for (i, start) in allowed.iter().enumerate() {
                for (j, end) in allowed.iter().enumerate().skip(i) {
                    let window = (end - start) as f64 / 1000.0;
                    let n = (j - i + 1) as f64;
                    proptest::prop_assert!(n <= 2.0 * f64::from(rate) + f64::from(rate) * window + 1.0);
                }
            }
        }

        /// A client that keeps to its rate is never refused.
        #[test]
        fn a_steady_client_is_never_refused(rate in 1u32..200, frames in 1usize..500) {
            let t0 = 1_000;
            let mut rl = RateLimit::new(rate, t0);
            for i in 0..frames as u64 {
                // Each frame at or after its slot (whole milliseconds, rounded up).
                let at = t0 + (i * 1000).div_ceil(u64::from(rate));
                proptest::prop_assert_eq!(rl.check(at), Verdict::Allow);
            }
        }
    }

    #[test]
    fn a_client_within_its_rate_is_never_limited() {
        let t0 = 1_000;
        let mut rl = RateLimit::new(10, t0);
        for i in 0..1000u64 {
            assert_eq!(rl.check(t0 + i * 100), Verdict::Allow);
        }
    }
}
