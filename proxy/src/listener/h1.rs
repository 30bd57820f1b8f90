//! The client side's HTTP/1.1 server: one task per connection, driven inline.
//!
//! Why not hyper's server: it keeps an 8 KiB read buffer and an 8 KiB write buffer
//! for a connection's whole life, idle or not (about 33 KiB per idle keep-alive
//! connection with everything else). Here an idle connection holds no buffer at
//! all: the task waits for readability with nothing allocated, reads the head into
//! a buffer taken for the request, and gives the buffer back when the connection
//! goes idle again (10,000 idle clients: 343 → 49 MiB; instructions per request
//! unchanged, see docs/benchmarks.md §4 and §6). h2c (prior knowledge) is still handed to hyper's HTTP/2 server.
//!
//! What it does, and what it refuses:
//! - request heads parsed with httparse into an `http::Request` (header values are
//!   slices of the head, not copies); over `max_header_bytes` or `max_headers`:
//!   431; malformed: 400; both refusals close the connection;
//! - ambiguous framing (`Content-Length` with `Transfer-Encoding`, repeated
//!   `Content-Length`), a `Transfer-Encoding` other than chunked, or one on an
//!   HTTP/1.0 request: 400 and close, before anything is forwarded (request
//!   smuggling defence: a backend might frame such a request differently);
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
//!   response in hand (which then says `Connection: close`).

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::debug;

use crate::app::App;
use crate::config::ServerConfig;
use crate::forward::body::{ClientBodyError, ProxyBody, ReqBody};
use crate::forward::h1::{self as wire, Chunk, Step};
use crate::forward::{self, Peer};
use crate::{flush, sockio};

/// Why a request head is refused as smuggling-shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ambiguity {
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// More than one `Content-Length`.
    DuplicateLength,
}

/// The connection-level limits, read once at start.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_head: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub http2: bool,
}

impl Limits {
    pub fn from_config(cfg: &ServerConfig) -> Self {
        Self {
            max_head: cfg.max_header_bytes.as_usize(),
            max_headers: cfg.max_headers.as_usize(),
            header_timeout: cfg.header_read_timeout.get(),
            http2: cfg.http2,
        }
    }
}

/// First read of a request head (most requests fit several times over).
const HEAD_READ: usize = 4 * 1024;
/// Room the request's header map keeps for what forwarding adds (`X-Forwarded-For`,
/// `-Proto`, `-Host`, a `Host`), so adding them does not grow and rehash it.
const FORWARD_HEADERS: usize = 4;
/// Largest unread request body rest read and dropped to keep a connection.
const DRAIN_MAX: u64 = 256 * 1024;
/// Largest read of a request body at once.
const BODY_READ: usize = 64 * 1024;
/// Response bytes queued before the socket must take some.
const WRITE_HIGH: usize = 64 * 1024;
/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Header lines parsed on the stack; a config allowing more uses the heap.
const STACK_HEADERS: usize = 128;
/// After refusing a request, how long and how much of the client's remaining
/// upload is read and dropped before closing, so the refusal is not lost to a
/// reset (a close with unread data sends RST).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// A client connection after `101 Switching Protocols`, for the tunnel.
pub struct Upgraded {
    /// The client's connection: plain TCP, or TLS from the HTTPS listener.
    pub io: Box<dyn ClientIo>,
    /// Bytes the client sent after its request head (already on the new protocol).
    pub early: Bytes,
}

/// A client connection the tunnel can splice (any transport).
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

/// Where the tunnel gets the client's connection once the 101 has been written.
pub type ClientUpgrade = oneshot::Receiver<Upgraded>;

/// Serves one client connection until it closes.
pub async fn serve(
    stream: TcpStream,
    app: Arc<App>,
    peer: Peer,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
) {
    let conn = Connection {
        io: Arc::new(stream),
        app,
        peer,
        limits,
        stop,
        buf: BytesMut::new(),
        first: true,
        pending: None,
        timer: None,
    };
    conn.run().await;
}

struct Connection {
    io: Arc<TcpStream>,
    app: Arc<App>,
    peer: Peer,
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
    Head(Box<Head>),
    /// The client closed, went quiet past the timeout, or we are stopping.
    Gone,
    Refused(Refusal),
    /// An HTTP/2 client (prior knowledge).
    H2,
}

