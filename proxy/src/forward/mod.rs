//! Forwarding one request: rate limit → pick a backend → send → stream the answer.
//!
//! Retries (on a backend not tried yet, up to `retries.attempts`):
//! - a connect failure, for any method: nothing was sent;
//! - a pooled connection the backend had closed, found before any answer
//!   ([`SendError::Stale`], the body handed back untouched): tried again on a
//!   fresh connection, not counted as an attempt nor held against the backend;
//! - a connection lost after sending, only for idempotent requests without a body
//!   (the request can be replayed exactly);
//! - an answer whose status is in `retries.on_status`, for those same requests;
//! - a gRPC call answered trailers-only with a `grpc-status` in
//!   `retries.on_grpc_status` (an HTTP/2 backend's answer: gRPC needs HTTP/2),
//!   when its whole body was kept for the replay (see [`replay`]).
//!
//! Any other answer, even a 5xx, is not retried: it goes to the client and the
//! failure to the passive-health and circuit accounting (a retried answer is
//! accounted too).

mod attempt;
pub mod body;
pub mod grpc;
pub mod h2;
pub mod pool;
mod replay;
mod routed;
pub mod tls;
pub mod trace;

/// Header rewriting between the hops (the wire crate's).
pub use switchyard_http1::headers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;
use smallvec::SmallVec;
use switchyard_http1::{ClientUpgrade, Conn, Refusal, UpstreamError};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::debug;

use self::attempt::{Ended, Inflight, Outgoing, Probe};
use self::body::{ProxyBody, ReqBody, ResponseGuard, UpstreamBody};
use self::headers::Forwarded;
use self::trace::Trace;
use crate::config::{Config, types::in_any};
use crate::dataplane::DataPlane;
use crate::errors::ProxyError;
use crate::ratelimit::Checked;
use crate::resilience::Admission;
use crate::snapshot::{Service, Snapshot};
use crate::telemetry::metrics::Metrics;

/// The client end of a connection: its address, and that address as a header
/// value, rendered once per connection rather than per request.
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The address as `X-Forwarded-For` writes it (a `Bytes`, not a `HeaderValue`:
    /// 8 bytes less in every connection's task).
    pub ip: bytes::Bytes,
    /// The connection came through the HTTPS listener (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// What a plain-HTTP client gets answered without a backend, when the TLS edge
    /// installed something (ACME HTTP-01, the redirect to HTTPS).
    pub intercept: Option<Intercept>,
}

