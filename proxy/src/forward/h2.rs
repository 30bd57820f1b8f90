//! HTTP/2 to `h2c`/`h2` backends, on hyper's HTTP/2 client.
//!
//! Streams share connections: a request takes the least loaded open connection
//! with fewer than `upstream.http2.max_concurrent_streams` streams, and a new one
//! is opened (one at a time per backend) when all are full, up to
//! `max_connections_per_backend` (past that, streams queue on the least loaded
//! one, and hyper never opens more than the backend's own SETTINGS allow). PING
//! keepalive finds dead connections; a connection without streams for
//! `idle_timeout` is closed. After a GOAWAY, in-flight streams finish on the old
//! connection and new ones go to another: hyper hands back a request it could not
//! start, which is then sent on a fresh connection (nothing of it went out).
//!
//! Flow control bounds what is buffered per stream (`stream_window`): a backend
//! that stops reading stops the client's upload, not the proxy's memory.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use smallvec::SmallVec;
use switchyard_http1::UpstreamError;
use switchyard_http1::codec::Extra;
use switchyard_shared::validate::Scheme;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::attempt::{Ended, Outgoing};
use super::body::{ReqBody, ResponseGuard};
use super::grpc::{self, Pending};
use super::pool::ConnectError;
use super::tls;
use super::trace::Trace;
use crate::backend::Backend;
use crate::config::{Config, UpstreamHttp2};
use crate::dataplane::DataPlane;

/// A backend's HTTP/2 connections (kept in [`Backend::h2`]).
#[derive(Default)]
pub struct H2Pool {
    conns: Mutex<Vec<Arc<H2Conn>>>,
    /// Held while a connection is being opened, so a burst of streams on a cold
    /// backend waits for one connection instead of opening one each.
    connecting: tokio::sync::Mutex<()>,
}

/// One HTTP/2 connection to a backend.
struct H2Conn {
    send: SendRequest<ReqBody>,
    /// Streams open on it now.
    streams: AtomicUsize,
    /// Streams ever started on it (the idle check's clock).
    started: AtomicU64,
    /// Not to be given new streams (closed, going away, or idle-closed).
    closed: AtomicBool,
}

impl H2Conn {
    fn usable(&self) -> bool {
        !self.closed.load(Relaxed) && !self.send.is_closed() && self.send.is_ready()
    }
}

/// An HTTP/2 backend's answer: its head (at `at`), the stream's lease, and the
/// call's deadline if it has one.
pub struct H2Answer {
    pub resp: Response<Incoming>,
    pub at: Instant,
    pub lease: Lease,
    pub deadline: Option<Instant>,
}

/// One stream's claim on a connection; released when the response ends.
pub struct Lease(Arc<H2Conn>);

impl Lease {
    fn new(conn: Arc<H2Conn>) -> Self {
        conn.streams.fetch_add(1, Relaxed);
        conn.started.fetch_add(1, Relaxed);
        Lease(conn)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Relaxed);
    }
}

fn pool_of(backend: &Backend) -> Option<&H2Pool> {
    backend
        .h2
        .get_or_init(|| Box::new(H2Pool::default()))
        .downcast_ref::<H2Pool>()
}

impl H2Pool {
    /// The least loaded usable connection with room (or, with `overflow`, any
    /// usable one), dropping closed ones from the list.
    fn pick(&self, max_streams: usize, overflow: bool) -> Option<Arc<H2Conn>> {
        let mut conns = self.conns.lock();
        // A connection going away stays alive for its streams (their leases).
        conns.retain(|c| c.usable());
        conns
            .iter()
            .filter(|c| c.usable())
            .filter(|c| overflow || c.streams.load(Relaxed) < max_streams)
            .min_by_key(|c| c.streams.load(Relaxed))
            .cloned()
    }

    fn usable_count(&self) -> usize {
        self.conns.lock().iter().filter(|c| c.usable()).count()
    }

    /// Open connections to the backend (for tests and the admin view).
    pub fn open(&self) -> usize {
        self.usable_count()
    }
}

