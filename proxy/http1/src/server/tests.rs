//! The server's head parser, response encoder and request body on real sockets.
//! (Whole connections are covered black-box by switchyard's `tests/h1_server.rs`.)

use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderValue, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::codec::{Ambiguity, Chunk, choose_framing, parse_request};

/// A response body made in a test (the proxy's own bodies are its business).
type TestBody = Full<Bytes>;

fn full(text: &'static str) -> TestBody {
    Full::new(Bytes::from_static(text.as_bytes()))
}

fn empty() -> TestBody {
    Full::new(Bytes::new())
}

fn limits() -> Limits {
    Limits {
        max_head: 1024,
        max_headers: 8,
        header_timeout: Duration::from_secs(5),
        send_timeout: Duration::from_secs(5),
        http2: true,
    }
}

fn parse(bytes: &[u8]) -> Result<Option<RequestHead>, Refusal> {
    let mut buf = BytesMut::from(bytes);
    let l = limits();
    parse_request(&mut buf, l.max_head, l.max_headers)
}

fn head(bytes: &[u8]) -> RequestHead {
    match parse(bytes) {
        Ok(Some(h)) => h,
        Ok(None) => panic!("incomplete: {:?}", String::from_utf8_lossy(bytes)),
        Err(r) => panic!("refused ({r:?}): {:?}", String::from_utf8_lossy(bytes)),
    }
}

fn refusal(bytes: &[u8]) -> Refusal {
    match parse(bytes) {
        Err(r) => r,
        Ok(_) => panic!("accepted: {:?}", String::from_utf8_lossy(bytes)),
    }
}

#[test]
fn a_complete_head_is_consumed_and_what_follows_is_left() {
    let mut buf =
        BytesMut::from(&b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-One: 1\r\n\r\nGET /next"[..]);
    let l = limits();
    let h = parse_request(&mut buf, l.max_head, l.max_headers)
        .expect("parsed")
        .expect("complete");
    assert_eq!(&buf[..], b"GET /next");
    assert_eq!(h.parts.method, Method::GET);
    assert_eq!(h.parts.uri, "/a?b=1");
    assert_eq!(h.parts.version, Version::HTTP_11);
    assert_eq!(h.parts.headers["host"], "x");
    assert_eq!(h.parts.headers["x-one"], "1");
    assert_eq!(h.framing, Framing::Length(0));
    assert!(h.keep_alive);
    assert!(!h.upgrade && !h.expect_continue && !h.trailers);
}

#[test]
fn an_incomplete_head_waits_for_more() {
    assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None)));
    assert!(matches!(parse(b"GE"), Ok(None)));
}

