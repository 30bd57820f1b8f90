//! The HTTP/1.1 wire rules, written once for both directions (the model is
//! pingora's `protocols/http/v1/common.rs`): one scan of a head's header lines for
//! what framing and connection handling need, one `Transfer-Encoding` rule, one
//! `Content-Length` parser, one list of hop-by-hop headers, and the chunk framing.
//!
//! - [`request`]: request heads, read by the server and written by the client;
//! - [`response`]: response heads, read by the client and written by the server.
//!
//! Heads are read zero-copy: httparse finds the lines, the head is split off the
//! read buffer once, and every header value is a slice of it.

pub mod recycled;
mod request;
mod response;

pub(crate) use request::encode_request;
pub use request::{Ambiguity, Extra, Out, Refusal, RequestHead, expects_body, parse_request};
pub use response::{
    COPY_MAX, Encoded, MAX_HEAD, MAX_HEADERS, OutFraming, ResponseHead, choose_framing,
    encode_response, parse_response,
};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::SizeHint;
use smallvec::SmallVec;

/// How a message body is framed on the wire, and how much of it is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (a response to HEAD; 1xx, 204, 304; `content-length: 0`).
    Empty,
    /// This many bytes left (`Content-Length`).
    Length(u64),
    Chunked(Chunk),
    /// Until the sender closes the connection (a response with neither).
    Eof,
    /// Read to its end.
    Done,
}

impl Framing {
    /// Whether nothing more of the body is to come.
    pub fn is_end(self) -> bool {
        matches!(self, Framing::Empty | Framing::Done | Framing::Length(0))
    }

    pub fn size_hint(self) -> SizeHint {
        match self {
            Framing::Empty | Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Chunked(_) | Framing::Eof => SizeHint::default(),
        }
    }
}

/// Where a chunked body's decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Chunk {
    /// How much to read next in this state, at most `max`: the rest of a chunk's
    /// data, or a little for a size line or trailers.
    pub fn read_hint(self, max: usize) -> usize {
        match self {
            Chunk::Data(rest) => usize::try_from(rest).unwrap_or(max).clamp(64, max),
            _ => 1024,
        }
    }
}

// === the rules ===

/// Whether `name` describes one connection and is never passed on (RFC 9110
/// §7.6.1: `Connection`, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
/// `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`, and `Upgrade`
/// unless the message switches protocols, `upgrade`), besides the headers a
/// `Connection` line names.
pub fn hop_by_hop(name: &HeaderName, upgrade: bool) -> bool {
    match role(name) {
        Role::Upgrade => !upgrade,
        Role::Connection | Role::TransferEncoding | Role::Te | Role::HopByHop => true,
        Role::ContentLength | Role::Expect | Role::Host | Role::Other => false,
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitively).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The `Transfer-Encoding` rule: several lines form one list (RFC 9110 §5.3), and
/// what counts is whether the last coding of the last line is `chunked`. Call it
/// for each line in order; the last call's answer stands.
pub fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .unwrap_or(b"")
        .trim_ascii()
        .eq_ignore_ascii_case(b"chunked")
}

