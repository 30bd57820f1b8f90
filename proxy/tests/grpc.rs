//! gRPC end to end through the proxy, with tonic on both sides (its server
//! framework and its client; only the test service's handlers are ours): the four
//! call kinds with 4 MiB messages and trailers, 1,000 concurrent streams on one
//! client connection, deadlines, `UNAVAILABLE` ejecting a backend, `UNAVAILABLE`
//! replayed on another backend (`retries.on_grpc_status`), the proxy's own
//! errors as gRPC statuses, and gRPC health checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body as TonicBody;
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status, Streaming};

/// The test service's one message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    #[prost(string, tag = "2")]
    pub text: String,
    #[prost(uint64, tag = "3")]
    pub n: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

const MAX_MSG: usize = 16 << 20;

fn codec<A, B>() -> tonic_prost::ProstCodec<A, B>
where
    A: prost::Message + Send + 'static,
    B: prost::Message + Default + Send + 'static,
{
    tonic_prost::ProstCodec::default()
}

/// What one backend does and has seen.
struct State {
    name: String,
    /// Released when this many unary `barrier` calls are waiting at once.
    barrier: Option<Arc<tokio::sync::Barrier>>,
    /// The health status it reports (1 SERVING, 2 NOT_SERVING).
    serving: std::sync::atomic::AtomicI32,
    calls: AtomicUsize,
    /// Every unary call is answered UNAVAILABLE, and every server stream ends
    /// with it (after its messages).
    broken: std::sync::atomic::AtomicBool,
}

/// The test service `test.Echo` (unary, server-, client- and bidi streaming),
/// plus `grpc.health.v1.Health/Check`, dispatched by path as tonic's generated
/// code does.
#[derive(Clone)]
struct Echo(Arc<State>);

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

#[derive(Clone)]
struct Health(Arc<State>);

impl NamedService for Health {
    const NAME: &'static str = "grpc.health.v1.Health";
}

type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

fn server<A, B>() -> tonic::server::Grpc<tonic_prost::ProstCodec<A, B>>
where
    A: prost::Message + Send + 'static,
    B: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(codec())
        .max_decoding_message_size(MAX_MSG)
        .max_encoding_message_size(MAX_MSG)
}

async fn unary(state: Arc<State>, req: Request<Msg>) -> Result<Response<Msg>, Status> {
    state.calls.fetch_add(1, Ordering::Relaxed);
    let m = req.into_inner();
    if state.broken.load(Ordering::Relaxed) {
        return Err(Status::unavailable(format!("{} is down", state.name)));
    }
    match m.text.as_str() {
        "unavailable" => Err(Status::unavailable(format!("{} is down", state.name))),
        "fail-meta" => {
            let mut s = Status::failed_precondition("with details");
            s.metadata_mut().insert("x-detail", "kept".parse().unwrap());
            Err(s)
        }
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(m.n)).await;
            Ok(Response::new(Msg {
                text: state.name.clone(),
                ..m
            }))
        }
        "barrier" => {
            if let Some(b) = &state.barrier {
                b.wait().await;
            }
            Ok(Response::new(Msg {
                text: state.name.clone(),
                ..m
            }))
        }
        _ => Ok(Response::new(Msg {
            text: state.name.clone(),
            ..m
        })),
    }
}

