//! The cluster rate limiter's accuracy on paused time: three (or two) replicas, each
//! a [`RateLimiter`] with its own [`lease_loop`], sharing one embedded store that
//! answers after a round trip of 300 µs. Bursts after idle periods of 2 s and 30 s
//! must be admitted in full; a minute at 3× the limit must admit
//! `burst + rate × T` within 5 %. (tests/cluster.rs runs the same against real
//! processes and a real Redis.)

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use switchyard_shared::{ReplicaView, StoreView};
use tokio::sync::{broadcast, watch};

use super::*;
use crate::state::{MembershipChange, MemoryStore, Overlay, Record, StoreEvent, TokenGrant};

/// The embedded store, answering token requests one round trip later.
struct Delayed(MemoryStore, Duration);

impl crate::state::SharedKv for Delayed {
    fn kv_get(&self, key: String) -> BoxFuture<'_, StoreResult<Option<Vec<u8>>>> {
        self.0.kv_get(key)
    }
    fn kv_set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, StoreResult<()>> {
        self.0.kv_set(key, value, ttl)
    }
    fn kv_set_nx(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, StoreResult<Vec<u8>>> {
        self.0.kv_set_nx(key, value, ttl)
    }
    fn kv_delete(&self, key: String) -> BoxFuture<'_, StoreResult<()>> {
        self.0.kv_delete(key)
    }
}

impl StateStore for Delayed {
    fn kind(&self) -> &'static str {
        "delayed"
    }
    fn membership(&self) -> BoxFuture<'_, StoreResult<Overlay>> {
        self.0.membership()
    }
    fn change_membership(&self, c: MembershipChange) -> BoxFuture<'_, StoreResult<Overlay>> {
        self.0.change_membership(c)
    }
    fn reseed_membership(&self, o: Overlay) -> BoxFuture<'_, StoreResult<Overlay>> {
        self.0.reseed_membership(o)
    }
    fn publish(&self, r: Record) -> BoxFuture<'_, StoreResult<()>> {
        self.0.publish(r)
    }
    fn records(&self) -> BoxFuture<'_, StoreResult<Vec<Record>>> {
        self.0.records()
    }
    fn try_lease(&self, n: String, h: String, t: Duration) -> BoxFuture<'_, StoreResult<bool>> {
        self.0.try_lease(n, h, t)
    }
    fn release_lease(&self, n: String, h: String) -> BoxFuture<'_, StoreResult<()>> {
        self.0.release_lease(n, h)
    }
    fn take_tokens(&self, r: Vec<TokenRequest>) -> BoxFuture<'_, StoreResult<Vec<TokenGrant>>> {
        Box::pin(async move {
            // Half the round trip there, the other half back: the bucket is read
            // in the middle, as Redis would.
            tokio::time::sleep(self.1 / 2).await;
            let g = self.0.take_tokens(r).await;
            tokio::time::sleep(self.1 / 2).await;
            g
        })
    }
    fn heartbeat(&self, r: ReplicaView, t: Duration) -> BoxFuture<'_, StoreResult<()>> {
        self.0.heartbeat(r, t)
    }
    fn replicas(&self) -> BoxFuture<'_, StoreResult<Vec<ReplicaView>>> {
        self.0.replicas()
    }
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.0.subscribe()
    }
    fn status(&self) -> StoreView {
        self.0.status()
    }
    fn is_connected(&self) -> bool {
        true
    }
}

struct Replicas {
    limiters: Vec<Arc<RateLimiter>>,
    _stop: watch::Sender<bool>,
    metrics: Metrics,
}

fn replicas(n: usize, rate: u32, burst: u32) -> Replicas {
    let yaml =
        format!("rate_limit:\n  requests_per_second: {rate}\n  burst: {burst}\n  key: global\n");
    let config = crate::config::parse(&yaml, "t.yaml").unwrap();
    let rl = config.rate_limit.unwrap();
    let store: Arc<dyn StateStore> =
        Arc::new(Delayed(MemoryStore::default(), Duration::from_micros(300)));
    let (stop, stop_rx) = watch::channel(false);
    let limiters = (0..n)
        .map(|_| {
            let link = Arc::new(ClusterLink::new(
                "t",
                OnStoreError::Deny,
                Duration::from_millis(500),
                true,
            ));
            link.live.store(n, Relaxed);
            let limiter = Arc::new(RateLimiter::new(&rl, &[], Some(link.clone())));
            let (l, store, stop) = (limiter.clone(), store.clone(), stop_rx.clone());
            tokio::spawn(async move { lease_loop(&link, || vec![l.clone()], store, stop).await });
            limiter
        })
        .collect();
    Replicas {
        limiters,
        _stop: stop,
        metrics: Metrics::default(),
    }
}

