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
//! Keys are stored as 64-bit hashes (SipHash with a per-process key), so header
//! values are never copied and a client cannot pick colliding keys.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use http::Request;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::types::in_any;
use crate::config::{Cidr, RateLimitConfig, RateLimitKey};
use crate::errors::{ProxyError, RateLimited};
use crate::forward::headers;
use crate::telemetry::metrics::Metrics;

const SHARDS: usize = 64;

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
    buckets: Buckets,
    /// The config this limiter was built from, to keep buckets across reloads that
    /// do not change it.
    pub config: RateLimitConfig,
    pub admitted: AtomicU64,
    pub rejected: AtomicU64,
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig, server_trusted: &[Cidr]) -> Self {
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
    ) -> Result<(), ProxyError> {
        let (rule, limit) = self.limit_for(req.uri().path());
        let Some(key) = self.key_of(req, peer, rule) else {
            // No key (header absent): not limited by this rule.
            return Ok(());
        };
        match self.buckets.take(key, limit, Instant::now()) {
            Decision::Admit { .. } => {
                self.admitted.fetch_add(1, Relaxed);
                Ok(())
            }
            Decision::Reject { retry_after_s } => {
                self.rejected.fetch_add(1, Relaxed);
                metrics.rate_limited.fetch_add(1, Relaxed);
                Err(ProxyError::RateLimited(RateLimited {
                    retry_after: retry_after_s.ceil().max(1.0) as u64,
                    limit: limit.rate.round() as u64,
                    remaining: 0,
                    reset: (limit.burst / limit.rate).ceil() as u64,
                }))
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
        let mut h = self.buckets.hasher.build_hasher();
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
        self.buckets.len()
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
        let mut shard = self.shards[((key >> 40) as usize) % SHARDS].lock();
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
