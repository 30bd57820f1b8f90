//! The upstream hop's HTTP/1.1 client, driven inline by the request's own task.
//!
//! hyper's client runs each connection in a task of its own and talks to it over
//! channels: per request a channel send, a oneshot, a body channel and two or three
//! extra task wake-ups (profiled at about a third of our user-space instructions per
//! request). Here an [`Exchange`] writes the request head straight to the socket,
//! with whatever of the body is already at hand in the same write (a 4 KiB POST
//! read whole goes out in one send, as HAProxy's does: issue #24,
//! docs/benchmarks.md §13), parses the response head with httparse into the `HeaderMap` the client side
//! needs (hop-by-hop headers dropped on the way), and [`UpstreamBody`] reads the body
//! only as fast as the client side takes it. The request body is pumped from the
//! same polls, so a backend may answer while it is still reading (full duplex).
//!
//! What a reverse proxy needs from the hop, and no more: origin-form requests;
//! `Content-Length` and chunked framing both ways (trailers included);
//! close-delimited responses; 1xx answers skipped; `101 Switching Protocols` handed
//! over for tunnelling; keep-alive with reuse only after a clean, complete exchange.
//! The request body is any `http_body::Body` (the proxy's: an HTTP/1.1 client's
//! [`crate::server::ClientBody`], hyper's HTTP/2 body, or none).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::body::{self, BodyError};
use crate::codec::{
    self, CRLF, Extra, Framing, LAST_CHUNK, MAX_HEAD, Out, ResponseHead, put_chunk_line,
    trailers_chunk,
};
use crate::flush;

/// Read size while waiting for a response head.
const HEAD_READ: usize = 8 * 1024;
/// Read size for response bodies (one frame to the client at most this big).
const BODY_READ: usize = 32 * 1024;
/// Request bytes queued from the body before they are written (a body that is
/// all at hand goes out in writes of about this size, not a frame at a time).
const GATHER_BYTES: usize = 64 * 1024;
/// Buffers queued before they are written (a chunk is three: its size line, its
/// data and the CRLF), well under the kernel's 1,024 per vectored write.
const GATHER_BUFS: usize = 16;

/// An error of a request body's source, boxed (the client's side, not the backend).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong on the upstream hop.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection closed before the response was complete")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("request body: {0}")]
    RequestBody(&'static str),
    #[error("client body: {0}")]
    Client(#[source] BoxError),
}

impl From<BodyError> for UpstreamError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Closed => UpstreamError::Closed,
            BodyError::Io(e) => UpstreamError::Io(e),
            BodyError::Malformed(why) => UpstreamError::Malformed(why),
        }
    }
}

impl UpstreamError {
    /// The client's side failed (its body broke off), not the backend.
    pub fn is_client(&self) -> bool {
        matches!(self, UpstreamError::Client(_))
    }
}

/// Why an [`Exchange`] produced no response.
pub enum SendError<B> {
    /// A reused connection turned out closed before the backend answered anything,
    /// at a point where sending again is safe (see [`Exchange::start`]). The body is
    /// handed back untouched. Not the backend's fault: it had closed an idle
    /// connection, as it may.
    Stale(B),
    Failed(UpstreamError),
}

impl<B> From<UpstreamError> for SendError<B> {
    fn from(e: UpstreamError) -> Self {
        SendError::Failed(e)
    }
}

