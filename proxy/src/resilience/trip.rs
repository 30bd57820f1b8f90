//! The trip rule the circuit breaker and outlier ejection share: too many failures
//! in a row, or too high a share of failures over a sliding window with enough
//! attempts in it. Each policy decides what tripping does (open, eject) and words
//! the reason.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use super::Window;

/// Thresholds, read from a policy's config on every call (a reload retunes them).
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// Failures in a row that trip it.
    pub consecutive: u32,
    /// Attempts the window must hold before its failure share counts.
    pub min_requests: u64,
    /// Failure share (0..1) over the window that trips it.
    pub failure_rate: f64,
    pub window: Duration,
}

/// Why it tripped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tripped {
    /// This many failures in a row.
    Consecutive(u32),
    /// `failures` of the window's `total` attempts failed.
    Rate { failures: u64, total: u64 },
}

/// Counts outcomes for one backend and one policy (relaxed atomics: concurrent
/// attempts may race on a count, which a threshold tolerates).
#[derive(Debug, Default)]
pub struct Trip {
    consecutive: AtomicU32,
    window: Window,
}

impl Trip {
    /// Counts one attempt; `Some` when this failure reaches a threshold.
    pub fn record(&self, failed: bool, now_ns: u64, rule: &Rule) -> Option<Tripped> {
        self.window.record(failed, now_ns, rule.window);
        if !failed {
            if self.consecutive.load(Relaxed) != 0 {
                self.consecutive.store(0, Relaxed);
            }
            return None;
        }
        let consecutive = self.consecutive.fetch_add(1, Relaxed) + 1;
        if consecutive >= rule.consecutive {
            return Some(Tripped::Consecutive(consecutive));
        }
        let (total, failures) = self.window.totals(now_ns, rule.window);
        (total >= rule.min_requests && failures as f64 >= rule.failure_rate * total as f64)
            .then_some(Tripped::Rate { failures, total })
    }

    /// Starts the run of failures again (the policy acted on it).
    pub fn reset_consecutive(&self) {
        self.consecutive.store(0, Relaxed);
    }

    /// Forgets everything (a fresh start after a close or a return).
    pub fn reset(&self) {
        self.consecutive.store(0, Relaxed);
        self.window.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule {
        consecutive: 3,
        min_requests: 10,
        failure_rate: 0.5,
        window: Duration::from_secs(10),
    };

    #[test]
    fn failures_in_a_row_trip_it_and_a_success_starts_again() {
        let t = Trip::default();
        assert_eq!(t.record(true, 0, &RULE), None);
        assert_eq!(t.record(true, 0, &RULE), None);
        assert_eq!(t.record(false, 0, &RULE), None);
        assert_eq!(t.record(true, 0, &RULE), None);
        assert_eq!(t.record(true, 0, &RULE), None);
        assert_eq!(t.record(true, 0, &RULE), Some(Tripped::Consecutive(3)));
        t.reset_consecutive();
        assert_eq!(t.record(true, 0, &RULE), None);
    }

    #[test]
    fn a_failure_share_over_enough_attempts_trips_it() {
        let t = Trip::default();
        let mut tripped = None;
        for i in 0..10 {
            // Alternating: never three in a row; half of them fail.
            tripped = t.record(i % 2 == 1, 1_000 * i, &RULE);
        }
        assert_eq!(
            tripped,
            Some(Tripped::Rate {
                failures: 5,
                total: 10
            })
        );
        // Out of the window (and reset): nothing counts.
        t.reset();
        assert_eq!(t.record(true, 20_000_000_000, &RULE), None);
    }
}