impl tower::Service<http::Request<TonicBody>> for Echo {
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<TonicBody>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            Ok(match path.as_str() {
                "/test.Echo/Unary" => {
                    let svc = tower::service_fn(move |r| unary(state.clone(), r));
                    server::<Msg, Msg>().unary(svc, req).await
                }
                "/test.Echo/ServerStream" => {
                    let svc = tower::service_fn(move |r: Request<Msg>| {
                        let state = state.clone();
                        async move {
                            state.calls.fetch_add(1, Ordering::Relaxed);
                            let m = r.into_inner();
                            let fail = m.text == "unavailable-after"
                                || state.broken.load(Ordering::Relaxed);
                            let items = (0..m.n).map(move |i| {
                                Ok(Msg {
                                    data: m.data.clone(),
                                    text: String::new(),
                                    n: i,
                                })
                            });
                            let tail = fail.then(|| Err(Status::unavailable("stream broke")));
                            let s = futures_util::stream::iter(items.chain(tail));
                            Ok::<_, Status>(Response::new(Box::pin(s) as MsgStream))
                        }
                    });
                    server::<Msg, Msg>().server_streaming(svc, req).await
                }
                "/test.Echo/ClientStream" => {
                    let svc = tower::service_fn(move |r: Request<Streaming<Msg>>| async move {
                        let mut s = r.into_inner();
                        let (mut count, mut bytes) = (0u64, 0u64);
                        while let Some(m) = s.next().await {
                            let m = m?;
                            count += 1;
                            bytes += m.data.len() as u64;
                        }
                        Ok::<_, Status>(Response::new(Msg {
                            data: Vec::new(),
                            text: count.to_string(),
                            n: bytes,
                        }))
                    });
                    server::<Msg, Msg>().client_streaming(svc, req).await
                }
                "/test.Echo/Bidi" => {
                    let svc = tower::service_fn(move |r: Request<Streaming<Msg>>| async move {
                        let s = r.into_inner().map(|m| {
                            m.map(|m| Msg {
                                text: format!("re:{}", m.text),
                                ..m
                            })
                        });
                        Ok::<_, Status>(Response::new(Box::pin(s) as MsgStream))
                    });
                    server::<Msg, Msg>().streaming(svc, req).await
                }
                _ => Status::unimplemented(path).into_http(),
            })
        })
    }
}

impl tower::Service<http::Request<TonicBody>> for Health {
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<TonicBody>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            if req.uri().path() != "/grpc.health.v1.Health/Check" {
                return Ok(Status::unimplemented("").into_http());
            }
            let svc = tower::service_fn(move |r: Request<HealthCheckRequest>| {
                let state = state.clone();
                async move {
                    if !r.get_ref().service.is_empty() {
                        return Err(Status::not_found("unknown service"));
                    }
                    Ok(Response::new(HealthCheckResponse {
                        status: state.serving.load(Ordering::Relaxed),
                    }))
                }
            });
            Ok(server::<HealthCheckResponse, HealthCheckRequest>()
                .unary(svc, req)
                .await)
        })
    }
}

