//! Timeouts and abuse guards for the connections hyper serves (HTTP/2 from clients,
//! h2c and over TLS; HTTP/1.1 over TLS), which hyper does not bound itself:
//!
//! - **idle**: an HTTP/2 connection with no open stream for `header_read_timeout`
//!   gets a GOAWAY and is closed (a client answering PINGs kept its slot forever);
//! - **unfinished head**: a HEADERS block not finished (END_HEADERS) within
//!   `header_read_timeout` closes the connection;
//! - **send timeout**: a response the client takes no bytes of for `send_timeout`
//!   (an HTTP/2 window left shut, an HTTP/1.1 socket not read) has its body, and
//!   with it the backend exchange, dropped; an HTTP/1.1 connection is closed;
//! - **WINDOW_UPDATE 0 on a stream**: a stream error (RFC 9113 §6.9), where h2
//!   makes it a connection error (hyperium/h2#892 kept that): the frame is handed
//!   to h2 as the client's RST_STREAM(PROTOCOL_ERROR) of that stream, so only the
//!   stream ends;
//! - **reset budget**: h2 counts streams reset before they are accepted
//!   (`max_pending_accept_reset_streams`); streams reset within [`RAPID`] of
//!   opening are counted here too, and more than [`RESET_BUDGET`] of them within
//!   [`RESET_WINDOW`] end the connection with GOAWAY(ENHANCE_YOUR_CALM).
//!
//! The frame-level parts read the client's bytes on their way to hyper ([`Frames`]):
//! frame headers only, payloads pass untouched (one copy through a small buffer).
//!
//! An HTTP/2 connection's streams run on the connection's own task ([`Local`],
//! [`Driven`]), not one tokio task each (issue #24).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::dataplane::DataPlane;
use crate::forward::body::ProxyBody;
use crate::telemetry::metrics::Metrics;

/// A stream reset this soon after it opened counts against the reset budget.
pub const RAPID: Duration = Duration::from_secs(1);
/// Rapid resets a connection may make within [`RESET_WINDOW`].
pub const RESET_BUDGET: u32 = 100;
pub const RESET_WINDOW: Duration = Duration::from_secs(10);

const NONE: u64 = u64::MAX;

/// What one connection's guards share: the watch loop, the byte reader, and the
/// streams' bodies.
pub struct Shared {
    start: Instant,
    /// Streams (requests) whose exchange is still open.
    open: AtomicUsize,
    /// When `open` last fell to 0 (ns since `start`).
    idle_since: AtomicU64,
    /// When a HEADERS block began that has not ended yet (ns), or NONE.
    block_since: AtomicU64,
    /// The reader ended the connection for a reset flood.
    flood: AtomicBool,
    /// Streams whose response is being sent, for the send timeout.
    streams: Mutex<Vec<Weak<Slot>>>,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            block_since: AtomicU64::new(NONE),
            flood: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn at(&self, ns: u64) -> Instant {
        self.start + Duration::from_nanos(ns)
    }

    /// A request arrived: counted open until its response body is over.
    pub fn open_stream(self: &Arc<Self>) -> Arc<Slot> {
        self.open.fetch_add(1, Relaxed);
        let slot = Arc::new(Slot {
            shared: self.clone(),
            body: Mutex::new(None),
            ready_at: AtomicU64::new(NONE),
            counted: AtomicBool::new(true),
        });
        let mut streams = self.streams.lock();
        // Ended streams are swept out when the list is full, and the list grows when
        // more than half of it is still live: with 100 streams open, sweeping at a
        // fixed 64 walked the whole list on every new stream (~650 instructions per
        // request in callgrind). The list doubles only when more than half of it is
        // live, so beyond its first 64 it holds fewer than four entries per stream
        // ever open at once.
        if streams.len() >= streams.capacity().max(64) {
            streams.retain(|w| w.strong_count() > 0);
            if streams.len() * 2 > streams.capacity() {
                let more = streams.len();
                streams.reserve(more);
            }
        }
        streams.push(Arc::downgrade(&slot));
        slot
    }

    fn close_stream(&self) {
        if self.open.fetch_sub(1, Relaxed) == 1 {
            self.idle_since.store(self.now(), Relaxed);
        }
    }
}

