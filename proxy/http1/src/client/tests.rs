//! Tests of the inline HTTP/1.1 upstream client against real sockets: a
//! `TcpListener` on 127.0.0.1 plays the backend, reads the request bytes and
//! writes the raw response bytes each test chooses. A client's request body is a
//! real hyper `Incoming`, fed from another raw socket (see [`incoming`]).

use std::future::{Future, poll_fn};
use std::time::Duration;

use http::header::HeaderName;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use smallvec::smallvec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::body::{Step, chunk_step};
use crate::codec::{
    Chunk, MAX_HEADERS, content_length, expects_body, has_token, hop_by_hop, parse_response,
    put_dec, put_hex,
};

/// A request body as the proxy hands one over: none, or a client's body streamed
/// as it arrives (hyper's `Incoming` here).
enum ReqBody {
    Empty,
    Incoming(Incoming),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Incoming(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Incoming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Incoming(b) => b.size_hint(),
        }
    }
}

/// Bound on any single wait: a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("nothing happened within {WAIT:?}"),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------
// The backend's end of a connection.
// ---------------------------------------------------------------------------

/// The far end of one TCP connection. Bytes read beyond what a test asked for
/// are kept for its next read, so request boundaries are exact.
struct Server {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Server {
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = within(self.stream.read(&mut chunk))
            .await
            .expect("backend read");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads through the first `pat` (included).
    async fn read_until(&mut self, pat: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = find(&self.buf, pat) {
                return self.buf.drain(..i + pat.len()).collect();
            }
            let n = self.fill().await;
            assert!(
                n > 0,
                "EOF while waiting for {:?}; have {:?}",
                text(pat),
                text(&self.buf)
            );
        }
    }

    /// The request (or response) head, through its blank line.
    async fn read_head(&mut self) -> String {
        String::from_utf8(self.read_until(b"\r\n\r\n").await).expect("UTF-8 head")
    }

    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let got = self.fill().await;
            assert!(got > 0, "EOF with {} of {n} bytes", self.buf.len());
        }
        self.buf.drain(..n).collect()
    }

    /// Everything until the other side closes (a reset counts as a close).
    async fn read_to_end(&mut self) -> Vec<u8> {
        loop {
            let mut chunk = [0u8; 16 * 1024];
            match within(self.stream.read(&mut chunk)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        std::mem::take(&mut self.buf)
    }

    async fn write(&mut self, bytes: &[u8]) {
        within(self.stream.write_all(bytes))
            .await
            .expect("backend write");
    }

    /// Decodes a chunked body: its data and its trailer section (the field
    /// lines, without the final blank line).
    async fn read_chunked(&mut self) -> (Vec<u8>, Vec<u8>) {
        let mut data = Vec::new();
        loop {
            let line = self.read_until(b"\r\n").await;
            let hex = std::str::from_utf8(&line[..line.len() - 2]).expect("chunk size");
            assert_eq!(hex, hex.to_ascii_lowercase(), "lower-case hex expected");
            let size = usize::from_str_radix(hex, 16).expect("hex chunk size");
            if size == 0 {
                break;
            }
            data.extend(self.read_exact(size).await);
            assert_eq!(self.read_exact(2).await, b"\r\n", "CRLF after chunk data");
        }
        let mut trailers = Vec::new();
        loop {
            let line = self.read_until(b"\r\n").await;
            if line == b"\r\n" {
                return (data, trailers);
            }
            trailers.extend(line);
        }
    }
}

async fn tcp_pair() -> (TcpStream, Server) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (client, accepted) =
        within(async { tokio::join!(TcpStream::connect(addr), listener.accept()) }).await;
    let server = Server {
        stream: accepted.expect("accept").0,
        buf: Vec::new(),
    };
    (client.expect("connect"), server)
}

/// A fresh upstream connection and the backend's end of it.
async fn pair() -> (Box<Conn>, Server) {
    let (client, server) = tcp_pair().await;
    (Conn::new(Io::Plain(std::sync::Arc::new(client))), server)
}

/// Waits until the runtime saw the connection become readable (data, a close or
/// a reset from the backend): an event to wait for instead of sleeping.
async fn readable(conn: &Conn) {
    match &conn.io {
        Io::Plain(s) => within(s.readable()).await.expect("readable"),
        Io::Tls(_) => unreachable!("plain connections only"),
    }
}

// ---------------------------------------------------------------------------
// Client request bodies: hyper's `Incoming`, as the proxy gets it.
// ---------------------------------------------------------------------------

/// Where an [`Incoming`] comes from: a hyper client connection whose response
/// body is the `Incoming`, and the raw socket (`src`) the test writes that body
/// on. Dropping `src` mid-body makes the `Incoming` fail.
struct Feed {
    src: Server,
    _sender: SendRequest<Empty<Bytes>>,
}

/// An `Incoming` framed by the response head in `first` (with `content-length`
/// it has an exact size; chunked, it has none); `first` may carry the start of
/// the body, the rest can be written on `Feed::src` later.
async fn incoming(first: &[u8]) -> (Incoming, Feed) {
    let (tcp, mut src) = tcp_pair().await;
    let (mut sender, conn) = within(hyper::client::conn::http1::handshake(TokioIo::new(tcp)))
        .await
        .expect("hyper handshake");
    tokio::spawn(conn);
    let sent = sender.send_request(
        Request::get("/")
            .body(Empty::<Bytes>::new())
            .expect("request"),
    );
    let (resp, ()) = within(async {
        tokio::join!(sent, async {
            src.read_head().await;
            src.write(first).await;
        })
    })
    .await;
    let body = resp.expect("source response").into_body();
    (
        body,
        Feed {
            src,
            _sender: sender,
        },
    )
}

// ---------------------------------------------------------------------------
// Requests, exchanges, responses.
// ---------------------------------------------------------------------------

fn req(method: Method, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    b.body(()).expect("request").into_parts().0
}

fn get(uri: &str) -> Parts {
    req(Method::GET, uri, &[("host", "client.example")])
}

fn start(conn: Box<Conn>, parts: &Parts, body: ReqBody) -> Exchange<ReqBody> {
    Exchange::start(conn, parts, None, &HeaderMap::new(), body, false).expect("start")
}

type Outcome = Result<Response<UpstreamBody<ReqBody>>, SendError<ReqBody>>;

fn describe(e: &SendError<ReqBody>) -> String {
    match e {
        SendError::Stale(_) => "Stale".to_string(),
        SendError::Failed(e) => format!("Failed({e:?})"),
    }
}

fn ok(r: Outcome) -> Response<UpstreamBody<ReqBody>> {
    match r {
        Ok(resp) => resp,
        Err(e) => panic!("expected a response, got {}", describe(&e)),
    }
}

fn failed(r: Outcome) -> UpstreamError {
    match r {
        Err(SendError::Failed(e)) => e,
        Err(SendError::Stale(_)) => panic!("expected Failed, got Stale"),
        Ok(resp) => panic!("expected an error, got a {} response", resp.status()),
    }
}

fn stale(r: Outcome) -> ReqBody {
    match r {
        Err(SendError::Stale(body)) => body,
        Err(e) => panic!("expected Stale, got {}", describe(&e)),
        Ok(resp) => panic!("expected Stale, got a {} response", resp.status()),
    }
}

fn malformed(e: UpstreamError) -> &'static str {
    match e {
        UpstreamError::Malformed(m) => m,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn request_body_error(e: UpstreamError) -> &'static str {
    match e {
        UpstreamError::RequestBody(m) => m,
        other => panic!("expected RequestBody, got {other:?}"),
    }
}

/// Sends `parts` without a body on a fresh connection; the backend reads the
/// request head, writes `raw` and keeps its end open. Returns the outcome, the
/// request head as the backend got it, and the backend.
async fn answer(parts: &Parts, raw: &[u8]) -> (Outcome, String, Server) {
    let (conn, mut srv) = pair().await;
    let ex = start(conn, parts, ReqBody::Empty);
    let (res, head) = within(async {
        tokio::join!(ex, async {
            let head = srv.read_head().await;
            srv.write(raw).await;
            head
        })
    })
    .await;
    (res, head, srv)
}

/// As [`answer`] for a `GET /`, when only the response matters.
async fn respond(raw: &[u8]) -> (Outcome, Server) {
    let (res, _, srv) = answer(&get("/"), raw).await;
    (res, srv)
}

/// Polls `ex` until `done` holds; the exchange must not end before that.
async fn drive_until(
    ex: &mut Exchange<ReqBody>,
    what: &str,
    done: impl Fn(&Exchange<ReqBody>) -> bool,
) {
    within(poll_fn(|cx| match Pin::new(&mut *ex).poll(cx) {
        Poll::Ready(Ok(resp)) => panic!("exchange ended before {what}: {}", resp.status()),
        Poll::Ready(Err(e)) => panic!("exchange ended before {what}: {}", describe(&e)),
        Poll::Pending if done(ex) => Poll::Ready(()),
        Poll::Pending => Poll::Pending,
    }))
    .await;
}

/// Drives `ex` until `done` holds while the backend reads the request head; the head.
async fn head_while(
    ex: &mut Exchange<ReqBody>,
    srv: &mut Server,
    what: &str,
    done: impl Fn(&Exchange<ReqBody>) -> bool,
) -> String {
    within(async { tokio::join!(drive_until(ex, what, done), srv.read_head()) })
        .await
        .1
}

/// A response body read to its end (or first error).
#[derive(Debug, Default)]
struct Got {
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    error: Option<UpstreamError>,
}

async fn read_body(body: &mut UpstreamBody<ReqBody>) -> Got {
    let mut got = Got::default();
    while let Some(frame) = within(body.frame()).await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                got.error = Some(e);
                return got;
            }
        };
        assert!(got.trailers.is_none(), "a frame after the trailers");
        match frame.into_data() {
            Ok(data) => {
                assert!(!data.is_empty(), "empty data frame");
                got.data.extend_from_slice(&data);
            }
            Err(frame) => got.trailers = Some(frame.into_trailers().expect("trailers frame")),
        }
    }
    assert!(body.is_end_stream(), "None before the end of the stream");
    got
}

