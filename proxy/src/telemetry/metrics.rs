//! Proxy-wide counters and the metric names.
//!
//! Names are constants here and nowhere else. Hot-path figures are relaxed atomics
//! (per backend in [`crate::backend::Stats`], proxy-wide in [`Metrics`]); the
//! Prometheus rendering and the OTLP export both read these same cells, so there is
//! one set of instruments with two outputs.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::StatusCode;
use switchyard_shared::LATENCY_BUCKETS_S;

// === names ===

pub const REQUESTS_TOTAL: &str = "switchyard_requests_total";
pub const REQUEST_DURATION: &str = "switchyard_request_duration_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "switchyard_requests_in_flight";
pub const BACKEND_REQUESTS_TOTAL: &str = "switchyard_backend_requests_total";
pub const BACKEND_ERRORS_TOTAL: &str = "switchyard_backend_errors_total";
pub const BACKEND_LATENCY: &str = "switchyard_backend_response_seconds";
pub const BACKEND_ACTIVE: &str = "switchyard_backend_active_requests";
pub const BACKEND_UP: &str = "switchyard_backend_up";
pub const BACKEND_HEALTHY: &str = "switchyard_backend_healthy";
pub const CIRCUIT_STATE: &str = "switchyard_circuit_state";
pub const UPSTREAM_CONNECT: &str = "switchyard_upstream_connect_seconds";
pub const RETRIES_TOTAL: &str = "switchyard_retries_total";
pub const RATE_LIMITED_TOTAL: &str = "switchyard_rate_limited_total";
pub const CONNECTIONS_ACTIVE: &str = "switchyard_connections_active";
pub const CONNECTIONS_REJECTED_TOTAL: &str = "switchyard_connections_rejected_total";
pub const ADMIN_ERRORS_TOTAL: &str = "switchyard_admin_errors_total";
pub const HEALTH_TRANSITIONS_TOTAL: &str = "switchyard_health_transitions_total";
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "switchyard_circuit_transitions_total";
pub const EJECTIONS_TOTAL: &str = "switchyard_ejections_total";
pub const EJECTED: &str = "switchyard_backend_ejected";
pub const STORE_ERRORS_TOTAL: &str = "switchyard_state_store_errors_total";
pub const STORE_CONNECTED: &str = "switchyard_state_store_connected";
pub const REPLICAS: &str = "switchyard_cluster_replicas";
pub const CONFIG_RELOADS_TOTAL: &str = "switchyard_config_reloads_total";
pub const CONFIG_GENERATION: &str = "switchyard_config_generation";
pub const CONFIG_ERROR: &str = "switchyard_config_last_reload_failed";
pub const SPANS_DROPPED_TOTAL: &str = "switchyard_telemetry_spans_dropped_total";
pub const REFUSED_FRAMING_TOTAL: &str = "switchyard_requests_refused_framing_total";
pub const REFUSED_MALFORMED_TOTAL: &str = "switchyard_requests_refused_malformed_total";

/// Proxy-wide figures.
#[derive(Default)]
pub struct Metrics {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    /// Responses to clients by status class (1xx..5xx).
    pub status: [AtomicU64; 5],
    /// Client-visible duration, until the response body ends.
    pub duration: Histogram,
    /// New upstream connections: time to connect.
    pub connect: Histogram,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_rejected: AtomicU64,
    /// Admin requests refused as malformed (4xx).
    pub admin_errors: AtomicU64,
    /// Active health verdict changes.
    pub health_transitions: AtomicU64,
    pub circuits_opened: AtomicU64,
    pub circuits_half_opened: AtomicU64,
    pub circuits_closed: AtomicU64,
    pub ejections: AtomicU64,
    pub restores: AtomicU64,
    /// Configs applied after the first.
    pub config_reloads: AtomicU64,
    /// Config revisions refused.
    pub config_failures: AtomicU64,
    /// Requests refused for ambiguous framing (smuggling-shaped).
    pub refused_framing: AtomicU64,
    /// Request heads refused as malformed, too large or too slow (400/431/408).
    pub refused_malformed: AtomicU64,
    /// The same histograms as OpenTelemetry instruments, while OTLP metrics are on.
    pub otel: std::sync::OnceLock<super::otel::OtelHistograms>,
}

impl Metrics {
    pub fn start_request(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn finish_request(&self, d: Duration) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.duration.record(d);
        if let Some(h) = self.otel.get() {
            h.duration.record(d.as_secs_f64(), &[]);
        }
    }

    pub fn record_connect(&self, d: Duration) {
        self.connect.record(d);
        if let Some(h) = self.otel.get() {
            h.connect.record(d.as_secs_f64(), &[]);
        }
    }

    /// Backend latency for OTLP (the atomic histogram lives in the backend's stats).
    pub fn record_backend_latency(&self, backend: &str, d: Duration) {
        if let Some(h) = self.otel.get() {
            h.backend.record(
                d.as_secs_f64(),
                &[opentelemetry::KeyValue::new("backend", backend.to_string())],
            );
        }
    }

    pub fn count_status(&self, s: StatusCode) {
        let class = (s.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.status[class].fetch_add(1, Relaxed);
    }

    pub fn status_classes(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.status[i].load(Relaxed))
    }
}

/// A fixed-bucket latency histogram ([`LATENCY_BUCKETS_S`] plus +Inf).
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// Bucket bounds in nanoseconds, for a branch-light lookup.
const BUCKET_NS: [u64; LATENCY_BUCKETS_S.len()] = {
    let mut out = [0u64; LATENCY_BUCKETS_S.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = (LATENCY_BUCKETS_S[i] * 1e9) as u64;
        i += 1;
    }
    out
};

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let idx = BUCKET_NS.partition_point(|&b| b < ns);
        self.buckets[idx].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Per-bucket (non-cumulative) counts.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Relaxed)).collect()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Relaxed) as f64 / 1e9
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let h = Histogram::default();
        h.record(Duration::from_micros(100)); // <= 0.5ms
        h.record(Duration::from_micros(500)); // == 0.5ms, same bucket (le)
        h.record(Duration::from_millis(7)); // (5ms, 10ms]
        h.record(Duration::from_secs(60)); // +Inf
        let c = h.counts();
        assert_eq!(c[0], 2);
        assert_eq!(c[4], 1);
        assert_eq!(c[LATENCY_BUCKETS_S.len()], 1);
        assert_eq!(h.count(), 4);
    }
}
