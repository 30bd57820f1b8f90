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
mod tests {
    use super::*;
    use switchyard_shared::LATENCY_BUCKETS_S;

    fn sample(at_ms: u64, requests: u64, errors: u64, fast: u64, slow: u64) -> Sample {
        let mut b = vec![0; LATENCY_BUCKETS_S.len() + 1];
        b[4] = fast; // (5 ms, 10 ms]
        b[8] = slow; // (100 ms, 250 ms]
        Sample {
            at_ms,
            requests,
            errors,
            latency_buckets: b,
        }
    }

    #[test]
    fn counters_and_rates() {
        assert_eq!(counter_delta(10, 4), 6);
        assert_eq!(counter_delta(3, 4), 3, "reset counts from zero");
        assert_eq!(per_second(50, 2000), 25.0);
        assert_eq!(per_second(50, 0), 0.0);
    }

    #[test]
    fn between_two_snapshots() {
        let a = sample(1_000, 100, 1, 100, 0);
        let b = sample(3_000, 300, 11, 298, 2);
        let w = between(&a, &b).unwrap();
        assert_eq!(w.requests, 200);
        assert_eq!(w.errors, 10);
        assert_eq!(w.rps, 100.0);
        assert_eq!(w.eps, 5.0);
        assert_eq!(w.error_rate, Some(0.05));
        let p50 = w.p50_s.unwrap();
        assert!((0.005..=0.010).contains(&p50), "{p50}");
        let p99 = w.p99_s.unwrap();
        assert!(
            (0.005..=0.010).contains(&p99),
            "{p99}: 2 of 200 slow is the top 1%"
        );
        assert!(between(&b, &a).is_none(), "time must move forward");
        assert!(between(&a, &a).is_none());
    }

    #[test]
    fn idle_window_has_no_percentiles() {
        let a = sample(1_000, 100, 0, 100, 0);
        let b = sample(2_000, 100, 0, 100, 0);
        let w = between(&a, &b).unwrap();
        assert_eq!(w.rps, 0.0);
        assert_eq!(w.error_rate, None);
        assert_eq!(w.p50_s, None);
        assert_eq!(w.p99_s, None);
    }

    #[test]
    fn reset_counts_everything_since() {
        let a = sample(1_000, 500, 50, 500, 0);
        let b = sample(2_000, 20, 2, 10, 10);
        let w = between(&a, &b).unwrap();
        assert_eq!(w.requests, 20);
        assert_eq!(w.errors, 2);
        assert!(w.p99_s.unwrap() > 0.1, "the slow half is counted");
    }

    #[test]
    fn history_window_and_last_step() {
        let mut h = History::new(100);
        assert!(h.window(10_000).is_none());
        for i in 0..=30u64 {
            // 10 requests per second, one error every second from t=20
            let errors = i.saturating_sub(20);
            h.push(sample(i * 1000, i * 10, errors, i * 10, 0));
        }
        h.push(sample(30_000, 0, 0, 0, 0)); // repeated time: ignored
        assert_eq!(h.latest().unwrap().requests, 300);
        let w = h.window(10_000).unwrap();
        assert_eq!(w.seconds, 10.0);
        assert_eq!(w.rps, 10.0);
        assert_eq!(w.eps, 1.0);
        assert_eq!(w.error_rate, Some(0.1));
        let step = h.last_step().unwrap();
        assert_eq!(step.seconds, 1.0);
        assert_eq!(step.requests, 10);
        // a window longer than the history covers all of it
        assert_eq!(h.window(1_000_000).unwrap().seconds, 30.0);
    }

    #[test]
    fn history_is_bounded() {
        let mut h = History::new(5);
        for i in 0..20u64 {
            h.push(sample(i * 1000, i, 0, i, 0));
        }
        assert_eq!(h.window(1_000_000).unwrap().seconds, 4.0);
    }
}
