//! The metric families, in one table ([`TABLE`]: name, kind, unit, help, labels
//! and how each is read), and the proxy-wide counters the request path updates.
//!
//! Every exporter walks the table: `/metrics` in the Prometheus and OpenMetrics
//! text formats ([`super::prometheus`]) and the OTLP instruments
//! ([`super::otel`]), so a family cannot reach one and miss the other. Values are
//! read from a [`Reading`]: the relaxed atomics of [`Metrics`] (proxy-wide) and of
//! each backend's stats, plus the state the replica reports about itself, taken
//! whenever an exporter asks (a scrape, an OTLP export). The seed's JSON array on
//! `/metrics` is read from the same [`BackendReading`]s.
//!
//! Names are the Prometheus ones (a counter's ends in `_total`); over OTLP a
//! counter is named without `_total`, which a Prometheus exporter puts back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};
use std::time::Duration;

use http::StatusCode;
use switchyard_shared::{CircuitState, DiscoveryView, LATENCY_BUCKETS_S, StoreView};

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
pub const WORKER_CONNECTIONS_TOTAL: &str = "switchyard_worker_connections_total";
pub const ADMIN_ERRORS_TOTAL: &str = "switchyard_admin_errors_total";
pub const HEALTH_TRANSITIONS_TOTAL: &str = "switchyard_health_transitions_total";
pub const CIRCUIT_TRANSITIONS_TOTAL: &str = "switchyard_circuit_transitions_total";
pub const EJECTIONS_TOTAL: &str = "switchyard_ejections_total";
pub const EJECTED: &str = "switchyard_backend_ejected";
pub const STORE_ERRORS_TOTAL: &str = "switchyard_state_store_errors_total";
pub const STORE_CONNECTED: &str = "switchyard_state_store_connected";
pub const REPLICAS: &str = "switchyard_cluster_replicas";
pub const ROUTE_RESPONSES_TOTAL: &str = "switchyard_route_responses_total";
pub const DNS_FAILURES_TOTAL: &str = "switchyard_dns_resolution_failures_total";
pub const DNS_MEMBERS: &str = "switchyard_dns_members";
pub const CONFIG_RELOADS_TOTAL: &str = "switchyard_config_reloads_total";
pub const CONFIG_GENERATION: &str = "switchyard_config_generation";
pub const CONFIG_ERROR: &str = "switchyard_config_last_reload_failed";
pub const SPANS_DROPPED_TOTAL: &str = "switchyard_telemetry_spans_dropped_total";
pub const REFUSED_FRAMING_TOTAL: &str = "switchyard_requests_refused_framing_total";
pub const REFUSED_MALFORMED_TOTAL: &str = "switchyard_requests_refused_malformed_total";
pub const SEND_TIMEOUTS_TOTAL: &str = "switchyard_send_timeouts_total";
pub const H2_TIMEOUTS_TOTAL: &str = "switchyard_http2_timeouts_total";
pub const H2_RESET_FLOODS_TOTAL: &str = "switchyard_http2_reset_floods_total";
// The HTTPS edge's (see `tls`): only while TLS is configured.
pub const TLS_CERT_EXPIRY: &str = "switchyard_tls_certificate_expiry_seconds";
pub const TLS_HANDSHAKES_TOTAL: &str = "switchyard_tls_handshakes_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "switchyard_tls_handshake_failures_total";
pub const TLS_CERT_RELOADS_TOTAL: &str = "switchyard_tls_certificate_reloads_total";
pub const TLS_TICKET_KEYS: &str = "switchyard_tls_session_ticket_keys";
pub const ACME_ORDERS_TOTAL: &str = "switchyard_acme_orders_total";
pub const ACME_FAILURES_TOTAL: &str = "switchyard_acme_order_failures_total";
pub const ACME_CHALLENGES_TOTAL: &str = "switchyard_acme_challenges_answered_total";

// === the table ===

