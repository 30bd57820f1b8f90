//! Forwarding one request: rate limit → pick a backend → send → stream the answer.
//!
//! Retries (on a backend not tried yet, up to `retries.attempts`):
//! - a connect failure, for any method: nothing was sent;
//! - a pooled connection the backend had closed, found before any answer
//!   ([`h1::SendError::Stale`], the body handed back untouched): tried again on a
//!   fresh connection, not counted as an attempt nor held against the backend;
//! - a connection lost after sending, only for idempotent requests without a body
//!   (the request can be replayed exactly).
//!
//! A backend that answers, even with a 5xx, is not retried: the answer goes to the
//! client and the failure to the passive-health and circuit accounting.

pub mod body;
pub mod h1;
pub mod headers;
pub mod pool;
pub mod tls;
pub mod trace;

use std::future::Future as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::debug;

use self::body::{ProxyBody, ReqBody, ResponseGuard};
use self::h1::{Conn, SendError, UpstreamBody, UpstreamError};
use self::headers::Forwarded;
use self::pool::ConnectError;
use self::trace::Trace;
use crate::app::App;
use crate::backend::{Backend, Outcome};
use crate::config::{Config, types::in_any};
use crate::errors::ProxyError;
use crate::listener::h1::{Ambiguity, ClientUpgrade};
use crate::resilience::Admission;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;

/// The client end of a connection: its address, and that address as a header
/// value, rendered once per connection rather than per request.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip: HeaderValue,
    /// The connection came through the HTTPS listener (`X-Forwarded-Proto: https`).
    pub https: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            ip: headers::ip_value(addr.ip()),
            https: false,
        }
    }

    /// A client of the HTTPS listener.
    pub fn https(addr: SocketAddr) -> Self {
        Self {
            https: true,
            ..Self::new(addr)
        }
    }
}

/// Requests a plain-HTTP client gets answered without a backend (ACME HTTP-01
/// tokens, the redirect to HTTPS); installed by the TLS edge, absent otherwise.
pub trait PlainIntercept: Send + Sync {
    /// `None` (the usual case, decided without waiting): forward the request.
    fn intercept<'a>(
        &'a self,
        req: &'a Request<ReqBody>,
    ) -> Option<futures_util::future::BoxFuture<'a, Response<ProxyBody>>>;
}

/// Handles one client request end to end; never fails (errors become responses).
/// `upgrade` is where the client's connection comes from after a 101, for a
/// request that asked to switch protocols.
pub async fn handle(
    app: Arc<App>,
    req: Request<ReqBody>,
    peer: Peer,
    upgrade: Option<ClientUpgrade>,
) -> Response<ProxyBody> {
    if !peer.https
        && let Some(hook) = app.plain_intercept.get()
        && let Some(answer) = hook.intercept(&req)
    {
        return answer.await;
    }
    let started = Instant::now();
    app.metrics.start_request();
    // Until an answer is settled (by the response's guard, or below), a dropped
    // future (client gone, HTTP/2 stream reset) must still end the count.
    let counted = Counted(&app.metrics);
    let snap = app.snapshot();
    let mut trace = Some(Trace::start(&app, &req, peer.addr, &snap));
    let result = forward(&app, &snap, req, &peer, upgrade, started, &mut trace).await;
    std::mem::forget(counted);
    match result {
        Ok(resp) => {
            app.metrics.count_status(resp.status());
            resp
        }
        Err(e) => {
            debug!(error = %e, client = %peer.addr, "request failed");
            app.metrics.count_status(e.status());
            let elapsed = started.elapsed();
            app.metrics.finish_request(elapsed);
            if let Some(mut t) = trace {
                t.respond(e.status(), None);
                t.finish(elapsed);
            }
            e.into_response()
        }
    }
}