#[test]
fn keep_alive_follows_the_version_and_connection_tokens() {
    assert!(!head(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!head(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: x, Close\r\n\r\n").keep_alive);
    assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    assert!(!head(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
}

#[test]
fn body_framing_is_read_from_the_head() {
    assert_eq!(
        head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n").framing,
        Framing::Length(12)
    );
    assert_eq!(
        head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked \r\n\r\n").framing,
        Framing::Chunked(Chunk::Size)
    );
}

/// RFC 9112 §6.1/§7.1: `Transfer-Encoding` is one `chunked` or refused — a list
/// or a repeated line is 400, a single coding we do not know 501.
#[test]
fn transfer_encoding_is_a_single_chunked_or_refused() {
    for bad in [
        &b"Transfer-Encoding: gzip, chunked\r\n"[..],
        b"Transfer-Encoding: identity, chunked\r\n",
        b"Transfer-Encoding: chunked, chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: \r\n",
    ] {
        let mut req = b"POST / HTTP/1.1\r\nHost: x\r\n".to_vec();
        req.extend_from_slice(bad);
        req.extend_from_slice(b"\r\n");
        assert!(
            matches!(refusal(&req), Refusal::Malformed(_)),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    for unknown in ["gzip", "identity", "xchunked"] {
        let req = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {unknown}\r\n\r\n");
        assert_eq!(refusal(req.as_bytes()), Refusal::UnknownCoding, "{unknown}");
    }
}

/// RFC 9112 §3.2: exactly one `Host` on HTTP/1.1 (none is fine on HTTP/1.0).
#[test]
fn host_is_required_once_on_http_1_1() {
    assert!(matches!(
        refusal(b"GET / HTTP/1.1\r\n\r\n"),
        Refusal::Malformed(_)
    ));
    assert!(matches!(
        refusal(b"GET http://a.example/ HTTP/1.1\r\n\r\n"),
        Refusal::Malformed(_)
    ));
    assert!(matches!(
        refusal(b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"),
        Refusal::Malformed(_)
    ));
    assert!(matches!(
        refusal(b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n"),
        Refusal::Malformed(_)
    ));
    head(b"GET / HTTP/1.0\r\n\r\n");
    head(b"GET / HTTP/1.1\r\nhOsT: a\r\n\r\n");
}

#[test]
fn smuggling_shaped_framing_is_refused() {
    use Refusal::{Ambiguous, Malformed};
    assert!(matches!(
        refusal(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Ambiguous(Ambiguity::LengthAndChunked)
    ));
    assert!(matches!(
        refusal(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
        Ambiguous(Ambiguity::DuplicateLength)
    ));
    assert!(matches!(
        refusal(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
        Malformed(_)
    ));
    assert!(matches!(
        refusal(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Malformed(_)
    ));
    for bad in [
        &b"+3"[..],
        b"3,3",
        b"-1",
        b"",
        b"0x10",
        b"99999999999999999999",
    ] {
        let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ".to_vec();
        req.extend_from_slice(bad);
        req.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(refusal(&req), Malformed(_)), "{bad:?}");
    }
}

#[test]
fn malformed_and_oversized_heads_are_refused() {
    assert!(matches!(refusal(b"GARBAGE\r\n\r\n"), Refusal::Malformed(_)));
    assert!(matches!(
        refusal(b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n"),
        Refusal::Malformed(_)
    ));
    assert!(matches!(
        refusal(b"GET / HTTP/1.1\r\nHost: x\r\nName : v\r\n\r\n"),
        Refusal::Malformed(_)
    ));
    assert!(matches!(
        refusal(b"GET / HTTP/2.0\r\n\r\n"),
        Refusal::Malformed(_)
    ));
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..9 {
        many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(matches!(refusal(&many), Refusal::TooLarge));
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2000));
    assert!(matches!(refusal(long.as_bytes()), Refusal::TooLarge));
}

#[test]
fn upgrade_continue_and_trailers_are_noticed() {
    let h =
        head(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(h.upgrade);
    // An Upgrade header that Connection does not name is not a request to switch.
    assert!(!head(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n").upgrade);
    assert!(
        head(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
            .expect_continue
    );
    // Nothing to continue to without a body, nor for an HTTP/1.0 client.
    assert!(!head(b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    assert!(
        !head(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
            .expect_continue
    );
    assert!(head(b"GET / HTTP/1.1\r\nHost: x\r\nTE: gzip, trailers\r\n\r\n").trailers);
}

fn encode(
    resp: Response<TestBody>,
    head_request: bool,
    version: Version,
    keep: bool,
) -> (String, OutFraming, bool) {
    let mut keep = keep;
    let (parts, body) = resp.into_parts();
    let e = encode_response(&parts, &body, head_request, version, false, true, &mut keep);
    (
        String::from_utf8_lossy(&e.head).into_owned(),
        e.framing,
        keep,
    )
}

fn response(status: u16, headers: &[(&str, &str)], body: TestBody) -> Response<TestBody> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    for (n, v) in headers {
        r.headers_mut().append(
            http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    r
}

#[test]
fn responses_are_framed_by_length_when_known() {
    let (text, framing, keep) = encode(
        response(200, &[("x-a", "1")], full("hello")),
        false,
        Version::HTTP_11,
        true,
    );
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 5\r\n"), "{text}");
    assert!(text.contains("x-a: 1\r\n"), "{text}");
    assert!(text.contains("date: "), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    assert_eq!(framing, OutFraming::Length(5));
    assert!(keep);
    // A declared length is used as it is, and a backend's date is kept.
    let (text, framing, _) = encode(
        response(200, &[("content-length", "7"), ("date", "then")], empty()),
        false,
        Version::HTTP_11,
        true,
    );
    assert_eq!(framing, OutFraming::Length(7));
    assert_eq!(text.matches("content-length").count(), 1, "{text}");
    assert!(text.contains("date: then\r\n") && text.matches("date").count() == 1);
}

#[test]
fn bodiless_responses_keep_or_drop_their_length_as_the_rfc_says() {
    // HEAD and 304 describe the body they would have had.
    let (text, framing, _) = encode(
        response(200, &[("content-length", "42")], empty()),
        true,
        Version::HTTP_11,
        true,
    );
    assert_eq!(framing, OutFraming::None);
    assert!(text.contains("content-length: 42\r\n"), "{text}");
    let (text, framing, _) = encode(
        response(304, &[("content-length", "42")], empty()),
        false,
        Version::HTTP_11,
        true,
    );
    assert_eq!(framing, OutFraming::None);
    assert!(text.contains("content-length: 42\r\n"), "{text}");
    // 204 has none at all.
    let (text, framing, _) = encode(
        response(204, &[("content-length", "0")], empty()),
        false,
        Version::HTTP_11,
        true,
    );
    assert_eq!(framing, OutFraming::None);
    assert!(!text.contains("content-length"), "{text}");
}

#[test]
fn unknown_lengths_are_chunked_for_http11_and_close_delimited_for_http10() {
    assert_eq!(
        choose_framing(None, None, false, Version::HTTP_11, true),
        OutFraming::Chunked { trailers: true }
    );
    assert_eq!(
        choose_framing(None, None, false, Version::HTTP_10, true),
        OutFraming::Close
    );
    assert_eq!(
        choose_framing(None, Some(3), false, Version::HTTP_10, false),
        OutFraming::Length(3)
    );
    // A declared length wins over what the body says; no body wins over both.
    assert_eq!(
        choose_framing(Some(5), Some(3), false, Version::HTTP_11, false),
        OutFraming::Length(5)
    );
    assert_eq!(
        choose_framing(Some(5), None, true, Version::HTTP_11, false),
        OutFraming::None
    );
}

#[test]
fn connection_headers_say_what_happens_next() {
    // Closing: said once, whoever decided it.
    let (text, _, keep) = encode(
        response(400, &[("connection", "close")], full("x")),
        false,
        Version::HTTP_11,
        true,
    );
    assert!(!keep);
    assert_eq!(text.matches("connection").count(), 1, "{text}");
    let (text, _, keep) = encode(
        response(200, &[], full("x")),
        false,
        Version::HTTP_11,
        false,
    );
    assert!(!keep && text.contains("connection: close\r\n"), "{text}");
    // An HTTP/1.0 client that asked to keep the connection is told it is kept.
    let (text, _, keep) = encode(response(200, &[], full("x")), false, Version::HTTP_10, true);
    assert!(
        keep && text.contains("connection: keep-alive\r\n"),
        "{text}"
    );
}

/// A connected pair: (the server's end, the client's end).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
    (server.expect("accept").0, client.expect("connect"))
}

fn client_body(
    io: TcpStream,
    already: &[u8],
    framing: Framing,
) -> (ClientBody, Arc<Mutex<BodyState>>) {
    let state = Arc::new(Mutex::new(BodyState {
        buf: BytesMut::from(already),
        framing,
        cont: Continue::No,
    }));
    (
        ClientBody {
            io: Arc::new(io),
            state: state.clone(),
        },
        state,
    )
}

#[tokio::test]
async fn a_length_body_is_read_across_writes_and_the_next_request_is_left() {
    let (server, mut client) = pair().await;
    let (body, state) = client_body(server, b"hel", Framing::Length(11));
    let send = tokio::spawn(async move {
        client.write_all(b"lo w").await.expect("write");
        tokio::task::yield_now().await;
        client.write_all(b"orldGET /next").await.expect("write");
        client
    });
    let got = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("in time")
        .expect("body")
        .to_bytes();
    assert_eq!(&got[..], b"hello world");
    let _client = send.await.expect("sender");
    let st = state.lock();
    assert_eq!(st.framing, Framing::Done);
    // What came after the body stays for the connection (maybe not all read yet).
    assert!(b"GET /next".starts_with(&st.buf[..]), "{:?}", st.buf);
}

#[tokio::test]
async fn a_chunked_body_with_trailers_is_decoded() {
    let (server, mut client) = pair().await;
    let (mut body, state) = client_body(
        server,
        b"4;ext=1\r\nwiki\r\n",
        Framing::Chunked(Chunk::Size),
    );
    client
        .write_all(b"5\r\npedia\r\n0\r\nx-sum: 9\r\n\r\nNEXT")
        .await
        .expect("write");
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("in time")
    {
        let frame = frame.expect("frame");
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    assert_eq!(data, b"wikipedia");
    assert_eq!(trailers.expect("trailers")["x-sum"], "9");
    let st = state.lock();
    assert_eq!(st.framing, Framing::Done);
    assert_eq!(&st.buf[..], b"NEXT");
}

#[tokio::test]
async fn a_body_cut_short_by_the_client_is_an_error() {
    let (server, mut client) = pair().await;
    let (body, _) = client_body(server, b"", Framing::Length(10));
    client.write_all(b"abc").await.expect("write");
    drop(client);
    let r = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("in time");
    assert!(matches!(r, Err(ClientBodyError::Closed)), "{r:?}");
}

#[tokio::test]
async fn continue_is_sent_when_the_body_is_first_wanted_and_never_after_the_answer() {
    let (server, mut client) = pair().await;
    let (mut body, state) = client_body(server, b"", Framing::Length(2));
    state.lock().cont = Continue::Wanted(0);
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; CONTINUE.len()];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .expect("100");
        client.write_all(b"ok").await.expect("write");
        (got, client)
    });
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("in time")
        .expect("frame")
        .expect("data");
    assert_eq!(frame.into_data().expect("data"), "ok");
    let (got, _client) = reader.await.expect("reader");
    assert_eq!(got, CONTINUE);

    // Once refused (the final answer began), polling the body sends nothing.
    let (server, mut client) = pair().await;
    let (mut body, state) = client_body(server, b"", Framing::Length(2));
    state.lock().cont = Continue::Refused;
    client.write_all(b"ok").await.expect("write");
    let _ = body.frame().await;
    drop(body);
    drop(state);
    let mut rest = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut rest),
    )
    .await
    .expect("in time")
    .expect("read");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// A handler that answers everything with a short text.
struct Fixed;

impl Handler for Fixed {
    type Body = TestBody;

    async fn call(
        &self,
        _head: http::request::Parts,
        _body: Option<ClientBody>,
        _upgrade: Option<ClientUpgrade>,
    ) -> Response<TestBody> {
        Response::new(full("ok"))
    }

    fn refuse(&self, _refusal: Refusal) -> Response<TestBody> {
        Response::new(full("no"))
    }

    async fn serve_h2(&self, _io: Rewind, _limits: &Limits, _stop: watch::Receiver<bool>) {}
}

/// An idle connection costs its task's size; keep it small (the HTTP/2 handler's
/// state and the per-request future are boxed, not inline).
#[tokio::test]
async fn a_connection_task_stays_small() {
    let (server, _client) = pair().await;
    let (_tx, rx) = watch::channel(false);
    let conn = serve(server, Fixed, Arc::new(limits()), rx);
    let size = std::mem::size_of_val(&conn);
    assert!(size <= 512, "connection future is {size} bytes");
}

/// A waiting connection's read buffer is kept for the next read only once no
/// request head read into it is alive; then it is handed out whole again.
#[test]
fn a_read_buffer_is_reused_only_when_nothing_points_into_it() {
    let mut buf = spare::take();
    assert!(buf.capacity() >= HEAD_READ);
    buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let head = buf.split_to(buf.len()).freeze();
    // The head still points into the allocation: the buffer is not kept.
    spare::give(std::mem::take(&mut buf));
    let other = spare::take();
    assert_ne!(
        other.as_ptr(),
        head.as_ptr(),
        "not the live head's allocation"
    );
    drop(other);

    let mut buf = spare::take();
    buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let start = buf.as_ptr();
    let head = buf.split_to(buf.len()).freeze();
    drop(head);
    spare::give(buf);
    let again = spare::take();
    assert_eq!(again.as_ptr(), start, "the same allocation, from its start");
    assert!(again.is_empty() && again.capacity() >= HEAD_READ);
}

// === fresh connections (`serve_fresh`) ===

/// Answers every request with the same body.
struct Answer(Bytes);

impl Handler for Answer {
    type Body = TestBody;

    async fn call(
        &self,
        _head: http::request::Parts,
        _body: Option<ClientBody>,
        _upgrade: Option<ClientUpgrade>,
    ) -> Response<TestBody> {
        Response::new(Full::new(self.0.clone()))
    }

    fn refuse(&self, _refusal: Refusal) -> Response<TestBody> {
        let mut r = Response::new(full("refused"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        r
    }

    async fn serve_h2(&self, _io: Rewind, _limits: &Limits, _stop: watch::Receiver<bool>) {}
}

fn registered() -> u64 {
    REGISTERED.with(|r| r.get())
}

/// A connected pair whose server end is plain (not registered), as the
/// listener's acceptor hands it out; `sent` is written by the client first and is
/// in the server's receive queue before it returns.
async fn fresh_pair(sent: &[u8]) -> (std::net::TcpStream, TcpStream) {
    let (server, mut client) = pair().await;
    client.write_all(sent).await.expect("write");
    let server = server.into_std().expect("plain");
    // Loopback delivers at once; make sure it is there (a peek, no wait in epoll).
    let mut probe = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sent.is_empty() && server.peek(&mut probe).map_or(true, |n| n == 0) {
        assert!(Instant::now() < deadline, "request never arrived");
        tokio::task::yield_now().await;
    }
    (server, client)
}

/// Serves `server` fresh and reads what the client gets until the server closes.
async fn answer_of(
    server: std::net::TcpStream,
    mut client: TcpStream,
    body: &'static [u8],
    later: &[u8],
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let (_tx, rx) = watch::channel(false);
    let conn = serve_fresh(
        server,
        Answer(Bytes::from_static(body)),
        Arc::new(limits()),
        rx,
    );
    let served = tokio::spawn(conn);
    client.write_all(later).await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
        .await
        .expect("closed in time")
        .expect("read");
    served.await.expect("served");
    got
}

/// What a client that sent `sent` before the connection was accepted, and
/// `later` after, gets back (as text), and how many sockets were registered.
async fn served(sent: &[u8], body: &'static [u8], later: &[u8]) -> (String, u64) {
    let before = registered();
    let (server, client) = fresh_pair(sent).await;
    let got = answer_of(server, client, body, later).await;
    (
        String::from_utf8_lossy(&got).into_owned(),
        registered() - before,
    )
}

/// A `Connection: close` request that is there when the connection is accepted
/// is answered and closed without the socket entering the reactor.
#[tokio::test]
async fn a_last_request_already_there_is_served_without_registering() {
    let (text, registrations) = served(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"hello",
        b"",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    assert_eq!(registrations, 0, "never registered");

    // HTTP/1.0 without keep-alive is a last request too.
    let (text, registrations) = served(b"GET / HTTP/1.0\r\n\r\n", b"old", b"").await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("old"),
        "{text}"
    );
    assert_eq!(registrations, 0, "never registered");
}

/// A keep-alive request goes on on a registered socket: its answer, then the
/// next request's. So does one that only looks like a last one (a `close`
/// elsewhere in its head: parsed once more by the loop).
#[tokio::test]
async fn a_keep_alive_request_registers_and_the_connection_goes_on() {
    for first in [
        &b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /1 HTTP/1.1\r\nHost: x\r\nX-Note: close enough\r\n\r\n",
    ] {
        let (text, registrations) = served(
            first,
            b"hi",
            b"GET /2 HTTP/1.1\r\nHost: x\r\nCONNECTION: CLOSE\r\n\r\n",
        )
        .await;
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
        assert_eq!(registrations, 1, "{text}");
    }
}

#[test]
fn last_requests_are_told_from_their_first_bytes() {
    for last in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nConnection: Close\r\nHost: x\r\n\r\n",
        b"HEAD / HTTP/1.1\nHost: x\nCONNECTION: CLOSE\n\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ] {
        assert!(may_be_last(last), "{:?}", String::from_utf8_lossy(last));
    }
    for other in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1",
        b"",
    ] {
        assert!(!may_be_last(other), "{:?}", String::from_utf8_lossy(other));
    }
}

/// Nothing there yet when accepted: the connection registers and waits for it.
#[tokio::test]
async fn a_request_not_there_yet_is_waited_for() {
    let (text, registrations) = served(
        b"",
        b"late",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("late"),
        "{text}"
    );
    assert_eq!(registrations, 1);
}

/// An answer larger than the socket takes at once: the socket registers when the
/// write would block, and the rest goes out as the client reads.
#[tokio::test]
async fn a_last_answer_the_socket_cannot_take_at_once_is_written_whole() {
    static BIG: [u8; 8 << 20] = [b'x'; 8 << 20];
    let (text, registrations) = served(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        &BIG,
        b"",
    )
    .await;
    let head_end = text.find("\r\n\r\n").expect("a head") + 4;
    assert_eq!(text.len() - head_end, BIG.len(), "the whole body");
    assert_eq!(registrations, 1, "registered to wait");
}

/// A malformed head on a fresh socket gets the handler's refusal.
#[tokio::test]
async fn a_malformed_first_head_is_refused() {
    let (text, _) = served(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", b"never", b"").await;
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.ends_with("refused"), "{text}");
}
