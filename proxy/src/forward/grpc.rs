//! gRPC over the HTTP/2 upstream path: what the proxy reads of a call (its
//! `grpc-timeout`, the `grpc-status` it ended with) and the deferred accounting
//! of a call whose status only arrives in the trailers.
//!
//! A gRPC answer is `200` whatever the call's fate; its `grpc-status` decides
//! whether the backend failed it (see [`crate::backend::grpc_code_failed`]). A
//! trailers-only answer carries it in the head and is accounted at once, like
//! any answer; otherwise the attempt's record waits for the trailers
//! ([`Pending`]), so passive health, the circuit breaker and the adaptive
//! strategy's error rate see `UNAVAILABLE` as the failure it is.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use tokio::time::Instant;

use crate::backend::{Backend, Outcome};
use crate::dataplane::DataPlane;

/// Whether a message is gRPC (`content-type: application/grpc[+proto|...]`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The names as constants: a lookup by `&str` parses the name first.
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The `grpc-status` of a head or trailers, if it has a valid one.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    let v = headers.get(&GRPC_STATUS)?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

/// The `grpc-status` of a trailers-only answer (a gRPC head that ended the
/// stream: no message reached the client, so the call may be replayed).
pub fn trailers_only_status<B: http_body::Body>(resp: &http::Response<B>) -> Option<u32> {
    let headers = resp.headers();
    if !resp.body().is_end_stream() || !is_grpc(headers) {
        return None;
    }
    status(headers)
}

/// `grpc-timeout` (gRPC over HTTP/2: up to 8 digits and a unit of H, M, S, m,
/// u or n), or `None` when absent or malformed (then the call has no deadline of
/// its own, as gRPC servers treat it).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Trailers that end a call the proxy cut short (its deadline passed while the
/// answer streamed): `DEADLINE_EXCEEDED`.
pub fn deadline_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("4"));
    t.insert(
        "grpc-message",
        HeaderValue::from_static("deadline exceeded at the proxy"),
    );
    t
}

/// An attempt's record, held until the call's trailers say how it ended.
pub struct Pending {
    plane: Arc<DataPlane>,
    backend: Arc<Backend>,
    started: Instant,
    ttfb: Duration,
    /// The attempt was the half-open circuit's probe (its slot is ours).
    probe: bool,
    done: bool,
}

impl Pending {
    pub fn new(
        plane: Arc<DataPlane>,
        backend: Arc<Backend>,
        started: Instant,
        ttfb: Duration,
        probe: bool,
    ) -> Self {
        Self {
            plane,
            backend,
            started,
            ttfb,
            probe,
            done: false,
        }
    }

    /// The call ended with `trailers` (no `grpc-status` in them: `UNKNOWN`, as
    /// gRPC clients read it).
    pub fn trailers(&mut self, trailers: &HeaderMap) {
        let code = status(trailers).unwrap_or(2);
        self.record(Outcome::Grpc {
            status: http::StatusCode::OK,
            code,
            ttfb: self.ttfb,
        });
    }

    /// The backend's stream broke (reset, connection lost) or ended without
    /// trailers.
    pub fn broken(&mut self) {
        self.record(Outcome::Lost);
    }

    fn record(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let snap = self.plane.snapshot();
        let Some(service) = snap.service(&self.backend.service) else {
            // The service went with a reload: nothing left to hold it against.
            if self.probe {
                self.backend.circuit.release_probe();
            }
            return;
        };
        let now = Instant::now();
        let recorded = self
            .backend
            .record_at(outcome, self.started, now, self.probe, service);
        self.plane.noted(&self.backend, recorded);
    }
}

impl Drop for Pending {
    /// Ended without a verdict (the client went away): nothing is held against
    /// the backend, and a probe slot goes back.
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.backend.circuit.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &'static str, v: &'static str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_static(v));
        m
    }

    #[test]
    fn timeouts_parse_by_unit_and_refuse_garbage() {
        assert_eq!(
            timeout(&h("grpc-timeout", "100m")),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            timeout(&h("grpc-timeout", "2S")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            timeout(&h("grpc-timeout", "1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            timeout(&h("grpc-timeout", "5n")),
            Some(Duration::from_nanos(5))
        );
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            let mut m = HeaderMap::new();
            m.insert("grpc-timeout", HeaderValue::from_str(bad).unwrap());
            assert_eq!(timeout(&m), None, "{bad}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn status_and_content_type() {
        assert_eq!(status(&h("grpc-status", "14")), Some(14));
        assert_eq!(status(&h("grpc-status", "x")), None);
        assert!(is_grpc(&h("content-type", "application/grpc")));
        assert!(is_grpc(&h("content-type", "application/grpc+proto")));
        assert!(!is_grpc(&h("content-type", "application/json")));
    }
}
