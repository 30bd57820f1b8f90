//! State machines on paused time: the breaker, ejection backoff, the ejection cap,
//! the panic threshold, and slow start after each way back.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::StatusCode;
use switchyard_shared::{CircuitState, HealthStatus};
use tokio::time::{Instant, advance};

use super::*;
use crate::backend::Outcome;
use crate::config;
use crate::resilience::{Admission, Transition};
use crate::state::Overlay;

/// The service `default` of `yaml`'s snapshot.
fn snapshot(yaml: &str) -> Service {
    let c = config::parse(yaml, "t.yaml").unwrap();
    let mut snap = Snapshot::build(
        1,
        Arc::new(c),
        &Overlay::default(),
        Limiters::default(),
        &|_| None,
    );
    snap.services.remove(0)
}

fn backends(n: usize) -> String {
    let mut s = String::from("backends:\n");
    for i in 0..n {
        s.push_str(&format!("  - url: http://b{i}:80\n"));
    }
    s
}

const ERR: Outcome = Outcome::Response {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    ttfb: Duration::from_millis(1),
};
const OK: Outcome = Outcome::Response {
    status: StatusCode::OK,
    ttfb: Duration::from_millis(1),
};

#[tokio::test(start_paused = true)]
async fn breaker_opens_probes_and_closes() {
    let snap = snapshot(&format!(
        "circuit_breaker:\n  failure_threshold: 3\n  open_duration: 10s\n  max_open_duration: 60s\n{}",
        backends(2)
    ));
    let cfg = snap.config.circuit_breaker.as_ref();
    let b = &snap.members[0].backend;
    let ns = || b.nanos(Instant::now());
    assert_eq!(b.record(ERR, Instant::now(), false, &snap).circuit, None);
    assert_eq!(b.record(ERR, Instant::now(), false, &snap).circuit, None);
    // a success resets the consecutive count
    b.record(OK, Instant::now(), false, &snap);
    b.record(ERR, Instant::now(), false, &snap);
    b.record(ERR, Instant::now(), false, &snap);
    let t = b.record(ERR, Instant::now(), false, &snap).circuit;
    assert!(
        matches!(t, Some(Transition::CircuitOpened { for_, .. }) if for_ == Duration::from_secs(10)),
        "{t:?}"
    );
    assert_eq!(b.circuit.state(ns()), CircuitState::Open);
    assert!(!b.available(Instant::now(), &snap.config));
    assert!(
        !b.routable_in_panic(Instant::now(), &snap.config),
        "panic mode never overrides an open circuit"
    );
    assert_eq!(b.circuit.acquire(ns(), cfg).0, Admission::Refuse);

    advance(Duration::from_secs(10)).await;
    assert_eq!(b.circuit.state(ns()), CircuitState::HalfOpen);
    assert!(b.available(Instant::now(), &snap.config));
    let (a, t) = b.circuit.acquire(ns(), cfg);
    assert_eq!(
        (a, t),
        (Admission::Probe, Some(Transition::CircuitHalfOpen))
    );
    // only one probe at a time (half_open_requests: 1)
    assert!(!b.available(Instant::now(), &snap.config));
    assert_eq!(b.circuit.acquire(ns(), cfg).0, Admission::Refuse);
    // a failed probe re-opens with a doubled time
    let t = b.record(ERR, Instant::now(), true, &snap).circuit;
    assert!(
        matches!(t, Some(Transition::CircuitOpened { for_, .. }) if for_ == Duration::from_secs(20)),
        "{t:?}"
    );
    advance(Duration::from_secs(19)).await;
    assert_eq!(b.circuit.acquire(ns(), cfg).0, Admission::Refuse);
    advance(Duration::from_secs(1)).await;
    assert_eq!(b.circuit.acquire(ns(), cfg).0, Admission::Probe);
    // a late answer to a request sent before it opened does not count
    assert_eq!(b.record(OK, Instant::now(), false, &snap).circuit, None);
    assert_eq!(b.circuit.state(ns()), CircuitState::HalfOpen);
    assert_eq!(
        b.record(OK, Instant::now(), true, &snap).circuit,
        Some(Transition::CircuitClosed)
    );
    assert_eq!(b.circuit.state(ns()), CircuitState::Closed);
    // closed again: backoff level reset, opens for the base time next time
    for _ in 0..2 {
        b.record(ERR, Instant::now(), false, &snap);
    }
    let t = b.record(ERR, Instant::now(), false, &snap).circuit;
    assert!(
        matches!(t, Some(Transition::CircuitOpened { for_, .. }) if for_ == Duration::from_secs(10)),
        "{t:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_backoff_is_capped() {
    let snap = snapshot(&format!(
        "circuit_breaker:\n  failure_threshold: 1\n  open_duration: 10s\n  max_open_duration: 35s\n{}",
        backends(1)
    ));
    let cfg = snap.config.circuit_breaker.as_ref();
    let b = &snap.members[0].backend;
    b.record(ERR, Instant::now(), false, &snap);
    let mut seen = Vec::new();
    for _ in 0..4 {
        advance(Duration::from_secs(60)).await;
        assert_eq!(
            b.circuit.acquire(b.nanos(Instant::now()), cfg).0,
            Admission::Probe
        );
        if let Some(Transition::CircuitOpened { for_, .. }) =
            b.record(ERR, Instant::now(), true, &snap).circuit
        {
            seen.push(for_.as_secs());
        }
    }
    assert_eq!(seen, vec![20, 35, 35, 35]);
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_on_failure_rate_over_the_window() {
    let snap = snapshot(&format!(
        "circuit_breaker:\n  failure_threshold: 100\n  failure_rate: 0.5\n  window: 10s\n  min_requests: 10\n{}",
        backends(1)
    ));
    let b = &snap.members[0].backend;
    // alternate: never 100 in a row, but 50 %
    let mut opened = None;
    for i in 0..20 {
        let r = b.record(
            if i % 2 == 0 { OK } else { ERR },
            Instant::now(),
            false,
            &snap,
        );
        if r.circuit.is_some() {
            opened = Some(i);
            break;
        }
    }
    assert_eq!(opened, Some(9), "opens once min_requests are seen");
}

#[tokio::test(start_paused = true)]
async fn slow_responses_count_as_failures() {
    let snap = snapshot(&format!(
        "circuit_breaker:\n  failure_threshold: 2\n  slow_call_threshold: 100ms\n{}",
        backends(1)
    ));
    let b = &snap.members[0].backend;
    let slow = Outcome::Response {
        status: StatusCode::OK,
        ttfb: Duration::from_millis(150),
    };
    assert!(
        b.record(slow, Instant::now(), false, &snap)
            .circuit
            .is_none()
    );
    assert!(
        b.record(slow, Instant::now(), false, &snap)
            .circuit
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn ejection_backoff_grows_and_returns_by_itself() {
    let snap = snapshot(&format!(
        "outlier_detection:\n  consecutive_failures: 2\n  base_ejection_time: 10s\n  max_ejection_time: 25s\n  max_ejection_percent: 50\n{}",
        backends(2)
    ));
    let b = &snap.members[0].backend;
    let ns = || b.nanos(Instant::now());
    b.record(ERR, Instant::now(), false, &snap);
    let t = b.record(ERR, Instant::now(), false, &snap).outlier;
    assert!(
        matches!(t, Some(Transition::Ejected { for_, count: 1, .. }) if for_ == Duration::from_secs(10)),
        "{t:?}"
    );
    assert!(!b.available(Instant::now(), &snap.config));
    advance(Duration::from_secs(10)).await;
    assert!(b.available(Instant::now(), &snap.config));
    assert_eq!(b.outlier.expire(ns()), Some(Transition::Restored));
    assert_eq!(b.outlier.expire(ns()), None);
    // second ejection: 2 × base
    b.record(ERR, Instant::now(), false, &snap);
    let t = b.record(ERR, Instant::now(), false, &snap).outlier;
    assert!(
        matches!(t, Some(Transition::Ejected { for_, count: 2, .. }) if for_ == Duration::from_secs(20)),
        "{t:?}"
    );
    advance(Duration::from_secs(20)).await;
    b.outlier.expire(ns());
    // third: 3 × base = 30 s, capped at 25 s
    b.record(ERR, Instant::now(), false, &snap);
    let t = b.record(ERR, Instant::now(), false, &snap).outlier;
    assert!(
        matches!(t, Some(Transition::Ejected { for_, count: 3, .. }) if for_ == Duration::from_secs(25)),
        "{t:?}"
    );
    // after a quiet spell as long as max_ejection_time, the multiplier starts over
    advance(Duration::from_secs(25 + 25)).await;
    b.outlier.expire(ns());
    b.record(ERR, Instant::now(), false, &snap);
    let t = b.record(ERR, Instant::now(), false, &snap).outlier;
    assert!(
        matches!(t, Some(Transition::Ejected { count: 1, .. })),
        "{t:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_is_strict() {
    let snap = snapshot(&format!(
        "outlier_detection:\n  consecutive_failures: 1\n  max_ejection_percent: 50\n{}",
        backends(4)
    ));
    let ejected = |snap: &Service| {
        snap.members
            .iter()
            .filter(|m| {
                m.backend
                    .outlier
                    .is_ejected(m.backend.nanos(Instant::now()))
            })
            .count()
    };
    for m in &snap.members {
        m.backend.record(ERR, Instant::now(), false, &snap);
    }
    assert_eq!(ejected(&snap), 2, "50 % of 4");
    // a single backend is never ejected
    let one = snapshot(&format!(
        "outlier_detection:\n  consecutive_failures: 1\n  max_ejection_percent: 50\n{}",
        backends(1)
    ));
    for _ in 0..5 {
        assert!(
            one.members[0]
                .backend
                .record(ERR, Instant::now(), false, &one)
                .outlier
                .is_none()
        );
    }
    // with 3 backends and 50 %, only one
    let three = snapshot(&format!(
        "outlier_detection:\n  consecutive_failures: 1\n  max_ejection_percent: 50\n{}",
        backends(3)
    ));
    for m in &three.members {
        m.backend.record(ERR, Instant::now(), false, &three);
    }
    assert_eq!(ejected(&three), 1);
}

#[tokio::test(start_paused = true)]
async fn panic_threshold_spreads_over_all_rather_than_refusing() {
    let snap = snapshot(&format!(
        "panic_threshold: 50\noutlier_detection:\n  consecutive_failures: 1\n  max_ejection_percent: 100\n{}",
        backends(4)
    ));
    // eject 2 of 4: 50 % available is not below the threshold → only healthy ones
    for i in 0..2 {
        snap.members[i]
            .backend
            .record(ERR, Instant::now(), false, &snap);
    }
    for _ in 0..20 {
        let i = snap.pick(&[], Instant::now()).unwrap();
        assert!(i >= 2, "picked ejected {i}");
    }
    // eject a third: 25 % < 50 % → panic: everyone gets traffic again
    snap.members[2]
        .backend
        .record(ERR, Instant::now(), false, &snap);
    let mut seen = [0; 4];
    for _ in 0..40 {
        seen[snap.pick(&[], Instant::now()).unwrap()] += 1;
    }
    assert_eq!(seen, [10, 10, 10, 10]);
    // an open circuit is still respected in panic mode; all open → None (503)
    let cb = snapshot(&format!(
        "circuit_breaker:\n  failure_threshold: 1\n{}",
        backends(2)
    ));
    for m in &cb.members {
        m.backend.record(ERR, Instant::now(), false, &cb);
    }
    assert_eq!(cb.pick(&[], Instant::now()), None);
    // disabled threshold: ejected backends are simply skipped, none left → None
    let strict = snapshot(&format!(
        "panic_threshold: 0\noutlier_detection:\n  consecutive_failures: 1\n  max_ejection_percent: 100\n{}",
        backends(2)
    ));
    for m in &strict.members {
        m.backend.record(ERR, Instant::now(), false, &strict);
    }
    assert_eq!(strict.pick(&[], Instant::now()), None);
}

// === slow start ===

const WINDOW: Duration = Duration::from_secs(30);

/// Backend 1's share of `picks` picks at the current (paused) instant; with
/// `hold`, every pick stays in flight until the end (so load-aware strategies
/// spread by weight), with `keyed`, pick `k` carries the key `k`.
fn share_of_second(snap: &Service, picks: usize, hold: bool, keyed: bool) -> f64 {
    let now = Instant::now();
    let mut counts = [0usize; 2];
    for k in 0..picks {
        let key = keyed.then_some(k as u64);
        let i = snap.pick_keyed(&[], key, now).unwrap();
        counts[i] += 1;
        if hold {
            snap.members[i].backend.stats.active.fetch_add(1, Relaxed);
        }
    }
    if hold {
        for (m, c) in snap.members.iter().zip(counts) {
            m.backend.stats.active.fetch_sub(c as u64, Relaxed);
        }
    }
    counts[1] as f64 / picks as f64
}

/// Expected share of a backend at ramp `r` beside one at full weight.
fn ramped(r: f64) -> f64 {
    r / (1.0 + r)
}

/// Backend 1 of `snap` has just come back: 10 % of its weight at once, then
/// linearly to 100 % over the 30 s window (`hold`: see [`share_of_second`]).
async fn assert_ramps(snap: &Service, hold: bool) {
    let at_start = share_of_second(snap, 1100, hold, false);
    assert!((at_start - ramped(0.1)).abs() < 0.01, "{at_start}");
    advance(Duration::from_secs(15)).await;
    let half = share_of_second(snap, 1550, hold, false);
    assert!((half - ramped(0.55)).abs() < 0.01, "{half}");
    advance(Duration::from_secs(15)).await;
    let after = share_of_second(snap, 1000, hold, false);
    assert!((after - 0.5).abs() < 0.01, "{after}");
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_backend_back_from_ejection_round_robin() {
    let snap = snapshot(&format!(
        "slow_start: 30s\noutlier_detection:\n  consecutive_failures: 1\n  base_ejection_time: 10s\n  max_ejection_percent: 100\n{}",
        backends(2)
    ));
    let b = &snap.members[1].backend;
    assert_eq!(
        b.ramp(Instant::now(), WINDOW),
        1.0,
        "the first set starts at full weight"
    );
    b.record(ERR, Instant::now(), false, &snap);
    assert_eq!(share_of_second(&snap, 100, false, false), 0.0, "ejected");
    advance(Duration::from_secs(10)).await;
    assert_ramps(&snap, false).await;
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_backend_back_from_unhealthy_least_connections() {
    let snap = snapshot(&format!(
        "strategy: least-connections\nslow_start: 30s\n{}",
        backends(2)
    ));
    let b = &snap.members[1].backend;
    b.health.set(HealthStatus::Unhealthy, Some("down".into()));
    assert_eq!(share_of_second(&snap, 100, true, false), 0.0);
    b.health.set(HealthStatus::Healthy, None);
    b.health_changed(
        HealthStatus::Unhealthy,
        HealthStatus::Healthy,
        Instant::now(),
    );
    assert_ramps(&snap, true).await;
    // a first verdict (unchecked → healthy) is no return: no ramp
    let fresh = &snap.members[0].backend;
    fresh.health_changed(
        HealthStatus::Unchecked,
        HealthStatus::Healthy,
        Instant::now(),
    );
    assert_eq!(fresh.ramp(Instant::now(), WINDOW), 1.0);
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_backend_after_its_circuit_closes_consistent_hash() {
    let snap = snapshot(&format!(
        "strategy: consistent-hash\nslow_start: 30s\ncircuit_breaker:\n  failure_threshold: 1\n  open_duration: 10s\n{}",
        backends(2)
    ));
    const KEYS: usize = 10_000;
    // its share of the keys at full weight (the ring is not exactly 50/50)
    let full = share_of_second(&snap, KEYS, false, true);
    assert!((0.4..0.6).contains(&full), "{full}");
    let b = &snap.members[1].backend;
    let cfg = snap.config.circuit_breaker.as_ref();
    b.record(ERR, Instant::now(), false, &snap);
    assert_eq!(share_of_second(&snap, 100, false, true), 0.0, "open");
    advance(Duration::from_secs(10)).await;
    assert_eq!(
        b.circuit.acquire(b.nanos(Instant::now()), cfg).0,
        Admission::Probe
    );
    assert_eq!(
        b.record(OK, Instant::now(), true, &snap).circuit,
        Some(Transition::CircuitClosed)
    );
    // it keeps the share `ramp` of its keys
    let at_start = share_of_second(&snap, KEYS, false, true) / full;
    assert!((at_start - 0.1).abs() < 0.03, "{at_start}");
    advance(Duration::from_secs(15)).await;
    let half = share_of_second(&snap, KEYS, false, true) / full;
    assert!((half - 0.55).abs() < 0.03, "{half}");
    advance(Duration::from_secs(15)).await;
    assert_eq!(share_of_second(&snap, KEYS, false, true), full);
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_backend_that_joins_a_running_proxy() {
    let one =
        Arc::new(config::parse(&format!("slow_start: 30s\n{}", backends(1)), "t.yaml").unwrap());
    let two =
        Arc::new(config::parse(&format!("slow_start: 30s\n{}", backends(2)), "t.yaml").unwrap());
    let first = Snapshot::build(1, one, &Overlay::default(), Limiters::default(), &|_| None);
    let kept = first.default_service().members[0].backend.clone();
    let second = Snapshot::build_after(
        2,
        two,
        (&Overlay::default(), &Discovered::default()),
        Limiters::default(),
        &|k| (*k == *kept.key).then(|| kept.clone()),
        Some(&first),
    );
    let svc = second.default_service();
    let now = Instant::now();
    assert_eq!(svc.members[0].backend.ramp(now, WINDOW), 1.0);
    assert_eq!(svc.members[1].backend.ramp(now, WINDOW), 0.1);
    let at_start = share_of_second(svc, 1100, false, false);
    assert!((at_start - ramped(0.1)).abs() < 0.01, "{at_start}");
    advance(WINDOW).await;
    assert_eq!(svc.members[1].backend.ramp(Instant::now(), WINDOW), 1.0);
}
