//! Data-path errors and the one place every answer the proxy makes up comes from:
//! 400/408/431/501 for heads the HTTP/1.1 server refuses, 429 for the rate limiter,
//! 502/503/504 for the upstream side, 503 for a connection over the limit (as
//! linkerd's `errors/respond.rs`). Clients get a status and a short plain body;
//! the detail goes to the log and metrics.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use switchyard_http1::{ConnectError, Refusal, UpstreamError};

pub use crate::ratelimit::RateLimited;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Every backend is down, ejected, draining or has an open circuit.
    #[error("no backend available")]
    NoBackend,
    /// No route matched and the service `default` has no backends.
    #[error("no route matches")]
    NoRoute,
    #[error("rate limited")]
    RateLimited(RateLimited),
    #[error("connect to {backend}: {source}")]
    Connect {
        backend: Arc<str>,
        #[source]
        source: ConnectError,
    },
    #[error("upstream {backend}: {source}")]
    Upstream {
        backend: Arc<str>,
        #[source]
        source: UpstreamError,
    },
    #[error("upstream {backend} sent no response within {timeout:?}")]
    Timeout {
        backend: Arc<str>,
        timeout: Duration,
    },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A request head the HTTP/1.1 server would not pass on.
    #[error("request head refused: {0:?}")]
    Refused(Refusal),
    /// A client connection over `server.max_connections`.
    #[error("too many connections")]
    TooManyConnections,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend | ProxyError::TooManyConnections => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Refused(r) => match r {
                Refusal::Malformed(_) | Refusal::Ambiguous(_) => StatusCode::BAD_REQUEST,
                Refusal::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Refusal::Timeout => StatusCode::REQUEST_TIMEOUT,
                Refusal::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
            },
        }
    }

    /// A short response (its body is the text); never the error's detail.
    pub fn into_response(self) -> Response<Bytes> {
        let status = self.status();
        let body: &'static str = match &self {
            ProxyError::NoBackend => "no backend available\n",
            ProxyError::NoRoute => "no route matches this request\n",
            ProxyError::RateLimited(_) => "too many requests\n",
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => "bad gateway\n",
            ProxyError::Timeout { .. } => "gateway timeout\n",
            ProxyError::BadRequest(reason) => reason,
            ProxyError::Refused(r) => match r {
                Refusal::Malformed(reason) => reason,
                Refusal::Ambiguous(_) => "ambiguous request framing\n",
                Refusal::TooLarge => "request header fields too large\n",
                Refusal::Timeout => "request head not received in time\n",
                Refusal::UnknownCoding => "transfer coding not implemented\n",
            },
            ProxyError::TooManyConnections => "too many connections\n",
        };
        let mut resp = Response::new(Bytes::from_static(body.as_bytes()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match &self {
            ProxyError::NoBackend => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::RateLimited(rl) => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(rl.retry_after.max(1)),
                );
                h.insert("ratelimit-limit", HeaderValue::from(rl.limit));
                h.insert("ratelimit-remaining", HeaderValue::from(rl.remaining));
                h.insert("ratelimit-reset", HeaderValue::from(rl.reset));
            }
            ProxyError::BadRequest(_) | ProxyError::Refused(_) => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ProxyError::TooManyConnections => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

impl ProxyError {
    /// The gRPC status code a gRPC client gets for this error: 14 UNAVAILABLE (no
    /// backend, circuit open, backend unreachable), 4 DEADLINE_EXCEEDED, 8
    /// RESOURCE_EXHAUSTED (rate limited), 12 UNIMPLEMENTED (no route: what a gRPC
    /// client makes of an HTTP 404), 13 INTERNAL (a request that could not be
    /// passed on).
    pub fn grpc_code(&self) -> u32 {
        match self {
            ProxyError::NoBackend
            | ProxyError::TooManyConnections
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. } => 14,
            ProxyError::Timeout { .. } => 4,
            ProxyError::RateLimited(_) => 8,
            ProxyError::NoRoute => 12,
            ProxyError::BadRequest(_) | ProxyError::Refused(_) => 13,
        }
    }

    /// The answer to a gRPC client (`content-type: application/grpc*`): a
    /// trailers-only response, `200` with `grpc-status` and `grpc-message` in the
    /// head and no body, which every gRPC client reads as the call's status.
    pub fn into_grpc_response(self) -> Response<Bytes> {
        let code = self.grpc_code();
        let message: &'static str = match &self {
            ProxyError::NoBackend => "no backend available",
            ProxyError::NoRoute => "no route matches",
            ProxyError::RateLimited(_) => "rate limited",
            ProxyError::Connect { .. } => "backend unreachable",
            ProxyError::Upstream { .. } => "backend connection failed",
            ProxyError::Timeout { .. } => "deadline exceeded at the proxy",
            ProxyError::BadRequest(_) | ProxyError::Refused(_) => "request refused by the proxy",
            ProxyError::TooManyConnections => "too many connections",
        };
        let mut resp = Response::new(Bytes::new());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(code));
        // Plain ASCII without `%`: no percent-encoding needed.
        h.insert("grpc-message", HeaderValue::from_static(message));
        if let ProxyError::RateLimited(rl) = &self {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(rl.retry_after.max(1)),
            );
        }
        resp
    }
}

// === answers for the TLS edge (see `tls`) ===

/// `308 Permanent Redirect` to `location` (the plain listener's redirect to HTTPS;
/// 308 keeps the method and body, unlike 301).
pub fn redirect(location: &str) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// An ACME HTTP-01 key authorization (RFC 8555 §8.3).
pub fn acme_answer(key_authorization: String) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(key_authorization));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// `404` for an ACME token nobody is waiting for.
pub fn not_found() -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from_static(b"not found\n"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_clients_get_trailers_only_statuses() {
        let r = ProxyError::NoBackend.into_grpc_response();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "no backend available");
        assert!(r.body().is_empty());
        let timeout = ProxyError::Timeout {
            backend: "http://b:1".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.into_grpc_response().headers()["grpc-status"], "4");
        assert_eq!(ProxyError::BadRequest("x").grpc_code(), 13);
    }
}
