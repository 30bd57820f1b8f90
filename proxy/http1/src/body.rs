//! Message bodies read off the wire, the same way in both directions: by length,
//! chunked (trailers included) or until the close. The server reads clients'
//! request bodies with it ([`crate::server::ClientBody`]) and the client reads
//! backends' response bodies ([`crate::client::UpstreamBody`]); each only says how
//! its socket is read and what its errors are called.

use std::io;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use crate::codec::{Chunk, Framing, MAX_HEAD, hop_by_hop};

/// Longest chunk-size line (with its extensions) waited for.
const MAX_SIZE_LINE: usize = 4096;
/// Largest chunk accepted: 2^60 − 1 bytes (an exabyte: no real body), so a size
/// like `ffffffffffffffff` is refused at once instead of swallowing the rest of
/// the stream as data. nginx and HAProxy stop near the same place (their parsers
/// refuse sizes that would overflow a signed 64-bit offset once shifted).
pub const MAX_CHUNK: u64 = (1 << 60) - 1;

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// The peer closed the connection before the body was complete.
    Closed,
    Io(io::Error),
    /// A framing error: what is wrong.
    Malformed(&'static str),
}

/// Reads the next frame of a body framed by `framing` out of `buf`, calling
/// `fill(cx, buf, want)` to read about `want` more bytes (at most `max` at once)
/// into `buf` when it holds too little. `framing` advances as the body is read;
/// what follows the body stays in `buf`.
pub fn poll_frame(
    framing: &mut Framing,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    max: usize,
    mut fill: impl FnMut(&mut Context<'_>, &mut BytesMut, usize) -> Poll<io::Result<usize>>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    loop {
        match *framing {
            Framing::Empty | Framing::Done | Framing::Length(0) => {
                *framing = Framing::Done;
                return Poll::Ready(None);
            }
            Framing::Length(rest) => {
                if buf.is_empty() {
                    let want = usize::try_from(rest).unwrap_or(max).min(max);
                    match ready!(fill(cx, buf, want)) {
                        Ok(0) => return Poll::Ready(Some(Err(BodyError::Closed))),
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(BodyError::Io(e)))),
                    }
                }
                let n = (buf.len() as u64).min(rest);
                *framing = if n == rest {
                    Framing::Done
                } else {
                    Framing::Length(rest - n)
                };
                let data = buf.split_to(n as usize).freeze();
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Framing::Eof => {
                if buf.is_empty() {
                    match ready!(fill(cx, buf, max)) {
                        Ok(0) => {
                            *framing = Framing::Done;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(BodyError::Io(e)))),
                    }
                }
                let data = buf.split().freeze();
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Framing::Chunked(c) => match chunk_step(buf, c) {
                Ok(Step::Next(s)) => *framing = Framing::Chunked(s),
                Ok(Step::Data(n, s)) => {
                    *framing = Framing::Chunked(s);
                    let data = buf.split_to(n).freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Trailers(map)) => {
                    *framing = Framing::Done;
                    return Poll::Ready(Some(Ok(Frame::trailers(map))));
                }
                Ok(Step::End) => {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(Step::More) => match ready!(fill(cx, buf, c.read_hint(max))) {
                    Ok(0) => return Poll::Ready(Some(Err(BodyError::Closed))),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(BodyError::Io(e)))),
                },
                Err(why) => return Poll::Ready(Some(Err(BodyError::Malformed(why)))),
            },
        }
    }
}

/// What one step of chunked decoding produced.
#[derive(Debug)]
pub enum Step {
    /// State advanced; go on.
    Next(Chunk),
    /// `n` bytes of data at the start of the buffer, then this state.
    Data(usize, Chunk),
    Trailers(HeaderMap),
    End,
    /// The buffer holds too little; read more.
    More,
}

/// One step of decoding a chunked body at the start of `buf` in `state`. Trailers
/// lose hop-by-hop fields and `Content-Length`.
pub fn chunk_step(buf: &mut BytesMut, state: Chunk) -> Result<Step, &'static str> {
    match state {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((_, size))) if size > MAX_CHUNK => {
                Err("chunk size too large")
            }
            Ok(httparse::Status::Complete((used, size))) => {
                let _ = buf.split_to(used);
                Ok(Step::Next(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                }))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_SIZE_LINE => {
                Err("chunk size line too long")
            }
            Ok(httparse::Status::Partial) => Ok(Step::More),
            Err(_) => Err("bad chunk size"),
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
                Err("chunk not followed by CRLF")
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
                        let (Ok(n), Ok(v)) = (
                            HeaderName::from_bytes(h.name.as_bytes()),
                            HeaderValue::from_bytes(h.value),
                        ) else {
                            continue;
                        };
                        if hop_by_hop(&n, false) || n == header::CONTENT_LENGTH {
                            continue;
                        }
                        map.append(n, v);
                    }
                    let _ = buf.split_to(used);
                    Ok(if map.is_empty() {
                        Step::End
                    } else {
                        Step::Trailers(map)
                    })
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err("trailers too large"),
                Ok(httparse::Status::Partial) => Ok(Step::More),
                Err(_) => Err("bad trailers"),
            }
        }
    }
}
