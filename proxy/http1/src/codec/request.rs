//! Request heads: read from a client (with the smuggling defences), written to a
//! backend.

use std::mem::MaybeUninit;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Uri, Version};
use http_body::Body;

use super::{
    Chunk, Facts, Framing, LineError, Spans, content_length, note_spans, parse_length, put_dec,
    put_header, read_lines, slice,
};

/// Room a request's header map keeps for what forwarding adds (`X-Forwarded-For`,
/// `-Proto`, `-Host`, a `Host`), so adding them does not grow and rehash it.
const FORWARD_HEADERS: usize = 4;
/// Header lines parsed on the stack; a config allowing more uses the heap.
const STACK_HEADERS: usize = 128;

/// Why a request head is refused as smuggling-shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ambiguity {
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// More than one `Content-Length`.
    DuplicateLength,
}

/// A request head the server answers itself (and then closes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400, with the reason as the body.
    Malformed(&'static str),
    /// 431: over `max_header_bytes` or `max_headers`.
    TooLarge,
    /// 400: framing a backend might read differently.
    Ambiguous(Ambiguity),
    /// 408: not received within the header timeout.
    Timeout,
    /// 501: a transfer coding we do not implement (RFC 9112 §6.1).
    UnknownCoding,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub parts: Parts,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub upgrade: bool,
    /// The client accepts trailers (`TE: trailers`).
    pub trailers: bool,
}

impl RequestHead {
    /// The connection's last request with nothing after its head: it does not keep
    /// the connection (`Connection: close`, HTTP/1.0), has no body, asks for no
    /// upgrade and no `100 Continue`.
    pub fn is_last(&self) -> bool {
        !self.keep_alive
            && matches!(self.framing, Framing::Length(0))
            && !self.upgrade
            && !self.expect_continue
    }
}

/// Tries to parse a request head at the start of `buf`, consuming it when
/// complete. `Ok(None)`: incomplete.
///
/// Refused: over `max_head` bytes or `max_headers` lines (431); malformed (400);
/// ambiguous framing — `Content-Length` with `Transfer-Encoding`, repeated
/// `Content-Length` — a `Transfer-Encoding` that is not one `chunked` (a list,
/// a repeated line), or one on an HTTP/1.0 request (400: a backend might frame
/// such a request differently); a single unknown coding (501); more than one
/// `Host`, or none on HTTP/1.1 (400, RFC 9112 §3.2).
pub fn parse_request(
    buf: &mut BytesMut,
    max_head: usize,
    max_headers: usize,
) -> Result<Option<RequestHead>, Refusal> {
    let mut spans = Spans::new();
    let (len, method, target, minor) = {
        let mut stack: [MaybeUninit<httparse::Header<'_>>; STACK_HEADERS] =
            [const { MaybeUninit::uninit() }; STACK_HEADERS];
        let mut heap: Vec<MaybeUninit<httparse::Header<'_>>> = Vec::new();
        let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= STACK_HEADERS {
            &mut stack[..max_headers]
        } else {
            heap.resize_with(max_headers, MaybeUninit::uninit);
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
        if len > max_head {
            return Err(Refusal::TooLarge);
        }
        let base = buf.as_ptr() as usize;
        note_spans(&mut spans, req.headers, base);
        let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
            .map_err(|_| Refusal::Malformed("bad method\n"))?;
        let path = req.path.unwrap_or("");
        let target = (path.as_ptr() as usize - base, path.len());
        (len, method, target, req.version.unwrap_or(1))
    };
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| Refusal::Malformed("bad request target\n"))?;
    let mut lines = Facts::default();
    let headers = read_lines(&head, &spans, FORWARD_HEADERS, &mut lines, |_| true)
        .map_err(|_: LineError| Refusal::Malformed("malformed header\n"))?;
    let mut length = None;
    for &at in &lines.lengths {
        let v = slice(&head, at);
        length = Some(parse_length(v).ok_or(Refusal::Malformed("bad content-length\n"))?);
    }
    let framing = match (lines.chunked, lines.lengths.len()) {
        (Some(_), n) if n > 0 => return Err(Refusal::Ambiguous(Ambiguity::LengthAndChunked)),
        (_, n) if n > 1 => return Err(Refusal::Ambiguous(Ambiguity::DuplicateLength)),
        (Some(_), _) if minor == 0 => {
            return Err(Refusal::Malformed(
                "transfer-encoding on an HTTP/1.0 request\n",
            ));
        }
        // RFC 9112 §6.1, §7.1: only `chunked`, once (HAProxy and nginx refuse the rest).
        (Some(_), _) if lines.te_lines > 1 || lines.te_list => {
            return Err(Refusal::Malformed(
                "transfer-encoding must be a single chunked\n",
            ));
        }
        (Some(false), _) => return Err(Refusal::UnknownCoding),
        (Some(true), _) => Framing::Chunked(Chunk::Size),
        (None, _) => Framing::Length(length.unwrap_or(0)),
    };
    match lines.hosts {
        1 => {}
        0 if minor == 0 => {}
        0 => return Err(Refusal::Malformed("missing host\n")),
        _ => return Err(Refusal::Malformed("more than one host\n")),
    }
    let keep_alive = !lines.close && (minor == 1 || lines.keep_alive);
    let expect_continue = lines.expect_continue && minor == 1 && framing != Framing::Length(0);
    let upgrade = lines.upgrade && lines.upgrade_token;
    let trailers = lines.te_trailers;
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
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
        trailers,
    }))
}

/// How a request body is framed on its way to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    Length(u64),
    Chunked,
}

/// Lines a request gets on its way, written with its head (the proxy's
/// `X-Forwarded-*`): no hashed insert into the header map, and nothing at all
/// when there is nothing to write.
pub trait Extra {
    /// Whether the request's own `name` line is left out (ours takes its place).
    fn replaces(&self, name: &HeaderName) -> bool;
    /// Writes our lines, given the request's `headers`: `put(name, value parts)`.
    fn write(&self, headers: &HeaderMap, put: impl FnMut(&[u8], &[&[u8]]));
}

/// No extra lines.
impl Extra for () {
    fn replaces(&self, _: &HeaderName) -> bool {
        false
    }

    fn write(&self, _: &HeaderMap, _: impl FnMut(&[u8], &[&[u8]])) {}
}

/// Methods whose requests normally carry a body: sent with `content-length: 0`
/// when they have none, as some servers insist on a length (411).
pub fn expects_body(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH)
}

/// Writes the request head for the backend (origin form, HTTP/1.1) and chooses
/// the body's framing: its declared length, else what `body` knows, else chunked.
/// `host` replaces the client's `Host`; headers in `extra` (trace context) replace
/// the client's of the same name; `lines` adds its own (see [`Extra`]).
pub(crate) fn encode_request<B: Body, X: Extra>(
    dst: &mut BytesMut,
    parts: &Parts,
    host: Option<&HeaderValue>,
    extra: &HeaderMap,
    lines: Option<&X>,
    body: &B,
) -> Result<Out, &'static str> {
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
            || lines.is_some_and(|f| f.replaces(name))
        {
            continue;
        }
        has_length |= name == header::CONTENT_LENGTH;
        put_header(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(h) = host {
        put_header(dst, b"host", h.as_bytes());
    }
    if let Some(f) = lines {
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
        .map_err(|()| "bad content-length")?
    } else {
        None
    };
    let framing = match declared {
        Some(n) => Out::Length(n),
        None if body.is_end_stream() => {
            if expects_body(&parts.method) {
                dst.put_slice(b"content-length: 0\r\n");
            }
            Out::Length(0)
        }
        None => match body.size_hint().exact() {
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