/// A listener's [`PlainIntercept`], made once and shared by its connections: a
/// thin pointer, 8 bytes in every connection's [`Peer`] where `Arc<dyn _>` is 16.
pub type Intercept = Arc<Arc<dyn PlainIntercept>>;

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("addr", &self.addr)
            .field("https", &self.https)
            .field("intercept", &self.intercept.is_some())
            .finish()
    }
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            ip: headers::ip_value(addr.ip()),
            https: false,
            intercept: None,
        }
    }

    /// A client of the HTTPS listener.
    pub fn https(addr: SocketAddr) -> Self {
        Self {
            https: true,
            ..Self::new(addr)
        }
    }

    /// A plain-HTTP client whose requests `intercept` sees first.
    pub fn intercepted(mut self, intercept: Option<Intercept>) -> Self {
        self.intercept = intercept;
        self
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
    plane: Arc<DataPlane>,
    mut req: Request<ReqBody>,
    peer: Peer,
    upgrade: Option<ClientUpgrade>,
) -> Response<ProxyBody> {
    authority_wins(&mut req);
    if let Some(hook) = &peer.intercept
        && let Some(answer) = hook.intercept(&req)
    {
        return answer.await;
    }
    let started = Instant::now();
    plane.metrics.start_request();
    // Until an answer is settled (by the response's guard, or below), a dropped
    // future (client gone, HTTP/2 stream reset) must still end the count.
    let counted = Counted(&plane.metrics);
    let snap = plane.snapshot();
    let (route, svc) = match routed::select(&snap, &req, &peer) {
        routed::Selected::Forward(route, svc) => (route, svc),
        routed::Selected::Answer(route) => {
            std::mem::forget(counted);
            return answer_here(&plane, &snap, &req, &peer, Some(route), started);
        }
        routed::Selected::NoRoute => {
            std::mem::forget(counted);
            return answer_here(&plane, &snap, &req, &peer, None, started);
        }
    };
    let mut trace = Some(Trace::start(&plane, &req, peer.addr, svc, route));
    let admitted = match admit(&plane, &snap, svc, route, &req, &peer) {
        Checked::Done(r) => r,
        // A cold key in a cluster: one store round trip (a boxed future: small here).
        Checked::Wait(w) => w.await,
    };
    if let Some(t) = trace.as_ref()
        && (snap.limiter.is_some()
            || svc.limiter.is_some()
            || route.is_some_and(|r| matches!(snap.route_limiters.get(r.index), Some(Some(_)))))
    {
        t.rate_limit(admitted.is_ok());
    }
    // Whether a failure is answered as gRPC: looked at only on failure.
    let (result, grpc) = match admitted.map_err(ProxyError::RateLimited) {
        Err(e) => {
            let grpc = grpc::is_grpc(req.headers());
            (Err(e), grpc)
        }
        Ok(()) => {
            let upgrade = upgrade.filter(|_| headers::wants_upgrade(req.headers()));
            let hash_key = svc.request_key(req.headers(), req.uri().path(), peer.addr.ip());
            let mut out = Outgoing::new(req, &peer, &svc.config, upgrade.is_some());
            out.hash_key = hash_key;
            if let Some(r) = route {
                routed::rewrite(r, &mut out.parts);
            }
            // The request goes in by reference: the attempts' future stays small (it
            // is moved into this one, and this one into the connection's).
            let r = forward(&plane, svc, route, &mut out, upgrade, started, &mut trace).await;
            let grpc = r.is_err() && grpc::is_grpc(&out.parts.headers);
            // Its lines went out: the map goes back for the next head read.
            switchyard_http1::codec::recycled::give_back(std::mem::take(&mut out.parts.headers));
            (r, grpc)
        }
    };
    std::mem::forget(counted);
    let mut resp = match result {
        Ok(resp) => {
            plane.metrics.count_status(resp.status());
            resp
        }
        Err(e) => {
            debug!(error = %e, client = %peer.addr, "request failed");
            plane.metrics.count_status(e.status());
            let elapsed = started.elapsed();
            plane.metrics.finish_request(elapsed);
            if let Some(mut t) = trace {
                t.respond(e.status(), None);
                t.finish(elapsed);
            }
            if grpc {
                e.into_grpc_response().map(ProxyBody::full_or_empty)
            } else {
                e.into_response().map(ProxyBody::full)
            }
        }
    };
    if let Some(r) = route {
        r.stats.count(&svc.name, resp.status());
        if !r.response_headers.is_empty() {
            r.response_headers.apply(resp.headers_mut());
        }
    }
    resp
}

/// A request answered without a backend: a route's redirect or fixed response,
/// or the 404 of no route. Counted and logged like any other.
fn answer_here(
    plane: &DataPlane,
    snap: &Snapshot,
    req: &Request<ReqBody>,
    peer: &Peer,
    route: Option<&crate::route::Route>,
    started: Instant,
) -> Response<ProxyBody> {
    let resp = routed::answer(req, route, peer);
    let mut trace = Trace::start(plane, req, peer.addr, snap.default_service(), route);
    plane.metrics.count_status(resp.status());
    if let Some(r) = route {
        r.stats.count("-", resp.status());
    }
    let elapsed = started.elapsed();
    plane.metrics.finish_request(elapsed);
    trace.respond(resp.status(), None);
    trace.finish(elapsed);
    resp
}

/// A target with an authority (HTTP/1.1 absolute form, HTTP/2's `:authority`)
/// replaces any `Host` line (RFC 9112 §3.2.2, RFC 9113 §8.3.1), so routing, the
/// backend and `X-Forwarded-Host` all see the one the request was sent to.
fn authority_wins<B>(req: &mut Request<B>) {
    if let Some(a) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str().rsplit('@').next().unwrap_or_default())
    {
        req.headers_mut().insert(header::HOST, v);
    }
}