/// What a family's values are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (a Prometheus counter, an OTLP monotonic sum).
    Counter,
    /// A value now.
    Gauge,
    /// A latency histogram over [`LATENCY_BUCKETS_S`].
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Debug)]
pub struct Def {
    /// The Prometheus name (a counter's ends in `_total`).
    pub name: &'static str,
    pub kind: Kind,
    /// UCUM unit for OTLP: `s`, or an annotation in braces for a count (which a
    /// Prometheus exporter leaves out of the name).
    pub unit: &'static str,
    pub help: &'static str,
    /// Label names, in the order samples carry them.
    pub labels: &'static [&'static str],
    /// How to read it: its samples in a reading.
    pub read: fn(&Reading<'_>, &mut Vec<Sample>),
}

impl Def {
    /// A family of the HTTPS edge: shown only while TLS (or ACME) is configured,
    /// not as an empty family on every proxy.
    pub fn optional(&self) -> bool {
        self.name.starts_with("switchyard_tls_") || self.name.starts_with("switchyard_acme_")
    }

    /// The name over OTLP: a counter's without `_total`.
    pub fn otlp_name(&self) -> &'static str {
        match self.kind {
            Kind::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            _ => self.name,
        }
    }
}

/// One sample of a family.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Values of the family's labels, in its order.
    pub labels: Vec<String>,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    /// Per-bucket (not cumulative) counts and the sum in seconds.
    Histogram {
        counts: Vec<u64>,
        sum: f64,
    },
}

/// Status classes, as the `code_class` label shows them.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn int(out: &mut Vec<Sample>, labels: Vec<String>, v: u64) {
    out.push(Sample {
        labels,
        value: Value::Int(v),
    });
}

fn by_class(out: &mut Vec<Sample>, prefix: &[String], classes: [u64; 5]) {
    for (class, v) in CLASSES.iter().zip(classes) {
        let mut labels = prefix.to_vec();
        labels.push((*class).to_string());
        int(out, labels, v);
    }
}

fn hist(out: &mut Vec<Sample>, labels: Vec<String>, h: &Histogram) {
    out.push(Sample {
        labels,
        value: Value::Histogram {
            counts: h.counts(),
            sum: h.sum_seconds(),
        },
    });
}

/// A proxy-wide counter read from [`Metrics`].
macro_rules! proxy_counter {
    ($name:expr, $unit:expr, $help:expr, $field:ident) => {
        Def {
            name: $name,
            kind: Kind::Counter,
            unit: $unit,
            help: $help,
            labels: &[],
            read: |r, out| int(out, Vec::new(), r.proxy.$field.load(Relaxed)),
        }
    };
}

/// A per-backend family.
macro_rules! per_backend {
    ($name:expr, $kind:expr, $unit:expr, $help:expr, |$b:ident| $value:expr) => {
        Def {
            name: $name,
            kind: $kind,
            unit: $unit,
            help: $help,
            labels: &["backend", "service"],
            read: |r, out| {
                for $b in &r.backends {
                    int(out, $b.labels(), $value);
                }
            },
        }
    };
}

