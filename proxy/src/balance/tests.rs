use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use switchyard_shared::BackendSource;
use switchyard_shared::validate::backend_url;
use tokio::time::Instant;

use super::*;
use crate::backend::{Backend, Member};
use crate::config::AdaptiveConfig;

fn members(weights: &[u32]) -> Vec<Member> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let url = format!("http://b{i}:80");
            Member {
                backend: Backend::new(&url, backend_url(&url).unwrap()),
                weight: w,
                source: BackendSource::Config,
                health_path: None,
                protocol: Default::default(),
            }
        })
        .collect()
}

fn all(_: usize) -> bool {
    true
}

#[tokio::test]
async fn smooth_round_robin_is_exact_and_interleaved() {
    let m = members(&[5, 1, 1]);
    let rr = RoundRobin::new(&m);
    let now = Instant::now();
    let seq: Vec<usize> = (0..7).map(|_| rr.pick(&m, &all, now).unwrap()).collect();
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    let m = members(&[3, 1, 1]);
    let rr = RoundRobin::new(&m);
    let mut counts = [0; 3];
    for _ in 0..50 {
        counts[rr.pick(&m, &all, now).unwrap()] += 1;
    }
    assert_eq!(counts, [30, 10, 10]);
}

#[tokio::test]
async fn round_robin_keeps_proportions_among_eligible() {
    let m = members(&[2, 1, 1]);
    let rr = RoundRobin::new(&m);
    let now = Instant::now();
    let mut counts = [0; 3];
    for _ in 0..30 {
        counts[rr.pick(&m, &|i| i != 1, now).unwrap()] += 1;
    }
    assert_eq!(counts, [20, 0, 10]);
    assert_eq!(rr.pick(&m, &|_| false, now), None);
}

#[tokio::test]
async fn least_connections_prefers_idle_and_respects_weight() {
    let m = members(&[1, 1, 1]);
    let lc = LeastConnections::default();
    let now = Instant::now();
    m[0].backend.stats.active.store(5, Relaxed);
    m[1].backend.stats.active.store(2, Relaxed);
    for _ in 0..10 {
        assert_eq!(lc.pick(&m, &all, now), Some(2));
    }
    // ties rotate
    m[0].backend.stats.active.store(0, Relaxed);
    m[1].backend.stats.active.store(0, Relaxed);
    let mut seen = [false; 3];
    for _ in 0..6 {
        seen[lc.pick(&m, &all, now).unwrap()] = true;
    }
    assert_eq!(seen, [true; 3]);
    // weight 3 with 2 in flight (3/3 = 1) beats weight 1 with 1 in flight (2/1)
    let m = members(&[3, 1]);
    m[0].backend.stats.active.store(2, Relaxed);
    m[1].backend.stats.active.store(1, Relaxed);
    assert_eq!(lc.pick(&m, &all, now), Some(0));
}