/// A backend connection: plain TCP or TLS. A plain socket is shared so a request
/// can be handed to the turn's flusher ([`crate::flush`]).
pub enum Io {
    Plain(Arc<TcpStream>),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => loop {
                ready!(s.poll_read_ready(cx))?;
                match s.try_read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => loop {
                ready!(s.poll_write_ready(cx))?;
                match s.try_write(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    r => return Poll::Ready(r),
                }
            },
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => loop {
                ready!(s.poll_write_ready(cx))?;
                match s.try_write_vectored(bufs) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    r => return Poll::Ready(r),
                }
            },
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(_) => true,
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(_) => Poll::Ready(Ok(())),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => {
                Poll::Ready(socket2::SockRef::from(&**s).shutdown(std::net::Shutdown::Write))
            }
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where a request is written: a backend connection (or, in tests, a recorder of
/// the writes).
trait Sink: AsyncWrite + Unpin {
    /// The plain socket, which the turn's flusher can write to.
    fn plain(&self) -> Option<&Arc<TcpStream>>;
}

impl Sink for Io {
    fn plain(&self) -> Option<&Arc<TcpStream>> {
        match self {
            Io::Plain(s) => Some(s),
            Io::Tls(_) => None,
        }
    }
}

/// One keep-alive connection to a backend with its buffers (kept across exchanges,
/// so a warm connection allocates nothing for a request head).
pub struct Conn {
    pub io: Io,
    /// Bytes read from the backend and not consumed yet.
    pub rbuf: BytesMut,
    wbuf: BytesMut,
    /// Exchanges completed on this connection (0: fresh).
    served: u32,
    /// The timer of an exchange's deadline, kept between exchanges (see
    /// [`Exchange::poll_deadline`]).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    pub fn new(io: Io) -> Box<Self> {
        Box::new(Self {
            io,
            rbuf: BytesMut::with_capacity(HEAD_READ),
            wbuf: BytesMut::with_capacity(1024),
            served: 0,
            deadline: None,
        })
    }

    /// Lets go of the buffers and the deadline timer while the connection waits
    /// in a pool (they are made again by its next exchange). Buffers only when
    /// nothing is buffered.
    pub fn shed_buffers(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
        self.deadline = None;
    }

    /// Whether the connection holds buffers (or a timer) while it waits.
    pub fn holds_buffers(&self) -> bool {
        self.rbuf.capacity() > 0 || self.wbuf.capacity() > 0 || self.deadline.is_some()
    }

    /// Whether this connection served an exchange before.
    pub fn reused(&self) -> bool {
        self.served > 0
    }

    /// Whether an idle connection still looks usable: no close, error or stray
    /// bytes from the backend waiting. Costs a system call only when the socket
    /// saw an event since it was last read to the end.
    pub fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        self.rbuf.is_empty()
            && matches!(
                Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
                Poll::Pending
            )
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        fill(&mut self.io, cx, &mut self.rbuf, want)
    }
}

/// Reads about `want` more bytes from a backend into `buf`.
fn fill(
    io: &mut Io,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    want: usize,
) -> Poll<io::Result<usize>> {
    buf.reserve(want);
    match io {
        Io::Plain(s) => crate::sockio::poll_read(s, cx, buf),
        Io::Tls(_) => tokio_util::io::poll_read_buf(Pin::new(io), cx, buf),
    }
}

/// Sends the request head and body.
struct Writer<B> {
    body: B,
    framing: Out,
    /// Bytes for the socket, in order.
    queue: SmallVec<[Bytes; 4]>,
    body_done: bool,
    /// Something of the client's body was taken (it cannot be handed back).
    touched: bool,
    /// The socket accepted at least one byte.
    written: bool,
    /// The request waiting for this turn's flusher.
    deferred: Option<flush::Pending>,
    /// The request was offered to the flusher once already.
    offered: bool,
    /// Longest wait for the backend to take more of the request (`None`: no bound
    /// here), and its timer, armed only once a write has to wait.
    send_timeout: Option<Duration>,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    moved: bool,
}

