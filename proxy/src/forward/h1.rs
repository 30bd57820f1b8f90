//! The upstream hop's HTTP/1.1 client, driven inline by the request's own task.
//!
//! hyper's client runs each connection in a task of its own and talks to it over
//! channels: per request a channel send, a oneshot, a body channel and two or three
//! extra task wake-ups (profiled at about a third of our user-space instructions per
//! request). Here an [`Exchange`] writes the request head straight to the socket,
//! parses the response head with httparse into the `HeaderMap` the client side
//! needs (hop-by-hop headers dropped on the way), and [`UpstreamBody`] reads the body
//! only as fast as the client side takes it. The request body is pumped from the
//! same polls, so a backend may answer while it is still reading (full duplex).
//!
//! What a reverse proxy needs from the hop, and no more: origin-form requests;
//! `Content-Length` and chunked framing both ways (trailers included);
//! close-delimited responses; 1xx answers skipped; `101 Switching Protocols` handed
//! over for tunnelling; keep-alive with reuse only after a clean, complete exchange.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::body::ReqBody;
use super::headers::Forwarded;
use crate::flush;

/// Longest response head accepted (status line and header lines), and longest
/// chunk-size line or trailer section.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most response header lines accepted.
pub const MAX_HEADERS: usize = 128;
/// Read size while waiting for a response head.
const HEAD_READ: usize = 8 * 1024;
/// Read size for response bodies (one frame to the client at most this big).
const BODY_READ: usize = 32 * 1024;
const CRLF: Bytes = Bytes::from_static(b"\r\n");
const LAST_CHUNK: Bytes = Bytes::from_static(b"0\r\n\r\n");

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
    Client(#[source] super::body::ClientBodyError),
}

impl UpstreamError {
    /// The client's side failed (its body broke off), not the backend.
    pub fn is_client(&self) -> bool {
        matches!(self, UpstreamError::Client(_))
    }
}

/// Why an [`Exchange`] produced no response.
pub enum SendError {
    /// A reused connection turned out closed before the backend answered anything,
    /// at a point where sending again is safe (see [`Exchange::start`]). The body is
    /// handed back untouched. Not the backend's fault: it had closed an idle
    /// connection, as it may.
    Stale(ReqBody),
    Failed(UpstreamError),
}

impl From<UpstreamError> for SendError {
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

/// One keep-alive connection to a backend with its buffers (kept across exchanges,
/// so a warm connection allocates nothing for a request head).
pub struct Conn {
    pub io: Io,
    /// Bytes read from the backend and not consumed yet.
    pub rbuf: BytesMut,
    wbuf: BytesMut,
    /// Exchanges completed on this connection (0: fresh).
    served: u32,
}

impl Conn {
    pub fn new(io: Io) -> Box<Self> {
        Box::new(Self {
            io,
            rbuf: BytesMut::with_capacity(HEAD_READ),
            wbuf: BytesMut::with_capacity(1024),
            served: 0,
        })
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
        self.rbuf.reserve(want);
        match &mut self.io {
            Io::Plain(s) => crate::sockio::poll_read(s, cx, &mut self.rbuf),
            Io::Tls(_) => tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf),
        }
    }
}

/// Drops the first `n` bytes of a write queue (what the socket accepted).
pub(crate) fn consume<A: smallvec::Array<Item = Bytes>>(queue: &mut SmallVec<A>, mut n: usize) {
    while n > 0 {
        let Some(first) = queue.first_mut() else {
            return;
        };
        if n >= first.len() {
            n -= first.len();
            queue.remove(0);
        } else {
            let _ = first.split_to(n);
            n = 0;
        }
    }
}

/// How a request body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    Length(u64),
    Chunked,
}

/// Sends the request head and body.
struct Writer {
    body: ReqBody,
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
}

impl Writer {
    /// The flusher's part of sending: `Some` while the request waits for it, or once
    /// it sent all of it or failed; `None` when the writer writes (the rest) itself.
    /// A whole request (head and any body already queued) on a plain socket is
    /// offered to the flusher once.
    fn poll_deferred(
        &mut self,
        io: &Io,
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
        let Io::Plain(s) = io else {
            return None;
        };
        self.offered = true;
        let p = flush::defer(s, &mut self.queue, cx.waker())?;
        self.deferred = Some(p);
        Some(Poll::Pending)
    }

    fn consume(&mut self, n: usize) {
        self.written = true;
        consume(&mut self.queue, n);
    }

    /// Sends the request, through the flusher when it can.
    fn poll_out(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        match self.poll_deferred(io, cx) {
            Some(p) => p,
            None => self.poll_send(io, cx),
        }
    }