/// Ends a request's in-flight count if its future is dropped before it answers.
struct Counted<'a>(&'a Metrics);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Answers a request whose framing is ambiguous (see `listener::h1`): 400 and
/// close, before anything is forwarded.
pub fn refuse_ambiguous(app: &App, ambiguity: Ambiguity, peer: SocketAddr) -> Response<ProxyBody> {
    app.metrics.refused_framing.fetch_add(1, Relaxed);
    app.metrics.start_request();
    app.metrics.count_status(StatusCode::BAD_REQUEST);
    app.metrics.finish_request(Duration::ZERO);
    debug!(client = %peer, ?ambiguity, "refused a request with ambiguous framing");
    ProxyError::BadRequest("ambiguous request framing\n").into_response()
}

/// Answers a request head the listener could not accept (malformed, too large,
/// too slow) with `status` and close.
pub fn refuse_malformed(app: &App, status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    app.metrics.refused_malformed.fetch_add(1, Relaxed);
    app.metrics.start_request();
    app.metrics.count_status(status);
    app.metrics.finish_request(Duration::ZERO);
    let mut resp = ProxyError::BadRequest(body).into_response();
    *resp.status_mut() = status;
    resp
}

async fn forward(
    app: &Arc<App>,
    snap: &Snapshot,
    req: Request<ReqBody>,
    peer: &Peer,
    upgrade: Option<ClientUpgrade>,
    started: Instant,
    trace: &mut Option<Trace>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let cfg = &*snap.config;
    if let Some(limiter) = &snap.limiter {
        let checked = limiter.check(&req, peer.addr, &app.metrics);
        if let Some(t) = trace.as_ref() {
            t.rate_limit(checked.is_ok());
        }
        checked?;
    }
    let client_upgrade = upgrade.filter(|_| headers::wants_upgrade(req.headers()));
    let (mut parts, incoming) = req.into_parts();
    let forwarded = prepare(&mut parts, peer, cfg, client_upgrade.is_some());

    let bodiless = incoming.is_end_stream();
    // A request that can be sent again as it is: on another backend after a lost
    // connection, or on a fresh connection after a stale pooled one.
    let replayable = bodiless && is_idempotent(&parts.method);
    let mut body = Some(if bodiless { ReqBody::Empty } else { incoming });

    let max_attempts = 1 + cfg.retries.attempts.as_usize();
    let mut attempts = 0usize;
    // Indexes not to pick again: tried, or refused by their circuit.
    let mut excluded: SmallVec<[usize; 4]> = SmallVec::new();
    let mut stale = false;
    let mut last_err = ProxyError::NoBackend;
    // The first attempt starts when the request did (one clock reading less).
    let mut clock = Some(started);

    while attempts < max_attempts {
        let now = clock.take().unwrap_or_else(Instant::now);
        let Some(idx) = snap.pick(&excluded, now) else {
            break;
        };
        excluded.push(idx);
        let member = &snap.members[idx];
        let backend = &member.backend;
        let (admission, half_open) = backend
            .circuit
            .acquire(backend.nanos(now), cfg.circuit_breaker.as_ref());
        if let Some(t) = half_open {
            app.note(backend, t);
        }
        if admission == Admission::Refuse {
            continue;
        }
        let probe = admission == Admission::Probe;
        if attempts > 0 {
            app.metrics.retries.fetch_add(1, Relaxed);
        }
        attempts += 1;
        let inflight = Inflight::new(backend);
        let attempt_start = now;
        let client_span = match trace.as_ref() {
            Some(t) => t.attempt(backend, &parts.method, parts.uri.path(), attempts, probe),
            None => tracing::Span::none(),
        };

        // A request that could not be sent again checks its pooled connection first;
        // one that already met a stale pooled connection takes a fresh one.
        let (conn, connected) = match checkout(backend, cfg, &app.metrics, !replayable, stale).await
        {
            Ok(c) => c,
            Err(source) => {
                Trace::attempt_done(&client_span, None, Some("connect"));
                app.noted(
                    backend,
                    backend.record(Outcome::ConnectFailed, attempt_start, probe, snap),
                );
                debug!(backend = %backend.url, error = %source, "connect failed");
                last_err = ProxyError::Connect {
                    backend: backend.url.clone(),
                    source,
                };
                continue;
            }
        };

        let Some(b) = body.take() else {
            break;
        };
        let host = (!cfg.upstream.preserve_host).then_some(&backend.authority);
        let mut extra = HeaderMap::new();
        Trace::inject(app, &client_span, &mut extra);
        let exchange = match h1::Exchange::start_forwarded(
            conn,
            &parts,
            host,
            &extra,
            Some(&forwarded),
            b,
            replayable,
        ) {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "request not sendable");
                if probe {
                    backend.circuit.release_probe();
                }
                return Err(ProxyError::BadRequest("bad request framing\n"));
            }
        };
        let timeout = cfg.timeouts.request.get();
        // The request timeout runs from the attempt's start, or for a new connection
        // from when it was ready (its handshake had the connect timeout).
        let deadline = connected.unwrap_or(attempt_start) + timeout;

        // The exchange and its deadline polled in place (a `Timeout` would move the
        // exchange into itself and then into this future).
        let mut exchange = std::pin::pin!(exchange);
        let mut expiry = std::pin::pin!(tokio::time::sleep_until(deadline));
        let answered = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Ok(r));
            }
            expiry.as_mut().poll(cx).map(Err)
        })
        .await;
        let resp = match answered {
            Ok(Ok(resp)) => resp,
            Ok(Err(SendError::Stale(b))) => {
                // The pooled connection had been closed by the backend; nothing was
                // answered, so this attempt does not count against it. Its other idle
                // connections are likely closed too: drop those, and try again on a
                // fresh connection (which cannot be stale, so this happens once).
                backend.pool.prune();
                body = Some(b);
                excluded.pop();
                attempts -= 1;
                if probe {
                    backend.circuit.release_probe();
                }
                stale = true;
                continue;
            }
            Ok(Err(SendError::Failed(e))) if e.is_client() => {
                // The client's upload broke off: nothing to hold against the backend.
                Trace::attempt_done(&client_span, None, Some("client aborted"));
                if probe {
                    backend.circuit.release_probe();
                }
                debug!(error = %e, "client body failed");
                return Err(ProxyError::BadRequest("incomplete request body\n"));
            }
            Ok(Err(SendError::Failed(e))) => {
                Trace::attempt_done(&client_span, None, Some("connection lost"));
                app.noted(
                    backend,
                    backend.record(Outcome::Lost, attempt_start, probe, snap),
                );
                debug!(backend = %backend.url, error = %e, "upstream exchange failed");
                last_err = ProxyError::Upstream {
                    backend: backend.url.clone(),
                    source: e,
                };
                if replayable {
                    body = Some(ReqBody::Empty);
                    continue;
                }
                return Err(last_err);
            }
            Err(_) => {
                Trace::attempt_done(&client_span, None, Some("timeout"));
                app.noted(
                    backend,
                    backend.record(Outcome::TimedOut, attempt_start, probe, snap),
                );
                return Err(ProxyError::Timeout {
                    backend: backend.url.clone(),
                    timeout,
                });
            }
        };

        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_none() {
            // Switching protocols nobody asked for: not a usable answer.
            Trace::attempt_done(&client_span, None, Some("unexpected 101"));
            app.noted(
                backend,
                backend.record(Outcome::Lost, attempt_start, probe, snap),
            );
            return Err(ProxyError::Upstream {
                backend: backend.url.clone(),
                source: UpstreamError::Malformed("101 without an upgrade request"),
            });
        }
        let answered = Instant::now();
        let ttfb = answered.saturating_duration_since(attempt_start);
        let retry_status = replayable
            && attempts < max_attempts
            && cfg
                .retries
                .on_status
                .iter()
                .any(|s| s.get() == i64::from(status.as_u16()))
            && another_available(snap, &excluded);
        let outcome = Outcome::Response { status, ttfb };
        Trace::attempt_done(&client_span, Some(status), None);
        drop(client_span);
        app.noted(
            backend,
            backend.record_at(outcome, attempt_start, answered, probe, snap),
        );
        app.metrics.record_backend_latency(&backend.key, ttfb);
        if retry_status {
            // Retried elsewhere: this answer (and its connection) is dropped.
            debug!(backend = %backend.url, status = %status, "retrying on status");
            body = Some(ReqBody::Empty);
            drop(resp);
            continue;
        }
        inflight.hand_over();
        let mut trace = trace.take();
        if let Some(t) = trace.as_mut() {
            t.respond(status, Some(&backend.url));
        }
        let max_idle = cfg.upstream.max_idle_per_backend.as_usize();
        let guard = ResponseGuard::new(app.clone(), backend.clone(), max_idle, started, trace);
        return Ok(respond(resp, client_upgrade, guard));
    }
    Err(last_err)
}

