use super::*;
use switchyard_shared::{
    ClusterBackendView, ConfigErrorView, EjectionView, LATENCY_BUCKETS_S, RateLimitView,
    ReplicaView, Totals,
};

fn backend(url: &str, requests: u64, errors: u64) -> BackendView {
    let mut buckets = vec![0; LATENCY_BUCKETS_S.len() + 1];
    // every request between 5 and 10 ms
    buckets[4] = requests;
    BackendView {
        url: url.into(),
        service: "default".into(),
        weight: 1,
        source: BackendSource::Config,
        healthy: true,
        health: HealthStatus::Unchecked,
        health_reason: None,
        circuit: CircuitState::Closed,
        ejected: false,
        ejection: None,
        draining: false,
        available: true,
        active_conns: 0,
        requests,
        errors,
        latency_ns: 7_000_000,
        status_classes: [0, requests - errors, 0, 0, errors],
        latency_buckets: buckets,
    }
}

fn snapshot(at_ms: u64, backends: Vec<BackendView>) -> DashboardSnapshot {
    let requests = backends.iter().map(|b| b.requests).sum();
    let errors = backends.iter().map(|b| b.errors).sum();
    let mut s = DashboardSnapshot {
        at_ms,
        replica_id: "r1".into(),
        version: "0.1.0".into(),
        strategy: "round-robin".into(),
        backends,
        totals: Totals {
            requests,
            errors,
            ..Default::default()
        },
        ..Default::default()
    };
    s.cluster.mode = "standalone".into();
    s.cluster.converged = true;
    s.cluster.store.kind = "memory".into();
    s.cluster.store.connected = true;
    s.cluster.replicas = vec![ReplicaView {
        id: "r1".into(),
        is_self: true,
        version: "0.1.0".into(),
        last_heartbeat_ms: at_ms - 2_000,
        uptime_s: 75,
        config_generation: 1,
        ..Default::default()
    }];
    s.config.source.kind = "file".into();
    s.config.source.path = "config/config.yaml".into();
    s.config.generation = 1;
    s.config.applied_at_ms = 1_795_570_255_000;
    s.config.converged = true;
    s
}

fn event(seq: u64, at_ms: u64, kind: EventKind) -> Event {
    Event {
        seq,
        at_ms,
        kind,
        backend: Some("http://a:80".into()),
        message: format!("event {seq}"),
        replica: "r1".into(),
    }
}

const T0: u64 = 1_795_570_255_000;

#[test]
fn empty_until_the_first_snapshot() {
    let d = Dashboard::default();
    assert!(!d.has_data());
    assert!(d.backends().is_empty());
    assert!(d.gone().is_empty());
    assert!(d.header().is_none());
    assert!(d.cluster().is_none());
    assert!(d.config().is_none());
    assert!(d.rate_limit().is_none());
}

#[test]
fn rows_show_window_rates_and_percentiles() {
    let mut d = Dashboard::default();
    d.apply_snapshot(snapshot(T0, vec![backend("http://a:80", 0, 0)]));
    let first = &d.backends()[0];
    assert_eq!(first.rps, format::NONE, "one snapshot is not a rate");
    assert_eq!(first.p99, format::NONE);
    // 20 requests a second, one error in ten
    for i in 1..=10 {
        d.apply_snapshot(snapshot(
            T0 + i * 1000,
            vec![backend("http://a:80", i * 20, i * 2)],
        ));
    }
    let row = &d.backends()[0];
    assert_eq!(row.url, "http://a:80");
    assert_eq!(row.source, "config");
    assert_eq!(row.weight, "1");
    assert_eq!(row.rps, "20/s");
    assert_eq!(row.error_rate, "10%");
    assert!(row.p50.ends_with(" ms"), "{}", row.p50);
    assert_eq!(row.p50, "7.5 ms");
    assert_eq!(row.requests, "200");
    assert_eq!(row.status.text, "serving");
    assert_eq!(row.circuit.text, "closed");
    assert_eq!(row.health.text, "unchecked");
    assert_eq!(row.ejection.text, "not ejected");
    assert_eq!(row.charts.len(), 3);
    assert_eq!(row.charts[0].title, "requests/s");
    assert_eq!(row.charts[0].lines[0].label, "now 20/s");
    assert!(!row.charts[0].lines[0].path.is_empty());
    assert_eq!(row.charts[1].lines.len(), 2, "p50 and p99");
    let h = d.header().unwrap();
    assert_eq!(h.rps, "20/s");
    assert_eq!(h.error_rate, "10%");
}

