//! Edge hardening, round two (issue #22): what a hostile client found, each on raw
//! sockets (HTTP/2 as raw frames): idle and half-sent HTTP/2 connections, clients
//! that stop reading, the Host rules, chunk sizes, Transfer-Encoding, HTTP/2 stream
//! errors and reset floods.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Sends raw bytes and returns the proxy's answer: one response, or what came
/// before it closed or 10 s passed.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_one_response(&mut s, Duration::from_secs(10)).await
}

fn status(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

// === raw HTTP/2 ===

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(0x4, 0, 0, &p)
}

/// An HPACK block: GET, http, `path`, `authority`, and `extra` literal lines (no
/// Huffman, no indexing).
fn request_block(path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    b.push(0x04);
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    b.push(0x01);
    b.push(authority.len() as u8);
    b.extend_from_slice(authority.as_bytes());
    for (n, v) in extra {
        b.push(0x00);
        b.push(n.len() as u8);
        b.extend_from_slice(n.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// END_STREAM | END_HEADERS.
fn get(stream: u32, path: &str) -> Vec<u8> {
    frame(0x1, 0x5, stream, &request_block(path, "a.example", &[]))
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads one frame; `None` when the connection closed.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(s: &mut R) -> Option<Frame> {
    let mut h = [0u8; 9];
    s.read_exact(&mut h).await.ok()?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Opens an h2c connection: preface, `pairs` as SETTINGS, and the ACK of the
/// server's SETTINGS is left to [`answer`].
async fn h2c(addr: SocketAddr, pairs: &[(u16, u32)]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&settings(pairs));
    s.write_all(&hello).await.unwrap();
    s
}

/// What a well-behaved idle client does with a frame: ACK SETTINGS, answer PING.
async fn answer(s: &mut TcpStream, f: &Frame) {
    match f.kind {
        0x4 if f.flags & 0x1 == 0 => s.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap_or(()),
        0x6 if f.flags & 0x1 == 0 => s
            .write_all(&frame(0x6, 0x1, 0, &f.payload))
            .await
            .unwrap_or(()),
        _ => {}
    }
}

/// Reads frames (answering SETTINGS and PING) until `want` matches one; `None`
/// when the connection closed first.
async fn until(s: &mut TcpStream, want: impl Fn(&Frame) -> bool) -> Option<Frame> {
    loop {
        let f = read_frame(s).await?;
        if want(&f) {
            return Some(f);
        }
        answer(s, &f).await;
    }
}

/// A stream's response: its `:status` (the first HPACK byte for the static
/// indexed ones) and the DATA bytes, until END_STREAM.
async fn response(s: &mut TcpStream, stream: u32) -> (u8, Vec<u8>) {
    let head = until(s, |f| f.kind == 0x1 && f.stream == stream)
        .await
        .expect("response headers");
    let mut data = Vec::new();
    if head.flags & 0x1 != 0 {
        return (head.payload[0], data);
    }
    loop {
        let f = until(s, |f| f.stream == stream)
            .await
            .expect("response body");
        if f.kind == 0x0 {
            data.extend_from_slice(&f.payload);
            if f.flags & 0x1 != 0 {
                return (head.payload[0], data);
            }
            // Keep the windows open.
            let inc = (f.payload.len() as u32).max(1).to_be_bytes();
            s.write_all(&frame(0x8, 0, 0, &inc)).await.unwrap();
            s.write_all(&frame(0x8, 0, stream, &inc)).await.unwrap();
        } else if f.kind == 0x3 {
            panic!("stream {stream} reset");
        }
    }
}

/// `:status: 200` as the first byte of a header block (static index 8).
const STATUS_200: u8 = 0x88;

// === a backend that counts its open connections ===

/// A raw backend answering every request with a `size`-byte body written as fast
/// as the proxy takes it; `open` counts the connections it still serves (one that
/// the proxy stops reading without closing stays open).
async fn big_backend(size: u64) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let open = count.clone();
            tokio::spawn(async move {
                open.fetch_add(1, Relaxed);
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => {
                            open.fetch_sub(1, Relaxed);
                            return;
                        }
                    }
                }
                let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = size;
                let mut ok = s.write_all(h.as_bytes()).await.is_ok();
                while ok && left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    ok = s.write_all(&chunk[..n]).await.is_ok();
                    left -= n as u64;
                }
                // Sent (or refused): wait for the proxy to close its end.
                let _ = s.read(&mut buf).await;
                open.fetch_sub(1, Relaxed);
            });
        }
    });
    (addr, open)
}

