//! `/metrics` in the Prometheus text format (0.0.4) or OpenMetrics 1.0, chosen by
//! the `Accept` header the way Prometheus negotiates; a plain request keeps the
//! seed's JSON array (see `admin`).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use switchyard_shared::{CircuitState, LATENCY_BUCKETS_S};
use tokio::time::Instant;

use super::metrics::*;
use crate::app::App;

/// Output format for `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The seed's JSON array.
    Json,
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// What an `Accept` header asks for: OpenMetrics if listed, Prometheus text for
    /// `text/plain`, otherwise JSON.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Json;
        };
        if accept.contains("application/openmetrics-text") {
            Format::OpenMetrics
        } else if accept.contains("text/plain") {
            Format::Prometheus
        } else {
            Format::Json
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A text exposition being written (also used for the TLS families, `tls::metrics`).
pub(crate) struct Out {
    pub(crate) buf: String,
    /// OpenMetrics (else Prometheus text).
    pub(crate) open: bool,
}

impl Out {
    /// Starts a family. For counters, `name` ends in `_total`; OpenMetrics names the
    /// family without it.
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let family = if self.open && kind == "counter" {
            name.strip_suffix("_total").unwrap_or(name)
        } else {
            name
        };
        let _ = writeln!(self.buf, "# HELP {family} {help}");
        let _ = writeln!(self.buf, "# TYPE {family} {kind}");
    }

    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.buf.push_str(name);
        if !labels.is_empty() {
            self.buf.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.buf.push(',');
                }
                let _ = write!(self.buf, "{k}=\"{}\"", escape(v));
            }
            self.buf.push('}');
        }
        let _ = writeln!(self.buf, " {}", fmt_value(value));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], counts: &[u64], sum: f64) {
        let mut cumulative = 0u64;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            let le = match LATENCY_BUCKETS_S.get(i) {
                Some(b) => fmt_value(*b),
                None => "+Inf".to_string(),
            };
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Renders every instrument.
pub fn render(app: &App, format: Format) -> String {
    let mut o = Out {
        buf: String::with_capacity(8 * 1024),
        open: format == Format::OpenMetrics,
    };
    let m = &app.metrics;

    o.family(
        REQUESTS_TOTAL,
        "counter",
        "Client requests answered, by status class.",
    );
    for (i, c) in m.status_classes().iter().enumerate() {
        o.sample(REQUESTS_TOTAL, &[("code_class", CLASSES[i])], *c as f64);
    }
    o.family(
        REQUEST_DURATION,
        "histogram",
        "Client-visible request duration in seconds.",
    );
    o.histogram(
        REQUEST_DURATION,
        &[],
        &m.duration.counts(),
        m.duration.sum_seconds(),
    );
    o.family(REQUESTS_IN_FLIGHT, "gauge", "Requests being served.");
    o.sample(REQUESTS_IN_FLIGHT, &[], m.in_flight.load(Relaxed) as f64);
    o.family(
        UPSTREAM_CONNECT,
        "histogram",
        "Time to open a new upstream connection, seconds.",
    );
    o.histogram(
        UPSTREAM_CONNECT,
        &[],
        &m.connect.counts(),
        m.connect.sum_seconds(),
    );
    let counters: [(&str, &str, u64); 8] = [
        (
            RETRIES_TOTAL,
            "Attempts retried on another backend.",
            m.retries.load(Relaxed),
        ),
        (
            RATE_LIMITED_TOTAL,
            "Requests refused with 429.",
            m.rate_limited.load(Relaxed),
        ),
        (
            CONNECTIONS_REJECTED_TOTAL,
            "Client connections refused over max_connections.",
            m.connections_rejected.load(Relaxed),
        ),
        (
            ADMIN_ERRORS_TOTAL,
            "Admin requests refused as invalid.",
            m.admin_errors.load(Relaxed),
        ),
        (
            HEALTH_TRANSITIONS_TOTAL,
            "Active health verdict changes.",
            m.health_transitions.load(Relaxed),
        ),
        (
            EJECTIONS_TOTAL,
            "Passive-health ejections.",
            m.ejections.load(Relaxed),
        ),
        (
            REFUSED_FRAMING_TOTAL,
            "Requests refused with 400 for ambiguous framing (Content-Length with Transfer-Encoding, repeated Content-Length).",
            m.refused_framing.load(Relaxed),
        ),
        (
            REFUSED_MALFORMED_TOTAL,
            "Request heads refused before forwarding: malformed (400), too large (431) or not received within header_read_timeout (408).",
            m.refused_malformed.load(Relaxed),
        ),
    ];
    for (name, help, v) in counters {
        o.family(name, "counter", help);
        o.sample(name, &[], v as f64);
    }
    o.family(
        SPANS_DROPPED_TOTAL,
        "counter",
        "Spans dropped: export queue full or export failed.",
    );
    o.sample(
        SPANS_DROPPED_TOTAL,
        &[],
        app.telemetry().map_or(0, |t| t.spans_lost()) as f64,
    );
    o.family(CONNECTIONS_ACTIVE, "gauge", "Open client connections.");
    o.sample(
        CONNECTIONS_ACTIVE,
        &[],
        m.connections_active.load(Relaxed) as f64,
    );
    o.family(
        CIRCUIT_TRANSITIONS_TOTAL,
        "counter",
        "Circuit-breaker transitions, by new state.",
    );
    for (to, v) in [
        ("open", &m.circuits_opened),
        ("half-open", &m.circuits_half_opened),
        ("closed", &m.circuits_closed),
    ] {
        o.sample(
            CIRCUIT_TRANSITIONS_TOTAL,
            &[("to", to)],
            v.load(Relaxed) as f64,
        );
    }

    o.family(
        CONFIG_RELOADS_TOTAL,
        "counter",
        "Config reloads, by result.",
    );
    o.sample(
        CONFIG_RELOADS_TOTAL,
        &[("result", "applied")],
        m.config_reloads.load(Relaxed) as f64,
    );
    o.sample(
        CONFIG_RELOADS_TOTAL,
        &[("result", "refused")],
        m.config_failures.load(Relaxed) as f64,
    );
    let status = app.config_status();
    o.family(
        CONFIG_GENERATION,
        "gauge",
        "Configs applied since start (1 = the first).",
    );
    o.sample(CONFIG_GENERATION, &[], status.generation as f64);
    o.family(
        CONFIG_ERROR,
        "gauge",
        "1 while the newest revision of the config source is refused.",
    );
    o.sample(
        CONFIG_ERROR,
        &[],
        f64::from(u8::from(status.last_error.is_some())),
    );

    let store = app.store.status();
    o.family(
        STORE_ERRORS_TOTAL,
        "counter",
        "State-store commands that failed.",
    );
    o.sample(
        STORE_ERRORS_TOTAL,
        &[("store", &store.kind)],
        store.errors as f64,
    );
    o.family(
        STORE_CONNECTED,
        "gauge",
        "1 while the state store is reachable.",
    );
    o.sample(
        STORE_CONNECTED,
        &[("store", &store.kind)],
        f64::from(u8::from(store.connected)),
    );
    o.family(REPLICAS, "gauge", "Live replicas this replica knows of.");
    o.sample(REPLICAS, &[], app.cluster.link.live() as f64);

    // Per backend (running set and draining).
    let snap = app.snapshot();
    let now = Instant::now();
    let mut backends: Vec<_> = snap.members.iter().map(|m| m.backend.clone()).collect();
    backends.extend(app.draining());
    o.family(
        BACKEND_REQUESTS_TOTAL,
        "counter",
        "Backend responses, by status class.",
    );
    for b in &backends {
        for (i, c) in b.stats.status_classes().iter().enumerate() {
            o.sample(
                BACKEND_REQUESTS_TOTAL,
                &[("backend", &b.key), ("code_class", CLASSES[i])],
                *c as f64,
            );
        }
    }
    o.family(
        BACKEND_ERRORS_TOTAL,
        "counter",
        "Failed attempts (connect error, timeout, lost connection, 5xx).",
    );
    for b in &backends {
        o.sample(
            BACKEND_ERRORS_TOTAL,
            &[("backend", &b.key)],
            b.stats.errors.load(Relaxed) as f64,
        );
    }
    o.family(
        BACKEND_ACTIVE,
        "gauge",
        "Requests in flight to the backend.",
    );
    for b in &backends {
        o.sample(BACKEND_ACTIVE, &[("backend", &b.key)], b.active() as f64);
    }
    o.family(BACKEND_UP, "gauge", "1 if the backend gets new requests.");
    for b in &backends {
        o.sample(
            BACKEND_UP,
            &[("backend", &b.key)],
            f64::from(u8::from(b.available(now, &snap.config))),
        );
    }
    o.family(
        BACKEND_HEALTHY,
        "gauge",
        "1 unless active health checks find the backend unhealthy.",
    );
    for b in &backends {
        o.sample(
            BACKEND_HEALTHY,
            &[("backend", &b.key)],
            f64::from(u8::from(b.health.is_healthy())),
        );
    }
    o.family(
        EJECTED,
        "gauge",
        "1 while passive health has the backend ejected.",
    );
    for b in &backends {
        let ejected = b.outlier.is_ejected(b.nanos(now));
        o.sample(
            EJECTED,
            &[("backend", &b.key)],
            f64::from(u8::from(ejected)),
        );
    }
    o.family(
        CIRCUIT_STATE,
        "gauge",
        "Circuit-breaker state (1 for the current one).",
    );
    for b in &backends {
        let state = if snap.config.circuit_breaker.is_some() {
            b.circuit.state(b.nanos(now))
        } else {
            CircuitState::Closed
        };
        for s in [
            CircuitState::Closed,
            CircuitState::Open,
            CircuitState::HalfOpen,
        ] {
            o.sample(
                CIRCUIT_STATE,
                &[("backend", &b.key), ("state", s.as_str())],
                f64::from(u8::from(s == state)),
            );
        }
    }
    o.family(
        BACKEND_LATENCY,
        "histogram",
        "Time to the backend's response headers, seconds.",
    );
    for b in &backends {
        let h = &b.stats.latency;
        o.histogram(
            BACKEND_LATENCY,
            &[("backend", &b.key)],
            &h.counts(),
            h.sum_seconds(),
        );
    }
    if o.open {
        o.buf.push_str("# EOF\n");
    }
    o.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_prometheus_accept_headers() {
        assert_eq!(Format::negotiate(None), Format::Json);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Json);
        assert_eq!(Format::negotiate(Some("application/json")), Format::Json);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Prometheus
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