#[test]
fn broken_backends_say_why_in_words() {
    let mut open = backend("http://a:80", 10, 10);
    open.circuit = CircuitState::Open;
    open.available = false;
    let mut ejected = backend("http://b:80", 10, 0);
    ejected.ejected = true;
    ejected.available = false;
    ejected.ejection = Some(EjectionView {
        reason: "5 consecutive 5xx".into(),
        remaining_ms: 12_300,
        count: 2,
    });
    let mut draining = backend("http://c:80", 10, 0);
    draining.draining = true;
    draining.available = false;
    draining.weight = 0;
    draining.source = BackendSource::Admin;
    let mut sick = backend("http://d:80", 10, 0);
    sick.health = HealthStatus::Unhealthy;
    sick.healthy = false;
    sick.health_reason = Some("GET /health: 503".into());
    sick.available = false;
    let mut d = Dashboard::default();
    d.apply_snapshot(snapshot(T0, vec![open, ejected, draining, sick]));
    let rows = d.backends();
    assert_eq!(rows[0].circuit.text, "open");
    assert_eq!(rows[0].circuit.tone, Tone::Bad);
    assert_eq!(rows[0].status.text, "not serving: circuit open");
    assert_eq!(rows[1].ejection.text, "ejected, back in 13 s");
    assert_eq!(rows[1].ejection.detail, "5 consecutive 5xx (ejection #2)");
    assert_eq!(rows[1].status.text, "not serving: ejected");
    assert_eq!(rows[2].status.text, "draining");
    assert_eq!(rows[2].status.tone, Tone::Warn);
    assert!(rows[2].draining);
    assert_eq!(rows[2].weight, format::NONE);
    assert_eq!(rows[2].source, "admin");
    assert_eq!(rows[3].health.text, "unhealthy");
    assert_eq!(rows[3].health.detail, "GET /health: 503");
    assert_eq!(rows[3].status.text, "not serving: unhealthy");
    let half = circuit_badge(CircuitState::HalfOpen);
    assert_eq!((half.text.as_str(), half.tone), ("half-open", Tone::Warn));
}

#[test]
fn removed_backends_can_be_re_added_with_their_weight() {
    let mut a = backend("http://a:80", 0, 0);
    a.weight = 3;
    let b = backend("http://b:80", 0, 0);
    let mut d = Dashboard::default();
    d.apply_snapshot(snapshot(T0, vec![a.clone(), b.clone()]));
    assert!(d.gone().is_empty());
    // draining: weight 0 in the view, the known weight stays 3
    let mut draining = a.clone();
    draining.draining = true;
    draining.weight = 0;
    d.apply_snapshot(snapshot(T0 + 1000, vec![b.clone(), draining]));
    assert!(d.gone().is_empty(), "still listed while draining");
    assert_eq!(d.known_weight("http://a:80"), 3);
    d.apply_snapshot(snapshot(T0 + 2000, vec![b.clone()]));
    assert_eq!(
        d.gone(),
        vec![GoneRow {
            url: "http://a:80".into(),
            weight: 3,
            last_seen_ms: T0 + 1000,
        }]
    );
    assert_eq!(d.known_weight("http://nobody:80"), 1);
    d.apply_snapshot(snapshot(T0 + 3000, vec![b, a]));
    assert!(d.gone().is_empty());
}

