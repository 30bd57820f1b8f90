//! Per-backend circuit breaker: `closed → open → half-open → closed`.
//!
//! - **Closed**: every attempt is counted. It opens after `failure_threshold`
//!   consecutive failures, or when at least `min_requests` attempts in the last
//!   `window` failed at a share of `failure_rate` or more. A failure is a connect
//!   error, a timeout, a lost connection, a 5xx, or a response slower than
//!   `slow_call_threshold` when that is set.
//! - **Open**: the backend gets no requests at all — not even retries, and not in
//!   panic mode — for `open_duration × 2^k`, capped at `max_open_duration`, where `k`
//!   counts the failed probes since it last closed.
//! - **Half-open**: up to `half_open_requests` probe requests are let through; if all
//!   succeed the circuit closes (and `k` resets), the first failure re-opens it with
//!   the next backoff step. Other requests keep going elsewhere meanwhile.
//!
//! Reads on the request path are a couple of atomic loads; transitions take a short
//! lock so two threads cannot both open or both close it.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_shared::CircuitState;

use super::{Rule, Transition, Trip, Tripped};
use crate::config::{CircuitBreakerConfig, Dur};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Default)]
pub struct Circuit {
    state: AtomicU8,
    /// Backend-epoch nanoseconds until which it stays open.
    until_ns: AtomicU64,
    /// Backend-epoch nanoseconds + 1 of when probes last closed it (0: never).
    closed_ns: AtomicU64,
    /// Backoff exponent: failed probes since the circuit last closed.
    level: AtomicU32,
    probes_in_flight: AtomicU32,
    probe_successes: AtomicU32,
    trip: Trip,
    transition: Mutex<()>,
    /// Cleared on replicas that do not hold this backend's probe lease, so only one
    /// replica in a cluster probes a circuit whose open time is up.
    no_probe: AtomicBool,
    /// Set when a request would have probed but this replica holds no lease: the
    /// cluster layer then asks for the lease (so it goes where the traffic is).
    probe_demand: AtomicBool,
}

/// What the breaker says about sending one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Pass,
    /// Half-open: go ahead as a probe (report the outcome with `probe = true`).
    Probe,
    /// Open, or half-open with all probes out.
    Refuse,
}

impl Circuit {
    /// The state as shown to operators (an open circuit whose time is up shows as
    /// half-open: the next request will probe).
    pub fn state(&self, now_ns: u64) -> CircuitState {
        match self.state.load(Relaxed) {
            OPEN if now_ns >= self.until_ns.load(Relaxed) => CircuitState::HalfOpen,
            OPEN => CircuitState::Open,
            HALF_OPEN => CircuitState::HalfOpen,
            _ => CircuitState::Closed,
        }
    }

    /// When probes last closed it, if ever (backend-epoch nanoseconds).
    pub fn closed_at_ns(&self) -> Option<u64> {
        self.closed_ns.load(Relaxed).checked_sub(1)
    }

    /// Time left open, if open.
    pub fn remaining(&self, now_ns: u64) -> Option<Duration> {
        (self.state.load(Relaxed) == OPEN)
            .then(|| Duration::from_nanos(self.until_ns.load(Relaxed).saturating_sub(now_ns)))
    }

    /// Whether a request could be let through now (no side effects; for scanning
    /// candidates).
    /// Closed (or no breaker configured): admits whatever the time.
    pub fn is_closed(&self, cfg: Option<&CircuitBreakerConfig>) -> bool {
        cfg.is_none() || self.state.load(Relaxed) == CLOSED
    }

    pub fn admits(&self, now_ns: u64, cfg: Option<&CircuitBreakerConfig>) -> bool {
        let Some(cfg) = cfg else { return true };
        match self.state.load(Relaxed) {
            CLOSED => true,
            // Due: a request may try. Without this replica holding the probe lease,
            // `acquire` refuses it (and records the demand that gets the lease here).
            OPEN => {
                now_ns >= self.until_ns.load(Relaxed)
                    && (self.no_probe.load(Relaxed) || self.probe_room(cfg))
            }
            _ => self.probe_room(cfg),
        }
    }

    fn probe_room(&self, cfg: &CircuitBreakerConfig) -> bool {
        self.probes_in_flight.load(Relaxed) < cfg.half_open_requests.as_u32()
    }

