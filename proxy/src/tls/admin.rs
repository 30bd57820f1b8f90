//! The admin listener over TLS (`admin.tls: true`): the same certificates as the
//! HTTPS listener, so the dashboard and the bearer token never cross the network in
//! clear. Connections are served by hyper (HTTP/1.1 or h2 by ALPN) with the admin
//! router; handshakes are bounded by `tls.handshake_timeout`.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::Tls;

/// Serves `router` over TLS until `stop`, then waits for open connections.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Arc<Tls>,
    mut stop: watch::Receiver<bool>,
) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let acceptor = TlsAcceptor::from(tls.admin_config());
        let timeout = tls.settings().handshake_timeout;
        let svc = TowerToHyperService::new(router.clone());
        let mut stop = stop.clone();
        tracker.spawn(async move {
            let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(client = %addr, error = %e, "admin TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait()).await;
}