/// The whole body; it must end cleanly and without trailers.
async fn body_bytes(body: &mut UpstreamBody<ReqBody>) -> Vec<u8> {
    let got = read_body(body).await;
    if let Some(e) = got.error {
        panic!("body failed after {:?}: {e:?}", text(&got.data));
    }
    assert!(got.trailers.is_none(), "unexpected trailers");
    got.data
}

fn header_list(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| (n.as_str().to_string(), text(v.as_bytes())))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// A connection that served one exchange (a pooled connection).
async fn pooled() -> (Box<Conn>, Server) {
    let (res, srv) = respond(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    let mut resp = ok(res);
    let conn = resp.body_mut().take_reusable().expect("reusable");
    assert!(conn.reused());
    (conn, srv)
}

// ===========================================================================
// Response framing.
// ===========================================================================

#[tokio::test]
async fn content_length_body_is_read_exactly_and_leaves_the_connection_reusable() {
    let (res, head, _srv) = answer(
        &get("/x?y=1"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\
          X-Multi: a\r\nX-Multi: b\r\n\r\nhello world",
    )
    .await;
    assert_eq!(head, "GET /x?y=1 HTTP/1.1\r\nhost: client.example\r\n\r\n");
    let mut resp = ok(res);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(
        header_list(resp.headers()),
        pairs(&[
            ("content-length", "11"),
            ("content-type", "text/plain"),
            ("x-multi", "a"),
            ("x-multi", "b"),
        ])
    );
    let body = resp.body_mut();
    assert_eq!(body.size_hint().exact(), Some(11));
    assert!(!body.is_end_stream());
    assert_eq!(body_bytes(body).await, b"hello world");
    assert_eq!(body.size_hint().exact(), Some(0));
    let conn = body
        .take_reusable()
        .expect("reusable after a complete body");
    assert!(conn.reused());
    assert_eq!(conn.served, 1);
    assert!(conn.rbuf.is_empty());
    assert!(
        body.take_reusable().is_none(),
        "the connection is handed out once"
    );
}

#[tokio::test]
async fn large_content_length_body_arrives_intact_with_exact_size_hints() {
    let payload: Vec<u8> = (0..(1 << 20) + 7).map(|i| (i % 251) as u8).collect();
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &get("/big"), ReqBody::Empty);
    let sent = payload.clone();
    let backend = tokio::spawn(async move {
        srv.read_head().await;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", sent.len());
        srv.write(head.as_bytes()).await;
        srv.write(&sent).await;
        srv
    });
    let mut resp = ok(within(ex).await);
    let body = resp.body_mut();
    let total = payload.len() as u64;
    assert_eq!(body.size_hint().exact(), Some(total));
    let mut got = Vec::new();
    while let Some(frame) = within(body.frame()).await {
        let data = frame.expect("frame").into_data().expect("data frame");
        assert!(!data.is_empty());
        got.extend_from_slice(&data);
        assert_eq!(body.size_hint().exact(), Some(total - got.len() as u64));
    }
    assert!(got == payload, "body differs ({} bytes)", got.len());
    assert!(body.take_reusable().is_some());
    within(backend).await.expect("backend");
}

#[tokio::test]
async fn chunked_body_with_extensions_and_trailers() {
    let (res, _srv) = respond(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\
          X-Kept: 1\r\n\r\n\
          5;name=value\r\nhello\r\n\
          6 ; flag\r\n world\r\n\
          A\r\n0123456789\r\n\
          0;last=\"yes\"\r\n\
          X-Checksum: abc123\r\nX-Other: 1\r\nX-Other: 2\r\n\r\n",
    )
    .await;
    let mut resp = ok(res);
    // Transfer-Encoding and Trailer are hop-by-hop.
    assert_eq!(header_list(resp.headers()), pairs(&[("x-kept", "1")]));
    let body = resp.body_mut();
    assert_eq!(body.size_hint().exact(), None);
    assert!(!body.is_end_stream());
    let got = read_body(body).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(text(&got.data), "hello world0123456789");
    let trailers = got.trailers.expect("trailers frame");
    assert_eq!(
        header_list(&trailers),
        pairs(&[("x-checksum", "abc123"), ("x-other", "1"), ("x-other", "2")])
    );
    assert!(body.take_reusable().is_some(), "complete chunked body");
}

#[tokio::test]
async fn chunked_body_without_trailers_ends_without_a_trailers_frame() {
    // A bare LF after chunk data is tolerated; upper-case hex sizes too.
    let (res, _srv) = respond(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          3\r\nabc\n1B\r\n0123456789abcdefghijklmnopq\r\n0\r\n\r\n",
    )
    .await;
    let mut resp = ok(res);
    assert!(resp.headers().is_empty());
    let body = resp.body_mut();
    assert_eq!(
        text(&body_bytes(body).await),
        "abc0123456789abcdefghijklmnopq"
    );
    assert!(body.take_reusable().is_some());
}

#[tokio::test]
async fn chunked_trailers_lose_hop_by_hop_fields_and_content_length() {
    let (res, _srv) = respond(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          2\r\nok\r\n0\r\nConnection: close\r\nContent-Length: 2\r\nTE: x\r\n\
          Transfer-Encoding: chunked\r\nX-Sum: 9\r\nUpgrade: x\r\n\r\n",
    )
    .await;
    let mut resp = ok(res);
    let got = read_body(resp.body_mut()).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(got.data, b"ok");
    assert_eq!(
        header_list(&got.trailers.expect("trailers")),
        pairs(&[("x-sum", "9")])
    );

    // Nothing left after filtering: no trailers frame at all.
    let (res, _srv) = respond(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          2\r\nok\r\n0\r\ncontent-length: 2\r\nkeep-alive: 1\r\n\r\n",
    )
    .await;
    let mut resp = ok(res);
    let body = resp.body_mut();
    assert_eq!(body_bytes(body).await, b"ok");
    assert!(body.take_reusable().is_some());
}

#[tokio::test]
async fn chunked_body_written_a_byte_at_a_time() {
    let (conn, mut srv) = pair().await;
    srv.stream.set_nodelay(true).expect("nodelay");
    let ex = start(conn, &get("/"), ReqBody::Empty);
    let raw: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        4;x=y\r\nwiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-t: 1\r\n\r\n";
    let backend = tokio::spawn(async move {
        srv.read_head().await;
        for b in raw {
            srv.write(std::slice::from_ref(b)).await;
        }
        srv
    });
    let mut resp = ok(within(ex).await);
    let got = read_body(resp.body_mut()).await;
    assert!(got.error.is_none(), "{:?}", got.error);
    assert_eq!(text(&got.data), "wikipedia in\r\n\r\nchunks.");
    assert_eq!(
        header_list(&got.trailers.expect("trailers")),
        pairs(&[("x-t", "1")])
    );
    assert!(resp.body_mut().take_reusable().is_some());
    within(backend).await.expect("backend");
}

#[tokio::test]
async fn close_delimited_body_is_read_to_eof_and_not_reused() {
    let (res, mut srv) =
        respond(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end").await;
    let mut resp = ok(res);
    assert_eq!(
        header_list(resp.headers()),
        pairs(&[("content-type", "text/plain")])
    );
    let body = resp.body_mut();
    assert_eq!(body.size_hint().exact(), None);
    assert!(!body.is_end_stream());
    within(srv.stream.shutdown()).await.expect("backend close");
    assert_eq!(text(&body_bytes(body).await), "until the end");
    assert!(body.take_reusable().is_none(), "close-delimited");
}

#[tokio::test]
async fn head_response_has_no_body_whatever_its_framing_headers_say() {
    let (conn, mut srv) = pair().await;
    let head_req = req(Method::HEAD, "/doc", &[("host", "h")]);
    let ex = start(conn, &head_req, ReqBody::Empty);
    let (res, head) = within(async {
        tokio::join!(ex, async {
            let head = srv.read_head().await;
            srv.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\netag: \"v1\"\r\n\r\n")
                .await;
            head
        })
    })
    .await;
    assert_eq!(head, "HEAD /doc HTTP/1.1\r\nhost: h\r\n\r\n");
    let mut resp = ok(res);
    assert_eq!(
        header_list(resp.headers()),
        pairs(&[("content-length", "1234"), ("etag", "\"v1\"")])
    );
    let body = resp.body_mut();
    assert!(body.is_end_stream());
    assert_eq!(body.size_hint().exact(), Some(0));
    let conn = body
        .take_reusable()
        .expect("reusable without reading a body");

    // Chunked HEAD response: still no body; its content-length is dropped.
    let ex = start(conn, &head_req, ReqBody::Empty);
    let (res, ()) = within(async {
        tokio::join!(ex, async {
            srv.read_head().await;
            srv.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\
                  x-a: 1\r\n\r\n",
            )
            .await;
        })
    })
    .await;
    let mut resp = ok(res);
    assert_eq!(header_list(resp.headers()), pairs(&[("x-a", "1")]));
    assert_eq!(body_bytes(resp.body_mut()).await, b"");
    let conn = resp.body_mut().take_reusable().expect("reusable");

    // The next request on the connection sees a clean stream.
    let ex = start(conn, &get("/after"), ReqBody::Empty);
    let (res, head) = within(async {
        tokio::join!(ex, async {
            let head = srv.read_head().await;
            srv.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            head
        })
    })
    .await;
    assert_eq!(head, "GET /after HTTP/1.1\r\nhost: client.example\r\n\r\n");
    assert_eq!(body_bytes(ok(res).body_mut()).await, b"ok");
}

#[tokio::test]
async fn no_content_and_not_modified_have_no_body() {
    let (conn, mut srv) = pair().await;
    let mut conn = Some(conn);
    type Case<'a> = (&'a [u8], StatusCode, &'a [(&'a str, &'a str)]);
    let cases: [Case<'_>; 4] = [
        (
            b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n",
            StatusCode::NO_CONTENT,
            &[("x-a", "1")],
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\netag: \"e\"\r\n\r\n",
            StatusCode::NOT_MODIFIED,
            &[("content-length", "10"), ("etag", "\"e\"")],
        ),
        (
            b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n",
            StatusCode::NO_CONTENT,
            &[],
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            StatusCode::OK,
            &[("content-length", "0")],
        ),
    ];
    // All on one connection: each must leave the stream exactly at the next head.
    for (raw, status, headers) in cases {
        let ex = start(conn.take().expect("conn"), &get("/"), ReqBody::Empty);
        let (res, ()) = within(async {
            tokio::join!(ex, async {
                srv.read_head().await;
                srv.write(raw).await;
            })
        })
        .await;
        let mut resp = ok(res);
        assert_eq!(resp.status(), status);
        assert_eq!(header_list(resp.headers()), pairs(headers));
        let body = resp.body_mut();
        assert!(body.is_end_stream(), "{status}");
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(within(body.frame()).await.is_none());
        conn = Some(body.take_reusable().expect("reusable"));
    }
    assert_eq!(conn.expect("conn").served, 4);
}

