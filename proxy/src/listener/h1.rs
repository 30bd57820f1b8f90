//! The proxy's side of a client connection: what the wire crate's HTTP/1.1 server
//! ([`switchyard_http1::server`]) calls — each request goes to forwarding, a
//! refused head gets its answer from [`crate::errors`], and a connection that
//! opens with the HTTP/2 preface (h2c) goes to hyper's HTTP/2 server.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use switchyard_http1::server::{ClientBody, Handler, Rewind};
use tokio::sync::watch;
use tracing::debug;

pub use switchyard_http1::server::{ClientUpgrade, Limits, Upgraded};
pub use switchyard_http1::{Ambiguity, Refusal};

use crate::app::App;
use crate::config::ServerConfig;
use crate::forward::body::{ProxyBody, ReqBody};
use crate::forward::{self, Peer};

/// The connection-level limits of `cfg`.
pub fn limits(cfg: &ServerConfig) -> Limits {
    Limits {
        max_head: cfg.max_header_bytes.as_usize(),
        max_headers: cfg.max_headers.as_usize(),
        header_timeout: cfg.header_read_timeout.get(),
        http2: cfg.http2,
    }
}

/// One client connection's handler.
pub struct Proxy {
    app: Arc<App>,
    peer: Peer,
    /// For HTTP/2's header list limit.
    max_head: usize,
}

impl Proxy {
    pub fn new(app: Arc<App>, peer: Peer, limits: &Limits) -> Self {
        Self {
            app,
            peer,
            max_head: limits.max_head,
        }
    }
}

impl Handler for Proxy {
    type Body = ProxyBody;

    fn call(
        &self,
        req: Request<Option<ClientBody>>,
        upgrade: Option<ClientUpgrade>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        let req = req.map(|b| b.map_or(ReqBody::Empty, ReqBody::Client));
        forward::handle(self.app.clone(), req, self.peer.clone(), upgrade)
    }

    fn refuse(&self, refusal: Refusal) -> Response<ProxyBody> {
        if let Refusal::Malformed(why) = refusal {
            debug!(client = %self.peer.addr, why, "malformed request head");
        }
        forward::refuse(&self.app, refusal, self.peer.addr)
    }

    async fn serve_h2(&self, io: Rewind, mut stop: watch::Receiver<bool>) {
        let app = self.app.clone();
        let peer = self.peer.clone();
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let app = app.clone();
            let peer = peer.clone();
            async move {
                let req = req.map(ReqBody::from_incoming);
                Ok::<_, std::convert::Infallible>(forward::handle(app, req, peer, None).await)
            }
        });
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from(self.max_head).unwrap_or(u32::MAX))
            .keep_alive_interval(Duration::from_secs(30));
        let h2 = b.serve_connection(TokioIo::new(io), svc);
        let mut h2 = std::pin::pin!(h2);
        if !*stop.borrow() {
            tokio::select! {
                _ = h2.as_mut() => return,
                _ = stop.changed() => {}
            }
        }
        h2.as_mut().graceful_shutdown();
        let _ = h2.await;
    }
}
