//! The client side's HTTP/1.1 server: one task per connection, driven inline,
//! generic over a [`Handler`] (the proxy's forwarding lives in `switchyard`; this
//! crate only knows HTTP/1.1).
//!
//! Why not hyper's server: it keeps an 8 KiB read buffer and an 8 KiB write buffer
//! for a connection's whole life, idle or not (about 33 KiB per idle keep-alive
//! connection with everything else). Here an idle connection holds no buffer at
//! all: the task waits for readability with nothing allocated, reads the head into
//! a buffer taken for the request, and gives the buffer back when the connection
//! goes idle again (10,000 idle clients: 343 → 49 MiB; instructions per request
//! unchanged, see docs/benchmarks.md §4 and §6). A connection that opens with the
//! HTTP/2 preface (h2c, prior knowledge) is handed to [`Handler::serve_h2`].
//!
//! What it does, and what it refuses:
//! - request heads read by [`crate::codec::parse_request`] (header values are
//!   slices of the head, not copies); over `max_header_bytes` or `max_headers`:
//!   431; malformed: 400; both refusals close the connection;
//! - ambiguous framing (`Content-Length` with `Transfer-Encoding`, repeated
//!   `Content-Length`), a `Transfer-Encoding` other than chunked, or one on an
//!   HTTP/1.0 request: 400 and close, before anything is forwarded (request
//!   smuggling defence: a backend might frame such a request differently); the
//!   answer to every refusal comes from [`Handler::refuse`];
//! - bodies by `Content-Length` or chunked (trailers passed on), streamed to the
//!   backend as they arrive ([`ClientBody`]); `Expect: 100-continue` answered when
//!   the body is first wanted, and never once the final response has started;
//! - keep-alive (HTTP/1.1 by default, HTTP/1.0 on request) and pipelining;
//!   `header_read_timeout` bounds both the wait for a head and an idle connection;
//! - responses framed by their length, chunked to HTTP/1.1 clients when unknown
//!   (trailers only to clients that sent `TE: trailers`), close-delimited to
//!   HTTP/1.0 clients; no body for HEAD, 1xx, 204 and 304;
//! - `101 Switching Protocols`: the connection is handed to the tunnel
//!   ([`Upgraded`]);
//! - graceful shutdown: idle connections close at once, busy ones after the
//!   response in hand (which then says `Connection: close`);
//! - a connection from the listener ([`serve_fresh`]) enters the reactor only
//!   when it has to wait: a `Connection: close` request that is there when it is
//!   accepted, answered at once, costs no `epoll_ctl`.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::debug;

use crate::body::{self, BodyError};
use crate::codec::{
    self, COPY_MAX, CRLF, Encoded, Framing, LAST_CHUNK, OutFraming, Refusal, RequestHead,
    encode_response, put_chunk_line, trailers_chunk,
};
use crate::{flush, sockio};

/// What the server calls: one request's answer, the answer to a refused head, and
/// a connection that turned out to speak HTTP/2.
pub trait Handler: Send + Sync + 'static {
    /// The response body.
    type Body: Body<Data = Bytes> + Send + Unpin + 'static;

    /// Answers one request: its head, and its body (`None` when it has none).
    /// With `upgrade`, the request asked to switch protocols: after a 101 the
    /// connection arrives there ([`Upgraded`]).
    fn call(
        &self,
        head: http::request::Parts,
        body: Option<ClientBody>,
        upgrade: Option<ClientUpgrade>,
    ) -> impl Future<Output = Response<Self::Body>> + Send;

    /// The answer to a head the server will not pass on (it closes after it).
    fn refuse(&self, refusal: Refusal) -> Response<Self::Body>;

    /// Serves a connection that opened with the HTTP/2 preface (the preface is
    /// still to be read from `io`) under the connection's `limits` until it ends or
    /// `stop` fires.
    fn serve_h2(
        &self,
        io: Rewind,
        limits: &Limits,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;

    /// The client took no response bytes for `send_timeout`: the connection is
    /// being closed (and the response body, with its backend exchange, dropped).
    fn send_timed_out(&self) {}
}

/// The connection-level limits, read once at start.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest request head, bytes (431 beyond).
    pub max_head: usize,
    /// Most request header lines (431 beyond).
    pub max_headers: usize,
    /// Time to send a request head; also bounds an idle keep-alive connection.
    pub header_timeout: Duration,
    /// Longest wait for the client to take more response bytes.
    pub send_timeout: Duration,
    /// Hand connections that open with the HTTP/2 preface to the handler.
    pub http2: bool,
}

