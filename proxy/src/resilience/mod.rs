//! Resilience policies that act on real traffic: the circuit breaker
//! ([`circuit`]) and passive outlier ejection ([`outlier`]).
//!
//! Both keep their state in per-backend atomics and are told the outcome of every
//! attempt, which one [`Trip`] detector per policy counts; a state change is returned as a [`Transition`] for the caller to log,
//! count and publish. They take their settings as arguments on every call, so a
//! config reload retunes them without losing state.

pub mod circuit;
pub mod outlier;
pub mod trip;
mod window;

pub use circuit::{Admission, Circuit};
pub use outlier::Outlier;
pub use trip::{Rule, Trip, Tripped};
pub use window::Window;

use std::time::Duration;

/// A state change worth an event, a log line and a metric.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    CircuitOpened {
        reason: String,
        for_: Duration,
    },
    CircuitHalfOpen,
    CircuitClosed,
    Ejected {
        reason: String,
        for_: Duration,
        count: u32,
    },
    Restored,
}