/// Every metric family, in the order `/metrics` lists them.
pub static TABLE: &[Def] = &[
    Def {
        name: REQUESTS_TOTAL,
        kind: Kind::Counter,
        unit: "{request}",
        help: "Client requests answered, by status class.",
        labels: &["code_class"],
        read: |r, out| by_class(out, &[], r.proxy.status_classes()),
    },
    Def {
        name: REQUEST_DURATION,
        kind: Kind::Histogram,
        unit: "s",
        help: "Client-visible request duration in seconds.",
        labels: &[],
        read: |r, out| hist(out, Vec::new(), &r.proxy.duration),
    },
    Def {
        name: REQUESTS_IN_FLIGHT,
        kind: Kind::Gauge,
        unit: "{request}",
        help: "Requests being served.",
        labels: &[],
        read: |r, out| int(out, Vec::new(), r.proxy.in_flight.load(Relaxed)),
    },
    Def {
        name: UPSTREAM_CONNECT,
        kind: Kind::Histogram,
        unit: "s",
        help: "Time to open a new upstream connection, seconds.",
        labels: &[],
        read: |r, out| hist(out, Vec::new(), &r.proxy.connect),
    },
    proxy_counter!(
        RETRIES_TOTAL,
        "{attempt}",
        "Attempts retried on another backend.",
        retries
    ),
    proxy_counter!(
        RATE_LIMITED_TOTAL,
        "{request}",
        "Requests refused with 429.",
        rate_limited
    ),
    proxy_counter!(
        CONNECTIONS_REJECTED_TOTAL,
        "{connection}",
        "Client connections refused over max_connections.",
        connections_rejected
    ),
    proxy_counter!(
        ADMIN_ERRORS_TOTAL,
        "{request}",
        "Admin requests refused as invalid.",
        admin_errors
    ),
    proxy_counter!(
        HEALTH_TRANSITIONS_TOTAL,
        "{transition}",
        "Active health verdict changes.",
        health_transitions
    ),
    proxy_counter!(
        EJECTIONS_TOTAL,
        "{ejection}",
        "Passive-health ejections.",
        ejections
    ),
    proxy_counter!(
        REFUSED_FRAMING_TOTAL,
        "{request}",
        "Requests refused with 400 for ambiguous framing (Content-Length with Transfer-Encoding, repeated Content-Length).",
        refused_framing
    ),
    proxy_counter!(
        REFUSED_MALFORMED_TOTAL,
        "{request}",
        "Request heads refused before forwarding: malformed (400), too large (431), not received within header_read_timeout (408) or with an unknown transfer coding (501).",
        refused_malformed
    ),
    proxy_counter!(
        SEND_TIMEOUTS_TOTAL,
        "{response}",
        "Responses cut off because the client took no bytes for server.send_timeout (HTTP/1.1 write or HTTP/2 window); their backend exchange is closed too.",
        send_timeouts
    ),
    proxy_counter!(
        H2_TIMEOUTS_TOTAL,
        "{connection}",
        "HTTP/2 client connections closed for header_read_timeout: idle (no open stream) or a HEADERS block left unfinished.",
        h2_timeouts
    ),
    proxy_counter!(
        H2_RESET_FLOODS_TOTAL,
        "{connection}",
        "HTTP/2 client connections ended with ENHANCE_YOUR_CALM for resetting too many streams right after opening them.",
        h2_reset_floods
    ),
    Def {
        name: SPANS_DROPPED_TOTAL,
        kind: Kind::Counter,
        unit: "{span}",
        help: "Spans dropped: export queue full or export failed.",
        labels: &[],
        read: |r, out| int(out, Vec::new(), r.spans_lost),
    },
    Def {
        name: WORKER_CONNECTIONS_TOTAL,
        kind: Kind::Counter,
        unit: "{connection}",
        help: "Client connections accepted, by proxy worker (server.threads): how the kernel spreads them over the workers' sockets.",
        labels: &["worker"],
        read: |r, out| {
            for (i, v) in r.proxy.worker_connections.all().iter().enumerate() {
                int(out, vec![i.to_string()], v.load(Relaxed));
            }
        },
    },
    Def {
        name: CONNECTIONS_ACTIVE,
        kind: Kind::Gauge,
        unit: "{connection}",
        help: "Open client connections.",
        labels: &[],
        read: |r, out| int(out, Vec::new(), r.proxy.connections_active.load(Relaxed)),
    },
    Def {
        name: CIRCUIT_TRANSITIONS_TOTAL,
        kind: Kind::Counter,
        unit: "{transition}",
        help: "Circuit-breaker transitions, by new state.",
        labels: &["to"],
        read: |r, out| {
            let m = r.proxy;
            for (to, v) in [
                ("open", &m.circuits_opened),
                ("half-open", &m.circuits_half_opened),
                ("closed", &m.circuits_closed),
            ] {
                int(out, vec![to.to_string()], v.load(Relaxed));
            }
        },
    },
    Def {
        name: CONFIG_RELOADS_TOTAL,
        kind: Kind::Counter,
        unit: "{reload}",
        help: "Config reloads, by result.",
        labels: &["result"],
        read: |r, out| {
            let m = r.proxy;
            int(out, vec!["applied".into()], m.config_reloads.load(Relaxed));
            int(out, vec!["refused".into()], m.config_failures.load(Relaxed));
        },
    },
    Def {
        name: CONFIG_GENERATION,
        kind: Kind::Gauge,
        unit: "{generation}",
        help: "Configs applied since start (1 = the first).",
        labels: &[],
        read: |r, out| int(out, Vec::new(), r.config_generation),
    },
    Def {
        name: CONFIG_ERROR,
        kind: Kind::Gauge,
        unit: "{state}",
        help: "1 while the newest revision of the config source is refused.",
        labels: &[],
        read: |r, out| int(out, Vec::new(), u64::from(r.config_refused)),
    },
    Def {
        name: STORE_ERRORS_TOTAL,
        kind: Kind::Counter,
        unit: "{command}",
        help: "State-store commands that failed.",
        labels: &["store"],
        read: |r, out| int(out, vec![r.store.kind.clone()], r.store.errors),
    },
    Def {
        name: STORE_CONNECTED,
        kind: Kind::Gauge,
        unit: "{state}",
        help: "1 while the state store is reachable.",
        labels: &["store"],
        read: |r, out| {
            int(
                out,
                vec![r.store.kind.clone()],
                u64::from(r.store.connected),
            )
        },
    },
    Def {
        name: REPLICAS,
        kind: Kind::Gauge,
        unit: "{replica}",
        help: "Live replicas this replica knows of.",
        labels: &[],
        read: |r, out| int(out, Vec::new(), r.replicas),
    },
    Def {
        name: BACKEND_REQUESTS_TOTAL,
        kind: Kind::Counter,
        unit: "{response}",
        help: "Backend responses, by status class.",
        labels: &["backend", "service", "code_class"],
        read: |r, out| {
            for b in &r.backends {
                by_class(out, &b.labels(), b.status);
            }
        },
    },
    Def {
        name: ROUTE_RESPONSES_TOTAL,
        kind: Kind::Counter,
        unit: "{response}",
        help: "Answers to requests a route matched, by route, service and status class.",
        labels: &["route", "service", "code_class"],
        read: |r, out| {
            for x in &r.routes {
                by_class(out, &[x.route.to_string(), x.service.to_string()], x.status);
            }
        },
    },
    Def {
        name: DNS_FAILURES_TOTAL,
        kind: Kind::Counter,
        unit: "{resolution}",
        help: "DNS resolutions of a service's discover name that failed (its last answer's members stay).",
        labels: &["service"],
        read: |r, out| {
            for (service, d) in &r.discovery {
                int(out, vec![service.clone()], d.failures);
            }
        },
    },
    Def {
        name: DNS_MEMBERS,
        kind: Kind::Gauge,
        unit: "{backend}",
        help: "Members a service's discover name gave at its last answer.",
        labels: &["service"],
        read: |r, out| {
            for (service, d) in &r.discovery {
                int(out, vec![service.clone()], d.members as u64);
            }
        },
    },
    per_backend!(
        BACKEND_ERRORS_TOTAL,
        Kind::Counter,
        "{attempt}",
        "Failed attempts (connect error, timeout, lost connection, 5xx).",
        |b| b.errors
    ),
    per_backend!(
        BACKEND_ACTIVE,
        Kind::Gauge,
        "{request}",
        "Requests in flight to the backend.",
        |b| b.active
    ),
    per_backend!(
        BACKEND_UP,
        Kind::Gauge,
        "{state}",
        "1 if the backend gets new requests.",
        |b| u64::from(b.up)
    ),
    per_backend!(
        BACKEND_HEALTHY,
        Kind::Gauge,
        "{state}",
        "1 unless active health checks find the backend unhealthy.",
        |b| u64::from(b.healthy)
    ),
    per_backend!(
        EJECTED,
        Kind::Gauge,
        "{state}",
        "1 while passive health has the backend ejected.",
        |b| u64::from(b.ejected)
    ),
    Def {
        name: CIRCUIT_STATE,
        kind: Kind::Gauge,
        unit: "{state}",
        help: "Circuit-breaker state (1 for the current one).",
        labels: &["backend", "service", "state"],
        read: |r, out| {
            for b in &r.backends {
                for s in [
                    CircuitState::Closed,
                    CircuitState::Open,
                    CircuitState::HalfOpen,
                ] {
                    let mut labels = b.labels();
                    labels.push(s.as_str().to_string());
                    int(out, labels, u64::from(s == b.circuit));
                }
            }
        },
    },
    Def {
        name: BACKEND_LATENCY,
        kind: Kind::Histogram,
        unit: "s",
        help: "Time to the backend's response headers, seconds.",
        labels: &["backend", "service"],
        read: |r, out| {
            for b in &r.backends {
                hist(out, b.labels(), b.latency);
            }
        },
    },
    Def {
        name: TLS_CERT_EXPIRY,
        kind: Kind::Gauge,
        unit: "s",
        help: "Seconds until the certificate served for a name expires (0 once expired).",
        labels: &["name", "source"],
        read: |r, out| {
            for (name, source, secs) in r.tls.iter().flat_map(|t| &t.certificates) {
                int(out, vec![name.clone(), source.clone()], *secs);
            }
        },
    },
    Def {
        name: TLS_HANDSHAKES_TOTAL,
        kind: Kind::Counter,
        unit: "{handshake}",
        help: "Completed TLS handshakes, by kind.",
        labels: &["kind"],
        read: |r, out| {
            if let Some(t) = &r.tls {
                int(
                    out,
                    vec!["full".into()],
                    t.handshakes.saturating_sub(t.resumed),
                );
                int(out, vec!["resumed".into()], t.resumed);
            }
        },
    },
    Def {
        name: TLS_HANDSHAKE_FAILURES_TOTAL,
        kind: Kind::Counter,
        unit: "{handshake}",
        help: "TLS handshakes that failed or timed out (the connection was closed).",
        labels: &["reason"],
        read: |r, out| {
            if let Some(t) = &r.tls {
                int(out, vec!["error".into()], t.failures);
                int(out, vec!["timeout".into()], t.timeouts);
            }
        },
    },
    Def {
        name: TLS_CERT_RELOADS_TOTAL,
        kind: Kind::Counter,
        unit: "{reload}",
        help: "Certificate file reloads: applied, or refused (the last good one kept serving).",
        labels: &["result"],
        read: |r, out| {
            if let Some(t) = &r.tls {
                int(out, vec!["applied".into()], t.reloads);
                int(out, vec!["refused".into()], t.reloads_refused);
            }
        },
    },
    Def {
        name: TLS_TICKET_KEYS,
        kind: Kind::Gauge,
        unit: "{key}",
        help: "Session-ticket keys accepted now.",
        labels: &[],
        read: |r, out| {
            if let Some(t) = &r.tls {
                int(out, Vec::new(), t.ticket_keys);
            }
        },
    },
    Def {
        name: ACME_ORDERS_TOTAL,
        kind: Kind::Counter,
        unit: "{order}",
        help: "ACME orders this replica placed.",
        labels: &[],
        read: |r, out| {
            if let Some(a) = r.tls.as_ref().and_then(|t| t.acme) {
                int(out, Vec::new(), a.orders);
            }
        },
    },
    Def {
        name: ACME_FAILURES_TOTAL,
        kind: Kind::Counter,
        unit: "{order}",
        help: "ACME orders that failed (then backed off).",
        labels: &[],
        read: |r, out| {
            if let Some(a) = r.tls.as_ref().and_then(|t| t.acme) {
                int(out, Vec::new(), a.failures);
            }
        },
    },
    Def {
        name: ACME_CHALLENGES_TOTAL,
        kind: Kind::Counter,
        unit: "{challenge}",
        help: "ACME challenges this replica answered (HTTP-01 and TLS-ALPN-01).",
        labels: &[],
        read: |r, out| {
            if let Some(a) = r.tls.as_ref().and_then(|t| t.acme) {
                int(out, Vec::new(), a.challenges);
            }
        },
    },
];

