//! Token-bucket rate limiting, checked before a backend is picked.
//!
//! Each key (client address, one global key, or a header's value) has a bucket of
//! `burst` tokens refilled at `requests_per_second`; a request takes one token or is
//! refused with 429 and `Retry-After` / `RateLimit-*` headers. Admitted requests over
//! any window of length T number at most `burst + rate × T`.
//!
//! Memory is bounded: buckets live in 64 shards holding at most `max_keys` in all.
//! A full shard first drops buckets that have refilled completely (an absent bucket
//! and a full one behave the same, so this loses nothing), then, if every key is
//! busy, an arbitrary eighth of the shard (those clients get a fresh, full bucket:
//! under a flood of distinct keys the cap wins over precision). Each bucket costs
//! about 40 bytes plus hash-table overhead — about 6 MB at the default 100,000 keys.
//!
//! Keys are stored as 64-bit hashes (SipHash with a per-process key; in a cluster
//! a key derived from the cluster name, so every replica names a client's bucket
//! the same way), so header values are never copied.
//!
//! ## In a cluster
//!
//! A limit of N rps is N rps for the whole cluster. The global buckets live in the
//! store (Redis), refilled by the store's clock (`TIME`). A replica decides a
//! request locally whenever it can ([`lease`]):
//! - from tokens the store granted it, or on **credit**: requests admitted now and
//!   charged at the next sync (every [`SYNC_PERIOD`]). Credit is extended only
//!   while the store's bucket holds at least twice what all live replicas could
//!   spend on it, so credit alone never overdraws the bucket; and it follows the
//!   key's demand (1.5 × a sync period's requests), so a warm key never waits;
//! - refusing, while the store last said the bucket is empty (until a token can
//!   have come back).
//!
//! Otherwise (a key this replica has not seen, or whose credit ran out while the
//! bucket may still hold tokens) the request waits for **one store round trip**,
//! bounded by `cluster.timeout`, after which `cluster.on_store_error` decides.
//! Requests of the same key that arrive meanwhile share that round trip.
//!
//! Accuracy: a burst of B ≤ `burst` after any idle period is admitted in full,
//! wherever it lands (nothing is refused while the store has tokens: tokens are
//! taken for the requests that wait, not set aside for replicas that may not need
//! them). Over any window T the cluster admits at most `burst + rate × T` plus the
//! credit other replicas spent that the store has not heard of yet (at most half
//! of what the bucket held at their last sync, and only while it was at least
//! half full); under sustained overload no credit is extended and admissions
//! follow the store's refill. Measured (docs/benchmarks.md): 3 replicas at 3× the
//! limit for 60 s admit within 1 % of `burst + rate × T`.

//! If the store is unreachable, `cluster.on_store_error` decides: `local` (default)
//! limits each replica to `rate ÷ live replicas` with local buckets, `allow` admits
//! everything, `deny` refuses everything; leases resume when it returns.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use http::Request;
use parking_lot::Mutex;
use switchyard_http1::headers;
use tokio::time::Instant;

use self::lease::{Leases, Take};

use crate::config::types::in_any;
use crate::config::{Cidr, OnStoreError, RateLimitConfig, RateLimitKey};
use crate::state::{StateStore, StoreResult, TokenRequest};
use crate::telemetry::metrics::Metrics;

pub mod lease;

#[cfg(test)]
mod cluster_tests;

const SHARDS: usize = 64;

/// Shard on middle bits: the table inside a shard indexes by the low ones.
fn shard_of(key: u64) -> usize {
    ((key >> 40) as usize) % SHARDS
}

/// How often a clustered replica syncs its leases with the store.
pub const SYNC_PERIOD: Duration = Duration::from_millis(50);

/// What the cluster layer tells the limiter.
#[derive(Debug)]
pub struct ClusterLink {
    /// Cluster name: seeds the bucket-name hash so replicas agree.
    pub name: String,
    /// Whether the store is reachable (leases) or not (fallback).
    pub store_ok: AtomicBool,
    /// Live replicas, at least 1.
    pub live: AtomicUsize,
    pub on_error: OnStoreError,
    /// How long a request of a cold key waits for the store (`cluster.timeout`).
    pub timeout: Duration,
    /// Poked when a request starts waiting for the store.
    pub wake: tokio::sync::Notify,
}