impl<B> Writer<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// The flusher's part of sending: `Some` while the request waits for it, or once
    /// it sent all of it or failed; `None` when the writer writes (the rest) itself.
    /// A whole request (head and any body already queued) on a plain socket is
    /// offered to the flusher once.
    fn poll_deferred(
        &mut self,
        io: &impl Sink,
        cx: &mut Context<'_>,
    ) -> Option<Poll<Result<(), UpstreamError>>> {
        if let Some(p) = self.deferred.take() {
            return match p.outcome() {
                Err(p) => {
                    self.deferred = Some(p);
                    Some(Poll::Pending)
                }
                Ok(sent) => {
                    self.written |= sent.any;
                    self.queue = sent.rest.into_iter().collect();
                    if let Some(e) = sent.error {
                        Some(Poll::Ready(Err(e.into())))
                    } else if self.queue.is_empty() {
                        Some(Poll::Ready(Ok(())))
                    } else {
                        None
                    }
                }
            };
        }
        if self.offered || !self.body_done || self.queue.is_empty() {
            return None;
        }
        let s = io.plain()?;
        self.offered = true;
        let p = flush::defer(s, &mut self.queue, cx.waker())?;
        self.deferred = Some(p);
        Some(Poll::Pending)
    }

    fn consume(&mut self, n: usize) {
        self.written = true;
        self.moved = true;
        crate::sockio::consume(&mut self.queue, n);
    }

    /// A write has to wait: pending, or an error once the backend took nothing
    /// for the send timeout (it stopped reading the upload).
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        let Some(limit) = self.send_timeout else {
            return Poll::Pending;
        };
        match &mut self.stall {
            None => self.stall = Some(Box::pin(tokio::time::sleep(limit))),
            Some(t) if self.moved => t.as_mut().reset(tokio::time::Instant::now() + limit),
            Some(_) => {}
        }
        self.moved = false;
        match self.stall.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(UpstreamError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "the backend took no request bytes for the send timeout",
            )))),
            _ => Poll::Pending,
        }
    }

    /// Sends the request, through the flusher when it can. What the body has at
    /// hand is queued first, so a head goes out together with the body bytes read
    /// with it (a whole small request: one send, through the flusher).
    fn poll_out(
        &mut self,
        io: &mut impl Sink,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UpstreamError>> {
        let mut waiting = false;
        if self.deferred.is_none() {
            match self.gather(cx) {
                Ok(w) => waiting = w,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        match self.poll_deferred(io, cx) {
            Some(p) => p,
            None => self.poll_send(io, cx, waiting),
        }
    }

    /// Queues the body's frames for as long as they are ready at once, up to
    /// [`GATHER_BYTES`] queued (or [`GATHER_BUFS`] buffers): the next write then
    /// carries them with what is queued before them (the head, on the first).
    /// Stops when the body is complete or must be waited for (true: it said so,
    /// and wakes the task when it has more).
    fn gather(&mut self, cx: &mut Context<'_>) -> Result<bool, UpstreamError> {
        while !self.body_done
            && self.queue.len() < GATHER_BUFS
            && self.queue.iter().map(Bytes::len).sum::<usize>() < GATHER_BYTES
        {
            let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) else {
                return Ok(true);
            };
            self.take_frame(frame)?;
        }
        Ok(false)
    }

    /// Queues one frame of the body (`None`: its end).
    fn take_frame(
        &mut self,
        frame: Option<Result<Frame<Bytes>, B::Error>>,
    ) -> Result<(), UpstreamError> {
        match frame {
            None => {
                match self.framing {
                    Out::Chunked => self.queue.push(LAST_CHUNK),
                    Out::Length(0) => {}
                    Out::Length(_) => {
                        return Err(UpstreamError::RequestBody(
                            "shorter than its content-length",
                        ));
                    }
                }
                self.body_done = true;
            }
            Some(Err(e)) => return Err(UpstreamError::Client(e.into())),
            Some(Ok(frame)) => {
                self.touched = true;
                match frame.into_data() {
                    Ok(data) => self.queue_data(data)?,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.queue_trailers(&trailers)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes what is queued and pulls the client's body until the request is
    /// complete (Ready(Ok)) or something must be waited for (`waiting`: the body
    /// was just polled and has nothing at hand).
    fn poll_send(
        &mut self,
        io: &mut impl Sink,
        cx: &mut Context<'_>,
        mut waiting: bool,
    ) -> Poll<Result<(), UpstreamError>> {
        loop {
            while !self.queue.is_empty() {
                let polled = if self.queue.len() == 1 {
                    Pin::new(&mut *io).poll_write(cx, &self.queue[0])
                } else {
                    let slices: SmallVec<[IoSlice<'_>; 4]> =
                        self.queue.iter().map(|b| IoSlice::new(b)).collect();
                    Pin::new(&mut *io).poll_write_vectored(cx, &slices)
                };
                let n = match polled {
                    Poll::Ready(r) => r?,
                    Poll::Pending => return self.stalled(cx),
                };
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.consume(n);
            }
            if self.body_done {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                return Poll::Ready(Ok(()));
            }
            if waiting {
                return Poll::Pending;
            }
            waiting = self.gather(cx)?;
            if self.queue.is_empty() && !self.body_done {
                return Poll::Pending;
            }
        }
    }

    fn queue_data(&mut self, data: Bytes) -> Result<(), UpstreamError> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Out::Length(rest) => {
                let len = data.len() as u64;
                if len > *rest {
                    return Err(UpstreamError::RequestBody("longer than its content-length"));
                }
                *rest -= len;
                self.queue.push(data);
                if *rest == 0 {
                    // All declared bytes are here: the request is complete without
                    // waiting for the client body's end-of-stream signal.
                    self.body_done = true;
                }
            }
            Out::Chunked => {
                let mut line = BytesMut::with_capacity(18);
                put_chunk_line(&mut line, data.len());
                self.queue.push(line.freeze());
                self.queue.push(data);
                self.queue.push(CRLF);
            }
        }
        Ok(())
    }

    fn queue_trailers(&mut self, trailers: &HeaderMap) -> Result<(), UpstreamError> {
        if self.framing != Out::Chunked {
            // Trailers need chunked framing; a length-framed body cannot carry them.
            return Ok(());
        }
        self.queue.push(trailers_chunk(trailers));
        self.body_done = true;
        Ok(())
    }
}

/// One request on a connection, until the response head arrives.
pub struct Exchange<B> {
    conn: Option<Box<Conn>>,
    writer: Option<Writer<B>>,
    head_request: bool,
    /// Safe to send again after a close without any answer (idempotent, no body).
    replayable: bool,
    /// Bytes came back from the backend.
    answered: bool,
    /// Something of the client's body was taken (it cannot be handed back).
    touched: bool,
    /// The socket accepted at least one byte of the request.
    written: bool,
    /// The request came with a body from the client.
    had_body: bool,
    /// A bodiless request's (ended) body once it was sent, to hand back if the
    /// connection turns out stale.
    ended: Option<B>,
    /// Writing failed; kept to report if no response can be read either.
    write_error: Option<UpstreamError>,
}

impl<B> Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Encodes the request head for `conn` (nothing is written until polled).
    ///
    /// If a reused connection turns out closed before any answer, the exchange
    /// ends in [`SendError::Stale`] when sending again is safe: nothing was written
    /// yet, or the request is `replayable` (idempotent and bodiless; the backend
    /// closing an idle connection as the request arrives is the common race, and
    /// such a request may be repeated in any case).
    pub fn start(
        conn: Box<Conn>,
        parts: &Parts,
        host: Option<&HeaderValue>,
        extra: &HeaderMap,
        body: B,
        replayable: bool,
    ) -> Result<Self, UpstreamError> {
        Self::start_forwarded::<()>(conn, parts, host, extra, None, body, replayable)
    }

    /// [`Exchange::start`] for a client's request: `forwarded` adds the lines it
    /// gets on the way (the proxy's `X-Forwarded-*`, see [`Extra`]).
    pub fn start_forwarded<X: Extra>(
        mut conn: Box<Conn>,
        parts: &Parts,
        host: Option<&HeaderValue>,
        extra: &HeaderMap,
        forwarded: Option<&X>,
        body: B,
        replayable: bool,
    ) -> Result<Self, UpstreamError> {
        if conn.wbuf.capacity() == 0 {
            // Its buffers were let go while it waited in the pool.
            conn.wbuf.reserve(1024);
        }
        let framing = codec::encode_request(&mut conn.wbuf, parts, host, extra, forwarded, &body)
            .map_err(UpstreamError::RequestBody)?;
        let head = conn.wbuf.split().freeze();
        let mut queue = SmallVec::new();
        queue.push(head);
        // A body that has ended already is no body (nothing to hand back).
        let had_body = !body.is_end_stream();
        Ok(Self {
            conn: Some(conn),
            writer: Some(Writer {
                body,
                framing,
                queue,
                body_done: !had_body,
                touched: false,
                written: false,
                deferred: None,
                offered: false,
                send_timeout: None,
                stall: None,
                moved: false,
            }),
            head_request: parts.method == Method::HEAD,
            replayable,
            answered: false,
            touched: false,
            written: false,
            had_body,
            ended: None,
            write_error: None,
        })
    }

    /// Bounds how long the backend may take no bytes of the request (an upload it
    /// stopped reading): past it the exchange fails and its connection is closed.
    pub fn send_timeout(mut self, limit: Duration) -> Self {
        if let Some(w) = self.writer.as_mut() {
            w.send_timeout = Some(limit);
        }
        self
    }

    /// Polls the deadline `at` of this exchange's answer: ready once it has
    /// passed. Call it after [`Exchange`] itself was polled and is pending.
    ///
    /// The timer is the connection's, kept from one exchange to the next and
    /// moved only when it must: a timer set up and torn down for every request
    /// costs a timer-wheel insert and removal each time (~300 instructions, 1.5 %
    /// of a small GET's). With one timeout, deadlines only grow, so the timer
    /// stays armed at an older one; when that fires early it is moved on to the
    /// deadline in force. A shorter deadline moves it at once.
    pub fn poll_deadline(&mut self, cx: &mut Context<'_>, at: tokio::time::Instant) -> Poll<()> {
        let Some(conn) = self.conn.as_mut() else {
            // Not reached: a pending exchange has its connection.
            return Poll::Ready(());
        };
        let timer = conn
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() > at {
            timer.as_mut().reset(at);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            if timer.deadline() >= at {
                return Poll::Ready(());
            }
            timer.as_mut().reset(at);
        }
    }

    /// Whether a close without an answer may be retried on a fresh connection.
    fn stale(&mut self) -> Option<SendError<B>> {
        let reused = self.conn.as_ref().is_some_and(|c| c.reused());
        let body_here = self.writer.is_some() || self.ended.is_some();
        if reused
            && body_here
            && !self.answered
            && !self.touched
            && (!self.written || self.replayable)
        {
            let body = match self.writer.take() {
                Some(w) => w.body,
                None => self.ended.take()?,
            };
            return Some(SendError::Stale(body));
        }
        None
    }

    /// The writer is done (sent, or failed); a bodiless request keeps its body.
    fn retire_writer(&mut self) {
        if let Some(w) = self.writer.take()
            && !self.had_body
        {
            self.ended = Some(w.body);
        }
    }

    fn closed(&mut self) -> SendError<B> {
        if let Some(s) = self.stale() {
            return s;
        }
        match self.write_error.take() {
            Some(e) => SendError::Failed(e),
            None => SendError::Failed(UpstreamError::Closed),
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

impl<B> Future for Exchange<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<UpstreamBody<B>>, SendError<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(Err(SendError::Failed(UpstreamError::Closed)));
        };
        if let Some(w) = this.writer.as_mut() {
            let sent = w.poll_out(&mut conn.io, cx);
            this.touched |= w.touched;
            this.written |= w.written;
            match sent {
                Poll::Ready(Ok(())) => this.retire_writer(),
                Poll::Ready(Err(e)) => {
                    let stalled =
                        matches!(&e, UpstreamError::Io(io) if io.kind() == io::ErrorKind::TimedOut);
                    // A body found broken before anything went out (its bytes at
                    // hand were gathered first): the backend got nothing to answer.
                    let unsent = matches!(e, UpstreamError::RequestBody(_)) && !this.written;
                    if e.is_client() || stalled || unsent {
                        return Poll::Ready(Err(SendError::Failed(e)));
                    }
                    if let UpstreamError::Io(io) = &e
                        && is_reset(io)
                        && let Some(s) = this.stale()
                    {
                        return Poll::Ready(Err(s));
                    }
                    // The backend may have answered before it stopped reading
                    // (413 and close): look for that answer before giving up.
                    this.write_error = Some(e);
                    this.retire_writer();
                }
                Poll::Pending => {}
            }
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(Err(SendError::Failed(UpstreamError::Closed)));
            };
            if !conn.rbuf.is_empty() {
                match codec::parse_response(&mut conn.rbuf, this.head_request) {
                    Ok(Some(head)) => {
                        let ResponseHead {
                            response,
                            framing,
                            keep_alive,
                        } = head;
                        let keep_alive = keep_alive && this.write_error.is_none();
                        let body = UpstreamBody {
                            conn: this.conn.take(),
                            writer: this.writer.take().map(Box::new),
                            framing,
                            keep_alive,
                        };
                        return Poll::Ready(Ok(response.map(|()| body)));
                    }
                    Ok(None) if conn.rbuf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(UpstreamError::Malformed(
                            "response head too large",
                        )
                        .into()));
                    }
                    Ok(None) => {}
                    Err(why) => return Poll::Ready(Err(UpstreamError::Malformed(why).into())),
                }
            }
            match ready!(conn.poll_fill(cx, HEAD_READ)) {
                Ok(0) => return Poll::Ready(Err(this.closed())),
                Ok(_) => this.answered = true,
                Err(e) if is_reset(&e) => return Poll::Ready(Err(this.closed())),
                Err(e) => return Poll::Ready(Err(UpstreamError::Io(e).into())),
            }
        }
    }
}

