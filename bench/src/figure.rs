//! One figure of the results (a metric of a workload on a system, over its repeats)
//! and the few statistics and number formats every part of the report shares.

use crate::systems::System;
use crate::workloads::Metric;

/// One figure: a metric of a workload on a system, over its repeats.
#[derive(Clone, Debug)]
pub struct Figure {
    pub system: System,
    pub workload: String,
    pub metric: Metric,
    /// `ok`, or why there is no value (`not built yet ...`, `n/a: ...`, `failed: ...`,
    /// `todo: ...`).
    pub status: String,
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub repeats: usize,
    /// Runs thrown away as disturbed or as outliers, and run again.
    pub discarded: usize,
}

impl Figure {
    pub fn ok(&self) -> bool {
        self.status == "ok" && self.median.is_some()
    }
}

/// The median of `v` (not empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Indices of the values more than `tolerance` (a fraction) off the median of `v`;
/// none with fewer than three values, where a median says little.
pub fn outliers(v: &[f64], tolerance: f64) -> Vec<usize> {
    if v.len() < 3 {
        return Vec::new();
    }
    let m = median(v);
    v.iter()
        .enumerate()
        .filter(|(_, x)| m != 0.0 && ((*x - m) / m).abs() > tolerance)
        .map(|(i, _)| i)
        .collect()
}

/// A number with three significant digits (at least no decimals for large ones).
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        let decimals = (2.0 - a.log10().floor()) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_outliers() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(outliers(&[100.0, 104.0, 70.0], 0.25), vec![2]);
        assert!(outliers(&[100.0, 104.0, 90.0], 0.25).is_empty());
        assert!(outliers(&[100.0, 10.0], 0.25).is_empty());
    }

    #[test]
    fn numbers_keep_three_digits() {
        assert_eq!(num(12345.6), "12346");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.012345), "0.0123");
        assert_eq!(num(0.0), "0");
    }
}
