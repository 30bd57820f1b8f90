use super::*;
use switchyard_shared::LATENCY_BUCKETS_S;

fn sample(at_ms: u64, requests: u64, errors: u64, fast: u64, slow: u64) -> Sample {
    let mut b = vec![0; LATENCY_BUCKETS_S.len() + 1];
    b[4] = fast; // (5 ms, 10 ms]
    b[8] = slow; // (100 ms, 250 ms]
    Sample {
        at_ms,
        requests,
        errors,
        latency_buckets: b,
    }
}

#[test]
fn counters_and_rates() {
    assert_eq!(counter_delta(10, 4), 6);
    assert_eq!(counter_delta(3, 4), 3, "reset counts from zero");
    assert_eq!(per_second(50, 2000), 25.0);
    assert_eq!(per_second(50, 0), 0.0);
}

#[test]
fn between_two_snapshots() {
    let a = sample(1_000, 100, 1, 100, 0);
    let b = sample(3_000, 300, 11, 298, 2);
    let w = between(&a, &b).unwrap();
    assert_eq!(w.requests, 200);
    assert_eq!(w.errors, 10);
    assert_eq!(w.rps, 100.0);
    assert_eq!(w.eps, 5.0);
    assert_eq!(w.error_rate, Some(0.05));
    let p50 = w.p50_s.unwrap();
    assert!((0.005..=0.010).contains(&p50), "{p50}");
    let p99 = w.p99_s.unwrap();
    assert!(
        (0.005..=0.010).contains(&p99),
        "{p99}: 2 of 200 slow is the top 1%"
    );
    assert!(between(&b, &a).is_none(), "time must move forward");
    assert!(between(&a, &a).is_none());
}

#[test]
fn idle_window_has_no_percentiles() {
    let a = sample(1_000, 100, 0, 100, 0);
    let b = sample(2_000, 100, 0, 100, 0);
    let w = between(&a, &b).unwrap();
    assert_eq!(w.rps, 0.0);
    assert_eq!(w.error_rate, None);
    assert_eq!(w.p50_s, None);
    assert_eq!(w.p99_s, None);
}

#[test]
fn reset_counts_everything_since() {
    let a = sample(1_000, 500, 50, 500, 0);
    let b = sample(2_000, 20, 2, 10, 10);
    let w = between(&a, &b).unwrap();
    assert_eq!(w.requests, 20);
    assert_eq!(w.errors, 2);
    assert!(w.p99_s.unwrap() > 0.1, "the slow half is counted");
}

#[test]
fn history_window_and_last_step() {
    let mut h = History::new(100);
    assert!(h.window(10_000).is_none());
    for i in 0..=30u64 {
        // 10 requests per second, one error every second from t=20
        let errors = i.saturating_sub(20);
        h.push(sample(i * 1000, i * 10, errors, i * 10, 0));
    }
    h.push(sample(30_000, 0, 0, 0, 0)); // repeated time: ignored
    assert_eq!(h.latest().unwrap().requests, 300);
    let w = h.window(10_000).unwrap();
    assert_eq!(w.seconds, 10.0);
    assert_eq!(w.rps, 10.0);
    assert_eq!(w.eps, 1.0);
    assert_eq!(w.error_rate, Some(0.1));
    let step = h.last_step().unwrap();
    assert_eq!(step.seconds, 1.0);
    assert_eq!(step.requests, 10);
    // a window longer than the history covers all of it
    assert_eq!(h.window(1_000_000).unwrap().seconds, 30.0);
}

#[test]
fn history_is_bounded() {
    let mut h = History::new(5);
    for i in 0..20u64 {
        h.push(sample(i * 1000, i, 0, i, 0));
    }
    assert_eq!(h.window(1_000_000).unwrap().seconds, 4.0);
}
