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
//! store (Redis), refilled by the store's clock; **no request waits for the store**.
//! Each replica holds, per active key, tokens it leased in the background and spends
//! them locally; every [`SYNC_PERIOD`] it asks for more (about what it used in the
//! last period, at most `burst ÷ replicas`) and pays back any credit it spent.
//! Credit: a key the replica holds no tokens for may admit requests on credit
//! before the first lease arrives, so a new client is not refused while the lease
//! is in flight: the replica's share of one sync period's refill
//! (`min(rate × 50 ms, burst) ÷ replicas`, at least one). The credit is charged to
//! the global bucket at the next sync and is only extended again while the store
//! reports room for every replica's credit.
//! Accuracy: over a window T the cluster admits at most `burst + rate × T` plus the
//! credit other replicas spent that the store has not been told of yet (at most one
//! sync period's refill, or `replicas − 1` requests for small limits); under
//! sustained overload admissions follow the store's refill exactly (tokens left
//! unused on an idle replica are lost, which errs on the strict side).
//! The cost of keeping Redis off the request path: a cold replica admits only its
//! credit during the first sync period (≤ 50 ms) of a burst; for a high limit that
//! credit covers the period (measured: no refusals at 88k req/s against a limit of
//! 10M rps, where one request of credit refused ~9k at start-up).
//! With 3 replicas and the 50 ms period, a 60 s run at 3× the limit admits within
//! ±10 % of the limit (`tests/cluster.rs`).
//!
//! If the store is unreachable, `cluster.on_store_error` decides: `local` (default)
//! limits each replica to `rate ÷ live replicas` with local buckets, `allow` admits
//! everything, `deny` refuses everything; leases resume when it returns.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use http::Request;
use parking_lot::Mutex;
use switchyard_http1::headers;
use tokio::time::Instant;

use crate::config::types::in_any;
use crate::config::{Cidr, OnStoreError, RateLimitConfig, RateLimitKey};
use crate::state::{TokenGrant, TokenRequest};
use crate::telemetry::metrics::Metrics;

const SHARDS: usize = 64;

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
}

