//! The YAML config: schema, defaults, loading and validation.
//!
//! The seed's file loads unchanged; everything beyond `server`, `strategy` and
//! `backends` is optional. Every error names the file, the line and the field
//! (`config.yaml:7: backends[0].weight: ...`), which is also what `switchyard check`
//! prints for pre-merge CI of a config repository.

pub mod dns;
mod locate;
pub mod routes;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod types;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde::{Deserialize, Serialize};
use switchyard_shared::validate::Scheme;

pub use dns::{DiscoverConfig, DnsConfig};
pub use locate::LineIndex;
pub use routes::{DEFAULT_SERVICE, RouteConfig, ServiceConfig, StickyKey};
pub use types::{
    Cidr, Count, Dur, GrpcCode, HealthKind, Int, Percent, Positive, Protocol, Ratio, Strategy, Url,
    Weight,
};

/// The whole, validated configuration. Immutable once built; a reload builds a new one.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// `round-robin` (default), `least-connections`, `adaptive` or `consistent-hash`. The seed's copies
    /// also put it under `server:`; both are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retries: Retries,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub adaptive: AdaptiveConfig,
    /// Tuning of the `consistent-hash` strategy: the request key and the load bound.
    #[serde(default)]
    pub consistent_hash: ConsistentHashConfig,
    /// Slow start window: a backend that joins, or returns from unhealthy, ejected
    /// or an open circuit, ramps from 10 % to its full weight over it (off when
    /// unset or `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<Dur>,
    /// Percent of backends that must be available before the balancer stops
    /// trusting health: below it, traffic spreads over every backend whose circuit is
    /// not open (Envoy's "panic mode"). 0 disables.
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: Percent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitops: Option<GitopsConfig>,
    /// The HTTPS listener (off unless configured); see [`tls::TlsConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<tls::TlsConfig>,
    /// Named pools beside `default` (see [`routes`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub services: std::collections::BTreeMap<String, ServiceConfig>,
    /// Evaluated in order, first match wins; unmatched requests go to `default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// Members of the service `default` found by DNS (beside `backends`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discover: Option<DiscoverConfig>,
    /// The resolver every `discover` block uses.
    #[serde(default, skip_serializing_if = "is_default_dns")]
    pub dns: DnsConfig,
}

fn is_default_dns(d: &DnsConfig) -> bool {
    *d == DnsConfig::default()
}

fn is_http1(p: &Protocol) -> bool {
    *p == Protocol::Http1
}

fn default_panic_threshold() -> Percent {
    Int(50)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            strategy: None,
            backends: Vec::new(),
            timeouts: Timeouts::default(),
            retries: Retries::default(),
            upstream: UpstreamConfig::default(),
            adaptive: AdaptiveConfig::default(),
            consistent_hash: ConsistentHashConfig::default(),
            slow_start: None,
            panic_threshold: default_panic_threshold(),
            health_check: None,
            outlier_detection: None,
            circuit_breaker: None,
            rate_limit: None,
            cluster: None,
            telemetry: TelemetryConfig::default(),
            logging: LoggingConfig::default(),
            admin: AdminConfig::default(),
            gitops: None,
            tls: None,
            services: Default::default(),
            routes: Vec::new(),
            discover: None,
            dns: DnsConfig::default(),
        }
    }
}

impl Config {
    /// The `slow_start` window in force: `None` when unset or `0s` (off).
    pub fn slow_start_window(&self) -> Option<std::time::Duration> {
        self.slow_start.map(|d| d.get()).filter(|d| !d.is_zero())
    }

    /// The strategy, wherever the file put it.
    pub fn strategy(&self) -> Strategy {
        self.strategy.or(self.server.strategy).unwrap_or_default()
    }
}

