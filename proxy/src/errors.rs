//! Data-path errors and the one place they become HTTP responses. Clients get a
//! status and a short plain body; the detail goes to the log and metrics.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::forward::body::ProxyBody;
use crate::forward::pool::ConnectError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Every backend is down, ejected, draining or has an open circuit.
    #[error("no backend available")]
    NoBackend,
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
        source: crate::forward::h1::UpstreamError,
    },
    #[error("upstream {backend} sent no response within {timeout:?}")]
    Timeout {
        backend: Arc<str>,
        timeout: Duration,
    },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

/// What a 429 tells the client.
#[derive(Debug, Clone)]
pub struct RateLimited {
    /// Seconds until a request would be admitted.
    pub retry_after: u64,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A short response; never the error's detail.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let body: &'static str = match &self {
            ProxyError::NoBackend => "no backend available\n",
            ProxyError::RateLimited(_) => "too many requests\n",
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => "bad gateway\n",
            ProxyError::Timeout { .. } => "gateway timeout\n",
            ProxyError::BadRequest(reason) => reason,
        };
        let mut resp = Response::new(ProxyBody::full(body));
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
            ProxyError::BadRequest(_) => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

// === answers for the TLS edge (see `tls`) ===

/// `308 Permanent Redirect` to `location` (the plain listener's redirect to HTTPS;
/// 308 keeps the method and body, unlike 301).
pub fn redirect(location: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// An ACME HTTP-01 key authorization (RFC 8555 §8.3).
pub fn acme_answer(key_authorization: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(key_authorization));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// `404` for an ACME token nobody is waiting for.
pub fn not_found() -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full("not found\n"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
