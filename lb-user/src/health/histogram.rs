//! A fixed-bucket latency histogram in the shape Prometheus expects (cumulative `le`
//! buckets, sum and count), for health-check round trips.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Upper bounds of the buckets, seconds. Health checks of healthy backends take well
/// under a millisecond on a LAN; timeouts are seconds.
pub const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative), `BUCKETS.len()` of them; larger ones
    /// only count in `count`.
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl LatencyHistogram {
    pub fn observe(&mut self, d: Duration) {
        if self.counts.len() != BUCKETS.len() {
            self.counts = vec![0; BUCKETS.len()];
        }
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&le| s <= le) {
            self.counts[i] += 1;
        }
        self.sum_seconds += s;
        self.count += 1;
    }

    /// Adds `other`'s observations (another daemon's, carried over an upgrade).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if self.counts.len() != BUCKETS.len() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum_seconds += other.sum_seconds;
        self.count += other.count;
    }

    /// `(le, cumulative count)` per bucket, ending with `(+Inf, count)`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        let mut out: Vec<(f64, u64)> = BUCKETS
            .iter()
            .enumerate()
            .map(|(i, &le)| {
                acc += self.counts.get(i).copied().unwrap_or(0);
                (le, acc)
            })
            .collect();
        out.push((f64::INFINITY, self.count));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_every_bucket_the_sum_and_the_count() {
        let mut a = LatencyHistogram::default();
        a.observe(Duration::from_millis(3));
        let mut b = LatencyHistogram::default();
        b.observe(Duration::from_millis(3));
        b.observe(Duration::from_secs(10));
        a.merge(&b);
        assert_eq!(a.count, 3);
        assert!((a.sum_seconds - 10.006).abs() < 1e-9);
        let le_5ms = a
            .cumulative()
            .into_iter()
            .find(|(le, _)| *le >= 0.005)
            .unwrap();
        assert_eq!(le_5ms.1, 2);
        // A histogram that never observed anything merges too.
        let mut empty = LatencyHistogram::default();
        empty.merge(&a);
        assert_eq!(empty, a);
    }

    #[test]
    fn cumulative_buckets_end_with_the_count() {
        let mut h = LatencyHistogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let c = h.cumulative();
        assert_eq!(c[0], (0.0005, 1));
        assert_eq!(c[3], (0.005, 2));
        assert_eq!(c[BUCKETS.len() - 1].1, 2);
        assert_eq!(*c.last().unwrap(), (f64::INFINITY, 3));
        assert!((h.sum_seconds - 10.0033).abs() < 1e-9);
    }
}