/// One `Content-Length` value: digits only (no sign, no list), at most 19 of them
/// (so it cannot overflow), surrounding whitespace allowed.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Every `Content-Length` in `values`, where each may be a list (`42, 42`): all
/// must parse and agree (RFC 9110 §8.6). `Ok(None)` when there is none.
pub(crate) fn content_length<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<u64>, ()> {
    let mut found: Option<u64> = None;
    for v in values {
        for part in v.split(|&b| b == b',') {
            let n = parse_length(part).ok_or(())?;
            match found {
                Some(prev) if prev != n => return Err(()),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

// === reading header lines ===

/// Where one header line's name and value lie in its head: (name offset, name
/// length, value offset, value length).
pub(crate) type Span = (u32, u32, u32, u32);
pub(crate) type Spans = SmallVec<[Span; 24]>;

/// Notes where httparse's header lines lie, relative to `base` (the head's
/// start), in `spans` (filled in place: the list is too big to move around).
pub(crate) fn note_spans(spans: &mut Spans, headers: &[httparse::Header<'_>], base: usize) {
    for h in headers {
        spans.push((
            (h.name.as_ptr() as usize - base) as u32,
            h.name.len() as u32,
            (h.value.as_ptr() as usize - base) as u32,
            h.value.len() as u32,
        ));
    }
}

/// The part a header plays in the framing and connection rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    Te,
    Host,
    /// Another hop-by-hop header (`Keep-Alive`, `Proxy-*`, `Trailer`).
    HopByHop,
    Other,
}

/// The part `name` plays (one match on the lower-case name: no header value is
/// built to compare with).
pub(crate) fn role(name: &HeaderName) -> Role {
    match name.as_str() {
        "content-length" => Role::ContentLength,
        "connection" => Role::Connection,
        "transfer-encoding" => Role::TransferEncoding,
        "upgrade" => Role::Upgrade,
        "expect" => Role::Expect,
        "te" => Role::Te,
        "host" => Role::Host,
        "keep-alive"
        | "proxy-connection"
        | "proxy-authenticate"
        | "proxy-authorization"
        | "trailer" => Role::HopByHop,
        _ => Role::Other,
    }
}

/// Why header lines could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineError {
    Name,
    Value,
}

/// What a head's header lines say about framing and the connection, gathered as
/// they are read (one pass, both directions).
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// The `Content-Length` values: (offset, length) in the head.
    pub lengths: SmallVec<[(u32, u32); 2]>,
    /// `Transfer-Encoding` present: whether its last coding is chunked.
    pub chunked: Option<bool>,
    /// `Transfer-Encoding` lines, and whether one of them is not a single coding
    /// (a list, or empty).
    pub te_lines: u8,
    pub te_list: bool,
    /// `Host` lines.
    pub hosts: u8,
    /// `Connection` tokens.
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade_token: bool,
    /// The `Connection` values name other headers (to drop as hop-by-hop).
    pub lists_others: bool,
    /// The `Connection` values: (offset, length) in the head.
    pub connection: SmallVec<[(u32, u32); 1]>,
    /// An `Upgrade` line.
    pub upgrade: bool,
    pub expect_continue: bool,
    /// `TE: trailers`.
    pub te_trailers: bool,
}

impl Facts {
    fn note(&mut self, role: Role, v: &[u8], at: (u32, u32)) {
        match role {
            Role::ContentLength => self.lengths.push(at),
            Role::TransferEncoding => {
                self.chunked = Some(last_coding_is_chunked(v));
                self.te_lines = self.te_lines.saturating_add(1);
                self.te_list |= v.contains(&b',') || v.trim_ascii().is_empty();
            }
            Role::Host => self.hosts = self.hosts.saturating_add(1),
            Role::Connection => {
                for t in v.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        self.upgrade_token = true;
                    } else if !t.is_empty() {
                        self.close |= t.eq_ignore_ascii_case(b"close");
                        self.lists_others = true;
                    }
                }
                self.connection.push(at);
            }
            Role::Upgrade => self.upgrade = true,
            Role::Expect => {
                self.expect_continue |= v.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            Role::Te => self.te_trailers |= has_token(v, b"trailers"),
            Role::HopByHop | Role::Other => {}
        }
    }
}

/// A span's bytes in `head`.
pub(crate) fn slice(head: &[u8], (at, len): (u32, u32)) -> &[u8] {
    &head[at as usize..(at + len) as usize]
}

/// Whether the token `raw` is `lower` in any case. `raw` is a header name httparse
/// accepted (a token), so setting each byte's 0x20 bit lower-cases its letters
/// and maps nothing else onto a lower-case letter or `-` (only CR, 0x0D, would
/// become `-`, and it is no token byte). Compared 8 bytes at a time (the last
/// word overlapping the one before), branch-free over the fixed length.
fn is_name<const N: usize>(raw: &[u8], lower: &[u8; N]) -> bool {
    fn word(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    }
    const CASE: u64 = 0x2020_2020_2020_2020;
    if raw.len() != N {
        return false;
    }
    if N < 8 {
        return raw
            .iter()
            .zip(lower)
            .fold(0u8, |diff, (&b, &l)| diff | ((b | 0x20) ^ l))
            == 0;
    }
    let mut diff = 0;
    let mut at = 0;
    while at + 8 < N {
        diff |= (word(raw, at) | CASE) ^ word(lower, at);
        at += 8;
    }
    diff |= (word(raw, N - 8) | CASE) ^ word(lower, N - 8);
    diff == 0
}

/// The name and role of a header every other message carries, found without
/// http's general parse (a lower-casing copy, then a lookup: ~150 instructions a
/// line); `None` for the rest, which take that path.
pub(crate) fn known_name(raw: &[u8]) -> Option<(HeaderName, Role)> {
    use http::header as h;
    let found = match raw.len() {
        2 if is_name(raw, b"te") => (h::TE, Role::Te),
        4 if is_name(raw, b"host") => (h::HOST, Role::Host),
        4 if is_name(raw, b"date") => (h::DATE, Role::Other),
        4 if is_name(raw, b"etag") => (h::ETAG, Role::Other),
        4 if is_name(raw, b"vary") => (h::VARY, Role::Other),
        6 if is_name(raw, b"server") => (h::SERVER, Role::Other),
        6 if is_name(raw, b"accept") => (h::ACCEPT, Role::Other),
        6 if is_name(raw, b"cookie") => (h::COOKIE, Role::Other),
        6 if is_name(raw, b"expect") => (h::EXPECT, Role::Expect),
        7 if is_name(raw, b"upgrade") => (h::UPGRADE, Role::Upgrade),
        7 if is_name(raw, b"trailer") => (h::TRAILER, Role::HopByHop),
        8 if is_name(raw, b"location") => (h::LOCATION, Role::Other),
        10 if is_name(raw, b"connection") => (h::CONNECTION, Role::Connection),
        10 if is_name(raw, b"user-agent") => (h::USER_AGENT, Role::Other),
        10 if is_name(raw, b"set-cookie") => (h::SET_COOKIE, Role::Other),
        12 if is_name(raw, b"content-type") => (h::CONTENT_TYPE, Role::Other),
        13 if is_name(raw, b"cache-control") => (h::CACHE_CONTROL, Role::Other),
        13 if is_name(raw, b"authorization") => (h::AUTHORIZATION, Role::Other),
        13 if is_name(raw, b"last-modified") => (h::LAST_MODIFIED, Role::Other),
        14 if is_name(raw, b"content-length") => (h::CONTENT_LENGTH, Role::ContentLength),
        15 if is_name(raw, b"accept-encoding") => (h::ACCEPT_ENCODING, Role::Other),
        15 if is_name(raw, b"accept-language") => (h::ACCEPT_LANGUAGE, Role::Other),
        16 if is_name(raw, b"content-encoding") => (h::CONTENT_ENCODING, Role::Other),
        17 if is_name(raw, b"transfer-encoding") => (h::TRANSFER_ENCODING, Role::TransferEncoding),
        _ => return None,
    };
    Some(found)
}

/// Reads a head's header lines (`spans` of `head`) into a header map whose values
/// are slices of the head, with room for `extra` more, keeping the lines `keep`
/// accepts; `facts` gets what the framing rules need from every line.
pub(crate) fn read_lines(
    head: &Bytes,
    spans: &[Span],
    extra: usize,
    facts: &mut Facts,
    keep: impl Fn(Role) -> bool,
) -> Result<HeaderMap, LineError> {
    let mut map = recycled::header_map(spans.len() + extra);
    for s in spans {
        let raw = slice(head, (s.0, s.1));
        let (name, role) = match known_name(raw) {
            Some(known) => known,
            None => {
                let name = HeaderName::from_bytes(raw).map_err(|_| LineError::Name)?;
                let role = role(&name);
                (name, role)
            }
        };
        facts.note(role, slice(head, (s.2, s.3)), (s.2, s.3));
        if keep(role) {
            let value =
                HeaderValue::from_maybe_shared(head.slice(s.2 as usize..(s.2 + s.3) as usize))
                    .map_err(|_| LineError::Value)?;
            map.append(name, value);
        }
    }
    Ok(map)
}

// === writing ===

pub(crate) const CRLF: Bytes = Bytes::from_static(b"\r\n");
pub(crate) const LAST_CHUNK: Bytes = Bytes::from_static(b"0\r\n\r\n");

pub fn put_hex(dst: &mut BytesMut, mut n: u64) {
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

pub fn put_dec(dst: &mut BytesMut, mut n: u64) {
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

pub fn put_header(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.put_slice(name);
    dst.put_slice(b": ");
    dst.put_slice(value);
    dst.put_slice(b"\r\n");
}

/// A chunk-size line for `n` bytes of data.
pub fn put_chunk_line(dst: &mut BytesMut, n: usize) {
    put_hex(dst, n as u64);
    dst.put_slice(b"\r\n");
}

/// The last chunk carrying `trailers`, and the end of the body.
pub fn trailers_chunk(trailers: &HeaderMap) -> Bytes {
    let mut t = BytesMut::with_capacity(64);
    t.put_slice(b"0\r\n");
    for (name, value) in trailers {
        put_header(&mut t, name.as_str().as_bytes(), value.as_bytes());
    }
    t.put_slice(b"\r\n");
    t.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast lookup agrees with http's parse and [`role`] on every name it
    /// knows, in any case, and leaves the rest (near misses too) to the parse.
    #[test]
    fn known_names_match_the_general_parse() {
        let known = [
            "te",
            "host",
            "date",
            "etag",
            "vary",
            "server",
            "accept",
            "cookie",
            "expect",
            "upgrade",
            "trailer",
            "location",
            "connection",
            "user-agent",
            "set-cookie",
            "content-type",
            "cache-control",
            "authorization",
            "last-modified",
            "content-length",
            "accept-encoding",
            "accept-language",
            "content-encoding",
            "transfer-encoding",
        ];
        for name in known {
            for raw in [
                name.to_string(),
                name.to_ascii_uppercase(),
                name.split('-')
                    .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
                    .collect::<Vec<_>>()
                    .join("-"),
            ] {
                let (fast, fast_role) = known_name(raw.as_bytes()).expect(&raw);
                let parsed = HeaderName::from_bytes(raw.as_bytes()).expect(&raw);
                assert_eq!(fast, parsed, "{raw}");
                assert_eq!(fast_role, role(&parsed), "{raw}");
            }
        }
        for other in [
            "x-host",
            "hosts",
            "hostt",
            "content_length",
            "content-lengtx",
            "te_",
            "tf",
            "keep-alive",
            "x-forwarded-for",
            "connectio",
            "transfer-encodinG2",
        ] {
            assert!(known_name(other.as_bytes()).is_none(), "{other}");
        }
    }
}