/// The HTTPS edge's figures, for a [`Reading`] (the `tls` module fills them in).
#[derive(Clone, Debug, Default)]
pub struct TlsReading {
    /// Per served name: the name, the certificate's source, and seconds until it
    /// expires (0 once expired).
    pub certificates: Vec<(String, String, u64)>,
    /// Completed handshakes, of them resumed.
    pub handshakes: u64,
    pub resumed: u64,
    /// Failed handshakes, and timed-out ones.
    pub failures: u64,
    pub timeouts: u64,
    /// Certificate file reloads applied, and refused.
    pub reloads: u64,
    pub reloads_refused: u64,
    pub ticket_keys: u64,
    /// When ACME is on.
    pub acme: Option<AcmeReading>,
}

/// ACME's figures, for a [`TlsReading`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AcmeReading {
    pub orders: u64,
    pub failures: u64,
    pub challenges: u64,
}

/// Where a reading's TLS figures come from (the HTTPS edge installs one).
pub trait TlsSource: Send + Sync {
    fn tls_reading(&self) -> TlsReading;
}

/// Everything the families show, read at one moment: the proxy-wide counters and
/// what the replica knows of itself, its store and its backends.
#[derive(Debug)]
pub struct Reading<'a> {
    pub proxy: &'a Metrics,
    pub spans_lost: u64,
    pub config_generation: u64,
    /// The newest revision of the config source is refused.
    pub config_refused: bool,
    pub store: StoreView,
    pub replicas: u64,
    /// The running set, then the draining backends.
    pub backends: Vec<BackendReading<'a>>,
    /// The HTTPS edge, when TLS is configured.
    pub tls: Option<TlsReading>,
    /// Answers per route and service, when routes are configured.
    pub routes: Vec<RouteReading>,
    /// Per service with a `discover` block: its DNS resolutions.
    pub discovery: Vec<(String, DiscoveryView)>,
}

