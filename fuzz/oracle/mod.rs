//! What the HTTP/1.1 codec must hold on any input, shared by the fuzz targets
//! (`fuzz/http1/fuzz_targets/h1_*.rs`) and the replay of their corpus in the normal
//! test suite (`proxy/http1/tests/fuzz_corpus.rs`): never a panic; the same answer
//! whether the bytes arrive whole, byte by byte or in random splits; and for
//! request heads, the same reading as `httparse` plus the RFC 9112 framing rules.

#![allow(dead_code)] // each target uses one part

use bytes::BytesMut;
use switchyard_http1::body::{Step, chunk_step};
use switchyard_http1::codec::{Chunk, Framing, parse_request, parse_response};

/// The proxy's default request limits.
pub const MAX_HEAD: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 100;

/// Split points drawn from the input itself (deterministic: a finding replays).
fn splits(data: &[u8]) -> Vec<usize> {
    let mut seed = data.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3)
    });
    let mut at = 0;
    let mut out = Vec::new();
    while at < data.len() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        at += 1 + (seed % 64) as usize;
        out.push(at.min(data.len()));
    }
    out
}

/// Feeds `data` in pieces ending at `ends` to `step` (which sees the whole buffer
/// so far and may consume it), returning the first answer that is not "more".
fn feed<T>(
    data: &[u8],
    ends: impl IntoIterator<Item = usize>,
    mut step: impl FnMut(&mut BytesMut) -> Option<T>,
) -> (Option<T>, BytesMut) {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    for end in ends {
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
        if let Some(r) = step(&mut buf) {
            buf.extend_from_slice(&data[fed..]);
            return (Some(r), buf);
        }
    }
    (None, buf)
}

// === request heads ===

/// A request head as compared: method, target, minor version, header lines,
/// framing, or the refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    Head {
        method: String,
        target: String,
        minor: u8,
        headers: Vec<(String, Vec<u8>)>,
        framing: Framing,
    },
    Refused,
}

fn ours(buf: &mut BytesMut) -> Option<Read> {
    match parse_request(buf, MAX_HEAD, MAX_HEADERS) {
        Ok(None) if buf.len() > MAX_HEAD => Some(Read::Refused),
        Ok(None) => None,
        Err(_) => Some(Read::Refused),
        Ok(Some(h)) => Some(Read::Head {
            method: h.parts.method.to_string(),
            target: h.parts.uri.to_string(),
            minor: if h.parts.version == http::Version::HTTP_10 {
                0
            } else {
                1
            },
            headers: h
                .parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            framing: h.framing,
        }),
    }
}

/// The reference: httparse, the `http` crate's validity rules for what it builds,
/// and RFC 9112's framing rules (§3.2 Host, §6.1 Transfer-Encoding, §6.3 length).
pub fn reference(data: &[u8]) -> Option<Read> {
    let mut slots = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(data) {
        Err(_) => return Some(Read::Refused),
        Ok(httparse::Status::Partial) => {
            return (data.len() > MAX_HEAD).then_some(Read::Refused);
        }
        Ok(httparse::Status::Complete(len)) => len,
    };
    if len > MAX_HEAD {
        return Some(Read::Refused);
    }
    let refused = Some(Read::Refused);
    let method = req.method?;
    let minor = req.version?;
    let Ok(target) = req.path?.parse::<http::Uri>() else {
        return refused;
    };
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return refused;
    }
    let mut map = http::HeaderMap::new();
    let (mut hosts, mut te, mut te_list, mut lengths) = (0, 0, false, Vec::new());
    let mut chunked = false;
    for h in req.headers.iter() {
        let Ok(name) = http::HeaderName::from_bytes(h.name.as_bytes()) else {
            return refused;
        };
        let Ok(value) = http::HeaderValue::from_bytes(h.value) else {
            return refused;
        };
        match name.as_str() {
            "host" => hosts += 1,
            "transfer-encoding" => {
                te += 1;
                let v = h.value.trim_ascii();
                te_list |= v.contains(&b',') || v.is_empty();
                chunked = v.eq_ignore_ascii_case(b"chunked");
            }
            "content-length" => lengths.push(h.value.to_vec()),
            _ => {}
        }
        map.append(name, value);
    }
    // Compared as the header map iterates (a name's lines together).
    let headers = map
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let framing = if te > 0 {
        if !lengths.is_empty() || minor == 0 || te > 1 || te_list || !chunked {
            return refused;
        }
        Framing::Chunked(Chunk::Size)
    } else {
        match lengths.as_slice() {
            [] => Framing::Length(0),
            [one] => {
                let v = one.trim_ascii();
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return refused;
                }
                match std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    Some(n) => Framing::Length(n),
                    None => return refused,
                }
            }
            _ => return refused,
        }
    };
    if hosts > 1 || (hosts == 0 && minor == 1) {
        return refused;
    }
    Some(Read::Head {
        method: method.to_string(),
        target: target.to_string(),
        minor,
        headers,
        framing,
    })
}