/// Listeners and client-side limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Proxy listener port (0 picks a free one).
    pub port: u16,
    /// Admin listener port (API, `/metrics`, `/dashboard/`; 0 picks a free one).
    pub admin_port: u16,
    /// Address the proxy listener binds.
    pub bind: IpAddr,
    /// Address the admin listener binds. Without an admin token it is forced to
    /// loopback whatever this says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_bind: Option<IpAddr>,
    /// Seed compatibility: the strategy may live here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Runtime worker threads; 0 = one per CPU available to the process.
    pub threads: Int<0, 1024>,
    /// Client connections held at once; further ones get a 503 and are closed.
    pub max_connections: Int<1, 10_000_000>,
    /// Largest request head (request line + headers), bytes; larger gets 431.
    pub max_header_bytes: Int<1024, 1_048_576>,
    /// Most request headers; more gets 431.
    pub max_headers: Int<8, 1000>,
    /// Time a client has to send a complete request head; also bounds how long an
    /// idle keep-alive connection is kept.
    pub header_read_timeout: Dur,
    /// Longest wait for a client to take more response bytes (an HTTP/1.1 socket
    /// write, an HTTP/2 flow-control window), and for a backend to take more of an
    /// upload; past it the client's connection or stream and the backend exchange
    /// are closed.
    pub send_timeout: Dur,
    /// Accept HTTP/2 with prior knowledge (h2c) beside HTTP/1.1.
    pub http2: bool,
    /// Streams one HTTP/2 client connection may have open at once (more are
    /// refused by the protocol's own SETTINGS limit).
    pub http2_max_concurrent_streams: Int<1, 100_000>,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    pub grace_period: Dur,
    /// Peers whose `X-Forwarded-For`/`-Proto`/`-Host` are believed and extended;
    /// from anyone else these headers are replaced.
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            port: 8080,
            admin_port: 8081,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            admin_bind: None,
            strategy: None,
            threads: Int(0),
            max_connections: Int(20_000),
            max_header_bytes: Int(64 * 1024),
            max_headers: Int(100),
            header_read_timeout: Dur::secs(10),
            send_timeout: Dur::secs(30),
            http2: true,
            http2_max_concurrent_streams: Int(256),
            grace_period: Dur::secs(30),
            trusted_proxies: Vec::new(),
        }
    }
}

/// One backend of the config.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `http://host[:port]` or `https://host[:port]`.
    pub url: Url,
    /// Share of traffic relative to the others, 1..=1000.
    #[serde(default)]
    pub weight: Weight,
    /// Overrides `health_check.path` for this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_path: Option<String>,
    /// `http1` (default), `h2c` (HTTP/2 without TLS, `http://` URLs) or `h2`
    /// (HTTP/2 over TLS by ALPN, `https://` URLs, with the `tls:` settings below).
    #[serde(default, skip_serializing_if = "is_http1")]
    pub protocol: Protocol,
    /// TLS settings for an `https` backend (verification, CA, SNI name, client
    /// certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<tls::UpstreamTls>,
}

/// Upstream timeouts.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP (and TLS) connect to a backend.
    pub connect: Dur,
    /// From sending the request until the backend's response headers arrive (504 after).
    pub request: Dur,
    /// How long an unused pooled upstream connection is kept.
    pub idle: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Dur::secs(2),
            request: Dur::secs(30),
            idle: Dur::secs(60),
        }
    }
}

/// Retries on another backend.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Extra attempts, each on a backend not tried yet. Connect failures are retried
    /// for every method (nothing was sent); a connection lost before the response
    /// only for idempotent requests without a body. 0 disables.
    pub attempts: Int<0, 5>,
    /// Answers that are retried too, on another backend, for idempotent requests
    /// without a body (e.g. `[502, 503, 504]`; Envoy's `retry_on: 5xx`). The
    /// backend's answer is dropped, not shown to the client, unless no attempt is left.
    pub on_status: Vec<Int<100, 599>>,
    /// gRPC calls answered trailers-only (no response message) with one of these
    /// `grpc-status` codes are replayed on another backend, when the whole request
    /// body was kept (see `replay_buffer_bytes`); e.g. `[14]` or `[UNAVAILABLE]`
    /// (Envoy's `retry_on: unavailable`, gRPC's `retryableStatusCodes`). Empty (the
    /// default): no call is replayed, as a non-idempotent method may have acted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_grpc_status: Vec<GrpcCode>,
    /// Largest request body, bytes, kept for replaying a gRPC call when
    /// `on_grpc_status` is set: a copy of what is forwarded, dropped past this
    /// (the call then is not replayed).
    pub replay_buffer_bytes: Int<0, 16_777_216>,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: Int(1),
            on_status: Vec::new(),
            on_grpc_status: Vec::new(),
            replay_buffer_bytes: Int(64 * 1024),
        }
    }
}