/// Turns the backend's response into the client's. The guard settles the request
/// when the response body ends; the connection goes back to the pool with it
/// unless it was upgraded.
fn respond(
    resp: Response<UpstreamBody>,
    client_upgrade: Option<ClientUpgrade>,
    guard: ResponseGuard,
) -> Response<ProxyBody> {
    let (parts, mut body) = resp.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = client_upgrade
        && let Some(conn) = body.take_upgraded()
    {
        tokio::spawn(tunnel(client, conn, guard));
        return Response::from_parts(parts, ProxyBody::empty());
    }
    Response::from_parts(parts, ProxyBody::upstream(body, guard))
}

/// Splices an upgraded (WebSocket) connection to the backend's; the guard keeps the
/// backend's in-flight count until either side closes.
async fn tunnel(client: ClientUpgrade, mut conn: Box<Conn>, guard: ResponseGuard) {
    if let Ok(up) = client.await {
        let mut client = up.io;
        // Bytes each side sent on the new protocol right behind the head (the
        // backend's after its 101, the client's after its request).
        let early = conn.rbuf.split();
        if (early.is_empty() || client.write_all(&early).await.is_ok())
            && (up.early.is_empty() || conn.io.write_all(&up.early).await.is_ok())
        {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut conn.io).await;
        }
    }
    drop(guard);
}