impl ClusterLink {
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
        }
    }

    /// Takes a token for `req` or says why not.
    pub fn check<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        metrics: &Metrics,
    ) -> Result<(), RateLimited> {
        let (rule, limit) = self.limit_for(req.uri().path());
        let Some(key) = self.key_of(req, peer, rule) else {
            // No key (header absent): not limited by this rule.
            return Ok(());
        };
        let now = Instant::now();
        let decision = match &self.cluster {
            None => self.buckets.take(key, limit, now),
            Some((link, leases)) => {
                let live = link.live();
                if link.store_ok.load(Relaxed) {
                    leases.take(key, limit, now, live)
                } else {
                    match link.on_error {
                        OnStoreError::Allow => Decision::Admit { remaining: 0.0 },
                        OnStoreError::Deny => Decision::Reject { retry_after_s: 1.0 },
                        OnStoreError::Local => {
                            let share = Limit {
                                rate: limit.rate / live as f64,
                                burst: (limit.burst / live as f64).max(1.0),
                            };
                            self.buckets.take(key, share, now)
                        }
                    }
                }
            }
        };
        match decision {
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

    /// Clustered: what to ask the store for now (and the debts being paid).
    pub fn lease_requests(&self) -> Vec<(u64, TokenRequest)> {
        match &self.cluster {
            Some((link, leases)) => leases.requests(link.live(), Instant::now()),
            None => Vec::new(),
        }
    }

    /// Clustered: books what the store granted for `lease_requests`.
    pub fn apply_grants(&self, asked: &[(u64, TokenRequest)], grants: &[TokenGrant]) {
        if let Some((link, leases)) = &self.cluster {
            let live = link.live();
            for ((key, req), grant) in asked.iter().zip(grants) {
                leases.apply(*key, req.debt, *grant, live);
            }
        }
    }
}

// === impl Leases ===

/// A replica's share of one global bucket.
#[derive(Clone, Copy)]
struct Lease {
    /// Leased tokens not yet spent.
    avail: u32,
    /// Spent on credit, not yet charged to the store.
    debt: u32,
    /// Whether credit may be extended (the store's bucket had room at last sync).
    credit_ok: bool,
    /// Requests seen since the last sync.
    demand: u32,
    last_used: Instant,
    limit: Limit,
}

/// Lease state per key, sharded like [`Buckets`] and capped at `max_keys`.
pub struct Leases {
    shards: Vec<Mutex<HashMap<u64, Lease, BuildHasherDefault<IdentityHasher>>>>,
    per_shard: usize,
}

/// Keys unused this long are forgotten (their unspent tokens are lost).
const LEASE_IDLE: Duration = Duration::from_secs(30);

fn shard_of(key: u64) -> usize {
    ((key >> 40) as usize) % SHARDS
}

impl Leases {
    fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    /// Requests a replica may admit on credit per key before the store hears of
    /// them: its share of one sync period's refill (at least one, at most its
    /// share of the burst). A cold replica thus serves a high limit at full speed
    /// from its first request, while a small limit stays strict (10 rps: one).
    fn credit(limit: Limit, live: usize) -> u32 {
        let period = limit.rate * SYNC_PERIOD.as_secs_f64();
        let share = period.min(limit.burst) / live.max(1) as f64;
        (share.floor() as u32).max(1)
    }

    fn take(&self, key: u64, limit: Limit, now: Instant, live: usize) -> Decision {
        let mut shard = self.shards[shard_of(key)].lock();
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            // Forget idle keys without debt first, then anything without debt.
            shard.retain(|_, l| {
                l.debt > 0 || now.saturating_duration_since(l.last_used) < LEASE_IDLE
            });
            if shard.len() >= self.per_shard {
                let mut drop = (self.per_shard / 8).max(1);
                shard.retain(|_, l| {
                    if drop > 0 && l.debt == 0 {
                        drop -= 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
        let l = shard.entry(key).or_insert(Lease {
            avail: 0,
            debt: 0,
            credit_ok: true,
            demand: 0,
            last_used: now,
            limit,
        });
        // Idle long enough for the global bucket to have refilled: credit is safe again.
        let refill = Duration::from_secs_f64(limit.burst / limit.rate);
        if now.saturating_duration_since(l.last_used) >= refill {
            l.credit_ok = true;
        }
        l.demand = l.demand.saturating_add(1);
        l.last_used = now;
        l.limit = limit;
        if l.avail > 0 {
            l.avail -= 1;
            Decision::Admit {
                remaining: f64::from(l.avail),
            }
        } else if l.credit_ok && l.debt < Self::credit(limit, live) {
            l.debt += 1;
            Decision::Admit { remaining: 0.0 }
        } else {
            Decision::Reject {
                retry_after_s: (live as f64 / limit.rate).max(SYNC_PERIOD.as_secs_f64()),
            }
        }
    }

    fn requests(&self, live: usize, now: Instant) -> Vec<(u64, TokenRequest)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock();
            shard.retain(|_, l| {
                l.debt > 0
                    || l.demand > 0
                    || now.saturating_duration_since(l.last_used) < LEASE_IDLE
            });
            for (key, l) in shard.iter_mut() {
                if l.demand == 0 && l.debt == 0 {
                    continue;
                }
                let cap = ((l.limit.burst / live as f64).ceil() as u32).max(1);
                let want = if l.demand > 0 {
                    l.demand
                        .saturating_add(l.demand / 2)
                        .clamp(1, cap)
                        .saturating_sub(l.avail)
                } else {
                    0
                };
                l.demand = 0;
                out.push((
                    *key,
                    TokenRequest {
                        bucket: format!("{key:016x}"),
                        rate: l.limit.rate,
                        burst: l.limit.burst,
                        want,
                        debt: l.debt,
                    },
                ));
            }
        }
        out
    }

    fn apply(&self, key: u64, paid: u32, grant: TokenGrant, live: usize) {
        let mut shard = self.shards[shard_of(key)].lock();
        if let Some(l) = shard.get_mut(&key) {
            l.debt = l.debt.saturating_sub(paid);
            l.avail = l.avail.saturating_add(grant.granted);
            // Room for every replica's credit, or none is extended.
            l.credit_ok = grant.remaining >= f64::from(Self::credit(l.limit, live)) * live as f64;
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
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
    async fn a_cold_lease_admits_one_sync_periods_share_on_credit() {
        let now = Instant::now();
        let admitted = |limit: Limit, live: usize| {
            let leases = Leases::new(100);
            (0..100_000)
                .take_while(|_| matches!(leases.take(7, limit, now, live), Decision::Admit { .. }))
                .count()
        };
        // A small limit stays strict: one request before the store is asked.
        let small = Limit {
            rate: 10.0,
            burst: 10.0,
        };
        assert_eq!(admitted(small, 1), 1);
        assert_eq!(admitted(small, 3), 1);
        // A high one: rate × 50 ms, shared by the live replicas, capped by the burst.
        let high = Limit {
            rate: 100_000.0,
            burst: 1_000_000.0,
        };
        assert_eq!(admitted(high, 1), 5_000);
        assert_eq!(admitted(high, 4), 1_250);
        let small_burst = Limit {
            rate: 100_000.0,
            burst: 600.0,
        };
        assert_eq!(admitted(small_burst, 2), 300);
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
