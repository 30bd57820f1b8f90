//! Response heads: read from a backend (hop-by-hop headers dropped on the way),
//! written to a client.

use std::mem::MaybeUninit;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::Body;

use super::{
    Chunk, Facts, Framing, LineError, Role, Spans, content_length, has_token, note_spans,
    parse_length, put_dec, put_header, read_lines, slice,
};

/// Longest response head accepted (status line and header lines), and longest
/// trailer section.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most response header lines accepted.
pub const MAX_HEADERS: usize = 128;

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub response: Response<()>,
    pub framing: Framing,
    pub keep_alive: bool,
}

/// Tries to parse a response head at the start of `buf`. `Ok(None)`: incomplete.
/// 1xx answers other than 101 are consumed and skipped. `Err` says what is wrong
/// with it.
///
/// Framing (RFC 9112 §6.3): none for HEAD, 101, 204 and 304; `Transfer-Encoding`
/// wins over `Content-Length` (and such a message is not trusted with the
/// connection afterwards); otherwise the lengths, which must agree; otherwise
/// until the close.
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Option<ResponseHead>, &'static str> {
    loop {
        let mut spans = Spans::new();
        let (len, code, minor) = {
            let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
                [const { MaybeUninit::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let status = httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
                .map_err(|e| match e {
                    httparse::Error::TooManyHeaders => "too many headers",
                    _ => "bad response head",
                })?;
            let httparse::Status::Complete(len) = status else {
                return Ok(None);
            };
            if len > MAX_HEAD {
                return Err("response head too large");
            }
            note_spans(&mut spans, resp.headers, buf.as_ptr() as usize);
            (len, resp.code.unwrap_or(0), resp.version.unwrap_or(1))
        };
        let head = buf.split_to(len).freeze();
        let status = StatusCode::from_u16(code).map_err(|_| "bad status")?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: nothing to pass on; the real answer follows.
            continue;
        }
        let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
        // Hop-by-hop lines are left out as they are read; `Upgrade` stays on a 101.
        let mut lines = Facts::default();
        let mut headers = read_lines(&head, &spans, 0, &mut lines, |role| match role {
            Role::Other | Role::ContentLength | Role::Expect | Role::Host => true,
            Role::Upgrade => upgrade,
            Role::Connection | Role::TransferEncoding | Role::Te | Role::HopByHop => false,
        })
        .map_err(|e| match e {
            LineError::Name => "bad header name",
            LineError::Value => "bad header value",
        })?;
        // `close` anywhere wins; HTTP/1.0 closes unless it asked for keep-alive.
        let mut close = lines.close || (minor == 0 && !lines.keep_alive);
        let no_body = head_request
            || upgrade
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if no_body {
            Framing::Empty
        } else if let Some(chunked) = lines.chunked {
            close |= !lines.lengths.is_empty() || !chunked;
            if chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::Eof
            }
        } else {
            match content_length(lines.lengths.iter().map(|&at| slice(&head, at))) {
                Ok(Some(0)) => Framing::Empty,
                Ok(Some(n)) => Framing::Length(n),
                Ok(None) => Framing::Eof,
                Err(()) => return Err("bad content-length"),
            }
        };
        if framing == Framing::Eof {
            close = true;
        }
        // Rare: lines only dropped once all are read — a length beside
        // `Transfer-Encoding`, and headers a `Connection` line names (the map is
        // rebuilt rather than removed from, which would reorder it).
        let drop_length = lines.chunked.is_some() && !lines.lengths.is_empty();
        if drop_length || lines.lists_others {
            let listed = |name: &HeaderName| {
                lines.connection.iter().any(|&at| {
                    has_token(slice(&head, at), name.as_str().as_bytes())
                        && !(upgrade && name == header::UPGRADE)
                })
            };
            let mut kept = HeaderMap::with_capacity(headers.len());
            let mut current: Option<HeaderName> = None;
            for (name, value) in headers {
                if let Some(n) = name {
                    current = Some(n);
                }
                let Some(n) = &current else { continue };
                if (drop_length && n == header::CONTENT_LENGTH) || listed(n) {
                    continue;
                }
                kept.append(n.clone(), value);
            }
            headers = kept;
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
        return Ok(Some(ResponseHead {
            response,
            framing,
            keep_alive: !close && !upgrade,
        }));
    }
}

/// How a response body goes on the wire to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFraming {
    /// Nothing after the head (HEAD, 1xx, 204, 304, 101).
    None,
    Length(u64),
    Chunked {
        trailers: bool,
    },
    /// Until we close (HTTP/1.0 clients, length unknown).
    Close,
}

/// A response head ready to write.
#[derive(Debug)]
pub struct Encoded {
    /// With room for a small body behind it, so both go out in one `send`.
    pub head: BytesMut,
    pub framing: OutFraming,
}

/// Body frames up to this size are copied behind what is queued rather than
/// sent from their own buffer: one `send` of a contiguous buffer is cheaper than
/// a `writev` of several, and most API responses are a head and a small body.
pub const COPY_MAX: usize = 4 * 1024;

/// How a response body is sent: its declared length, else the length its body
/// knows, else chunked to an HTTP/1.1 client and close-delimited to HTTP/1.0.
pub fn choose_framing(
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
pub fn encode_response<B: Body>(
    parts: &http::response::Parts,
    body: &B,
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
            close |= has_token(v.as_bytes(), b"close");
        } else if n == header::DATE {
            dated = true;
        }
    }
    let declared = length.and_then(|v| parse_length(v.as_bytes()));
    let exact = body.size_hint().exact();
    let small_body = declared
        .or(exact)
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
    let framing = choose_framing(declared, exact, no_body, version, trailers);
    match framing {
        OutFraming::Length(n) if declared.is_none() => {
            dst.put_slice(b"content-length: ");
            put_dec(&mut dst, n);
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
        put_header(&mut dst, name.as_str().as_bytes(), value.as_bytes());
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
        put_header(dst, b"date", text.as_bytes());
    });
}

/// Seconds since the Unix epoch from `CLOCK_REALTIME_COARSE` (at most one tick,
/// a few milliseconds, behind the precise clock).
fn coarse_unix_secs() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    u64::try_from(t.tv_sec).unwrap_or(0)
}