/// A request head we answer ourselves, and close.
#[derive(Debug)]
enum Refusal {
    Malformed(&'static str),
    TooLarge,
    Ambiguous(Ambiguity),
    Timeout,
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

impl Connection {
    async fn run(mut self) {
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
                Next::Close { linger } => {
                    if !self.settle().await {
                        return;
                    }
                    return Box::pin(self.close(linger)).await;
                }
                Next::Upgrade(tx) => match Arc::try_unwrap(self.io) {
                    Ok(io) => {
                        let early = self.buf.freeze();
                        let _ = tx.send(Upgraded {
                            io: Box::new(io),
                            early,
                        });
                        return;
                    }
                    Err(_) => {
                        debug!("upgraded connection still shared; closed");
                        return;
                    }
                },
            }
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
        poll_fn(|cx| {
            while !rest.is_empty() {
                if ready!(self.io.poll_write_ready(cx)).is_err() {
                    return Poll::Ready(false);
                }
                match sockio::try_write_bufs(&self.io, &rest) {
                    Ok(0) => return Poll::Ready(false),
                    Ok(n) => wire::consume(&mut rest, n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(false),
                }
            }
            Poll::Ready(true)
        })
        .await
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
            match sockio::try_read(&self.io, &mut self.buf) {
                Ok(0) => return Read::Gone,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let idle = self.buf.is_empty();
                    if idle {
                        // Nothing is kept while a connection waits: the buffer goes
                        // to the thread's spares, for whichever connection reads next.
                        spare::give(std::mem::take(&mut self.buf));
                        if self.stopping() {
                            return Read::Gone;
                        }
                    }
                    let at = *deadline
                        .get_or_insert_with(|| Instant::now() + self.limits.header_timeout);
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
                        r = self.io.readable() => if r.is_err() { return Read::Gone },
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
                Err(_) => return Read::Gone,
            }
        }
    }

    /// `Some` when the buffer holds a complete head or one to refuse.
    fn parse(&mut self) -> Option<Read> {
        match parse_request(&mut self.buf, &self.limits) {
            Ok(Some(h)) => Some(Read::Head(Box::new(h))),
            Ok(None) if self.buf.len() > self.limits.max_head => {
                Some(Read::Refused(Refusal::TooLarge))
            }
            Ok(None) => None,
            Err(r) => Some(Read::Refused(r)),
        }
    }

    /// Forwards one request and writes its response.
    async fn exchange(&mut self, head: Head) -> Next {
        let Head {
            parts,
            framing,
            keep_alive,
            expect_continue,
            upgrade,
            trailers,
        } = head;
        let state = match framing {
            ReqFraming::Length(0) => None,
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
        let body = match &state {
            None => ReqBody::Empty,
            Some(s) => ReqBody::Client(ClientBody {
                io: self.io.clone(),
                state: s.clone(),
            }),
        };
        let (upgrade_tx, upgrade_rx) = if upgrade {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let head_request = parts.method == Method::HEAD;
        let version = parts.version;
        let req = Request::from_parts(parts, body);
        let resp = forward::handle(self.app.clone(), req, self.peer.clone(), upgrade_rx).await;

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
        // A whole response on a connection that goes on can wait for the end of
        // this turn; the connection then waits for the next request.
        let defer = keep && !upgrading;
        let written = write_response(&self.io, out, &mut body, defer).await;
        drop(body);
        match written {
            Ok(p) => self.pending = p,
            Err(_) => return Next::Close { linger: false },
        }
        // Whatever the body left unread decides whether the connection can go on.
        let mut body_complete = true;
        let mut unread = None;
        if let Some(s) = state {
            let mut st = s.lock();
            match (st.framing, st.cont) {
                (ReqFraming::Done, _) => self.buf = std::mem::take(&mut st.buf),
                // Answered without the body (a 429, a 503): a small rest the client
                // is sending anyway is read and dropped rather than costing it the
                // connection. Not when it still waits for a 100 Continue.
                (ReqFraming::Length(rest), c) if rest <= DRAIN_MAX && c != Continue::Refused => {
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
        let app = &self.app;
        let resp = match r {
            Refusal::Ambiguous(a) => forward::refuse_ambiguous(app, a, self.peer.addr),
            Refusal::Malformed(why) => {
                debug!(client = %self.peer.addr, why, "malformed request head");
                forward::refuse_malformed(app, StatusCode::BAD_REQUEST, why)
            }
            Refusal::TooLarge => forward::refuse_malformed(
                app,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header fields too large\n",
            ),
            Refusal::Timeout => forward::refuse_malformed(
                app,
                StatusCode::REQUEST_TIMEOUT,
                "request head not received in time\n",
            ),
        };
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
        let written = write_response(&self.io, out, &mut body, false).await;
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

// === request heads ===

/// How a request body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqFraming {
    Length(u64),
    Chunked(Chunk),
    Done,
}

/// A parsed request head.
struct Head {
    parts: http::request::Parts,
    framing: ReqFraming,
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
    /// The client accepts trailers (`TE: trailers`).
    trailers: bool,
}

/// Tries to parse a request head at the start of `buf`, consuming it when
/// complete. `Ok(None)`: incomplete.
fn parse_request(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Head>, Refusal> {
    let mut spans: SmallVec<[(u32, u32, u32, u32); 24]> = SmallVec::new();
    let (len, method, target, minor) = {
        let mut stack: [MaybeUninit<httparse::Header<'_>>; STACK_HEADERS] =
            [const { MaybeUninit::uninit() }; STACK_HEADERS];
        let mut heap: Vec<MaybeUninit<httparse::Header<'_>>> = Vec::new();
        let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers <= STACK_HEADERS
        {
            &mut stack[..limits.max_headers]
        } else {
            heap.resize_with(limits.max_headers, MaybeUninit::uninit);
            &mut heap
        };
        let mut req = httparse::Request::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, buf, slots)
            .map_err(|e| match e {
                httparse::Error::TooManyHeaders => Refusal::TooLarge,
                httparse::Error::Version => Refusal::Malformed("unsupported HTTP version\n"),
                httparse::Error::HeaderName | httparse::Error::HeaderValue => {
                    Refusal::Malformed("malformed header\n")
                }
                _ => Refusal::Malformed("malformed request\n"),
            })?;
        let httparse::Status::Complete(len) = status else {
            return Ok(None);
        };
        if len > limits.max_head {
            return Err(Refusal::TooLarge);
        }
        let base = buf.as_ptr() as usize;
        for h in req.headers.iter() {
            spans.push((
                (h.name.as_ptr() as usize - base) as u32,
                h.name.len() as u32,
                (h.value.as_ptr() as usize - base) as u32,
                h.value.len() as u32,
            ));
        }
        let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
            .map_err(|_| Refusal::Malformed("bad method\n"))?;
        let path = req.path.unwrap_or("");
        let target = (path.as_ptr() as usize - base, path.len());
        (len, method, target, req.version.unwrap_or(1))
    };
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| Refusal::Malformed("bad request target\n"))?;

    let slice = |s: &(u32, u32, u32, u32)| &head[s.0 as usize..(s.0 + s.1) as usize];
    let value = |s: &(u32, u32, u32, u32)| &head[s.2 as usize..(s.2 + s.3) as usize];
    let mut headers = HeaderMap::with_capacity(spans.len() + FORWARD_HEADERS);
    let (mut close, mut keep_alive_token, mut upgrade_token) = (false, false, false);
    let (mut has_upgrade, mut expect_continue, mut trailers) = (false, false, false);
    let mut lengths = 0u32;
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    for s in &spans {
        let n = slice(s);
        let v = value(s);
        let name =
            HeaderName::from_bytes(n).map_err(|_| Refusal::Malformed("malformed header\n"))?;
        if name == header::CONTENT_LENGTH {
            lengths += 1;
            length = Some(parse_length(v).ok_or(Refusal::Malformed("bad content-length\n"))?);
        } else if name == header::TRANSFER_ENCODING {
            // Several lines form one list: what counts is whether the last coding
            // of the last line is chunked.
            let last = v.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for t in v.split(|&b| b == b',') {
                let t = t.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive_token |= t.eq_ignore_ascii_case(b"keep-alive");
                upgrade_token |= t.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name == header::UPGRADE {
            has_upgrade = true;
        } else if name == header::EXPECT {
            expect_continue |= v.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::TE {
            trailers |= v
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        }
        let hv = HeaderValue::from_maybe_shared(head.slice(s.2 as usize..(s.2 + s.3) as usize))
            .map_err(|_| Refusal::Malformed("malformed header\n"))?;
        headers.append(name, hv);
    }
    let framing = match (chunked, lengths) {
        (Some(_), n) if n > 0 => return Err(Refusal::Ambiguous(Ambiguity::LengthAndChunked)),
        (_, n) if n > 1 => return Err(Refusal::Ambiguous(Ambiguity::DuplicateLength)),
        (Some(_), _) if minor == 0 => {
            return Err(Refusal::Malformed(
                "transfer-encoding on an HTTP/1.0 request\n",
            ));
        }
        (Some(false), _) => return Err(Refusal::Malformed("unsupported transfer-encoding\n")),
        (Some(true), _) => ReqFraming::Chunked(Chunk::Size),
        (None, _) => ReqFraming::Length(length.unwrap_or(0)),
    };
    let keep_alive = !close && (minor == 1 || keep_alive_token);
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    let (parts, ()) = req.into_parts();
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
        expect_continue: expect_continue && minor == 1 && framing != ReqFraming::Length(0),
        upgrade: has_upgrade && upgrade_token,
        trailers,
    }))
}

/// A `Content-Length` value: digits only, no sign, no list.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

// === request bodies ===

/// Where a body stands, shared by the body (which reads it) and the connection
/// (which gets the bytes after it back, for the next request).
struct BodyState {
    buf: BytesMut,
    framing: ReqFraming,
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

impl ClientBody {
    fn map_chunk_error(e: wire::UpstreamError) -> ClientBodyError {
        match e {
            wire::UpstreamError::Malformed(m) => ClientBodyError::Malformed(m),
            _ => ClientBodyError::Malformed("bad chunked body"),
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
        loop {
            match st.framing {
                ReqFraming::Done | ReqFraming::Length(0) => {
                    st.framing = ReqFraming::Done;
                    return Poll::Ready(None);
                }
                ReqFraming::Length(rest) => {
                    if st.buf.is_empty() {
                        let want = usize::try_from(rest).unwrap_or(BODY_READ).min(BODY_READ);
                        match ready!(poll_fill(&this.io, cx, &mut st.buf, want)) {
                            Ok(0) => return Poll::Ready(Some(Err(ClientBodyError::Closed))),
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(Some(Err(ClientBodyError::Io(e)))),
                        }
                    }
                    let n = (st.buf.len() as u64).min(rest);
                    st.framing = if n == rest {
                        ReqFraming::Done
                    } else {
                        ReqFraming::Length(rest - n)
                    };
                    let data = st.buf.split_to(n as usize).freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                ReqFraming::Chunked(c) => match wire::chunk_step(&mut st.buf, c) {
                    Ok(Step::Next(s)) => st.framing = ReqFraming::Chunked(s),
                    Ok(Step::Data(n, s)) => {
                        st.framing = ReqFraming::Chunked(s);
                        let data = st.buf.split_to(n).freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::Trailers(map)) => {
                        st.framing = ReqFraming::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(map))));
                    }
                    Ok(Step::End) => {
                        st.framing = ReqFraming::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {
                        let want = c.read_hint(BODY_READ);
                        match ready!(poll_fill(&this.io, cx, &mut st.buf, want)) {
                            Ok(0) => return Poll::Ready(Some(Err(ClientBodyError::Closed))),
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(Some(Err(ClientBodyError::Io(e)))),
                        }
                    }
                    Err(e) => return Poll::Ready(Some(Err(Self::map_chunk_error(e)))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.state.lock().framing,
            ReqFraming::Done | ReqFraming::Length(0)
        )
    }

    fn size_hint(&self) -> SizeHint {
        match self.state.lock().framing {
            ReqFraming::Done => SizeHint::with_exact(0),
            ReqFraming::Length(n) => SizeHint::with_exact(n),
            ReqFraming::Chunked(_) => SizeHint::default(),
        }
    }
}

// === responses ===

/// How a response body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutFraming {
    /// Nothing after the head (HEAD, 1xx, 204, 304, 101).
    None,
    Length(u64),
    Chunked {
        trailers: bool,
    },
    /// Until we close (HTTP/1.0 clients, length unknown).
    Close,
}

struct Encoded {
    /// With room for a small body behind it, so both go out in one `send`.
    head: BytesMut,
    framing: OutFraming,
}

/// Whether a `Connection` value lists `close`.
fn says_close(v: &HeaderValue) -> bool {
    v.as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// How a response body is sent: its declared length, else the length its body
/// knows, else chunked to an HTTP/1.1 client and close-delimited to HTTP/1.0.
fn choose_framing(
    declared: Option<u64>,
    exact: Option<u64>,
    no_body: bool,
    version: Version,
    trailers: bool,
) -> OutFraming {
    if no_body {
        OutFraming::None
    } else if let Some(n) = declared.or(exact) {
        OutFraming::Length(n)
    } else if version == Version::HTTP_11 {
        OutFraming::Chunked { trailers }
    } else {
        OutFraming::Close
    }
}

/// Writes the status line and headers, choosing the body's framing. `keep` comes
/// in as what the request allows and goes out as what the response allows.
fn encode_response(
    parts: &http::response::Parts,
    body: &ProxyBody,
    head_request: bool,
    version: Version,
    upgrading: bool,
    trailers: bool,
    keep: &mut bool,
) -> Encoded {
    let status = parts.status;
    // One pass over the headers finds what the framing needs (no hashed lookups).
    let mut size = 64;
    let mut length: Option<&HeaderValue> = None;
    let mut close = false;
    let mut dated = false;
    for (n, v) in &parts.headers {
        size += n.as_str().len() + v.len() + 4;
        if n == header::CONTENT_LENGTH {
            length.get_or_insert(v);
        } else if n == header::CONNECTION {
            close |= says_close(v);
        } else if n == header::DATE {
            dated = true;
        }
    }
    let declared = length.and_then(|v| parse_length(v.as_bytes()));
    let small_body = declared
        .or(body.size_hint().exact())
        .filter(|&n| n <= COPY_MAX as u64)
        .map_or(0, |n| n as usize);
    let mut dst = BytesMut::with_capacity(size + small_body);
    dst.put_slice(b"HTTP/1.1 ");
    dst.put_slice(status.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    dst.put_slice(b"\r\n");
    if close {
        *keep = false;
    }
    let no_body = head_request
        || upgrading
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = choose_framing(
        declared,
        body.size_hint().exact(),
        no_body,
        version,
        trailers,
    );
    match framing {
        OutFraming::Length(n) if declared.is_none() => {
            dst.put_slice(b"content-length: ");
            wire::put_dec(&mut dst, n);
            dst.put_slice(b"\r\n");
        }
        OutFraming::Chunked { .. } => dst.put_slice(b"transfer-encoding: chunked\r\n"),
        OutFraming::Close => *keep = false,
        _ => {}
    }
    if !dated {
        // RFC 9110 §6.6.1: a response forwarded without a date gets one (and ours
        // are the origin's).
        put_date(&mut dst);
    }
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH
                && (declared.is_none()
                    || (!head_request && no_body && status != StatusCode::NOT_MODIFIED)))
        {
            continue;
        }
        wire::put_header(&mut dst, name.as_str().as_bytes(), value.as_bytes());
    }
    if !upgrading {
        if !*keep {
            if !close {
                dst.put_slice(b"connection: close\r\n");
            }
        } else if version == Version::HTTP_10 {
            dst.put_slice(b"connection: keep-alive\r\n");
        }
    }
    dst.put_slice(b"\r\n");
    Encoded { head: dst, framing }
}

/// Writes a `date` header line, formatted at most once a second per thread.
/// The second comes from the kernel's coarse wall clock (updated every tick, read
/// without a TSC read): a `Date` has one-second precision anyway.
fn put_date(dst: &mut BytesMut) {
    use std::cell::RefCell;
    use std::time::{Duration, UNIX_EPOCH};
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let secs = coarse_unix_secs();
    CACHE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        }
        wire::put_header(dst, b"date", text.as_bytes());
    });
}

/// Read buffers of waiting connections, kept per thread for the next connection that
/// reads: a request then costs no 4 KiB allocation, and an idle connection still
/// holds no buffer.
mod spare {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::HEAD_READ;

    /// Most buffers kept per thread (256 KiB).
    const MAX: usize = 64;

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

/// Seconds since the Unix epoch from `CLOCK_REALTIME_COARSE` (at most one tick,
/// a few milliseconds, behind the precise clock).
fn coarse_unix_secs() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    u64::try_from(t.tv_sec).unwrap_or(0)
}

/// Body frames up to this size are copied behind what is queued rather than
/// sent from their own buffer: one `send` of a contiguous buffer is cheaper than
/// a `writev` of several, and most API responses are a head and a small body.
const COPY_MAX: usize = 4 * 1024;
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
        wire::put_hex(&mut self.tail, n as u64);
        self.tail.put_slice(b"\r\n");
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
        wire::consume(&mut self.parts, n);
    }
}

const CRLF: Bytes = Bytes::from_static(b"\r\n");
const LAST_CHUNK: Bytes = Bytes::from_static(b"0\r\n\r\n");

/// Why a response could not be written whole.
#[derive(Debug)]
enum WriteError {
    Io,
    /// The backend's body failed or did not match its length; the client's copy is
    /// cut short (only closing the connection can tell it).
    Body,
}

/// Writes a response: the head, then the body as it comes, several frames per
/// write when they are ready together.
async fn write_response(
    io: &Arc<TcpStream>,
    out: Encoded,
    body: &mut ProxyBody,
    defer: bool,
) -> Result<Option<flush::Pending>, WriteError> {
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
                            let mut last = BytesMut::with_capacity(64);
                            last.put_slice(b"0\r\n");
                            for (name, value) in &t {
                                wire::put_header(
                                    &mut last,
                                    name.as_str().as_bytes(),
                                    value.as_bytes(),
                                );
                            }
                            last.put_slice(b"\r\n");
                            queue.push(last.freeze());
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
                    if let Some(p) = flush::defer(io, &mut bufs, cx.waker()) {
                        return Poll::Ready(Ok(Some(p)));
                    }
                    queue.parts.extend(bufs);
                }
            }
            if ready!(io.poll_write_ready(cx)).is_err() {
                return Poll::Ready(Err(WriteError::Io));
            }
            queue.seal();
            match sockio::try_write_bufs(io, &queue.parts) {
                Ok(0) => return Poll::Ready(Err(WriteError::Io)),
                Ok(n) => queue.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(Err(WriteError::Io)),
            }
        }
    })
    .await
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

impl Connection {
    /// Hands a connection that opened with the HTTP/2 preface to hyper's server.
    async fn serve_h2(self) {
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

        let conn = self;
        let Ok(io) = Arc::try_unwrap(conn.io) else {
            return;
        };
        let prefix = conn.buf.freeze();
        let app = conn.app.clone();
        let peer = conn.peer.clone();
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let app = app.clone();
            let peer = peer.clone();
            async move {
                let req = req.map(ReqBody::from_incoming);
                Ok::<_, std::convert::Infallible>(forward::handle(app, req, peer, None).await)
            }
        });
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from(conn.limits.max_head).unwrap_or(u32::MAX))
            .keep_alive_interval(Duration::from_secs(30));
        let h2 = b.serve_connection(TokioIo::new(Rewind { prefix, io }), svc);
        let mut h2 = std::pin::pin!(h2);
        let mut stop = conn.stop.clone();
        if !*stop.borrow() {
            tokio::select! {
                _ = h2.as_mut() => return,
                _ = stop.changed() => {}
            }
        }
        h2.as_mut().graceful_shutdown();
        let _ = h2.await;
    }
}

/// A stream that first yields bytes already read from it.
struct Rewind {
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