/// One route's answers for one service (`-`: the route's own answers).
#[derive(Debug)]
pub struct RouteReading {
    pub route: Arc<str>,
    pub service: Arc<str>,
    /// By status class.
    pub status: [u64; 5],
}

/// One backend's figures in a [`Reading`].
#[derive(Debug)]
pub struct BackendReading<'a> {
    /// Canonical key (`http://host:port`), the `backend` label.
    pub key: Arc<str>,
    /// The service it belongs to, the `service` label (a config name).
    pub service: Arc<str>,
    /// As configured, for the seed's JSON.
    pub url: Arc<str>,
    /// Responses by status class.
    pub status: [u64; 5],
    pub errors: u64,
    pub active: u64,
    /// Gets new requests.
    pub up: bool,
    pub healthy: bool,
    pub ejected: bool,
    pub circuit: CircuitState,
    /// Time to response headers.
    pub latency: &'a Histogram,
    /// The latency estimate (peak EWMA), nanoseconds.
    pub latency_ewma_ns: u64,
}

impl BackendReading<'_> {
    /// The `backend` and `service` label values.
    fn labels(&self) -> Vec<String> {
        vec![self.key.to_string(), self.service.to_string()]
    }
}

/// Who can be read: the running replica (its implementation builds the reading
/// and hands it to `f`).
pub trait Source: Send + Sync {
    fn read(&self, f: &mut dyn FnMut(&Reading<'_>));
}

/// Cells of a [`Striped`] counter and of a [`Histogram`]: workers beyond this
/// many share cells (still correct, only contended again).
const STRIPES: usize = 4;

/// One worker's cell, on a cache line of its own.
#[derive(Default)]
#[repr(align(64))]
struct Cell(AtomicU64);

/// A counter (or gauge) the request path writes: `AtomicU64`'s calls, with a cell
/// per worker ([`switchyard_http1::worker::id`]) summed when read. Every worker
/// writes these on every request; one shared atomic made the cores pass its cache
/// line back and forth each time (issue #24: two workers cost more per request
/// than one). Figures, not synchronisation: reads may miss a write in flight.
#[derive(Default)]
pub struct Striped([Cell; STRIPES]);

impl Striped {
    fn cell(&self) -> &AtomicU64 {
        &self.0[switchyard_http1::worker::id() % STRIPES].0
    }

    pub fn fetch_add(&self, n: u64, order: Ordering) {
        self.cell().fetch_add(n, order);
    }

    /// For a gauge: a decrement may land in another cell than its increment; the
    /// sum is right all the same (wrapping).
    pub fn fetch_sub(&self, n: u64, order: Ordering) {
        self.cell().fetch_sub(n, order);
    }

    /// The sum of the cells.
    pub fn load(&self, order: Ordering) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, c| sum.wrapping_add(c.0.load(order)))
    }
}