async fn metric(admin: SocketAddr, name: &str) -> u64 {
    let text = prometheus_text(admin).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

// === finding 1: idle and half-sent HTTP/2 connections ===

/// Must show: with `header_read_timeout: 2s` and `max_connections: 10`, ten h2c
/// connections that only answer PINGs are closed in time, and a new client is
/// served. (Before: they held every slot for good, and new clients got 503.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2c_connections_are_closed_and_free_their_slots() {
    let a = demo("a").await;
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  header_read_timeout: 2s\n  max_connections: 10\n{}",
        backends_yaml(&[(&a, 1)])
    ))
    .await;
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut s = h2c(p.proxy_addr, &[]).await;
        idle.push(tokio::spawn(async move {
            // Answers everything, sends nothing else; ends when the proxy closes.
            let goaway = until(&mut s, |f| f.kind == 0x7).await.is_some();
            let closed = until(&mut s, |_| false).await.is_none();
            (goaway, closed)
        }));
    }
    let admin = p.admin_addr;
    wait_until(
        Duration::from_secs(10),
        "ten h2c connections",
        || async move { metric(admin, "switchyard_connections_active").await == 10 },
    )
    .await;
    for conn in idle {
        let (goaway, closed) = tokio::time::timeout(Duration::from_secs(60), conn)
            .await
            .expect("an idle h2c connection closed by the proxy")
            .unwrap();
        assert!(goaway && closed);
    }
    wait_until(Duration::from_secs(20), "slots freed", || async move {
        metric(admin, "switchyard_connections_active").await == 0
    })
    .await;
    let answer = exchange(
        p.proxy_addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status(&answer).starts_with("HTTP/1.1 200"), "{answer}");
    assert!(metric(p.admin_addr, "switchyard_http2_timeouts_total").await >= 10);
    p.shutdown().await;
}

/// A HEADERS block that never ends (no END_HEADERS, no CONTINUATION) is an
/// unfinished head: closed after `header_read_timeout`, like HTTP/1.1's.
#[tokio::test]
async fn an_unfinished_h2_headers_block_is_closed_after_the_header_timeout() {
    let a = demo("a").await;
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  header_read_timeout: 2s\n{}",
        backends_yaml(&[(&a, 1)])
    ))
    .await;
    let mut s = h2c(p.proxy_addr, &[]).await;
    // The server's SETTINGS acknowledged first: nothing may come between a
    // HEADERS frame and its CONTINUATION.
    let settings = until(&mut s, |f| f.kind == 0x4 && f.flags & 0x1 == 0)
        .await
        .unwrap();
    answer(&mut s, &settings).await;
    let block = request_block("/", "a.example", &[("x-pad", "1")]);
    s.write_all(&frame(0x1, 0x1, 1, &block)).await.unwrap();
    // No CONTINUATION, ever (and so no PING answer either): the connection ends.
    let closed = tokio::time::timeout(Duration::from_secs(25), async {
        while let Some(f) = read_frame(&mut s).await {
            assert!(
                !(f.kind == 0x7 && f.payload[4..8] == 1u32.to_be_bytes()),
                "refused as a protocol error instead"
            );
        }
    });
    closed
        .await
        .expect("closed well before h2's own keep-alive would (30 s + 20 s)");
    assert_eq!(a.control.requests.load(Relaxed), 0);
    p.shutdown().await;
}

// === finding 2: clients that stop reading ===

/// Must show: with `send_timeout: 3s`, five clients that never read a 200 MB
/// response hold no backend connection 10 s later (before: pinned for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_release_their_backend_connections() {
    let (backend, open) = big_backend(200_000_000).await;
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  send_timeout: 3s\nbackends:\n  - url: \"http://{backend}\"\n"
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let mut s = sock.connect(p.proxy_addr).await.unwrap();
        s.write_all(b"GET /bytes HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        clients.push(s); // never read
    }
    let counted = open.clone();
    wait_until(Duration::from_secs(10), "five backend exchanges", || {
        let open = counted.clone();
        async move { open.load(Relaxed) == 5 }
    })
    .await;
    wait_until(
        Duration::from_secs(60),
        "backend connections released",
        || {
            let open = open.clone();
            async move { open.load(Relaxed) == 0 }
        },
    )
    .await;
    assert_eq!(
        metric(p.admin_addr, "switchyard_send_timeouts_total").await,
        5
    );
    drop(clients);
    p.shutdown().await;
}