impl ClusterLink {
    pub fn new(name: &str, on_error: OnStoreError, timeout: Duration, store_ok: bool) -> Self {
        Self {
            name: name.to_string(),
            store_ok: AtomicBool::new(store_ok),
            live: AtomicUsize::new(1),
            on_error,
            timeout,
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn live(&self) -> usize {
        self.live.load(Relaxed).max(1)
    }
}

/// A refused request: what its 429 tells the client.
#[derive(Debug, Clone)]
pub struct RateLimited {
    /// Seconds until a request would be admitted.
    pub retry_after: u64,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

/// The outcome of [`RateLimiter::check`].
pub enum Checked<'a> {
    /// Decided locally.
    Done(Result<(), RateLimited>),
    /// A cold key in a cluster: decided after one store round trip (at most
    /// `cluster.timeout`, then the store-error fallback).
    Wait(Pin<Box<dyn Future<Output = Result<(), RateLimited>> + Send + 'a>>),
}

impl Checked<'_> {
    /// Waits for the decision (at once when it was made locally).
    pub async fn decision(self) -> Result<(), RateLimited> {
        match self {
            Checked::Done(r) => r,
            Checked::Wait(w) => w.await,
        }
    }

    /// Whether it was admitted without waiting.
    pub fn admitted_now(&self) -> bool {
        matches!(self, Checked::Done(Ok(())))
    }
}

/// A limit: tokens per second and bucket size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    pub rate: f64,
    pub burst: f64,
}

/// Answer of a bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    Admit { remaining: f64 },
    Reject { retry_after_s: f64 },
}

pub struct RateLimiter {
    key: RateLimitKey,
    trusted: Vec<Cidr>,
    default: Limit,
    rules: Vec<(String, Limit)>,
    /// Standalone buckets, or the fallback ones while the store is unreachable.
    buckets: Buckets,
    cluster: Option<(Arc<ClusterLink>, Leases)>,
    /// The config this limiter was built from, to keep buckets across reloads that
    /// do not change it.
    pub config: RateLimitConfig,
    pub admitted: AtomicU64,
    pub rejected: AtomicU64,
    /// Seeds the bucket keys of a service's or route's limiter, so its buckets
    /// (local and shared) are its own; 0 for the proxy-wide one.
    scope: u64,
}

impl RateLimiter {
    pub fn new(
        config: &RateLimitConfig,
        server_trusted: &[Cidr],
        link: Option<Arc<ClusterLink>>,
    ) -> Self {
        let limit = |rps: f64, burst: i64| Limit {
            rate: rps,
            burst: burst as f64,
        };
        Self {
            key: config.key.clone(),
            trusted: config
                .trusted_proxies
                .clone()
                .unwrap_or_else(|| server_trusted.to_vec()),
            default: limit(config.requests_per_second.0, config.burst.get()),
            rules: config
                .rules
                .iter()
                .map(|r| {
                    (
                        r.path_prefix.clone(),
                        limit(r.requests_per_second.0, r.burst.get()),
                    )
                })
                .collect(),
            buckets: Buckets::new(config.max_keys.as_usize()),
            cluster: link.map(|l| (l, Leases::new(config.max_keys.as_usize()))),
            config: config.clone(),
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            scope: 0,
        }
    }

    /// The same limiter with buckets of its own, named by `scope` (a service's or
    /// a route's name, the same on every replica).
    pub fn scoped(mut self, scope: &str) -> Self {
        use std::hash::Hash;
        let mut h = std::hash::DefaultHasher::new();
        scope.hash(&mut h);
        self.scope = h.finish() | 1;
        self
    }

