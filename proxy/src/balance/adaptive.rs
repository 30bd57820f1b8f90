//! Adaptive: power of two choices over a latency-and-load cost.
//!
//! Two distinct eligible members are drawn at random and the cheaper one wins,
//! where
//!
//! ```text
//! cost = latency × (in_flight + 1) × (1 + error_penalty × error_rate) / weight
//! ```
//!
//! - `latency` is the member's peak-EWMA of time to response headers
//!   ([`crate::backend::PeakEwma`]): peaks count at once, improvements blend in with
//!   time constant `adaptive.decay`, and while a member gets no traffic its estimate
//!   decays towards zero so it is probed again now and then. A failed attempt counts
//!   as at least `adaptive.failure_penalty`, so a backend that answers 500 in 50 µs
//!   is not mistaken for a fast one.
//! - `in_flight + 1` spreads concurrent load (a fast member with a queue loses to an
//!   idle one that is nearly as fast).
//! - `error_rate` is the recent share of failed attempts, decaying the same way.
//! - A member with no samples yet borrows the other candidate's latency, so a new
//!   backend is neither flooded nor starved; ties go to the first draw.
//!
//! Two random choices rather than the global minimum keep replicas that share a
//! stale view from all piling onto the same "best" backend (Mitzenmacher's
//! power of two choices), and cost O(1) per pick.

use std::time::Duration;

use tokio::time::Instant;

use super::{Balance, effective_weight};
use crate::backend::Member;
use crate::config::AdaptiveConfig;

pub struct Adaptive {
    tau_ns: f64,
    error_penalty: f64,
    slow_start: Option<Duration>,
}

impl Adaptive {
    pub fn new(config: &AdaptiveConfig) -> Self {
        Self {
            tau_ns: config.decay.get().as_nanos().max(1) as f64,
            error_penalty: config.error_penalty.0,
            slow_start: None,
        }
    }

    /// Weights ramp over `window` (see `balance::effective_weight`).
    pub fn slow_start(mut self, window: Option<Duration>) -> Self {
        self.slow_start = window;
        self
    }

    /// (latency or None when cold, load-and-error factor).
    fn parts(&self, m: &Member, now: Instant) -> (Option<f64>, f64) {
        let b = &m.backend;
        let now_ns = b.nanos(now);
        let latency = b.latency.latency_ns(now_ns, self.tau_ns);
        let errors = b.latency.error_rate(now_ns, self.tau_ns);
        let factor = (b.active() as f64 + 1.0) * (1.0 + self.error_penalty * errors)
            / effective_weight(m, self.slow_start, now) as f64;
        (latency, factor)
    }
}

impl Balance for Adaptive {
    fn pick(
        &self,
        members: &[Member],
        eligible: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Option<usize> {
        let n = members.len();
        let first = draw(n, eligible, None)?;
        let Some(second) = draw(n, eligible, Some(first)) else {
            return Some(first);
        };
        let (la, fa) = self.parts(&members[first], now);
        let (lb, fb) = self.parts(&members[second], now);
        let (la, lb) = match (la, lb) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => (a, a),
            (None, Some(b)) => (b, b),
            (None, None) => (1.0, 1.0),
        };
        // A small floor keeps "in flight" meaningful when latencies decay to ~0.
        let cost_a = (la + 1_000.0) * fa;
        let cost_b = (lb + 1_000.0) * fb;
        Some(if cost_b < cost_a { second } else { first })
    }
}

/// A uniformly random eligible index other than `not`: a random start, then the
/// next eligible one in order (cheap, and unbiased enough when few are excluded).
fn draw(n: usize, eligible: &dyn Fn(usize) -> bool, not: Option<usize>) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = fastrand::usize(..n);
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| Some(i) != not && eligible(i))
}
