//! A backend's live state: counters, latency estimate, connection pool, health
//! verdict, circuit and ejection. One `Backend` lives as long as the backend stays
//! in the running set, across config reloads, so its state is kept when the config
//! changes.

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use parking_lot::Mutex;
use switchyard_http1::Pool;
use switchyard_shared::validate::BackendUrl;
use switchyard_shared::{BackendSource, HealthStatus};
use tokio::time::Instant;

use crate::config::{Config, Protocol};
use crate::resilience::{Circuit, Outlier, Transition};
use crate::telemetry::metrics::{Histogram, Striped};

/// One upstream server.
pub struct Backend {
    /// As written in the config or the admin call (`http://backend1:80`).
    pub url: Arc<str>,
    /// Canonical identity (`http://backend1:80`, port explicit), scoped by service
    /// outside `default` (`api|http://backend1:80`; see `config::routes::scoped_key`).
    pub key: Arc<str>,
    /// The service it serves.
    pub service: Arc<str>,
    pub target: BackendUrl,
    /// `host:port`, sent as `Host` when the client's is not preserved.
    pub authority: HeaderValue,
    pub stats: Stats,
    pub latency: PeakEwma,
    pub pool: Pool,
    /// The HTTP/2 client's connections to it, for `h2c`/`h2` (the type is
    /// `forward::h2`'s; held here so they live and go with the backend).
    pub h2: OnceLock<Box<dyn Any + Send + Sync>>,
    pub draining: AtomicBool,
    pub health: HealthCell,
    pub circuit: Circuit,
    pub outlier: Outlier,
    /// Slow start: backend-epoch nanoseconds + 1 of when it last joined a running
    /// set or came back from unhealthy (0: never; ejections and circuits keep
    /// their own times).
    ramp_mark: AtomicU64,
    /// Time origin for the atomics that store instants.
    epoch: Instant,
}

/// The share of its weight a backend gets at the start of its slow start.
pub const SLOW_START_FLOOR: f64 = 0.1;

impl Backend {
    /// A backend of the service `default`.
    pub fn new(url: &str, target: BackendUrl) -> Arc<Self> {
        Self::in_service(url, target, crate::config::DEFAULT_SERVICE)
    }

    /// A backend of `service`.
    pub fn in_service(url: &str, target: BackendUrl, service: &str) -> Arc<Self> {
        let epoch = Instant::now();
        let authority = HeaderValue::from_str(&target.authority())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Arc::new(Self {
            url: url.into(),
            key: crate::config::routes::scoped_key(service, &target.key()).into(),
            service: service.into(),
            target,
            authority,
            stats: Stats::default(),
            latency: PeakEwma::default(),
            pool: Pool::default(),
            h2: OnceLock::new(),
            draining: AtomicBool::new(false),
            health: HealthCell::default(),
            circuit: Circuit::default(),
            outlier: Outlier::default(),
            ramp_mark: AtomicU64::new(0),
            epoch,
        })
    }

    /// Nanoseconds from this backend's epoch to `now`.
    pub fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// The instant `nanos` after this backend's epoch.
    pub fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    pub fn active(&self) -> u64 {
        self.stats.active.load(Relaxed)
    }

    /// Starts a slow start at `now` (it joined, or passes health checks again).
    pub fn start_ramp(&self, now: Instant) {
        self.ramp_mark.store(self.nanos(now) + 1, Relaxed);
    }

    /// The slow-start factor at `now` for a `window`: [`SLOW_START_FLOOR`] when it
    /// has just joined or come back (from unhealthy, an ejection, an open circuit),
    /// rising linearly to 1 at the end of the window; 1 when none of that happened
    /// within it.
    pub fn ramp(&self, now: Instant, window: Duration) -> f64 {
        // Three loads decide the usual case (never came back from anything); an
        // ejection's end is known in advance (in the future while it lasts, when
        // it is not picked anyway).
        let since = self
            .ramp_mark
            .load(Relaxed)
            .checked_sub(1)
            .max(self.circuit.closed_at_ns())
            .max(Some(self.outlier.last_end_ns()).filter(|&e| e != 0));
        let Some(since) = since else { return 1.0 };
        let elapsed = self.nanos(now).saturating_sub(since);
        let window = window.as_nanos() as u64;
        if window == 0 || elapsed >= window {
            return 1.0;
        }
        SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * elapsed as f64 / window as f64
    }

