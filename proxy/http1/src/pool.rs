//! Per-backend pools of keep-alive HTTP/1.1 connections ([`Conn`]).
//!
//! Each backend owns its pool, so a backend kept across a config reload keeps its
//! warm connections and a removed one takes its connections with it. Connections are
//! reused most-recently-used first (warm caches, and the idle tail ages out).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::client::{Conn, Io};

/// Idle lists kept apart (a worker number beyond this shares a list).
const SHARDS: usize = 8;

/// A backend's idle connections, one list per worker: a connection is registered
/// with the runtime of the worker that opened it, and only that worker takes it
/// again (another worker's task would be woken through the owner's thread).
#[derive(Default)]
pub struct Pool {
    shards: [Shard; SHARDS],
}

/// One worker's list, on its own cache lines (workers do not contend for them).
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<Vec<Idle>>);

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl Pool {
    fn mine(&self) -> &Mutex<Vec<Idle>> {
        &self.shards[crate::worker::id() % SHARDS].0
    }

    /// This worker's most recently used idle connection.
    pub fn take(&self) -> Option<Box<Conn>> {
        self.mine().lock().pop().map(|i| i.conn)
    }

    /// Returns a connection after a clean exchange that ended at `now` (up to
    /// `max` are kept per worker).
    pub fn put(&self, conn: Box<Conn>, max: usize, now: Instant) {
        let mut idle = self.mine().lock();
        if idle.len() < max {
            idle.push(Idle { conn, since: now });
        }
    }

    /// Drops connections idle for longer than `max_idle` and those the backend
    /// closed (or sent stray bytes on), every worker's.
    pub fn evict(&self, max_idle: Duration, now: Instant) {
        for s in &self.shards {
            s.0.lock().retain_mut(|i| {
                now.saturating_duration_since(i.since) < max_idle && i.conn.still_open()
            });
        }
    }

    /// Drops this worker's idle connections the backend has closed.
    pub fn prune(&self) {
        self.mine().lock().retain_mut(|i| i.conn.still_open());
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.0.lock().clear();
        }
    }

    /// Idle connections, all workers'.
    pub fn idle_count(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }
}

/// Why a new connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
}

/// Opens a new connection to `host:port`, over TLS when `tls` is given (with the
/// server name to send and verify), bounded by `timeout` as a whole.
pub async fn connect(
    host: &str,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
) -> Result<Box<Conn>, ConnectError> {
    match tokio::time::timeout(timeout, connect_inner(host, port, tls)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}

async fn connect_inner(
    host: &str,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
) -> Result<Box<Conn>, ConnectError> {
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let io = match tls {
        None => Io::Plain(Arc::new(tcp)),
        Some((connector, name)) => {
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
            Io::Tls(Box::new(stream))
        }
    };
    Ok(Conn::new(io))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected loopback socket as a pooled connection (its peer kept open).
    async fn conn() -> (Box<Conn>, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (peer, _) = l.accept().await.expect("accept");
        (Conn::new(Io::Plain(Arc::new(c))), peer)
    }

    /// A worker only gets back the connections it returned (they are registered
    /// with its runtime), and the idle limit counts per worker.
    #[tokio::test]
    async fn idle_connections_stay_with_their_worker() {
        let pool = Pool::default();
        let now = Instant::now();
        let mut peers = Vec::new();
        crate::worker::enter(1);
        for _ in 0..3 {
            let (c, peer) = conn().await;
            peers.push(peer);
            pool.put(c, 2, now);
        }
        assert_eq!(pool.idle_count(), 2, "worker 1 keeps up to the limit");
        crate::worker::enter(0);
        assert!(pool.take().is_none(), "worker 0 took worker 1's connection");
        let (c, peer) = conn().await;
        peers.push(peer);
        pool.put(c, 2, now);
        assert_eq!(pool.idle_count(), 3, "worker 0 has a limit of its own");
        assert!(pool.take().is_some());
        assert!(pool.take().is_none());
        crate::worker::enter(1);
        assert!(pool.take().is_some());
        assert!(pool.take().is_some());
        assert!(pool.take().is_none());
        crate::worker::enter(0);
    }
}