/// A backend's response body, read as the client side asks for it. Owns the
/// connection until the body ends; [`UpstreamBody::take_reusable`] then gives it
/// back for the pool if the exchange ended cleanly.
pub struct UpstreamBody<B> {
    conn: Option<Box<Conn>>,
    /// The request body, if the backend answered before it was all sent (boxed:
    /// rare, and every response moves this struct a few times).
    writer: Option<Box<Writer<B>>>,
    framing: Framing,
    keep_alive: bool,
}

impl<B> UpstreamBody<B> {
    /// The connection, if the exchange is complete and it may carry another.
    pub fn take_reusable(&mut self) -> Option<Box<Conn>> {
        let reusable = self.keep_alive
            && self.writer.is_none()
            && matches!(self.framing, Framing::Done | Framing::Empty)
            && self.conn.as_ref().is_some_and(|c| c.rbuf.is_empty());
        if !reusable {
            return None;
        }
        let mut conn = self.conn.take()?;
        conn.served += 1;
        Some(conn)
    }

    /// The connection after a `101 Switching Protocols`, with any bytes the
    /// backend already sent on the new protocol in `rbuf`.
    pub fn take_upgraded(&mut self) -> Option<Box<Conn>> {
        self.conn.take()
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(w) = this.writer.as_mut() {
            match w.poll_out(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => this.writer = None,
                Poll::Ready(Err(e)) if e.is_client() => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Err(_)) => {
                    // The backend stopped reading; its answer may still be whole.
                    this.writer = None;
                    this.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        if this.framing == Framing::Eof {
            // Ends with the connection.
            this.keep_alive = false;
        }
        let Conn { io, rbuf, .. } = &mut **conn;
        body::poll_frame(&mut this.framing, rbuf, cx, BODY_READ, |cx, buf, want| {
            fill(io, cx, buf, want)
        })
        .map(|f| f.map(|r| r.map_err(UpstreamError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.framing.size_hint()
    }
}

#[cfg(test)]
mod tests;