    /// Follows a health verdict change: back from unhealthy starts a slow start.
    pub fn health_changed(&self, before: HealthStatus, after: HealthStatus, now: Instant) {
        if before == HealthStatus::Unhealthy && after != HealthStatus::Unhealthy {
            self.start_ramp(now);
        }
    }
}

/// How one attempt on a backend ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered (a 5xx still counts as a failure).
    Response {
        status: StatusCode,
        ttfb: Duration,
    },
    ConnectFailed,
    /// No response headers within `timeouts.request`.
    TimedOut,
    /// The connection broke before the response.
    Lost,
    /// A gRPC call that ended with `grpc-status: code` (in the trailers, or in
    /// the head of a trailers-only answer); `status` is the HTTP one (200).
    Grpc {
        status: StatusCode,
        code: u32,
        ttfb: Duration,
    },
}

impl Outcome {
    pub fn failed(&self) -> bool {
        match self {
            Outcome::Response { status, .. } => status.is_server_error(),
            Outcome::Grpc { status, code, .. } => {
                status.is_server_error() || grpc_code_failed(*code)
            }
            _ => true,
        }
    }
}

/// gRPC codes that say the server failed (what Envoy maps to a 5xx: UNKNOWN,
/// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); the others
/// are the caller's (NOT_FOUND, INVALID_ARGUMENT, ...) or OK.
pub fn grpc_code_failed(code: u32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// The name of a gRPC status code, for reasons and logs.
pub fn grpc_code_name(code: u32) -> &'static str {
    crate::config::types::GRPC_CODE_NAMES
        .get(code as usize)
        .copied()
        .unwrap_or("UNKNOWN")
}

impl Outcome {
    /// Short description for logs and ejection reasons.
    pub fn describe(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Outcome::Response { status, .. } => format!("HTTP {}", status.as_u16()).into(),
            Outcome::Grpc { code, .. } => {
                format!("grpc-status {code} ({})", grpc_code_name(*code)).into()
            }
            Outcome::ConnectFailed => "connect failed".into(),
            Outcome::TimedOut => "timed out".into(),
            Outcome::Lost => "connection lost".into(),
        }
    }
}

/// Policy transitions caused by one recorded attempt.
#[derive(Debug, Default)]
pub struct Recorded {
    pub circuit: Option<Transition>,
    pub outlier: Option<Transition>,
}

impl Backend {
    /// Accounts one attempt that began at `started` and ended at `now`: counters,
    /// latency estimate, and the circuit-breaker and passive-health policies of
    /// `cfg` (`peers`, the running set this backend is in, bound ejections).
    /// `probe` says whether the attempt was a half-open circuit probe. (The
    /// request path calls it through `Backend::record_at`, given its snapshot.)
    pub fn account(
        &self,
        outcome: Outcome,
        started: Instant,
        now: Instant,
        probe: bool,
        cfg: &Config,
        peers: &[Member],
    ) -> Recorded {
        let failed = outcome.failed();
        let mut slow = false;
        if let Outcome::Response { status, ttfb } | Outcome::Grpc { status, ttfb, .. } = outcome {
            self.stats.requests.fetch_add(1, Relaxed);
            let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
            self.stats.status[class].fetch_add(1, Relaxed);
            self.stats.latency.record(ttfb);
            slow = cfg
                .circuit_breaker
                .as_ref()
                .and_then(|c| c.slow_call_threshold)
                .is_some_and(|t| ttfb > t.get());
        }
        if failed {
            self.stats.errors.fetch_add(1, Relaxed);
        }
        let mut rtt = now.saturating_duration_since(started);
        if failed {
            rtt = rtt.max(cfg.adaptive.failure_penalty.get());
        }
        let tau = (cfg.adaptive.decay.get().as_secs_f64() * 1e9).max(1.0);
        let now_ns = self.nanos(now);
        self.latency
            .observe(rtt.as_secs_f64() * 1e9, failed, now_ns, tau);

        let cb = cfg.circuit_breaker.as_ref();
        let od = cfg.outlier_detection.as_ref();
        if cb.is_none() && od.is_none() {
            return Recorded::default();
        }
        let reason = if failed {
            outcome.describe()
        } else if slow {
            "slower than slow_call_threshold".into()
        } else {
            "".into()
        };
        let circuit = self
            .circuit
            .record(probe, failed || slow, &reason, now_ns, cb);
        let ejected = || {
            peers
                .iter()
                .filter(|m| m.backend.outlier.is_ejected(m.backend.nanos(now)))
                .count()
        };
        let outlier = self
            .outlier
            .record(failed, &reason, now_ns, od, &ejected, peers.len());
        Recorded { circuit, outlier }
    }