/// A tonic server (its `transport::Server`) on a free port; counts accepted
/// connections.
struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
    conns: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start(name: &str, barrier: Option<usize>) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.into(),
            barrier: barrier.map(|n| Arc::new(tokio::sync::Barrier::new(n))),
            serving: 1.into(),
            calls: AtomicUsize::new(0),
            broken: false.into(),
        });
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        let incoming = TcpListenerStream::new(l).inspect(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(2000)
            .add_service(Echo(state.clone()))
            .add_service(Health(state.clone()));
        let task = tokio::spawn(async move {
            let _ = router.serve_with_incoming(incoming).await;
        });
        Backend {
            addr,
            state,
            conns,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn h2c_backends(bs: &[&Backend]) -> String {
    let mut s = String::from("backends:\n");
    for b in bs {
        s.push_str(&format!("  - url: \"{}\"\n    protocol: h2c\n", b.url()));
    }
    s
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn client(ch: &Channel) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(ch.clone())
        .max_decoding_message_size(MAX_MSG)
        .max_encoding_message_size(MAX_MSG)
}

async fn call_unary(ch: &Channel, m: Msg) -> Result<Response<Msg>, Status> {
    call_unary_req(ch, Request::new(m)).await
}

async fn call_unary_req(ch: &Channel, req: Request<Msg>) -> Result<Response<Msg>, Status> {
    let mut c = client(ch);
    c.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    c.unary(req, PathAndQuery::from_static("/test.Echo/Unary"), codec())
        .await
}

fn msg(text: &str) -> Msg {
    Msg {
        data: Vec::new(),
        text: text.into(),
        n: 0,
    }
}

fn big(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_call_kinds_pass_through_with_large_messages_and_trailers() {
    let b = Backend::start("b1", None).await;
    let p = proxy(&format!("{}{}", server_yaml(), h2c_backends(&[&b]))).await;
    let ch = channel(p.proxy_addr).await;

    // Unary, 4 MiB each way.
    let data = big(4 << 20, 7);
    let r = call_unary(
        &ch,
        Msg {
            data: data.clone(),
            text: String::new(),
            n: 0,
        },
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(r.text, "b1");
    assert!(r.data == data, "unary payload changed on the way");

    // Server streaming: 8 messages of 1 MiB.
    let mut c = client(&ch);
    c.ready().await.unwrap();
    let chunk = big(1 << 20, 3);
    let mut s = c
        .server_streaming(
            Request::new(Msg {
                data: chunk.clone(),
                text: String::new(),
                n: 8,
            }),
            PathAndQuery::from_static("/test.Echo/ServerStream"),
            codec::<Msg, Msg>(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = 0;
    while let Some(m) = s.message().await.unwrap() {
        assert_eq!(m.n, got);
        assert!(m.data == chunk);
        got += 1;
    }
    assert_eq!(got, 8);

    // Client streaming: 3 × 4 MiB.
    let mut c = client(&ch);
    c.ready().await.unwrap();
    let up = futures_util::stream::iter((0..3).map(|i| Msg {
        data: big(4 << 20, i),
        text: String::new(),
        n: 0,
    }));
    let r = c
        .client_streaming(
            Request::new(up),
            PathAndQuery::from_static("/test.Echo/ClientStream"),
            codec::<Msg, Msg>(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.text.as_str(), r.n), ("3", 3 * (4 << 20)));

    // Bidi: each message answered in turn, before the next is sent.
    let mut c = client(&ch);
    c.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let mut replies = c
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static("/test.Echo/Bidi"),
            codec::<Msg, Msg>(),
        )
        .await
        .unwrap()
        .into_inner();
    for i in 0..5 {
        tx.send(msg(&format!("m{i}"))).await.unwrap();
        let m = replies.message().await.unwrap().expect("a reply");
        assert_eq!(m.text, format!("re:m{i}"));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());

    // An error status with metadata: grpc-status, grpc-message and the custom
    // trailer all arrive.
    let e = call_unary(&ch, msg("fail-meta")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(e.message(), "with details");
    assert_eq!(e.metadata().get("x-detail").unwrap(), "kept");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_on_one_client_connection() {
    // The backend answers only when all 1,000 calls are in at once: the proxy
    // must hold them all concurrently, over several backend connections (100
    // streams each).
    let b = Backend::start("b1", Some(1000)).await;
    let yaml = format!(
        "{}  http2_max_concurrent_streams: 1000\n{}upstream:\n  http2:\n    max_concurrent_streams: 100\n",
        server_yaml(),
        h2c_backends(&[&b])
    );
    let p = proxy(&yaml).await;
    let ch = channel(p.proxy_addr).await;
    let calls = (0..1000).map(|i| {
        let ch = ch.clone();
        async move {
            let mut m = msg("barrier");
            m.n = i;
            call_unary(&ch, m).await.map(|r| r.into_inner().n)
        }
    });
    let all = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("1,000 concurrent calls through one connection");
    for (i, r) in all.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as u64);
    }
    let conns = b.conns.load(Ordering::Relaxed);
    assert!(
        (10..=16).contains(&conns),
        "1,000 streams at 100 per connection: {conns} backend connections"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_backend_is_ejected_by_outlier_detection_and_reported() {
    let good = Backend::start("good", None).await;
    let bad = Backend::start("bad", None).await;
    bad.state.broken.store(true, Ordering::Relaxed);
    let yaml = format!(
        "{}{}outlier_detection:\n  consecutive_failures: 3\n  base_ejection_time: \"60s\"\n  max_ejection_percent: 50\n",
        server_yaml(),
        h2c_backends(&[&good, &bad])
    );
    let p = proxy(&yaml).await;
    let ch = channel(p.proxy_addr).await;
    // The bad one streams one message, then UNAVAILABLE in the trailers (the
    // status is not in the head: the record waits for the trailers).
    let mut failures = 0;
    for _ in 0..40 {
        let mut c = client(&ch);
        c.ready().await.unwrap();
        let mut m = msg("");
        m.n = 1;
        let r = c
            .server_streaming(
                Request::new(m),
                PathAndQuery::from_static("/test.Echo/ServerStream"),
                codec::<Msg, Msg>(),
            )
            .await;
        let mut s = r.unwrap().into_inner();
        let mut seen = 0;
        loop {
            match s.message().await {
                Ok(Some(_)) => seen += 1,
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(e.code(), Code::Unavailable);
                    failures += 1;
                    break;
                }
            }
        }
        assert_eq!(seen, 1);
        if let Some(v) = backend_view(p.admin_addr, &bad.url()).await
            && v["ejected"] == true
        {
            break;
        }
    }
    assert!(failures >= 3, "{failures}");
    let v = backend_view(p.admin_addr, &bad.url()).await.unwrap();
    assert_eq!(v["ejected"], true, "{v}");
    let reason = v["ejection"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("grpc-status 14 (UNAVAILABLE)"), "{v}");
    assert_eq!(
        backend_view(p.admin_addr, &good.url()).await.unwrap()["ejected"],
        false
    );
    // Ejected: every call now goes to the good one, and succeeds.
    let before = bad.state.calls.load(Ordering::Relaxed);
    for _ in 0..10 {
        let r = call_unary(&ch, msg("")).await.unwrap().into_inner();
        assert_eq!(r.text, "good");
    }
    assert_eq!(bad.state.calls.load(Ordering::Relaxed), before);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_only_unavailable_counts_against_the_circuit() {
    let bad = Backend::start("bad", None).await;
    let yaml = format!(
        "{}{}circuit_breaker:\n  failure_threshold: 2\n  open_duration: \"60s\"\n",
        server_yaml(),
        h2c_backends(&[&bad])
    );
    let p = proxy(&yaml).await;
    let ch = channel(p.proxy_addr).await;
    // tonic answers a unary error trailers-only: the status is in the head.
    for _ in 0..2 {
        let e = call_unary(&ch, msg("unavailable")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert_eq!(e.message(), "bad is down");
    }
    // Open now: the proxy answers itself, as gRPC.
    let calls = bad.state.calls.load(Ordering::Relaxed);
    let e = call_unary(&ch, msg("")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(e.message(), "no backend available");
    assert_eq!(bad.state.calls.load(Ordering::Relaxed), calls);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_made_errors_reach_grpc_clients_as_statuses() {
    // No backend at all: UNAVAILABLE.
    let p = proxy(server_yaml()).await;
    let ch = channel(p.proxy_addr).await;
    let e = call_unary(&ch, msg("")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(e.message(), "no backend available");
    p.shutdown().await;

    // A backend that refuses connections: UNAVAILABLE.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let yaml = format!(
        "{}backends:\n  - url: \"http://{dead_addr}\"\n    protocol: h2c\n",
        server_yaml()
    );
    let p = proxy(&yaml).await;
    let ch = channel(p.proxy_addr).await;
    let e = call_unary(&ch, msg("")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(e.message(), "backend unreachable");
    p.shutdown().await;

    // Rate limited: RESOURCE_EXHAUSTED.
    let b = Backend::start("b1", None).await;
    let yaml = format!(
        "{}{}rate_limit:\n  requests_per_second: 1\n  burst: 1\n  key: global\n",
        server_yaml(),
        h2c_backends(&[&b])
    );
    let p = proxy(&yaml).await;
    let ch = channel(p.proxy_addr).await;
    call_unary(&ch, msg("")).await.unwrap();
    let e = call_unary(&ch, msg("")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(e.message(), "rate limited");
    p.shutdown().await;
}

/// The test service served by hyper directly (tonic's `transport::Server` would
/// enforce `grpc-timeout` itself; this one does not, so the proxy's deadline is
/// what the client sees).
async fn bare_backend(name: &str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let echo = Echo(Arc::new(State {
        name: name.into(),
        barrier: None,
        serving: 1.into(),
        calls: AtomicUsize::new(0),
        broken: false.into(),
    }));
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let svc = hyper_util::service::TowerToHyperService::new(
                tower::util::MapRequestLayer::new(|r: http::Request<hyper::body::Incoming>| {
                    r.map(TonicBody::new)
                })
                .layer(echo.clone()),
            );
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    (addr, task)
}

use tower::Layer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_the_request_deadline() {
    let (addr, task) = bare_backend("slow").await;
    let yaml = format!(
        "{}backends:\n  - url: \"http://{addr}\"\n    protocol: h2c\n",
        server_yaml()
    );
    let p = proxy(&yaml).await;
    let ch = channel(p.proxy_addr).await;
    // The head never comes in time: the proxy answers DEADLINE_EXCEEDED. (A bare
    // HTTP/2 client: tonic's client would enforce the same deadline itself.)
    let mut m = msg("sleep");
    m.n = 30_000;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(prost::Message::encoded_len(&m) as u32).to_be_bytes());
    frame.extend_from_slice(&prost::Message::encode_to_vec(&m));
    let s = tokio::net::TcpStream::connect(p.proxy_addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/test.Echo/Unary", p.proxy_addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "4", "{resp:?}");
    assert_eq!(
        resp.headers()["grpc-message"],
        "deadline exceeded at the proxy"
    );
    // Within its deadline, the same call goes through.
    let mut m = msg("sleep");
    m.n = 10;
    let mut req = Request::new(m);
    req.metadata_mut()
        .insert("grpc-timeout", "20S".parse().unwrap());
    assert_eq!(
        call_unary_req(&ch, req).await.unwrap().into_inner().text,
        "slow"
    );
    p.shutdown().await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_follow_the_serving_status() {
    let up = Backend::start("up", None).await;
    let down = Backend::start("down", None).await;
    down.state.serving.store(2, Ordering::Relaxed);
    let yaml = format!(
        "{}{}health_check:\n  kind: grpc\n  service: \"\"\n  interval: \"100ms\"\n  timeout: \"100ms\"\n  unhealthy_threshold: 1\n  healthy_threshold: 1\n",
        server_yaml(),
        h2c_backends(&[&up, &down])
    );
    let p = proxy(&yaml).await;
    let admin = p.admin_addr;
    let (u, d) = (up.url(), down.url());
    wait_until(Duration::from_secs(20), "verdicts on both", || {
        let (u, d) = (u.clone(), d.clone());
        async move {
            let uv = backend_view(admin, &u).await.unwrap();
            let dv = backend_view(admin, &d).await.unwrap();
            uv["health"] == "healthy" && dv["health"] == "unhealthy"
        }
    })
    .await;
    let dv = backend_view(admin, &d).await.unwrap();
    let reason = dv["health_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("NOT_SERVING"), "{dv}");
    // It comes back when it serves again.
    down.state.serving.store(1, Ordering::Relaxed);
    wait_until(Duration::from_secs(20), "the backend healthy again", || {
        let d = d.clone();
        async move { backend_view(admin, &d).await.unwrap()["health"] == "healthy" }
    })
    .await;
    p.shutdown().await;
}

// === Replays on a retryable grpc-status ===

/// `switchyard_retries_total`, from the Prometheus text.
async fn retries_total(admin: SocketAddr) -> u64 {
    let text = prometheus_text(admin).await;
    text.lines()
        .find_map(|l| l.strip_prefix("switchyard_retries_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no switchyard_retries_total in:\n{text}"))
}

/// A good and a broken backend (every unary call UNAVAILABLE, trailers-only),
/// round-robin, with these `retries`.
async fn good_and_broken(retries: &str) -> (Backend, Backend, switchyard::server::Running) {
    let good = Backend::start("good", None).await;
    let bad = Backend::start("bad", None).await;
    bad.state.broken.store(true, Ordering::Relaxed);
    let yaml = format!(
        "{}{}retries:\n{retries}",
        server_yaml(),
        h2c_backends(&[&good, &bad])
    );
    let p = proxy(&yaml).await;
    (good, bad, p)
}

fn sized(text: &str, len: usize, seed: u8) -> Msg {
    Msg {
        data: big(len, seed),
        text: text.into(),
        n: 0,
    }
}

/// Four unary calls of `size` bytes: each answered by the good backend or with
/// the broken one's UNAVAILABLE; how many were the latter.
async fn unavailable_answers(ch: &Channel, size: usize) -> usize {
    let mut unavailable = 0;
    for i in 0..4u8 {
        match call_unary(ch, sized("", size, i)).await {
            Ok(r) => assert_eq!(r.into_inner().text, "good"),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable);
                assert_eq!(e.message(), "bad is down");
                unavailable += 1;
            }
        }
    }
    unavailable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_replayed_on_another_backend_only_when_opted_in() {
    let (good, bad, p) = good_and_broken("  attempts: 1\n  on_grpc_status: [UNAVAILABLE]\n").await;
    let ch = channel(p.proxy_addr).await;
    // Round-robin sends every other call to the broken one first: each is
    // replayed, with its message intact, on the good one.
    for i in 0..10u8 {
        let m = sized(&format!("call {i}"), 1000 + usize::from(i), i);
        let r = call_unary(&ch, m.clone()).await.unwrap().into_inner();
        assert_eq!(r.text, "good", "call {i}");
        assert!(r.data == m.data, "call {i}: the replayed message changed");
    }
    let tried = bad.state.calls.load(Ordering::Relaxed);
    assert!(tried >= 4, "the broken backend was tried {tried} times");
    assert_eq!(good.state.calls.load(Ordering::Relaxed), 10);
    assert_eq!(retries_total(p.admin_addr).await, tried as u64);
    p.shutdown().await;

    // Without the opt-in the same answer reaches the client.
    let (_good, bad, p) = good_and_broken("  attempts: 1\n  on_status: [503]\n").await;
    let ch = channel(p.proxy_addr).await;
    let unavailable = unavailable_answers(&ch, 100).await;
    assert!(unavailable >= 1);
    assert_eq!(unavailable, bad.state.calls.load(Ordering::Relaxed));
    assert_eq!(retries_total(p.admin_addr).await, 0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_larger_than_the_replay_buffer_is_not_replayed() {
    let (_good, bad, p) =
        good_and_broken("  attempts: 1\n  on_grpc_status: [14]\n  replay_buffer_bytes: 2048\n")
            .await;
    let ch = channel(p.proxy_addr).await;
    // 4 KiB each: the broken backend's answer reaches the client.
    let unavailable = unavailable_answers(&ch, 4096).await;
    assert!(unavailable >= 1);
    assert_eq!(unavailable, bad.state.calls.load(Ordering::Relaxed));
    assert_eq!(retries_total(p.admin_addr).await, 0);
    // Within the bound the same calls are replayed.
    for i in 0..4u8 {
        let r = call_unary(&ch, sized("", 1024, i)).await.unwrap();
        assert_eq!(r.into_inner().text, "good");
    }
    assert!(retries_total(p.admin_addr).await >= 1);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_that_had_begun_is_not_replayed() {
    let (good, bad, p) = good_and_broken("  attempts: 1\n  on_grpc_status: [14]\n").await;
    let ch = channel(p.proxy_addr).await;
    // The broken one sends one message, then UNAVAILABLE in its trailers: the
    // answer had started, so it is the client's.
    let mut broke = 0;
    for _ in 0..4 {
        let mut c = client(&ch);
        c.ready().await.unwrap();
        let mut m = msg("");
        m.n = 1;
        let mut s = c
            .server_streaming(
                Request::new(m),
                PathAndQuery::from_static("/test.Echo/ServerStream"),
                codec::<Msg, Msg>(),
            )
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.message().await.unwrap().unwrap().n, 0);
        match s.message().await {
            Ok(None) => {}
            Ok(Some(m)) => panic!("one message only, got another: {m:?}"),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable);
                broke += 1;
            }
        }
    }
    assert!(broke >= 1);
    assert_eq!(broke, bad.state.calls.load(Ordering::Relaxed));
    assert_eq!(good.state.calls.load(Ordering::Relaxed), 4 - broke);
    assert_eq!(retries_total(p.admin_addr).await, 0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_uploads_still_stream_with_replays_on() {
    let b = Backend::start("b1", None).await;
    let yaml = format!(
        "{}{}retries:\n  attempts: 2\n  on_grpc_status: [14]\n  replay_buffer_bytes: 65536\n",
        server_yaml(),
        h2c_backends(&[&b])
    );
    let p = proxy(&yaml).await;
    let ch = channel(p.proxy_addr).await;
    // A guard against a hang, not a measurement.
    let limit = Duration::from_secs(30);

    // Bidi: each reply arrives before the next message is sent, so the upload
    // cannot be waiting to be read whole.
    let mut c = client(&ch);
    c.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let mut replies = c
        .streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static("/test.Echo/Bidi"),
            codec::<Msg, Msg>(),
        )
        .await
        .unwrap()
        .into_inner();
    for i in 0..5 {
        tx.send(msg(&format!("m{i}"))).await.unwrap();
        let m = tokio::time::timeout(limit, replies.message())
            .await
            .expect("a bidi reply while the upload is open")
            .unwrap()
            .expect("a reply");
        assert_eq!(m.text, format!("re:m{i}"));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());

    // Client streaming past the replay bound (3 × 40 KiB, sent as the client
    // produces them): the whole upload arrives.
    let mut c = client(&ch);
    c.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let call = tokio::spawn(async move {
        c.client_streaming(
            Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static("/test.Echo/ClientStream"),
            codec::<Msg, Msg>(),
        )
        .await
    });
    for i in 0..3 {
        tx.send(sized("", 40 << 10, i)).await.unwrap();
    }
    drop(tx);
    let r = tokio::time::timeout(limit, call)
        .await
        .expect("the client-streaming call ends")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!((r.text.as_str(), r.n), ("3", 3 * (40 << 10)));
    assert_eq!(retries_total(p.admin_addr).await, 0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_unavailable_still_counts_against_its_backend() {
    let (_good, bad, p) = good_and_broken(
        "  attempts: 1\n  on_grpc_status: [14]\noutlier_detection:\n  consecutive_failures: 2\n  base_ejection_time: \"60s\"\n  max_ejection_percent: 50\n",
    )
    .await;
    let ch = channel(p.proxy_addr).await;
    // Every call succeeds for the client, yet the broken backend's answers are
    // its failures: it is ejected.
    for i in 0..20u8 {
        let r = call_unary(&ch, sized("", 64, i)).await.unwrap();
        assert_eq!(r.into_inner().text, "good");
        if bad.state.calls.load(Ordering::Relaxed) >= 2 {
            break;
        }
    }
    let v = backend_view(p.admin_addr, &bad.url()).await.unwrap();
    assert_eq!(v["ejected"], true, "{v}");
    let reason = v["ejection"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("grpc-status 14 (UNAVAILABLE)"), "{v}");
    p.shutdown().await;
}
