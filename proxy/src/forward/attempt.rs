//! One attempt on one backend, and the bookkeeping every attempt ends with.
//!
//! An attempt ([`run`]) takes a connection ([`checkout`]: pooled, or new), sends the
//! request ([`send`]) and waits for the response head within the request timeout
//! ([`Answer`]), and says how it [`Ended`]. [`settle`] is the one place that
//! accounts for it: the client span's outcome, the backend's record (counters,
//! latency estimate, circuit, ejection) and the transitions it caused. A half-open
//! circuit's probe slot is held by a [`Probe`] guard: recording an outcome hands it
//! to the breaker, and an attempt that ends without one (a stale connection, a
//! client that went away, a request that could not be sent) gives it back when the
//! guard drops.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use switchyard_http1::{Conn, Exchange, SendError, UpstreamError};
use tokio::time::Instant;
use tracing::Span;

use super::body::{ReqBody, UpstreamBody};
use super::grpc::{self, Pending};
use super::h2::H2Answer;
use super::headers::Forwarded;
use super::pool::{self, ConnectError};
use super::replay::Replay;
use super::trace::Trace;
use crate::backend::{Backend, Outcome};
use crate::config::Config;
use crate::dataplane::DataPlane;
use crate::resilience::Circuit;
use crate::snapshot::Service;
use crate::telemetry::metrics::Metrics;

/// What an attempt sends: the rewritten head, the forwarding lines, and the body
/// while it has not been handed to a connection.
pub(super) struct Outgoing<'a> {
    pub parts: Parts,
    pub forwarded: Forwarded<'a>,
    /// `None` once sent (a replayable request gets an empty one back).
    pub body: Option<ReqBody>,
    /// Can be sent again as it is (idempotent, no body).
    pub replayable: bool,
    /// A gRPC call's body, kept as it is sent, for a replay on a retryable
    /// `grpc-status` (only with `retries.on_grpc_status`).
    pub replay: Option<Replay>,
    /// The client asked to switch protocols.
    pub upgrade: bool,
    /// The request's hash key, when its service hashes requests
    /// (`consistent-hash`; see `Service::request_key`).
    pub hash_key: Option<u64>,
}

/// How one attempt ended.
pub(super) enum Ended {
    /// The backend answered; the head arrived at this instant.
    Answered(Response<UpstreamBody>, Instant),
    /// An HTTP/2 backend answered (boxed: the rare, larger case).
    AnsweredH2(Box<H2Answer>),
    /// 101 to a request that did not ask to switch protocols.
    Unexpected101,
    ConnectFailed(ConnectError),
    /// The pooled connection had been closed by the backend before any answer;
    /// the body comes back untouched (not the backend's fault, nothing to record).
    Stale(ReqBody),
    /// The client's upload broke off (nothing to hold against the backend).
    ClientAborted(UpstreamError),
    /// The connection broke before the answer.
    Lost(UpstreamError),
    TimedOut(Duration),
    /// The request's head could not be written (its framing).
    NotSendable(UpstreamError),
    /// Nothing left to send (a body already consumed).
    NoBody,
}

/// One attempt: `req` sent to `backend` once, on a pooled connection or a fresh
/// one (always after a stale one, `fresh`), and its response head awaited within
/// `timeouts.request` (from `started`, or for a new connection from when it was
/// ready: its handshake had the connect timeout).
///
/// A macro, not an `async fn`: the attempt's state stays inline in the request's
/// future, instead of a future of its own built and moved into it per attempt.
macro_rules! run {
    ($plane:expr, $cfg:expr, $backend:expr, $req:expr, $span:expr, $started:expr, $fresh:expr, $timeout:expr) => {
        // Each step a statement of its own: no temporary (a `Result` holding the
        // exchange) lives on across the await that follows.
        'attempt: {
            // A request that could not be sent again checks its pooled connection.
            let careful = !$req.replayable;
            let (conn, connected) =
                match attempt::checkout($backend, $cfg, &$plane.metrics, careful, $fresh).await {
                    Ok(c) => c,
                    Err(e) => break 'attempt attempt::Ended::ConnectFailed(e),
                };
            let ready = connected.unwrap_or($started);
            let answer =
                match attempt::send($plane, $cfg, $backend, $req, $span, conn, ready, $timeout) {
                    Ok(answer) => answer,
                    Err(unsent) => break 'attempt attempt::Ended::from(unsent),
                };
            answer.await
        }
    };
}
pub(super) use run;