    /// Takes a token for `req` or says why not; a cold key in a cluster may have
    /// to wait for the store ([`Checked::Wait`]).
    pub fn check<'a, B>(
        &'a self,
        req: &Request<B>,
        peer: SocketAddr,
        metrics: &'a Metrics,
    ) -> Checked<'a> {
        let (rule, limit) = self.limit_for(req.uri().path());
        let Some(key) = self.key_of(req, peer, rule) else {
            // No key (header absent): not limited by this rule.
            return Checked::Done(Ok(()));
        };
        let now = Instant::now();
        let decision = match &self.cluster {
            None => self.buckets.take(key, limit, now),
            Some((link, leases)) => {
                if !link.store_ok.load(Relaxed) {
                    self.fallback(link, key, limit, now)
                } else {
                    match leases.take(key, limit, now, || link.wake.notify_one()) {
                        Take::Now(d) => d,
                        Take::Fallback => self.fallback(link, key, limit, now),
                        Take::Wait(rx) => {
                            let link = link.clone();
                            return Checked::Wait(Box::pin(async move {
                                let d = match tokio::time::timeout(link.timeout, rx).await {
                                    Ok(Ok(true)) => Decision::Admit { remaining: 0.0 },
                                    Ok(Ok(false)) => Decision::Reject {
                                        retry_after_s: 1.0 / limit.rate,
                                    },
                                    // The store failed or is slow: as if unreachable.
                                    _ => self.fallback(&link, key, limit, Instant::now()),
                                };
                                self.conclude(d, limit, metrics)
                            }));
                        }
                    }
                }
            }
        };
        Checked::Done(self.conclude(decision, limit, metrics))
    }

    /// What `cluster.on_store_error` says while the store cannot be asked.
    fn fallback(&self, link: &ClusterLink, key: u64, limit: Limit, now: Instant) -> Decision {
        match link.on_error {
            OnStoreError::Allow => Decision::Admit { remaining: 0.0 },
            OnStoreError::Deny => Decision::Reject { retry_after_s: 1.0 },
            OnStoreError::Local => {
                let live = link.live() as f64;
                let share = Limit {
                    rate: limit.rate / live,
                    burst: (limit.burst / live).max(1.0),
                };
                self.buckets.take(key, share, now)
            }
        }
    }

    fn conclude(&self, d: Decision, limit: Limit, metrics: &Metrics) -> Result<(), RateLimited> {
        match d {
            Decision::Admit { .. } => {
                self.admitted.fetch_add(1, Relaxed);
                Ok(())
            }
            Decision::Reject { retry_after_s } => {
                self.rejected.fetch_add(1, Relaxed);
                metrics.rate_limited.fetch_add(1, Relaxed);
                Err(RateLimited {
                    retry_after: retry_after_s.ceil().max(1.0) as u64,
                    limit: limit.rate.round() as u64,
                    remaining: 0,
                    reset: (limit.burst / limit.rate).ceil() as u64,
                })
            }
        }
    }

    fn limit_for(&self, path: &str) -> (usize, Limit) {
        for (i, (prefix, limit)) in self.rules.iter().enumerate() {
            if path.starts_with(prefix.as_str()) {
                return (i + 1, *limit);
            }
        }
        (0, self.default)
    }

    fn key_of<B>(&self, req: &Request<B>, peer: SocketAddr, rule: usize) -> Option<u64> {
        let mut h: Box<dyn Hasher> = match &self.cluster {
            Some((link, _)) => {
                // Fixed keys: the same client maps to the same bucket on every replica.
                let mut h = std::hash::DefaultHasher::new();
                h.write(link.name.as_bytes());
                Box::new(h)
            }
            None => Box::new(self.buckets.hasher.build_hasher()),
        };
        h.write_usize(rule);
        if self.scope != 0 {
            h.write_u64(self.scope);
        }
        match &self.key {
            RateLimitKey::Global => {}
            RateLimitKey::ClientIp => {
                let trusted = |ip: IpAddr| in_any(&self.trusted, ip);
                match headers::client_ip(req.headers(), peer.ip(), &trusted) {
                    IpAddr::V4(v4) => h.write(&v4.octets()),
                    IpAddr::V6(v6) => h.write(&v6.octets()),
                }
            }
            RateLimitKey::Header(name) => h.write(req.headers().get(name)?.as_bytes()),
        }
        Some(h.finish())
    }

    pub fn tracked_keys(&self) -> usize {
        self.buckets.len() + self.cluster.as_ref().map_or(0, |(_, l)| l.len())
    }

    /// Clustered: asks the store for the requests waiting on cold keys, and
    /// answers them. Returns at once when nothing waits.
    pub async fn fetch(&self, store: &dyn StateStore) -> StoreResult<()> {
        let Some((_, leases)) = &self.cluster else {
            return Ok(());
        };
        self.exchange(store, leases.fetch_requests()).await
    }

    /// Clustered: the background round every [`SYNC_PERIOD`]: pays what was spent
    /// on credit and refreshes the credit of every key with traffic.
    pub async fn sync(&self, store: &dyn StateStore) -> StoreResult<()> {
        let Some((_, leases)) = &self.cluster else {
            return Ok(());
        };
        self.exchange(store, leases.sync_requests(Instant::now()))
            .await
    }

    async fn exchange(
        &self,
        store: &dyn StateStore,
        asked: Vec<(u64, TokenRequest)>,
    ) -> StoreResult<()> {
        let Some((link, leases)) = &self.cluster else {
            return Ok(());
        };
        let mut result = Ok(());
        for chunk in asked.chunks(256) {
            let reqs = chunk.iter().map(|(_, r)| r.clone()).collect();
            let answer = if result.is_ok() {
                store.take_tokens(reqs).await
            } else {
                // After a failure: don't wait on the store again, book the rest as failed.
                Ok(Vec::new())
            };
            let grants = match answer {
                Ok(g) if g.len() == chunk.len() => Some(g),
                Ok(_) => None,
                Err(e) => {
                    result = Err(e);
                    None
                }
            };
            leases.apply(
                chunk,
                grants.as_deref(),
                link.live(),
                Instant::now(),
                || link.wake.notify_one(),
            );
        }
        result
    }

    /// Clustered: whether requests wait for a fetch.
    pub fn has_waiting(&self) -> bool {
        self.cluster.as_ref().is_some_and(|(_, l)| l.has_pending())
    }
}

