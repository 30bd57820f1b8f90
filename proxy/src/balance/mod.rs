//! Picking a backend. A balancer is built from a snapshot's member list and answers
//! `pick()` over the members a predicate allows (available, not yet tried); each
//! strategy is one type:
//!
//! - [`RoundRobin`]: nginx's smooth weighted round-robin, exact proportions.
//! - [`LeastConnections`]: fewest in-flight requests per unit of weight.
//! - [`Adaptive`]: power of two choices over peak-EWMA latency × load × errors.
//! - [`ConsistentHash`]: a hash ring with bounded loads, keyed by the request.
//!
//! Slow start (`slow_start`) scales a member's weight by [`Backend::ramp`] in every
//! strategy; without it the strategies read the configured weight and nothing else.
//!
//! [`Backend::ramp`]: crate::backend::Backend::ramp

mod adaptive;
mod consistent;
mod least_conn;
mod round_robin;
#[cfg(test)]
mod tests;

pub use adaptive::Adaptive;
pub use consistent::ConsistentHash;
pub use least_conn::LeastConnections;
pub use round_robin::RoundRobin;

use std::time::Duration;

use tokio::time::Instant;

use crate::backend::Member;
use crate::config::{Config, Strategy};

/// A load-balancing policy over a fixed member list.
pub trait Balance: Send + Sync {
    /// Index into `members` of the chosen backend among those `eligible` allows,
    /// or `None` when it allows none.
    fn pick(
        &self,
        members: &[Member],
        eligible: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Option<usize>;

    /// [`Balance::pick`] for a request whose key hashed to `key` (`None`: the
    /// request lacks it). Only `consistent-hash` reads the key.
    fn pick_keyed(
        &self,
        members: &[Member],
        eligible: &dyn Fn(usize) -> bool,
        key: Option<u64>,
        now: Instant,
    ) -> Option<usize> {
        let _ = key;
        self.pick(members, eligible, now)
    }
}

/// The slow-start window in force (`None`: off, also for `0s`).
pub fn slow_start(config: &Config) -> Option<Duration> {
    config.slow_start_window()
}

/// Units of weight per configured unit under slow start (so a 10 % ramp of
/// weight 1 is still an integer share).
const RAMP_SCALE: u64 = 1000;

/// `m`'s weight under slow start: `weight × RAMP_SCALE × ramp`, at least 1;
/// without slow start, the configured weight.
fn effective_weight(m: &Member, slow_start: Option<Duration>, now: Instant) -> u64 {
    let weight = u64::from(m.weight.max(1));
    let Some(window) = slow_start else {
        return weight;
    };
    let ramp = m.backend.ramp(now, window);
    if ramp >= 1.0 {
        return weight * RAMP_SCALE;
    }
    ((weight * RAMP_SCALE) as f64 * ramp).max(1.0) as u64
}

/// Builds the configured strategy for `members`.
pub fn build(config: &Config, members: &[Member]) -> Box<dyn Balance> {
    let slow = slow_start(config);
    match config.strategy() {
        Strategy::RoundRobin => Box::new(RoundRobin::new(members).slow_start(slow)),
        Strategy::LeastConnections => Box::new(LeastConnections::default().slow_start(slow)),
        Strategy::Adaptive => Box::new(Adaptive::new(&config.adaptive).slow_start(slow)),
        Strategy::ConsistentHash => {
            Box::new(ConsistentHash::new(members, &config.consistent_hash, slow))
        }
    }
}