    /// Writes what is queued and pulls the client's body until the request is
    /// complete (Ready(Ok)) or something must be waited for.
    fn poll_send(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        loop {
            while !self.queue.is_empty() {
                let n = if self.queue.len() == 1 {
                    ready!(Pin::new(&mut *io).poll_write(cx, &self.queue[0]))?
                } else {
                    let slices: SmallVec<[IoSlice<'_>; 4]> =
                        self.queue.iter().map(|b| IoSlice::new(b)).collect();
                    ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?
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
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    match self.framing {
                        Out::Chunked => self.queue.push(LAST_CHUNK),
                        Out::Length(0) => {}
                        Out::Length(_) => {
                            return Poll::Ready(Err(UpstreamError::RequestBody(
                                "shorter than its content-length",
                            )));
                        }
                    }
                    self.body_done = true;
                }
                Some(Err(e)) => return Poll::Ready(Err(UpstreamError::Client(e))),
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
                put_hex(&mut line, data.len() as u64);
                line.put_slice(b"\r\n");
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
        let mut t = BytesMut::with_capacity(64);
        t.put_slice(b"0\r\n");
        for (name, value) in trailers {
            put_header(&mut t, name.as_str().as_bytes(), value.as_bytes());
        }
        t.put_slice(b"\r\n");
        self.queue.push(t.freeze());
        self.body_done = true;
        Ok(())
    }
}

pub(crate) fn put_hex(dst: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&digits[i..]);
}

pub(crate) fn put_header(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.put_slice(name);
    dst.put_slice(b": ");
    dst.put_slice(value);
    dst.put_slice(b"\r\n");
}

/// Methods whose requests normally carry a body: sent with `content-length: 0`
/// when they have none, as some servers insist on a length (411).
fn expects_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

/// Parses every `content-length` value in `values`; all must agree.
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, ()> {
    let mut found: Option<u64> = None;
    for v in values {
        for part in v.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = part
                .iter()
                .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
            match found {
                Some(prev) if prev != n => return Err(()),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Writes the request head for the backend. `host` replaces the client's `Host`;
/// headers in `extra` (trace context) replace the client's of the same name.
fn encode_head(
    dst: &mut BytesMut,
    parts: &Parts,
    host: Option<&HeaderValue>,
    extra: &HeaderMap,
    forwarded: Option<&Forwarded<'_>>,
    body: &ReqBody,
) -> Result<Out, UpstreamError> {
    dst.put_slice(parts.method.as_str().as_bytes());
    dst.put_u8(b' ');
    match parts.uri.path_and_query().map(|pq| pq.as_str()) {
        Some(pq) if !pq.is_empty() => dst.put_slice(pq.as_bytes()),
        _ => dst.put_u8(b'/'),
    }
    dst.put_slice(b" HTTP/1.1\r\n");
    let mut has_length = false;
    for (name, value) in &parts.headers {
        if (host.is_some() && name == header::HOST)
            || name == header::TRANSFER_ENCODING
            || (!extra.is_empty() && extra.contains_key(name))
            || forwarded.is_some_and(|f| f.replaces(name))
        {
            continue;
        }
        has_length |= name == header::CONTENT_LENGTH;
        put_header(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(h) = host {
        put_header(dst, b"host", h.as_bytes());
    }
    if let Some(f) = forwarded {
        f.write(&parts.headers, |name, value| {
            dst.put_slice(name);
            dst.put_slice(b": ");
            for v in value {
                dst.put_slice(v);
            }
            dst.put_slice(b"\r\n");
        });
    }
    for (name, value) in extra {
        put_header(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    let declared = if has_length {
        content_length(
            parts
                .headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(HeaderValue::as_bytes),
        )
        .map_err(|()| UpstreamError::RequestBody("bad content-length"))?
    } else {
        None
    };
    let framing = match (body, declared) {
        (_, Some(n)) => Out::Length(n),
        (ReqBody::Empty, None) => {
            if expects_body(&parts.method) {
                dst.put_slice(b"content-length: 0\r\n");
            }
            Out::Length(0)
        }
        (b, None) => match b.size_hint().exact() {
            Some(n) => {
                dst.put_slice(b"content-length: ");
                put_dec(dst, n);
                dst.put_slice(b"\r\n");
                Out::Length(n)
            }
            None => {
                dst.put_slice(b"transfer-encoding: chunked\r\n");
                Out::Chunked
            }
        },
    };
    dst.put_slice(b"\r\n");
    Ok(framing)
}

pub(crate) fn put_dec(dst: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&digits[i..]);
}

/// How a response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum In {
    /// No body (HEAD, 1xx, 204, 304, 101).
    Empty,
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection.
    Eof,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Chunk {
    /// How much to read next in this state, at most `max`: the rest of a chunk's
    /// data, or a little for a size line or trailers.
    pub(crate) fn read_hint(self, max: usize) -> usize {
        match self {
            Chunk::Data(rest) => usize::try_from(rest).unwrap_or(max).clamp(64, max),
            _ => 1024,
        }
    }
}

/// A parsed response head.
struct Head {
    response: Response<()>,
    framing: In,
    keep_alive: bool,
}

/// Headers never passed on from the backend (RFC 9110 §7.6.1), besides those its
/// `Connection` header names. `Upgrade` stays on a 101.
fn hop_by_hop(name: &[u8], upgrade: bool) -> bool {
    const NAMES: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
        || (!upgrade && name.eq_ignore_ascii_case(b"upgrade"))
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Tries to parse a response head at the start of `buf`. `Ok(None)`: incomplete.
/// 1xx answers other than 101 are consumed and skipped.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, UpstreamError> {
    loop {
        // Offsets of each header's name and value within the head.
        let mut spans: SmallVec<[(u32, u32, u32, u32); 24]> = SmallVec::new();
        let (len, code, minor) = {
            let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
                [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let status = httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
                .map_err(|e| match e {
                    httparse::Error::TooManyHeaders => UpstreamError::Malformed("too many headers"),
                    _ => UpstreamError::Malformed("bad response head"),
                })?;
            let httparse::Status::Complete(len) = status else {
                return Ok(None);
            };
            if len > MAX_HEAD {
                return Err(UpstreamError::Malformed("response head too large"));
            }
            let base = buf.as_ptr() as usize;
            for h in resp.headers.iter() {
                let n = h.name.as_ptr() as usize - base;
                let v = h.value.as_ptr() as usize - base;
                spans.push((
                    n as u32,
                    h.name.len() as u32,
                    v as u32,
                    h.value.len() as u32,
                ));
            }
            (len, resp.code.unwrap_or(0), resp.version.unwrap_or(1))
        };
        let head = buf.split_to(len).freeze();
        let status =
            StatusCode::from_u16(code).map_err(|_| UpstreamError::Malformed("bad status"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: nothing to pass on; the real answer follows.
            continue;
        }
        let name = |s: &(u32, u32, u32, u32)| &head[s.0 as usize..(s.0 + s.1) as usize];
        let value = |s: &(u32, u32, u32, u32)| &head[s.2 as usize..(s.2 + s.3) as usize];

        let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
        let (mut close_asked, mut keep_alive_asked) = (false, false);
        let mut connection: SmallVec<[&[u8]; 2]> = SmallVec::new();
        let mut chunked = None;
        let mut lengths: SmallVec<[&[u8]; 1]> = SmallVec::new();
        for s in &spans {
            let n = name(s);
            if n.eq_ignore_ascii_case(b"connection") {
                let v = value(s);
                close_asked |= has_token(v, b"close");
                keep_alive_asked |= has_token(v, b"keep-alive");
                connection.push(v);
            } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                // Several lines form one list (RFC 9110 §5.3): what counts is
                // whether the last coding of the last line is chunked.
                let v = value(s);
                let last = v.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            } else if n.eq_ignore_ascii_case(b"content-length") {
                lengths.push(value(s));
            }
        }
        // `close` anywhere wins; HTTP/1.0 closes unless it asked for keep-alive.
        let mut close = close_asked || (minor == 0 && !keep_alive_asked);
        let listed = |n: &[u8]| {
            connection.iter().any(|v| {
                v.split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(n))
            })
        };

        let no_body = head_request
            || upgrade
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if no_body {
            In::Empty
        } else if let Some(chunked) = chunked {
            // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); such a
            // message is not trusted with the connection afterwards.
            close |= !lengths.is_empty() || !chunked;
            if chunked {
                In::Chunked(Chunk::Size)
            } else {
                In::Eof
            }
        } else {
            match content_length(lengths.iter().copied()) {
                Ok(Some(0)) => In::Empty,
                Ok(Some(n)) => In::Length(n),
                Ok(None) => In::Eof,
                Err(()) => return Err(UpstreamError::Malformed("bad content-length")),
            }
        };
        if framing == In::Eof {
            close = true;
        }

        let mut headers = HeaderMap::with_capacity(spans.len());
        for s in &spans {
            let n = name(s);
            if hop_by_hop(n, upgrade)
                || (chunked.is_some() && n.eq_ignore_ascii_case(b"content-length"))
                || (!connection.is_empty()
                    && listed(n)
                    && !(upgrade && n.eq_ignore_ascii_case(b"upgrade")))
            {
                continue;
            }
            let hn = HeaderName::from_bytes(n)
                .map_err(|_| UpstreamError::Malformed("bad header name"))?;
            let hv = HeaderValue::from_maybe_shared(head.slice(s.2 as usize..(s.2 + s.3) as usize))
                .map_err(|_| UpstreamError::Malformed("bad header value"))?;
            headers.append(hn, hv);
        }
        if upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            framing,
            keep_alive: !close && !upgrade,
        }));
    }
}

/// One request on a connection, until the response head arrives.
pub struct Exchange {
    conn: Option<Box<Conn>>,
    writer: Option<Writer>,
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
    /// Writing failed; kept to report if no response can be read either.
    write_error: Option<UpstreamError>,
}

impl Exchange {
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
        body: ReqBody,
        replayable: bool,
    ) -> Result<Self, UpstreamError> {
        Self::start_forwarded(conn, parts, host, extra, None, body, replayable)
    }

    /// [`Exchange::start`] for a client's request: `forwarded` says which
    /// `X-Forwarded-*` lines it gets on the way (see [`Forwarded`]).
    pub fn start_forwarded(
        mut conn: Box<Conn>,
        parts: &Parts,
        host: Option<&HeaderValue>,
        extra: &HeaderMap,
        forwarded: Option<&Forwarded<'_>>,
        body: ReqBody,
        replayable: bool,
    ) -> Result<Self, UpstreamError> {
        let framing = encode_head(&mut conn.wbuf, parts, host, extra, forwarded, &body)?;
        let head = conn.wbuf.split().freeze();
        let mut queue = SmallVec::new();
        queue.push(head);
        let had_body = !matches!(body, ReqBody::Empty);
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
            }),
            head_request: parts.method == Method::HEAD,
            replayable,
            answered: false,
            touched: false,
            written: false,
            had_body,
            write_error: None,
        })
    }