#[tokio::test]
async fn informational_responses_are_skipped() {
    let (res, _srv) = respond(
        b"HTTP/1.1 100 Continue\r\n\r\n\
          HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
          HTTP/1.1 102 Processing\r\n\r\n\
          HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )
    .await;
    let mut resp = ok(res);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header_list(resp.headers()),
        pairs(&[("content-length", "2")])
    );
    assert_eq!(body_bytes(resp.body_mut()).await, b"ok");
    assert!(resp.body_mut().take_reusable().is_some());
}

#[tokio::test]
async fn informational_response_arriving_before_the_final_one_is_skipped() {
    let (conn, mut srv) = pair().await;
    let mut ex = start(conn, &get("/"), ReqBody::Empty);
    // The 100 alone first: consumed while the final response is still awaited.
    within(async {
        tokio::join!(
            drive_until(&mut ex, "the 100 was consumed", |ex| {
                ex.answered && ex.conn.as_ref().is_some_and(|c| c.rbuf.is_empty())
            }),
            async {
                srv.read_head().await;
                srv.write(b"HTTP/1.1 100 Continue\r\nx-interim: 1\r\n\r\n")
                    .await;
            }
        )
    })
    .await;
    srv.write(b"HTTP/1.1 201 Created\r\nx-final: 1\r\ncontent-length: 0\r\n\r\n")
        .await;
    let mut resp = ok(within(ex).await);
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        header_list(resp.headers()),
        pairs(&[("x-final", "1"), ("content-length", "0")])
    );
    assert!(resp.body_mut().take_reusable().is_some());
}

