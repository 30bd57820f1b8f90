//! Rates and latency percentiles over a window, from the cumulative counters of two
//! snapshots. The proxy only publishes totals since start; everything "per second" or
//! "recent" on the dashboard is a difference between two of them.

use switchyard_shared::{BackendView, bucket_delta, quantile_from_buckets};

use crate::series::Ring;

/// One backend's cumulative counters at one instant (the snapshot's server time).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    pub requests: u64,
    pub errors: u64,
    /// Per-bucket latency counts since start (`LATENCY_BUCKETS_S` + Inf).
    pub latency_buckets: Vec<u64>,
}

impl Sample {
    pub fn of(at_ms: u64, b: &BackendView) -> Self {
        Self {
            at_ms,
            requests: b.requests,
            errors: b.errors,
            latency_buckets: b.latency_buckets.clone(),
        }
    }
}

/// What happened between two samples.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct WindowStats {
    /// Length of the window, seconds.
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub eps: f64,
    /// Errors per request; `None` without requests.
    pub error_rate: Option<f64>,
    /// Latency percentiles in seconds; `None` without requests.
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
}

/// `now - before` of a cumulative counter; a counter that went backwards was reset
/// (the backend was removed and added again, or the proxy restarted), so everything it
/// counts now happened since.
pub fn counter_delta(now: u64, before: u64) -> u64 {
    if now >= before { now - before } else { now }
}

/// Events per second for `delta` events over `dt_ms` milliseconds (0 if no time passed).
pub fn per_second(delta: u64, dt_ms: u64) -> f64 {
    if dt_ms == 0 {
        0.0
    } else {
        delta as f64 * 1000.0 / dt_ms as f64
    }
}

/// Statistics between `older` and `newer`; `None` unless time moved forward.
pub fn between(older: &Sample, newer: &Sample) -> Option<WindowStats> {
    if newer.at_ms <= older.at_ms {
        return None;
    }
    let dt = newer.at_ms - older.at_ms;
    let reset = newer.requests < older.requests;
    let (requests, errors, buckets) = if reset {
        (newer.requests, newer.errors, newer.latency_buckets.clone())
    } else {
        (
            newer.requests - older.requests,
            counter_delta(newer.errors, older.errors),
            bucket_delta(&newer.latency_buckets, &older.latency_buckets),
        )
    };
    let error_rate = (requests > 0).then(|| (errors as f64 / requests as f64).min(1.0));
    Some(WindowStats {
        seconds: dt as f64 / 1000.0,
        requests,
        errors,
        rps: per_second(requests, dt),
        eps: per_second(errors, dt),
        error_rate,
        p50_s: quantile_from_buckets(&buckets, 0.5),
        p99_s: quantile_from_buckets(&buckets, 0.99),
    })
}

/// The recent samples of one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    samples: Ring<Sample>,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: Ring::new(capacity),
        }
    }

    /// Adds a sample; one not newer than the last is ignored (a repeated snapshot).
    pub fn push(&mut self, s: Sample) {
        if self.samples.last().is_some_and(|l| l.at_ms >= s.at_ms) {
            return;
        }
        self.samples.push(s);
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.last()
    }

    /// The interval since the previous sample (what one chart point shows).
    pub fn last_step(&self) -> Option<WindowStats> {
        let mut it = self.samples.iter().rev();
        let newer = it.next()?;
        let older = it.next()?;
        between(older, newer)
    }

    /// Statistics over (about) the last `window_ms`: from the oldest sample no older
    /// than that to the newest, or over everything kept if the history is shorter.
    pub fn window(&self, window_ms: u64) -> Option<WindowStats> {
        let newer = self.samples.last()?;
        let since = newer.at_ms.saturating_sub(window_ms);
        let older = self
            .samples
            .iter()
            .find(|s| s.at_ms >= since && s.at_ms < newer.at_ms)?;
        between(older, newer)
    }
}

#[cfg(test)]
mod tests;
