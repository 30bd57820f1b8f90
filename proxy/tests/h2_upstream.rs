//! HTTP/2 to backends (`protocol: h2c | h2`): translation both ways with bodies
//! and trailers, h2 over TLS by ALPN, GOAWAY, idle streams, and hostile peers (a
//! backend that never reads, a client that stalls its streams) kept bounded.
//! Backends are hyper's HTTP/2 server or raw HTTP/1.1 on loopback sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

type Out = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn frames(list: Vec<Frame<Bytes>>) -> Out {
    StreamBody::new(futures_util::stream::iter(
        list.into_iter().map(Ok::<_, Infallible>),
    ))
    .boxed()
}

fn trailer(name: &'static str, v: &'static str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert(name, HeaderValue::from_static(v));
    t
}

/// What the h2c backend does per path:
/// - `/echo`: the request body back, then trailers `x-resp-trailer: done` and
///   `x-saw` (the request's `x-req-trailer`, or `none`), and `x-version`;
/// - `/slow`: answers after `release` is notified;
/// - `/stall`: never reads the body, never answers;
/// - `/trickle`: a head and one chunk, then nothing.
struct H2Backend {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    /// Fired to make every open connection go away (GOAWAY, graceful).
    goaway: Arc<Notify>,
    release: Arc<Notify>,
    slow_seen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    release: Arc<Notify>,
    slow_seen: Arc<AtomicBool>,
) -> Result<Response<Out>, Infallible> {
    let version = format!("{:?}", req.version());
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/echo" => {
            let collected = req.into_body().collect().await.unwrap();
            let saw = collected
                .trailers()
                .and_then(|t| t.get("x-req-trailer"))
                .map_or("none".to_string(), |v| v.to_str().unwrap().to_string());
            let mut t = trailer("x-resp-trailer", "done");
            t.insert("x-saw", saw.parse().unwrap());
            Response::builder()
                .header("x-version", version)
                .body(frames(vec![
                    Frame::data(collected.to_bytes()),
                    Frame::trailers(t),
                ]))
                .unwrap()
        }
        "/slow" => {
            slow_seen.store(true, Ordering::SeqCst);
            release.notified().await;
            Response::new(frames(vec![Frame::data(Bytes::from_static(b"slow done"))]))
        }
        "/stall" => {
            let _body = req.into_body();
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/trickle" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
                .await
                .unwrap();
            // The sender lives on in a task that never sends again.
            tokio::spawn(async move {
                let _tx = tx;
                std::future::pending::<()>().await;
            });
            Response::new(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
        }
        _ => Response::builder()
            .header("x-version", version)
            .body(frames(vec![Frame::data(Bytes::from_static(b"ok"))]))
            .unwrap(),
    };
    Ok(resp)
}

impl H2Backend {
    async fn start() -> H2Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let goaway = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let slow_seen = Arc::new(AtomicBool::new(false));
        let (c, g, r, s) = (
            conns.clone(),
            goaway.clone(),
            release.clone(),
            slow_seen.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = l.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (g, r, s) = (g.clone(), r.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, r.clone(), s.clone()));
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(sock), svc);
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = g.notified() => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                });
            }
        });
        H2Backend {
            addr,
            conns,
            goaway,
            release,
            slow_seen,
            task,
        }
    }
}

fn h2c_yaml(addr: SocketAddr, extra: &str) -> String {
    format!(
        "{}backends:\n  - url: \"http://{addr}\"\n    protocol: h2c\n{extra}",
        server_yaml()
    )
}

