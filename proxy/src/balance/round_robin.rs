//! Smooth weighted round-robin, as nginx does it.
//!
//! Each pick adds every eligible member's weight to its running `current`, chooses
//! the member with the highest `current`, and subtracts the sum of the eligible
//! weights from the chosen one. Over any `Σweights` consecutive picks each member is
//! chosen exactly `weight` times, interleaved rather than in runs (weights 5:1:1 give
//! `a a b a c a a`, not `a a a a a b c`). Ineligible members neither gain nor lose,
//! so proportions stay exact among those that remain.
//!
//! The `current` values sit behind one short mutex: a pick is a few additions over
//! a handful of members and nothing awaits while holding it.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Balance, effective_weight};
use crate::backend::Member;

pub struct RoundRobin {
    current: Mutex<Vec<i64>>,
    slow_start: Option<Duration>,
}

impl RoundRobin {
    pub fn new(members: &[Member]) -> Self {
        Self {
            current: Mutex::new(vec![0; members.len()]),
            slow_start: None,
        }
    }

    /// Weights ramp over `window` (see `balance::effective_weight`).
    pub fn slow_start(mut self, window: Option<Duration>) -> Self {
        self.slow_start = window;
        self
    }
}

impl Balance for RoundRobin {
    fn pick(
        &self,
        members: &[Member],
        eligible: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Option<usize> {
        let mut current = self.current.lock();
        if current.len() != members.len() {
            current.resize(members.len(), 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, m) in members.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            let w = match self.slow_start {
                None => i64::from(m.weight),
                Some(_) => effective_weight(m, self.slow_start, now) as i64,
            };
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }
}
