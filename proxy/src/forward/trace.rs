//! Per-request observability: the server span, client spans per attempt, and the
//! access-log line. All of it is skipped (no span, no allocation) when telemetry is
//! off or the request is not sampled, and when the access log is off.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Request, StatusCode};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::backend::Backend;
use crate::dataplane::DataPlane;
use crate::route::Route;
use crate::snapshot::Service;
use crate::telemetry::otel::{SPAN_TARGET, Sampling};

/// One line of the access log, filled in as the request goes.
pub struct AccessEntry {
    method: Method,
    path: String,
    client: IpAddr,
    trace_id: String,
    route: Option<Arc<str>>,
    service: Arc<str>,
    backend: Option<Arc<str>>,
    status: u16,
}

/// A request's trace span and access-log entry.
pub struct Trace {
    pub span: Span,
    access: Option<Box<AccessEntry>>,
}

impl Trace {
    pub fn start<B>(
        plane: &DataPlane,
        req: &Request<B>,
        peer: SocketAddr,
        snap: &Service,
        route: Option<&Route>,
    ) -> Trace {
        let span = match plane
            .telemetry()
            .filter(|t| t.traces_on())
            .map(|t| t.sample(req.headers()))
        {
            Some(Sampling::Record(parent)) => {
                let (host, port) = host_port(req.headers(), req.uri());
                let span = tracing::info_span!(
                    target: SPAN_TARGET,
                    "request",
                    otel.name = %req.method(),
                    otel.kind = "server",
                    otel.status_code = Empty,
                    http.request.method = %req.method(),
                    url.scheme = "http",
                    url.path = req.uri().path(),
                    server.address = host,
                    server.port = port,
                    client.address = %peer.ip(),
                    network.protocol.version = version(req.version()),
                    http.response.status_code = Empty,
                    "error.type" = Empty,
                    switchyard.strategy = snap.config.strategy().as_str(),
                    switchyard.service = &*snap.name,
                    switchyard.route = route.map_or("-", |r| &*r.name),
                    switchyard.retries = Empty,
                    switchyard.rate_limit = Empty,
                );
                let _ = span.set_parent(parent);
                span
            }
            _ => Span::none(),
        };
        let access = snap.config.logging.access_log.then(|| {
            Box::new(AccessEntry {
                method: req.method().clone(),
                path: req.uri().path().to_string(),
                client: peer.ip(),
                trace_id: trace_id(&span, req.headers()),
                route: route.map(|r| r.name.clone()),
                service: snap.name.clone(),
                backend: None,
                status: 0,
            })
        });
        Trace { span, access }
    }

    pub fn rate_limit(&self, admitted: bool) {
        if !self.span.is_disabled() {
            self.span.record(
                "switchyard.rate_limit",
                if admitted { "admitted" } else { "limited" },
            );
        }
    }

    /// A client span for one upstream attempt (disabled when not tracing).
    pub fn attempt(
        &self,
        backend: &Backend,
        method: &Method,
        path: &str,
        attempt: usize,
        probe: bool,
    ) -> Span {
        if self.span.is_disabled() {
            return Span::none();
        }
        if attempt > 1 {
            self.span.record("switchyard.retries", attempt - 1);
        }
        tracing::info_span!(
            target: SPAN_TARGET,
            parent: &self.span,
            "upstream",
            otel.name = %method,
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = %method,
            server.address = backend.target.host.as_str(),
            server.port = backend.target.port,
            url.full = format!("{}{path}", backend.key),
            http.response.status_code = Empty,
            "error.type" = Empty,
            switchyard.backend = &*backend.url,
            switchyard.attempt = attempt,
            switchyard.circuit = if probe { "half-open probe" } else { "closed" },
        )
    }

    /// Puts `traceparent` for `client` into the upstream request.
    pub fn inject(plane: &DataPlane, client: &Span, headers: &mut HeaderMap) {
        if client.is_disabled() {
            return;
        }
        if let Some(t) = plane.telemetry() {
            t.inject(&client.context(), headers);
        }
    }

    /// Records the answer on a client span.
    pub fn attempt_done(client: &Span, status: Option<StatusCode>, error: Option<&'static str>) {
        if client.is_disabled() {
            return;
        }
        if let Some(s) = status {
            client.record("http.response.status_code", s.as_u16());
            if s.is_client_error() || s.is_server_error() {
                client.record("otel.status_code", "error");
            }
        }
        if let Some(e) = error {
            client.record("error.type", e);
            client.record("otel.status_code", "error");
        }
    }

    /// Records the client-visible answer.
    pub fn respond(&mut self, status: StatusCode, backend: Option<&Arc<str>>) {
        if !self.span.is_disabled() {
            self.span
                .record("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                self.span.record("otel.status_code", "error");
                self.span.record("error.type", status.as_str());
            }
        }
        if let Some(a) = self.access.as_mut() {
            a.status = status.as_u16();
            a.backend = backend.cloned();
        }
    }

    /// Ends the request: writes the access line (the span closes when dropped).
    pub fn finish(&mut self, duration: Duration) {
        if let Some(a) = self.access.take() {
            tracing::info!(
                target: "access",
                trace_id = %a.trace_id,
                client = %a.client,
                method = %a.method,
                path = %a.path,
                status = a.status,
                route = a.route.as_deref().unwrap_or("-"),
                service = &*a.service,
                backend = a.backend.as_deref().unwrap_or("-"),
                duration_ms = duration.as_secs_f64() * 1e3,
                "{} {} {}",
                a.method,
                a.path,
                a.status
            );
        }
    }
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    }
}

fn host_port(headers: &HeaderMap, uri: &http::Uri) -> (String, u16) {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h.to_string(), p.parse().unwrap_or(80))
        }
        _ => (host.to_string(), 80),
    }
}

/// The trace id for the log: the span's, or the caller's `traceparent`, or `-`.
fn trace_id(span: &Span, headers: &HeaderMap) -> String {
    use opentelemetry::trace::TraceContextExt;
    if !span.is_disabled() {
        let id = span.context().span().span_context().trace_id();
        if id != opentelemetry::trace::TraceId::INVALID {
            return id.to_string();
        }
    }
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(3..35))
        .unwrap_or("-")
        .to_string()
}
