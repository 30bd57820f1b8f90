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

pub use switchyard_http1::server::{ClientIo, ClientUpgrade, Limits, Upgraded};
pub use switchyard_http1::{Ambiguity, Refusal};

use crate::config::ServerConfig;
use crate::dataplane::DataPlane;
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

/// One client connection's handler: the data plane and who the client is.
pub struct Proxy {
    plane: Arc<DataPlane>,
    peer: Peer,
    /// For HTTP/2's header list limit.
    max_head: usize,
}

impl Proxy {
    pub fn new(plane: Arc<DataPlane>, peer: Peer, limits: &Limits) -> Self {
        Self {
            plane,
            peer,
            max_head: limits.max_head,
        }
    }
}

impl Handler for Proxy {
    type Body = ProxyBody;

    fn call(
        &self,
        head: http::request::Parts,
        body: Option<ClientBody>,
        upgrade: Option<ClientUpgrade>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        let req = Request::from_parts(head, body.map_or(ReqBody::Empty, ReqBody::Client));
        forward::handle(self.plane.clone(), req, self.peer.clone(), upgrade)
    }

    fn refuse(&self, refusal: Refusal) -> Response<ProxyBody> {
        if let Refusal::Malformed(why) = refusal {
            debug!(client = %self.peer.addr, why, "malformed request head");
        }
        forward::refuse(&self.plane, refusal, self.peer.addr)
    }

    async fn serve_h2(&self, io: Rewind, mut stop: watch::Receiver<bool>) {
        let plane = self.plane.clone();
        let peer = self.peer.clone();
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let plane = plane.clone();
            let peer = peer.clone();
            async move {
                let req = req.map(ReqBody::from_incoming);
                Ok::<_, std::convert::Infallible>(forward::handle(plane, req, peer, None).await)
            }
        });
        let h2 = http2_server(&self.plane, self.max_head).serve_connection(TokioIo::new(io), svc);
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

/// hyper's HTTP/2 server as every client connection gets it (h2c here, h2 on
/// the HTTPS listener): `server.http2_max_concurrent_streams` streams at once,
/// header lists up to `max_head` bytes, PING every 30 s.
pub fn http2_server(
    plane: &DataPlane,
    max_head: usize,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let streams = plane
        .snapshot()
        .config
        .server
        .http2_max_concurrent_streams
        .as_u32();
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(streams)
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30));
    b
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::Config;
    use crate::snapshot::Snapshot;

    /// An idle connection costs its task's size: the wire crate's loop with this
    /// handler inline (HTTP/2 and the per-request future are boxed). Built from a
    /// data plane alone: no state store, no replica.
    #[tokio::test]
    async fn a_connection_task_with_the_proxy_handler_stays_small() {
        let config = Arc::new(Config::default());
        let limits = Arc::new(limits(&config.server));
        let plane = Arc::new(DataPlane::new(Snapshot::empty(config), "test".into()));
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (_client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (server, peer) = server.expect("accept");
        let (_tx, rx) = watch::channel(false);
        let handler = Proxy::new(plane, Peer::new(peer), &limits);
        let conn = switchyard_http1::server::serve(server, handler, limits, rx);
        let size = std::mem::size_of_val(&conn);
        assert!(size <= 1024, "connection future is {size} bytes");
    }
}
