//! Passive health: ejecting backends that fail real traffic (outlier detection).
//!
//! Semantics, stated precisely because peers differ here:
//! - A failure is a connect error, a timeout, a lost connection or a 5xx.
//! - A backend is ejected after `consecutive_failures` failures in a row, or when at
//!   least `min_requests` attempts in the last `window` failed at a share of
//!   `failure_rate` or more.
//! - It is ejected for `base_ejection_time × n` (capped at `max_ejection_time`),
//!   where `n` counts its ejections; `n` starts again from zero once the backend has
//!   gone a full `max_ejection_time` without being ejected.
//! - It **returns by itself** when the time is up, with its failure counts cleared
//!   (unlike Kong #7566, where a passively failed target never comes back).
//! - `max_ejection_percent` is strict: at most `floor(backends × percent / 100)` are
//!   ejected at once, so with 2 backends and 50 % one may be ejected, and with a
//!   single backend none ever is (Envoy #3263 ejects at least one regardless).
//! - Ejection only steers traffic away; when too few backends are left the panic
//!   threshold (see `snapshot`) sends traffic to ejected ones too.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

use super::{Rule, Transition, Trip, Tripped};
use crate::config::OutlierConfig;

#[derive(Default)]
pub struct Outlier {
    /// Backend-epoch nanoseconds until which it is ejected (0: not ejected).
    until_ns: AtomicU64,
    count: AtomicU32,
    /// When the last ejection ended (backend-epoch nanoseconds).
    last_end_ns: AtomicU64,
    trip: Trip,
    reason: Mutex<Option<String>>,
}

impl Outlier {
    /// Whether this backend was ever ejected (only then does `is_ejected` need
    /// the time).
    pub fn ever_ejected(&self) -> bool {
        self.until_ns.load(Relaxed) != 0
    }

    /// When the last ejection ends or ended (backend-epoch nanoseconds; 0: never
    /// ejected).
    pub fn last_end_ns(&self) -> u64 {
        self.last_end_ns.load(Relaxed)
    }

    pub fn is_ejected(&self, now_ns: u64) -> bool {
        let until = self.until_ns.load(Relaxed);
        until != 0 && now_ns < until
    }

    /// Remaining ejection time and the reason, if ejected.
    pub fn ejection(&self, now_ns: u64) -> Option<(Duration, String, u32)> {
        if !self.is_ejected(now_ns) {
            return None;
        }
        let left = Duration::from_nanos(self.until_ns.load(Relaxed).saturating_sub(now_ns));
        let reason = self.reason.lock().clone().unwrap_or_default();
        Some((left, reason, self.count.load(Relaxed)))
    }

    /// Accounts one attempt. `ejected_now` and `pool` are the number of backends
    /// currently ejected and in the pool, for the `max_ejection_percent` cap.
    pub fn record(
        &self,
        failed: bool,
        reason: &str,
        now_ns: u64,
        cfg: Option<&OutlierConfig>,
        ejected_now: &dyn Fn() -> usize,
        pool: usize,
    ) -> Option<Transition> {
        let cfg = cfg?;
        if self.is_ejected(now_ns) {
            return None;
        }
        let rule = Rule {
            consecutive: cfg.consecutive_failures.as_u32(),
            min_requests: cfg.min_requests.as_u64(),
            failure_rate: cfg.failure_rate.0,
            window: cfg.window.get(),
        };
        let why = match self.trip.record(failed, now_ns, &rule)? {
            Tripped::Consecutive(n) => format!("{n} consecutive failures (last: {reason})"),
            Tripped::Rate { failures, total } => {
                format!("{failures} of {total} requests failed (last: {reason})")
            }
        };
        let allowed = pool * cfg.max_ejection_percent.as_usize() / 100;
        let mut reason_slot = self.reason.lock();
        if self.is_ejected(now_ns) || ejected_now() + 1 > allowed {
            return None;
        }
        let last_end = self.last_end_ns.load(Relaxed);
        let quiet =
            now_ns.saturating_sub(last_end) >= cfg.max_ejection_time.get().as_nanos() as u64;
        if last_end != 0 && quiet {
            self.count.store(0, Relaxed);
        }
        let n = self.count.fetch_add(1, Relaxed) + 1;
        let d = cfg
            .base_ejection_time
            .get()
            .checked_mul(n)
            .unwrap_or(Duration::MAX)
            .min(cfg.max_ejection_time.get());
        let until = now_ns.saturating_add(d.as_nanos() as u64).max(1);
        self.until_ns.store(until, Relaxed);
        self.last_end_ns.store(until, Relaxed);
        *reason_slot = Some(why.clone());
        Some(Transition::Ejected {
            reason: why,
            for_: d,
            count: n,
        })
    }

    /// Ends an ejection whose time is up; returns `Restored` once per ejection.
    pub fn expire(&self, now_ns: u64) -> Option<Transition> {
        let until = self.until_ns.load(Relaxed);
        if until == 0 || now_ns < until {
            return None;
        }
        if self
            .until_ns
            .compare_exchange(until, 0, Relaxed, Relaxed)
            .is_err()
        {
            return None;
        }
        self.trip.reset();
        *self.reason.lock() = None;
        Some(Transition::Restored)
    }

    /// Applies an ejection decided elsewhere (another replica).
    pub fn force(&self, until_ns: u64, count: u32, reason: String) {
        let mut slot = self.reason.lock();
        self.until_ns.store(until_ns, Relaxed);
        self.last_end_ns.store(until_ns, Relaxed);
        self.count.store(count, Relaxed);
        *slot = Some(reason);
    }
}