    /// Decides for one chosen request, taking a probe slot when half-open.
    /// Returns the half-open transition when this call made it.
    pub fn acquire(
        &self,
        now_ns: u64,
        cfg: Option<&CircuitBreakerConfig>,
    ) -> (Admission, Option<Transition>) {
        let Some(cfg) = cfg else {
            return (Admission::Pass, None);
        };
        let mut transition = None;
        match self.state.load(Relaxed) {
            CLOSED => return (Admission::Pass, None),
            OPEN => {
                if now_ns < self.until_ns.load(Relaxed) {
                    return (Admission::Refuse, None);
                }
                if self.no_probe.load(Relaxed) {
                    self.probe_demand.store(true, Relaxed);
                    return (Admission::Refuse, None);
                }
                let _g = self.transition.lock();
                if self.state.load(Relaxed) == OPEN {
                    self.probe_successes.store(0, Relaxed);
                    self.state.store(HALF_OPEN, Relaxed);
                    transition = Some(Transition::CircuitHalfOpen);
                }
            }
            _ => {}
        }
        let max = cfg.half_open_requests.as_u32();
        let taken = self
            .probes_in_flight
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_ok();
        let admission = if !taken {
            Admission::Refuse
        } else if self.state.load(Relaxed) == HALF_OPEN {
            Admission::Probe
        } else {
            // Closed (or re-opened) between the load and the slot: give it back.
            self.probes_in_flight.fetch_sub(1, Relaxed);
            if self.state.load(Relaxed) == CLOSED {
                Admission::Pass
            } else {
                Admission::Refuse
            }
        };
        (admission, transition)
    }

    /// Gives back a probe slot for a request that never reached the backend.
    pub fn release_probe(&self) {
        let _ = self
            .probes_in_flight
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }

    /// Accounts one attempt's outcome.
    pub fn record(
        &self,
        probe: bool,
        failed: bool,
        reason: &str,
        now_ns: u64,
        cfg: Option<&CircuitBreakerConfig>,
    ) -> Option<Transition> {
        let cfg = cfg?;
        if probe {
            self.release_probe();
            let _g = self.transition.lock();
            if self.state.load(Relaxed) != HALF_OPEN {
                return None;
            }
            if failed {
                let level = self.level.fetch_add(1, Relaxed) + 1;
                return Some(self.open(cfg, level, now_ns, format!("probe failed: {reason}")));
            }
            let ok = self.probe_successes.fetch_add(1, Relaxed) + 1;
            if ok >= cfg.half_open_requests.as_u32() {
                self.close();
                self.closed_ns.store(now_ns + 1, Relaxed);
                return Some(Transition::CircuitClosed);
            }
            return None;
        }
        if self.state.load(Relaxed) != CLOSED {
            // Answers to requests sent before it opened: not evidence either way.
            return None;
        }
        let rule = Rule {
            consecutive: cfg.failure_threshold.as_u32(),
            min_requests: cfg.min_requests.as_u64(),
            failure_rate: cfg.failure_rate.0,
            window: cfg.window.get(),
        };
        let why = match self.trip.record(failed, now_ns, &rule)? {
            Tripped::Consecutive(n) => format!("{n} consecutive failures (last: {reason})"),
            Tripped::Rate { failures, total } => format!(
                "{failures} of {total} requests failed in the last {} (last: {reason})",
                Dur(rule.window)
            ),
        };
        let _g = self.transition.lock();
        if self.state.load(Relaxed) != CLOSED {
            return None;
        }
        Some(self.open(cfg, self.level.load(Relaxed), now_ns, why))
    }

    /// Opens for the backoff of `level`; caller holds the transition lock.
    fn open(
        &self,
        cfg: &CircuitBreakerConfig,
        level: u32,
        now_ns: u64,
        reason: String,
    ) -> Transition {
        let base = cfg.open_duration.get();
        let d = base
            .checked_mul(1u32.checked_shl(level.min(30)).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX)
            .min(cfg.max_open_duration.get());
        self.until_ns
            .store(now_ns.saturating_add(d.as_nanos() as u64), Relaxed);
        self.state.store(OPEN, Relaxed);
        self.trip.reset_consecutive();
        Transition::CircuitOpened { reason, for_: d }
    }

    fn close(&self) {
        self.state.store(CLOSED, Relaxed);
        self.level.store(0, Relaxed);
        self.probe_successes.store(0, Relaxed);
        self.trip.reset();
    }

    /// Whether this replica may probe when the open time is up (cluster lease).
    pub fn set_may_probe(&self, may: bool) {
        self.no_probe.store(!may, Relaxed);
    }

    /// Whether a request wanted to probe since the last call.
    pub fn take_probe_demand(&self) -> bool {
        self.probe_demand.swap(false, Relaxed)
    }

    /// Applies a state decided elsewhere (another replica, through the store).
    pub fn force(&self, state: CircuitState, until_ns: u64) {
        let _g = self.transition.lock();
        match state {
            CircuitState::Closed => self.close(),
            CircuitState::Open => {
                self.until_ns.store(until_ns, Relaxed);
                self.state.store(OPEN, Relaxed);
                self.trip.reset_consecutive();
            }
            CircuitState::HalfOpen => {
                self.probe_successes.store(0, Relaxed);
                self.state.store(HALF_OPEN, Relaxed);
            }
        }
    }
}
