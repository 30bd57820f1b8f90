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

#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl Pool {
    /// The most recently used idle connection.
    pub fn take(&self) -> Option<Box<Conn>> {
        self.idle.lock().pop().map(|i| i.conn)
    }

    /// Returns a connection after a clean exchange that ended at `now` (up to
    /// `max` are kept).
    pub fn put(&self, conn: Box<Conn>, max: usize, now: Instant) {
        let mut idle = self.idle.lock();
        if idle.len() < max {
            idle.push(Idle { conn, since: now });
        }
    }

    /// Drops connections idle for longer than `max_idle` and those the backend
    /// closed (or sent stray bytes on).
    pub fn evict(&self, max_idle: Duration, now: Instant) {
        self.idle.lock().retain_mut(|i| {
            now.saturating_duration_since(i.since) < max_idle && i.conn.still_open()
        });
    }

    /// Drops the idle connections the backend has closed.
    pub fn prune(&self) {
        self.idle.lock().retain_mut(|i| i.conn.still_open());
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