/// A replica's lease traffic with the store, until `stop`: the background round
/// every [`SYNC_PERIOD`], and a fetch as soon as a request of a cold key waits.
/// Each runs in its own task, so a slow store call never holds up the next one
/// (the waiting requests bound it by `cluster.timeout`); a round still running
/// when the next is due is skipped rather than piled up. `current` gives the
/// limiter in force (a reload may replace it).
pub async fn lease_loop(
    link: &ClusterLink,
    current: impl Fn() -> Vec<Arc<RateLimiter>>,
    store: Arc<dyn StateStore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(SYNC_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let syncing = Arc::new(AtomicBool::new(false));
    loop {
        let urgent = tokio::select! {
            _ = tick.tick() => false,
            _ = link.wake.notified() => true,
            _ = stop.changed() => return,
        };
        let limiters = current();
        if limiters.is_empty() || !link.store_ok.load(Relaxed) {
            continue;
        }
        for limiter in &limiters {
            if urgent || limiter.has_waiting() {
                let (store, limiter) = (store.clone(), limiter.clone());
                tokio::spawn(async move {
                    if let Err(e) = limiter.fetch(&*store).await {
                        tracing::debug!(error = %e, "token fetch failed");
                    }
                });
            }
        }
        if !urgent && !syncing.swap(true, Relaxed) {
            let (store, syncing) = (store.clone(), syncing.clone());
            tokio::spawn(async move {
                // Every limiter (the proxy-wide one, services', routes') in turn.
                for limiter in limiters {
                    if let Err(e) = limiter.sync(&*store).await {
                        tracing::debug!(error = %e, "token lease failed");
                    }
                }
                syncing.store(false, Relaxed);
            });
        }
    }
}

// === impl Buckets ===

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Nanoseconds since the limiter's epoch.
    stamp: u64,
}