/// Upstream connection handling.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Idle keep-alive connections kept per backend.
    pub max_idle_per_backend: Int<0, 100_000>,
    /// Pass the client's `Host` header on (true, like HAProxy and Envoy) or send
    /// the backend's own `host:port` (false, like nginx's default).
    pub preserve_host: bool,
    /// Extra CA certificates (PEM) trusted for `https` backends, beside the
    /// built-in Mozilla roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The HTTP/2 client for `h2c`/`h2` backends.
    pub http2: UpstreamHttp2,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            max_idle_per_backend: Int(256),
            preserve_host: true,
            ca_file: None,
            http2: UpstreamHttp2::default(),
        }
    }
}

/// The HTTP/2 client to `h2c`/`h2` backends: streams share connections, and a
/// connection is added when every open one carries `max_concurrent_streams`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamHttp2 {
    /// Streams the proxy puts on one backend connection at once (the backend's own
    /// SETTINGS limit, if lower, is respected too: the rest wait for a stream).
    pub max_concurrent_streams: Int<1, 10_000>,
    /// Connections kept per backend at most; past them, streams wait on the least
    /// loaded one.
    pub max_connections_per_backend: Int<1, 1000>,
    /// A PING sent this often; no answer within `keepalive_timeout` closes the
    /// connection.
    pub keepalive_interval: Dur,
    pub keepalive_timeout: Dur,
    /// A backend connection with no stream for this long is closed.
    pub idle_timeout: Dur,
    /// A response stream with no frame from the backend for this long is reset
    /// (long streams are fine while they move; abandoned ones are not kept).
    pub stream_idle_timeout: Dur,
    /// Largest response header list accepted from a backend, bytes.
    pub max_header_list_size: Int<1024, 16_777_216>,
    /// Flow-control window per stream, bytes: what a backend may send ahead of
    /// the client reading it (the bound on buffering per stream).
    pub stream_window: Int<65_535, 16_777_215>,
}

impl Default for UpstreamHttp2 {
    fn default() -> Self {
        Self {
            max_concurrent_streams: Int(100),
            max_connections_per_backend: Int(16),
            keepalive_interval: Dur::secs(30),
            keepalive_timeout: Dur::secs(10),
            idle_timeout: Dur::secs(60),
            stream_idle_timeout: Dur::secs(300),
            max_header_list_size: Int(64 * 1024),
            stream_window: Int(1024 * 1024),
        }
    }
}

/// Tuning of the `adaptive` strategy (see `balance::adaptive`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConfig {
    /// Time constant of the latency and error-rate decay.
    pub decay: Dur,
    /// Latency assumed for a backend with no samples yet.
    pub default_latency: Dur,
    /// How strongly the recent error rate raises a backend's cost.
    pub error_penalty: Positive,
    /// Latency a failed attempt counts as (if it was not slower), so a backend that
    /// fails fast never looks cheap.
    pub failure_penalty: Dur,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            decay: Dur::secs(10),
            default_latency: Dur::millis(1),
            error_penalty: Positive(10.0),
            failure_penalty: Dur::secs(1),
        }
    }
}

/// Tuning of the `consistent-hash` strategy (see `balance::consistent`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistentHashConfig {
    /// What is hashed: `header:<Name>`, `cookie:<name>`, `client_ip` (default) or
    /// `path`. A request without it goes to a random point of the ring.
    pub key: StickyKey,
    /// Bounded loads: no backend takes more than `(1 + balance_factor) ×` the mean
    /// in-flight load (Envoy `hash_balance_factor`, HAProxy `hash-balance-factor`,
    /// here as a fraction: 0.25 is HAProxy's 125).
    pub balance_factor: Positive,
}

impl Default for ConsistentHashConfig {
    fn default() -> Self {
        Self {
            key: StickyKey::ClientIp,
            balance_factor: Positive(0.25),
        }
    }
}

/// Active health checks.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// `http` (GET `path`) or `grpc` (`grpc.health.v1.Health/Check` for `service`,
    /// over HTTP/2: h2c for `http://` backends, h2 for `https://` ones).
    pub kind: HealthKind,
    /// The gRPC service asked about (`""`: the server as a whole).
    pub service: String,
    /// GET this path on each backend.
    pub path: String,
    pub interval: Dur,
    pub timeout: Dur,
    /// Consecutive successes to become healthy.
    pub healthy_threshold: Int<1, 1000>,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_threshold: Int<1, 1000>,
    /// Statuses that count as healthy, e.g. `"200-299"` or `"200,204"`.
    pub expected_status: String,
    /// Random spread of each interval, as a share of it, so checks do not align.
    pub jitter: Ratio,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            kind: HealthKind::Http,
            service: String::new(),
            path: "/health".into(),
            interval: Dur::secs(5),
            timeout: Dur::secs(1),
            healthy_threshold: Int(2),
            unhealthy_threshold: Int(3),
            expected_status: "200-299".into(),
            jitter: Ratio(0.1),
        }
    }
}

