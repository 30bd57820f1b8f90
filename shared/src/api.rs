//! The admin API's JSON shapes. Field names here are a contract with users' scripts
//! and with the dashboard: extend, do not rename.

use serde::{Deserialize, Serialize};

// === seed endpoints ===

/// One entry of the seed's `GET /metrics` JSON array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsEntry {
    pub url: String,
    /// Receives new traffic (healthy, circuit not open, not ejected, not draining).
    pub alive: bool,
    pub active_conns: u64,
    /// Smoothed (peak-EWMA) upstream latency, nanoseconds.
    pub latency: u64,
    /// Failed upstream attempts since start.
    pub fails: u64,
}

/// Body of `POST /admin/add`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBackendRequest {
    pub url: String,
    /// Defaults to 1. Signed so that a negative weight gets a clear message rather
    /// than a type error.
    #[serde(default)]
    pub weight: Option<i64>,
    /// The service to add it to; absent: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Body of `POST /admin/remove`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveBackendRequest {
    pub url: String,
    /// The service to remove it from; absent: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Answer to a successful admin change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeResponse {
    pub ok: bool,
    pub message: String,
    /// Backend key (`scheme://host:port`) the change applied to.
    pub url: String,
}

/// Every admin error: one line, no internal detail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

// === backends ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CircuitState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }
}

/// Where a backend in the running set comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendSource {
    /// The config file or repository.
    #[default]
    Config,
    /// The runtime overlay (`/admin/add`).
    Admin,
    /// A service's `discover.dns` name (re-resolved as its records' TTL runs out).
    Dns,
}

/// Active health-check verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// No health check configured, or none has concluded yet.
    #[default]
    Unchecked,
    Healthy,
    Unhealthy,
}

/// A passive-health ejection in force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EjectionView {
    pub reason: String,
    /// Milliseconds until the backend returns by itself.
    pub remaining_ms: u64,
    /// Ejections so far (the ejection time grows with it).
    pub count: u32,
}

fn default_service() -> String {
    "default".into()
}

/// One service as `GET /admin/services` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub strategy: String,
    /// Backends in its running set.
    pub backends: usize,
    /// Of those, how many take new traffic.
    pub available: usize,
    pub health_checks: bool,
    pub rate_limited: bool,
    /// Members from DNS, when the service has a `discover` block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryView>,
}

/// A service's DNS discovery as `GET /admin/services` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryView {
    /// The `discover.dns` name followed.
    pub dns: String,
    /// Members the last answer gave.
    pub members: usize,
    /// When the last answer came (ms since the epoch); 0: none yet.
    pub last_resolved_ms: u64,
    /// When the next resolution is due (ms since the epoch).
    pub next_resolve_ms: u64,
    /// Why the last resolution failed (the last answer's set stays), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it failed (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_ms: Option<u64>,
    /// Resolutions failed since the start.
    pub failures: u64,
}

/// One route as `GET /admin/routes` shows it, in evaluation order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    pub index: usize,
    pub name: String,
    /// Its conditions, e.g. `host=api.example.com path_prefix=/v1` (`*`: any).
    pub matches: String,
    /// `service`, `split`, `redirect` or `respond`.
    pub action: String,
    /// Services it sends to, with their weights for a split.
    pub services: Vec<(String, u32)>,
    /// The action's detail: a redirect's status and location, a response's status.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One backend as `GET /admin/backends` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendView {
    pub url: String,
    /// The service it belongs to.
    #[serde(default = "default_service")]
    pub service: String,
    pub weight: u32,
    pub source: BackendSource,
    /// False only when active health checks say so.
    pub healthy: bool,
    pub health: HealthStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    pub circuit: CircuitState,
    pub ejected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection: Option<EjectionView>,
    pub draining: bool,
    /// Whether new requests may be sent to it right now.
    pub available: bool,
    pub active_conns: u64,
    pub requests: u64,
    pub errors: u64,
    /// Peak-EWMA latency, nanoseconds.
    pub latency_ns: u64,
    /// Requests by status class: 1xx..5xx at indexes 0..4.
    pub status_classes: [u64; 5],
    /// Cumulative latency histogram counts, one per [`LATENCY_BUCKETS_S`] bound plus +Inf.
    pub latency_buckets: Vec<u64>,
}