impl std::fmt::Debug for Striped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.load(Relaxed).fmt(f)
    }
}

/// Proxy-wide figures.
#[derive(Debug, Default)]
pub struct Metrics {
    pub in_flight: Striped,
    pub requests: Striped,
    /// Responses to clients by status class (1xx..5xx).
    pub status: [Striped; 5],
    /// Client-visible duration, until the response body ends.
    pub duration: Histogram,
    /// New upstream connections: time to connect.
    pub connect: Histogram,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_rejected: AtomicU64,
    /// Client connections accepted, per worker.
    pub worker_connections: PerWorker,
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
    /// Responses cut off by `server.send_timeout`.
    pub send_timeouts: AtomicU64,
    /// HTTP/2 connections closed idle or with an unfinished HEADERS block.
    pub h2_timeouts: AtomicU64,
    /// HTTP/2 connections ended for a reset flood.
    pub h2_reset_floods: AtomicU64,
    /// The same histograms as OpenTelemetry instruments, while OTLP metrics are on.
    pub otel: std::sync::OnceLock<OtelHistograms>,
}

/// One counter per proxy worker, sized when the workers start (until then, and
/// for a worker number beyond them, nothing is counted).
#[derive(Debug, Default)]
pub struct PerWorker(std::sync::OnceLock<Box<[AtomicU64]>>);