/// First read of a request: room for its head and a small body read with it, so
/// a request that arrived whole is read in one call and forwarded in one send
/// (issue #24: a 4 KiB POST took two reads at 4 KiB). Only a connection with a
/// request in hand holds it; an idle one holds no buffer (see [`spare`]).
const HEAD_READ: usize = 16 * 1024;
/// Largest unread request body rest read and dropped to keep a connection.
const DRAIN_MAX: u64 = 256 * 1024;
/// Largest read of a request body at once.
const BODY_READ: usize = 64 * 1024;
/// Response bytes queued before the socket must take some.
const WRITE_HIGH: usize = 64 * 1024;
/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// After refusing a request, how long and how much of the client's remaining
/// upload is read and dropped before closing, so the refusal is not lost to a
/// reset (a close with unread data sends RST).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// A client connection after `101 Switching Protocols`, for the tunnel.
pub struct Upgraded {
    /// The client's connection: plain TCP here, or another transport (TLS) from a
    /// server that is not this one.
    pub io: Box<dyn ClientIo>,
    /// Bytes the client sent after its request head (already on the new protocol).
    pub early: Bytes,
}

/// A client connection the tunnel can splice (any transport).
pub trait ClientIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ClientIo for T {}

/// Where the tunnel gets the client's connection once the 101 has been written.
pub type ClientUpgrade = oneshot::Receiver<Upgraded>;

/// Serves one client connection until it closes.
///
/// Not an `async fn`: the future returned is the connection loop's alone, holding
/// the connection once (an `async fn` would keep its arguments and the connection
/// built from them beside the loop's own copy, in every idle connection's task).
pub fn serve<H: Handler>(
    stream: TcpStream,
    handler: H,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    let conn = Connection {
        io: Arc::new(stream),
        handler,
        limits,
        stop,
        buf: BytesMut::new(),
        first: true,
        pending: None,
        timer: None,
    };
    conn.run()
}

/// Serves a connection as [`serve`] does, from a socket not yet registered with
/// the reactor (non-blocking; see [`sockio::Acceptor`]).
///
/// The first read is tried at once. A request that is already there whole, with
/// no body, and which will not keep the connection (`Connection: close`,
/// HTTP/1.0) is served and closed on the plain socket: when the socket takes the
/// answer at once, it never enters epoll, with no `epoll_ctl` to add it and none
/// to remove it (HAProxy's speculative I/O does the same; a `Connection: close`
/// request made ten system calls, two of them these); an answer it does not take
/// at once registers it then, to wait. Everything else registers the socket and
/// goes on as [`serve`], with what was read.
pub fn serve_fresh<H: Handler>(
    stream: std::net::TcpStream,
    handler: H,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    use futures_util::FutureExt;
    use futures_util::future::Either;
    // Not one `async` block: it would keep the handler and limits beside the
    // connection loop that took them, in every idle connection's task.
    first(stream, handler, limits, stop).then(|conn| match conn {
        Some(conn) => Either::Left(conn.run()),
        None => Either::Right(std::future::ready(())),
    })
}

/// Resolves to the connection to go on with (`None`: it ended).
type First<H> = futures_util::future::Either<
    std::future::Ready<Option<Connection<H>>>,
    Pin<Box<dyn Future<Output = Option<Connection<H>>> + Send>>,
>;

/// The first request of a fresh connection: served without registering the
/// socket when it is a last request that is there whole; otherwise the
/// connection to go on with, holding what was read (the loop parses it: only a
/// head that may be a last one is parsed here, from a copy).
fn first<H: Handler>(
    io: std::net::TcpStream,
    handler: H,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
) -> First<H> {
    use futures_util::future::Either;
    let ended = || Either::Left(std::future::ready(None));
    let mut buf = spare::take();
    match sockio::read_plain(&io, &mut buf, HEAD_READ) {
        Ok(0) => return ended(),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => return ended(),
    }
    if may_be_last(&buf) && !*stop.borrow() {
        let mut copy = BytesMut::from(&buf[..]);
        if let Ok(Some(head)) = codec::parse_request(&mut copy, limits.max_head, limits.max_headers)
            && head.is_last()
        {
            spare::give(buf);
            // Built in its box (allocated first: the request's future is not
            // built on the stack and then copied in).
            let last = Box::write(Box::new_uninit(), async move {
                last(io, head, &handler, &limits).await;
                None
            });
            return Either::Right(Box::into_pin(last));
        }
    }
    let Ok(io) = register(io) else {
        return ended();
    };
    Either::Left(std::future::ready(Some(Connection {
        io: Arc::new(io),
        handler,
        limits,
        stop,
        buf,
        first: true,
        pending: None,
        timer: None,
    })))
}