/// Why a request was not sent at all.
pub(super) enum Unsent {
    NoBody,
    /// Its head could not be written (its framing).
    Framing(UpstreamError),
}

impl From<Unsent> for Ended {
    fn from(u: Unsent) -> Ended {
        match u {
            Unsent::NoBody => Ended::NoBody,
            Unsent::Framing(e) => Ended::NotSendable(e),
        }
    }
}

/// Sends `req` on `conn`: the head is encoded now, and written (with the body) as
/// the returned [`Answer`] is polled; `ready` is when the request timeout starts;
/// `timeout` (a route's) overrides `timeouts.request`.
#[allow(clippy::too_many_arguments)]
pub(super) fn send(
    plane: &DataPlane,
    cfg: &Config,
    backend: &Backend,
    req: &mut Outgoing<'_>,
    span: &Span,
    conn: Box<Conn>,
    ready: Instant,
    timeout: Option<Duration>,
) -> Result<Answer, Unsent> {
    let Some(body) = req.body.take() else {
        return Err(Unsent::NoBody);
    };
    let host = (!cfg.upstream.preserve_host).then_some(&backend.authority);
    let mut extra = HeaderMap::new();
    Trace::inject(plane, span, &mut extra);
    let exchange = Exchange::start_forwarded(
        conn,
        &req.parts,
        host,
        &extra,
        Some(&req.forwarded),
        body,
        req.replayable,
    )
    .map_err(Unsent::Framing)?
    .send_timeout(cfg.server.send_timeout.get());
    let timeout = timeout.unwrap_or(cfg.timeouts.request.get());
    Ok(Answer {
        exchange,
        deadline: ready + timeout,
        timeout,
        upgrade: req.upgrade,
    })
}

/// An exchange and its deadline (on the connection's timer), polled together:
/// how the attempt ends.
pub(super) struct Answer {
    exchange: Exchange<ReqBody>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    // The client asked to switch protocols.
    upgrade: bool,
}

impl Future for Answer {
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.exchange).poll(cx) {
            return Poll::Ready(match r {
                Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !this.upgrade => {
                    Ended::Unexpected101
                }
                Ok(resp) => Ended::Answered(resp, Instant::now()),
                Err(SendError::Stale(b)) => Ended::Stale(b),
                Err(SendError::Failed(e)) if e.is_client() => Ended::ClientAborted(e),
                Err(SendError::Failed(e)) => Ended::Lost(e),
            });
        }
        this.exchange
            .poll_deadline(cx, this.deadline)
            .map(|()| Ended::TimedOut(this.timeout))
    }
}

