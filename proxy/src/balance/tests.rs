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