#[tokio::test]
async fn switching_protocols_hands_over_the_connection_with_early_bytes() {
    let parts = req(
        Method::GET,
        "/chat",
        &[
            ("host", "h"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ],
    );
    let early: &[u8] = b"\x81\x05early";
    let mut raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade, X-Drop\r\nX-Drop: 1\r\nSec-WebSocket-Accept: abc=\r\n\r\n"
        .to_vec();
    raw.extend_from_slice(early);
    let (res, head, mut srv) = answer(&parts, &raw).await;
    assert_eq!(
        head,
        "GET /chat HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    );
    let mut resp = ok(res);
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    // Upgrade stays on a 101 (even though Connection names it); Connection is
    // replaced by `upgrade`; what Connection names otherwise goes.
    assert_eq!(
        header_list(resp.headers()),
        pairs(&[
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "abc="),
            ("connection", "upgrade"),
        ])
    );
    let body = resp.body_mut();
    assert!(body.is_end_stream());
    assert!(body.take_reusable().is_none(), "a 101 is never pooled");
    let mut conn = body.take_upgraded().expect("upgraded connection");
    assert!(body.take_upgraded().is_none());
    // The bytes sent right behind the head (in the same write) were read with it.
    assert_eq!(&conn.rbuf[..], early);

    // The connection now carries the new protocol both ways.
    within(conn.io.write_all(b"ping")).await.expect("write");
    assert_eq!(srv.read_exact(4).await, b"ping");
    srv.write(b"pong").await;
    let mut pong = [0u8; 4];
    within(conn.io.read_exact(&mut pong)).await.expect("read");
    assert_eq!(&pong, b"pong");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped() {
    let (res, _srv) = respond(
        b"HTTP/1.1 200 OK\r\n\
          Connection: keep-alive, X-Private, x-other-PRIVATE\r\n\
          Keep-Alive: timeout=5\r\n\
          X-Private: secret\r\n\
          X-Other-Private: s2\r\n\
          Proxy-Connection: keep-alive\r\n\
          Proxy-Authenticate: Basic\r\n\
          Proxy-Authorization: Basic x\r\n\
          TE: trailers\r\n\
          Trailer: x-sum\r\n\
          Upgrade: h2c\r\n\
          X-Public: yes\r\n\
          Content-Length: 2\r\n\r\nok",
    )
    .await;
    let mut resp = ok(res);
    assert_eq!(
        header_list(resp.headers()),
        pairs(&[("x-public", "yes"), ("content-length", "2")])
    );
    assert_eq!(body_bytes(resp.body_mut()).await, b"ok");
    assert!(
        resp.body_mut().take_reusable().is_some(),
        "keep-alive is not close"
    );

    // Several Connection lines all count.
    let (res, _srv) = respond(
        b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nx-a: 1\r\nConnection: x-b\r\nx-b: 2\r\n\
          x-c: 3\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(
        header_list(ok(res).headers()),
        pairs(&[("x-c", "3"), ("content-length", "0")])
    );
}

#[tokio::test]
async fn http10_response_closes_unless_it_asks_for_keep_alive() {
    let (res, _srv) = respond(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let mut resp = ok(res);
    assert_eq!(resp.version(), Version::HTTP_10);
    assert_eq!(body_bytes(resp.body_mut()).await, b"ok");
    assert!(resp.body_mut().take_reusable().is_none());

    let (res, _srv) = respond(
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\n\
          content-length: 2\r\n\r\nok",
    )
    .await;
    let mut resp = ok(res);
    assert_eq!(resp.version(), Version::HTTP_10);
    assert_eq!(
        header_list(resp.headers()),
        pairs(&[("content-length", "2")])
    );
    assert_eq!(body_bytes(resp.body_mut()).await, b"ok");
    assert!(resp.body_mut().take_reusable().is_some());

    // Without a length, HTTP/1.0 keep-alive cannot hold: the body runs to EOF.
    let (res, mut srv) =
        respond(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nto the end").await;
    let mut resp = ok(res);
    within(srv.stream.shutdown()).await.expect("close");
    assert_eq!(body_bytes(resp.body_mut()).await, b"to the end");
    assert!(resp.body_mut().take_reusable().is_none());
}

#[tokio::test]
async fn connection_close_response_is_not_reused() {
    for conn_header in ["close", "Close", "x-foo, CLOSE"] {
        let raw =
            format!("HTTP/1.1 200 OK\r\nConnection: {conn_header}\r\ncontent-length: 2\r\n\r\nok");
        let (res, _srv) = respond(raw.as_bytes()).await;
        let mut resp = ok(res);
        assert_eq!(
            header_list(resp.headers()),
            pairs(&[("content-length", "2")]),
            "{conn_header}"
        );
        let body = resp.body_mut();
        assert_eq!(body_bytes(body).await, b"ok");
        assert!(body.is_end_stream());
        assert!(body.take_reusable().is_none(), "{conn_header}");
    }
    // Even a body-less one.
    let (res, _srv) = respond(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").await;
    assert!(ok(res).body_mut().take_reusable().is_none());
}

#[tokio::test]
async fn bytes_after_a_complete_response_prevent_reuse() {
    let (res, _srv) = respond(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA").await;
    let mut resp = ok(res);
    let body = resp.body_mut();
    assert_eq!(body_bytes(body).await, b"ok");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn health_probe_style_usage() {
    // As health.rs: `Connection: close` request, body collected with a limit.
    let parts = req(
        Method::GET,
        "/healthz",
        &[
            ("user-agent", "switchyard-health-check"),
            ("connection", "close"),
        ],
    );
    let (conn, mut srv) = pair().await;
    let host = HeaderValue::from_static("backend:9000");
    let ex = Exchange::start(
        conn,
        &parts,
        Some(&host),
        &HeaderMap::new(),
        ReqBody::Empty,
        false,
    )
    .expect("start");
    let (res, head) = within(async {
        tokio::join!(ex, async {
            let head = srv.read_head().await;
            srv.write(b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\r\ndown")
                .await;
            within(srv.stream.shutdown()).await.expect("close");
            head
        })
    })
    .await;
    assert_eq!(
        head,
        "GET /healthz HTTP/1.1\r\nuser-agent: switchyard-health-check\r\n\
         connection: close\r\nhost: backend:9000\r\n\r\n"
    );
    let resp = ok(res);
    assert_eq!(resp.status().as_u16(), 503);
    let collected = within(http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect())
        .await
        .expect("collect");
    assert_eq!(collected.to_bytes(), "down");
}

// ===========================================================================
// Malformed responses.
// ===========================================================================

#[tokio::test]
async fn malformed_status_lines_are_errors() {
    let cases: [(&[u8], &str); 7] = [
        (b"HTTP/1.1 abc OK\r\n\r\n", "bad response head"),
        (b"HTTTP/1.1 200 OK\r\n\r\n", "bad response head"),
        (b"HTTP/2.0 200 OK\r\n\r\n", "bad response head"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "bad response head"),
        (b"garbage\r\n\r\n", "bad response head"),
        (b"\x00\x01\x02\r\n\r\n", "bad response head"),
        (b"HTTP/1.1 099 Odd\r\n\r\n", "bad status"),
    ];
    for (raw, want) in cases {
        let (res, _srv) = respond(raw).await;
        assert_eq!(malformed(failed(res)), want, "{:?}", text(raw));
    }
}

#[tokio::test]
async fn invalid_headers_are_errors() {
    let cases: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Ctl: a\x01b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Del: a\x7fb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: no-name\r\n\r\n",
    ];
    for raw in cases {
        let (res, _srv) = respond(raw).await;
        assert_eq!(
            malformed(failed(res)),
            "bad response head",
            "{:?}",
            text(raw)
        );
    }
}

#[tokio::test]
async fn header_count_is_limited() {
    let head = |n: usize| {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..n - 1 {
            raw.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"content-length: 0\r\n\r\n");
        raw
    };
    let (res, _srv) = respond(&head(MAX_HEADERS)).await;
    assert_eq!(ok(res).headers().len(), MAX_HEADERS);
    let (res, _srv) = respond(&head(MAX_HEADERS + 1)).await;
    assert_eq!(malformed(failed(res)), "too many headers");
}

#[tokio::test]
async fn bad_or_conflicting_content_lengths_are_errors() {
    let cases: [&str; 11] = [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: abc\r\n",
        "Content-Length: 0x10\r\n",
        "Content-Length: \r\n",
        "Content-Length: 5,\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: 18446744073709551616\r\n",
        "Content-Length: 99999999999999999999999\r\n",
    ];
    for h in cases {
        let raw = format!("HTTP/1.1 200 OK\r\n{h}\r\nhello");
        let (res, _srv) = respond(raw.as_bytes()).await;
        assert_eq!(malformed(failed(res)), "bad content-length", "{h:?}");
    }
}

#[tokio::test]
async fn repeated_equal_content_lengths_are_accepted() {
    for h in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 5\r\n",
        "Content-Length: 5,5\r\ncontent-length: 5\r\n",
        "Content-Length: 005\r\n",
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\n{h}\r\nhello");
        let (res, _srv) = respond(raw.as_bytes()).await;
        let mut resp = ok(res);
        let body = resp.body_mut();
        assert_eq!(body.size_hint().exact(), Some(5), "{h:?}");
        assert_eq!(body_bytes(body).await, b"hello", "{h:?}");
        assert!(body.take_reusable().is_some(), "{h:?}");
    }
}

#[tokio::test]
async fn transfer_encoding_wins_over_content_length_and_forbids_reuse() {
    let (res, _srv) = respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let mut resp = ok(res);
    // Neither framing header reaches the client.
    assert_eq!(header_list(resp.headers()), pairs(&[("x-a", "1")]));
    let body = resp.body_mut();
    assert_eq!(body.size_hint().exact(), None);
    assert_eq!(body_bytes(body).await, b"hello");
    assert!(
        body.take_reusable().is_none(),
        "a message with both is not trusted with the connection"
    );
}

#[tokio::test]
async fn transfer_encoding_ending_in_chunked_is_chunked() {
    for te in ["gzip, chunked", "Chunked", " chunked ", "identity,chunked"] {
        let raw =
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let (res, _srv) = respond(raw.as_bytes()).await;
        let mut resp = ok(res);
        let body = resp.body_mut();
        assert_eq!(body_bytes(body).await, b"hello", "{te:?}");
        assert!(body.take_reusable().is_some(), "{te:?}");
    }
}

#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_reads_until_close() {
    for te in ["gzip", "chunked, gzip"] {
        let raw = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\nContent-Length: 4\r\n\r\n\
             raw bytes up to the close"
        );
        let (res, mut srv) = respond(raw.as_bytes()).await;
        let mut resp = ok(res);
        assert!(resp.headers().is_empty(), "{te:?}");
        within(srv.stream.shutdown()).await.expect("close");
        let body = resp.body_mut();
        assert_eq!(
            text(&body_bytes(body).await),
            "raw bytes up to the close",
            "{te:?}"
        );
        assert!(body.take_reusable().is_none(), "{te:?}");
    }
}

/// RFC 9110 §5.3: several field lines of one name are one comma-separated list,
/// so `Transfer-Encoding: gzip` + `Transfer-Encoding: chunked` is
/// `gzip, chunked`, whose final coding is chunked (RFC 9112 §6.3; hyper agrees).
/// h1.rs requires every line to end in `chunked`, reads the body until close,
/// and hands the raw chunk framing to the client as data.
#[tokio::test]
async fn transfer_encoding_over_several_lines_ending_in_chunked_is_chunked() {
    let (res, mut srv) = respond(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let mut resp = ok(res);
    within(srv.stream.shutdown()).await.expect("close");
    assert_eq!(text(&body_bytes(resp.body_mut()).await), "hello");
}

#[tokio::test]
async fn response_head_larger_than_max_head_is_an_error() {
    // One header line that never ends: only the size limit can stop the wait.
    let mut raw = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    raw.resize(MAX_HEAD + 1024, b'a');
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &get("/"), ReqBody::Empty);
    let (res, ()) = within(async {
        tokio::join!(ex, async {
            srv.read_head().await;
            // The client may give up before it has read all of this.
            let _ = srv.stream.write_all(&raw).await;
        })
    })
    .await;
    assert_eq!(malformed(failed(res)), "response head too large");
}

#[tokio::test]
async fn response_head_just_under_max_head_is_accepted() {
    let mut raw = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    let tail = b"\r\ncontent-length: 2\r\n\r\n";
    raw.resize(MAX_HEAD - tail.len() - 1, b'a');
    raw.extend_from_slice(tail);
    raw.extend_from_slice(b"ok");
    let (res, _srv) = respond(&raw).await;
    let mut resp = ok(res);
    assert_eq!(
        resp.headers()["x-big"].len(),
        MAX_HEAD - tail.len() - 1 - 24
    );
    assert_eq!(body_bytes(resp.body_mut()).await, b"ok");
}

#[tokio::test]
async fn close_before_any_answer_fails_on_a_fresh_connection() {
    for replayable in [false, true] {
        let (conn, mut srv) = pair().await;
        let ex = Exchange::start(
            conn,
            &get("/"),
            None,
            &HeaderMap::new(),
            ReqBody::Empty,
            replayable,
        )
        .expect("start");
        let (res, ()) = within(async {
            tokio::join!(ex, async {
                srv.read_head().await;
                within(srv.stream.shutdown()).await.expect("close");
            })
        })
        .await;
        // Not stale: a fresh connection was not closed for idling.
        assert!(matches!(failed(res), UpstreamError::Closed));
    }
}

#[tokio::test]
async fn close_in_the_middle_of_a_head_is_an_error() {
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &get("/"), ReqBody::Empty);
    let (res, ()) = within(async {
        tokio::join!(ex, async {
            srv.read_head().await;
            srv.write(b"HTTP/1.1 200 OK\r\ncontent-le").await;
            within(srv.stream.shutdown()).await.expect("close");
        })
    })
    .await;
    assert!(matches!(failed(res), UpstreamError::Closed));
}

#[tokio::test]
async fn bodies_cut_short_are_errors() {
    let cases: [(&[u8], &[u8]); 5] = [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", b"abc"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", b""),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            b"hel",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"hello",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n",
            b"ok",
        ),
    ];
    for (raw, data) in cases {
        let (res, mut srv) = respond(raw).await;
        let mut resp = ok(res);
        within(srv.stream.shutdown()).await.expect("close");
        let body = resp.body_mut();
        let got = read_body(body).await;
        assert_eq!(got.data, data, "{:?}", text(raw));
        assert!(
            matches!(got.error, Some(UpstreamError::Closed)),
            "{:?}: {:?}",
            text(raw),
            got.error
        );
        assert!(body.take_reusable().is_none());
    }
}

#[tokio::test]
async fn malformed_chunked_bodies_are_errors() {
    let long_ext = {
        let mut v = b"5;".to_vec();
        v.resize(5000, b'e');
        v
    };
    let long_trailer = {
        let mut v = b"0\r\nx-t: ".to_vec();
        v.resize(MAX_HEAD + 1024, b'a');
        v
    };
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"zz\r\n".to_vec(), "", "bad chunk size"),
        (b"-1\r\n".to_vec(), "", "bad chunk size"),
        (b"5\nhello\r\n".to_vec(), "", "bad chunk size"),
        (b"10000000000000000\r\n".to_vec(), "", "bad chunk size"),
        (
            b"5\r\nhelloXX".to_vec(),
            "hello",
            "chunk not followed by CRLF",
        ),
        (
            b"5\r\nhello\rX".to_vec(),
            "hello",
            "chunk not followed by CRLF",
        ),
        (long_ext, "", "chunk size line too long"),
        (
            b"2\r\nok\r\n0\r\nbad trailer\r\n\r\n".to_vec(),
            "ok",
            "bad trailers",
        ),
        (long_trailer, "", "trailers too large"),
    ];
    for (chunks, data, want) in cases {
        let mut raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(&chunks);
        let (conn, mut srv) = pair().await;
        let ex = start(conn, &get("/"), ReqBody::Empty);
        let backend = tokio::spawn(async move {
            srv.read_head().await;
            // The client may give up before it has read all of this.
            let _ = srv.stream.write_all(&raw).await;
            // Stay open: the error must come from the bytes, not a close.
            srv.read_to_end().await;
        });
        let mut resp = ok(within(ex).await);
        let got = read_body(resp.body_mut()).await;
        assert_eq!(text(&got.data), data, "{want}");
        assert_eq!(malformed(got.error.expect("an error")), want);
        drop(resp);
        within(backend).await.expect("backend");
    }
}

// ===========================================================================
// Keep-alive, reuse and stale connections.
// ===========================================================================

#[tokio::test]
async fn keep_alive_connection_carries_a_second_exchange() {
    let (conn, mut srv) = pair().await;
    assert!(!conn.reused());
    assert_eq!(conn.served, 0);

    let ex = start(conn, &get("/one"), ReqBody::Empty);
    let (res, head) = within(async {
        tokio::join!(ex, async {
            let head = srv.read_head().await;
            srv.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none")
                .await;
            head
        })
    })
    .await;
    assert_eq!(head, "GET /one HTTP/1.1\r\nhost: client.example\r\n\r\n");
    let mut resp = ok(res);
    assert_eq!(body_bytes(resp.body_mut()).await, b"one");
    let mut conn = resp.body_mut().take_reusable().expect("reusable");
    assert!(conn.reused());
    assert_eq!(conn.served, 1);
    assert!(conn.still_open());

    // Same socket, second request (the backend accepted only once).
    let post = req(Method::POST, "/two", &[("host", "client.example")]);
    let ex = start(conn, &post, ReqBody::Empty);
    let (res, head) = within(async {
        tokio::join!(ex, async {
            let head = srv.read_head().await;
            srv.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n",
            )
            .await;
            head
        })
    })
    .await;
    assert_eq!(
        head,
        "POST /two HTTP/1.1\r\nhost: client.example\r\ncontent-length: 0\r\n\r\n"
    );
    let mut resp = ok(res);
    assert_eq!(body_bytes(resp.body_mut()).await, b"two");
    let conn = resp.body_mut().take_reusable().expect("reusable again");
    assert_eq!(conn.served, 2);
    drop(conn);
    assert_eq!(srv.read_to_end().await, b"", "nothing else was sent");
}