/// Sends raw bytes, reads until the server closes.
async fn raw(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("response within 20 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A spawned request's answer, within 20 s: a 200 with `body`.
async fn answered(
    h: tokio::task::JoinHandle<Result<Response<Incoming>, hyper::Error>>,
    what: &str,
    body: &'static [u8],
) {
    let r = tokio::time::timeout(Duration::from_secs(20), h)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 20 s"))
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{what}");
    let got = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, Bytes::from_static(body), "{what}");
}

/// An HTTP/2 (prior knowledge) client connection to `addr`.
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Out> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_reaches_an_h2c_backend_with_body_and_trailers() {
    let b = H2Backend::start().await;
    let p = proxy(&h2c_yaml(b.addr, "")).await;
    let resp = raw(
        p.proxy_addr,
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-req-trailer: yes\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains("x-version: http/2.0"), "{resp}");
    assert!(lower.contains("transfer-encoding: chunked"), "{resp}");
    assert!(resp.contains("hello world"), "{resp}");
    // Both trailers, after the last chunk: the response's own and the request's
    // as the backend saw it.
    let tail = &lower[lower.find("\r\n0\r\n").expect("last chunk")..];
    assert!(tail.contains("x-resp-trailer: done"), "{resp}");
    assert!(tail.contains("x-saw: yes"), "{resp}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_reaches_an_http1_backend_with_body_and_trailers() {
    // A raw HTTP/1.1 backend: reads a chunked request through its trailers and
    // answers chunked, with trailers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(parking_lot::Mutex::new(String::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "request ended early");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(i) = text.find("\r\n0\r\n")
                && text[i + 5..].contains("\r\n\r\n") | text[i + 5..].starts_with("\r\n")
            {
                break;
            }
        }
        *seen2.lock() = String::from_utf8_lossy(&buf).into_owned();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nworld\r\n0\r\nx-resp-trailer: done\r\n\r\n").await.unwrap();
        let _ = s.shutdown().await;
    });
    let yaml = format!("{}backends:\n  - url: \"http://{addr}\"\n", server_yaml());
    let p = proxy(&yaml).await;
    let mut send = h2_client(p.proxy_addr).await;
    let req = Request::post(format!("http://{}/up", p.proxy_addr))
        .body(frames(vec![
            Frame::data(Bytes::from_static(b"hello")),
            Frame::trailers(trailer("x-req-trailer", "yes")),
        ]))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"world"));
    assert_eq!(trailers.get("x-resp-trailer").unwrap(), "done");
    let req_seen = seen.lock().clone().to_ascii_lowercase();
    assert!(
        req_seen.contains("transfer-encoding: chunked"),
        "{req_seen}"
    );
    assert!(req_seen.contains("5\r\nhello\r\n"), "{req_seen}");
    assert!(req_seen.contains("x-req-trailer: yes"), "{req_seen}");
    task.await.unwrap();
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_backend_over_tls_is_reached_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::tls::Ca::new("test ca");
    let ca_path = ca.write(dir.path());
    let (cert, key) = ca.leaf(&["backend.test"]);
    let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::pem::PemObject::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key: rustls_pki_types::PrivateKeyDer<'static> =
        rustls_pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
    let mk = |alpn: Vec<Vec<u8>>| {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key.clone_key())
        .unwrap();
        cfg.alpn_protocols = alpn;
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    };
    let serve = |acceptor: tokio_rustls::TlsAcceptor, l: TcpListener| async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = service_fn(|req| {
                    handle(
                        req,
                        Arc::new(Notify::new()),
                        Arc::new(AtomicBool::new(false)),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    };
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good = l.local_addr().unwrap();
    let t1 = tokio::spawn(serve(mk(vec![b"h2".to_vec()]), l));
    // One that only speaks HTTP/1.1 over TLS: no h2 by ALPN.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http1_only = l.local_addr().unwrap();
    let t2 = tokio::spawn(serve(mk(vec![b"http/1.1".to_vec()]), l));
    let tls = format!(
        "    tls:\n      ca_file: \"{}\"\n      server_name: backend.test\n",
        ca_path.display()
    );
    let yaml = format!(
        "{}backends:\n  - url: \"https://{good}\"\n    protocol: h2\n{tls}",
        server_yaml()
    );
    let p = proxy(&yaml).await;
    let r = post(&url(p.proxy_addr, "/echo"), "over tls").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "over tls");
    assert_eq!(r.headers.get("x-version").unwrap(), "HTTP/2.0");
    p.shutdown().await;

    let yaml = format!(
        "{}backends:\n  - url: \"https://{http1_only}\"\n    protocol: h2\n{tls}",
        server_yaml()
    );
    let p = proxy(&yaml).await;
    let r = get(&url(p.proxy_addr, "/echo")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    p.shutdown().await;
    t1.abort();
    t2.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_lets_streams_finish_and_new_ones_take_a_new_connection() {
    let b = H2Backend::start().await;
    let p = proxy(&h2c_yaml(b.addr, "")).await;
    let slow_url = url(p.proxy_addr, "/slow");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    let seen = b.slow_seen.clone();
    wait_until(
        Duration::from_secs(20),
        "the slow stream at the backend",
        || {
            let seen = seen.clone();
            async move { seen.load(Ordering::SeqCst) }
        },
    )
    .await;
    assert_eq!(b.conns.load(Ordering::SeqCst), 1);
    // The backend says GOAWAY on its connection; the slow stream is in flight.
    b.goaway.notify_waiters();
    // New requests succeed (on a new connection) ...
    for _ in 0..5 {
        let r = get(&url(p.proxy_addr, "/fast")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert_eq!(b.conns.load(Ordering::SeqCst), 2);
    // ... and the one in flight finishes on the old one.
    b.release.notify_waiters();
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "slow done");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_response_stream_is_reset_after_its_timeout() {
    let b = H2Backend::start().await;
    let p = proxy(&h2c_yaml(
        b.addr,
        "upstream:\n  http2:\n    stream_idle_timeout: \"300ms\"\n",
    ))
    .await;
    let mut send = h2_client(p.proxy_addr).await;
    let req = Request::get(format!("http://{}/trickle", p.proxy_addr))
        .body(frames(vec![]))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first"));
    // Then nothing comes: the proxy resets the stream instead of keeping it.
    let next = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("the idle stream ended by the proxy");
    assert!(matches!(next, Some(Err(_))), "{next:?}");
    // The connection still serves.
    let r = get(&url(p.proxy_addr, "/fast")).await;
    assert_eq!(r.status, StatusCode::OK);
    p.shutdown().await;
}

/// A request body that yields 64 KiB chunks up to `limit` bytes, counting what
/// was taken from it.
fn counted_upload(limit: usize, taken: Arc<AtomicUsize>) -> Out {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let s = futures_util::stream::unfold(0usize, move |sent| {
        let chunk = chunk.clone();
        let taken = taken.clone();
        async move {
            if sent >= limit {
                return None;
            }
            taken.fetch_add(chunk.len(), Ordering::SeqCst);
            Some((
                Ok::<_, Infallible>(Frame::data(chunk.clone())),
                sent + chunk.len(),
            ))
        }
    });
    StreamBody::new(s).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_reads_a_stream_stays_bounded() {
    let b = H2Backend::start().await;
    let p = proxy(&h2c_yaml(b.addr, "timeouts:\n  request: \"3s\"\n")).await;
    let taken = Arc::new(AtomicUsize::new(0));
    let mut send = h2_client(p.proxy_addr).await;
    let req = Request::post(format!("http://{}/stall", p.proxy_addr))
        .body(counted_upload(256 << 20, taken.clone()))
        .unwrap();
    let stalled = tokio::spawn(send.send_request(req));
    // Others are served meanwhile, on the same backend.
    for _ in 0..20 {
        let r = get(&url(p.proxy_addr, "/fast")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // The stalled call ends with the request timeout, and what the proxy took of
    // the upload stayed within the flow-control windows (client side and
    // backend side), far from the 256 MiB offered.
    let resp = tokio::time::timeout(Duration::from_secs(30), stalled)
        .await
        .expect("the stalled request ended")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let taken = taken.load(Ordering::SeqCst);
    assert!(taken < 32 << 20, "{taken} bytes taken from the client");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_its_maximum_of_streams_does_not_block_others() {
    let b = H2Backend::start().await;
    let yaml = format!(
        "{}  http2_max_concurrent_streams: 8\nbackends:\n  - url: \"http://{}\"\n    protocol: h2c\ntimeouts:\n  request: \"60s\"\n",
        server_yaml(),
        b.addr
    );
    let p = proxy(&yaml).await;
    // Client A opens its eight streams and never finishes their uploads.
    let mut a = h2_client(p.proxy_addr).await;
    let mut held = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..8 {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"partial"))))
            .await
            .unwrap();
        senders.push(tx);
        let req = Request::post(format!("http://{}/echo", p.proxy_addr))
            .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
            .unwrap();
        held.push(tokio::spawn(a.send_request(req)));
    }
    // Everyone else is served: HTTP/1.1 clients and other HTTP/2 connections.
    for _ in 0..10 {
        let r = get(&url(p.proxy_addr, "/fast")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let mut other = h2_client(p.proxy_addr).await;
    for _ in 0..10 {
        let req = Request::get(format!("http://{}/fast", p.proxy_addr))
            .body(frames(vec![]))
            .unwrap();
        let r = other.send_request(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // A's streams are still there, and complete once A finishes them.
    for tx in senders {
        drop(tx);
    }
    for h in held {
        answered(h, "held stream completes", b"partial").await;
    }
    p.shutdown().await;
}

/// A client HTTP/2 connection's streams run on the connection's own task (not a
/// task each): many at once are all served while one of them waits on its backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_on_one_connection_are_served_beside_a_waiting_one() {
    let b = H2Backend::start().await;
    let p = proxy(&h2c_yaml(b.addr, "")).await;
    let mut send = h2_client(p.proxy_addr).await;
    let slow = Request::get(format!("http://{}/slow", p.proxy_addr))
        .body(frames(vec![]))
        .unwrap();
    let slow = tokio::spawn(send.send_request(slow));
    let seen = b.slow_seen.clone();
    wait_until(
        Duration::from_secs(20),
        "the slow stream at the backend",
        || {
            let seen = seen.clone();
            async move { seen.load(Ordering::SeqCst) }
        },
    )
    .await;
    // 200 streams at once on the same connection, the slow one still open.
    let many: Vec<_> = (0..200)
        .map(|i| {
            let req = Request::get(format!("http://{}/fast?{i}", p.proxy_addr))
                .body(frames(vec![]))
                .unwrap();
            let resp = send.send_request(req);
            async move {
                let r = resp.await.unwrap();
                let status = r.status();
                (status, r.into_body().collect().await.unwrap().to_bytes())
            }
        })
        .collect();
    let served = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(many),
    )
    .await
    .expect("the 200 streams were served");
    for (status, body) in served {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, Bytes::from_static(b"ok"));
    }
    assert!(!slow.is_finished(), "the slow stream waits for its backend");
    b.release.notify_one();
    answered(slow, "the slow stream completes", b"slow done").await;
    p.shutdown().await;
}

/// Shutting the proxy down sends the client GOAWAY and lets the streams in flight
/// on the connection finish (they run on the connection's task, which keeps
/// driving them after the GOAWAY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_client_streams_in_flight_finish() {
    let b = H2Backend::start().await;
    // A grace period longer than the test waits: the proxy stops because its
    // connections end, not because the grace period ran out.
    let yaml = format!(
        "{}  grace_period: \"120s\"\n  header_read_timeout: \"120s\"\nbackends:\n  - url: \"http://{}\"\n    protocol: h2c\n",
        server_yaml(),
        b.addr
    );
    let p = proxy(&yaml).await;
    let addr = p.proxy_addr;
    // An idle connection (one request served) must go away too.
    let mut idle = h2_client(addr).await;
    let req = Request::get(format!("http://{addr}/fast"))
        .body(frames(vec![]))
        .unwrap();
    assert_eq!(
        idle.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    let mut send = h2_client(addr).await;
    let slow = Request::get(format!("http://{addr}/slow"))
        .body(frames(vec![]))
        .unwrap();
    let slow = tokio::spawn(send.send_request(slow));
    let seen = b.slow_seen.clone();
    wait_until(
        Duration::from_secs(20),
        "the slow stream at the backend",
        || {
            let seen = seen.clone();
            async move { seen.load(Ordering::SeqCst) }
        },
    )
    .await;
    let stopping = tokio::spawn(p.shutdown());
    // Until the connection's GOAWAY has come: a new stream on it is refused.
    wait_until(Duration::from_secs(20), "GOAWAY on the connection", || {
        let req = Request::get(format!("http://{addr}/fast"))
            .body(frames(vec![]))
            .unwrap();
        let resp = send.send_request(req);
        async move { resp.await.is_err() }
    })
    .await;
    assert!(!slow.is_finished(), "the slow stream waits for its backend");
    b.release.notify_one();
    answered(slow, "the slow stream completes", b"slow done").await;
    // Within 20 s: before hyper's keep-alive PING (every 30 s) would wake a
    // connection whose GOAWAY was queued but never sent.
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the proxy stopped once the stream was done, the idle connection gone")
        .unwrap();
    drop(idle);
}

/// A backend on the `h2` crate's server that resets every stream of its first
/// connection (of all, with `always`) with REFUSED_STREAM and answers `second` on
/// the later ones.
async fn refusing_backend(
    always: bool,
) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let nth = counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if nth == 0 || always {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    if let Ok(mut tx) = respond.send_response(Response::new(()), false) {
                        let _ = tx.send_data(Bytes::from_static(b"second"), true);
                    }
                }
            });
        }
    });
    (addr, conns, task)
}