#[test]
fn a_re_added_backend_starts_fresh_counters() {
    let mut d = Dashboard::default();
    d.apply_snapshot(snapshot(T0, vec![backend("http://a:80", 500, 0)]));
    d.apply_snapshot(snapshot(T0 + 1000, vec![backend("http://a:80", 600, 0)]));
    d.apply_snapshot(snapshot(T0 + 2000, vec![]));
    d.apply_snapshot(snapshot(T0 + 3000, vec![backend("http://a:80", 5, 0)]));
    assert_eq!(d.backends()[0].rps, format::NONE, "history restarted");
    d.apply_snapshot(snapshot(T0 + 4000, vec![backend("http://a:80", 15, 0)]));
    assert_eq!(d.backends()[0].rps, "10/s");
}

#[test]
fn events_are_deduplicated_and_newest_first() {
    let mut d = Dashboard::default();
    let mut s = snapshot(T0, vec![]);
    s.events = vec![
        event(1, T0 - 3000, EventKind::BackendAdded),
        event(2, T0 - 2000, EventKind::CircuitOpened),
    ];
    d.apply_snapshot(s.clone());
    d.apply_event(event(3, T0 + 10, EventKind::CircuitClosed));
    let v = d.version;
    d.apply_event(event(3, T0 + 10, EventKind::CircuitClosed));
    assert_eq!(d.version, v, "a repeat changes nothing");
    s.at_ms += 1000;
    s.events.push(event(3, T0 + 10, EventKind::CircuitClosed));
    d.apply_snapshot(s);
    let rows = d.events();
    assert_eq!(
        rows.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(),
        vec!["event 3", "event 2", "event 1"]
    );
    assert_eq!(rows[1].kind, "circuit opened");
    assert_eq!(rows[1].tone, Tone::Bad);
    assert_eq!(rows[0].time, "01:30:55");
    assert_eq!(rows[0].backend, "http://a:80");
    // out of order arrival is put in place
    d.apply_event(event(0, T0 - 9000, EventKind::ConfigApplied));
    assert_eq!(d.events().last().unwrap().message, "event 0");
}

#[test]
fn health_events_take_their_tone_from_the_direction() {
    let mut d = Dashboard::default();
    let mut up = event(1, T0, EventKind::HealthChanged);
    up.message = "backend http://a:80 healthy: GET /health answered 200".into();
    let mut down = event(2, T0 + 1, EventKind::HealthChanged);
    down.message = "backend http://a:80 unhealthy: GET /health answered 503".into();
    d.apply_event(up);
    d.apply_event(down);
    let rows = d.events();
    assert_eq!(rows[0].tone, Tone::Bad);
    assert_eq!(rows[1].tone, Tone::Good);
}

#[test]
fn the_event_log_is_bounded() {
    let mut log = EventLog::default();
    for i in 0..(EVENTS as u64 + 50) {
        assert!(log.add(event(i, T0 + i, EventKind::HealthChanged)));
    }
    assert_eq!(log.len(), EVENTS);
    assert_eq!(log.newest_first().next().unwrap().seq, EVENTS as u64 + 49);
    assert_eq!(log.newest_first().last().unwrap().seq, 50);
}

#[test]
fn cluster_standalone_and_diverged() {
    let mut d = Dashboard::default();
    d.apply_snapshot(snapshot(T0, vec![]));
    let c = d.cluster().unwrap();
    assert_eq!(c.mode, "single replica");
    assert_eq!(c.converged.text, "converged");
    assert_eq!(c.store.text, "memory connected");
    assert_eq!(c.replicas.len(), 1);
    assert_eq!(c.replicas[0].heartbeat, "2 s ago");
    assert_eq!(c.replicas[0].uptime, "1 m 15 s");
    assert!(!c.replicas[0].differs);

    let mut s = snapshot(T0 + 1000, vec![]);
    s.cluster.mode = "clustered".into();
    s.cluster.name = "edge".into();
    s.cluster.converged = false;
    s.cluster.store.kind = "redis".into();
    s.cluster.store.connected = false;
    s.cluster.store.last_error = Some("connection refused".into());
    s.cluster.replicas[0].config_commit = Some("aaaaaaaaaaaa".into());
    s.cluster.replicas.push(ReplicaView {
        id: "r2".into(),
        config_commit: Some("bbbbbbbbbbbb".into()),
        last_heartbeat_ms: T0 - 5000,
        ..Default::default()
    });
    d.apply_snapshot(s);
    let c = d.cluster().unwrap();
    assert_eq!(c.mode, "cluster \u{201c}edge\u{201d}: 2 replicas");
    assert_eq!(c.converged.text, "not converged");
    assert_eq!(c.converged.tone, Tone::Warn);
    assert_eq!(c.store.text, "redis unreachable");
    assert_eq!(c.store.detail, "connection refused");
    assert_eq!(c.replicas[1].commit, "bbbbbbbb");
    assert_eq!(c.replicas[1].heartbeat, "6 s ago");
    assert!(c.replicas[1].differs);

    // Redis behind Sentinel: the topology, the primary and the failovers shown.
    let mut s = snapshot(T0 + 2000, vec![]);
    s.cluster.store.kind = "redis".into();
    s.cluster.store.connected = true;
    s.cluster.store.topology = "sentinel".into();
    s.cluster.store.primary = Some("10.0.0.7:6379".into());
    s.cluster.store.failovers = 2;
    d.apply_snapshot(s);
    let c = d.cluster().unwrap();
    assert_eq!(c.store.text, "redis sentinel connected");
    assert_eq!(c.store.detail, "primary 10.0.0.7:6379 · 2 failovers");
    assert_eq!(c.store.tone, Tone::Good);
}