/// Upper bounds (seconds) of the latency histograms, shared by `/metrics`,
/// the cluster view and the dashboard.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Estimates a quantile (0..=1) in seconds from per-bucket (non-cumulative) counts laid
/// out as [`LATENCY_BUCKETS_S`] plus a final +Inf bucket, interpolating linearly inside
/// the bucket the way Prometheus' `histogram_quantile` does. `None` without samples.
pub fn quantile_from_buckets(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if (seen + c) as f64 >= rank {
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BUCKETS_S[i - 1]
            };
            let Some(&upper) = LATENCY_BUCKETS_S.get(i) else {
                // +Inf bucket: the best we can say is "above the last bound".
                return Some(LATENCY_BUCKETS_S[LATENCY_BUCKETS_S.len() - 1]);
            };
            let within = (rank - seen as f64) / c as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        seen += c;
    }
    Some(LATENCY_BUCKETS_S[LATENCY_BUCKETS_S.len() - 1])
}

/// Element-wise `now - before` of two histogram count vectors (a window's worth of
/// samples); a counter that went backwards (a restart) yields `now` as is.
pub fn bucket_delta(now: &[u64], before: &[u64]) -> Vec<u64> {
    if now.len() != before.len() || now.iter().zip(before).any(|(n, b)| n < b) {
        return now.to_vec();
    }
    now.iter().zip(before).map(|(n, b)| n - b).collect()
}

// === health endpoints ===

/// `GET /readyz` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadyView {
    pub ready: bool,
    pub checks: Vec<ReadyCheck>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadyCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

// === cluster ===

/// State-store connectivity as the replica sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct StoreView {
    /// `memory` (embedded, single replica) or `redis`.
    pub kind: String,
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What rate limiting does while the store is unreachable.
    #[serde(default)]
    pub on_store_error: String,
    /// Store commands that failed since start.
    #[serde(default)]
    pub errors: u64,
    /// Redis only: `single`, `sentinel` or `cluster`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topology: String,
    /// Redis only: the node that takes this cluster's writes (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Redis only: times the primary changed since start (failover or restart).
    #[serde(default)]
    pub failovers: u64,
}

/// Per-backend figures a replica publishes in its heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct BackendStats {
    pub url: String,
    pub requests: u64,
    pub errors: u64,
    pub active_conns: u64,
    /// Requests per second over the replica's last stats window.
    pub rps: f64,
    /// Errors per second over the same window.
    pub eps: f64,
    /// Per-bucket latency counts over the same window ([`LATENCY_BUCKETS_S`] + Inf).
    pub window_buckets: Vec<u64>,
    pub circuit: CircuitState,
    pub available: bool,
}

/// One replica in the registry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ReplicaView {
    pub id: String,
    /// Proxy listener address as the replica sees it.
    pub address: String,
    pub admin_address: String,
    pub version: String,
    pub started_at_ms: u64,
    pub uptime_s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_commit: Option<String>,
    pub config_generation: u64,
    /// Digest of the config in force, to tell whether replicas agree.
    #[serde(default)]
    pub config_digest: String,
    pub last_heartbeat_ms: u64,
    #[serde(default)]
    pub is_self: bool,
    #[serde(default)]
    pub backends: Vec<BackendStats>,
}

/// Cluster-wide figures for one backend, summed or merged over live replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ClusterBackendView {
    pub url: String,
    pub rps: f64,
    pub error_rate: f64,
    pub active_conns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Replicas that currently route to it.
    pub available_on: u32,
    pub circuit_open_on: u32,
}

/// `GET /admin/cluster` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ClusterView {
    /// `standalone` or `clustered`.
    pub mode: String,
    pub name: String,
    pub self_id: String,
    pub store: StoreView,
    pub replicas: Vec<ReplicaView>,
    /// All live replicas run the same config commit/generation.
    pub converged: bool,
    pub backends: Vec<ClusterBackendView>,
}

// === config ===

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ConfigSourceView {
    /// `file` or `git`.
    pub kind: String,
    /// File path (file mode) or path inside the repository (git mode).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// A refused config: where and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigErrorView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    pub reason: String,
    pub at_ms: u64,
}