/// The end-of-attempt bookkeeping, for every way an attempt ends: the client
/// span's outcome, then the backend's record under `snap`'s policies and the
/// transitions it caused, and for an answer its latency. A gRPC answer whose
/// status comes in its trailers is recorded then: its record comes back
/// [`Pending`].
pub(super) fn settle(
    plane: &Arc<DataPlane>,
    snap: &Service,
    backend: &Arc<Backend>,
    span: Span,
    started: Instant,
    probe: Probe<'_>,
    ended: &Ended,
) -> Option<Pending> {
    let (status, error, outcome, at) = match ended {
        Ended::Answered(resp, at) => {
            let status = resp.status();
            let ttfb = at.saturating_duration_since(started);
            let outcome = Outcome::Response { status, ttfb };
            (Some(status), None, outcome, Some(*at))
        }
        Ended::AnsweredH2(a) => {
            let status = a.resp.status();
            let ttfb = a.at.saturating_duration_since(started);
            let headers = a.resp.headers();
            // The `content-type` first: most HTTP/2 answers are not gRPC.
            let grpc = grpc::is_grpc(headers);
            let outcome = match grpc.then(|| grpc::status(headers)) {
                Some(Some(code)) => Outcome::Grpc { status, code, ttfb },
                Some(None) if status.is_success() => {
                    Trace::attempt_done(&span, Some(status), None);
                    plane.metrics.record_backend_latency(&backend.key, ttfb);
                    let probe = probe.consume();
                    return Some(Pending::new(
                        plane.clone(),
                        backend.clone(),
                        started,
                        ttfb,
                        probe,
                    ));
                }
                _ => Outcome::Response { status, ttfb },
            };
            (Some(status), None, outcome, Some(a.at))
        }
        Ended::Unexpected101 => (None, Some("unexpected 101"), Outcome::Lost, None),
        Ended::ConnectFailed(_) => (None, Some("connect"), Outcome::ConnectFailed, None),
        Ended::Lost(_) => (None, Some("connection lost"), Outcome::Lost, None),
        Ended::TimedOut(_) => (None, Some("timeout"), Outcome::TimedOut, None),
        Ended::ClientAborted(_) => {
            Trace::attempt_done(&span, None, Some("client aborted"));
            return None;
        }
        // Nothing happened that says anything about the backend (the probe slot,
        // if any, goes back as the guard drops).
        Ended::Stale(_) | Ended::NotSendable(_) | Ended::NoBody => return None,
    };
    Trace::attempt_done(&span, status, error);
    drop(span);
    let at = at.unwrap_or_else(Instant::now);
    let recorded = backend.record_at(outcome, started, at, probe.consume(), snap);
    plane.noted(backend, recorded);
    if let Outcome::Response { ttfb, .. } | Outcome::Grpc { ttfb, .. } = outcome {
        plane.metrics.record_backend_latency(&backend.key, ttfb);
    }
    None
}

/// A half-open circuit's probe slot, held by an attempt. Recording the attempt's
/// outcome hands it to the breaker ([`Probe::consume`]); dropped unconsumed, it
/// is given back.
pub(super) struct Probe<'a> {
    circuit: &'a Circuit,
    held: bool,
}

impl<'a> Probe<'a> {
    /// `held`: the breaker admitted the attempt as a probe.
    pub fn new(circuit: &'a Circuit, held: bool) -> Self {
        Self { circuit, held }
    }

    pub fn held(&self) -> bool {
        self.held
    }

    /// Whether the attempt was a probe, for the breaker that now takes the slot.
    pub(super) fn consume(mut self) -> bool {
        std::mem::take(&mut self.held)
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        if self.held {
            self.circuit.release_probe();
        }
    }
}

/// A pooled connection for a request, or a new one (always, with `fresh`), then
/// with the time it was ready. With `careful`, a pooled connection is first checked
/// for a close from the backend (a request that cannot be sent again must not go
/// out on a connection about to fail).
pub(super) async fn checkout(
    backend: &Backend,
    cfg: &Config,
    metrics: &Metrics,
    careful: bool,
    fresh: bool,
) -> Result<(Box<Conn>, Option<Instant>), ConnectError> {
    while let Some(mut conn) = (!fresh).then(|| backend.pool.take()).flatten() {
        if !careful || conn.still_open() {
            return Ok((conn, None));
        }
    }
    let started = Instant::now();
    // Boxed: a new connection is the rare path, and its (TLS) handshake state would
    // otherwise make every request's future kilobytes larger.
    let conn = Box::pin(pool::connect(backend, cfg.timeouts.connect.get())).await?;
    let ready = Instant::now();
    metrics.record_connect(ready.saturating_duration_since(started));
    Ok((conn, Some(ready)))
}

/// One in-flight count on a backend for an attempt; released on drop unless the
/// response's guard takes it over.
pub(super) struct Inflight<'a> {
    backend: &'a Backend,
    armed: bool,
}

impl<'a> Inflight<'a> {
    pub fn new(backend: &'a Backend) -> Self {
        let before = backend.stats.active.fetch_add(1, Relaxed);
        // The idle pool is sized by the peak in flight (see `Pool::keep`).
        backend.pool.demand(before as usize + 1);
        Self {
            backend,
            armed: true,
        }
    }

    pub fn hand_over(mut self) {
        self.armed = false;
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.backend.stats.active.fetch_sub(1, Relaxed);
        }
    }
}