/// Rewrites the client's request head for the backend; the `X-Forwarded-*` lines
/// are written with the head (see [`headers::Forwarded`]).
fn prepare<'a>(parts: &mut Parts, peer: &'a Peer, cfg: &Config, upgrade: bool) -> Forwarded<'a> {
    let given = parts.headers.get(header::HOST).cloned();
    let host = given.clone().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        // HTTP/2 and absolute-form requests: the backend gets origin form.
        let pq = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        parts.uri = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    }
    if given.is_none()
        && let Some(h) = &host
    {
        parts.headers.insert(header::HOST, h.clone());
    }
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    // We answer `Expect: 100-continue` ourselves (hyper does when the body is read).
    parts.headers.remove(header::EXPECT);
    parts.version = Version::HTTP_11;
    Forwarded {
        ip: &peer.ip,
        trusted: in_any(&cfg.server.trusted_proxies, peer.addr.ip()),
        host,
        https: peer.https,
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
/// Whether a backend not tried yet could take a retry (so a retryable answer is
/// only dropped when there is somewhere else to go).
fn another_available(snap: &Snapshot, excluded: &[usize]) -> bool {
    let now = Instant::now();
    snap.members
        .iter()
        .enumerate()
        .any(|(i, m)| !excluded.contains(&i) && m.backend.available(now, &snap.config))
}

/// A pooled connection for a request, or a new one (always, with `fresh`), then
/// with the time it was ready. With `careful`, a pooled connection is first checked
/// for a close from the backend (a request that cannot be sent again must not go
/// out on a connection about to fail).
async fn checkout(
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

/// One in-flight count on a backend for an attempt; released on drop unless a
/// [`ResponseGuard`] takes it over.
struct Inflight<'a> {
    backend: &'a Backend,
    armed: bool,
}

impl<'a> Inflight<'a> {
    fn new(backend: &'a Backend) -> Self {
        backend.stats.active.fetch_add(1, Relaxed);
        Self {
            backend,
            armed: true,
        }
    }

    fn hand_over(mut self) {
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