    /// Whether new requests may go here now: not draining, not failing active
    /// health checks, not ejected, circuit not open.
    pub fn available(&self, now: Instant, cfg: &Config) -> bool {
        let cb = cfg.circuit_breaker.as_ref();
        if self.is_draining() || !self.health.is_healthy() {
            return false;
        }
        // The usual case needs no time arithmetic: never ejected, circuit closed.
        if !self.outlier.ever_ejected() && self.circuit.is_closed(cb) {
            return true;
        }
        let ns = self.nanos(now);
        !self.outlier.is_ejected(ns) && self.circuit.admits(ns, cb)
    }

    /// Whether requests may go here when too few backends are available and the
    /// balancer stops trusting health (panic mode): anything not draining whose
    /// circuit is not open. An open circuit is never overridden.
    pub fn routable_in_panic(&self, now: Instant, cfg: &Config) -> bool {
        !self.is_draining()
            && self
                .circuit
                .admits(self.nanos(now), cfg.circuit_breaker.as_ref())
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A backend in one snapshot: the shared live state plus this config's view of it.
#[derive(Clone, Debug)]
pub struct Member {
    pub backend: Arc<Backend>,
    pub weight: u32,
    pub source: BackendSource,
    /// Health-check path for this backend (config override or the default).
    pub health_path: Option<Arc<str>>,
    /// How the proxy speaks to it (`http1`, `h2c`, `h2`).
    pub protocol: Protocol,
}

// === impl HealthCell ===

/// A backend's active-health verdict.
#[derive(Default)]
pub struct HealthCell {
    status: AtomicU8,
    passes: AtomicU32,
    fails: AtomicU32,
    reason: Mutex<Option<String>>,
}

const UNCHECKED: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;

impl HealthCell {
    pub fn status(&self) -> HealthStatus {
        match self.status.load(Relaxed) {
            HEALTHY => HealthStatus::Healthy,
            UNHEALTHY => HealthStatus::Unhealthy,
            _ => HealthStatus::Unchecked,
        }
    }

    /// Unchecked counts as healthy: without checks every backend is presumed up.
    pub fn is_healthy(&self) -> bool {
        self.status.load(Relaxed) != UNHEALTHY
    }

    /// Why it is unhealthy (the last failed probe), if it is.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().clone()
    }

    /// Accounts one probe; returns the new status when it changed.
    pub fn observe(
        &self,
        pass: bool,
        detail: &str,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<HealthStatus> {
        let mut reason = self.reason.lock();
        let current = self.status.load(Relaxed);
        let next = if pass {
            self.fails.store(0, Relaxed);
            let passes = self.passes.fetch_add(1, Relaxed) + 1;
            match current {
                UNHEALTHY if passes >= healthy_threshold => HEALTHY,
                UNCHECKED => HEALTHY,
                s => s,
            }
        } else {
            self.passes.store(0, Relaxed);
            let fails = self.fails.fetch_add(1, Relaxed) + 1;
            if current != UNHEALTHY && fails >= unhealthy_threshold {
                UNHEALTHY
            } else {
                current
            }
        };
        if !pass {
            *reason = Some(detail.to_string());
        } else if next == HEALTHY {
            *reason = None;
        }
        if next == current {
            return None;
        }
        self.status.store(next, Relaxed);
        Some(self.status())
    }

    /// Sets the verdict outright (checks switched off, or decided by another replica).
    pub fn set(&self, status: HealthStatus, reason: Option<String>) {
        let mut r = self.reason.lock();
        self.status.store(
            match status {
                HealthStatus::Unchecked => UNCHECKED,
                HealthStatus::Healthy => HEALTHY,
                HealthStatus::Unhealthy => UNHEALTHY,
            },
            Relaxed,
        );
        self.passes.store(0, Relaxed);
        self.fails.store(0, Relaxed);
        *r = reason;
    }
}

// === impl Stats ===

/// Request counters; all relaxed atomics (figures, not synchronisation).
#[derive(Default)]
pub struct Stats {
    /// Requests in flight (response not finished).
    pub active: AtomicU64,
    /// Attempts that got a response.
    pub requests: Striped,
    /// Failed attempts: connect error, timeout, lost connection, 5xx.
    pub errors: Striped,
    /// Responses by status class (1xx..5xx).
    pub status: [Striped; 5],
    /// Time to response headers.
    pub latency: Histogram,
}

impl Stats {
    pub fn status_classes(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.status[i].load(Relaxed))
    }
}

// === impl PeakEwma ===

/// Peak-EWMA latency estimate (Finagle/linkerd): a sample above the estimate
/// replaces it at once (peaks are believed immediately); a sample below it is
/// blended in with weight `1 - e^(-Δt/τ)`, so the estimate decays with *time*, not
/// with request count. Read back, the estimate keeps decaying towards zero while no
/// samples arrive, so a backend that was avoided for being slow gets re-probed after
/// a while instead of being shunned forever.
///
/// The recent error rate is tracked beside it as an EWMA over attempts
/// (α = 1/16), read back with the same time decay.
pub struct PeakEwma {
    /// f64 bits, nanoseconds. Meaningful once `samples > 0`.
    cost: AtomicU64,
    /// f64 bits, share of failed attempts.
    errors: AtomicU64,
    /// Backend-epoch nanoseconds of the last sample.
    stamp: AtomicU64,
    samples: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self {
            cost: AtomicU64::new(0f64.to_bits()),
            errors: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(0),
            samples: AtomicU64::new(0),
        }
    }
}

