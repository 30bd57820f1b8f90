//! HTTP/2 to `h2c`/`h2` backends, on the `h2` crate's client.
//!
//! The request's own task sends its stream and awaits the answer (no task, channel
//! or callback per request in between, as hyper's client has); a body that is not
//! at hand at once is piped to the stream by a task of its own ([`Pipe`]).
//!
//! Streams share connections: a request takes the least loaded open connection
//! with fewer than `upstream.http2.max_concurrent_streams` streams, and a new one
//! is opened (one at a time per backend) when all are full, up to
//! `max_connections_per_backend` (past that, streams queue on the least loaded
//! one, and `h2` never opens more than the backend's own SETTINGS allow). PING
//! keepalive finds dead connections; a connection without streams for
//! `idle_timeout` is closed. After a GOAWAY, in-flight streams finish on the old
//! connection and new ones go to another: a stream `h2` refuses to open (nothing
//! of it went out) is sent on a fresh connection.
//!
//! Flow control bounds what is buffered per stream (`stream_window`): a backend
//! that stops reading stops the client's upload, not the proxy's memory.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Ping, Reason, RecvStream, SendStream};
use http::{HeaderName, HeaderValue, Request, Response, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use smallvec::SmallVec;
use switchyard_http1::UpstreamError;
use switchyard_http1::codec::Extra;
use switchyard_shared::validate::Scheme;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
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
    send: SendRequest<Bytes>,
    /// Streams open on it now.
    streams: AtomicUsize,
    /// Streams ever started on it (the idle check's clock).
    started: AtomicU64,
    /// Not to be given new streams (closed, going away, or idle-closed).
    closed: AtomicBool,
}

impl H2Conn {
    fn usable(&self) -> bool {
        !self.closed.load(Relaxed)
    }
}

/// An HTTP/2 backend's answer: its head (at `at`), the stream's lease, and the
/// call's deadline if it has one.
pub struct H2Answer {
    pub resp: Response<RecvBody>,
    pub at: Instant,
    pub lease: Lease,
    pub deadline: Option<Instant>,
    /// Resets the request's stream if the answer is dropped before its end (a
    /// body still being piped up stops with it).
    pub cancel: Option<Cancel>,
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

/// A connection's own future (`h2`'s), boxed over its transport.
type Driver = Pin<Box<dyn Future<Output = Result<(), h2::Error>> + Send>>;

/// What a connection's task needs besides its future: PING keepalive.
struct Keepalive {
    ping: Option<h2::PingPong>,
    interval: Duration,
    timeout: Duration,
}

/// The HTTP/2 handshake on `io` with the configured limits: the sender and the
/// connection's future.
async fn handshake<T>(
    io: T,
    h2: &UpstreamHttp2,
) -> Result<(SendRequest<Bytes>, Driver, Keepalive), ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = h2::client::Builder::new();
    b.initial_window_size(h2.stream_window.as_u32())
        .initial_connection_window_size(h2.stream_window.as_u32().saturating_mul(4))
        .max_header_list_size(h2.max_header_list_size.as_u32())
        .max_send_buffer_size(h2.stream_window.as_usize())
        // Until the backend's SETTINGS arrive (as hyper's client does).
        .initial_max_send_streams(100)
        .enable_push(false);
    let (send, mut conn) = b
        .handshake::<T, Bytes>(io)
        .await
        .map_err(|e| ConnectError::Io(std::io::Error::other(e)))?;
    let keepalive = Keepalive {
        ping: conn.ping_pong(),
        interval: h2.keepalive_interval.get(),
        timeout: h2.keepalive_timeout.get(),
    };
    Ok((send, Box::pin(conn) as Driver, keepalive))
}

