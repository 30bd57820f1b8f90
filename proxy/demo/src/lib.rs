//! The demo upstream: a small backend for demos, tests and benchmarks that answers
//! with its name and can be told — at start or at runtime through
//! `POST /_demo/control` — to add latency, fail a share of requests with 500, fail
//! `/health`, or hang.
//!
//! Endpoints: `/` (and any other path) answers `<name>\n`; `/health`;
//! `/_demo/control` (GET shows, POST `{"latency_ms":50,"fail_rate":0.2,
//! "fail_health":true,"hang":false}` changes); `/_demo/stats`; `/sleep?ms=N`;
//! `/status?code=N` (answers with that status); `/echo` (streams the body back);
//! `/sink` (reads the body, answers its length);
//! `/bytes?n=N` (streams N bytes); `/headers` (the request headers as JSON);
//! `/ws` (WebSocket echo).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

type Body = BoxBody<Bytes, hyper::Error>;

/// Behaviour that can be changed while running.
#[derive(Debug, Default)]
pub struct Control {
    pub name: String,
    latency_us: AtomicU64,
    /// Failure share in millionths.
    fail_ppm: AtomicU64,
    fail_health: AtomicBool,
    hang: AtomicBool,
    pub requests: AtomicU64,
    /// `/health` requests answered.
    pub health_checks: AtomicU64,
}

/// The JSON of `/_demo/control`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_health: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hang: Option<bool>,
}

impl Control {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            ..Default::default()
        })
    }

    pub fn set_latency(&self, d: Duration) {
        self.latency_us.store(d.as_micros() as u64, Relaxed);
    }

    pub fn set_fail_rate(&self, share: f64) {
        self.fail_ppm
            .store((share.clamp(0.0, 1.0) * 1e6) as u64, Relaxed);
    }

    pub fn set_fail_health(&self, fail: bool) {
        self.fail_health.store(fail, Relaxed);
    }

    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Relaxed);
    }

    pub fn apply(&self, b: &Behaviour) {
        if let Some(ms) = b.latency_ms {
            self.set_latency(Duration::from_secs_f64(ms.max(0.0) / 1e3));
        }
        if let Some(r) = b.fail_rate {
            self.set_fail_rate(r);
        }
        if let Some(f) = b.fail_health {
            self.set_fail_health(f);
        }
        if let Some(h) = b.hang {
            self.set_hang(h);
        }
    }

    pub fn behaviour(&self) -> Behaviour {
        Behaviour {
            latency_ms: Some(self.latency_us.load(Relaxed) as f64 / 1e3),
            fail_rate: Some(self.fail_ppm.load(Relaxed) as f64 / 1e6),
            fail_health: Some(self.fail_health.load(Relaxed)),
            hang: Some(self.hang.load(Relaxed)),
        }
    }
}

/// A running demo upstream; dropping or [`stop`](Self::stop)ping it closes the
/// listener and every connection, like a crashed process.
pub struct DemoServer {
    pub addr: SocketAddr,
    pub control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl DemoServer {
    pub async fn start(addr: SocketAddr, name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::serve(listener, Control::new(name)))
    }

    pub fn serve(listener: TcpListener, control: Arc<Control>) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let ctl = control.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let ctl = ctl.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let ctl = ctl.clone();
                        async move { Ok::<_, Infallible>(handle(ctl, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
                // Reap finished connections so the set does not grow.
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            control,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json<T: Serialize>(v: &T) -> Response<Body> {
    let mut r = text(StatusCode::OK, serde_json::to_vec(v).unwrap_or_default());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn handle(ctl: Arc<Control>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/_demo/control") => return json(&ctl.behaviour()),
        (&Method::POST, "/_demo/control") => {
            let Ok(body) = req.into_body().collect().await else {
                return text(StatusCode::BAD_REQUEST, "bad body\n");
            };
            return match serde_json::from_slice::<Behaviour>(&body.to_bytes()) {
                Ok(b) => {
                    ctl.apply(&b);
                    json(&ctl.behaviour())
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
        }
        (&Method::GET, "/_demo/stats") => {
            return json(
                &serde_json::json!({ "name": ctl.name, "requests": ctl.requests.load(Relaxed) }),
            );
        }
        _ => {}
    }
    if ctl.hang.load(Relaxed) {
        std::future::pending::<()>().await;
    }
    if path == "/health" {
        ctl.health_checks.fetch_add(1, Relaxed);
        return if ctl.fail_health.load(Relaxed) {
            text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n")
        } else {
            text(StatusCode::OK, "ok\n")
        };
    }
    ctl.requests.fetch_add(1, Relaxed);
    let latency = ctl.latency_us.load(Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_micros(latency)).await;
    }
    let ppm = ctl.fail_ppm.load(Relaxed);
    if ppm > 0 && fastrand::u64(0..1_000_000) < ppm {
        let mut r = text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{} failed (injected)\n", ctl.name),
        );
        add_name(&mut r, &ctl.name);
        return r;
    }
    let mut resp = match path.as_str() {
        "/sleep" => {
            let ms = query_u64(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("{} slept {ms}ms\n", ctl.name))
        }
        "/echo" => {
            let mut r = Response::new(req.into_body().boxed());
            *r.status_mut() = StatusCode::OK;
            r
        }
        "/sink" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            n += d.len() as u64;
                        }
                    }
                    Err(_) => return text(StatusCode::BAD_REQUEST, "body error\n"),
                }
            }
            text(StatusCode::OK, format!("{n}\n"))
        }
        "/bytes" => {
            let n = query_u64(&req, "n").unwrap_or(1024);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, hyper::Error>(Frame::data(chunk.slice(..take as usize))),
                        left - take,
                    ))
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, http::HeaderValue::from(n));
            r
        }
        "/status" => {
            let code = query_u64(&req, "code")
                .and_then(|c| StatusCode::from_u16(c as u16).ok())
                .unwrap_or(StatusCode::OK);
            text(code, format!("{} says {}\n", ctl.name, code.as_u16()))
        }
        "/headers" => {
            let map: std::collections::BTreeMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            json(&map)
        }
        "/ws" => return websocket(req),
        _ => text(StatusCode::OK, format!("{}\n", ctl.name)),
    };
    add_name(&mut resp, &ctl.name);
    resp
}

fn add_name(r: &mut Response<Body>, name: &str) {
    if let Ok(v) = http::HeaderValue::from_str(name) {
        r.headers_mut().insert("x-backend", v);
    }
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a websocket handshake\n");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    h.insert(
        header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    r
}