/// Passive health: ejection of backends that fail real traffic.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Consecutive failed requests (connect error, timeout, 5xx) that eject.
    pub consecutive_failures: Int<1, 1_000_000>,
    /// Or this share of failures over `window` ...
    pub failure_rate: Ratio,
    pub window: Dur,
    /// ... once at least this many requests were seen in it.
    pub min_requests: Int<1, 1_000_000>,
    /// Ejection time is this × the number of ejections so far ...
    pub base_ejection_time: Dur,
    /// ... capped here.
    pub max_ejection_time: Dur,
    /// Never eject more than this share of the backends.
    pub max_ejection_percent: Percent,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: Int(5),
            failure_rate: Ratio(0.5),
            window: Dur::secs(10),
            min_requests: Int(20),
            base_ejection_time: Dur::secs(30),
            max_ejection_time: Dur::secs(300),
            max_ejection_percent: Int(50),
        }
    }
}

/// Per-backend circuit breaker.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open it.
    pub failure_threshold: Int<1, 1_000_000>,
    /// Or this share of failures over `window` ...
    pub failure_rate: Ratio,
    pub window: Dur,
    /// ... once at least this many requests were seen in it.
    pub min_requests: Int<1, 1_000_000>,
    /// Time open before probing (half-open); doubles on each failed probe ...
    pub open_duration: Dur,
    /// ... up to this.
    pub max_open_duration: Dur,
    /// Probes allowed while half-open; all must succeed to close.
    pub half_open_requests: Int<1, 1000>,
    /// Responses slower than this count as failures (unset: only errors count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_call_threshold: Option<Dur>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: Int(5),
            failure_rate: Ratio(0.5),
            window: Dur::secs(10),
            min_requests: Int(20),
            open_duration: Dur::secs(30),
            max_open_duration: Dur::secs(300),
            half_open_requests: Int(1),
            slow_call_threshold: None,
        }
    }
}

/// What identifies a client for rate limiting.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum RateLimitKey {
    /// The client's address (from `X-Forwarded-For` only when the peer is trusted).
    #[default]
    ClientIp,
    /// One bucket for everyone.
    Global,
    /// The value of a request header (lower-cased name).
    Header(http::HeaderName),
}

impl fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimitKey::ClientIp => f.write_str("client_ip"),
            RateLimitKey::Global => f.write_str("global"),
            RateLimitKey::Header(h) => write!(f, "header:{h}"),
        }
    }
}

impl<'de> Deserialize<'de> for RateLimitKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let s = String::deserialize(d)?;
        match s.as_str() {
            "client_ip" => Ok(RateLimitKey::ClientIp),
            "global" => Ok(RateLimitKey::Global),
            other => match other.strip_prefix("header:") {
                Some(name) => http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map(RateLimitKey::Header)
                    .map_err(|_| D::Error::custom(format!("`{name}` is not a valid header name"))),
                None => Err(D::Error::custom(format!(
                    "unknown key kind `{other}` (expected client_ip, global or header:<Name>)"
                ))),
            },
        }
    }
}

impl Serialize for RateLimitKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Token-bucket rate limiting.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained rate per key.
    pub requests_per_second: Positive,
    /// Bucket size: requests allowed at once after a quiet spell.
    pub burst: Count,
    #[serde(default)]
    pub key: RateLimitKey,
    /// Peers whose `X-Forwarded-For` names the client (defaults to
    /// `server.trusted_proxies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<Vec<Cidr>>,
    /// Most keys tracked at once; beyond it the least recently used idle buckets
    /// are dropped (a dropped bucket comes back full).
    #[serde(default = "default_max_keys")]
    pub max_keys: Int<1, 100_000_000>,
    /// Per-path-prefix limits, checked in order; the first match applies instead
    /// of the top-level limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RateLimitRule>,
}

fn default_max_keys() -> Int<1, 100_000_000> {
    Int(100_000)
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    pub path_prefix: String,
    pub requests_per_second: Positive,
    pub burst: Count,
}

/// What rate limiting does while the cluster store is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Local buckets sized limit ÷ live replicas.
    #[default]
    Local,
    /// Admit everything.
    Allow,
    /// Refuse everything with 429.
    Deny,
}

