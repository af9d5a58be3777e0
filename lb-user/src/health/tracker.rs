//! The rise/fall state machine of one backend: which check results change its health.

/// A health state change reported by `Tracker::record`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// The rise/fall state machine of one backend (ELB/HAProxy semantics): an up backend
/// goes down after `fall` consecutive failures, a down (or initial) one comes up after
/// `rise` consecutive successes; a result of the other kind resets the streak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    up: bool,
    rise: u32,
    fall: u32,
    successes: u32,
    failures: u32,
}

impl Tracker {
    /// A tracker starting `up` or not; thresholds of 0 count as 1.
    pub fn new(up: bool, rise: u32, fall: u32) -> Self {
        Tracker {
            up,
            rise: rise.max(1),
            fall: fall.max(1),
            successes: 0,
            failures: 0,
        }
    }

    /// Whether the backend is currently considered healthy.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive successes so far (0 after a failure).
    pub fn successes(&self) -> u32 {
        self.successes
    }

    /// Consecutive failures so far (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records one check result; returns the transition it causes, if any.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= self.rise {
                self.up = true;
                return Some(Transition::Up);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= self.fall {
                self.up = false;
                return Some(Transition::Down);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_goes_down_after_fall_failures() {
        let mut t = Tracker::new(true, 2, 3);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(Transition::Down));
        assert!(!t.is_up());
        assert_eq!(t.record(false), None, "no repeated transition");
    }

    #[test]
    fn tracker_comes_up_after_rise_successes() {
        let mut t = Tracker::new(false, 2, 2);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Transition::Up));
        assert!(t.is_up());
        assert_eq!(t.record(true), None);
    }

    #[test]
    fn tracker_streaks_reset_on_the_other_result() {
        let mut t = Tracker::new(true, 2, 2);
        for _ in 0..10 {
            assert_eq!(t.record(false), None);
            assert_eq!(t.record(true), None);
        }
        assert!(t.is_up());
        assert_eq!(t.record(false), None);
        assert_eq!(t.failures(), 1);
        assert_eq!(t.record(false), Some(Transition::Down));
        // Down: a success then a failure resets the rise streak.
        assert_eq!(t.record(true), None);
        assert_eq!(t.successes(), 1);
        assert_eq!(t.record(false), None);
        assert_eq!(t.successes(), 0);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(Transition::Up));
    }

    #[test]
    fn tracker_thresholds_of_one_and_zero() {
        let mut t = Tracker::new(true, 1, 1);
        assert_eq!(t.record(false), Some(Transition::Down));
        assert_eq!(t.record(true), Some(Transition::Up));
        let mut z = Tracker::new(false, 0, 0);
        assert_eq!(z.record(true), Some(Transition::Up));
        assert_eq!(z.record(false), Some(Transition::Down));
    }
}