    /// Whether a close without an answer may be retried on a fresh connection.
    fn stale(&mut self) -> Option<SendError> {
        let reused = self.conn.as_ref().is_some_and(|c| c.reused());
        let body_here = self.writer.is_some() || !self.had_body;
        if reused
            && body_here
            && !self.answered
            && !self.touched
            && (!self.written || self.replayable)
        {
            let body = self.writer.take().map_or(ReqBody::Empty, |w| w.body);
            return Some(SendError::Stale(body));
        }
        None
    }

    fn closed(&mut self) -> SendError {
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

impl Future for Exchange {
    type Output = Result<Response<UpstreamBody>, SendError>;

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
                Poll::Ready(Ok(())) => this.writer = None,
                Poll::Ready(Err(e)) => {
                    if e.is_client() {
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
                    this.writer = None;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(Err(SendError::Failed(UpstreamError::Closed)));
            };
            if !conn.rbuf.is_empty() {
                match parse_head(&mut conn.rbuf, this.head_request) {
                    Ok(Some(head)) => {
                        let keep_alive = head.keep_alive && this.write_error.is_none();
                        let body = UpstreamBody {
                            conn: this.conn.take(),
                            writer: this.writer.take().map(Box::new),
                            framing: head.framing,
                            keep_alive,
                        };
                        return Poll::Ready(Ok(head.response.map(|()| body)));
                    }
                    Ok(None) if conn.rbuf.len() >= MAX_HEAD => {
                        return Poll::Ready(Err(UpstreamError::Malformed(
                            "response head too large",
                        )
                        .into()));
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(e.into())),
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
pub struct UpstreamBody {
    conn: Option<Box<Conn>>,
    /// The request body, if the backend answered before it was all sent (boxed:
    /// rare, and every response moves this struct a few times).
    writer: Option<Box<Writer>>,
    framing: In,
    keep_alive: bool,
}

impl UpstreamBody {
    /// The connection, if the exchange is complete and it may carry another.
    pub fn take_reusable(&mut self) -> Option<Box<Conn>> {
        let reusable = self.keep_alive
            && self.writer.is_none()
            && matches!(self.framing, In::Done | In::Empty)
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

    fn data(&mut self, n: usize) -> Option<Result<Frame<Bytes>, UpstreamError>> {
        let conn = self.conn.as_mut()?;
        Some(Ok(Frame::data(conn.rbuf.split_to(n).freeze())))
    }
}

impl Body for UpstreamBody {
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
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing {
                In::Empty | In::Done | In::Length(0) => {
                    this.framing = In::Done;
                    return Poll::Ready(None);
                }
                In::Length(rest) => {
                    if conn.rbuf.is_empty() {
                        let want = usize::try_from(rest).unwrap_or(BODY_READ).min(BODY_READ);
                        match ready!(conn.poll_fill(cx, want)) {
                            Ok(0) => return Poll::Ready(Some(Err(UpstreamError::Closed))),
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(Some(Err(e.into()))),
                        }
                    }
                    let n = (conn.rbuf.len() as u64).min(rest);
                    this.framing = In::Length(rest - n);
                    if rest == n {
                        this.framing = In::Done;
                    }
                    return Poll::Ready(this.data(n as usize));
                }
                In::Eof => {
                    if conn.rbuf.is_empty() {
                        match ready!(conn.poll_fill(cx, BODY_READ)) {
                            Ok(0) => {
                                this.framing = In::Done;
                                this.keep_alive = false;
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(Some(Err(e.into()))),
                        }
                    }
                    let n = conn.rbuf.len();
                    return Poll::Ready(this.data(n));
                }
                In::Chunked(state) => match chunk_step(&mut conn.rbuf, state) {
                    Ok(Step::Next(s)) => this.framing = In::Chunked(s),
                    Ok(Step::Data(n, s)) => {
                        this.framing = In::Chunked(s);
                        return Poll::Ready(this.data(n));
                    }
                    Ok(Step::Trailers(map)) => {
                        this.framing = In::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(map))));
                    }
                    Ok(Step::End) => {
                        this.framing = In::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {
                        let want = state.read_hint(BODY_READ);
                        match ready!(conn.poll_fill(cx, want)) {
                            Ok(0) => return Poll::Ready(Some(Err(UpstreamError::Closed))),
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(Some(Err(e.into()))),
                        }
                    }
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, In::Empty | In::Done | In::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            In::Empty | In::Done => SizeHint::with_exact(0),
            In::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// What one step of chunked decoding produced.
pub(crate) enum Step {
    /// State advanced; go on.
    Next(Chunk),
    /// `n` bytes of data at the start of the buffer, then this state.
    Data(usize, Chunk),
    Trailers(HeaderMap),
    End,
    /// The buffer holds too little; read more.
    More,
}

pub(crate) fn chunk_step(buf: &mut BytesMut, state: Chunk) -> Result<Step, UpstreamError> {
    match state {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((used, size))) => {
                let _ = buf.split_to(used);
                Ok(Step::Next(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                }))
            }
            Ok(httparse::Status::Partial) if buf.len() > 4096 => {
                Err(UpstreamError::Malformed("chunk size line too long"))
            }
            Ok(httparse::Status::Partial) => Ok(Step::More),
            Err(_) => Err(UpstreamError::Malformed("bad chunk size")),
        },
        Chunk::Data(rest) => {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let n = (buf.len() as u64).min(rest);
            let next = if n == rest {
                Chunk::DataEnd
            } else {
                Chunk::Data(rest - n)
            };
            Ok(Step::Data(n as usize, next))
        }
        Chunk::DataEnd => {
            if buf.starts_with(b"\r\n") {
                let _ = buf.split_to(2);
                Ok(Step::Next(Chunk::Size))
            } else if buf.starts_with(b"\n") {
                let _ = buf.split_to(1);
                Ok(Step::Next(Chunk::Size))
            } else if buf.len() < 2 && buf.first().is_none_or(|&b| b == b'\r') {
                Ok(Step::More)
            } else {
                Err(UpstreamError::Malformed("chunk not followed by CRLF"))
            }
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
                let _ = buf.split_to(if buf[0] == b'\r' { 2 } else { 1 });
                return Ok(Step::End);
            }
            let mut slots = [httparse::EMPTY_HEADER; 32];
            match httparse::parse_headers(buf, &mut slots) {
                Ok(httparse::Status::Complete((used, parsed))) => {
                    let mut map = HeaderMap::with_capacity(parsed.len());
                    for h in parsed {
                        if hop_by_hop(h.name.as_bytes(), false)
                            || h.name.eq_ignore_ascii_case("content-length")
                        {
                            continue;
                        }
                        if let (Ok(n), Ok(v)) = (
                            HeaderName::from_bytes(h.name.as_bytes()),
                            HeaderValue::from_bytes(h.value),
                        ) {
                            map.append(n, v);
                        }
                    }
                    let _ = buf.split_to(used);
                    Ok(if map.is_empty() {
                        Step::End
                    } else {
                        Step::Trailers(map)
                    })
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                    Err(UpstreamError::Malformed("trailers too large"))
                }
                Ok(httparse::Status::Partial) => Ok(Step::More),
                Err(_) => Err(UpstreamError::Malformed("bad trailers")),
            }
        }
    }
}

#[cfg(test)]
mod tests;