/// RFC 9112 §3.2 for an HTTP/1.1 request served by hyper (the HTTPS listener; the
/// plain listener's wire crate refuses these itself): exactly one `Host`.
pub fn host_refusal<B>(req: &Request<B>) -> Option<Refusal> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), None) => None,
        (None, _) => Some(Refusal::Malformed("missing host\n")),
        (Some(_), Some(_)) => Some(Refusal::Malformed("more than one host\n")),
    }
}

/// Ends a request's in-flight count if its future is dropped before it answers.
struct Counted<'a>(&'a Metrics);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Answers a request head the HTTP/1.1 server refused (malformed, too large, too
/// slow, or with ambiguous framing): counted, then 400, 408 or 431 and close,
/// before anything is forwarded.
pub fn refuse(plane: &DataPlane, refusal: Refusal, peer: SocketAddr) -> Response<ProxyBody> {
    if let Refusal::Ambiguous(ambiguity) = refusal {
        plane.metrics.refused_framing.fetch_add(1, Relaxed);
        debug!(client = %peer, ?ambiguity, "refused a request with ambiguous framing");
    } else {
        plane.metrics.refused_malformed.fetch_add(1, Relaxed);
    }
    let e = ProxyError::Refused(refusal);
    plane.metrics.start_request();
    plane.metrics.count_status(e.status());
    plane.metrics.finish_request(Duration::ZERO);
    e.into_response().map(ProxyBody::full)
}

/// The rate limiters' verdict on `req` (before anything else happens to it): the
/// proxy-wide limit, then the service's, then the route's.
fn admit<'a>(
    plane: &'a DataPlane,
    snap: &'a Snapshot,
    svc: &'a Service,
    route: Option<&crate::route::Route>,
    req: &Request<ReqBody>,
    peer: &Peer,
) -> Checked<'a> {
    let route_limiter = route.and_then(|r| snap.route_limiters.get(r.index)?.as_ref());
    let mut limiters = snap.limiter.iter().chain(&svc.limiter).chain(route_limiter);
    let Some(first) = limiters.next() else {
        return Checked::Done(Ok(()));
    };
    let mut verdict = first.check(req, peer.addr, &plane.metrics);
    for next in limiters {
        match verdict {
            Checked::Done(Ok(())) => verdict = next.check(req, peer.addr, &plane.metrics),
            // Refused already, or waiting on the store: the first verdict stands
            // (a cold key's wait is rare; the next limits apply from its next request).
            other => return other,
        }
    }
    verdict
}

impl<'a> Outgoing<'a> {
    /// What `req` becomes for a backend (see [`prepare`]).
    fn new(req: Request<ReqBody>, peer: &'a Peer, cfg: &Config, upgrade: bool) -> Self {
        let (mut parts, incoming) = req.into_parts();
        let forwarded = prepare(&mut parts, peer, cfg, upgrade);
        let bodiless = incoming.is_end_stream();
        Outgoing {
            // A request that can be sent again as it is: on another backend after a
            // lost connection, or on a fresh connection after a stale pooled one.
            replayable: bodiless && is_idempotent(&parts.method),
            replay: None,
            parts,
            forwarded,
            body: Some(if bodiless { ReqBody::Empty } else { incoming }),
            upgrade,
            hash_key: None,
        }
    }
}

impl Outgoing<'_> {
    /// Keeps the body of a gRPC call as it is sent, up to `limit` bytes, when it
    /// may be replayed: a call with a body, on a service with HTTP/2 backends.
    fn keep_for_replay(&mut self, snap: &Service, limit: usize) {
        if self.replayable
            || !grpc::is_grpc(&self.parts.headers)
            || !snap.members.iter().any(|m| m.protocol.is_h2())
        {
            return;
        }
        if let Some(body) = self.body.take() {
            let (replay, body) = replay::Replay::keep(body, limit);
            self.replay = Some(replay);
            self.body = Some(body);
        }
    }
}