/// The request-head properties (fuzz target `h1_request`).
pub fn request_head(data: &[u8]) {
    let whole = feed(data, [data.len()], ours);
    let bytes = feed(data, 1..=data.len(), ours);
    let split = feed(data, splits(data), ours);
    assert_eq!(whole.0, bytes.0, "whole vs byte by byte");
    assert_eq!(whole.0, split.0, "whole vs random splits");
    if matches!(whole.0, Some(Read::Head { .. })) {
        assert_eq!(whole.1, bytes.1, "what follows the head");
        assert_eq!(whole.1, split.1, "what follows the head");
    }
}

/// The differential property (fuzz target `h1_differential`): accepted heads read
/// the same as the reference, refused ones are refused by it.
pub fn differential(data: &[u8]) {
    let (got, _) = feed(data, [data.len()], ours);
    let want = reference(data);
    match (&got, &want) {
        (None, None) => {}
        (Some(Read::Refused), Some(Read::Refused)) => {}
        (Some(Read::Head { .. }), Some(Read::Head { .. })) => assert_eq!(got, want),
        _ => panic!("switchyard {got:?}, reference {want:?}"),
    }
}

// === response heads ===

pub fn response_head(data: &[u8]) {
    let head_request = data.first().is_some_and(|b| b & 1 == 1);
    let read = |buf: &mut BytesMut| match parse_response(buf, head_request) {
        Ok(None) if buf.len() > MAX_HEAD => Some(Err("too large".to_string())),
        Ok(None) => None,
        Ok(Some(h)) => Some(Ok(format!(
            "{:?} {:?} {}",
            h.response, h.framing, h.keep_alive
        ))),
        Err(e) => Some(Err(e.to_string())),
    };
    let whole = feed(data, [data.len()], read);
    let bytes = feed(data, 1..=data.len(), read);
    let split = feed(data, splits(data), read);
    // A refusal may come earlier with less of the input (an informational head
    // consumed, the rest malformed): only successes must agree exactly.
    if let Some(Ok(w)) = &whole.0 {
        assert_eq!(bytes.0.as_ref(), Some(&Ok(w.clone())), "byte by byte");
        assert_eq!(split.0.as_ref(), Some(&Ok(w.clone())), "random splits");
        assert_eq!(whole.1, bytes.1);
        assert_eq!(whole.1, split.1);
    }
}

// === chunked bodies ===

/// Decodes a chunked body fed in pieces ending at `ends`: data, trailers, and
/// whether it ended, failed (and why) or wants more.
fn decode(data: &[u8], ends: impl IntoIterator<Item = usize>) -> (Vec<u8>, String, String) {
    let mut buf = BytesMut::new();
    let mut state = Chunk::Size;
    let mut out = Vec::new();
    let mut fed = 0;
    let mut ends = ends.into_iter();
    loop {
        match chunk_step(&mut buf, state) {
            Ok(Step::Next(s)) => state = s,
            Ok(Step::Data(n, s)) => {
                assert!(n > 0 && n <= buf.len());
                out.extend_from_slice(&buf.split_to(n));
                state = s;
            }
            Ok(Step::Trailers(t)) => return (out, format!("{t:?}"), "end".into()),
            Ok(Step::End) => return (out, String::new(), "end".into()),
            Ok(Step::More) => match ends.next() {
                Some(end) => {
                    buf.extend_from_slice(&data[fed..end]);
                    fed = end;
                }
                None => return (out, String::new(), "more".into()),
            },
            // Which error shows first may depend on how much is buffered (a long
            // size line vs a bad byte in it): compared as "error".
            Err(_) => return (out, String::new(), "error".into()),
        }
    }
}

pub fn chunked(data: &[u8]) {
    let whole = decode(data, [data.len()]);
    let bytes = decode(data, 1..=data.len());
    let split = decode(data, splits(data));
    assert!(whole.0.len() <= data.len());
    // Data handed out before an error may differ in how much of it came: compare
    // complete bodies exactly, and the verdict always.
    assert_eq!(whole.2, bytes.2, "verdict, byte by byte");
    assert_eq!(whole.2, split.2, "verdict, random splits");
    if whole.2 == "end" {
        assert_eq!(whole, bytes);
        assert_eq!(whole, split);
    }
}