/// Cluster state through Redis.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[:password@]host:port[/db]` (`rediss://` for TLS, `unix://` for a
    /// socket), `redis+sentinel://[:password@]host:26379[,host:26379…]/<master>[/<db>]`
    /// for a Sentinel-managed group, or `redis+cluster://[:password@]host:6379[,…]`
    /// for Redis Cluster seed nodes. Also read from `SWITCHYARD_REDIS_URL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Keys live under `switchyard:{<name>}:`.
    pub name: String,
    /// Defaults to host name + proxy port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    pub on_store_error: OnStoreError,
    /// How often a replica heartbeats ...
    pub heartbeat_interval: Dur,
    /// ... and how long a silent replica stays listed.
    pub heartbeat_ttl: Dur,
    /// Full resync of shared state (heals missed pub/sub messages).
    pub resync_interval: Dur,
    /// Per-command timeout; requests never wait on Redis.
    pub timeout: Dur,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            name: "default".into(),
            replica_id: None,
            on_store_error: OnStoreError::Local,
            heartbeat_interval: Dur::secs(1),
            heartbeat_ttl: Dur::secs(5),
            resync_interval: Dur::secs(5),
            timeout: Dur::millis(500),
        }
    }
}

/// OpenTelemetry export; the standard `OTEL_*` variables override these.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP endpoint; unset means no exporter at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: String,
    pub service_name: String,
    /// Share of new traces sampled (parent-based: a sampled parent is followed).
    pub sampler_ratio: Ratio,
    pub metric_export_interval: Dur,
    /// Spans queued for export at most; more are dropped and counted.
    pub max_queue_size: Int<1, 10_000_000>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            protocol: "grpc".into(),
            service_name: "switchyard".into(),
            sampler_ratio: Ratio(1.0),
            metric_export_interval: Dur::secs(60),
            max_queue_size: Int(2048),
        }
    }
}

/// Log output.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `text` or `json` (`--log-format` overrides).
    pub format: String,
    /// One line per proxied request.
    pub access_log: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            access_log: false,
        }
    }
}

/// Admin listener security and the dashboard.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// File holding the bearer token (`SWITCHYARD_ADMIN_TOKEN` takes precedence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Let read-only endpoints through without a token.
    pub public_read: bool,
    /// Origins allowed to call the admin API from a browser (none by default).
    pub cors_origins: Vec<String>,
    /// Directory of a built dashboard to serve instead of the copy embedded in the
    /// binary (development; `SWITCHYARD_DASHBOARD_DIR` when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard_dir: Option<String>,
    /// Serve the admin listener over TLS with the `tls:` block's certificates.
    pub tls: bool,
}

/// Follow a git repository for the config (flags and env vars override).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitopsConfig {
    /// Path or URL of the repository.
    pub repo: String,
    pub r#ref: String,
    /// File inside the repository.
    pub path: String,
    pub poll_interval: Dur,
    /// Environment variable holding an HTTPS token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// SSH private key for `ssh://` repositories.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
}

impl Default for GitopsConfig {
    fn default() -> Self {
        Self {
            repo: String::new(),
            r#ref: "main".into(),
            path: "config.yaml".into(),
            poll_interval: Dur::secs(10),
            token_env: None,
            ssh_key: None,
        }
    }
}

// === errors ===

/// A refused config: `file:line: field: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<u32>,
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in one file (validation reports every cross-field problem,
/// not just the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn first(&self) -> Option<&ConfigError> {
        self.0.first()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// === loading ===

/// The config as YAML (what `parse` reads back to the same config).
pub fn to_yaml(config: &Config) -> Result<String, String> {
    yaml_serde::to_string(config).map_err(|e| e.to_string())
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: None,
            field: None,
            reason: format!("cannot read: {e}"),
        }])
    })?;
    parse(&text, &name)
}

/// Parses and validates config text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    // An empty file is an empty mapping, not an error: every field has a default.
    let config: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        let de = yaml_serde::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de)
            .map_err(|e| ConfigErrors(vec![from_yaml_error(&e, text, file)]))?
    };
    let problems = validate(&config);
    if problems.is_empty() {
        return Ok(config);
    }
    let index = LineIndex::new(text);
    Err(ConfigErrors(
        problems
            .into_iter()
            .map(|(field, reason)| ConfigError {
                file: file.to_string(),
                line: index.line_of(&field),
                field: Some(field),
                reason,
            })
            .collect(),
    ))
}

