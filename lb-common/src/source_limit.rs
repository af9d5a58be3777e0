//! The per-source new-flow limit: a token bucket of `burst` new flows refilled at `rate`
//! a second, kept as one `u64` per source so an update is a single store. Pure logic, so
//! the XDP program's rule is tested on the host.
//!
//! The bucket is held in its "theoretical arrival time" form (GCRA): `next_ns` is when
//! the bucket would be full again if nothing more came. With `interval = 1 s / rate`, the
//! tokens left at `now` are `burst - (next_ns - now) / interval`; taking one adds
//! `interval`. One word instead of (tokens, last refill) keeps fractional refills exact
//! without a second division and never shows another CPU half an update.

/// Nanoseconds in a second: the unit of `rate`.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Highest `rate` and `burst` accepted: above a million new flows a second a per-source
/// limit limits nothing, and the bound keeps `burst × interval` far from overflow.
pub const MAX_RATE: u32 = 1_000_000;

/// What [`admit`] decided, and what to store in the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The new flow may be created; store `next_ns`.
    Admit { next_ns: u64 },
    /// Over the limit: drop. `Some(next_ns)` when the bucket must be rewritten (it held
    /// more than one bucket's worth of time, after the limit was changed), else leave it.
    Deny { store: Option<u64> },
}

/// Whether one more new flow fits the bucket `next_ns` (`None`: a source not seen, or
/// forgotten) at `now`, with `rate` ≥ 1 new flows a second and a bucket of `burst` ≥ 1.
/// `now` is CLOCK_MONOTONIC ns (`bpf_ktime_get_coarse_ns`).
#[inline(always)]
pub fn admit(next_ns: Option<u64>, now: u64, rate: u32, burst: u32) -> Decision {
    let rate = if rate == 0 { 1 } else { rate as u64 };
    let burst = if burst == 0 { 1 } else { burst as u64 };
    let interval = NS_PER_SEC / rate;
    // At most MAX_RATE × 1 s: no overflow for any rate ≥ 1 and burst ≤ MAX_RATE.
    let bucket = interval * burst;
    // Time the bucket still owes: nothing for a new or refilled source.
    let owed = match next_ns {
        Some(n) if n > now => n - now,
        _ => 0,
    };
    if owed + interval > bucket {
        // A bucket owing more than it can hold only comes from a lowered burst or a raised
        // rate: cap it, so the new limit applies after one bucket's time at most.
        let store = if owed > bucket {
            Some(now + bucket)
        } else {
            None
        };
        return Decision::Deny { store };
    }
    Decision::Admit {
        next_ns: now + owed + interval,
    }
}

/// The new flows the bucket `next_ns` holds at `now` (`burst` for a source not seen):
/// what `lb explain` reports, by the rule [`admit`] applies.
pub fn tokens(next_ns: Option<u64>, now: u64, rate: u32, burst: u32) -> u32 {
    let interval = NS_PER_SEC / u64::from(rate.max(1));
    let owed = next_ns.map_or(0, |n| n.saturating_sub(now));
    let bucket = interval * u64::from(burst.max(1));
    (bucket.saturating_sub(owed) / interval) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_SEC;

    #[test]
    fn tokens_count_what_admit_would_let_through() {
        let (rate, burst, now) = (10, 3, 100 * S);
        assert_eq!(tokens(None, now, rate, burst), 3);
        let mut next = None;
        for left in [2, 1, 0] {
            let Decision::Admit { next_ns } = admit(next, now, rate, burst) else {
                panic!("a token was left");
            };
            next = Some(next_ns);
            assert_eq!(tokens(next, now, rate, burst), left);
        }
        assert!(matches!(
            admit(next, now, rate, burst),
            Decision::Deny { .. }
        ));
        // A tenth of a second later one token is back.
        assert_eq!(tokens(next, now + S / 10, rate, burst), 1);
    }

    /// Runs `n` new flows at `now` through the bucket, returning how many were admitted.
    fn burst_at(bucket: &mut Option<u64>, now: u64, n: u32, rate: u32, burst: u32) -> u32 {
        let mut admitted = 0;
        for _ in 0..n {
            match admit(*bucket, now, rate, burst) {
                Decision::Admit { next_ns } => {
                    *bucket = Some(next_ns);
                    admitted += 1;
                }
                Decision::Deny { store } => {
                    if let Some(s) = store {
                        *bucket = Some(s);
                    }
                }
            }
        }
        admitted
    }

    #[test]
    fn a_new_source_gets_its_burst_then_one_flow_per_interval() {
        let mut b = None;
        let t0 = 100 * S;
        assert_eq!(burst_at(&mut b, t0, 5, 1, 3), 3, "the burst");
        assert_eq!(
            burst_at(&mut b, t0 + S / 2, 5, 1, 3),
            0,
            "half an interval later"
        );
        assert_eq!(burst_at(&mut b, t0 + S, 5, 1, 3), 1, "one interval later");
        assert_eq!(burst_at(&mut b, t0 + 2 * S + S / 10, 5, 1, 3), 1);
        // Idle for long: the bucket is full again, and no fuller than its size.
        assert_eq!(burst_at(&mut b, t0 + 1000 * S, 10, 1, 3), 3);
    }

    #[test]
    fn fractional_refills_add_up() {
        // 3 a second: after 1 s exactly three more, though 1 s / 3 is not whole.
        let mut b = None;
        let t0 = 7 * S;
        assert_eq!(burst_at(&mut b, t0, 3, 3, 3), 3);
        let mut later = 0;
        for ms in 1..=1000u64 {
            later += burst_at(&mut b, t0 + ms * 1_000_000, 1, 3, 3);
        }
        assert_eq!(later, 3);
    }

    #[test]
    fn a_denied_flow_costs_nothing_and_a_raised_rate_applies_within_one_bucket() {
        let mut b = None;
        let t0 = 50 * S;
        assert_eq!(burst_at(&mut b, t0, 100, 1, 100), 100);
        let owed = b.unwrap() - t0;
        assert_eq!(owed, 100 * S);
        assert_eq!(burst_at(&mut b, t0, 1000, 1, 100), 0);
        assert_eq!(b, Some(t0 + owed), "denials do not push the refill back");
        // Now 1000/s with a bucket of 10 (10 ms): the old debt is capped to 10 ms.
        assert_eq!(burst_at(&mut b, t0, 1, 1000, 10), 0);
        assert_eq!(b, Some(t0 + 10 * S / 1000));
        assert_eq!(burst_at(&mut b, t0 + 10 * S / 1000, 20, 1000, 10), 10);
    }

    #[test]
    fn limits_at_the_edges_do_not_overflow() {
        let mut b = None;
        let now = u64::MAX / 4;
        assert_eq!(burst_at(&mut b, now, 3, MAX_RATE, MAX_RATE), 3);
        let mut b = None;
        assert_eq!(burst_at(&mut b, now, 3, 1, MAX_RATE), 3);
        // Zero is treated as one (the program checks for "off" before calling).
        let mut b = None;
        assert_eq!(burst_at(&mut b, now, 3, 0, 0), 1);
    }
}