/// Weight given to one attempt in the error-rate EWMA.
const ERROR_ALPHA: f64 = 1.0 / 16.0;

impl PeakEwma {
    /// Records one attempt that took `rtt` and failed or not, at `now_ns`.
    /// Concurrent updates may lose one sample; this is an estimate, not an account.
    pub fn observe(&self, rtt_ns: f64, failed: bool, now_ns: u64, tau_ns: f64) {
        let prev = f64::from_bits(self.cost.load(Relaxed));
        let last = self.stamp.load(Relaxed);
        let first = self.samples.fetch_add(1, Relaxed) == 0;
        let next = if first || rtt_ns > prev {
            rtt_ns
        } else {
            let w = (-(now_ns.saturating_sub(last) as f64) / tau_ns).exp();
            prev * w + rtt_ns * (1.0 - w)
        };
        self.cost.store(next.to_bits(), Relaxed);
        let err = f64::from_bits(self.errors.load(Relaxed));
        let err = err * (1.0 - ERROR_ALPHA) + if failed { ERROR_ALPHA } else { 0.0 };
        self.errors.store(err.to_bits(), Relaxed);
        self.stamp.store(now_ns.max(last), Relaxed);
    }

    /// Latency estimate at `now_ns` (decayed since the last sample), or `None`
    /// before the first sample.
    pub fn latency_ns(&self, now_ns: u64, tau_ns: f64) -> Option<f64> {
        if self.samples.load(Relaxed) == 0 {
            return None;
        }
        Some(f64::from_bits(self.cost.load(Relaxed)) * self.decay(now_ns, tau_ns))
    }

