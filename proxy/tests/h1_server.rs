//! The client-facing HTTP/1.1 server, black box: raw bytes written to a TCP socket
//! on the proxy listener and raw responses parsed here, so these tests hold
//! whatever server implementation sits behind the listener. Keep-alive, pipelining,
//! HTTP/1.0, `Connection: close`, HEAD, `Expect: 100-continue`, chunked uploads,
//! bad requests, response framing and idle timeouts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use parking_lot::Mutex;
use switchyard::server::Running;
use switchyard_demo::DemoServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any single read may wait before the test fails instead of hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// A raw HTTP/1.x client: writes bytes, parses responses one after another from
// the same connection (leftover bytes are kept for the next response).
// ---------------------------------------------------------------------------

/// How a response body was delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body by definition (HEAD, 1xx, 204, 304).
    Bodiless,
    Length,
    Chunked,
    /// Read until the server closed the connection.
    Close,
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Names lowercased, in order, repeats kept.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
    framing: Framing,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a comma-separated header (like `Connection`) lists `token`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(2048)]).into_owned()
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        tokio::time::timeout(READ_TIMEOUT, self.stream.write_all(bytes.as_ref()))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// Reads more bytes into the buffer; false at EOF (a reset counts as EOF).
    /// Panics when nothing arrives within `limit`.
    async fn fill(&mut self, limit: Duration) -> bool {
        self.buf.reserve(64 * 1024);
        match tokio::time::timeout(limit, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => panic!(
                "nothing from the proxy within {limit:?}; unread so far: {:?}",
                lossy(&self.buf)
            ),
            Ok(Ok(0)) => false,
            Ok(Ok(_)) => true,
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                false
            }
            Ok(Err(e)) => panic!("read: {e}"),
        }
    }

    /// One line without its CRLF (a bare LF is accepted too).
    async fn line(&mut self) -> String {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return String::from_utf8(line).expect("a UTF-8 line");
            }
            assert!(
                self.fill(READ_TIMEOUT).await,
                "connection closed in the middle of a line: {:?}",
                lossy(&self.buf)
            );
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill(READ_TIMEOUT).await,
                "connection closed with {} of {n} body bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    async fn header_lines(&mut self) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return headers;
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("header line without a colon: {line:?}"));
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }

    /// The next response to a request that was not HEAD.
    async fn response(&mut self) -> RawResponse {
        self.response_to("GET").await
    }

    /// The next response (an interim 1xx one included), to a request with `method`.
    async fn response_to(&mut self, method: &str) -> RawResponse {
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        assert!(
            version == "HTTP/1.1" || version == "HTTP/1.0",
            "not a status line: {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {status_line:?}"));
        let headers = self.header_lines().await;
        let mut resp = RawResponse {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
            framing: Framing::Bodiless,
        };
        if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
            return resp;
        }
        let te = resp
            .headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .next_back();
        if let Some(te) = te {
            if te == "chunked" {
                resp.framing = Framing::Chunked;
                self.chunked_body(&mut resp).await;
            } else {
                resp.framing = Framing::Close;
                resp.body = self.read_until_close().await;
            }
        } else if let Some(len) = resp.header("content-length") {
            let n: usize = len
                .parse()
                .unwrap_or_else(|_| panic!("bad content-length {len:?}"));
            resp.framing = Framing::Length;
            resp.body = self.take(n).await;
        } else {
            resp.framing = Framing::Close;
            resp.body = self.read_until_close().await;
        }
        resp
    }

    async fn chunked_body(&mut self, resp: &mut RawResponse) {
        loop {
            let size_line = self.line().await;
            let size = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
            if size == 0 {
                resp.trailers = self.header_lines().await;
                return;
            }
            let data = self.take(size).await;
            resp.body.extend_from_slice(&data);
            let end = self.line().await;
            assert!(end.is_empty(), "chunk data not followed by CRLF: {end:?}");
        }
    }

    /// Everything until the server closes.
    async fn read_until_close(&mut self) -> Vec<u8> {
        while self.fill(READ_TIMEOUT).await {}
        std::mem::take(&mut self.buf)
    }

    /// Asserts the server closes the connection (within `limit`) without sending
    /// anything more.
    async fn assert_closed_within(&mut self, limit: Duration) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes after the response: {:?}",
            lossy(&self.buf)
        );
        let more = self.fill(limit).await;
        assert!(
            !more,
            "connection still open; the server sent {:?}",
            lossy(&self.buf)
        );
    }

    async fn assert_closed(&mut self) {
        self.assert_closed_within(READ_TIMEOUT).await;
    }
}