#[test]
fn cluster_wide_figures_per_backend() {
    let mut d = Dashboard::default();
    let mut s = snapshot(
        T0,
        vec![backend("http://a:80", 0, 0), backend("http://b:80", 0, 0)],
    );
    d.apply_snapshot(s.clone());
    assert!(
        d.backends()[0].cluster.is_none(),
        "standalone: nothing to add"
    );
    s.at_ms += 1000;
    s.cluster.mode = "clustered".into();
    s.cluster.replicas.push(ReplicaView {
        id: "r2".into(),
        ..Default::default()
    });
    s.cluster.backends = vec![
        ClusterBackendView {
            url: "http://a:80".into(),
            rps: 42.0,
            error_rate: 0.015,
            active_conns: 3,
            p50_ms: Some(3.0),
            p99_ms: Some(12.0),
            available_on: 2,
            circuit_open_on: 0,
        },
        ClusterBackendView {
            url: "http://b:80".into(),
            available_on: 1,
            circuit_open_on: 1,
            ..Default::default()
        },
    ];
    d.apply_snapshot(s);
    let rows = d.backends();
    let a = rows[0].cluster.clone().unwrap();
    assert_eq!(
        a.text,
        "cluster: 42/s · 1.5% errors · p50 3.0 ms · p99 12 ms · serving on 2 of 2 replicas"
    );
    assert_eq!(a.tone, Tone::Good);
    let b = rows[1].cluster.clone().unwrap();
    assert!(
        b.text
            .ends_with("serving on 1 of 2 replicas · circuit open on 1"),
        "{}",
        b.text
    );
    assert_eq!(b.tone, Tone::Warn);
}

#[test]
fn config_status_with_error_and_drift() {
    let mut d = Dashboard::default();
    let mut s = snapshot(T0 + 65_000, vec![]);
    d.apply_snapshot(s.clone());
    let c = d.config().unwrap();
    assert_eq!(c.source, "file config/config.yaml");
    assert_eq!(c.commit, format::NONE);
    assert_eq!(c.applied, "2026-11-25 01:30:55 UTC (1 m 05 s ago)");
    assert_eq!(c.drift.text, "no drift");
    assert!(c.last_error.is_none());

    s.at_ms += 1000;
    s.config.source.kind = "git".into();
    s.config.source.repo = Some("https://git.example/cfg.git".into());
    s.config.source.r#ref = Some("main".into());
    s.config.source.path = "prod.yaml".into();
    s.config.commit = Some("0123456789abcdef".into());
    s.config.drift.only_runtime = vec!["http://new:80".into()];
    s.config.drift.only_config = vec!["http://old:80".into()];
    s.config.last_error = Some(ConfigErrorView {
        commit: Some("fedcba9876543210".into()),
        file: "prod.yaml".into(),
        line: Some(12),
        reason: "backends[0].weight: must be 1 to 1000".into(),
        at_ms: T0 + 60_000,
    });
    d.apply_snapshot(s);
    let c = d.config().unwrap();
    assert_eq!(c.source, "git https://git.example/cfg.git@main: prod.yaml");
    assert_eq!(c.commit, "01234567");
    assert_eq!(c.drift.text, "drift: 2");
    assert_eq!(c.drift.tone, Tone::Warn);
    assert_eq!(
        c.drift_lines,
        vec![
            "http://new:80: added at runtime",
            "http://old:80: in the config, removed at runtime"
        ]
    );
    assert_eq!(
        c.last_error.unwrap(),
        "prod.yaml:12: backends[0].weight: must be 1 to 1000 (commit fedcba98), 6 s ago"
    );
}