/// The same over HTTP/2 with the client's window shut (initial window 0): the
/// stream's backend exchange is closed after `send_timeout`.
#[tokio::test]
async fn an_h2_window_left_shut_releases_the_backend_connection() {
    let (backend, open) = big_backend(100_000_000).await;
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  send_timeout: 2s\n  header_read_timeout: 30s\nbackends:\n  - url: \"http://{backend}\"\n"
    ))
    .await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 0.
    let mut s = h2c(p.proxy_addr, &[(0x4, 0)]).await;
    s.write_all(&get(1, "/bytes")).await.unwrap();
    let counted = open.clone();
    wait_until(Duration::from_secs(10), "the backend exchange", || {
        let open = counted.clone();
        async move { open.load(Relaxed) == 1 }
    })
    .await;
    let reader = tokio::spawn(async move {
        let _ = until(&mut s, |_| false).await;
        s
    });
    wait_until(
        Duration::from_secs(60),
        "backend connection released",
        || {
            let open = open.clone();
            async move { open.load(Relaxed) == 0 }
        },
    )
    .await;
    assert_eq!(
        metric(p.admin_addr, "switchyard_send_timeouts_total").await,
        1
    );
    reader.abort();
    p.shutdown().await;
}

// === findings 3-5: the Host rules ===