// ---------------------------------------------------------------------------
// Setup helpers.
// ---------------------------------------------------------------------------

/// A proxy in front of `backend_urls`; `server_extra` is added to the `server:`
/// section (indented lines). A short grace period keeps shutdown quick.
async fn proxy_for(backend_urls: &[String], server_extra: &str) -> Running {
    let mut yaml = format!(
        "{}  grace_period: 2s\n{server_extra}backends:\n",
        server_yaml()
    );
    for u in backend_urls {
        yaml.push_str(&format!("  - url: \"{u}\"\n"));
    }
    proxy(&yaml).await
}

async fn demo_proxy(name: &str) -> (DemoServer, Running) {
    let d = demo(name).await;
    let p = proxy_for(&[d.url()], "").await;
    (d, p)
}

/// What a [`RawBackend`] answers, and whether it closes the connection after.
struct Reply {
    bytes: Vec<u8>,
    close: bool,
}

/// A hand-written backend for framings the demo upstream does not produce. Reads
/// request heads (bodies are not expected), records them, answers each with
/// `reply(head)`.
struct RawBackend {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    async fn start(reply: fn(&str) -> Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                conns.spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let r = reply(&head);
                        seen.lock().push(head);
                        if s.write_all(&r.bytes).await.is_err() {
                            return;
                        }
                        if r.close {
                            let _ = s.shutdown().await;
                            return;
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self { addr, heads, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().clone()
    }
}

/// The body the chunked and close-delimited raw backends send: 40 KiB in five
/// distinguishable parts.
fn streamed_body() -> Vec<u8> {
    let mut body = Vec::new();
    for part in b"abcde" {
        body.extend(std::iter::repeat_n(*part, 8 * 1024));
    }
    body
}

fn chunked_reply(_head: &str) -> Reply {
    let mut bytes =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for part in streamed_body().chunks(8 * 1024) {
        bytes.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        bytes.extend_from_slice(part);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    Reply {
        bytes,
        close: false,
    }
}

fn close_delimited_reply(_head: &str) -> Reply {
    let mut bytes =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n".to_vec();
    bytes.extend_from_slice(&streamed_body());
    Reply { bytes, close: true }
}

fn ok_reply(_head: &str) -> Reply {
    Reply {
        bytes: b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n"
            .to_vec(),
        close: false,
    }
}

/// Sum of every sample of a Prometheus family (`name` or `name{...}`); None when
/// there is no sample at all.
fn prom_sum(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

fn get_req(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test.example\r\n\r\n")
}

// ---------------------------------------------------------------------------
// Keep-alive and pipelining.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn three_requests_on_one_keep_alive_connection_are_all_answered() {
    let (a, p) = demo_proxy("a").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    for i in 0..3 {
        c.send(get_req("/")).await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.text(), "a\n", "request {i}");
        assert!(
            !r.has_token("connection", "close"),
            "request {i} closes a keep-alive connection: {r:?}"
        );
    }
    assert_eq!(a.control.requests.load(Relaxed), 3);
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn three_pipelined_requests_in_one_write_are_answered_in_order() {
    let (_a, p) = demo_proxy("a").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    let all = format!(
        "{}{}{}",
        get_req("/status?code=201"),
        get_req("/status?code=202"),
        get_req("/status?code=203")
    );
    c.send(all).await;
    for code in [201u16, 202, 203] {
        let r = c.response().await;
        assert_eq!(r.status, code, "{r:?}");
        assert_eq!(r.text(), format!("a says {code}\n"));
    }
    drop(c);
    p.shutdown().await;
}

// ---------------------------------------------------------------------------
// HTTP/1.0 and Connection: close.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn http10_request_without_keep_alive_is_answered_then_closed() {
    let (_a, p) = demo_proxy("a").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send("GET / HTTP/1.0\r\nHost: test.example\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "a\n");
    if r.framing != Framing::Close {
        c.assert_closed().await;
    }
    p.shutdown().await;
}

#[tokio::test]
async fn http10_request_with_keep_alive_gets_a_length_and_a_reusable_connection() {
    let (a, p) = demo_proxy("a").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    let req = "GET / HTTP/1.0\r\nHost: test.example\r\nConnection: keep-alive\r\n\r\n";
    c.send(req).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.framing, Framing::Length, "{r:?}");
    assert_eq!(r.text(), "a\n");
    // An HTTP/1.0 client only keeps the connection when told so.
    assert!(r.has_token("connection", "keep-alive"), "{r:?}");
    c.send(req).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "a\n");
    assert_eq!(a.control.requests.load(Relaxed), 2);
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn connection_close_from_an_http11_client_is_answered_then_closed() {
    let (_a, p) = demo_proxy("a").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send("GET / HTTP/1.1\r\nHost: test.example\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "a\n");
    assert!(r.has_token("connection", "close"), "{r:?}");
    if r.framing != Framing::Close {
        c.assert_closed().await;
    }
    p.shutdown().await;
}

#[tokio::test]
async fn requests_pipelined_behind_connection_close_are_not_answered() {
    let (a, p) = demo_proxy("a").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    let two = format!(
        "GET /status?code=201 HTTP/1.1\r\nHost: test.example\r\nConnection: close\r\n\r\n{}",
        get_req("/status?code=202")
    );
    c.send(two).await;
    let r = c.response().await;
    assert_eq!(r.status, 201, "{r:?}");
    if r.framing != Framing::Close {
        c.assert_closed().await;
    }
    assert_eq!(a.control.requests.load(Relaxed), 1);
    p.shutdown().await;
}

// ---------------------------------------------------------------------------
// HEAD, 100-continue, request bodies.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn head_response_has_no_body_and_the_next_pipelined_response_follows_it() {
    let (_a, p) = demo_proxy("a").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    let two = format!(
        "HEAD /bytes?n=1000 HTTP/1.1\r\nHost: test.example\r\n\r\n{}",
        get_req("/status?code=202")
    );
    c.send(two).await;
    let head = c.response_to("HEAD").await;
    assert_eq!(head.status, 200, "{head:?}");
    // The length a GET would have had, passed on.
    assert_eq!(head.header("content-length"), Some("1000"), "{head:?}");
    // No body bytes: the next thing on the wire is the second response.
    let next = c.response().await;
    assert_eq!(next.status, 202, "{next:?}");
    assert_eq!(next.text(), "a says 202\n");
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn expect_100_continue_gets_an_interim_100_before_the_body_is_sent() {
    let (_a, p) = demo_proxy("a").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    let body = "the body, sent only after 100 Continue";
    c.send(format!(
        "POST /echo HTTP/1.1\r\nHost: test.example\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    ))
    .await;
    // Nothing more is sent until the interim response (READ_TIMEOUT bounds the wait).
    let interim = c.response().await;
    assert_eq!(interim.status, 100, "{interim:?}");
    assert!(interim.body.is_empty());
    c.send(body).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), body);
    // The connection is still in step.
    c.send(get_req("/status?code=202")).await;
    assert_eq!(c.response().await.status, 202);
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn chunked_upload_with_extensions_and_trailers_reaches_the_backend_intact() {
    let (_a, p) = demo_proxy("a").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    let req = concat!(
        "POST /echo HTTP/1.1\r\nHost: test.example\r\nTransfer-Encoding: chunked\r\n\r\n",
        "4;name=value\r\nwiki\r\n",
        "5\r\npedia\r\n",
        "e;ext\r\n in\r\n\r\nchunks.\r\n",
        "0\r\nX-Checksum: 1234\r\n\r\n",
    );
    // The next request right behind the trailers: they must be consumed exactly.
    c.send(format!("{req}{}", get_req("/status?code=202")))
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "wikipedia in\r\n\r\nchunks.");
    let next = c.response().await;
    assert_eq!(next.status, 202, "{next:?}");
    assert_eq!(next.text(), "a says 202\n");
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn post_with_a_body_then_a_pipelined_get_are_both_answered() {
    let (a, p) = demo_proxy("a").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    // A body that looks like a request must be taken as body.
    let body = "GET /status?code=500 HTTP/1.1\r\nHost: x\r\n\r\n";
    c.send(format!(
        "POST /echo HTTP/1.1\r\nHost: test.example\r\nContent-Length: {}\r\n\r\n{body}{}",
        body.len(),
        get_req("/status?code=202")
    ))
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), body);
    let next = c.response().await;
    assert_eq!(next.status, 202, "{next:?}");
    assert_eq!(next.text(), "a says 202\n");
    assert_eq!(a.control.requests.load(Relaxed), 2);
    drop(c);
    p.shutdown().await;
}

/// A body answered without being read (no backend: 503) is read and dropped, and
/// the connection carries on with the request pipelined behind it.
#[tokio::test]
async fn an_unwanted_small_body_is_skipped_and_the_connection_kept() {
    let p = proxy_for(&[], "").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    let body = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    c.send(format!(
        "POST /upload HTTP/1.1\r\nHost: test.example\r\nContent-Length: {}\r\n\r\n{body}{}",
        body.len(),
        get_req("/second")
    ))
    .await;
    let first = c.response().await;
    assert_eq!(first.status, 503, "{first:?}");
    assert!(!first.has_token("connection", "close"), "{first:?}");
    let second = c.response().await;
    assert_eq!(second.status, 503, "{second:?}");
    // Exactly two answers: the body was not taken for a request.
    c.send(get_req("/third")).await;
    assert_eq!(c.response().await.status, 503);
    drop(c);
    p.shutdown().await;
}

// ---------------------------------------------------------------------------
// Bad requests: refused, not forwarded, connection closed.
// ---------------------------------------------------------------------------

/// Sends `req` on a fresh connection and returns the response (for the caller to
/// check its status); asserts the connection closes and the backend saw nothing.
async fn refused(p: &Running, a: &DemoServer, req: &[u8]) -> RawResponse {
    let before = a.control.requests.load(Relaxed);
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send(req).await;
    let r = c.response().await;
    if r.framing != Framing::Close {
        c.assert_closed().await;
    }
    assert_eq!(
        a.control.requests.load(Relaxed),
        before,
        "forwarded: {:?}",
        lossy(req)
    );
    r
}

#[tokio::test]
async fn malformed_request_line_gets_400_and_close() {
    let (a, p) = demo_proxy("a").await;
    let r = refused(&p, &a, b"GARBAGE\r\n\r\n").await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = refused(&p, &a, b"GET /\r\nHost: test.example\r\n\r\n").await;
    assert_eq!(r.status, 400, "no version: {r:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn header_line_without_colon_gets_400_and_close() {
    let (a, p) = demo_proxy("a").await;
    let r = refused(
        &p,
        &a,
        b"GET / HTTP/1.1\r\nHost: test.example\r\nNoColonHere\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn non_numeric_content_length_gets_400_and_close() {
    let (a, p) = demo_proxy("a").await;
    let r = refused(
        &p,
        &a,
        b"POST /echo HTTP/1.1\r\nHost: test.example\r\nContent-Length: abc\r\n\r\nabc",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn transfer_encoding_other_than_chunked_is_refused_and_not_forwarded() {
    let (a, p) = demo_proxy("a").await;
    let r = refused(
        &p,
        &a,
        b"POST /echo HTTP/1.1\r\nHost: test.example\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    )
    .await;
    assert!(r.status == 400 || r.status == 501, "{r:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn more_headers_than_max_headers_gets_431_and_close() {
    let a = demo("a").await;
    let p = proxy_for(&[a.url()], "  max_headers: 20\n").await;
    // Well under the limit: fine.
    let few: String = (0..10).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send(format!("GET / HTTP/1.1\r\nHost: test.example\r\n{few}\r\n"))
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    drop(c);
    // Well over it (the default of 100 would have let these through).
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nHost: test.example\r\n{many}\r\n");
    let r = refused(&p, &a, req.as_bytes()).await;
    assert_eq!(r.status, 431, "{r:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn length_and_chunked_together_get_400_and_the_pipelined_request_never_reaches_the_backend() {
    let (a, p) = demo_proxy("a").await;
    // Read as chunked the body is empty and `GET /smuggled` is a second request;
    // read by length it is body. Either way it must not be forwarded.
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: test.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{}",
        get_req("/smuggled")
    );
    let r = refused(&p, &a, req.as_bytes()).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(a.control.requests.load(Relaxed), 0);
    p.shutdown().await;
}

// ---------------------------------------------------------------------------
// Request targets and response framing.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn absolute_form_target_is_forwarded_in_origin_form() {
    let b = RawBackend::start(ok_reply).await;
    let p = proxy_for(&[b.url()], "").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send("GET http://example.com/some/path?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "ok\n");
    let heads = b.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /some/path?q=1 HTTP/1.1\r\n"),
        "{:?}",
        heads[0]
    );
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn a_3mb_response_arrives_complete_and_the_connection_is_reused_afterwards() {
    let (a, p) = demo_proxy("a").await;
    let n = 3 * 1024 * 1024 + 17;
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send(get_req(&format!("/bytes?n={n}"))).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), n);
    assert!(r.body.iter().all(|&b| b == b'x'));
    c.send(get_req("/status?code=202")).await;
    let next = c.response().await;
    assert_eq!(next.status, 202, "{next:?}");
    assert_eq!(next.text(), "a says 202\n");
    assert_eq!(a.control.requests.load(Relaxed), 2);
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn a_chunked_backend_response_reaches_an_http11_client_complete() {
    let b = RawBackend::start(chunked_reply).await;
    let p = proxy_for(&[b.url()], "").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    for i in 0..2 {
        c.send(get_req("/stream")).await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert!(r.body == streamed_body(), "request {i}: body differs");
        assert_ne!(
            r.framing,
            Framing::Close,
            "an HTTP/1.1 client needs no close"
        );
    }
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn a_chunked_backend_response_reaches_an_http10_client_complete() {
    let b = RawBackend::start(chunked_reply).await;
    let p = proxy_for(&[b.url()], "").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send("GET /stream HTTP/1.0\r\nHost: test.example\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    // HTTP/1.0 has no chunked coding: a length, or the end of the connection.
    assert_ne!(r.framing, Framing::Chunked, "{:?}", r.headers);
    assert!(r.body == streamed_body(), "body differs");
    if r.framing != Framing::Close {
        c.assert_closed().await;
    }
    p.shutdown().await;
}

#[tokio::test]
async fn a_chunked_backend_response_to_an_http10_keep_alive_client_is_complete() {
    let b = RawBackend::start(chunked_reply).await;
    let p = proxy_for(&[b.url()], "").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send("GET /stream HTTP/1.0\r\nHost: test.example\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(r.framing, Framing::Chunked, "{:?}", r.headers);
    assert!(r.body == streamed_body(), "body differs");
    // Without a length the end is the close; with one the connection may stay.
    if r.framing == Framing::Length {
        c.send("GET /stream HTTP/1.0\r\nHost: test.example\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let r = c.response().await;
        assert!(r.body == streamed_body(), "second body differs");
    }
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn a_close_delimited_backend_response_reaches_an_http11_client_complete() {
    let b = RawBackend::start(close_delimited_reply).await;
    let p = proxy_for(&[b.url()], "").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    for i in 0..2 {
        c.send(get_req("/stream")).await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert!(r.body == streamed_body(), "request {i}: body differs");
        // The backend's close is its framing, not the client's: the client keeps
        // its connection.
        assert_ne!(r.framing, Framing::Close, "request {i}: {:?}", r.headers);
    }
    assert_eq!(b.heads().len(), 2);
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn a_close_delimited_response_to_an_http10_client_does_not_promise_keep_alive() {
    let b = RawBackend::start(chunked_reply).await;
    let p = proxy_for(&[b.url()], "").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send("GET /stream HTTP/1.0\r\nHost: test.example\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body == streamed_body(), "body differs");
    if r.framing == Framing::Close {
        assert!(
            !r.has_token("connection", "keep-alive"),
            "keep-alive promised on a close-delimited response: {:?}",
            r.headers
        );
    }
    drop(c);
    p.shutdown().await;
}

/// An IMF-fixdate, like `Sun, 06 Nov 1994 08:49:37 GMT`.
fn is_http_date(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 29
        && v.ends_with(" GMT")
        && b[3] == b','
        && b[4] == b' '
        && b[19] == b':'
        && b[22] == b':'
}

#[tokio::test]
async fn a_backend_response_without_a_date_is_given_one() {
    // RFC 9110 §6.6.1: a recipient with a clock that forwards a response without
    // Date must add one.
    let b = RawBackend::start(ok_reply).await;
    let p = proxy_for(&[b.url()], "").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send(get_req("/")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("date").is_some_and(is_http_date),
        "{:?}",
        r.headers
    );
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn the_proxys_own_4xx_responses_carry_a_date() {
    // RFC 9110 §6.6.1: an origin server with a clock must send Date in 4xx answers;
    // these the proxy makes itself.
    let (a, p) = demo_proxy("a").await;
    let r = refused(&p, &a, b"GARBAGE\r\n\r\n").await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.header("date").is_some_and(is_http_date),
        "{:?}",
        r.headers
    );
    let r = refused(
        &p,
        &a,
        b"POST /echo HTTP/1.1\r\nHost: test.example\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.header("date").is_some_and(is_http_date),
        "{:?}",
        r.headers
    );
    p.shutdown().await;
}

// ---------------------------------------------------------------------------
// Timeouts and aborted clients.
// ---------------------------------------------------------------------------

/// Waits (up to 10 s, no lower bound) for the proxy to close a connection the client
/// has gone silent on; it may say 408 first, nothing else.
async fn closed_after_silence(c: &mut RawClient) {
    let mut got = std::mem::take(&mut c.buf);
    while c.fill(Duration::from_secs(10)).await {
        got.append(&mut c.buf);
    }
    got.append(&mut c.buf);
    let text = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.0 408"),
        "a silent client got {text:?}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let a = demo("a").await;
    let p = proxy_for(&[a.url()], "  header_read_timeout: 1s\n").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send(get_req("/")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    // Then silence.
    closed_after_silence(&mut c).await;
    p.shutdown().await;
}

#[tokio::test]
async fn a_stalled_request_head_is_cut_off_after_the_header_read_timeout() {
    let a = demo("a").await;
    let p = proxy_for(&[a.url()], "  header_read_timeout: 1s\n").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send("GET / HTTP/1.1\r\nHost: test.example\r\nX-Slow: ")
        .await;
    closed_after_silence(&mut c).await;
    assert_eq!(a.control.requests.load(Relaxed), 0);
    p.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed_after_the_header_read_timeout() {
    let a = demo("a").await;
    let p = proxy_for(&[a.url()], "  header_read_timeout: 1s\n").await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    closed_after_silence(&mut c).await;
    p.shutdown().await;
}

/// Polls the admin `/metrics` until every family in `names` sums to 0; panics with
/// the last values seen after `limit`.
async fn wait_for_zero(admin: SocketAddr, names: &[&str], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let prom = prometheus_text(admin).await;
        let values: Vec<(&str, Option<f64>)> =
            names.iter().map(|n| (*n, prom_sum(&prom, n))).collect();
        if values.iter().all(|(_, v)| *v == Some(0.0)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not back to 0 after {limit:?}: {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a request the backend answers slowly, waits until the backend has it, then
/// hangs up without reading the answer.
async fn abandon_a_slow_request(p: &Running, a: &DemoServer) {
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send(get_req("/sleep?ms=1500")).await;
    let ctl = a.control.clone();
    wait_until(Duration::from_secs(5), "the request at the backend", || {
        let ctl = ctl.clone();
        async move { ctl.requests.load(Relaxed) == 1 }
    })
    .await;
    drop(c);
}

#[tokio::test]
async fn a_client_leaving_during_a_slow_request_leaves_the_proxy_healthy() {
    let (a, p) = demo_proxy("a").await;
    abandon_a_slow_request(&p, &a).await;
    // Other clients are served meanwhile and after.
    let mut c = RawClient::connect(p.proxy_addr).await;
    for _ in 0..3 {
        c.send(get_req("/status?code=202")).await;
        let r = c.response().await;
        assert_eq!(r.status, 202, "{r:?}");
        assert_eq!(r.text(), "a says 202\n");
    }
    drop(c);
    // The abandoned request does not stay counted against the backend, nor its
    // connection.
    wait_for_zero(
        p.admin_addr,
        &[
            "switchyard_backend_active_requests",
            "switchyard_connections_active",
        ],
        Duration::from_secs(10),
    )
    .await;
    let mut c = RawClient::connect(p.proxy_addr).await;
    c.send(get_req("/")).await;
    assert_eq!(c.response().await.status, 200);
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn requests_in_flight_returns_to_zero_after_a_client_leaves_mid_request() {
    let (a, p) = demo_proxy("a").await;
    abandon_a_slow_request(&p, &a).await;
    wait_for_zero(
        p.admin_addr,
        &["switchyard_requests_in_flight"],
        Duration::from_secs(10),
    )
    .await;
    p.shutdown().await;
}