/// The key is already a hash: use it as is.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, Bucket, BuildHasherDefault<IdentityHasher>>;

pub struct Buckets {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: std::hash::RandomState,
    epoch: Instant,
}

impl Buckets {
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            hasher: std::hash::RandomState::new(),
            epoch: Instant::now(),
        }
    }

    /// Takes one token from `key`'s bucket at `now`.
    pub fn take(&self, key: u64, limit: Limit, now: Instant) -> Decision {
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        // Shard on middle bits: the table inside a shard indexes by the low ones.
        let mut shard = self.shards[shard_of(key)].lock();
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            evict(&mut shard, self.per_shard, limit, now_ns);
        }
        let b = shard.entry(key).or_insert(Bucket {
            tokens: limit.burst,
            stamp: now_ns,
        });
        let elapsed = now_ns.saturating_sub(b.stamp) as f64 / 1e9;
        b.tokens = (b.tokens + elapsed * limit.rate).min(limit.burst);
        b.stamp = b.stamp.max(now_ns);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Decision::Admit {
                remaining: b.tokens,
            }
        } else {
            Decision::Reject {
                retry_after_s: (1.0 - b.tokens) / limit.rate,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn evict(shard: &mut Shard, cap: usize, limit: Limit, now_ns: u64) {
    // Buckets that have refilled completely carry no information.
    shard.retain(|_, b| {
        let elapsed = now_ns.saturating_sub(b.stamp) as f64 / 1e9;
        b.tokens + elapsed * limit.rate < limit.burst
    });
    if shard.len() >= cap {
        let mut drop = (cap / 8).max(1);
        shard.retain(|_, _| {
            if drop > 0 {
                drop -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let b = Buckets::new(100);
        let limit = Limit {
            rate: 5.0,
            burst: 5.0,
        };
        let admitted = (0..30)
            .filter(|_| matches!(b.take(1, limit, Instant::now()), Decision::Admit { .. }))
            .count();
        assert_eq!(admitted, 5);
        match b.take(1, limit, Instant::now()) {
            Decision::Reject { retry_after_s } => assert!((retry_after_s - 0.2).abs() < 1e-9),
            d => panic!("{d:?}"),
        }
        // 10 s of one attempt per millisecond admits rate × 10 s
        let mut admitted = 0;
        for _ in 0..10_000 {
            tokio::time::advance(Duration::from_millis(1)).await;
            if let Decision::Admit { .. } = b.take(1, limit, Instant::now()) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_independent() {
        let b = Buckets::new(100);
        let limit = Limit {
            rate: 1.0,
            burst: 1.0,
        };
        assert!(matches!(
            b.take(1, limit, Instant::now()),
            Decision::Admit { .. }
        ));
        assert!(matches!(
            b.take(1, limit, Instant::now()),
            Decision::Reject { .. }
        ));
        assert!(matches!(
            b.take(2, limit, Instant::now()),
            Decision::Admit { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_capped_under_a_flood_of_keys() {
        let cap = 10_000;
        let b = Buckets::new(cap);
        let limit = Limit {
            rate: 1.0,
            burst: 10.0,
        };
        for k in 0..200_000u64 {
            b.take(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), limit, Instant::now());
        }
        assert!(b.len() <= cap + SHARDS, "{} keys", b.len());
    }

    #[tokio::test(start_paused = true)]
    async fn refilled_buckets_are_evicted_first() {
        let b = Buckets::new(SHARDS); // one key per shard
        let limit = Limit {
            rate: 100.0,
            burst: 1.0,
        };
        let k1 = 0u64;
        let k2 = 1u64; // same shard (they differ only in low bits)
        assert!(matches!(
            b.take(k1, limit, Instant::now()),
            Decision::Admit { .. }
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        // k1 has refilled: evicting it loses nothing; k2 gets a place
        assert!(matches!(
            b.take(k2, limit, Instant::now()),
            Decision::Admit { .. }
        ));
        assert!(matches!(
            b.take(k2, limit, Instant::now()),
            Decision::Reject { .. }
        ));
    }
}