/// Whether a buffered request start may be a last request
/// ([`RequestHead::is_last`]): HTTP/1.0, or a `close` somewhere (lower, title
/// or upper case). A quick look, so that a keep-alive request is not parsed
/// twice; a last request it misses is served all the same, registered.
fn may_be_last(buf: &[u8]) -> bool {
    let Some(eol) = memchr::memchr(b'\n', buf) else {
        return false;
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    line.ends_with(b"HTTP/1.0")
        || memchr::memmem::find(&buf[eol..], b"lose").is_some()
        || memchr::memmem::find(&buf[eol..], b"LOSE").is_some()
}

/// Serves a request that ends its connection ([`RequestHead::is_last`]) on a
/// socket not registered with the reactor, and closes it; the socket is registered
/// only if the answer has to wait for it.
async fn last<H: Handler>(
    io: std::net::TcpStream,
    head: RequestHead,
    handler: &H,
    limits: &Limits,
) {
    let RequestHead {
        parts, trailers, ..
    } = head;
    let head_request = parts.method == Method::HEAD;
    let version = parts.version;
    let resp = handler.call(parts, None, None).await;
    let (parts, mut body) = resp.into_parts();
    let mut keep = false;
    let out = encode_response(
        &parts,
        &body,
        head_request,
        version,
        false,
        trailers,
        &mut keep,
    );
    codec::recycled::give_back(parts.headers);
    let mut io = Fresh::Plain(io);
    let written = write_response(&mut io, out, &mut body, false, limits.send_timeout).await;
    drop(body);
    if let Err(WriteError::Stalled) = written {
        handler.send_timed_out();
    }
    // As the loop closes: a FIN whether the answer went out whole or not.
    io.shutdown();
}

#[cfg(test)]
thread_local! {
    /// Fresh sockets this thread registered with the reactor.
    static REGISTERED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Registers a fresh socket with the calling runtime's reactor.
fn register(io: std::net::TcpStream) -> io::Result<TcpStream> {
    #[cfg(test)]
    REGISTERED.with(|r| r.set(r.get() + 1));
    TcpStream::from_std(io)
}

/// A client socket that is registered with the reactor only once it has to wait.
enum Fresh {
    Plain(std::net::TcpStream),
    Registered(TcpStream),
    Gone,
}

impl Fresh {
    /// FIN (a `shutdown`, as [`Connection::close`] without lingering).
    fn shutdown(&self) {
        let _ = match self {
            Fresh::Plain(io) => io.shutdown(std::net::Shutdown::Write),
            Fresh::Registered(io) => socket2::SockRef::from(io).shutdown(std::net::Shutdown::Write),
            Fresh::Gone => Ok(()),
        };
    }
}

/// Where a response is written: a connection's registered socket, or a fresh one.
trait Sink {
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// As [`sockio::try_write_bufs`].
    fn try_write_bufs(&mut self, bufs: &[Bytes]) -> io::Result<usize>;
    /// Hands a whole response to this turn's flusher (see [`flush::defer`]).
    fn defer(&mut self, bufs: &mut flush::Bufs, owner: &std::task::Waker)
    -> Option<flush::Pending>;
}

impl Sink for &Arc<TcpStream> {
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }

    fn try_write_bufs(&mut self, bufs: &[Bytes]) -> io::Result<usize> {
        sockio::try_write_bufs(self, bufs)
    }

    fn defer(
        &mut self,
        bufs: &mut flush::Bufs,
        owner: &std::task::Waker,
    ) -> Option<flush::Pending> {
        flush::defer(self, bufs, owner)
    }
}

impl Sink for Fresh {
    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            // Writable until a write says otherwise (a new connection's send
            // buffer is empty).
            Fresh::Plain(_) => Poll::Ready(Ok(())),
            Fresh::Registered(io) => io.poll_write_ready(cx),
            Fresh::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn try_write_bufs(&mut self, bufs: &[Bytes]) -> io::Result<usize> {
        match self {
            Fresh::Plain(io) => match sockio::write_bufs_plain(io, bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The client is not taking it as fast: wait in epoll from now on.
                    let Fresh::Plain(io) = std::mem::replace(self, Fresh::Gone) else {
                        return Err(e);
                    };
                    *self = Fresh::Registered(register(io)?);
                    Err(e)
                }
                r => r,
            },
            Fresh::Registered(io) => sockio::try_write_bufs(io, bufs),
            Fresh::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn defer(&mut self, _: &mut flush::Bufs, _: &std::task::Waker) -> Option<flush::Pending> {
        None
    }
}

struct Connection<H> {
    io: Arc<TcpStream>,
    handler: H,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
    /// Bytes read and not yet used: a head being read, or what a client pipelined.
    buf: BytesMut,
    first: bool,
    /// The last response, handed to this turn's flusher (see [`crate::flush`]).
    pending: Option<flush::Pending>,
    /// The header timeout's timer, armed once and moved on only when it fires
    /// before the current wait's deadline (no timer is set up for every request).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What reading a head came to.
enum Read {
    Head(Box<RequestHead>),
    /// The client closed, went quiet past the timeout, or we are stopping.
    Gone,
    Refused(Refusal),
    /// An HTTP/2 client (prior knowledge).
    H2,
}

/// How the connection goes on after a response.
enum Next {
    KeepAlive,
    Close {
        linger: bool,
    },
    /// A 101 went out: the connection goes to the tunnel.
    Upgrade(oneshot::Sender<Upgraded>),
}

impl<H: Handler> Connection<H> {
    /// Not an `async fn`: its argument would be kept twice in the future (the
    /// argument and the local it is moved to), in every idle connection's task.
    #[allow(clippy::manual_async_fn, reason = "an async fn keeps `self` twice")]
    fn run(mut self) -> impl Future<Output = ()> {
        async move {
            loop {
                let read = self.read_head().await;
                // Whatever comes next goes out after the last response: a pipelined
                // request's answer, a refusal, the close.
                if !self.settle().await {
                    return;
                }
                let head = match read {
                    Read::Head(h) => h,
                    Read::Gone => return Box::pin(self.close(false)).await,
                    // The rare endings are boxed too (a refusal holds a whole response).
                    Read::Refused(r) => return Box::pin(self.refuse(r)).await,
                    // Boxed: hyper's HTTP/2 connection state would otherwise make every
                    // HTTP/1.1 connection's task kilobytes larger, idle or not.
                    Read::H2 => return Box::pin(self.serve_h2()).await,
                };
                self.first = false;
                // Boxed, and the request's whole future with it: between requests the
                // task keeps only what waiting for the next head needs.
                // Built in its box (allocated first, so the future is not built on the
                // stack and then copied in).
                let exchange = Box::write(Box::new_uninit(), self.exchange(*head));
                match Box::into_pin(exchange).await {
                    Next::KeepAlive => {}
                    next => return Box::pin(self.end(next)).await,
                }
            }
        }
    }

    /// Ends the connection after an exchange that does not keep it: closes it
    /// once the response is out, or hands it to the tunnel.
    async fn end(mut self, next: Next) {
        match next {
            Next::KeepAlive => {}
            Next::Close { linger } => {
                if self.settle().await {
                    self.close(linger).await;
                }
            }
            Next::Upgrade(tx) => match Arc::try_unwrap(self.io) {
                Ok(io) => {
                    let early = self.buf.freeze();
                    let _ = tx.send(Upgraded {
                        io: Box::new(io),
                        early,
                    });
                }
                Err(_) => debug!("upgraded connection still shared; closed"),
            },
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits until a response handed to the flusher is out, writing what it left.
    /// False when the connection broke.
    async fn settle(&mut self) -> bool {
        match self.pending.take() {
            None => true,
            Some(p) => self.finish(p.settle()).await,
        }
    }

    /// Writes what the flusher left of a response (boxed: rare, and the task stays
    /// small). False when the connection broke.
    async fn finish(&mut self, sent: flush::Sent) -> bool {
        if sent.error.is_some() {
            return false;
        }
        sent.rest.is_empty() || Box::pin(self.write_rest(sent.rest)).await
    }

    async fn write_rest(&mut self, rest: Vec<Bytes>) -> bool {
        let mut rest: flush::Bufs = rest.into_iter().collect();
        let mut stall = Stall::new(self.limits.send_timeout);
        let done = poll_fn(|cx| {
            while !rest.is_empty() {
                match self.io.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(WriteError::Io)),
                    Poll::Pending => return stall.poll(cx),
                }
                match sockio::try_write_bufs(&self.io, &rest) {
                    Ok(0) => return Poll::Ready(Err(WriteError::Io)),
                    Ok(n) => {
                        sockio::consume(&mut rest, n);
                        stall.progressed();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(Err(WriteError::Io)),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await;
        if let Err(WriteError::Stalled) = done {
            self.handler.send_timed_out();
        }
        done.is_ok()
    }

    /// Reads until a complete request head is buffered.
    async fn read_head(&mut self) -> Read {
        let mut deadline: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                if self.first && self.limits.http2 {
                    let n = self.buf.len().min(H2_PREFACE.len());
                    if self.buf[..n] == H2_PREFACE[..n] {
                        if n == H2_PREFACE.len() {
                            return Read::H2;
                        }
                    } else if let Some(r) = self.parse() {
                        return r;
                    }
                } else if let Some(r) = self.parse() {
                    return r;
                }
            }
            if self.buf.capacity() == 0 {
                self.buf = spare::take();
            } else if self.buf.capacity() - self.buf.len() < 512 {
                self.buf.reserve(HEAD_READ);
            }
            // Decided before waiting, so neither the read's result nor its error is
            // kept in the task across the wait (24 bytes of every idle connection).
            let idle = match sockio::try_read(&self.io, &mut self.buf) {
                Ok(0) => return Read::Gone,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.buf.is_empty(),
                Err(_) => return Read::Gone,
            };
            if idle {
                // Nothing is kept while a connection waits: the buffer goes
                // to the thread's spares, for whichever connection reads next.
                spare::give(std::mem::take(&mut self.buf));
                if self.stopping() {
                    return Read::Gone;
                }
            }
            let at = *deadline.get_or_insert_with(|| Instant::now() + self.limits.header_timeout);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            tokio::select! {
                biased;
                sent = flushed(&mut self.pending) => {
                    // The flusher could not send all of the last response.
                    if !self.finish(sent).await {
                        return Read::Gone;
                    }
                }
                // Readiness in the socket's own reader slot (no waiter node
                // kept in the task, as `readable()` has).
                r = poll_fn(|cx| self.io.poll_read_ready(cx)) => if r.is_err() { return Read::Gone },
                _ = timer.as_mut() => {
                    // Armed for an earlier wait (deadlines only move later).
                    if Instant::now() < at {
                        timer.as_mut().reset(at);
                        continue;
                    }
                    return if idle { Read::Gone } else { Read::Refused(Refusal::Timeout) };
                }
                _ = self.stop.changed(), if idle => return Read::Gone,
            }
        }
    }

    /// `Some` when the buffer holds a complete head or one to refuse.
    fn parse(&mut self) -> Option<Read> {
        match codec::parse_request(&mut self.buf, self.limits.max_head, self.limits.max_headers) {
            Ok(Some(h)) => Some(Read::Head(Box::new(h))),
            Ok(None) if self.buf.len() > self.limits.max_head => {
                Some(Read::Refused(Refusal::TooLarge))
            }
            Ok(None) => None,
            Err(r) => Some(Read::Refused(r)),
        }
    }

    /// Forwards one request and writes its response.
    async fn exchange(&mut self, head: RequestHead) -> Next {
        let RequestHead {
            parts,
            framing,
            keep_alive,
            expect_continue,
            upgrade,
            trailers,
        } = head;
        let state = match framing {
            Framing::Length(0) => None,
            f => Some(Arc::new(Mutex::new(BodyState {
                buf: std::mem::take(&mut self.buf),
                framing: f,
                cont: if expect_continue {
                    Continue::Wanted(0)
                } else {
                    Continue::No
                },
            }))),
        };
        let body = state.as_ref().map(|s| ClientBody {
            io: self.io.clone(),
            state: s.clone(),
        });
        let (upgrade_tx, upgrade_rx) = if upgrade {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let head_request = parts.method == Method::HEAD;
        let version = parts.version;
        let resp = self.handler.call(parts, body, upgrade_rx).await;

        if let Some(s) = &state {
            // A 100 Continue after the final response has begun would corrupt it.
            let mut st = s.lock();
            if let Continue::Wanted(_) = st.cont {
                st.cont = Continue::Refused;
            }
        }
        let (parts, mut body) = resp.into_parts();
        let upgrading = parts.status == StatusCode::SWITCHING_PROTOCOLS && upgrade_tx.is_some();
        let mut keep = keep_alive && !self.stopping();
        let out = encode_response(
            &parts,
            &body,
            head_request,
            version,
            upgrading,
            trailers,
            &mut keep,
        );
        // Its lines are written: the map goes back for the next head.
        codec::recycled::give_back(parts.headers);
        // A whole response on a connection that goes on can wait for the end of
        // this turn; the connection then waits for the next request.
        let defer = keep && !upgrading;
        let written = write_response(
            &mut &self.io,
            out,
            &mut body,
            defer,
            self.limits.send_timeout,
        )
        .await;
        drop(body);
        match written {
            Ok(p) => self.pending = p,
            Err(e) => {
                if matches!(e, WriteError::Stalled) {
                    self.handler.send_timed_out();
                }
                return Next::Close { linger: false };
            }
        }
        // Whatever the body left unread decides whether the connection can go on.
        let mut body_complete = true;
        let mut unread = None;
        if let Some(s) = state {
            let mut st = s.lock();
            match (st.framing, st.cont) {
                (Framing::Done, _) => self.buf = std::mem::take(&mut st.buf),
                // Answered without the body (a 429, a 503): a small rest the client
                // is sending anyway is read and dropped rather than costing it the
                // connection. Not when it still waits for a 100 Continue.
                (Framing::Length(rest), c) if rest <= DRAIN_MAX && c != Continue::Refused => {
                    unread = Some((rest, std::mem::take(&mut st.buf)));
                }
                _ => body_complete = false,
            }
        }
        if upgrading && let Some(tx) = upgrade_tx {
            return Next::Upgrade(tx);
        }
        if let Some((rest, buf)) = unread
            && keep
        {
            body_complete = self.drain(rest, buf).await;
        }
        if !body_complete {
            return Next::Close { linger: true };
        }
        if keep {
            Next::KeepAlive
        } else {
            Next::Close { linger: false }
        }
    }

    /// Reads and drops the `rest` of a body nobody wanted (`buf` holds what was
    /// already read), keeping what follows it for the next request. False when the
    /// client does not send it in time.
    async fn drain(&mut self, mut rest: u64, mut buf: BytesMut) -> bool {
        let deadline = Instant::now() + self.limits.header_timeout;
        loop {
            let n = (buf.len() as u64).min(rest);
            let _ = buf.split_to(n as usize);
            rest -= n;
            if rest == 0 {
                self.buf = buf;
                return true;
            }
            buf.reserve(usize::try_from(rest).unwrap_or(BODY_READ).min(BODY_READ));
            match sockio::try_read(&self.io, &mut buf) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let ready = tokio::time::timeout_at(deadline, self.io.readable()).await;
                    if !matches!(ready, Ok(Ok(()))) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Answers a head we will not forward, then closes.
    async fn refuse(self, r: Refusal) {
        let resp = self.handler.refuse(r);
        let (parts, mut body) = resp.into_parts();
        let mut keep = false;
        let out = encode_response(
            &parts,
            &body,
            false,
            Version::HTTP_11,
            false,
            false,
            &mut keep,
        );
        let written = write_response(
            &mut &self.io,
            out,
            &mut body,
            false,
            self.limits.send_timeout,
        )
        .await;
        drop(body);
        if written.is_ok() {
            self.close(true).await;
        }
    }

    /// Ends the connection: FIN, and with `linger` a short drain of what the client
    /// may still be sending, so our last response is not destroyed by a reset.
    async fn close(self, linger: bool) {
        let Ok(mut io) = Arc::try_unwrap(self.io) else {
            return;
        };
        let _ = io.shutdown().await;
        if linger {
            let drain = async {
                let mut sink = vec![0u8; 16 * 1024];
                let mut total = 0;
                while total < LINGER_BYTES {
                    match tokio::io::AsyncReadExt::read(&mut io, &mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        }
    }
}

// === request bodies ===

/// Where a body stands, shared by the body (which reads it) and the connection
/// (which gets the bytes after it back, for the next request).
struct BodyState {
    buf: BytesMut,
    framing: Framing,
    cont: Continue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Continue {
    No,
    /// To send when the body is first wanted; bytes of it written so far.
    Wanted(usize),
    /// The final response has begun: too late.
    Refused,
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A client's request body, read from its connection as the backend takes it.
pub struct ClientBody {
    io: Arc<TcpStream>,
    state: Arc<Mutex<BodyState>>,
}

/// Why a client's request body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("client closed the connection before the body was complete")]
    Closed,
    #[error("malformed body: {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    Io(io::Error),
}

impl From<BodyError> for ClientBodyError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Closed => ClientBodyError::Closed,
            BodyError::Io(e) => ClientBodyError::Io(e),
            BodyError::Malformed(why) => ClientBodyError::Malformed(why),
        }
    }
}

fn poll_fill(
    io: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    want: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < want.min(BODY_READ) {
        buf.reserve(want.clamp(1024, BODY_READ));
    }
    sockio::poll_read(io, cx, buf)
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        let mut guard = this.state.lock();
        let st = &mut *guard;
        while let Continue::Wanted(sent) = st.cont {
            if sent == CONTINUE.len() {
                st.cont = Continue::No;
                break;
            }
            ready!(this.io.poll_write_ready(cx)).map_err(ClientBodyError::Io)?;
            match this.io.try_write(&CONTINUE[sent..]) {
                Ok(n) => st.cont = Continue::Wanted(sent + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Some(Err(ClientBodyError::Io(e)))),
            }
        }
        let io = &this.io;
        body::poll_frame(
            &mut st.framing,
            &mut st.buf,
            cx,
            BODY_READ,
            |cx, buf, want| poll_fill(io, cx, buf, want),
        )
        .map(|f| f.map(|r| r.map_err(ClientBodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.state.lock().framing.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.state.lock().framing.size_hint()
    }
}

// === responses ===

/// Read buffers of waiting connections, kept per thread for the next connection that
/// reads: a request then costs no allocation, and an idle connection still holds
/// no buffer.
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::HEAD_READ;

    /// Most buffers kept per thread (512 KiB).
    const MAX: usize = 32;

    thread_local! {
        static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer with room for a request head.
    pub(super) fn take() -> BytesMut {
        FREE.try_with(|f| f.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| BytesMut::with_capacity(HEAD_READ))
    }

    /// Keeps an emptied buffer that has room for a request head without
    /// allocating: its own spare room, or its whole allocation again once no request
    /// head read into it is alive (`try_reclaim`). A kept buffer whose room is the
    /// tail of an allocation a live head still uses keeps that allocation until it
    /// is used up; the size check and `MAX` bound what that can hold.
    pub(super) fn give(mut buf: BytesMut) {
        buf.clear();
        if !buf.try_reclaim(HEAD_READ) || buf.capacity() > 4 * HEAD_READ {
            return;
        }
        let _ = FREE.try_with(|f| {
            if let Ok(mut f) = f.try_borrow_mut()
                && f.len() < MAX
            {
                f.push(buf);
            }
        });
    }
}

/// Most bytes gathered by copying before they go out as one buffer.
const COALESCE: usize = 16 * 1024;

/// Bytes for the socket, in order: `parts`, then `tail`.
struct Queue {
    parts: SmallVec<[Bytes; 6]>,
    /// Small pieces copied together (it starts as the response head).
    tail: BytesMut,
    len: usize,
}

impl Queue {
    fn push(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if b.len() <= COPY_MAX && self.tail.len() + b.len() <= COALESCE {
            self.copy(&b);
            return;
        }
        self.seal();
        self.len += b.len();
        self.parts.push(b);
    }

    fn copy(&mut self, b: &[u8]) {
        self.tail.extend_from_slice(b);
        self.len += b.len();
    }

    /// A chunk-size line for `n` bytes of data.
    fn chunk_line(&mut self, n: usize) {
        let before = self.tail.len();
        put_chunk_line(&mut self.tail, n);
        self.len += self.tail.len() - before;
    }

    /// Moves the copied bytes into `parts`, ready to write.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.parts.push(self.tail.split().freeze());
        }
    }

    fn consume(&mut self, n: usize) {
        self.len -= n;
        sockio::consume(&mut self.parts, n);
    }
}

/// Why a response could not be written whole.
#[derive(Debug)]
enum WriteError {
    Io,
    /// The client took nothing for the send timeout.
    Stalled,
    /// The backend's body failed or did not match its length; the client's copy is
    /// cut short (only closing the connection can tell it).
    Body,
}

/// Writes a response: the head, then the body as it comes, several frames per
/// write when they are ready together.
async fn write_response<S: Sink, B: Body<Data = Bytes> + Unpin>(
    io: &mut S,
    out: Encoded,
    body: &mut B,
    defer: bool,
    send_timeout: Duration,
) -> Result<Option<flush::Pending>, WriteError> {
    let mut stall = Stall::new(send_timeout);
    let mut queue = Queue {
        parts: SmallVec::new(),
        len: out.head.len(),
        tail: out.head,
    };
    let mut framing = out.framing;
    let mut body_done = framing == OutFraming::None;
    let mut offered = !defer;
    poll_fn(|cx| {
        loop {
            while !body_done && queue.len < WRITE_HIGH {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let frame = match frame.into_data() {
                            Ok(data) => {
                                if data.is_empty() {
                                    continue;
                                }
                                match &mut framing {
                                    OutFraming::Length(rest) => {
                                        let len = data.len() as u64;
                                        if len > *rest {
                                            return Poll::Ready(Err(WriteError::Body));
                                        }
                                        *rest -= len;
                                        queue.push(data);
                                    }
                                    OutFraming::Chunked { .. } => {
                                        queue.chunk_line(data.len());
                                        queue.push(data);
                                        queue.push(CRLF);
                                    }
                                    OutFraming::Close => queue.push(data),
                                    OutFraming::None => {}
                                }
                                continue;
                            }
                            Err(frame) => frame,
                        };
                        if let (Ok(t), OutFraming::Chunked { trailers: true }) =
                            (frame.into_trailers(), framing)
                        {
                            queue.push(trailers_chunk(&t));
                            framing = OutFraming::None;
                        }
                    }
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(WriteError::Body)),
                    Poll::Ready(None) => {
                        body_done = true;
                        match framing {
                            OutFraming::Chunked { .. } => queue.push(LAST_CHUNK),
                            OutFraming::Length(rest) if rest > 0 => {
                                return Poll::Ready(Err(WriteError::Body));
                            }
                            _ => {}
                        }
                    }
                    Poll::Pending => break,
                }
            }
            if queue.len == 0 {
                return if body_done {
                    Poll::Ready(Ok(None))
                } else {
                    Poll::Pending
                };
            }
            if body_done && !offered {
                // All of it is here: hand it to the flusher (once).
                offered = true;
                queue.seal();
                if queue.parts.len() <= 4 {
                    let mut bufs: flush::Bufs = queue.parts.drain(..).collect();
                    if let Some(p) = io.defer(&mut bufs, cx.waker()) {
                        return Poll::Ready(Ok(Some(p)));
                    }
                    queue.parts.extend(bufs);
                }
            }
            match io.poll_write_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Err(WriteError::Io)),
                Poll::Pending => return stall.poll(cx).map(|r| r.map(|()| None)),
            }
            queue.seal();
            match io.try_write_bufs(&queue.parts) {
                Ok(0) => return Poll::Ready(Err(WriteError::Io)),
                Ok(n) => {
                    queue.consume(n);
                    stall.progressed();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(Err(WriteError::Io)),
            }
        }
    })
    .await
}

/// The send timeout of one response: a timer armed only when the socket will not
/// take more (a response that goes out at once sets up nothing), moved on when the
/// client takes some again.
struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    moved: bool,
}

impl Stall {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            timer: None,
            moved: false,
        }
    }

    /// The client took bytes.
    fn progressed(&mut self) {
        self.moved = true;
    }

    /// Waiting for the socket: pending until the timeout passes with no progress.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        match &mut self.timer {
            None => self.timer = Some(Box::pin(tokio::time::sleep(self.limit))),
            Some(t) if self.moved => t.as_mut().reset(Instant::now() + self.limit),
            Some(_) => {}
        }
        self.moved = false;
        match self.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(WriteError::Stalled)),
            _ => Poll::Pending,
        }
    }
}

/// Resolves when the flusher is done with the last response and could not send
/// all of it (it wakes the connection then); pending otherwise.
fn flushed(pending: &mut Option<flush::Pending>) -> impl Future<Output = flush::Sent> + '_ {
    poll_fn(move |_| {
        let Some(p) = pending.take() else {
            return Poll::Pending;
        };
        match p.outcome() {
            Err(p) => {
                *pending = Some(p);
                Poll::Pending
            }
            Ok(sent) if sent.rest.is_empty() && sent.error.is_none() => Poll::Pending,
            Ok(sent) => Poll::Ready(sent),
        }
    })
}

// === HTTP/2 ===

impl<H: Handler> Connection<H> {
    /// Hands a connection that opened with the HTTP/2 preface to the handler.
    async fn serve_h2(self) {
        let Ok(io) = Arc::try_unwrap(self.io) else {
            return;
        };
        let prefix = self.buf.freeze();
        self.handler
            .serve_h2(Rewind { prefix, io }, &self.limits, self.stop.clone())
            .await;
    }
}

/// A stream that first yields bytes already read from it.
pub struct Rewind {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
