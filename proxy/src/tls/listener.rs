//! The HTTPS listener: accept, TLS handshake (bounded by `tls.handshake_timeout`),
//! then ALPN picks HTTP/2 or HTTP/1.1, both served by hyper into the same request
//! path as the plain listener (`forward::handle`), with `X-Forwarded-Proto: https`
//! and the optional HSTS header.
//!
//! HTTP/1.1 over TLS goes through hyper's server rather than the plain listener's
//! own loop (`listener::h1`): that loop is built on readiness of a raw `TcpStream`
//! (short reads that clear readiness, sends deferred to the turn's flusher), which
//! has no equivalent under a TLS record layer, and its gain there was memory per
//! idle connection, not CPU per request. Measured beside HAProxy in
//! docs/benchmarks.md §7.
//!
//! A connection counts against `server.max_connections` from accept; a handshake
//! that stalls or sends garbage is closed at the timeout (or at once) and its slot
//! freed. Clients offering only ALPN `acme-tls/1` get the TLS-ALPN-01 challenge
//! certificate and are closed after the handshake.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::Tls;
use super::resolver::ACME_TLS_ALPN;
use crate::dataplane::DataPlane;
use crate::forward::body::ReqBody;
use crate::forward::{self, Peer, headers};
use crate::listener::ConnGuard;
use crate::listener::guard::{self, Timeouts, Watched};
use crate::listener::h1::{ClientUpgrade, Limits, Upgraded};

/// Accepts until `stop` fires, then lets open connections finish within the grace
/// period.
pub async fn serve(
    listener: TcpListener,
    plane: Arc<DataPlane>,
    tls: Arc<Tls>,
    mut stop: watch::Receiver<bool>,
) {
    let config = plane.snapshot().config.clone();
    let limits = Arc::new(crate::listener::h1::limits(&config.server));
    let max_conns = config.server.max_connections.as_u64();
    drop(config);
    let tracker = TaskTracker::new();
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed (https)");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        if plane.metrics.connections_active.load(Relaxed) >= max_conns {
            // No HTTP answer is possible before a handshake: close at once.
            plane.metrics.connections_rejected.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let guard = ConnGuard::new(plane.clone());
        let conn = connection(
            stream,
            addr,
            plane.clone(),
            tls.clone(),
            limits.clone(),
            stop.clone(),
        );
        tracker.spawn(crate::listener::guarded(conn, guard));
    }
    drop(listener);
    tracker.close();
    let grace = plane.snapshot().config.server.grace_period.get();
    info!(connections = tracker.len(), grace = ?grace, "https listener closed; draining connections");
    tokio::select! {
        _ = tracker.wait() => {}
        _ = tokio::time::sleep(grace) => warn!("grace period over; closing remaining https connections"),
    }
}

/// What a handshake came to.
enum Handshake {
    Done(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A TLS-ALPN-01 validation: answered by the handshake itself.
    Challenge,
}

async fn handshake(stream: TcpStream, tls: &Tls) -> Result<Handshake, String> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), stream)
        .await
        .map_err(|e| e.to_string())?;
    let hello = start.client_hello();
    let challenge = hello
        .alpn()
        .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
    if challenge {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let acme = tls.acme.as_ref().ok_or("acme-tls/1 without ACME")?;
        let config = acme
            .alpn_config(name.as_deref().unwrap_or_default())
            .await
            .ok_or("acme-tls/1 for a name with no pending challenge")?;
        let mut s = start.into_stream(config).await.map_err(|e| e.to_string())?;
        acme.challenge_answered();
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
        return Ok(Handshake::Challenge);
    }
    let s = start
        .into_stream(tls.server_config())
        .await
        .map_err(|e| e.to_string())?;
    Ok(Handshake::Done(Box::new(s)))
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    plane: Arc<DataPlane>,
    tls: Arc<Tls>,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
) {
    let timeout = tls.settings().handshake_timeout;
    let stream = match tokio::time::timeout(timeout, handshake(stream, &tls)).await {
        Ok(Ok(Handshake::Done(s))) => s,
        Ok(Ok(Handshake::Challenge)) => return,
        Ok(Err(e)) => {
            tls.stats.failures.fetch_add(1, Relaxed);
            debug!(client = %addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tls.stats.timeouts.fetch_add(1, Relaxed);
            debug!(client = %addr, ?timeout, "TLS handshake timed out");
            return;
        }
    };
    let (h2, resumed) = {
        let (_, conn) = stream.get_ref();
        (
            conn.alpn_protocol() == Some(b"h2"),
            conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        )
    };
    tls.stats.handshakes.fetch_add(1, Relaxed);
    if resumed {
        tls.stats.resumed.fetch_add(1, Relaxed);
    }
    let peer = Peer::https(addr);
    let shared = guard::Shared::new();
    let svc = {
        let tls = tls.clone();
        let plane = plane.clone();
        let streams = shared.clone();
        service_fn(move |mut req: Request<Incoming>| {
            let plane = plane.clone();
            let peer = peer.clone();
            let tls = tls.clone();
            let slot = streams.open_stream();
            let upgrade = (!h2).then(|| client_upgrade(&mut req)).flatten();
            async move {
                let req = req.map(ReqBody::from_incoming);
                let mut resp = match forward::host_refusal(&req) {
                    Some(r) => forward::refuse(&plane, r, peer.addr),
                    None => forward::handle(plane, req, peer, upgrade).await,
                };
                if let Some(h) = &tls.settings().hsts {
                    resp.headers_mut()
                        .insert(header::STRICT_TRANSPORT_SECURITY, h.clone());
                }
                Ok::<_, Infallible>(resp.map(|b| Watched::new(slot, b)))
            }
        })
    };
    let timeouts = Timeouts {
        header: limits.header_timeout,
        send: limits.send_timeout,
    };
    let metrics = &plane.metrics;
    if h2 {
        let io = TokioIo::new(guard::Frames::new(stream, shared.clone()));
        let exec = guard::Local::default();
        let conn =
            guard::h2_builder(&plane, limits.max_head, exec.clone()).serve_connection(io, svc);
        let conn = std::pin::pin!(conn);
        let mut conn = guard::Driven::new(conn, exec);
        guard::run(
            std::pin::Pin::new(&mut conn),
            |d| d.get_mut().conn().graceful_shutdown(),
            &shared,
            timeouts,
            true,
            metrics,
            stop,
        )
        .await;
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_head.max(8192))
            .max_headers(limits.max_headers);
        let conn = b
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        let conn = std::pin::pin!(conn);
        guard::run(
            conn,
            |c| c.graceful_shutdown(),
            &shared,
            timeouts,
            false,
            metrics,
            stop,
        )
        .await;
    }
}

/// For an HTTP/1.1 request asking to switch protocols (WebSocket): where the
/// tunnel gets the client's connection once hyper has written the 101.
fn client_upgrade(req: &mut Request<Incoming>) -> Option<ClientUpgrade> {
    if !headers::wants_upgrade(req.headers()) {
        return None;
    }
    let on = hyper::upgrade::on(req);
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let _ = tx.send(Upgraded {
                io: Box::new(TokioIo::new(up)),
                early: Bytes::new(),
            });
        }
    });
    Some(rx)
}
