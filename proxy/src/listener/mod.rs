//! The proxy listener: accepts client connections (HTTP/1.1 and h2c), enforces the
//! connection-level limits (the HTTP/1.1 server is the wire crate's; [`h1`] is what it
//! calls) and drains gracefully on shutdown.

pub mod guard;
pub mod h1;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::Version;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::dataplane::DataPlane;
use crate::errors::ProxyError;
use crate::forward;

/// Accepts until `stop` fires, then lets open connections finish within the grace
/// period (idle ones close at once, busy ones after their response). The
/// connection limits are the snapshot's at start. `intercept` sees every request
/// first, when the TLS edge answers some itself (ACME HTTP-01, redirect to HTTPS).
pub async fn serve(
    listener: TcpListener,
    plane: Arc<DataPlane>,
    intercept: Option<Arc<dyn forward::PlainIntercept>>,
    mut stop: watch::Receiver<bool>,
) {
    let config = plane.snapshot().config.clone();
    let limits = Arc::new(h1::limits(&config.server));
    let max_conns = config.server.max_connections.as_u64();
    drop(config);
    let intercept: Option<forward::Intercept> = intercept.map(Arc::new);
    let tracker = TaskTracker::new();
    // One worker: this turn's writes leave together (see `flush`).
    switchyard_http1::flush::start();
    // Connections come out unregistered: the server registers one only once it
    // has to wait on it (see `serve_fresh`).
    let listener = match switchyard_http1::sockio::Acceptor::new(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "proxy listener not started");
            return;
        }
    };
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        if plane.metrics.connections_active.load(Relaxed) >= max_conns {
            plane.metrics.connections_rejected.fetch_add(1, Relaxed);
            if let Ok(stream) = TcpStream::from_std(stream) {
                tokio::spawn(reject(stream));
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let guard = ConnGuard::new(plane.clone());
        let peer = forward::Peer::new(peer).intercepted(intercept.clone());
        let handler = h1::Proxy::new(plane.clone(), peer);
        let conn =
            switchyard_http1::server::serve_fresh(stream, handler, limits.clone(), stop.clone());
        tracker.spawn(guarded(conn, guard));
    }
    drop(listener);
    tracker.close();
    let grace = plane.snapshot().config.server.grace_period.get();
    let open = tracker.len();
    info!(connections = open, grace = ?grace, "proxy listener closed; draining connections");
    tokio::select! {
        _ = tracker.wait() => info!("all client connections finished"),
        _ = tokio::time::sleep(grace) => warn!("grace period over; closing remaining connections"),
    }
}

/// Over `max_connections`: a plain 503 and close, so the client knows why (the
/// answer is [`ProxyError::TooManyConnections`]'s, framed by the wire crate).
async fn reject(mut stream: TcpStream) {
    let (parts, body) = ProxyError::TooManyConnections.into_response().into_parts();
    let mut keep = false;
    let out = switchyard_http1::codec::encode_response(
        &parts,
        &http_body_util::Full::new(body.clone()),
        false,
        Version::HTTP_11,
        false,
        false,
        &mut keep,
    );
    let mut msg = out.head;
    msg.extend_from_slice(&body);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&msg)).await;
    let _ = stream.shutdown().await;
}

/// A connection's future holding its guard, dropped when the connection ends.
/// `map`, not an `async` block: a block awaiting the connection would hold its
/// future twice (the captured one beside the one being awaited), about 1 KiB more
/// in every idle connection's task.
pub(crate) fn guarded<F: Future<Output = ()>>(
    conn: F,
    guard: ConnGuard,
) -> impl Future<Output = ()> {
    use futures_util::FutureExt;
    conn.map(move |()| drop(guard))
}

/// One client connection counted in `connections_active` (and against
/// `max_connections`) for as long as it lives; shared with the HTTPS listener.
pub(crate) struct ConnGuard(Arc<DataPlane>);

impl ConnGuard {
    pub(crate) fn new(plane: Arc<DataPlane>) -> Self {
        plane.metrics.connections_active.fetch_add(1, Relaxed);
        plane
            .metrics
            .worker_connections
            .add(switchyard_http1::worker::id());
        Self(plane)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.metrics.connections_active.fetch_sub(1, Relaxed);
    }
}

/// Pending (not yet accepted) connections the kernel queues per listener; it caps
/// this at `net.core.somaxconn`. The default of 128 overflows when a few hundred
/// clients connect at once, and every dropped SYN costs its client a one-second
/// retransmit (nginx uses 511; HAProxy its `maxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (address reuse on, a deep accept queue), with a message that says
/// which listener failed.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    let fail = |e: std::io::Error| format!("cannot bind the {what} listener on {addr}: {e}");
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)
}

/// Binds `n` listening sockets on `addr`, one per worker. One is [`bind`]'s; several
/// share the address with `SO_REUSEPORT`, and the kernel spreads new connections
/// over them by their addresses (nginx's `reuseport`, Envoy's per-worker
/// listeners): no worker is woken for another's connection. They come back as std
/// sockets, for each worker to register with its own runtime. A port already held
/// by a socket without `SO_REUSEPORT` still fails to bind.
pub fn bind_workers(
    addr: SocketAddr,
    what: &str,
    n: usize,
) -> Result<Vec<std::net::TcpListener>, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let fail = |e: std::io::Error| format!("cannot bind the {what} listener on {addr}: {e}");
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        // The second and later bind where the first did (its port, when 0 was asked).
        let at = match out.first() {
            Some(first) => first.local_addr().map_err(fail)?,
            None => addr,
        };
        let socket = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP))
            .map_err(fail)?;
        socket.set_reuse_address(true).map_err(fail)?;
        if n > 1 {
            socket.set_reuse_port(true).map_err(fail)?;
        }
        socket.set_nonblocking(true).map_err(fail)?;
        socket.bind(&at.into()).map_err(fail)?;
        socket.listen(LISTEN_BACKLOG as i32).map_err(fail)?;
        out.push(socket.into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpStream;

    use super::*;

    /// A burst of clients is queued by the kernel while nobody accepts: with the
    /// old default backlog of 128 the connects past it lost their SYNs and waited
    /// for retransmits (1 s, then 3 s, 7 s, ...), which the deadline below turns
    /// into a failure.
    #[tokio::test]
    async fn a_burst_of_connects_fits_the_accept_queue() {
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(128);
        // 400 clients (well past 128, well under a 1024-descriptor limit), or fewer
        // where the kernel caps every queue lower.
        let n = somaxconn.min(400).saturating_sub(8);
        let listener = bind("127.0.0.1:0".parse().expect("addr"), "test")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let c = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
                .await
                .unwrap_or_else(|_| panic!("connect {i} of {n} not queued (SYN dropped)"))
                .expect("connect");
            clients.push(c);
        }
        // All of them are there to accept.
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("queued connection")
                .expect("accept");
        }
    }

    #[tokio::test]
    async fn binding_a_taken_port_names_the_listener() {
        let first = bind("127.0.0.1:0".parse().expect("addr"), "proxy")
            .await
            .expect("bind");
        let addr = first.local_addr().expect("local addr");
        let err = bind(addr, "admin").await.expect_err("port is taken");
        assert!(
            err.starts_with(&format!("cannot bind the admin listener on {addr}")),
            "{err}"
        );
    }
}
