//! Latency histograms (HDR, nanoseconds) and their summaries.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded as itself: ten minutes. Longer values are clamped
/// to it, which no bounded run reaches.
const HIGHEST_NS: u64 = 600 * 1_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low).
        let hist = Histogram::new_with_bounds(1, HIGHEST_NS, 3)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
        Latency { hist }
    }

    pub fn record_ns(&mut self, nanos: u64) {
        self.hist.saturating_record(nanos.clamp(1, HIGHEST_NS));
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    pub fn summary(&self) -> Summary {
        let us = |ns: u64| ns as f64 / 1_000.0;
        if self.hist.is_empty() {
            return Summary::default();
        }
        Summary {
            count: self.hist.len(),
            mean_us: self.hist.mean() / 1_000.0,
            p50_us: us(self.hist.value_at_quantile(0.50)),
            p90_us: us(self.hist.value_at_quantile(0.90)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            p999_us: us(self.hist.value_at_quantile(0.999)),
            max_us: us(self.hist.max()),
        }
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// `amount / per`, or `None` when there is nothing to divide by.
pub fn ratio(amount: f64, per: f64) -> Option<f64> {
    (per > 0.0 && amount.is_finite()).then(|| amount / per)
}

/// Renders a duration given in microseconds with a readable unit.
pub fn human_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1_000.0)
    } else {
        format!("{us:.1} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 0.002 + 0.001
    }

    #[test]
    fn empty_histogram_summarises_to_zero() {
        assert_eq!(Latency::new().summary(), Summary::default());
    }

    #[test]
    fn percentiles_are_in_microseconds() {
        let mut lat = Latency::new();
        for i in 1..=1000u64 {
            lat.record_ns(i * 1_000); // 1 µs .. 1 ms
        }
        let s = lat.summary();
        assert_eq!(s.count, 1000);
        assert!(close(s.p50_us, 500.0), "{s:?}");
        assert!(close(s.p99_us, 990.0), "{s:?}");
        assert!(close(s.max_us, 1000.0), "{s:?}");
        assert!(close(s.mean_us, 500.5), "{s:?}");
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut lat = Latency::new();
        lat.record_ns(0);
        lat.record_ns(u64::MAX);
        assert_eq!(lat.len(), 2);
        assert!(lat.summary().max_us >= 599.0 * 1e6);
    }

    #[test]
    fn ratio_refuses_zero_denominators() {
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
    }

    #[test]
    fn durations_render_with_units() {
        assert_eq!(human_us(12.34), "12.3 µs");
        assert_eq!(human_us(2_500.0), "2.50 ms");
        assert_eq!(human_us(3_000_000.0), "3.00 s");
    }
}
