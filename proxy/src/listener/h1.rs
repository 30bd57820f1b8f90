//! The proxy's side of a client connection: what the wire crate's HTTP/1.1 server
//! ([`switchyard_http1::server`]) calls — each request goes to forwarding, a
//! refused head gets its answer from [`crate::errors`], and a connection that
//! opens with the HTTP/2 preface (h2c) goes to hyper's HTTP/2 server.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use switchyard_http1::server::{ClientBody, Handler, Rewind};
use tokio::sync::watch;
use tracing::debug;

pub use switchyard_http1::server::{ClientIo, ClientUpgrade, Limits, Upgraded};
pub use switchyard_http1::{Ambiguity, Refusal};

use super::guard::{self, Timeouts, Watched};
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
        send_timeout: cfg.send_timeout.get(),
        http2: cfg.http2,
    }
}

/// One client connection's handler: the data plane and who the client is (the
/// connection's limits are the server's, handed to [`Handler::serve_h2`]: not kept
/// twice in every connection's task).
pub struct Proxy {
    plane: Arc<DataPlane>,
    peer: Peer,
}

impl Proxy {
    pub fn new(plane: Arc<DataPlane>, peer: Peer) -> Self {
        Self { plane, peer }
    }
}

impl Handler for Proxy {
    type Body = ProxyBody;

    // Always inline: the request's future (~2.7 KB) is then built in place in the
    // connection's exchange, not returned and copied (it has two callers, the
    // loop and a fresh connection's last request, and was left out of line:
    // +570 instructions per request, most of them that copy).
    #[inline(always)]
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

    fn send_timed_out(&self) {
        self.plane.metrics.send_timeouts.fetch_add(1, Relaxed);
        debug!(client = %self.peer.addr, "client took no response bytes for send_timeout");
    }

    async fn serve_h2(&self, io: Rewind, limits: &Limits, stop: watch::Receiver<bool>) {
        let shared = guard::Shared::new();
        let plane = self.plane.clone();
        let peer = self.peer.clone();
        let streams = shared.clone();
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let plane = plane.clone();
            let peer = peer.clone();
            let slot = streams.open_stream();
            async move {
                let req = req.map(ReqBody::from_incoming);
                // Boxed: the request's future is ~2.7 KB, and hyper moves the
                // stream's future on its way to the connection's queue
                // (guard::Local), which boxes it. (Once streams were tokio tasks,
                // boxing here saved ~2 % of the instructions per h2 request; with
                // the queue, inline measured no better: 72.9k vs 72.4k.)
                // Built in its box (allocated first: the future is not built
                // on the stack and then copied in).
                let handled =
                    Box::write(Box::new_uninit(), forward::handle(plane, req, peer, None));
                let resp = Box::into_pin(handled).await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| Watched::new(slot, b)))
            }
        });
        let io = guard::Frames::new(io, shared.clone());
        let exec = guard::Local::default();
        let h2 = guard::h2_builder(&self.plane, limits.max_head, exec.clone())
            .serve_connection(TokioIo::new(io), svc);
        let h2 = std::pin::pin!(h2);
        let mut h2 = guard::Driven::new(h2, exec);
        guard::run(
            std::pin::Pin::new(&mut h2),
            |d| d.get_mut().conn().graceful_shutdown(),
            &shared,
            Timeouts {
                header: limits.header_timeout,
                send: limits.send_timeout,
            },
            true,
            &self.plane.metrics,
            stop,
        )
        .await;
    }
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
        let server = server.into_std().expect("plain socket");
        let (_tx, rx) = watch::channel(false);
        let handler = Proxy::new(plane.clone(), Peer::new(peer));
        // As the listener starts it: from a socket not yet registered.
        let conn = switchyard_http1::server::serve_fresh(server, handler, limits, rx);
        let size = std::mem::size_of_val(&conn);
        // With the listener's guard and task tracker the task cell is 640 bytes
        // (header 32, core 560, trailer 48; `-Zprint-type-sizes`, release): a few
        // bytes more and tokio's 128-byte alignment makes it 768.
        assert!(size <= 520, "connection future is {size} bytes");
        // As the listener spawns it, with its guard: not twice the size.
        let task = super::super::guarded(conn, super::super::ConnGuard::new(plane));
        let spawned = std::mem::size_of_val(&task);
        assert!(spawned <= size + 16, "spawned future is {spawned} bytes");
    }
}