/// Opens an HTTP/2 connection to `backend` (prior knowledge for `http://`, TLS
/// with ALPN `h2` for `https://`), bounded by `timeout`: its sender and what
/// drives it.
async fn dial(
    backend: &Backend,
    timeout: Duration,
    h2: &UpstreamHttp2,
) -> Result<(SendRequest<Bytes>, Driver, Keepalive), ConnectError> {
    let work = async {
        let target = &backend.target;
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        tcp.set_nodelay(true)?;
        match target.scheme {
            Scheme::Http => handshake(tcp, h2).await,
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
                handshake(stream, h2).await
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
    let (send, driver, keepalive) = dial(backend, timeout, h2).await?;
    Ok(start(send, driver, keepalive, h2.idle_timeout.get()))
}

/// A connection of its own (not pooled; it closes once the sender and its
/// streams are gone), for an active health check.
pub async fn dial_once(
    backend: &Backend,
    timeout: Duration,
    h2: &UpstreamHttp2,
) -> Result<SendRequest<Bytes>, ConnectError> {
    let (send, driver, _) = dial(backend, timeout, h2).await?;
    tokio::spawn(driver);
    Ok(send)
}

/// Runs a connection in its own task: PINGs it every keepalive interval (no
/// PONG within the keepalive timeout drops it), and closes it once it has had
/// no stream for between one and two `idle` periods.
fn start(
    send: SendRequest<Bytes>,
    driver: Driver,
    keepalive: Keepalive,
    idle: Duration,
) -> Arc<H2Conn> {
    let state = Arc::new(H2Conn {
        send,
        streams: AtomicUsize::new(0),
        started: AtomicU64::new(0),
        closed: AtomicBool::new(false),
    });
    let watch = state.clone();
    tokio::spawn(async move {
        let mut conn = driver;
        let Keepalive {
            mut ping,
            interval,
            timeout,
        } = keepalive;
        let mut tick = tokio::time::interval(idle);
        tick.tick().await;
        let mut beat = tokio::time::interval_at(Instant::now() + interval, interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The PONG awaited, until when.
        let mut awaiting: Option<Pin<Box<Sleep>>> = None;
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
                        // (`h2` refuses to open it once the connection is gone).
                        watch.closed.store(true, Relaxed);
                        if watch.streams.load(Relaxed) == 0 {
                            break;
                        }
                        watch.closed.store(false, Relaxed);
                    }
                    seen = started;
                }
                _ = beat.tick(), if awaiting.is_none() && ping.is_some() => {
                    if let Some(p) = ping.as_mut() {
                        match p.send_ping(Ping::opaque()) {
                            Ok(()) => awaiting = Some(Box::pin(tokio::time::sleep(timeout))),
                            Err(e) => debug!(error = %e, "upstream HTTP/2 keepalive PING not sent"),
                        }
                    }
                }
                pong = std::future::poll_fn(|cx| match ping.as_mut() {
                    Some(p) => p.poll_pong(cx),
                    None => Poll::Pending,
                }), if awaiting.is_some() => {
                    awaiting = None;
                    if let Err(e) = pong {
                        debug!(error = %e, "upstream HTTP/2 keepalive PONG");
                    }
                }
                _ = async { if let Some(t) = awaiting.as_mut() { t.await } }, if awaiting.is_some() => {
                    debug!(after = ?timeout, "upstream HTTP/2 connection did not answer a PING; closed");
                    break;
                }
            }
        }
        watch.closed.store(true, Relaxed);
    });
    state
}

/// Resets a stream whose answer was given up before its end (dropped unfired when
/// the answer ended normally).
pub struct Cancel(Option<oneshot::Sender<()>>);