/// Backends that differ between the config source and the running set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct DriftView {
    /// Running (added through the admin API) but not in the config.
    pub only_runtime: Vec<String>,
    /// In the config but removed at runtime.
    pub only_config: Vec<String>,
    /// In both, with a different weight at runtime.
    pub weight_changed: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ReplicaConfigView {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub generation: u64,
}

/// `GET /admin/config` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ConfigStatus {
    pub source: ConfigSourceView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Increases with every applied config.
    pub generation: u64,
    pub applied_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ConfigErrorView>,
    pub drift: DriftView,
    #[serde(default)]
    pub replicas: Vec<ReplicaConfigView>,
    pub converged: bool,
}

// === rate limiting ===

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct RateLimitView {
    pub enabled: bool,
    pub requests_per_second: f64,
    pub burst: u64,
    pub key: String,
    pub admitted: u64,
    pub rejected: u64,
    /// `local`, `cluster` or the fallback in force (`local-fallback`, `allow`, `deny`).
    pub mode: String,
}

// === events and the live stream ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    BackendAdded,
    BackendDraining,
    BackendRemoved,
    HealthChanged,
    CircuitOpened,
    CircuitHalfOpen,
    CircuitClosed,
    Ejected,
    Restored,
    ConfigApplied,
    ConfigRefused,
    StoreDisconnected,
    StoreReconnected,
    ReplicaJoined,
    ReplicaLeft,
}

/// Something that happened, for the event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increases per replica; lets a client de-duplicate after reconnecting.
    pub seq: u64,
    pub at_ms: u64,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub message: String,
    /// The replica the event happened on.
    #[serde(default)]
    pub replica: String,
}

/// Whole-replica counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub in_flight: u64,
    pub rate_limited: u64,
    pub retries: u64,
}

/// What the `GET /admin/events` stream pushes as `event: snapshot` at least once a
/// second; individual [`Event`]s come as `event: event` in between.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct DashboardSnapshot {
    pub at_ms: u64,
    pub replica_id: String,
    pub version: String,
    pub strategy: String,
    pub backends: Vec<BackendView>,
    pub cluster: ClusterView,
    pub config: ConfigStatus,
    pub rate_limit: RateLimitView,
    pub totals: Totals,
    /// Most recent events, oldest first (sent in full so a fresh tab has history).
    pub events: Vec<Event>,
    /// Whether mutating endpoints need a bearer token.
    pub auth_required: bool,
    /// Certificates and ACME, when the replica serves HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsView>,
    /// Services, `default` first.
    #[serde(default)]
    pub services: Vec<ServiceView>,
    /// Routes in evaluation order.
    #[serde(default)]
    pub routes: Vec<RouteView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circuit_state_names_are_the_contract() {
        assert_eq!(
            serde_json::to_string(&CircuitState::HalfOpen).unwrap(),
            "\"half-open\""
        );
        assert_eq!(
            serde_json::to_string(&CircuitState::Open).unwrap(),
            "\"open\""
        );
        assert_eq!(
            serde_json::to_string(&BackendSource::Admin).unwrap(),
            "\"admin\""
        );
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut counts = vec![0u64; LATENCY_BUCKETS_S.len() + 1];
        assert_eq!(quantile_from_buckets(&counts, 0.5), None);
        // 100 samples all in (5ms, 10ms]
        counts[4] = 100;
        let p50 = quantile_from_buckets(&counts, 0.5).unwrap();
        assert!((p50 - 0.0075).abs() < 1e-9, "{p50}");
        // one slow outlier in +Inf moves p99 only to the top bucket
        counts[LATENCY_BUCKETS_S.len()] = 1;
        let p100 = quantile_from_buckets(&counts, 1.0).unwrap();
        assert_eq!(p100, 10.0);
        let p99 = quantile_from_buckets(&counts, 0.99).unwrap();
        assert!(p99 <= 0.01 + 1e-12, "{p99}");
    }

    #[test]
    fn bucket_delta_handles_resets() {
        assert_eq!(bucket_delta(&[5, 7], &[2, 3]), vec![3, 4]);
        assert_eq!(bucket_delta(&[1, 7], &[2, 3]), vec![1, 7]);
        assert_eq!(bucket_delta(&[1], &[2, 3]), vec![1]);
    }
}
