//! Picking a backend. A balancer is built from a snapshot's member list and answers
//! `pick()` over the members a predicate allows (available, not yet tried); each
//! strategy is one type:
//!
//! - [`RoundRobin`]: nginx's smooth weighted round-robin, exact proportions.
//! - [`LeastConnections`]: fewest in-flight requests per unit of weight.
//! - [`Adaptive`]: power of two choices over peak-EWMA latency × load × errors.

mod adaptive;
mod least_conn;
mod round_robin;
#[cfg(test)]
mod tests;

pub use adaptive::Adaptive;
pub use least_conn::LeastConnections;
pub use round_robin::RoundRobin;

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
}

/// Builds the configured strategy for `members`.
pub fn build(config: &Config, members: &[Member]) -> Box<dyn Balance> {
    match config.strategy() {
        Strategy::RoundRobin => Box::new(RoundRobin::new(members)),
        Strategy::LeastConnections => Box::new(LeastConnections::default()),
        Strategy::Adaptive => Box::new(Adaptive::new(&config.adaptive)),
    }
}