impl Cancel {
    /// The answer ended normally: a body still being piped goes on.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Sends `req` as a new stream on `send`: the answer's future, and what resets
/// the stream if the caller gives it up. `Err` hands the body back when `h2`
/// did not open the stream (nothing of it went out: the connection is going
/// away or gone).
fn open_stream(
    send: &SendRequest<Bytes>,
    req: Request<ReqBody>,
) -> Result<(ResponseFuture, Option<Cancel>), (h2::Error, ReqBody)> {
    let (parts, body) = req.into_parts();
    let eos = body.is_end_stream();
    let (resp, tx) = match send
        .clone()
        .send_request(Request::from_parts(parts, ()), eos)
    {
        Ok(ok) => ok,
        Err(e) => return Err((e, body)),
    };
    if eos {
        return Ok((resp, None));
    }
    let (cancel_tx, cancel_rx) = oneshot::channel();
    let mut pipe = Pipe {
        body,
        tx,
        cancel: Some(cancel_rx),
    };
    // A body at hand (a buffered call) goes out now, without a task.
    let waker = std::task::Waker::noop();
    if Pin::new(&mut pipe)
        .poll(&mut Context::from_waker(waker))
        .is_pending()
    {
        tokio::spawn(pipe);
    }
    Ok((resp, Some(Cancel(Some(cancel_tx)))))
}

/// A request body on its way into its stream: as the backend's flow control
/// lets it, until it ends, the client's side fails (the stream is reset), the
/// backend resets the stream, or the answer is given up.
struct Pipe {
    body: ReqBody,
    tx: SendStream<Bytes>,
    cancel: Option<oneshot::Receiver<()>>,
}

impl Future for Pipe {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = self.get_mut();
        loop {
            if let Some(rx) = me.cancel.as_mut() {
                match Pin::new(rx).poll(cx) {
                    Poll::Ready(Ok(())) => {
                        me.tx.send_reset(Reason::CANCEL);
                        return Poll::Ready(());
                    }
                    Poll::Ready(Err(_)) => me.cancel = None,
                    Poll::Pending => {}
                }
            }
            // Some room in the stream before the next frame is taken from the
            // client (`h2` buffers the frame beyond it, up to the send buffer).
            me.tx.reserve_capacity(1);
            if me.tx.capacity() == 0 {
                loop {
                    match me.tx.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => {
                            return match me.tx.poll_reset(cx) {
                                Poll::Ready(_) => Poll::Ready(()),
                                Poll::Pending => Poll::Pending,
                            };
                        }
                    }
                }
            } else if me.tx.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            match Pin::new(&mut me.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    let _ = me.tx.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Poll::Ready(Some(Err(e))) => {
                    debug!(error = %e, "client body failed; HTTP/2 stream reset");
                    me.tx.send_reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let eos = me.body.is_end_stream();
                        if me.tx.send_data(data, eos).is_err() || eos {
                            return Poll::Ready(());
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            me.tx.reserve_capacity(0);
                            let _ = me.tx.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
            }
        }
    }
}

/// Sends `req` on `send` and awaits the answer's head (the health check's
/// request, on a connection of its own).
pub async fn request_once(
    send: &SendRequest<Bytes>,
    req: Request<ReqBody>,
) -> Result<Response<RecvBody>, h2::Error> {
    let (resp, cancel) = open_stream(send, req).map_err(|(e, _)| e)?;
    let resp = resp.await?;
    if let Some(mut c) = cancel {
        c.disarm();
    }
    Ok(RecvBody::response(resp))
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
    let (resp, mut cancel) = match open_stream(&lease.0.send, req) {
        Ok(ok) => ok,
        // Not started (the connection is going away or gone): nothing of it
        // went out, so it goes again on a fresh connection.
        Err((e, body)) => {
            debug!(error = %e, "HTTP/2 stream not opened");
            lease.0.closed.store(true, Relaxed);
            if fresh {
                // Not even a new connection takes it (a backend going away at
                // once): a failure, or this would dial again and again.
                return Ended::Lost(UpstreamError::Io(std::io::Error::other(e)));
            }
            return Ended::Stale(body);
        }
    };
    match tokio::time::timeout_at(deadline, resp).await {
        Err(_) => Ended::TimedOut(limit),
        Ok(Ok(resp)) => {
            let resp = RecvBody::response(resp);
            if resp.body().is_end_stream()
                && let Some(c) = cancel.as_mut()
            {
                // The answer is whole already: a body still on its way goes on.
                c.disarm();
            }
            Ended::AnsweredH2(Box::new(H2Answer {
                resp,
                at: Instant::now(),
                lease,
                deadline: call_deadline.map(|(_, at)| at),
                cancel,
            }))
        }
        Ok(Err(e)) => {
            if refused(&e) {
                // The backend did not process it; a fresh connection may
                // take it, if nothing of the body is lost.
                lease.0.closed.store(true, Relaxed);
                // Once: a backend that refuses on a fresh connection too is
                // failing (the attempt counts, and retries are bounded).
                if out.replayable && !fresh {
                    return Ended::Stale(ReqBody::Empty);
                }
            }
            if e.is_reset() && !e.is_remote() && !e.is_library() {
                // Reset by the proxy's own pipe: the client's body broke off. (A
                // reset `h2` made for a backend's protocol error is the backend's.)
                Ended::ClientAborted(UpstreamError::Client(Box::new(e)))
            } else {
                Ended::Lost(UpstreamError::Io(std::io::Error::other(e)))
            }
        }
    }
}

/// Whether the backend left the stream unprocessed (RFC 9113 §8.7): refused it
/// (REFUSED_STREAM), or went away gracefully (GOAWAY, NO_ERROR) before it: a
/// stream the GOAWAY covers finishes normally, so one ended by it was past the
/// server's last.
fn refused(e: &h2::Error) -> bool {
    match e.reason() {
        Some(Reason::REFUSED_STREAM) => e.is_remote(),
        Some(Reason::NO_ERROR) => e.is_go_away() && e.is_remote(),
        _ => false,
    }
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
    if out.upgrade {
        // No protocol switch over HTTP/2 (RFC 9113 §8.6): connection-specific
        // lines are not allowed in it.
        parts.headers.remove(header::CONNECTION);
        parts.headers.remove(header::UPGRADE);
    }
    // The forwarding lines, as the HTTP/1.1 path writes them into the head.
    // Names as constants (no parse), values moved in (no copy).
    let mut add: SmallVec<[(HeaderName, Vec<u8>); 3]> = SmallVec::new();
    out.forwarded.write(&parts.headers, |name, value| {
        let name = match name {
            b"x-forwarded-for" => HeaderName::from_static("x-forwarded-for"),
            b"x-forwarded-proto" => HeaderName::from_static("x-forwarded-proto"),
            _ => HeaderName::from_static("x-forwarded-host"),
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
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            parts.headers.append(name, v);
        }
    }
    parts
        .headers
        .insert(TE.clone(), HeaderValue::from_static("trailers"));
    Trace::inject(plane, span, &mut parts.headers);
    Request::from_parts(parts, body)
}

/// An HTTP/2 backend's response body as `h2` receives it: data as it is taken
/// (the stream's flow-control window is given back as it goes), then trailers.
pub struct RecvBody {
    recv: RecvStream,
    /// What `content-length` says is left, when it says.
    left: Option<u64>,
    data_done: bool,
}

impl RecvBody {
    fn response(resp: Response<RecvStream>) -> Response<RecvBody> {
        let left = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        resp.map(|recv| RecvBody {
            recv,
            left,
            data_done: false,
        })
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let me = self.get_mut();
        if !me.data_done {
            match me.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = me.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = me.left.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => me.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match me.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(t))) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// An HTTP/2 backend's response body on its way to the client: the stream's
/// lease, the request's settling guard, a gRPC call's pending record, and the
/// timer that ends a stream idle too long or a call past its deadline.
pub struct H2Body {
    body: RecvBody,
    guard: ResponseGuard,
    lease: Option<Lease>,
    pending: Option<Pending>,
    /// Set up only when the body first has to wait (a short answer has all its
    /// frames at hand), and moved on only when it fires: frames since it was
    /// armed give the stream another `idle` period from then.
    timer: Option<Pin<Box<Sleep>>>,
    /// A frame came since the timer was armed.
    moved: bool,
    idle: Duration,
    /// The call's deadline (`grpc-timeout` from the request's start).
    deadline: Option<Instant>,
    ended: bool,
    /// Resets the stream if the client goes before its end.
    cancel: Option<Cancel>,
}

impl H2Body {
    pub(super) fn new(
        body: RecvBody,
        guard: ResponseGuard,
        lease: Lease,
        pending: Option<Pending>,
        idle: Duration,
        deadline: Option<Instant>,
        cancel: Option<Cancel>,
    ) -> Self {
        let mut me = Self {
            body,
            guard,
            lease: Some(lease),
            pending,
            timer: None,
            moved: false,
            idle,
            deadline,
            ended: false,
            cancel,
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
        if clean && let Some(c) = self.cancel.as_mut() {
            c.disarm();
        }
        self.pending = None;
        self.lease = None;
        self.guard.finish(None);
    }

    /// Whether the stream's timer has run out (it is armed on first use; when it
    /// fires after frames came, it is moved on instead).
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let timer = self.timer.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until(next_wake(
                    self.idle,
                    self.deadline,
                )))
            });
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if !self.moved || self.deadline.is_some_and(|d| d <= Instant::now()) {
                return true;
            }
            self.moved = false;
            timer.as_mut().reset(next_wake(self.idle, self.deadline));
        }
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
                    this.moved = true;
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
                if !this.timed_out(cx) {
                    return Poll::Pending;
                }
                this.ended = true;
                if this.deadline.is_some_and(|d| d <= Instant::now()) {
                    // The call's deadline passed: end it for the client as gRPC
                    // does (the backend's stream is reset as the body drops).
                    if let Some(p) = this.pending.as_mut() {
                        p.trailers(&grpc::deadline_trailers());
                    }
                    // A body still being piped up stops, and the stream is reset.
                    drop(this.cancel.take());
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
        cancel,
        ..
    } = answer;
    let (mut parts, body) = resp.into_parts();
    // hyper's HTTP/2 server ignores it; the HTTP/1.1 server answers in the
    // client's version.
    parts.version = Version::HTTP_11;
    let idle = cfg.upstream.http2.stream_idle_timeout.get();
    let body = H2Body::new(body, guard, lease, pending, idle, deadline, cancel);
    Response::from_parts(parts, super::body::ProxyBody::H2(Box::new(body)))
}