#[tokio::test]
async fn still_open_tells_idle_from_closed_or_chatty_backends() {
    // Idle: open (asking twice changes nothing).
    let (mut conn, _srv) = pooled().await;
    assert!(conn.still_open());
    assert!(conn.still_open());

    // Closed by the backend.
    let (mut conn, srv) = pooled().await;
    drop(srv);
    readable(&conn).await;
    assert!(!conn.still_open());

    // Reset by the backend.
    let (mut conn, srv) = pooled().await;
    srv.stream.set_zero_linger().expect("linger");
    drop(srv);
    readable(&conn).await;
    assert!(!conn.still_open());

    // Stray bytes from the backend.
    let (mut conn, mut srv) = pooled().await;
    srv.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n").await;
    readable(&conn).await;
    assert!(!conn.still_open());

    // Unconsumed bytes already buffered: no need to ask the socket.
    let (mut conn, _srv) = pooled().await;
    conn.rbuf.extend_from_slice(b"x");
    assert!(!conn.still_open());
}

#[tokio::test]
async fn pooled_connection_closed_by_the_backend_is_stale_for_a_replayable_request() {
    let (conn, srv) = pooled().await;
    drop(srv);
    let ex = Exchange::start(
        conn,
        &get("/"),
        None,
        &HeaderMap::new(),
        ReqBody::Empty,
        true,
    )
    .expect("start");
    assert!(matches!(stale(within(ex).await), ReqBody::Empty));
}

#[tokio::test]
async fn pooled_connection_closed_by_the_backend_fails_a_non_replayable_request() {
    let (mut conn, srv) = pooled().await;
    drop(srv);
    // What forward::checkout checks for such a request first:
    readable(&conn).await;
    assert!(!conn.still_open());
    // Sent anyway, the request went out (the kernel took it), so it is not
    // known to be safe to repeat.
    let post = req(Method::POST, "/", &[("host", "h")]);
    let ex = start(conn, &post, ReqBody::Empty);
    assert!(matches!(failed(within(ex).await), UpstreamError::Closed));
}