/// A stream slot for a request: on an open connection with room, or on a new one
/// (always, with `fresh`); then with the time a new connection was ready.
pub(super) async fn checkout(
    backend: &Backend,
    cfg: &Config,
    fresh: bool,
) -> Result<(Lease, Option<Instant>), ConnectError> {
    let Some(pool) = pool_of(backend) else {
        return Err(ConnectError::Tls(
            "internal: HTTP/2 pool of another type".into(),
        ));
    };
    let h2 = &cfg.upstream.http2;
    let max_streams = h2.max_concurrent_streams.as_usize();
    if !fresh && let Some(c) = pool.pick(max_streams, false) {
        return Ok((Lease::new(c), None));
    }
    let _opening = pool.connecting.lock().await;
    // Someone else may have opened one while this waited.
    if !fresh && let Some(c) = pool.pick(max_streams, false) {
        return Ok((Lease::new(c), None));
    }
    if !fresh
        && pool.usable_count() >= h2.max_connections_per_backend.as_usize()
        && let Some(c) = pool.pick(max_streams, true)
    {
        return Ok((Lease::new(c), None));
    }
    // Boxed: dialling (TCP, TLS, the HTTP/2 handshake) is rare, and inline it made
    // every attempt's future, which is moved into its box per request, kilobytes larger.
    let conn = Box::pin(connect(backend, cfg.timeouts.connect.get(), h2)).await?;
    let ready = Instant::now();
    pool.conns.lock().push(conn.clone());
    Ok((Lease::new(conn), Some(ready)))
}

/// A connection's own future (hyper's), boxed over its transport.
type Driver = Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>>;

/// Opens an HTTP/2 connection to `backend` (prior knowledge for `http://`, TLS
/// with ALPN `h2` for `https://`), bounded by `timeout`: its sender and the future
/// that drives it.
async fn dial(
    backend: &Backend,
    timeout: Duration,
    h2: &UpstreamHttp2,
) -> Result<(SendRequest<ReqBody>, Driver), ConnectError> {
    let work = async {
        let target = &backend.target;
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        tcp.set_nodelay(true)?;
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .keep_alive_interval(h2.keepalive_interval.get())
            .keep_alive_timeout(h2.keepalive_timeout.get())
            .keep_alive_while_idle(true)
            .initial_stream_window_size(h2.stream_window.as_u32())
            .initial_connection_window_size(h2.stream_window.as_u32().saturating_mul(4))
            .max_header_list_size(h2.max_header_list_size.as_u32())
            .max_send_buf_size(h2.stream_window.as_usize());
        let handshake = |e: hyper::Error| ConnectError::Io(std::io::Error::other(e));
        match target.scheme {
            Scheme::Http => {
                let (send, conn) = b.handshake(TokioIo::new(tcp)).await.map_err(handshake)?;
                Ok((send, Box::pin(conn) as Driver))
            }
            Scheme::Https => {
                let (connector, name) = tls::connector_for(&backend.key, &target.host, true)
                    .map_err(ConnectError::Tls)?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(ConnectError::Tls(
                        "the backend did not agree to HTTP/2 (ALPN h2)".into(),
                    ));
                }
                let (send, conn) = b.handshake(TokioIo::new(stream)).await.map_err(handshake)?;
                Ok((send, Box::pin(conn) as Driver))
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}

/// A new pooled connection to `backend`, its task started.
async fn connect(
    backend: &Backend,
    timeout: Duration,
    h2: &UpstreamHttp2,
) -> Result<Arc<H2Conn>, ConnectError> {
    let (send, driver) = dial(backend, timeout, h2).await?;
    Ok(start(send, driver, h2.idle_timeout.get()))
}

/// A connection of its own (not pooled; it closes when the sender is dropped),
/// for an active health check.
pub async fn dial_once(
    backend: &Backend,
    timeout: Duration,
    h2: &UpstreamHttp2,
) -> Result<SendRequest<ReqBody>, ConnectError> {
    let (send, driver) = dial(backend, timeout, h2).await?;
    tokio::spawn(driver);
    Ok(send)
}

/// Runs a connection in its own task; closes it once it has had no stream for
/// between one and two `idle` periods.
fn start(send: SendRequest<ReqBody>, driver: Driver, idle: Duration) -> Arc<H2Conn> {
    let state = Arc::new(H2Conn {
        send,
        streams: AtomicUsize::new(0),
        started: AtomicU64::new(0),
        closed: AtomicBool::new(false),
    });
    let watch = state.clone();
    tokio::spawn(async move {
        let mut conn = driver;
        let mut tick = tokio::time::interval(idle);
        tick.tick().await;
        let mut seen = u64::MAX;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                    break;
                }
                _ = tick.tick() => {
                    let started = watch.started.load(Relaxed);
                    if watch.streams.load(Relaxed) == 0 && started == seen {
                        // No new streams after this; one that raced in is retried
                        // (hyper hands its request back unsent).
                        watch.closed.store(true, Relaxed);
                        if watch.streams.load(Relaxed) == 0 {
                            break;
                        }
                        watch.closed.store(false, Relaxed);
                    }
                    seen = started;
                }
            }
        }
        watch.closed.store(true, Relaxed);
    });
    state
}

