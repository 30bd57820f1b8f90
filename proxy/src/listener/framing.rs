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

/// Bytes of a line kept when it is split across reads: enough for any framing
/// header we look at (`Content-Length:` plus a 20-digit value and spaces).
const LINE_KEEP: usize = 64;

/// What a request head said about its framing.
#[derive(Default)]
struct HeadInfo {
    first: bool,
    lengths: u32,
    length: Option<u64>,
    chunked: bool,
    upgrade: bool,
}

enum State {
    /// In a request head. `carry` holds the start of a line split across reads.
    Head {
        info: HeadInfo,
        carry: [u8; LINE_KEEP],
        carry_len: usize,
        carry_total: usize,
    },
    /// Skipping a body of known length.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize {
        digits: u64,
        ok: bool,
        in_ext: bool,
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
        info: HeadInfo {
            first: true,
            ..HeadInfo::default()
        },
        carry: [0; LINE_KEEP],
        carry_len: 0,
        carry_total: 0,
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
    line[name_len..].trim_ascii()
}

/// What one complete header line means for the head.
enum Line {
    Other,
    End,
    Stop,
}

fn classify(info: &mut HeadInfo, line: &[u8], total_len: usize) -> Line {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if info.first {
        if line.is_empty() {
            // Stray CRLF between requests: allowed, ignored.
            return Line::Other;
        }
        info.first = false;
        return if line.starts_with(b"PRI * HTTP/2") {
            Line::Stop
        } else {
            Line::Other
        };
    }
    if line.is_empty() && total_len <= 2 {
        return Line::End;
    }
    match line.first().map(|b| b.to_ascii_lowercase()) {
        Some(b'c') if starts_with_ci(line, b"content-length:") => {
            if total_len > LINE_KEEP {
                // Too long to have been kept whole: stop following this connection.
                return Line::Stop;
            }
            info.lengths += 1;
            info.length = std::str::from_utf8(value(line, 15))
                .ok()
                .and_then(|v| v.parse().ok());
        }
        Some(b't') if starts_with_ci(line, b"transfer-encoding:") => info.chunked = true,
        Some(b'u') if starts_with_ci(line, b"upgrade:") => info.upgrade = true,
        _ => {}
    }
    Line::Other
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
                        self.state = State::ChunkSize {
                            digits: 0,
                            ok: false,
                            in_ext: false,
                        };
                    }
                }
                State::ChunkSize { digits, ok, in_ext } => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        b'\n' => {
                            self.state = match (*ok, *digits) {
                                (true, 0) => State::Trailers { line_len: 0 },
                                (true, n) => State::ChunkData(n),
                                // Malformed: hyper will refuse it; stop following.
                                (false, _) => State::Done,
                            };
                        }
                        b'\r' => {}
                        _ if *in_ext => {}
                        b';' | b' ' | b'\t' => *in_ext = true,
                        _ => match (b as char).to_digit(16) {
                            Some(d) if *digits < (u64::MAX >> 4) => {
                                *digits = (*digits << 4) | u64::from(d);
                                *ok = true;
                            }
                            _ => self.state = State::Done,
                        },
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
                State::Head {
                    info,
                    carry,
                    carry_len,
                    carry_total,
                } => {
                    let Some(pos) = data.iter().position(|&b| b == b'\n') else {
                        // The line goes on in the next read: keep its start.
                        let room = LINE_KEEP - *carry_len;
                        let take = room.min(data.len());
                        carry[*carry_len..*carry_len + take].copy_from_slice(&data[..take]);
                        *carry_len += take;
                        *carry_total += data.len();
                        return;
                    };
                    let verdict = if *carry_total > 0 {
                        let room = LINE_KEEP - *carry_len;
                        let take = room.min(pos);
                        carry[*carry_len..*carry_len + take].copy_from_slice(&data[..take]);
                        let len = *carry_len + take;
                        let total = *carry_total + pos + 1;
                        *carry_len = 0;
                        *carry_total = 0;
                        let kept = *carry;
                        classify(info, &kept[..len], total)
                    } else {
                        classify(info, &data[..pos], pos + 1)
                    };
                    data = &data[pos + 1..];
                    match verdict {
                        Line::Other => {}
                        Line::Stop => self.state = State::Done,
                        Line::End => self.end_head(),
                    }
                }
            }
        }
    }

    fn end_head(&mut self) {
        let State::Head { info, .. } = &self.state else {
            return;
        };
        let verdict = if info.lengths > 0 && info.chunked {
            Some(Ambiguity::LengthAndChunked)
        } else if info.lengths > 1 {
            Some(Ambiguity::DuplicateLength)
        } else {
            None
        };
        let next = if verdict.is_some() || info.upgrade {
            State::Done
        } else if info.chunked {
            State::ChunkSize {
                digits: 0,
                ok: false,
                in_ext: false,
            }
        } else {
            match info.length {
                Some(n) if n > 0 => State::Body(n),
                _ => new_head(),
            }
        };
        self.verdicts.push(verdict);
        self.state = next;
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