/// A stream the backend refused (REFUSED_STREAM: RFC 9113 §8.7, not processed)
/// goes again on a fresh connection; the client sees only the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_sent_again_on_a_fresh_connection() {
    let (addr, conns, task) = refusing_backend(false).await;
    let p = proxy(&h2c_yaml(addr, "retries:\n  attempts: 1\n")).await;
    let r = tokio::time::timeout(Duration::from_secs(20), get(&url(p.proxy_addr, "/")))
        .await
        .expect("an answer within 20 s");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, "second");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    p.shutdown().await;
    task.abort();
}

/// A backend connection that stops answering PINGs (the peer's process hangs,
/// its socket stays open) is closed after `keepalive_timeout`, not kept until
/// its idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_answering_pings_is_dropped() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let answered = Arc::new(Notify::new());
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = answered.clone();
    let backend = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        // A second handle on the socket, to see the proxy close it once this
        // side no longer reads its frames.
        let std = s.into_std().unwrap();
        let mut watch = TcpStream::from_std(std.try_clone().unwrap()).unwrap();
        let s = TcpStream::from_std(std).unwrap();
        let mut conn = h2::server::handshake(s).await.unwrap();
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                next = conn.accept() => {
                    let Some(Ok((_req, mut respond))) = next else { return };
                    let mut tx = respond.send_response(Response::new(()), false).unwrap();
                    tx.send_data(Bytes::from_static(b"pong"), true).unwrap();
                }
            }
        }
        // Hung: the connection is kept, never polled again (no PONG).
        let mut sink = vec![0u8; 4096];
        while watch.read(&mut sink).await.map(|n| n > 0).unwrap_or(false) {}
        let _ = closed_tx.send(());
        drop(conn);
    });
    let p = proxy(&h2c_yaml(
        addr,
        "upstream:\n  http2:\n    keepalive_interval: \"200ms\"\n    keepalive_timeout: \"300ms\"\n    idle_timeout: \"1h\"\n",
    ))
    .await;
    let r = tokio::time::timeout(Duration::from_secs(20), get(&url(p.proxy_addr, "/")))
        .await
        .expect("an answer within 20 s");
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, "pong");
    answered.notify_one();
    tokio::time::timeout(Duration::from_secs(20), closed_rx)
        .await
        .expect("the proxy closed the silent connection within 20 s")
        .unwrap();
    p.shutdown().await;
    backend.abort();
}

/// A backend that refuses every stream, on fresh connections too, gets a bounded
/// number of tries (a refusal on a fresh connection counts as a failed attempt),
/// and the client an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refusing_every_stream_is_not_redialled_without_end() {
    let (addr, conns, task) = refusing_backend(true).await;
    let p = proxy(&h2c_yaml(addr, "retries:\n  attempts: 1\n")).await;
    let r = tokio::time::timeout(Duration::from_secs(20), get(&url(p.proxy_addr, "/")))
        .await
        .expect("an answer within 20 s");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    let opened = conns.load(Ordering::SeqCst);
    assert!((2..=4).contains(&opened), "{opened} connections");
    p.shutdown().await;
    task.abort();
}