/// One attempt on an HTTP/2 backend: a stream (pooled connection or a new one),
/// the request sent on it, and its response head awaited until the deadline
/// (`timeouts.request`, or the route's `timeout`, from when the connection was
/// ready, or the call's `grpc-timeout` from `started`, whichever is first).
#[allow(clippy::too_many_arguments)]
pub(super) async fn attempt(
    plane: &DataPlane,
    cfg: &Config,
    backend: &Backend,
    out: &mut Outgoing<'_>,
    span: &tracing::Span,
    started: Instant,
    fresh: bool,
    route_timeout: Option<Duration>,
) -> Ended {
    let (lease, connected) = match checkout(backend, cfg, fresh).await {
        Ok(c) => c,
        Err(e) => return Ended::ConnectFailed(e),
    };
    let Some(body) = out.body.take() else {
        return Ended::NoBody;
    };
    let ready = connected.unwrap_or(started);
    let timeout = route_timeout.unwrap_or(cfg.timeouts.request.get());
    let mut deadline = ready + timeout;
    let mut limit = timeout;
    // A gRPC call's own deadline bounds the whole call, the head first.
    let call_deadline = grpc::timeout(&out.parts.headers).map(|g| (g, started + g));
    if let Some((g, at)) = call_deadline
        && at < deadline
    {
        deadline = at;
        limit = g;
    }
    let req = request(plane, cfg, backend, out, span, body);
    let mut send = lease.0.send.clone();
    match tokio::time::timeout_at(deadline, send.try_send_request(req)).await {
        Err(_) => Ended::TimedOut(limit),
        Ok(Ok(resp)) => Ended::AnsweredH2(Box::new(H2Answer {
            resp,
            at: Instant::now(),
            lease,
            deadline: call_deadline.map(|(_, at)| at),
        })),
        Ok(Err(mut e)) => match e.take_message() {
            // Not started (the connection was going away or closed): nothing of
            // it went out, so it goes again on a fresh connection.
            Some(req) => {
                lease.0.closed.store(true, Relaxed);
                Ended::Stale(req.into_body())
            }
            None => {
                let e = e.into_error();
                if refused(&e) {
                    // The backend did not process it; a fresh connection may
                    // take it, if nothing of the body is lost.
                    lease.0.closed.store(true, Relaxed);
                    if out.replayable {
                        return Ended::Stale(ReqBody::Empty);
                    }
                }
                if e.is_user() {
                    Ended::ClientAborted(UpstreamError::Client(Box::new(e)))
                } else {
                    Ended::Lost(UpstreamError::Io(std::io::Error::other(e)))
                }
            }
        },
    }
}

/// Whether the backend left the stream unprocessed (RFC 9113 §8.7): refused it
/// (REFUSED_STREAM), or went away gracefully (GOAWAY, NO_ERROR) before it: a
/// stream the GOAWAY covers finishes normally, so one ended by it was past the
/// server's last.
fn refused(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<::h2::Error>() {
            return match h2.reason() {
                Some(::h2::Reason::REFUSED_STREAM) => true,
                Some(::h2::Reason::NO_ERROR) => h2.is_go_away() && h2.is_remote(),
                _ => false,
            };
        }
        source = s.source();
    }
    false
}

static TE: HeaderName = header::TE;

/// The outgoing request for an HTTP/2 backend: absolute URI (`:scheme`,
/// `:authority` from the client's Host, or the backend's without
/// `preserve_host`), no `Host` line, `te: trailers`, the forwarding headers and
/// the trace context.
fn request(
    plane: &DataPlane,
    cfg: &Config,
    backend: &Backend,
    out: &Outgoing<'_>,
    span: &tracing::Span,
    body: ReqBody,
) -> Request<ReqBody> {
    let mut parts = out.parts.clone();
    let scheme = match backend.target.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    let authority = parts
        .headers
        .remove(header::HOST)
        .filter(|_| cfg.upstream.preserve_host)
        .unwrap_or_else(|| backend.authority.clone());
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = std::str::from_utf8(authority.as_bytes())
        .ok()
        .and_then(|a| {
            Uri::builder()
                .scheme(scheme)
                .authority(a)
                .path_and_query(pq)
                .build()
                .ok()
        });
    parts.uri = match uri {
        Some(u) => u,
        None => Uri::builder()
            .scheme(scheme)
            .authority(backend.target.authority())
            .path_and_query(pq)
            .build()
            .unwrap_or_default(),
    };
    parts.version = Version::HTTP_2;
    // The forwarding lines, as the HTTP/1.1 path writes them into the head.
    let mut add: SmallVec<[(&'static [u8], Vec<u8>); 3]> = SmallVec::new();
    out.forwarded.write(&parts.headers, |name, value| {
        let name: &'static [u8] = match name {
            b"x-forwarded-for" => b"x-forwarded-for",
            b"x-forwarded-proto" => b"x-forwarded-proto",
            _ => b"x-forwarded-host",
        };
        add.push((name, value.concat()));
    });
    let replaced: SmallVec<[HeaderName; 3]> = parts
        .headers
        .keys()
        .filter(|n| out.forwarded.replaces(n))
        .cloned()
        .collect();
    for n in replaced {
        parts.headers.remove(n);
    }
    for (name, value) in add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(&value),
        ) {
            parts.headers.append(n, v);
        }
    }
    parts
        .headers
        .insert(TE.clone(), HeaderValue::from_static("trailers"));
    Trace::inject(plane, span, &mut parts.headers);
    Request::from_parts(parts, body)
}