#[tokio::test(start_paused = true)]
async fn adaptive_avoids_slow_and_fast_failing_backends() {
    let cfg = AdaptiveConfig::default();
    let tau = cfg.decay.get().as_nanos() as f64;
    let m = members(&[1, 1, 1]);
    let a = Adaptive::new(&cfg);
    let now = Instant::now();
    let observe = |i: usize, ms: f64, failed: bool| {
        let b: &Arc<Backend> = &m[i].backend;
        b.latency.observe(ms * 1e6, failed, b.nanos(now), tau);
    };
    observe(0, 1.0, false);
    observe(1, 51.0, false);
    observe(2, 1.2, false);
    let mut counts = [0; 3];
    for _ in 0..1000 {
        counts[a.pick(&m, &all, now).unwrap()] += 1;
    }
    assert_eq!(counts[1], 0, "{counts:?}");
    // a backend failing fast: its failures count as the failure penalty
    let penalty = cfg.failure_penalty.get().as_secs_f64() * 1e3;
    observe(2, penalty.max(0.05), true);
    let mut counts = [0; 3];
    for _ in 0..1000 {
        counts[a.pick(&m, &all, now).unwrap()] += 1;
    }
    assert!(counts[0] > 600, "{counts:?}");
    assert_eq!(counts[2], 0, "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn adaptive_reprobes_an_avoided_backend_eventually() {
    let cfg = AdaptiveConfig::default();
    let tau = cfg.decay.get().as_nanos() as f64;
    let m = members(&[1, 1]);
    let a = Adaptive::new(&cfg);
    let t0 = Instant::now();
    m[0].backend
        .latency
        .observe(1e6, false, m[0].backend.nanos(t0), tau);
    m[1].backend
        .latency
        .observe(50e6, false, m[1].backend.nanos(t0), tau);
    assert_eq!(a.pick(&m, &all, t0), Some(0));
    // backend 0 keeps being sampled; backend 1 is not, and decays
    tokio::time::advance(std::time::Duration::from_secs(120)).await;
    let later = Instant::now();
    m[0].backend
        .latency
        .observe(1e6, false, m[0].backend.nanos(later), tau);
    assert_eq!(a.pick(&m, &all, later), Some(1));
}

#[tokio::test]
async fn adaptive_with_one_eligible_picks_it() {
    let m = members(&[1, 1, 1]);
    let a = Adaptive::new(&AdaptiveConfig::default());
    for _ in 0..20 {
        assert_eq!(a.pick(&m, &|i| i == 2, Instant::now()), Some(2));
    }
    assert_eq!(a.pick(&m, &|_| false, Instant::now()), None);
}

fn ring(m: &[Member], balance_factor: f64) -> ConsistentHash {
    let cfg = crate::config::ConsistentHashConfig {
        balance_factor: crate::config::Positive(balance_factor),
        ..Default::default()
    };
    ConsistentHash::new(m, &cfg, None)
}

/// A request key as `Service::request_key` makes it (header `x-user-id: user-<i>`).
fn user_key(i: usize) -> u64 {
    let key = crate::config::StickyKey::Header(http::HeaderName::from_static("x-user-id"));
    let mut h = http::HeaderMap::new();
    h.insert("x-user-id", format!("user-{i}").parse().unwrap());
    crate::route::key_hash(&key, &h, "/", std::net::Ipv4Addr::LOCALHOST.into()).unwrap()
}

#[tokio::test]
async fn consistent_hash_moves_about_one_ninth_of_keys_when_a_ninth_backend_joins() {
    const KEYS: usize = 10_000;
    let nine = members(&[1; 9]);
    let eight = &nine[..8];
    let (before, after) = (ring(eight, 0.25), ring(&nine, 0.25));
    assert_eq!(after.points(), 9 * 256);
    let now = Instant::now();
    let mut moved = 0;
    let mut load = [0usize; 9];
    for k in 0..KEYS {
        let key = Some(user_key(k));
        let a = before.pick_keyed(eight, &all, key, now).unwrap();
        // idle: every key is at home, and it stays there
        assert_eq!(before.pick_keyed(eight, &all, key, now), Some(a));
        let b = after.pick_keyed(&nine, &all, key, now).unwrap();
        load[b] += 1;
        if a != b {
            assert_eq!(b, 8, "a key moved between old backends");
            moved += 1;
        }
    }
    let fraction = moved as f64 / KEYS as f64;
    println!("moved {moved} of {KEYS} keys ({fraction:.4}; 1/9 = 0.1111); spread {load:?}");
    assert!((0.08..=0.16).contains(&fraction), "{fraction}");
    // and the ring spreads keys: every backend within ±35 % of the mean
    for l in load {
        assert!((720..=1500).contains(&l), "{load:?}");
    }
}

/// Runs `arrivals` requests with keys from `key` through `ch`, `window` of them
/// in flight at a time (the oldest finishes as each new one starts); returns the
/// largest in-flight count any backend reached as a share of the mean.
fn max_load_share(
    ch: &ConsistentHash,
    m: &[Member],
    bound: Option<f64>,
    key: &dyn Fn(usize) -> u64,
) -> f64 {
    const ARRIVALS: usize = 20_000;
    const WINDOW: usize = 200;
    let now = Instant::now();
    let mut inflight = std::collections::VecDeque::new();
    let mut worst: f64 = 0.0;
    for r in 0..ARRIVALS {
        if inflight.len() == WINDOW {
            let i: usize = inflight.pop_front().unwrap();
            m[i].backend.stats.active.fetch_sub(1, Relaxed);
        }
        let total: u64 = m.iter().map(|x| x.backend.active()).sum();
        let i = ch.pick_keyed(m, &all, Some(key(r)), now).unwrap();
        let load = m[i].backend.stats.active.fetch_add(1, Relaxed) + 1;
        if let Some(f) = bound {
            let cap = ((1.0 + f) * (total + 1) as f64 / m.len() as f64).ceil() as u64;
            assert!(
                load <= cap,
                "request {r}: backend {i} at {load} > cap {cap}"
            );
        }
        if inflight.len() + 1 == WINDOW {
            worst = worst.max(load as f64 / (WINDOW as f64 / m.len() as f64));
        }
        inflight.push_back(i);
    }
    for i in inflight {
        m[i].backend.stats.active.fetch_sub(1, Relaxed);
    }
    worst
}

#[tokio::test]
async fn consistent_hash_bounds_load_under_skewed_keys() {
    let m = members(&[1; 8]);
    // Skewed: half of the requests carry one hot key, a quarter one of 10 warm
    // keys, the rest one of 10,000.
    let skewed = |r: usize| match r % 4 {
        0 | 1 => user_key(0),
        2 => user_key(1 + r % 10),
        _ => user_key(100 + r * 7 % 10_000),
    };
    let bounded = max_load_share(&ring(&m, 0.25), &m, Some(0.25), &skewed);
    let unbounded = max_load_share(&ring(&m, 1e9), &m, None, &skewed);
    println!(
        "max in-flight share of the mean, skewed keys: {bounded:.3} with balance_factor 0.25, {unbounded:.3} unbounded"
    );
    // ceil((1.25 × 200) / 8) = 32 = 1.28 × the mean of 25
    assert!(bounded <= 1.28 + 1e-9, "{bounded}");
    assert!(
        unbounded > 3.0,
        "the hot key should overload its backend: {unbounded}"
    );
}

#[tokio::test]
async fn consistent_hash_skips_ineligible_and_keeps_affinity_otherwise() {
    let m = members(&[1; 4]);
    let ch = ring(&m, 0.25);
    let now = Instant::now();
    for k in 0..200 {
        let key = Some(user_key(k));
        let home = ch.pick_keyed(&m, &all, key, now).unwrap();
        let other = ch.pick_keyed(&m, &|i| i != home, key, now).unwrap();
        assert_ne!(other, home);
        // the same fallback every time (the next one clockwise)
        assert_eq!(ch.pick_keyed(&m, &|i| i != home, key, now), Some(other));
    }
    assert_eq!(ch.pick_keyed(&m, &|_| false, Some(1), now), None);
    assert_eq!(ring(&[], 0.25).pick_keyed(&[], &all, Some(1), now), None);
    // without a key: spread at random
    let mut seen = [0; 4];
    for _ in 0..400 {
        seen[ch.pick(&m, &all, now).unwrap()] += 1;
    }
    assert!(seen.iter().all(|&c| c > 0), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn adaptive_scales_a_ramping_backend_down() {
    let window = std::time::Duration::from_secs(30);
    let m = members(&[1, 1]);
    let a = Adaptive::new(&AdaptiveConfig::default()).slow_start(Some(window));
    m[1].backend.start_ramp(Instant::now());
    let share = |picks: usize| {
        let now = Instant::now();
        let mut counts = [0u64; 2];
        for _ in 0..picks {
            let i = a.pick(&m, &all, now).unwrap();
            counts[i] += 1;
            m[i].backend.stats.active.fetch_add(1, Relaxed);
        }
        for (b, c) in m.iter().zip(counts) {
            b.backend.stats.active.fetch_sub(c, Relaxed);
        }
        counts[1] as f64 / picks as f64
    };
    // two members: both are drawn, the cost (in flight + 1) / effective weight decides
    let at_start = share(1100);
    assert!((at_start - 0.1 / 1.1).abs() < 0.01, "{at_start}");
    tokio::time::advance(window).await;
    let after = share(1000);
    assert!((after - 0.5).abs() < 0.01, "{after}");
}