fn from_yaml_error(
    e: &serde_path_to_error::Error<yaml_serde::Error>,
    text: &str,
    file: &str,
) -> ConfigError {
    let inner = e.inner();
    // The message reads "[path: ]reason at line L column C"; keep the reason.
    let mut reason = inner.to_string();
    if let Some(cut) = reason.rfind(" at line ") {
        reason.truncate(cut);
    }
    if let Some((prefix, rest)) = reason.split_once(": ")
        && !prefix.contains(' ')
        && !prefix.is_empty()
    {
        reason = rest.to_string();
    }
    let path = e.path().to_string();
    let field = (path != "." && !path.is_empty()).then_some(path);
    // The deserializer's own position is exact for syntax errors and unknown keys;
    // for a bad value it points at the enclosing mapping, so prefer the field's line.
    let line = match &field {
        Some(p) if !reason.starts_with("unknown field") => LineIndex::new(text).line_of(p),
        _ => None,
    }
    .or_else(|| inner.location().map(|l| l.line() as u32));
    ConfigError {
        file: file.to_string(),
        line,
        field,
        reason,
    }
}

/// Cross-field rules the types cannot express: `(field path, reason)` each.
fn validate(c: &Config) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    if let (Some(top), Some(inner)) = (c.strategy, c.server.strategy)
        && top != inner
    {
        errs.push((
            "server.strategy".into(),
            format!(
                "conflicts with top-level strategy `{}` (set it in one place)",
                top.as_str()
            ),
        ));
    }
    errs.extend(validate_pool(c));
    errs.extend(routes::validate(c));
    errs.extend(dns::validate(c));
    if c.server.port != 0 && c.server.port == c.server.admin_port {
        errs.push((
            "server.admin_port".into(),
            format!("must differ from server.port ({})", c.server.port),
        ));
    }
    for (name, d) in [
        ("server.header_read_timeout", c.server.header_read_timeout),
        ("server.send_timeout", c.server.send_timeout),
    ] {
        if d.get().is_zero() {
            errs.push((name.into(), "must be greater than 0".into()));
        }
    }
    if let Some(cl) = &c.cluster {
        if let Some(url) = &cl.redis_url
            && ![
                "redis://",
                "rediss://",
                "redis+unix://",
                "unix://",
                "redis+sentinel://",
                "rediss+sentinel://",
                "redis+cluster://",
                "rediss+cluster://",
            ]
            .iter()
            .any(|p| url.starts_with(p))
        {
            errs.push((
                "cluster.redis_url".into(),
                "must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
                    .into(),
            ));
        }
        if cl.name.is_empty()
            || !cl
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            errs.push((
                "cluster.name".into(),
                format!("`{}`: use letters, digits, `-`, `_` or `.`", cl.name),
            ));
        }
        if cl.heartbeat_ttl <= cl.heartbeat_interval {
            errs.push((
                "cluster.heartbeat_ttl".into(),
                "must be longer than heartbeat_interval".into(),
            ));
        }
        if cl.timeout.get().is_zero() {
            errs.push(("cluster.timeout".into(), "must be greater than 0".into()));
        }
    }
    if !matches!(c.telemetry.protocol.as_str(), "grpc" | "http/protobuf") {
        errs.push((
            "telemetry.protocol".into(),
            format!("`{}`: expected grpc or http/protobuf", c.telemetry.protocol),
        ));
    }
    if !matches!(c.logging.format.as_str(), "text" | "json") {
        errs.push((
            "logging.format".into(),
            format!("`{}`: expected text or json", c.logging.format),
        ));
    }
    errs.extend(tls::validate(c));
    if let Some(g) = &c.gitops
        && g.poll_interval.get().is_zero()
    {
        errs.push((
            "gitops.poll_interval".into(),
            "must be greater than 0".into(),
        ));
    }
    errs
}