impl Replicas {
    /// `n` requests at the same instant, spread round-robin over the replicas;
    /// how many were admitted. (Refusals use `Deny`, so a fallback would show.)
    async fn burst(self: &Arc<Self>, n: usize) -> usize {
        let peer: SocketAddr = ([127, 0, 0, 1], 9).into();
        let mut tasks = Vec::new();
        for i in 0..n {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                let l = &me.limiters[i % me.limiters.len()];
                let req = Request::get("/").body(()).unwrap();
                l.check(&req, peer, &me.metrics).decision().await.is_ok()
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        ok
    }

    /// `per_replica` requests per second on every replica for `secs`, evenly
    /// paced; how many were admitted.
    async fn sustained(self: &Arc<Self>, per_replica: u32, secs: u64) -> usize {
        let peer: SocketAddr = ([127, 0, 0, 1], 9).into();
        let mut tasks = Vec::new();
        for (i, _) in self.limiters.iter().enumerate() {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                let period = Duration::from_secs(1) / per_replica;
                // Replicas offset from each other, as independent clients are.
                tokio::time::sleep(period * i as u32 / me.limiters.len() as u32).await;
                let mut tick = tokio::time::interval(period);
                let mut ok = 0;
                for _ in 0..u64::from(per_replica) * secs {
                    tick.tick().await;
                    let req = Request::get("/").body(()).unwrap();
                    let checked = me.limiters[i].check(&req, peer, &me.metrics);
                    ok += usize::from(checked.decision().await.is_ok());
                }
                ok
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap();
        }
        ok
    }
}

async fn bursts_after_idle(n: usize, rate: u32, burst: u32) {
    let r = Arc::new(replicas(n, rate, burst));
    // Cold: the very first requests of the key.
    assert_eq!(r.burst(burst as usize).await, burst as usize, "cold burst");
    for idle in [2, 30] {
        tokio::time::sleep(Duration::from_secs(idle)).await;
        assert_eq!(
            r.burst(burst as usize).await,
            burst as usize,
            "burst after {idle} s idle ({n} replicas, {rate}/s)"
        );
    }
    // A smaller burst after a short pause: also in full.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(r.burst(burst as usize / 2).await, burst as usize / 2);
    // More than the bucket holds, at once: the bucket, and no more than a little
    // credit beyond it (the store hears of credit at the next sync).
    tokio::time::sleep(Duration::from_secs(30)).await;
    let ok = r.burst(4 * burst as usize).await;
    eprintln!(
        "{n} replicas, {rate}/s: {ok} of {} at once admitted from a bucket of {burst}",
        4 * burst
    );
    assert!(ok >= burst as usize, "{ok} of a full bucket");
    assert!(
        ok as f64 <= f64::from(burst) * 1.05 + 1.0,
        "{ok} admitted from a bucket of {burst}"
    );
}

#[tokio::test(start_paused = true)]
async fn bursts_after_idle_are_admitted_in_full_10_per_s() {
    bursts_after_idle(2, 10, 10).await;
    bursts_after_idle(3, 10, 10).await;
}

#[tokio::test(start_paused = true)]
async fn bursts_after_idle_are_admitted_in_full_1000_per_s() {
    bursts_after_idle(2, 1000, 1000).await;
    bursts_after_idle(3, 1000, 1000).await;
}

async fn a_minute_at_three_times(rate: u32, burst: u32) {
    let r = Arc::new(replicas(3, rate, burst));
    let secs = 60;
    let ok = r.sustained(rate, secs).await as f64;
    let expected = f64::from(burst) + f64::from(rate) * secs as f64;
    assert!(
        (ok - expected).abs() <= 0.05 * expected,
        "admitted {ok}, limit gives {expected} ({rate}/s, burst {burst})"
    );
    eprintln!(
        "{rate}/s: admitted {ok} of {} offered; burst + rate × T = {expected} ({:+.2} %)",
        3 * rate as u64 * secs,
        (ok - expected) / expected * 100.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_minute_at_three_times_the_limit_admits_the_limit() {
    a_minute_at_three_times(10, 10).await;
    a_minute_at_three_times(1000, 1000).await;
}

#[tokio::test(start_paused = true)]
async fn a_warm_key_is_decided_without_waiting() {
    let r = Arc::new(replicas(3, 1000, 1000));
    // Warm up: steady traffic under the limit.
    r.sustained(100, 2).await;
    let peer: SocketAddr = ([127, 0, 0, 1], 9).into();
    let req = Request::get("/").body(()).unwrap();
    for l in &r.limiters {
        for _ in 0..3 {
            assert!(
                l.check(&req, peer, &r.metrics).admitted_now(),
                "a warm key under its limit waits for nothing"
            );
        }
    }
}