#[tokio::test]
async fn host_must_be_there_once_and_an_absolute_target_wins() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    // Two Host lines: 400, nothing forwarded.
    let answer = exchange(
        p.proxy_addr,
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    )
    .await;
    assert!(status(&answer).starts_with("HTTP/1.1 400"), "{answer}");
    // No Host on HTTP/1.1: 400 at once (the body it announces is never waited for).
    let answer = exchange(
        p.proxy_addr,
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
    )
    .await;
    assert!(status(&answer).starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(a.control.requests.load(Relaxed), 0);
    // HTTP/1.0 needs none.
    let answer = exchange(p.proxy_addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(status(&answer).starts_with("HTTP/1.1 200"), "{answer}");
    // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2).
    let answer = exchange(
        p.proxy_addr,
        b"GET http://other.example/headers HTTP/1.1\r\nHost: victim.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status(&answer).starts_with("HTTP/1.1 200"), "{answer}");
    let seen: serde_json::Value = serde_json::from_str(body(&answer)).expect(&answer);
    assert_eq!(seen["host"], "other.example", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "other.example", "{seen}");
    p.shutdown().await;
}

/// Over HTTP/2, `:authority` wins over a `host` line (RFC 9113 §8.3.1).
#[tokio::test]
async fn h2_authority_wins_over_a_host_header() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let mut s = h2c(p.proxy_addr, &[]).await;
    let block = request_block("/headers", "a.example", &[("host", "b.example")]);
    s.write_all(&frame(0x1, 0x5, 1, &block)).await.unwrap();
    let (code, data) = tokio::time::timeout(Duration::from_secs(10), response(&mut s, 1))
        .await
        .expect("answered");
    assert_eq!(code, STATUS_200);
    let seen: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(seen["host"], "a.example", "{seen}");
    assert_eq!(seen["x-forwarded-host"], "a.example", "{seen}");
    p.shutdown().await;
}

// === findings 6-7: chunk sizes and Transfer-Encoding ===

/// A chunk size no body can have is 400 at once (before: the rest of the stream
/// was taken as chunk data and the client got 504 after 30 s).
#[tokio::test]
async fn an_impossible_chunk_size_is_refused_at_once() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let answer = exchange(
        p.proxy_addr,
        b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(status(&answer).starts_with("HTTP/1.1 400"), "{answer:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn transfer_encoding_is_one_chunked_or_refused() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    for (req, want) in [
        (
            &b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n"[..],
            "HTTP/1.1 400",
        ),
        (
            b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 501",
        ),
    ] {
        let answer = exchange(p.proxy_addr, req).await;
        assert!(
            status(&answer).starts_with(want),
            "{}: {answer}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(a.control.requests.load(Relaxed), 0);
    p.shutdown().await;
}

// === finding 8: HTTP/2 stream errors and the reset budget ===

/// WINDOW_UPDATE with increment 0 on a stream resets that stream only; the
/// connection goes on serving (before: GOAWAY for the whole connection).
#[tokio::test]
async fn a_zero_window_update_on_a_stream_is_a_stream_error() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let mut s = h2c(p.proxy_addr, &[]).await;
    // Stream 1 waits on the backend; its zero WINDOW_UPDATE ends it alone.
    s.write_all(&get(1, "/sleep?ms=3000")).await.unwrap();
    s.write_all(&frame(0x8, 0, 1, &0u32.to_be_bytes()))
        .await
        .unwrap();
    s.write_all(&get(3, "/")).await.unwrap();
    let (code, data) = tokio::time::timeout(Duration::from_secs(10), response(&mut s, 3))
        .await
        .expect("stream 3 answered on the same connection");
    assert_eq!(code, STATUS_200);
    assert_eq!(data, b"a\n");
    p.shutdown().await;
}

/// Streams reset right after the proxy accepted them count against a budget: past
/// it the connection ends with GOAWAY(ENHANCE_YOUR_CALM) (before: thousands of
/// requests reached the backend first).
#[tokio::test]
async fn resets_right_after_acceptance_end_the_connection() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let (mut rx, mut tx) = h2c(p.proxy_addr, &[]).await.into_split();
    // The proxy's frames, read aside: its GOAWAY ends the loop below.
    let goaway = Arc::new(parking_lot::Mutex::new(None::<Frame>));
    let seen = goaway.clone();
    let reader = tokio::spawn(async move {
        while let Some(f) = read_frame(&mut rx).await {
            if f.kind == 0x7 {
                *seen.lock() = Some(f);
            }
        }
    });
    let mut stream = 1u32;
    for _ in 0..400 {
        if goaway.lock().is_some() {
            break;
        }
        let before = a.control.requests.load(Relaxed);
        if tx.write_all(&get(stream, "/sleep?ms=5000")).await.is_err() {
            break;
        }
        // Accepted: the backend has it. Then the client cancels.
        let control = a.control.clone();
        let accepted = tokio::time::timeout(Duration::from_secs(10), async move {
            while control.requests.load(Relaxed) == before {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        if accepted.is_err() {
            break;
        }
        let cancel = frame(0x3, 0, stream, &0x8u32.to_be_bytes());
        if tx.write_all(&cancel).await.is_err() {
            break;
        }
        stream += 2;
    }
    tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the proxy closed the connection")
        .unwrap();
    let goaway = goaway.lock().take();
    let goaway = goaway.expect("GOAWAY after the reset budget");
    assert_eq!(
        &goaway.payload[4..8],
        &0xbu32.to_be_bytes(),
        "ENHANCE_YOUR_CALM"
    );
    let reached = a.control.requests.load(Relaxed);
    assert!(reached <= 150, "{reached} requests reached the backend");
    assert_eq!(
        metric(p.admin_addr, "switchyard_http2_reset_floods_total").await,
        1
    );
    p.shutdown().await;
}

/// A backend that stops reading an upload (and never answers) is given up on
/// after `send_timeout`, not held until `timeouts.request`.
#[tokio::test]
async fn a_backend_that_stops_reading_an_upload_is_given_up_on() {
    // Reads the head, then nothing, and never answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut head = [0u8; 256];
        let _ = s.read(&mut head).await;
        tokio::time::sleep(Duration::from_secs(600)).await;
        drop(s);
    });
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  send_timeout: 2s\ntimeouts:\n  request: 120s\nbackends:\n  - url: \"http://{backend}\"\n"
    ))
    .await;
    let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
    let size: u64 = 200_000_000;
    s.write_all(
        format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (mut rx, mut tx) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'u'; 64 * 1024];
        let mut sent = 0u64;
        while sent < size {
            if tx.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
    });
    // The answer comes well before `timeouts.request` (120 s).
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(60), rx.read(&mut buf))
        .await
        .expect("answered before the request timeout")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer:?}");
    writer.abort();
    p.shutdown().await;
}