/// The rules of one pool's blocks (the top level's, or a service's as
/// [`Config::service_config`] gives it): `(field path, reason)` each.
fn validate_pool(c: &Config) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, b) in c.backends.iter().enumerate() {
        let key = b.url.parsed.key();
        if let Some(first) = seen.get(&key) {
            errs.push((
                format!("backends[{i}].url"),
                format!("duplicate backend {key} (already backends[{first}])"),
            ));
        } else {
            seen.insert(key, i);
        }
        match (b.protocol, b.url.parsed.scheme) {
            (Protocol::H2c, Scheme::Https) => errs.push((
                format!("backends[{i}].protocol"),
                "h2c is HTTP/2 without TLS: use an http:// url, or protocol h2 for TLS".into(),
            )),
            (Protocol::H2, Scheme::Http) => errs.push((
                format!("backends[{i}].protocol"),
                "h2 is HTTP/2 over TLS: use an https:// url, or protocol h2c without TLS".into(),
            )),
            _ => {}
        }
        if let Some(p) = &b.health_check_path
            && !p.starts_with('/')
        {
            errs.push((
                format!("backends[{i}].health_check_path"),
                format!("must start with `/`, got `{p}`"),
            ));
        }
    }
    let h2 = &c.upstream.http2;
    for (name, d) in [
        ("timeouts.connect", c.timeouts.connect),
        ("timeouts.request", c.timeouts.request),
        ("timeouts.idle", c.timeouts.idle),
        ("upstream.http2.keepalive_interval", h2.keepalive_interval),
        ("upstream.http2.keepalive_timeout", h2.keepalive_timeout),
        ("upstream.http2.idle_timeout", h2.idle_timeout),
        ("upstream.http2.stream_idle_timeout", h2.stream_idle_timeout),
    ] {
        if d.get().is_zero() {
            errs.push((name.into(), "must be greater than 0".into()));
        }
    }
    if let Some(h) = &c.health_check {
        if !h.path.starts_with('/') {
            errs.push((
                "health_check.path".into(),
                format!("must start with `/`, got `{}`", h.path),
            ));
        }
        if h.interval.get().is_zero() {
            errs.push((
                "health_check.interval".into(),
                "must be greater than 0".into(),
            ));
        }
        if h.timeout.get().is_zero() {
            errs.push((
                "health_check.timeout".into(),
                "must be greater than 0".into(),
            ));
        } else if h.timeout > h.interval {
            errs.push((
                "health_check.timeout".into(),
                format!("must not exceed health_check.interval ({})", h.interval),
            ));
        }
        if let Err(e) = StatusRanges::parse(&h.expected_status) {
            errs.push(("health_check.expected_status".into(), e));
        }
    }
    if let Some(o) = &c.outlier_detection {
        if o.window.get().is_zero() {
            errs.push((
                "outlier_detection.window".into(),
                "must be greater than 0".into(),
            ));
        }
        if o.base_ejection_time.get().is_zero() {
            errs.push((
                "outlier_detection.base_ejection_time".into(),
                "must be greater than 0".into(),
            ));
        }
        if o.max_ejection_time < o.base_ejection_time {
            errs.push((
                "outlier_detection.max_ejection_time".into(),
                "must be at least base_ejection_time".into(),
            ));
        }
    }
    if let Some(cb) = &c.circuit_breaker {
        if cb.window.get().is_zero() {
            errs.push((
                "circuit_breaker.window".into(),
                "must be greater than 0".into(),
            ));
        }
        if cb.open_duration.get().is_zero() {
            errs.push((
                "circuit_breaker.open_duration".into(),
                "must be greater than 0".into(),
            ));
        }
        if cb.max_open_duration < cb.open_duration {
            errs.push((
                "circuit_breaker.max_open_duration".into(),
                "must be at least open_duration".into(),
            ));
        }
    }
    if let Some(rl) = &c.rate_limit {
        for (i, r) in rl.rules.iter().enumerate() {
            if !r.path_prefix.starts_with('/') {
                errs.push((
                    format!("rate_limit.rules[{i}].path_prefix"),
                    format!("must start with `/`, got `{}`", r.path_prefix),
                ));
            }
        }
    }
    errs
}

/// A set of HTTP status ranges such as `200-299,304`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRanges(Vec<(u16, u16)>);

impl StatusRanges {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let parse = |v: &str| -> Result<u16, String> {
                match v.parse::<u16>() {
                    Ok(n) if (100..=599).contains(&n) => Ok(n),
                    _ => Err(format!("`{v}` is not an HTTP status (100-599)")),
                }
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!("`{part}`: range is backwards"));
            }
            out.push((lo, hi));
        }
        if out.is_empty() {
            return Err("no status given (e.g. \"200-299\")".into());
        }
        Ok(Self(out))
    }

    /// 200-299.
    pub fn success() -> Self {
        Self(vec![(200, 299)])
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}
