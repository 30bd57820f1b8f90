//! Per-backend pools of keep-alive HTTP/1.1 connections.
//!
//! Each backend owns its pool, so a backend kept across a config reload keeps its
//! warm connections and a removed one takes its connections with it. Connections are
//! reused most-recently-used first (warm caches, and the idle tail ages out).

use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::ReqBody;
use super::tls;
use crate::backend::Backend;
use switchyard_shared::validate::Scheme;

pub type Sender = http1::SendRequest<ReqBody>;

#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    tx: Sender,
    since: Instant,
}

impl Pool {
    /// The most recently used idle connection that is still open.
    pub fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock();
        while let Some(i) = idle.pop() {
            if !i.tx.is_closed() {
                return Some(i.tx);
            }
        }
        None
    }

    /// Returns a connection after a clean exchange (up to `max` are kept).
    pub fn put(&self, tx: Sender, max: usize) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < max {
            idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Drops connections idle for longer than `max_idle` and closed ones.
    pub fn evict(&self, max_idle: Duration, now: Instant) {
        self.idle
            .lock()
            .retain(|i| !i.tx.is_closed() && now.saturating_duration_since(i.since) < max_idle);
    }

    pub fn clear(&self) {
        self.idle.lock().clear();
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().len()
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
    #[error("handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

/// Opens a new connection to `backend` (TCP, TLS for https, HTTP/1.1 handshake),
/// bounded by `timeout` as a whole.
pub async fn connect(backend: &Backend, timeout: Duration) -> Result<Sender, ConnectError> {
    match tokio::time::timeout(timeout, connect_inner(backend)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}

async fn connect_inner(backend: &Backend) -> Result<Sender, ConnectError> {
    let target = &backend.target;
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    tcp.set_nodelay(true)?;
    let mut builder = http1::Builder::new();
    builder.max_buf_size(1024 * 1024);
    match target.scheme {
        Scheme::Http => {
            let (tx, conn) = builder.handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok(tx)
        }
        Scheme::Https => {
            let tls = tls::connect(&target.host, tcp).await?;
            let (tx, conn) = builder.handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Ok(tx)
        }
    }
}
