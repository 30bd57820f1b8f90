//! Least connections, normalised by weight.
//!
//! Chooses the eligible member with the smallest `(in_flight + 1) / weight`
//! (compared by cross-multiplying, so no division). The `+ 1` makes weight matter
//! when everything is idle: with nothing in flight a weight-3 member costs 1/3 and
//! a weight-1 member 1. Ties go round-robin from a rotating start, so equal members
//! share the load instead of the first one taking it all.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use super::{Balance, effective_weight};
use crate::backend::Member;

#[derive(Default)]
pub struct LeastConnections {
    next: AtomicUsize,
    slow_start: Option<Duration>,
}

impl LeastConnections {
    /// Weights ramp over `window` (see `balance::effective_weight`).
    pub fn slow_start(mut self, window: Option<Duration>) -> Self {
        self.slow_start = window;
        self
    }
}

impl Balance for LeastConnections {
    fn pick(
        &self,
        members: &[Member],
        eligible: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Option<usize> {
        let n = members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed) % n;
        let mut best: Option<(usize, u128, u128)> = None; // (index, load+1, weight)
        for k in 0..n {
            let i = (start + k) % n;
            if !eligible(i) {
                continue;
            }
            let m = &members[i];
            let load = u128::from(m.backend.active()) + 1;
            let w = u128::from(effective_weight(m, self.slow_start, now));
            match best {
                // load/w < bl/bw  <=>  load*bw < bl*w
                Some((_, bl, bw)) if load * bw >= bl * w => {}
                _ => best = Some((i, load, w)),
            }
        }
        best.map(|(i, _, _)| i)
    }
}