#[test]
fn rate_limit_admitted_and_rejected_rates() {
    let mut d = Dashboard::default();
    let mut s = snapshot(T0, vec![]);
    d.apply_snapshot(s.clone());
    assert_eq!(d.rate_limit().unwrap().state.text, "off");
    s.rate_limit = RateLimitView {
        enabled: true,
        requests_per_second: 100.0,
        burst: 200,
        key: "client-ip".into(),
        admitted: 1000,
        rejected: 10,
        mode: "local".into(),
    };
    s.at_ms = T0 + 1000;
    d.apply_snapshot(s.clone());
    s.rate_limit.admitted = 1100;
    s.rate_limit.rejected = 60;
    s.at_ms = T0 + 3000;
    d.apply_snapshot(s);
    let rl = d.rate_limit().unwrap();
    assert_eq!(rl.state.text, "on (local)");
    assert_eq!(rl.limit, "100/s, burst 200, per client-ip");
    assert_eq!(rl.admitted, "1\u{2009}100");
    assert_eq!(rl.admitted_rate, "50/s");
    assert_eq!(rl.rejected_rate, "25/s");
    assert_eq!(rl.chart.lines.len(), 2);
}

#[test]
fn repeated_snapshot_times_do_not_add_points() {
    let mut d = Dashboard::default();
    d.apply_snapshot(snapshot(T0, vec![backend("http://a:80", 0, 0)]));
    d.apply_snapshot(snapshot(T0 + 1000, vec![backend("http://a:80", 10, 0)]));
    let before = d.backends()[0].charts[0].lines[0].path.clone();
    d.apply_snapshot(snapshot(T0 + 1000, vec![backend("http://a:80", 10, 0)]));
    assert_eq!(d.backends()[0].charts[0].lines[0].path, before);
}

#[test]
fn backends_are_grouped_by_service_and_one_url_in_two_services_stays_two() {
    let mut api = backend("http://a:80", 10, 0);
    api.service = "api".into();
    let mut s = snapshot(10_000, vec![backend("http://a:80", 10, 0), api]);
    s.services = ["default", "api", "empty"]
        .iter()
        .map(|n| switchyard_shared::ServiceView {
            name: n.to_string(),
            ..Default::default()
        })
        .collect();
    s.routes = vec![switchyard_shared::RouteView {
        name: "api".into(),
        matches: "path_prefix=/api".into(),
        action: "service".into(),
        services: vec![("api".into(), 1)],
        ..Default::default()
    }];
    let mut d = Dashboard::default();
    d.apply_snapshot(s);
    let rows = d.backends();
    let ids: Vec<_> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["http://a:80", "api|http://a:80"]);
    assert_eq!(
        d.service_groups(),
        vec![
            ("default".to_string(), vec!["http://a:80".to_string()]),
            ("api".to_string(), vec!["api|http://a:80".to_string()]),
            ("empty".to_string(), vec![]),
        ]
    );
    assert_eq!(d.routes()[0].name, "api");
    // Draining the `api` copy names its service; the `default` one does not.
    let drain = crate::actions::Action::Drain {
        url: "api|http://a:80".into(),
    };
    assert_eq!(drain.body(), r#"{"url":"http://a:80","service":"api"}"#);
    let drain = crate::actions::Action::Drain {
        url: "http://a:80".into(),
    };
    assert_eq!(drain.body(), r#"{"url":"http://a:80"}"#);
}