impl PerWorker {
    /// Counts for `workers` workers (the first call sizes it; later ones keep it).
    pub fn size(&self, workers: usize) {
        let _ = self
            .0
            .set((0..workers.max(1)).map(|_| AtomicU64::new(0)).collect());
    }

    /// One more for worker `id`.
    pub fn add(&self, id: usize) {
        if let Some(c) = self.0.get().and_then(|all| all.get(id)) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn all(&self) -> &[AtomicU64] {
        self.0.get().map(|b| &b[..]).unwrap_or(&[])
    }
}

/// The histogram families as OpenTelemetry instruments, recorded beside the
/// atomic ones while OTLP metrics are on (OpenTelemetry has no observable
/// histogram).
#[derive(Debug)]
pub struct OtelHistograms {
    pub duration: opentelemetry::metrics::Histogram<f64>,
    pub backend: opentelemetry::metrics::Histogram<f64>,
    pub connect: opentelemetry::metrics::Histogram<f64>,
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

/// A fixed-bucket latency histogram ([`LATENCY_BUCKETS_S`] plus +Inf), a set
/// of cells per worker as [`Striped`] has.
#[derive(Debug, Default)]
pub struct Histogram {
    cells: [HistogramCell; STRIPES],
}

#[derive(Debug)]
#[repr(align(64))]
struct HistogramCell {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Default for HistogramCell {
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
        let cell = &self.cells[switchyard_http1::worker::id() % STRIPES];
        cell.buckets[idx].fetch_add(1, Relaxed);
        cell.sum_ns.fetch_add(ns, Relaxed);
        cell.count.fetch_add(1, Relaxed);
    }

    /// Per-bucket (non-cumulative) counts.
    pub fn counts(&self) -> Vec<u64> {
        (0..LATENCY_BUCKETS_S.len() + 1)
            .map(|i| self.sum(|c| &c.buckets[i]))
            .collect()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum(|c| &c.sum_ns) as f64 / 1e9
    }

    pub fn count(&self) -> u64 {
        self.sum(|c| &c.count)
    }

