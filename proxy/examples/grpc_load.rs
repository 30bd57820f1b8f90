//! A fixed gRPC load client and echo server, on tonic, for bench/h2-upstream.py
//! (ghz is not available here).
//!
//!     grpc_load serve PORT [PORT...]           # unary echo `bench.Echo/Unary` on each port (h2c)
//!     grpc_load load ADDR CONNS CONCURRENCY SECONDS
//!
//! `load` opens CONNS HTTP/2 connections, keeps CONCURRENCY unary calls in flight
//! spread over them for SECONDS, and prints `calls/s`, OK and failed counts as
//! one JSON line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "bench.Echo";
}

impl tower::Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let svc = tower::service_fn(|r: Request<Msg>| async move {
                Ok::<_, Status>(Response::new(r.into_inner()))
            });
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Msg, Msg>::default());
            Ok(grpc.unary(svc, req).await)
        })
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            let mut tasks = Vec::new();
            for port in &args[1..] {
                let addr = format!("127.0.0.1:{port}").parse().unwrap();
                tasks.push(tokio::spawn(
                    tonic::transport::Server::builder()
                        .max_concurrent_streams(1000)
                        .add_service(Echo)
                        .serve(addr),
                ));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        Some("load") => {
            let addr = &args[1];
            let conns: usize = args[2].parse().unwrap();
            let concurrency: usize = args[3].parse().unwrap();
            let secs: u64 = args[4].parse().unwrap();
            let mut channels = Vec::new();
            for _ in 0..conns {
                channels.push(
                    Endpoint::from_shared(format!("http://{addr}"))
                        .unwrap()
                        .connect()
                        .await
                        .unwrap(),
                );
            }
            let ok = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for i in 0..concurrency {
                let ch = channels[i % conns].clone();
                let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut c = tonic::client::Grpc::new(ch);
                    while !stop.load(Ordering::Relaxed) {
                        if c.ready().await.is_err() {
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let r = c
                            .unary(
                                Request::new(Msg {
                                    data: b"ping".to_vec(),
                                }),
                                PathAndQuery::from_static("/bench.Echo/Unary"),
                                tonic_prost::ProstCodec::<Msg, Msg>::default(),
                            )
                            .await;
                        match r {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }));
            }
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.store(true, Ordering::Relaxed);
            let elapsed = started.elapsed().as_secs_f64();
            let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
            for t in tasks {
                let _ = t.await;
            }
            println!(
                "{{\"calls_per_s\": {:.1}, \"ok\": {ok}, \"failed\": {failed}}}",
                ok as f64 / elapsed
            );
        }
        _ => {
            eprintln!(
                "usage: grpc_load serve PORT... | grpc_load load ADDR CONNS CONCURRENCY SECONDS"
            );
            std::process::exit(2);
        }
    }
}
