//! Per-backend pools of keep-alive HTTP/1.1 connections ([`Conn`]).
//!
//! Each backend owns its pool, so a backend kept across a config reload keeps its
//! warm connections and a removed one takes its connections with it. Connections are
//! reused most-recently-used first (warm caches, and the idle tail ages out).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::client::{Conn, Io};

/// Idle lists kept apart (a worker number beyond this shares a list).
const SHARDS: usize = 8;

/// The most idle connections demand can keep per worker, whatever the peak.
pub const DEMAND_BOUND: usize = 4096;

/// An idle connection unused this long lets go of its buffers (9 KiB) and its
/// deadline timer: a connection in steady use is taken again well before, and
/// one that waits longer costs one allocation when it is used again. (With 256
/// kept per backend and worker, the buffers of a quiet pool came to 2.3 MiB per
/// backend and worker.)
pub const SHED_AFTER: Duration = Duration::from_secs(1);

/// A backend's idle connections, one list per worker: a connection is registered
/// with the runtime of the worker that opened it, and only that worker takes it
/// again (another worker's task would be woken through the owner's thread).
///
/// How many are kept follows demand: up to the configured maximum, or the recent
/// peak of requests in flight to the backend when that is higher (bounded by
/// [`DEMAND_BOUND`]), so a burst of concurrency does not close and reopen
/// connections on every response. The peak decays by 1/16 per [`Pool::evict`]
/// (housekeeping runs it every second: halved in about 11 s).
#[derive(Default)]
pub struct Pool {
    shards: [Shard; SHARDS],
    /// The recent peak of requests in flight (see [`Pool::demand`]).
    peak: AtomicUsize,
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

    /// Notes `in_flight` requests to the backend (one just started): the demand
    /// the idle lists are sized by. Written only when it is a new peak.
    pub fn demand(&self, in_flight: usize) {
        if in_flight > self.peak.load(Relaxed) {
            self.peak.fetch_max(in_flight, Relaxed);
        }
    }

    /// How many idle connections a worker keeps: `max`, or the recent peak in
    /// flight when that is higher (bounded); none when `max` is 0 (no reuse).
    pub fn keep(&self, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        max.max(self.peak.load(Relaxed).min(DEMAND_BOUND))
    }

    /// Returns a connection after a clean exchange that ended at `now` (see
    /// [`Pool::keep`] for how many are kept per worker).
    pub fn put(&self, conn: Box<Conn>, max: usize, now: Instant) {
        let keep = self.keep(max);
        let mut conn = conn;
        let mut idle = self.mine().lock();
        if idle.len() < keep {
            if idle.len() >= max {
                // Kept for demand beyond the configured maximum: without its
                // buffers (9 KiB), taken again when it is used.
                conn.shed_buffers();
            }
            idle.push(Idle { conn, since: now });
        }
    }

    /// Drops connections idle for longer than `max_idle` and those the backend
    /// closed (or sent stray bytes on), every worker's; those idle for
    /// [`SHED_AFTER`] keep no buffers; lets the demand peak decay.
    pub fn evict(&self, max_idle: Duration, now: Instant) {
        let peak = self.peak.load(Relaxed);
        self.peak.store(peak - peak.div_ceil(16), Relaxed);
        for s in &self.shards {
            s.0.lock().retain_mut(|i| {
                let idle = now.saturating_duration_since(i.since);
                if idle >= SHED_AFTER {
                    i.conn.shed_buffers();
                }
                idle < max_idle && i.conn.still_open()
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

    /// A connection idle for [`SHED_AFTER`] keeps no buffers; one reused sooner
    /// keeps them.
    #[tokio::test]
    async fn a_quiet_idle_connection_lets_go_of_its_buffers() {
        let pool = Pool::default();
        let now = Instant::now();
        let (c, _peer) = conn().await;
        pool.put(c, 2, now);
        pool.evict(Duration::from_secs(60), now + SHED_AFTER / 2);
        let c = pool.take().expect("kept");
        assert!(c.holds_buffers(), "in use a moment ago: buffers kept");
        pool.put(c, 2, now);
        pool.evict(Duration::from_secs(60), now + SHED_AFTER);
        let c = pool.take().expect("still kept");
        assert!(
            !c.holds_buffers(),
            "idle for {SHED_AFTER:?}: buffers let go"
        );
    }

    /// Demand above the configured maximum keeps more idle connections (up to the
    /// peak), a maximum of 0 keeps none whatever the demand, and the peak decays.
    #[tokio::test]
    async fn the_idle_limit_follows_the_peak_in_flight() {
        let pool = Pool::default();
        let now = Instant::now();
        let mut peers = Vec::new();
        assert_eq!(pool.keep(2), 2);
        pool.demand(5);
        pool.demand(3);
        assert_eq!(pool.keep(2), 5);
        assert_eq!(pool.keep(8), 8);
        assert_eq!(pool.keep(0), 0);
        for _ in 0..6 {
            let (c, peer) = conn().await;
            peers.push(peer);
            pool.put(c, 2, now);
        }
        assert_eq!(pool.idle_count(), 5);
        // The three kept beyond the maximum of 2 hold no buffers; the first two do.
        let mut capacities: Vec<usize> = std::iter::from_fn(|| pool.take())
            .map(|c| c.rbuf.capacity())
            .collect();
        capacities.reverse();
        assert!(capacities[..2].iter().all(|&c| c > 0), "{capacities:?}");
        assert!(capacities[2..].iter().all(|&c| c == 0), "{capacities:?}");
        pool.demand(usize::MAX);
        assert_eq!(pool.keep(2), DEMAND_BOUND);
        let pool = Pool::default();
        pool.demand(64);
        for _ in 0..16 {
            pool.evict(Duration::from_secs(60), now);
        }
        assert!(pool.keep(2) < 64 / 2, "{}", pool.keep(2));
        for _ in 0..200 {
            pool.evict(Duration::from_secs(60), now);
        }
        assert_eq!(pool.keep(2), 2);
    }
}