    fn sum(&self, field: impl Fn(&HistogramCell) -> &AtomicU64) -> u64 {
        self.cells
            .iter()
            .fold(0u64, |sum, c| sum.wrapping_add(field(c).load(Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What workers write in their own cells reads back as one figure: counters,
    /// a gauge whose decrement lands in another worker's cell, histograms.
    #[test]
    fn striped_figures_sum_the_workers_cells() {
        let m = Metrics::default();
        std::thread::scope(|s| {
            for worker in 0..6 {
                let m = &m;
                s.spawn(move || {
                    switchyard_http1::worker::enter(worker);
                    for _ in 0..=worker {
                        m.requests.fetch_add(1, Relaxed);
                        m.in_flight.fetch_add(1, Relaxed);
                        m.duration.record(Duration::from_millis(3));
                    }
                    // Another worker's requests finishing here.
                    m.in_flight.fetch_sub(worker as u64, Relaxed);
                });
            }
        });
        // 1 + 2 + ... + 6 requests; 6 still in flight.
        assert_eq!(m.requests.load(Relaxed), 21);
        assert_eq!(m.in_flight.load(Relaxed), 21 - 15);
        assert_eq!(m.duration.count(), 21);
        assert_eq!(m.duration.counts().iter().sum::<u64>(), 21);
        assert!((m.duration.sum_seconds() - 21.0 * 0.003).abs() < 1e-9);
        assert_eq!(std::mem::align_of::<Cell>(), 64, "a cache line each");
    }

    #[test]
    fn the_table_names_each_family_once_with_prometheus_suffixes() {
        let mut seen = std::collections::BTreeSet::new();
        for def in TABLE {
            assert!(seen.insert(def.name), "{} twice", def.name);
            assert!(def.name.starts_with("switchyard_"), "{}", def.name);
            assert_eq!(
                def.kind == Kind::Counter,
                def.name.ends_with("_total"),
                "{}: a counter's name, and only a counter's, ends in _total",
                def.name
            );
            assert!(!def.otlp_name().ends_with("_total"), "{}", def.name);
            if def.kind == Kind::Histogram {
                assert!(def.name.ends_with("_seconds") && def.unit == "s");
            } else if def.name.ends_with("_seconds") {
                // A gauge in seconds (certificate expiry).
                assert_eq!(def.unit, "s", "{}", def.name);
            } else {
                // A count: an annotation, which a Prometheus exporter leaves out.
                assert!(def.unit.starts_with('{') && def.unit.ends_with('}'));
            }
            assert!(!def.help.is_empty());
        }
        assert_eq!(TABLE.len(), 44);
    }

    #[test]
    fn every_family_reads_samples_with_all_its_labels() {
        let proxy = Metrics::default();
        proxy.retries.fetch_add(3, Relaxed);
        proxy.worker_connections.size(2);
        proxy.worker_connections.add(1);
        let latency = Histogram::default();
        latency.record(Duration::from_millis(2));
        let reading = Reading {
            proxy: &proxy,
            spans_lost: 1,
            config_generation: 2,
            config_refused: false,
            store: StoreView {
                kind: "memory".into(),
                connected: true,
                ..Default::default()
            },
            replicas: 1,
            backends: vec![BackendReading {
                key: "http://a:80".into(),
                service: "default".into(),
                url: "http://a".into(),
                status: [0, 5, 0, 0, 1],
                errors: 1,
                active: 0,
                up: true,
                healthy: true,
                ejected: false,
                circuit: CircuitState::Open,
                latency: &latency,
                latency_ewma_ns: 0,
            }],
            tls: Some(TlsReading {
                certificates: vec![("api.example.com".into(), "file".into(), 86_400)],
                handshakes: 3,
                resumed: 1,
                ticket_keys: 2,
                acme: Some(AcmeReading::default()),
                ..Default::default()
            }),
            routes: vec![RouteReading {
                route: "api".into(),
                service: "api".into(),
                status: [0, 3, 0, 0, 0],
            }],
            discovery: vec![(
                "api".into(),
                DiscoveryView {
                    members: 2,
                    failures: 1,
                    ..Default::default()
                },
            )],
        };
        for def in TABLE {
            let mut out = Vec::new();
            (def.read)(&reading, &mut out);
            assert!(!out.is_empty(), "{} has no samples", def.name);
            for s in &out {
                assert_eq!(s.labels.len(), def.labels.len(), "{}", def.name);
                let histogram = matches!(s.value, Value::Histogram { .. });
                assert_eq!(histogram, def.kind == Kind::Histogram, "{}", def.name);
            }
        }
        let read = |name: &str| {
            let def = TABLE.iter().find(|d| d.name == name).expect("family");
            let mut out = Vec::new();
            (def.read)(&reading, &mut out);
            out
        };
        assert_eq!(read(RETRIES_TOTAL)[0].value, Value::Int(3));
        let workers = read(WORKER_CONNECTIONS_TOTAL);
        assert_eq!(workers.len(), 2);
        assert_eq!(workers[1].labels, ["1"]);
        assert_eq!(workers[1].value, Value::Int(1));
        let open: Vec<_> = read(CIRCUIT_STATE)
            .into_iter()
            .filter(|s| s.value == Value::Int(1))
            .collect();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].labels, ["http://a:80", "default", "open"]);
    }

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