/// One stream's response body, which the watch loop can take away.
pub struct Slot {
    shared: Arc<Shared>,
    body: Mutex<Option<ProxyBody>>,
    /// When the body last handed over data not yet followed by another poll (ns):
    /// hyper polls again as soon as the client's window (or socket) has room.
    ready_at: AtomicU64,
    counted: AtomicBool,
}

impl Slot {
    fn uncount(&self) {
        if self.counted.swap(false, Relaxed) {
            self.shared.close_stream();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.uncount();
    }
}

/// A response body under the send timeout.
pub struct Watched(Arc<Slot>);

impl Watched {
    pub fn new(slot: Arc<Slot>, body: ProxyBody) -> Self {
        *slot.body.lock() = Some(body);
        Self(slot)
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = switchyard_http1::UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let slot = &self.0;
        let mut body = slot.body.lock();
        let Some(b) = body.as_mut() else {
            return Poll::Ready(Some(Err(switchyard_http1::UpstreamError::Malformed(
                "client took no bytes for send_timeout",
            ))));
        };
        let polled = Pin::new(b).poll_frame(cx);
        let at = match &polled {
            Poll::Ready(Some(Ok(f))) if f.is_data() => slot.shared.now(),
            _ => NONE,
        };
        slot.ready_at.store(at, Relaxed);
        if let Poll::Ready(None) = polled {
            *body = None;
            drop(body);
            slot.uncount();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .body
            .lock()
            .as_ref()
            .is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .body
            .lock()
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

/// How a watched connection ended early.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// HTTP/2 with no open stream for the header timeout.
    Idle,
    /// A HEADERS block unfinished for the header timeout.
    SlowHead,
    /// HTTP/1.1 over TLS: the client took no response bytes for the send timeout.
    Stalled,
    /// Streams reset right after opening, over the budget.
    Flood,
}

/// The limits a watched connection runs under.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header: Duration,
    pub send: Duration,
}

/// Runs `conn` (a hyper connection future) under the guards until it ends or a
/// guard trips; when `stop` fires, `shutdown` is called and the connection runs
/// to its end (the listener bounds that by its grace period). `h2`: the idle and
/// unfinished-head rules apply. A tripped guard's connection is dropped (closed)
/// by the caller once this returns.
pub async fn run<C: Future>(
    mut conn: Pin<&mut C>,
    mut shutdown: impl FnMut(Pin<&mut C>),
    shared: &Arc<Shared>,
    limits: Timeouts,
    h2: bool,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
) -> Option<Verdict> {
    let tick = limits.header.min(limits.send);
    let mut wake = Instant::now() + tick;
    let mut stopping = *stop.borrow();
    let verdict = loop {
        if stopping {
            shutdown(conn.as_mut());
            conn.await;
            return None;
        }
        tokio::select! {
            _ = conn.as_mut() => {
                if !shared.flood.load(Relaxed) {
                    return None;
                }
                break Verdict::Flood;
            }
            _ = stop.changed() => {
                stopping = true;
                continue;
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = shared.now();
        let mut next = Instant::now() + tick;
        if h2 {
            let block = shared.block_since.load(Relaxed);
            if block != NONE {
                let due = shared.at(block) + limits.header;
                if Instant::now() >= due {
                    break Verdict::SlowHead;
                }
                next = next.min(due);
            } else if shared.open.load(Relaxed) == 0 {
                let due = shared.at(shared.idle_since.load(Relaxed)) + limits.header;
                if Instant::now() >= due {
                    break Verdict::Idle;
                }
                next = next.min(due);
            }
        }
        let send_ns = limits.send.as_nanos() as u64;
        let mut stalled = false;
        let slots: Vec<Arc<Slot>> = {
            let mut streams = shared.streams.lock();
            streams.retain(|w| w.strong_count() > 0);
            streams.iter().filter_map(Weak::upgrade).collect()
        };
        for slot in slots {
            let at = slot.ready_at.load(Relaxed);
            if at == NONE {
                continue;
            }
            if now.saturating_sub(at) >= send_ns {
                // The client's window (or socket) stayed shut: the body and its
                // backend exchange go; hyper's stream ends when it next polls.
                if slot.body.lock().take().is_some() {
                    metrics.send_timeouts.fetch_add(1, Relaxed);
                    debug!("client took no response bytes for send_timeout");
                }
                slot.ready_at.store(NONE, Relaxed);
                slot.uncount();
                stalled = true;
            } else {
                next = next.min(shared.at(at) + limits.send);
            }
        }
        if stalled && !h2 {
            break Verdict::Stalled;
        }
        wake = next;
    };
    match verdict {
        Verdict::Idle | Verdict::SlowHead => {
            metrics.h2_timeouts.fetch_add(1, Relaxed);
        }
        Verdict::Flood => {
            metrics.h2_reset_floods.fetch_add(1, Relaxed);
        }
        Verdict::Stalled => {}
    }
    debug!(?verdict, "closing a client connection");
    if verdict == Verdict::Idle {
        // A GOAWAY first, then a bounded wait for the close.
        shutdown(conn.as_mut());
        let _ = tokio::time::timeout(limits.header, conn).await;
    }
    Some(verdict)
}

// === the client's frames ===

const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// Recently opened streams remembered for the reset budget.
const RECENT: usize = 32;

/// An HTTP/2 client connection's transport, reading the client's frame headers on
/// their way to hyper (see the module docs), and the frames hyper writes only as
/// far as their boundaries (so a GOAWAY of ours never lands inside one of its).
pub struct Frames<T> {
    io: T,
    shared: Arc<Shared>,
    inbuf: BytesMut,
    /// Bytes that pass without a look (the preface, a frame's payload).
    pass: usize,
    /// The frame being passed ends a HEADERS block.
    ends_block: bool,
    /// (stream id, opened at ns) of the latest streams.
    recent: VecDeque<(u32, u64)>,
    last_stream: u32,
    rapid: u32,
    window_start: u64,
    /// Outgoing: bytes left of the frame being written, and a partial header.
    out_left: usize,
    out_head: [u8; HEADER_LEN],
    out_head_len: usize,
    failed: bool,
}

impl<T> Frames<T> {
    pub fn new(io: T, shared: Arc<Shared>) -> Self {
        Self {
            io,
            shared,
            inbuf: BytesMut::new(),
            pass: PREFACE_LEN,
            ends_block: false,
            recent: VecDeque::with_capacity(RECENT),
            last_stream: 0,
            rapid: 0,
            window_start: 0,
            out_left: 0,
            out_head: [0; HEADER_LEN],
            out_head_len: 0,
            failed: false,
        }
    }

    /// Looks at the frame header at the start of `inbuf` (complete: 9 bytes, 13
    /// for the 4-byte control frames), rewriting it if need be. `Err`: the
    /// connection is to end (reset flood).
    fn inspect(&mut self) -> Result<(), ()> {
        let h = &self.inbuf[..HEADER_LEN];
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let kind = h[3];
        let flags = h[4];
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let now = self.shared.now();
        self.ends_block = false;
        match kind {
            HEADERS | CONTINUATION => {
                if kind == HEADERS {
                    if stream > self.last_stream {
                        self.last_stream = stream;
                        if self.recent.len() == RECENT {
                            self.recent.pop_front();
                        }
                        self.recent.push_back((stream, now));
                    }
                    let _ = self
                        .shared
                        .block_since
                        .compare_exchange(NONE, now, Relaxed, Relaxed);
                }
                self.ends_block = flags & END_HEADERS != 0;
            }
            WINDOW_UPDATE if len == 4 && stream != 0 => {
                let inc = u32::from_be_bytes([
                    self.inbuf[9],
                    self.inbuf[10],
                    self.inbuf[11],
                    self.inbuf[12],
                ]) & 0x7fff_ffff;
                if inc == 0 {
                    // A stream error (RFC 9113 §6.9): h2 gets it as the client's
                    // RST_STREAM(PROTOCOL_ERROR), which ends that stream alone.
                    self.inbuf[3] = RST_STREAM;
                    self.inbuf[9..13].copy_from_slice(&PROTOCOL_ERROR.to_be_bytes());
                }
            }
            RST_STREAM if stream != 0 => {
                let rapid = self.recent.iter().any(|&(id, at)| {
                    id == stream && now.saturating_sub(at) < RAPID.as_nanos() as u64
                });
                if rapid {
                    if now.saturating_sub(self.window_start) > RESET_WINDOW.as_nanos() as u64 {
                        self.window_start = now;
                        self.rapid = 0;
                    }
                    self.rapid += 1;
                    if self.rapid > RESET_BUDGET {
                        return Err(());
                    }
                }
            }
            _ => {}
        }
        self.pass = HEADER_LEN + len;
        Ok(())
    }

    fn goaway(&self) -> [u8; 17] {
        let mut f = [0u8; 17];
        f[2] = 8;
        f[3] = 0x7;
        f[9..13].copy_from_slice(&self.last_stream.to_be_bytes());
        f[13..17].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f
    }

    /// Notes the frame boundaries in bytes hyper wrote.
    fn wrote(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.out_left > 0 {
                let n = self.out_left.min(bytes.len());
                self.out_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.out_head_len).min(bytes.len());
            self.out_head[self.out_head_len..self.out_head_len + n].copy_from_slice(&bytes[..n]);
            self.out_head_len += n;
            bytes = &bytes[n..];
            if self.out_head_len == HEADER_LEN {
                let h = &self.out_head;
                self.out_left =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                self.out_head_len = 0;
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Frames<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(io::Error::other("HTTP/2 reset flood")));
        }
        loop {
            // Hand over what can pass.
            if this.pass > 0 && !this.inbuf.is_empty() {
                let n = this.pass.min(this.inbuf.len()).min(out.remaining());
                out.put_slice(&this.inbuf[..n]);
                this.inbuf.advance(n);
                this.pass -= n;
                if this.pass == 0 && this.ends_block {
                    this.ends_block = false;
                    this.shared.block_since.store(NONE, Relaxed);
                }
                return Poll::Ready(Ok(()));
            }
            if this.pass == 0 && this.inbuf.len() >= HEADER_LEN {
                let kind = this.inbuf[3];
                let need = if matches!(kind, WINDOW_UPDATE | RST_STREAM) {
                    HEADER_LEN + 4
                } else {
                    HEADER_LEN
                };
                if this.inbuf.len() >= need {
                    if this.inspect().is_err() {
                        this.failed = true;
                        this.shared.flood.store(true, Relaxed);
                        // GOAWAY(ENHANCE_YOUR_CALM), if no frame of hyper's is half
                        // written; then the connection ends.
                        if this.out_left == 0 && this.out_head_len == 0 {
                            let f = this.goaway();
                            let _ = Pin::new(&mut this.io).poll_write(cx, &f);
                            let _ = Pin::new(&mut this.io).poll_flush(cx);
                        }
                        return Poll::Ready(Err(io::Error::other("HTTP/2 reset flood")));
                    }
                    continue;
                }
            }
            // Read more.
            if this.inbuf.capacity() - this.inbuf.len() < 1024 {
                this.inbuf.reserve(16 * 1024);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.inbuf
            ))?;
            if n == 0 {
                // The client closed: what is left (a partial frame) goes as it is.
                let n = this.inbuf.len().min(out.remaining());
                out.put_slice(&this.inbuf[..n]);
                this.inbuf.advance(n);
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Frames<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.wrote(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let k = left.min(b.len());
            this.wrote(&b[..k]);
            left -= k;
        }
        Poll::Ready(Ok(n))
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

// === the connection's streams ===

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one client HTTP/2 connection: the stream futures hyper
/// starts (one per request, and the send half of an extended CONNECT) are queued
/// for the connection's own task, which [`Driven`] polls beside the connection,
/// instead of a tokio task each (spawn, schedule and the task's own polls: −1.3 %
/// instructions per h2c request in callgrind, docs/benchmarks.md §9).
#[derive(Clone)]
pub struct Local(Arc<Inner>);

struct Inner {
    new: Mutex<Vec<StreamFuture>>,
    /// The connection future's waker fired: poll it again.
    woken: AtomicBool,
    /// [`Driven`] is being polled: a wake or a queued stream is seen before the
    /// poll ends, the task needs no wake.
    polling: AtomicBool,
    /// The connection task.
    task: AtomicWaker,
}

impl Default for Local {
    fn default() -> Self {
        Self(Arc::new(Inner {
            new: Mutex::new(Vec::new()),
            woken: AtomicBool::new(true),
            polling: AtomicBool::new(false),
            task: AtomicWaker::new(),
        }))
    }
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Local {
    fn execute(&self, fut: F) {
        self.0.new.lock().push(Box::pin(fut));
        if !self.0.polling.load(SeqCst) {
            self.0.task.wake();
        }
    }
}

/// The waker the connection future is polled with: a stream's wake (its own
/// waker, from [`FuturesUnordered`]) does not poll the connection, only the
/// connection's does.
impl Wake for Inner {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, SeqCst);
        if !self.polling.load(SeqCst) {
            self.task.wake();
        }
    }
}

/// Rounds of (connection, streams) in one poll before the task yields.
const ROUNDS: usize = 4;

/// A hyper HTTP/2 connection and its streams (queued by [`Local`]), driven by one
/// task: the connection when its waker fired, then the streams that are ready. It
/// ends when the connection ends; streams still running then are dropped with it
/// — the client connection is gone, so nothing they produce could reach it, and
/// dropping them ends their backend exchanges at once, as a client's RST_STREAM
/// would. (A graceful shutdown does not get there early: h2 keeps the connection
/// open while a stream's handles are alive, and they are driven here until they
/// finish.) All the streams of a connection run on its task's thread.
pub struct Driven<'a, C> {
    conn: Pin<&'a mut C>,
    local: Local,
    conn_waker: Waker,
    running: FuturesUnordered<StreamFuture>,
}

impl<'a, C: Future> Driven<'a, C> {
    pub fn new(conn: Pin<&'a mut C>, local: Local) -> Self {
        Self {
            conn,
            conn_waker: Waker::from(local.0.clone()),
            local,
            running: FuturesUnordered::new(),
        }
    }

    /// The connection itself (for its graceful shutdown), to be polled next: what
    /// is done to it outside a poll (a GOAWAY queued) wakes nothing.
    pub fn conn(&mut self) -> Pin<&mut C> {
        self.local.0.woken.store(true, SeqCst);
        self.conn.as_mut()
    }
}

impl<C: Future> Future for Driven<'_, C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        let inner = &*this.local.0;
        inner.task.register(cx.waker());
        for _ in 0..ROUNDS {
            inner.polling.store(true, SeqCst);
            if inner.woken.swap(false, SeqCst) {
                let mut conn_cx = Context::from_waker(&this.conn_waker);
                if let Poll::Ready(out) = this.conn.as_mut().poll(&mut conn_cx) {
                    return Poll::Ready(out);
                }
            }
            this.running.extend(inner.new.lock().drain(..));
            // Until every stream is pending (or FuturesUnordered yields, having
            // woken the task, after a round of them).
            while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {}
            inner.polling.store(false, SeqCst);
            // Wakes while polling (a stream's frame for the connection to send,
            // a stream queued by another) are picked up here.
            if !inner.woken.load(SeqCst) && inner.new.lock().is_empty() {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// hyper's HTTP/2 server as Switchyard runs it for clients (h2c and TLS alike):
/// `server.http2_max_concurrent_streams` streams at once, header lists up to
/// `max_head` bytes, PING every 30 s; the streams go to `exec` (see [`Driven`]).
pub fn h2_builder(
    plane: &DataPlane,
    max_head: usize,
    exec: Local,
) -> hyper::server::conn::http2::Builder<Local> {
    let streams = plane
        .snapshot()
        .config
        .server
        .http2_max_concurrent_streams
        .as_u32();
    let mut b = hyper::server::conn::http2::Builder::new(exec);
    b.timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(streams)
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_streams_are_swept_and_the_list_stays_bounded() {
        let shared = Shared::new();
        let mut live = std::collections::VecDeque::new();
        let mut most = 0;
        for _ in 0..10_000 {
            live.push_back(shared.open_stream());
            if live.len() > 100 {
                live.pop_front();
            }
            most = most.max(shared.streams.lock().len());
        }
        // The list doubles only when more than half of it is live: fewer than four
        // entries per stream open at once (256 here).
        assert!(most <= 4 * 101, "{most} entries for 101 open streams");
        assert_eq!(shared.open.load(Relaxed), 100);
        drop(live);
        assert_eq!(shared.open.load(Relaxed), 0);
    }
}