    /// Recent share of failed attempts at `now_ns`.
    pub fn error_rate(&self, now_ns: u64, tau_ns: f64) -> f64 {
        f64::from_bits(self.errors.load(Relaxed)) * self.decay(now_ns, tau_ns)
    }

    /// The raw estimate without decay (for display), nanoseconds.
    pub fn raw_ns(&self) -> u64 {
        f64::from_bits(self.cost.load(Relaxed)) as u64
    }

    fn decay(&self, now_ns: u64, tau_ns: f64) -> f64 {
        let idle = now_ns.saturating_sub(self.stamp.load(Relaxed)) as f64;
        (-idle / tau_ns).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: f64 = 10e9;

    #[test]
    fn peaks_are_believed_at_once_and_decay_with_time() {
        let e = PeakEwma::default();
        assert_eq!(e.latency_ns(0, TAU), None);
        e.observe(1e6, false, 0, TAU);
        assert_eq!(e.latency_ns(0, TAU), Some(1e6));
        e.observe(50e6, false, 1_000, TAU);
        assert_eq!(e.latency_ns(1_000, TAU), Some(50e6));
        // a fast sample right after barely moves a peak ...
        e.observe(1e6, false, 2_000, TAU);
        assert!(e.latency_ns(2_000, TAU).unwrap() > 49e6);
        // ... one a τ later moves it most of the way
        e.observe(1e6, false, 10_000_002_000, TAU);
        let v = e.latency_ns(10_000_002_000, TAU).unwrap();
        assert!(v < 20e6 && v > 1e6, "{v}");
        // unobserved, it decays towards zero
        let later = e.latency_ns(100_000_000_000, TAU).unwrap();
        assert!(later < v / 1000.0, "{later}");
    }

    #[test]
    fn thresholds_decide_transitions() {
        let h = HealthCell::default();
        assert_eq!(h.status(), HealthStatus::Unchecked);
        assert!(h.is_healthy());
        // first pass confirms it
        assert_eq!(h.observe(true, "ok", 2, 3), Some(HealthStatus::Healthy));
        assert_eq!(h.observe(false, "503", 2, 3), None);
        assert_eq!(h.observe(false, "503", 2, 3), None);
        assert_eq!(h.observe(false, "503", 2, 3), Some(HealthStatus::Unhealthy));
        assert!(!h.is_healthy());
        assert_eq!(h.reason().as_deref(), Some("503"));
        // one pass is not enough to come back with healthy_threshold 2
        assert_eq!(h.observe(true, "ok", 2, 3), None);
        assert_eq!(h.observe(false, "503", 2, 3), None);
        assert_eq!(h.observe(true, "ok", 2, 3), None);
        assert_eq!(h.observe(true, "ok", 2, 3), Some(HealthStatus::Healthy));
        assert_eq!(h.reason(), None);
    }

    #[test]
    fn unchecked_goes_down_after_the_threshold() {
        let h = HealthCell::default();
        assert_eq!(h.observe(false, "refused", 2, 2), None);
        assert!(h.is_healthy());
        assert_eq!(
            h.observe(false, "refused", 2, 2),
            Some(HealthStatus::Unhealthy)
        );
    }

    #[test]
    fn error_rate_tracks_failures() {
        let e = PeakEwma::default();
        for _ in 0..64 {
            e.observe(1e6, true, 0, TAU);
        }
        assert!(e.error_rate(0, TAU) > 0.9);
        for _ in 0..64 {
            e.observe(1e6, false, 0, TAU);
        }
        assert!(e.error_rate(0, TAU) < 0.1);
    }
}