/// An HTTP/2 backend's response body on its way to the client: the stream's
/// lease, the request's settling guard, a gRPC call's pending record, and the
/// timer that ends a stream idle too long or a call past its deadline.
pub struct H2Body {
    body: Incoming,
    guard: ResponseGuard,
    lease: Option<Lease>,
    pending: Option<Pending>,
    timer: Pin<Box<Sleep>>,
    idle: Duration,
    /// The call's deadline (`grpc-timeout` from the request's start).
    deadline: Option<Instant>,
    ended: bool,
}

impl H2Body {
    pub(super) fn new(
        body: Incoming,
        guard: ResponseGuard,
        lease: Lease,
        pending: Option<Pending>,
        idle: Duration,
        deadline: Option<Instant>,
    ) -> Self {
        let first = next_wake(idle, deadline);
        let mut me = Self {
            body,
            guard,
            lease: Some(lease),
            pending,
            timer: Box::pin(tokio::time::sleep_until(first)),
            idle,
            deadline,
            ended: false,
        };
        if me.body.is_end_stream() {
            me.finish(true);
        }
        me
    }

    fn finish(&mut self, clean: bool) {
        if let Some(p) = self.pending.as_mut()
            && !clean
        {
            p.broken();
        }
        self.pending = None;
        self.lease = None;
        self.guard.finish(None);
    }
}

fn next_wake(idle: Duration, deadline: Option<Instant>) -> Instant {
    let idle_at = Instant::now() + idle;
    deadline.map_or(idle_at, |d| d.min(idle_at))
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref()
                    && let Some(p) = this.pending.as_mut()
                {
                    p.trailers(t);
                }
                if this.body.is_end_stream() {
                    this.ended = true;
                    this.finish(true);
                } else {
                    let wake = next_wake(this.idle, this.deadline);
                    this.timer.as_mut().reset(wake);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                // A gRPC call that ends without trailers has no status: broken.
                let clean = this.pending.is_none();
                this.finish(clean);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.ended = true;
                this.finish(false);
                Poll::Ready(Some(Err(UpstreamError::Io(std::io::Error::other(e)))))
            }
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.ended = true;
                if this.deadline.is_some_and(|d| d <= Instant::now()) {
                    // The call's deadline passed: end it for the client as gRPC
                    // does (the backend's stream is reset as the body drops).
                    if let Some(p) = this.pending.as_mut() {
                        p.trailers(&grpc::deadline_trailers());
                    }
                    this.finish(true);
                    return Poll::Ready(Some(Ok(Frame::trailers(grpc::deadline_trailers()))));
                }
                this.finish(false);
                Poll::Ready(Some(Err(UpstreamError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "HTTP/2 stream idle past upstream.http2.stream_idle_timeout",
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Turns an HTTP/2 backend's response into the client's body: a gRPC answer
/// whose status is not in its head keeps the attempt's record pending until its
/// trailers.
pub(super) fn respond(
    answer: H2Answer,
    guard: ResponseGuard,
    pending: Option<Pending>,
    cfg: &Config,
) -> Response<super::body::ProxyBody> {
    let H2Answer {
        resp,
        lease,
        deadline,
        ..
    } = answer;
    let (mut parts, body) = resp.into_parts();
    // hyper's HTTP/2 server ignores it; the HTTP/1.1 server answers in the
    // client's version.
    parts.version = Version::HTTP_11;
    let idle = cfg.upstream.http2.stream_idle_timeout.get();
    let body = H2Body::new(body, guard, lease, pending, idle, deadline);
    Response::from_parts(parts, super::body::ProxyBody::H2(Box::new(body)))
}
