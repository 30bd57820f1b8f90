//! Refusing ambiguous HTTP/1.1 framing (request smuggling).
//!
//! hyper resolves a request that has both `Content-Length` and `Transfer-Encoding`
//! the way RFC 9112 allows (chunked wins, the length is dropped) and accepts
//! repeated identical `Content-Length`s; by the time the service sees the request
//! the evidence is gone. A front proxy should refuse such requests outright, since a
//! backend or an intermediary behind it may frame them differently.
//!
//! [`Watched`] sees the client's bytes as hyper reads them and follows HTTP/1.1
//! framing itself: it scans each request head for `Content-Length` and
//! `Transfer-Encoding`, then skips the body (a length, or chunks) to the next head.
//! Each head yields a verdict, queued in order; the service takes one per request
//! and answers an ambiguous one with 400 and `Connection: close`. Heads are scanned
//! once, bodies are skipped by arithmetic, so the cost is a few hundred bytes of
//! comparisons per request. Scanning stops (no more verdicts, none needed) on an
//! HTTP/2 preface, an `Upgrade`, or after an ambiguous head (the connection closes).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request head is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ambiguity {
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// More than one `Content-Length`.
    DuplicateLength,
}

/// Verdicts for the heads seen on one connection, oldest first.
#[derive(Default)]
pub struct Verdicts {
    queue: Mutex<VecDeque<Option<Ambiguity>>>,
}

impl Verdicts {
    /// The verdict for the next request hyper hands over (`None` when the head was
    /// fine or was not scanned).
    pub fn next(&self) -> Option<Ambiguity> {
        self.queue.lock().pop_front().flatten()
    }

    fn push(&self, v: Option<Ambiguity>) {
        self.queue.lock().push_back(v);
    }
}

/// Longest header line looked at; longer ones cannot be framing headers we care about
/// (hyper enforces the real head limit).
const MAX_LINE: usize = 256;

enum State {
    /// In a request head: the current line so far (capped), and what the head said.
    Head {
        line: Vec<u8>,
        line_len: usize,
        first: bool,
        lengths: u32,
        length: Option<u64>,
        chunked: bool,
        upgrade: bool,
    },
    /// Skipping a body of known length.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize {
        line: Vec<u8>,
    },
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    ChunkDataEnd(u8),
    /// Trailer lines after the last chunk, until an empty one.
    Trailers {
        line_len: usize,
    },
    /// No more framing to follow on this connection.
    Done,
}

fn new_head() -> State {
    State::Head {
        line: Vec::new(),
        line_len: 0,
        first: true,
        lengths: 0,
        length: None,
        chunked: false,
        upgrade: false,
    }
}

struct Scanner {
    state: State,
    verdicts: Arc<Verdicts>,
}

fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn value(line: &[u8], name_len: usize) -> &[u8] {
    let v = &line[name_len..];
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

impl Scanner {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Done => return,
                State::Body(n) => {
                    let take = (*n).min(data.len() as u64) as usize;
                    *n -= take as u64;
                    data = &data[take..];
                    if *n == 0 {
                        self.state = new_head();
                    }
                }
                State::ChunkData(n) => {
                    let take = (*n).min(data.len() as u64) as usize;
                    *n -= take as u64;
                    data = &data[take..];
                    if *n == 0 {
                        self.state = State::ChunkDataEnd(2);
                    }
                }
                State::ChunkDataEnd(left) => {
                    *left -= 1;
                    data = &data[1..];
                    if *left == 0 {
                        self.state = State::ChunkSize { line: Vec::new() };
                    }
                }
                State::ChunkSize { line } => {
                    let b = data[0];
                    data = &data[1..];
                    if b == b'\n' {
                        let hex: Vec<u8> = line
                            .iter()
                            .copied()
                            .take_while(|c| c.is_ascii_hexdigit())
                            .collect();
                        let size = std::str::from_utf8(&hex)
                            .ok()
                            .and_then(|h| u64::from_str_radix(h, 16).ok());
                        self.state = match size {
                            Some(0) => State::Trailers { line_len: 0 },
                            Some(n) => State::ChunkData(n),
                            // Malformed: hyper will refuse it; stop following.
                            None => State::Done,
                        };
                    } else if b != b'\r' && line.len() < MAX_LINE {
                        line.push(b);
                    }
                }
                State::Trailers { line_len } => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\n' if *line_len == 0 => self.state = new_head(),
                        b'\n' => *line_len = 0,
                        b'\r' => {}
                        _ => *line_len += 1,
                    }
                }
                State::Head { .. } => {
                    let Some(pos) = data.iter().position(|&b| b == b'\n') else {
                        self.head_bytes(data);
                        return;
                    };
                    self.head_bytes(&data[..pos]);
                    data = &data[pos + 1..];
                    self.end_line();
                }
            }
        }
    }

    fn head_bytes(&mut self, bytes: &[u8]) {
        if let State::Head { line, line_len, .. } = &mut self.state {
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend(bytes.iter().take(room).filter(|&&b| b != b'\r'));
            *line_len += bytes.len();
        }
    }

    fn end_line(&mut self) {
        let State::Head {
            line,
            line_len,
            first,
            lengths,
            length,
            chunked,
            upgrade,
        } = &mut self.state
        else {
            return;
        };
        let l = std::mem::take(line);
        let was_empty = *line_len == 0 || l.is_empty() && *line_len <= 1;
        *line_len = 0;
        if *first {
            if l.is_empty() {
                // Stray CRLF between requests: allowed, ignored.
                return;
            }
            *first = false;
            if l.starts_with(b"PRI * HTTP/2") {
                self.state = State::Done;
            }
            return;
        }
        if was_empty {
            let verdict = if *lengths > 0 && *chunked {
                Some(Ambiguity::LengthAndChunked)
            } else if *lengths > 1 {
                Some(Ambiguity::DuplicateLength)
            } else {
                None
            };
            self.verdicts.push(verdict);
            self.state = if verdict.is_some() || *upgrade {
                State::Done
            } else if *chunked {
                State::ChunkSize { line: Vec::new() }
            } else {
                match length {
                    Some(n) if *n > 0 => State::Body(*n),
                    _ => new_head(),
                }
            };
            return;
        }
        let framing =
            starts_with_ci(&l, b"content-length:") || starts_with_ci(&l, b"transfer-encoding:");
        if framing && l.len() >= MAX_LINE {
            // Too long to read reliably: stop following this connection's framing.
            self.state = State::Done;
            return;
        }
        if starts_with_ci(&l, b"content-length:") {
            *lengths += 1;
            *length = std::str::from_utf8(value(&l, 15))
                .ok()
                .and_then(|v| v.parse().ok());
        } else if starts_with_ci(&l, b"transfer-encoding:") {
            *chunked = true;
        } else if starts_with_ci(&l, b"upgrade:") {
            *upgrade = true;
        }
    }
}

pin_project_lite::pin_project! {
    /// A client connection whose request framing is watched.
    pub struct Watched<IO> {
        #[pin]
        io: IO,
        scanner: Scanner,
    }
}

impl<IO> Watched<IO> {
    pub fn new(io: IO) -> (Self, Arc<Verdicts>) {
        let verdicts = Arc::new(Verdicts::default());
        (
            Self {
                io,
                scanner: Scanner {
                    state: new_head(),
                    verdicts: verdicts.clone(),
                },
            },
            verdicts,
        )
    }
}

impl<IO: AsyncRead> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            this.scanner.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<IO: AsyncWrite> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts_of(chunks: &[&[u8]]) -> Vec<Option<Ambiguity>> {
        let verdicts = Arc::new(Verdicts::default());
        let mut s = Scanner {
            state: new_head(),
            verdicts: verdicts.clone(),
        };
        for c in chunks {
            s.feed(c);
        }
        let mut q = verdicts.queue.lock();
        q.drain(..).collect()
    }

    #[test]
    fn plain_requests_pass() {
        let v =
            verdicts_of(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"]);
        assert_eq!(v, vec![None, None]);
    }

    #[test]
    fn length_and_chunked_is_ambiguous_in_either_order() {
        for req in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            &b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n"[..],
        ] {
            assert_eq!(verdicts_of(&[req]), vec![Some(Ambiguity::LengthAndChunked)]);
        }
    }

    #[test]
    fn duplicate_lengths_are_ambiguous_even_when_equal() {
        let v =
            verdicts_of(&[b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"]);
        assert_eq!(v, vec![Some(Ambiguity::DuplicateLength)]);
    }

    #[test]
    fn bodies_are_skipped_so_the_next_head_is_found() {
        // The first body contains text that looks like headers; it must not count.
        let body = b"xx\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n";
        let first = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        let mut all = first.into_bytes();
        all.extend_from_slice(body);
        all.extend_from_slice(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nGET /n HTTP/1.1\r\n\r\n");
        // fed byte by byte: splits anywhere must not matter
        let pieces: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(verdicts_of(&pieces), vec![None, None, None]);
        assert_eq!(verdicts_of(&[&all]), vec![None, None, None]);
    }

    #[test]
    fn http2_and_upgrades_stop_the_scan() {
        assert_eq!(
            verdicts_of(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"]),
            vec![]
        );
        let v = verdicts_of(&[b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nContent-Length: 1\r\n\r\n"]);
        assert_eq!(v, vec![None]);
    }
}