#[tokio::test]
async fn pooled_connection_reset_hands_the_untouched_body_back() {
    let (conn, srv) = pooled().await;
    srv.stream.set_zero_linger().expect("linger");
    drop(srv);
    readable(&conn).await;

    // The client has sent none of its body yet: nothing of it is taken before
    // the head is written. (Bytes at hand would go out with the head, and once
    // taken they could not be handed back: forward::checkout's `still_open`
    // keeps such a connection from being used at all.)
    let (body, mut feed) = incoming(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").await;
    let post = req(Method::POST, "/upload", &[("host", "h")]);
    // Not replayable, but nothing could be written: safe to send again.
    let ex = start(conn, &post, ReqBody::Incoming(body));
    let body = stale(within(ex).await);
    assert!(matches!(body, ReqBody::Incoming(_)));
    feed.src.write(b"hello").await;

    // On a fresh connection the whole body still goes out.
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &post, body);
    let (res, (head, data)) = within(async {
        tokio::join!(ex, async {
            let head = srv.read_head().await;
            let data = srv.read_exact(5).await;
            srv.write(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
                .await;
            (head, data)
        })
    })
    .await;
    assert_eq!(
        head,
        "POST /upload HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\n"
    );
    assert_eq!(data, b"hello");
    assert_eq!(ok(res).status(), StatusCode::CREATED);
}

#[tokio::test]
async fn reset_fresh_connection_fails_rather_than_going_stale() {
    let (conn, srv) = pair().await;
    srv.stream.set_zero_linger().expect("linger");
    drop(srv);
    readable(&conn).await;
    let ex = Exchange::start(
        conn,
        &get("/"),
        None,
        &HeaderMap::new(),
        ReqBody::Empty,
        true,
    )
    .expect("start");
    match failed(within(ex).await) {
        UpstreamError::Io(e) => assert!(is_reset(&e), "{e:?}"),
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[tokio::test]
async fn pooled_connection_closed_after_an_answer_is_not_stale() {
    let (conn, mut srv) = pooled().await;
    let ex = Exchange::start(
        conn,
        &get("/"),
        None,
        &HeaderMap::new(),
        ReqBody::Empty,
        true,
    )
    .expect("start");
    let (res, ()) = within(async {
        tokio::join!(ex, async {
            srv.read_head().await;
            srv.write(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            within(srv.stream.shutdown()).await.expect("close");
        })
    })
    .await;
    assert!(matches!(failed(res), UpstreamError::Closed));
}

/// Polls `ex` beside its deadline `at` (as the proxy's attempt does): its
/// outcome, or `None` once the deadline passed.
async fn until_deadline(ex: &mut Exchange<ReqBody>, at: tokio::time::Instant) -> Option<Outcome> {
    poll_fn(|cx| {
        if let Poll::Ready(r) = Pin::new(&mut *ex).poll(cx) {
            return Poll::Ready(Some(r));
        }
        ex.poll_deadline(cx, at).map(|()| None)
    })
    .await
}

/// One answered exchange on `conn` with the deadline `at`: the connection back.
async fn answered_by(conn: Box<Conn>, srv: &mut Server, at: tokio::time::Instant) -> Box<Conn> {
    let mut ex = start(conn, &get("/first"), ReqBody::Empty);
    let answer = async {
        srv.read_until(b"\r\n\r\n").await;
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        srv.stream.write_all(raw).await.expect("answer");
    };
    let (got, ()) = tokio::join!(until_deadline(&mut ex, at), answer);
    let mut resp = ok(got.expect("answered before the deadline"));
    resp.body_mut().take_reusable().expect("reusable")
}

/// On a fresh connection: an exchange answered within the deadline `first`, then
/// one the backend never answers, with the deadline `second` (both from the
/// start): how long after the start that one ended.
async fn silent_second_ends_after(first: Duration, second: Duration) -> Duration {
    let (conn, mut srv) = pair().await;
    let t0 = tokio::time::Instant::now();
    let conn = answered_by(conn, &mut srv, t0 + first).await;
    let mut ex = start(conn, &get("/second"), ReqBody::Empty);
    // The backend reads the request and never answers.
    let (got, _) = tokio::join!(
        until_deadline(&mut ex, t0 + second),
        srv.read_until(b"\r\n\r\n")
    );
    assert!(got.is_none(), "a silent backend ends in the deadline");
    t0.elapsed()
}

/// The deadline's timer belongs to the connection and outlives an exchange (so
/// requests do not each set one up): armed at one exchange's deadline, it ends
/// the next exchange at that exchange's own deadline, whether it is later (the
/// timer fires early and is moved on) or sooner (the timer is moved back). On
/// the runtime's paused clock: the times compared are the runtime's own.
#[tokio::test(start_paused = true)]
async fn an_exchange_ends_at_its_own_deadline_on_a_reused_connections_timer() {
    let secs = Duration::from_secs;
    let later = silent_second_ends_after(secs(2), secs(6)).await;
    assert!(
        later >= secs(6),
        "not at the older, earlier deadline: {later:?}"
    );
    let sooner = silent_second_ends_after(secs(60), secs(3)).await;
    assert!(
        sooner >= secs(3) && sooner < secs(60),
        "at its own deadline, not the timer's: {sooner:?}"
    );
}

// ===========================================================================
// Request encoding.
// ===========================================================================

/// The request head the backend receives for `parts` (answered with a 204).
async fn sent_head(
    parts: &Parts,
    host: Option<&HeaderValue>,
    extra: &HeaderMap,
    replayable: bool,
) -> String {
    let (conn, mut srv) = pair().await;
    let ex = Exchange::start(conn, parts, host, extra, ReqBody::Empty, replayable).expect("start");
    let (res, head) = within(async {
        tokio::join!(ex, async {
            let head = srv.read_head().await;
            srv.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            head
        })
    })
    .await;
    let mut resp = ok(res);
    drop(resp.body_mut().take_reusable().expect("reusable"));
    assert_eq!(srv.read_to_end().await, b"", "bytes after the head");
    head
}

#[tokio::test]
async fn request_head_is_encoded_exactly() {
    let parts = req(
        Method::POST,
        "/submit?x=1&y=%20",
        &[
            ("host", "client.example"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("transfer-encoding", "chunked"),
            ("traceparent", "old"),
            ("accept", "*/*"),
        ],
    );
    let host = HeaderValue::from_static("backend.internal:8080");
    let mut extra = HeaderMap::new();
    extra.insert("traceparent", HeaderValue::from_static("new"));
    extra.insert("tracestate", HeaderValue::from_static("s=1"));
    assert_eq!(
        sent_head(&parts, Some(&host), &extra, false).await,
        "POST /submit?x=1&y=%20 HTTP/1.1\r\n\
         x-a: 1\r\nx-a: 2\r\naccept: */*\r\n\
         host: backend.internal:8080\r\n\
         traceparent: new\r\ntracestate: s=1\r\n\
         content-length: 0\r\n\r\n"
    );
}

#[tokio::test]
async fn request_line_and_length_for_bodiless_requests() {
    let none = HeaderMap::new();
    let h = [("host", "c")];
    let cases: Vec<(Parts, &str)> = vec![
        (
            req(Method::GET, "/", &h),
            "GET / HTTP/1.1\r\nhost: c\r\n\r\n",
        ),
        (
            req(Method::DELETE, "/r/1", &h),
            "DELETE /r/1 HTTP/1.1\r\nhost: c\r\n\r\n",
        ),
        (
            req(Method::OPTIONS, "*", &h),
            "OPTIONS * HTTP/1.1\r\nhost: c\r\n\r\n",
        ),
        (
            req(Method::PUT, "/p", &h),
            "PUT /p HTTP/1.1\r\nhost: c\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            req(Method::PATCH, "/p", &h),
            "PATCH /p HTTP/1.1\r\nhost: c\r\ncontent-length: 0\r\n\r\n",
        ),
        // A declared length is kept as it is, and not doubled.
        (
            req(
                Method::POST,
                "/p",
                &[("host", "c"), ("content-length", "0")],
            ),
            "POST /p HTTP/1.1\r\nhost: c\r\ncontent-length: 0\r\n\r\n",
        ),
        // Absolute and authority forms go out in origin form.
        (
            req(Method::GET, "http://example.com", &h),
            "GET / HTTP/1.1\r\nhost: c\r\n\r\n",
        ),
        (
            req(Method::GET, "http://example.com/a/b?q", &h),
            "GET /a/b?q HTTP/1.1\r\nhost: c\r\n\r\n",
        ),
        (
            req(Method::GET, "example.com:443", &h),
            "GET / HTTP/1.1\r\nhost: c\r\n\r\n",
        ),
        (
            req(Method::from_bytes(b"PURGE").expect("method"), "/x", &[]),
            "PURGE /x HTTP/1.1\r\n\r\n",
        ),
    ];
    for (parts, want) in cases {
        assert_eq!(sent_head(&parts, None, &none, true).await, want);
    }
}

#[tokio::test]
async fn request_body_of_known_length_goes_out_with_content_length() {
    let (body, _feed) = incoming(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world").await;
    let post = req(
        Method::POST,
        "/u",
        &[("host", "h"), ("transfer-encoding", "chunked")],
    );
    let (conn, mut srv) = pair().await;
    let mut ex = start(conn, &post, ReqBody::Incoming(body));
    let head = head_while(&mut ex, &mut srv, "the request was sent", |ex| {
        ex.writer.is_none()
    })
    .await;
    assert_eq!(
        head,
        "POST /u HTTP/1.1\r\nhost: h\r\ncontent-length: 11\r\n\r\n"
    );
    assert_eq!(srv.read_exact(11).await, b"hello world");
    srv.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await;
    let mut resp = ok(within(ex).await);
    let conn = resp.body_mut().take_reusable().expect("reusable");
    drop(conn);
    assert_eq!(srv.read_to_end().await, b"");
}

#[tokio::test]
async fn request_body_of_unknown_length_goes_out_chunked() {
    let (body, mut feed) = incoming(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          1a\r\nabcdefghijklmnopqrstuvwxyz\r\n",
    )
    .await;
    let post = req(Method::POST, "/u", &[("host", "h")]);
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &post, ReqBody::Incoming(body));
    let (res, ()) = within(async {
        tokio::join!(ex, async {
            assert_eq!(
                srv.read_head().await,
                "POST /u HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
            );
            assert_eq!(
                text(&srv.read_exact(32).await),
                "1a\r\nabcdefghijklmnopqrstuvwxyz\r\n"
            );
            feed.src.write(b"3\r\nxyz\r\n").await;
            assert_eq!(srv.read_exact(8).await, b"3\r\nxyz\r\n");
            feed.src.write(b"0\r\n\r\n").await;
            assert_eq!(srv.read_exact(5).await, b"0\r\n\r\n");
            srv.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        })
    })
    .await;
    let mut resp = ok(res);
    // The request was complete before the answer: the connection may go on.
    let conn = resp.body_mut().take_reusable().expect("reusable");
    drop(conn);
    assert_eq!(srv.read_to_end().await, b"");
}

#[tokio::test]
async fn empty_request_body_of_unknown_length_is_one_last_chunk() {
    let (body, _feed) =
        incoming(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n").await;
    let post = req(Method::POST, "/u", &[("host", "h")]);
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &post, ReqBody::Incoming(body));
    let (res, got) = within(async {
        tokio::join!(ex, async {
            let head = srv.read_head().await;
            let end = srv.read_exact(5).await;
            srv.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            (head, end)
        })
    })
    .await;
    assert_eq!(
        got.0,
        "POST /u HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(got.1, b"0\r\n\r\n");
    assert_eq!(ok(res).status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn request_trailers_go_out_in_the_last_chunk() {
    let (body, _feed) = incoming(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\nx-checksum: 42\r\nx-more: a\r\n\r\n",
    )
    .await;
    let post = req(Method::POST, "/u", &[("host", "h")]);
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &post, ReqBody::Incoming(body));
    let (res, rest) = within(async {
        tokio::join!(ex, async {
            srv.read_head().await;
            let rest = srv.read_until(b"\r\n\r\n").await;
            srv.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            rest
        })
    })
    .await;
    assert_eq!(
        text(&rest),
        "3\r\nabc\r\n0\r\nx-checksum: 42\r\nx-more: a\r\n\r\n"
    );
    let mut resp = ok(res);
    drop(resp.body_mut().take_reusable().expect("reusable"));
    assert_eq!(srv.read_to_end().await, b"");
}

#[tokio::test]
async fn declared_content_length_frames_a_body_of_unknown_length() {
    // The client said how long; the body arrives chunked from it; the backend
    // gets the declared length and raw bytes, not chunks.
    let (body, _feed) = incoming(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
    )
    .await;
    let post = req(
        Method::POST,
        "/u",
        &[("content-length", "5"), ("host", "h")],
    );
    let (conn, mut srv) = pair().await;
    let mut ex = start(conn, &post, ReqBody::Incoming(body));
    let head = head_while(&mut ex, &mut srv, "the request was sent", |ex| {
        ex.writer.is_none()
    })
    .await;
    assert_eq!(
        head,
        "POST /u HTTP/1.1\r\ncontent-length: 5\r\nhost: h\r\n\r\n"
    );
    assert_eq!(srv.read_exact(5).await, b"hello");
    srv.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let mut resp = ok(within(ex).await);
    drop(resp.body_mut().take_reusable().expect("reusable"));
    assert_eq!(srv.read_to_end().await, b"");
}

#[tokio::test]
async fn bad_declared_content_length_is_refused_before_sending() {
    for cl in ["abc", "5, 6", "-1", "+5", ""] {
        let (conn, _srv) = pair().await;
        let post = req(Method::POST, "/u", &[("content-length", cl)]);
        match Exchange::start(conn, &post, None, &HeaderMap::new(), ReqBody::Empty, false) {
            Err(e) => assert_eq!(request_body_error(e), "bad content-length", "{cl:?}"),
            Ok(_) => panic!("{cl:?} accepted"),
        }
    }
}

#[tokio::test]
async fn request_body_longer_than_declared_fails() {
    let (body, _feed) = incoming(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
    let post = req(
        Method::POST,
        "/u",
        &[("host", "h"), ("content-length", "2")],
    );
    let (conn, mut srv) = pair().await;
    // The body is at hand: read before the head goes out, and found too long.
    let ex = start(conn, &post, ReqBody::Incoming(body));
    assert_eq!(
        request_body_error(failed(within(ex).await)),
        "longer than its content-length"
    );
    assert_eq!(srv.read_to_end().await, b"", "nothing went out");

    // Found too long after the head went out: no body byte follows it.
    let (body, mut feed) = incoming(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").await;
    let (conn, mut srv) = pair().await;
    let mut ex = start(conn, &post, ReqBody::Incoming(body));
    let head = head_while(&mut ex, &mut srv, "the head went out", |ex| ex.written).await;
    assert_eq!(
        head,
        "POST /u HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n"
    );
    feed.src.write(b"hello").await;
    drive_until(&mut ex, "the write error", |ex| ex.write_error.is_some()).await;
    within(srv.stream.shutdown()).await.expect("close");
    assert_eq!(
        request_body_error(failed(within(ex).await)),
        "longer than its content-length"
    );
    assert_eq!(srv.read_to_end().await, b"", "no body byte went out");
}

#[tokio::test]
async fn request_body_shorter_than_declared_fails() {
    let (body, _feed) = incoming(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc").await;
    let post = req(
        Method::POST,
        "/u",
        &[("host", "h"), ("content-length", "10")],
    );
    let (conn, mut srv) = pair().await;
    // The whole (short) body is at hand: found short before anything goes out.
    let ex = start(conn, &post, ReqBody::Incoming(body));
    assert_eq!(
        request_body_error(failed(within(ex).await)),
        "shorter than its content-length"
    );
    assert_eq!(srv.read_to_end().await, b"", "nothing went out");

    // It ends short after the head went out.
    let (body, mut feed) = incoming(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n").await;
    let (conn, mut srv) = pair().await;
    let mut ex = start(conn, &post, ReqBody::Incoming(body));
    let head = head_while(&mut ex, &mut srv, "the head went out", |ex| ex.written).await;
    assert_eq!(
        head,
        "POST /u HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\n"
    );
    // (What came with the end is not sent: the request is broken either way.)
    feed.src.write(b"abc").await;
    drive_until(&mut ex, "the write error", |ex| ex.write_error.is_some()).await;
    within(srv.stream.shutdown()).await.expect("close");
    assert_eq!(
        request_body_error(failed(within(ex).await)),
        "shorter than its content-length"
    );
}

#[tokio::test]
async fn answer_after_a_request_write_error_is_delivered_but_not_reused() {
    // The body comes after the head went out, and turns out too long.
    let (body, mut feed) = incoming(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n").await;
    let post = req(
        Method::POST,
        "/u",
        &[("host", "h"), ("content-length", "2")],
    );
    let (conn, mut srv) = pair().await;
    let mut ex = start(conn, &post, ReqBody::Incoming(body));
    head_while(&mut ex, &mut srv, "the head went out", |ex| ex.written).await;
    feed.src.write(b"hello").await;
    within(drive_until(&mut ex, "the write error", |ex| {
        ex.write_error.is_some()
    }))
    .await;
    srv.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad")
        .await;
    let mut resp = ok(within(ex).await);
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.body_mut();
    assert_eq!(body_bytes(body).await, b"bad");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn client_body_failure_is_a_client_error() {
    let (body, feed) = incoming(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").await;
    // The client goes away after 3 of its 10 bytes.
    drop(feed);
    let post = req(Method::POST, "/u", &[("host", "h")]);
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &post, ReqBody::Incoming(body));
    let (res, (head, data)) = within(async {
        tokio::join!(ex, async {
            let head = srv.read_head().await;
            (head, srv.read_exact(3).await)
        })
    })
    .await;
    assert_eq!(
        head,
        "POST /u HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\n"
    );
    assert_eq!(data, b"abc");
    let e = failed(res);
    assert!(e.is_client(), "{e:?}");
    assert!(matches!(e, UpstreamError::Client(_)));
    assert!(e.to_string().starts_with("client body: "), "{e}");
}

#[tokio::test]
async fn early_response_while_the_request_body_is_still_coming() {
    let (body, _feed) =
        incoming(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n").await;
    let post = req(Method::POST, "/upload", &[("host", "h")]);
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &post, ReqBody::Incoming(body));
    let (res, ()) = within(async {
        tokio::join!(ex, async {
            srv.read_head().await;
            assert_eq!(srv.read_exact(8).await, b"3\r\nabc\r\n");
            srv.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!")
                .await;
        })
    })
    .await;
    let mut resp = ok(res);
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(resp.body().writer.is_some(), "request still being sent");
    let body = resp.body_mut();
    assert_eq!(body_bytes(body).await, b"too big!");
    assert!(
        body.take_reusable().is_none(),
        "the request never finished: the stream is mid-message"
    );
    drop(resp);
    assert_eq!(srv.read_to_end().await, b"");
}

#[tokio::test]
async fn request_body_finishing_during_the_response_body_allows_reuse() {
    let (body, mut feed) =
        incoming(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n").await;
    let post = req(Method::POST, "/duplex", &[("host", "h")]);
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &post, ReqBody::Incoming(body));
    let (res, ()) = within(async {
        tokio::join!(ex, async {
            srv.read_head().await;
            assert_eq!(srv.read_exact(8).await, b"3\r\nabc\r\n");
            srv.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab")
                .await;
        })
    })
    .await;
    let mut resp = ok(res);
    let body = resp.body_mut();
    let first = within(body.frame()).await.expect("frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "ab");

    let (rest, ()) = within(async {
        tokio::join!(read_body(body), async {
            feed.src.write(b"3\r\ndef\r\n0\r\n\r\n").await;
            assert_eq!(srv.read_exact(13).await, b"3\r\ndef\r\n0\r\n\r\n");
            srv.write(b"cd").await;
        })
    })
    .await;
    assert!(rest.error.is_none(), "{:?}", rest.error);
    assert_eq!(rest.data, b"cd");
    let conn = body.take_reusable().expect("both directions complete");

    let ex = start(conn, &get("/next"), ReqBody::Empty);
    let (res, head) = within(async {
        tokio::join!(ex, async {
            let head = srv.read_head().await;
            srv.write(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            head
        })
    })
    .await;
    assert_eq!(head, "GET /next HTTP/1.1\r\nhost: client.example\r\n\r\n");
    assert_eq!(ok(res).status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn request_write_error_during_the_response_body_forbids_reuse() {
    // Declared 2 bytes; the client's body (unknown length) turns out longer, but
    // only after the backend has started answering.
    let (body, mut feed) = incoming(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
    let post = req(
        Method::POST,
        "/u",
        &[("host", "h"), ("content-length", "2")],
    );
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &post, ReqBody::Incoming(body));
    let (res, ()) = within(async {
        tokio::join!(ex, async {
            srv.read_head().await;
            srv.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab")
                .await;
        })
    })
    .await;
    let mut resp = ok(res);
    let body = resp.body_mut();
    let first = within(body.frame()).await.expect("frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "ab");
    feed.src.write(b"5\r\nhello\r\n").await;
    within(poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
        Poll::Pending if body.writer.is_none() => Poll::Ready(()),
        Poll::Pending => Poll::Pending,
        Poll::Ready(f) => panic!("unexpected frame {f:?}"),
    }))
    .await;
    assert!(!body.keep_alive);
    srv.write(b"cd").await;
    assert_eq!(body_bytes(body).await, b"cd", "the answer is still whole");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn client_body_failure_during_the_response_body_is_a_client_error() {
    let (body, feed) =
        incoming(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel").await;
    let post = req(Method::POST, "/u", &[("host", "h")]);
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &post, ReqBody::Incoming(body));
    let (res, ()) = within(async {
        tokio::join!(ex, async {
            srv.read_head().await;
            srv.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab")
                .await;
        })
    })
    .await;
    let mut resp = ok(res);
    let body = resp.body_mut();
    let first = within(body.frame()).await.expect("frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "ab");
    drop(feed);
    let got = read_body(body).await;
    assert_eq!(got.data, b"");
    let e = got.error.expect("client error");
    assert!(e.is_client(), "{e:?}");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn large_request_bodies_stream_through_with_backpressure() {
    let payload: Vec<u8> = (0..(1 << 20) + 3).map(|i| (i % 253) as u8).collect();

    // Known length.
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
        payload.len()
    );
    let (body, mut feed) = incoming(head.as_bytes()).await;
    let sent = payload.clone();
    let source = tokio::spawn(async move {
        feed.src.write(&sent).await;
        feed
    });
    let (conn, mut srv) = pair().await;
    let post = req(Method::PUT, "/blob", &[("host", "h")]);
    let ex = start(conn, &post, ReqBody::Incoming(body));
    let n = payload.len();
    let backend = tokio::spawn(async move {
        let head = srv.read_head().await;
        let data = srv.read_exact(n).await;
        srv.write(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
            .await;
        (head, data)
    });
    let resp = ok(within(ex).await);
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (head, data) = within(backend).await.expect("backend");
    assert_eq!(
        head,
        format!("PUT /blob HTTP/1.1\r\nhost: h\r\ncontent-length: {n}\r\n\r\n")
    );
    assert!(data == payload, "known-length body differs");
    within(source).await.expect("source");

    // Unknown length: re-chunked however the client's frames come.
    let (body, mut feed) = incoming(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
    let sent = payload.clone();
    let source = tokio::spawn(async move {
        for piece in sent.chunks(40_000) {
            feed.src
                .write(format!("{:x}\r\n", piece.len()).as_bytes())
                .await;
            feed.src.write(piece).await;
            feed.src.write(b"\r\n").await;
        }
        feed.src.write(b"0\r\n\r\n").await;
        feed
    });
    let (conn, mut srv) = pair().await;
    let ex = start(conn, &post, ReqBody::Incoming(body));
    let backend = tokio::spawn(async move {
        let head = srv.read_head().await;
        let (data, trailers) = srv.read_chunked().await;
        srv.write(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
            .await;
        (head, data, trailers)
    });
    let resp = ok(within(ex).await);
    assert_eq!(resp.status(), StatusCode::CREATED);
    let (head, data, trailers) = within(backend).await.expect("backend");
    assert_eq!(
        head,
        "PUT /blob HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert!(
        data == payload,
        "chunked body differs ({} bytes)",
        data.len()
    );
    assert!(trailers.is_empty());
    within(source).await.expect("source");
}

// ===========================================================================
// Small pieces.
// ===========================================================================

fn hex(n: u64) -> String {
    let mut b = BytesMut::new();
    put_hex(&mut b, n);
    text(&b)
}

fn dec(n: u64) -> String {
    let mut b = BytesMut::new();
    put_dec(&mut b, n);
    text(&b)
}

#[test]
fn put_hex_edge_cases() {
    assert_eq!(hex(0), "0");
    assert_eq!(hex(1), "1");
    assert_eq!(hex(9), "9");
    assert_eq!(hex(10), "a");
    assert_eq!(hex(15), "f");
    assert_eq!(hex(16), "10");
    assert_eq!(hex(255), "ff");
    assert_eq!(hex(256), "100");
    assert_eq!(hex(32 * 1024), "8000");
    assert_eq!(hex(0xdead_beef), "deadbeef");
    assert_eq!(hex(1 << 60), "1000000000000000");
    assert_eq!(hex(u64::MAX - 1), "fffffffffffffffe");
    assert_eq!(hex(u64::MAX), "ffffffffffffffff");
    for shift in 0..64 {
        for n in [1u64 << shift, (1u64 << shift) - 1, (1u64 << shift) + 1] {
            assert_eq!(hex(n), format!("{n:x}"));
        }
    }
    // Appends.
    let mut b = BytesMut::from(&b"x"[..]);
    put_hex(&mut b, 0x1f);
    assert_eq!(&b[..], b"x1f");
}

#[test]
fn put_dec_edge_cases() {
    assert_eq!(dec(0), "0");
    assert_eq!(dec(7), "7");
    assert_eq!(dec(10), "10");
    assert_eq!(dec(99), "99");
    assert_eq!(dec(100), "100");
    assert_eq!(dec(1_234_567_890), "1234567890");
    assert_eq!(dec(u64::MAX - 1), "18446744073709551614");
    assert_eq!(dec(u64::MAX), "18446744073709551615");
    let mut n = 1u64;
    while let Some(next) = n.checked_mul(10) {
        for m in [n - 1, n, n + 1] {
            assert_eq!(dec(m), m.to_string());
        }
        n = next;
    }
    let mut b = BytesMut::from(&b"content-length: "[..]);
    put_dec(&mut b, 42);
    assert_eq!(&b[..], b"content-length: 42");
}

fn cl(values: &[&str]) -> Result<Option<u64>, ()> {
    content_length(values.iter().map(|v| v.as_bytes()))
}

#[test]
fn content_length_parsing_edge_cases() {
    assert_eq!(cl(&[]), Ok(None));
    assert_eq!(cl(&["0"]), Ok(Some(0)));
    assert_eq!(cl(&["42"]), Ok(Some(42)));
    assert_eq!(cl(&[" 42 "]), Ok(Some(42)));
    assert_eq!(cl(&["\t42\t"]), Ok(Some(42)));
    assert_eq!(cl(&["042"]), Ok(Some(42)));
    assert_eq!(cl(&["42", "42"]), Ok(Some(42)));
    assert_eq!(cl(&["42, 42"]), Ok(Some(42)));
    assert_eq!(cl(&["42,42", "42"]), Ok(Some(42)));
    // The largest accepted: 19 digits (no overflow possible).
    assert_eq!(
        cl(&["9999999999999999999"]),
        Ok(Some(9_999_999_999_999_999_999))
    );
    assert_eq!(cl(&["0000000000000000042"]), Ok(Some(42)));
    // 20 digits are refused, even u64::MAX itself and zero-padded values.
    assert_eq!(cl(&["18446744073709551615"]), Err(()));
    assert_eq!(cl(&["18446744073709551616"]), Err(()));
    assert_eq!(cl(&["00000000000000000042"]), Err(()));
    assert_eq!(cl(&["99999999999999999999999999"]), Err(()));
    for bad in [
        "",
        " ",
        "+42",
        "-42",
        "4 2",
        "42,",
        ",42",
        "42,,42",
        "0x10",
        "1e3",
        "42;",
        "abc",
        "\u{0664}\u{0662}",
    ] {
        assert_eq!(cl(&[bad]), Err(()), "{bad:?}");
    }
    assert_eq!(cl(&["42", "43"]), Err(()));
    assert_eq!(cl(&["42, 43"]), Err(()));
    assert_eq!(cl(&["0", "1"]), Err(()));
    assert_eq!(cl(&["42", ""]), Err(()));
}

/// `hop_by_hop` for a name as it may come on the wire (any case).
fn hop(name: &str, upgrade: bool) -> bool {
    hop_by_hop(
        &HeaderName::from_bytes(name.as_bytes()).expect("name"),
        upgrade,
    )
}

#[test]
fn hop_by_hop_names_and_connection_tokens() {
    for name in [
        "connection",
        "Keep-Alive",
        "PROXY-CONNECTION",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "Trailer",
        "transfer-encoding",
    ] {
        assert!(hop(name, false), "{name}");
        assert!(hop(name, true), "{name}");
    }
    assert!(hop("Upgrade", false));
    assert!(!hop("Upgrade", true));
    for name in ["content-length", "x-te", "trailers", "connections", "host"] {
        assert!(!hop(name, false), "{name}");
    }
    assert!(has_token(b"close", b"close"));
    assert!(has_token(b"keep-alive, Close", b"close"));
    assert!(has_token(b" x ,\tCLOSE\t", b"close"));
    assert!(!has_token(b"closed", b"close"));
    assert!(!has_token(b"keep-alive", b"close"));
    assert!(!has_token(b"", b"close"));
}

#[test]
fn methods_that_expect_a_body() {
    for m in [Method::POST, Method::PUT, Method::PATCH] {
        assert!(expects_body(&m), "{m}");
    }
    for m in [
        Method::GET,
        Method::HEAD,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ] {
        assert!(!expects_body(&m), "{m}");
    }
}

fn writer(framing: Out, queue: SmallVec<[Bytes; 4]>) -> Writer<ReqBody> {
    Writer {
        body: ReqBody::Empty,
        framing,
        queue,
        body_done: false,
        touched: false,
        written: false,
        deferred: None,
        offered: false,
        send_timeout: None,
        stall: None,
        moved: false,
    }
}

fn queued(w: &Writer<ReqBody>) -> Vec<String> {
    w.queue.iter().map(|b| text(b)).collect()
}

#[test]
fn writer_consumes_partial_writes_across_buffers() {
    let mut w = writer(
        Out::Length(0),
        smallvec![
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"f"),
        ],
    );
    w.consume(1);
    assert!(w.written);
    assert_eq!(queued(&w), ["bc", "de", "f"]);
    w.consume(3);
    assert_eq!(queued(&w), ["e", "f"]);
    w.consume(2);
    assert!(w.queue.is_empty());
    w.consume(5); // nothing left: no panic
    assert!(w.queue.is_empty());
}

#[test]
fn writer_frames_request_data() {
    let mut w = writer(Out::Chunked, SmallVec::new());
    w.queue_data(Bytes::new()).expect("empty data");
    assert!(
        w.queue.is_empty(),
        "an empty frame must not become a last chunk"
    );
    w.queue_data(Bytes::from_static(b"hello")).expect("data");
    w.queue_data(Bytes::from(vec![b'x'; 300])).expect("data");
    let q = queued(&w);
    assert_eq!(q[..3], ["5\r\n", "hello", "\r\n"]);
    assert_eq!(q[3], "12c\r\n");
    assert_eq!(q[5], "\r\n");
    assert_eq!(q.len(), 6);

    let mut t = HeaderMap::new();
    t.insert("x-sum", HeaderValue::from_static("1"));
    w.queue_trailers(&t).expect("trailers");
    assert!(w.body_done);
    assert_eq!(queued(&w)[6], "0\r\nx-sum: 1\r\n\r\n");

    let mut w = writer(Out::Length(3), SmallVec::new());
    w.queue_data(Bytes::from_static(b"ab")).expect("data");
    assert_eq!(w.framing, Out::Length(1));
    match w.queue_data(Bytes::from_static(b"cd")) {
        Err(e) => assert_eq!(request_body_error(e), "longer than its content-length"),
        Ok(()) => panic!("accepted more than the content-length"),
    }
    w.queue_data(Bytes::from_static(b"c")).expect("data");
    assert_eq!(w.framing, Out::Length(0));
    assert_eq!(queued(&w), ["ab", "c"]);
    // A length-framed body cannot carry trailers: they are dropped.
    w.queue_trailers(&t).expect("trailers");
    assert_eq!(queued(&w), ["ab", "c"]);
    // Every declared byte is queued: the request is complete.
    assert!(w.body_done);
}

/// Runs `chunk_step` as `UpstreamBody` does, giving it `input` `step` bytes at a
/// time whenever it asks for more.
fn decode_chunked(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), &'static str> {
    let mut buf = BytesMut::new();
    let mut state = Chunk::Size;
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match chunk_step(&mut buf, state)? {
            Step::Next(s) => state = s,
            Step::Data(n, s) => {
                assert!(n > 0 && n <= buf.len());
                data.extend_from_slice(&buf.split_to(n));
                state = s;
            }
            Step::Trailers(t) => {
                assert!(buf.is_empty() && fed == input.len());
                return Ok((data, Some(t)));
            }
            Step::End => {
                assert!(buf.is_empty() && fed == input.len());
                return Ok((data, None));
            }
            Step::More => {
                assert!(fed < input.len(), "wants more than the whole input");
                let end = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
    }
}

#[test]
fn chunked_decoding_is_independent_of_how_input_is_split() {
    let input: &[u8] =
        b"4;ext=1\r\nwiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nx-t: 1\r\nx-u: 2\r\n\r\n";
    for step in 1..=input.len() {
        let (data, trailers) = decode_chunked(input, step).expect("valid");
        assert_eq!(text(&data), "wikipedia in\r\n\r\nchunks.", "step {step}");
        let t = trailers.expect("trailers");
        assert_eq!(
            header_list(&t),
            pairs(&[("x-t", "1"), ("x-u", "2")]),
            "step {step}"
        );
    }
    let input: &[u8] = b"1\r\na\n0\r\n\n";
    for step in 1..=input.len() {
        let (data, trailers) = decode_chunked(input, step).expect("bare LFs");
        assert_eq!(data, b"a");
        assert!(trailers.is_none());
    }
    // Sizes up to `MAX_CHUNK` parse; a larger one (no real body is that long)
    // fails at once, as does a 17th hex digit.
    let mut buf = BytesMut::from(&b"0fffffffffffffff\r\n"[..]);
    assert!(matches!(
        chunk_step(&mut buf, Chunk::Size),
        Ok(Step::Next(Chunk::Data(crate::body::MAX_CHUNK)))
    ));
    for too_big in [&b"ffffffffffffffff\r\n"[..], b"1000000000000000\r\n"] {
        let mut buf = BytesMut::from(too_big);
        assert_eq!(
            chunk_step(&mut buf, Chunk::Size).err(),
            Some("chunk size too large")
        );
    }
    let mut buf = BytesMut::from(&b"1ffffffffffffffff\r\n"[..]);
    assert!(chunk_step(&mut buf, Chunk::Size).is_err());
    // After data: CR alone waits, anything else is an error.
    let mut buf = BytesMut::from(&b"\r"[..]);
    assert!(matches!(
        chunk_step(&mut buf, Chunk::DataEnd),
        Ok(Step::More)
    ));
    let mut buf = BytesMut::from(&b"x"[..]);
    assert!(chunk_step(&mut buf, Chunk::DataEnd).is_err());
}

#[test]
fn parse_head_consumes_informational_heads_and_waits_for_the_rest() {
    let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"[..]);
    assert!(matches!(parse_response(&mut buf, false), Ok(None)));
    assert_eq!(&buf[..], b"HTTP/1.1 200");
    buf.extend_from_slice(b" OK\r\ncontent-length: 3\r\n\r\nabc");
    let head = parse_response(&mut buf, false)
        .expect("parse")
        .expect("complete");
    assert_eq!(head.response.status(), StatusCode::OK);
    assert_eq!(head.framing, Framing::Length(3));
    assert!(head.keep_alive);
    assert_eq!(&buf[..], b"abc", "the body stays in the buffer");

    // Framing decisions.
    let framing = |raw: &[u8], head_req: bool| -> (Framing, bool) {
        let mut buf = BytesMut::from(raw);
        let h = parse_response(&mut buf, head_req)
            .expect("parse")
            .expect("complete");
        (h.framing, h.keep_alive)
    };
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
        (Framing::Eof, false)
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false),
        (Framing::Empty, true)
    );
    assert_eq!(
        framing(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            false
        ),
        (Framing::Chunked(Chunk::Size), true)
    );
    assert_eq!(
        framing(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 1\r\n\r\n",
            false
        ),
        (Framing::Chunked(Chunk::Size), false)
    );
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true),
        (Framing::Empty, true)
    );
    assert_eq!(
        framing(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
        (Framing::Empty, false)
    );
}

#[test]
fn upstream_error_texts_and_kinds() {
    assert_eq!(
        UpstreamError::Closed.to_string(),
        "connection closed before the response was complete"
    );
    assert_eq!(
        UpstreamError::Malformed("bad status").to_string(),
        "malformed response: bad status"
    );
    assert_eq!(
        UpstreamError::RequestBody("bad content-length").to_string(),
        "request body: bad content-length"
    );
    let io = UpstreamError::from(io::Error::from(io::ErrorKind::ConnectionReset));
    assert!(matches!(io, UpstreamError::Io(_)));
    for e in [
        UpstreamError::Closed,
        UpstreamError::Malformed("x"),
        UpstreamError::RequestBody("x"),
        io,
    ] {
        assert!(!e.is_client(), "{e:?}");
    }
    for kind in [
        io::ErrorKind::ConnectionReset,
        io::ErrorKind::ConnectionAborted,
        io::ErrorKind::BrokenPipe,
        io::ErrorKind::UnexpectedEof,
    ] {
        assert!(is_reset(&io::Error::from(kind)), "{kind:?}");
    }
    assert!(!is_reset(&io::Error::from(io::ErrorKind::TimedOut)));
    assert!(matches!(
        SendError::<ReqBody>::from(UpstreamError::Closed),
        SendError::Failed(UpstreamError::Closed)
    ));
}

mod gather;