/// Attempts on backends until one answers (see the module docs for what is
/// retried); the first answer that is not retried goes to the client.
async fn forward(
    plane: &Arc<DataPlane>,
    snap: &Service,
    route: Option<&crate::route::Route>,
    out: &mut Outgoing<'_>,
    client_upgrade: Option<ClientUpgrade>,
    started: Instant,
    trace: &mut Option<Trace>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let cfg = &*snap.config;
    // A route's retries override the service's (looked up where used: the future
    // holds no more across its awaits).
    let max_attempts = {
        let retries = retries_of(route, cfg);
        let max_attempts = 1 + retries.attempts.as_usize();
        if max_attempts > 1 && !retries.on_grpc_status.is_empty() {
            out.keep_for_replay(snap, retries.replay_buffer_bytes.as_usize());
        }
        max_attempts
    };
    let mut attempts = 0usize;
    // Indexes not to pick again: tried, or refused by their circuit.
    let mut excluded: SmallVec<[usize; 4]> = SmallVec::new();
    let mut stale = false;
    let mut last_err = ProxyError::NoBackend;
    // The first attempt starts when the request did (one clock reading less).
    let mut clock = Some(started);

    while attempts < max_attempts {
        let now = clock.take().unwrap_or_else(Instant::now);
        let Some(idx) = snap.pick_keyed(&excluded, out.hash_key, now) else {
            break;
        };
        excluded.push(idx);
        let member = &snap.members[idx];
        let backend = &member.backend;
        let admission = {
            let (admission, half_open) = backend
                .circuit
                .acquire(backend.nanos(now), cfg.circuit_breaker.as_ref());
            if let Some(t) = half_open {
                plane.note(backend, t);
            }
            admission
        };
        if admission == Admission::Refuse {
            continue;
        }
        let probe = Probe::new(&backend.circuit, admission == Admission::Probe);
        if attempts > 0 {
            plane.metrics.retries.fetch_add(1, Relaxed);
        }
        attempts += 1;
        let inflight = Inflight::new(backend);
        let span = match trace.as_ref() {
            Some(t) => t.attempt(
                backend,
                &out.parts.method,
                out.parts.uri.path(),
                attempts,
                probe.held(),
            ),
            None => tracing::Span::none(),
        };
        let route_timeout = route.and_then(|r| r.timeout);
        let ended = if member.protocol.is_h2() {
            // Boxed: the HTTP/1.1 path's future does not grow by the HTTP/2 one.
            Box::pin(h2::attempt(
                plane,
                cfg,
                backend,
                out,
                &span,
                now,
                stale,
                route_timeout,
            ))
            .await
        } else {
            attempt::run!(plane, cfg, backend, out, &span, now, stale, route_timeout)
        };
        let pending = attempt::settle(plane, snap, backend, span, now, probe, &ended);
        let resp = match ended {
            Ended::Answered(resp, _) => resp,
            Ended::AnsweredH2(answer) => {
                if let Some(replay) = &out.replay
                    && attempts < max_attempts
                    && let Some(code) = grpc::trailers_only_status(&answer.resp)
                    && retries_of(route, cfg)
                        .on_grpc_status
                        .iter()
                        .any(|c| c.0 == code)
                    && another_available(snap, &excluded)
                    && let Some(body) = replay.body()
                {
                    // Nothing of the answer reached the client, and the whole call
                    // is here to send again.
                    debug!(backend = %backend.url, code, "replaying a gRPC call");
                    out.body = Some(body);
                    continue;
                }
                let status = answer.resp.status();
                if retry_on_status(route, cfg, out, status, attempts, max_attempts)
                    && another_available(snap, &excluded)
                {
                    debug!(backend = %backend.url, status = %status, "retrying on status");
                    out.body = Some(ReqBody::Empty);
                    continue;
                }
                inflight.hand_over();
                let mut trace = trace.take();
                if let Some(t) = trace.as_mut() {
                    t.respond(answer.resp.status(), Some(&backend.url));
                }
                let guard = ResponseGuard::new(plane.clone(), backend.clone(), 0, started, trace);
                return Ok(h2::respond(*answer, guard, pending, cfg));
            }
            Ended::Stale(b) => {
                // The pooled connection had been closed by the backend; nothing was
                // answered, so this attempt does not count. Its other idle
                // connections are likely closed too: drop those, and try again on a
                // fresh connection (which cannot be stale, so this happens once).
                backend.pool.prune();
                out.body = Some(b);
                excluded.pop();
                attempts -= 1;
                stale = true;
                continue;
            }
            Ended::ConnectFailed(source) => {
                debug!(backend = %backend.url, error = %source, "connect failed");
                last_err = ProxyError::Connect {
                    backend: backend.url.clone(),
                    source,
                };
                continue;
            }
            Ended::Lost(source) => {
                debug!(backend = %backend.url, error = %source, "upstream exchange failed");
                last_err = ProxyError::Upstream {
                    backend: backend.url.clone(),
                    source,
                };
                if out.replayable {
                    out.body = Some(ReqBody::Empty);
                    continue;
                }
                return Err(last_err);
            }
            Ended::TimedOut(timeout) => {
                return Err(ProxyError::Timeout {
                    backend: backend.url.clone(),
                    timeout,
                });
            }
            Ended::ClientAborted(e) => {
                debug!(error = %e, "client body failed");
                return Err(ProxyError::BadRequest("incomplete request body\n"));
            }
            Ended::NotSendable(e) => {
                debug!(error = %e, "request not sendable");
                return Err(ProxyError::BadRequest("bad request framing\n"));
            }
            Ended::Unexpected101 => {
                // Switching protocols nobody asked for: not a usable answer.
                return Err(ProxyError::Upstream {
                    backend: backend.url.clone(),
                    source: UpstreamError::Malformed("101 without an upgrade request"),
                });
            }
            Ended::NoBody => break,
        };
        let status = resp.status();
        if retry_on_status(route, cfg, out, status, attempts, max_attempts)
            && another_available(snap, &excluded)
        {
            // Retried elsewhere: this answer (and its connection) is dropped.
            debug!(backend = %backend.url, status = %status, "retrying on status");
            out.body = Some(ReqBody::Empty);
            drop(resp);
            continue;
        }
        inflight.hand_over();
        let mut trace = trace.take();
        if let Some(t) = trace.as_mut() {
            t.respond(status, Some(&backend.url));
        }
        let max_idle = cfg.upstream.max_idle_per_backend.as_usize();
        let guard = ResponseGuard::new(plane.clone(), backend.clone(), max_idle, started, trace);
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
    // Hop-by-hop lines go, and `Expect`: we answer `100-continue` ourselves
    // (hyper does when the body is read).
    headers::strip_for_backend(&mut parts.headers, upgrade);
    parts.version = Version::HTTP_11;
    Forwarded {
        ip: &peer.ip,
        trusted: in_any(&cfg.server.trusted_proxies, peer.addr.ip()),
        host,
        https: peer.https,
    }
}

/// Whether an answer with `status` is dropped for another attempt (the
/// `on_status` of the retries in force, for a request that can be sent again as
/// it is).
fn retry_on_status(
    route: Option<&crate::route::Route>,
    cfg: &Config,
    out: &Outgoing<'_>,
    status: StatusCode,
    attempts: usize,
    max_attempts: usize,
) -> bool {
    out.replayable
        && attempts < max_attempts
        && retries_of(route, cfg)
            .on_status
            .iter()
            .any(|s| s.get() == i64::from(status.as_u16()))
}

/// The retries in force: the route's, else the service's.
fn retries_of<'a>(
    route: Option<&'a crate::route::Route>,
    cfg: &'a Config,
) -> &'a crate::config::Retries {
    route
        .and_then(|r| r.retries.as_ref())
        .unwrap_or(&cfg.retries)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a backend not tried yet could take a retry (so a retryable answer is
/// only dropped when there is somewhere else to go).
fn another_available(snap: &Service, excluded: &[usize]) -> bool {
    let now = Instant::now();
    snap.members
        .iter()
        .enumerate()
        .any(|(i, m)| !excluded.contains(&i) && m.backend.available(now, &snap.config))
}
