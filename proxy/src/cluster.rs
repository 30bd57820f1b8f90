//! Making replicas one system through the state store.
//!
//! Background tasks only (nothing here is on the request path):
//! - **follow**: applies membership changes and other replicas' decisions as they
//!   are broadcast; on reconnect re-seeds the store from this replica's last-known
//!   state (so a Redis that restarted empty learns the membership back) and resyncs;
//! - **resync**: every `cluster.resync_interval`, reads everything back (heals
//!   missed messages);
//! - **heartbeat**: every `cluster.heartbeat_interval`, publishes this replica (id,
//!   addresses, version, config, per-backend figures over the last interval) with a
//!   TTL and refreshes the list of live replicas;
//! - **probe leases**: an open circuit is probed by exactly one replica — whoever
//!   holds the `probe:<backend>` lease; the others keep it open until the prober
//!   publishes the result;
//! - **token sync**: every [`crate::ratelimit::SYNC_PERIOD`], and at once for a
//!   request of a cold key, leases rate-limit tokens.
//!
//! With the store unreachable every replica falls back to local decisions (local
//! probing, local health checks, the rate-limit fallback) and keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use switchyard_shared::{
    BackendStats, CircuitState, ClusterBackendView, ClusterView, ConfigStatus, EventKind,
    HealthStatus, ReplicaView, quantile_from_buckets,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::app::App;
use crate::backend::Backend;
use crate::config::Config;
use crate::dataplane::Publish;
use crate::events::now_ms;
use crate::resilience::Transition;
use crate::state::{Decision, Record, StoreEvent};

pub use crate::app::Cluster;

/// Publishes this replica's decisions (the data plane's transitions, the health
/// checker's verdicts) to the other replicas.
struct Publisher(Weak<App>);

impl Publish for Publisher {
    fn transition(&self, backend: &Backend, t: &Transition) {
        if let Some(app) = self.0.upgrade() {
            publish_transition(&app, backend, t);
        }
    }

    fn decision(&self, key: &str, decision: Decision) {
        if let Some(app) = self.0.upgrade() {
            publish(&app, key, decision);
        }
    }
}

/// How long another replica's half-open probe is waited for before this one may
/// try to take over the lease.
fn probe_hold(config: &Config) -> Duration {
    config.timeouts.request.get() + Duration::from_secs(1)
}

fn cluster_settings(config: &Config) -> (Duration, Duration, Duration) {
    let c = config.cluster.clone().unwrap_or_default();
    (
        c.heartbeat_interval.get(),
        c.heartbeat_ttl.get(),
        c.resync_interval.get(),
    )
}

/// Starts the cluster tasks, and publishes this replica's decisions from now on.
pub fn spawn(app: &Arc<App>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    app.cluster.started.store(true, Relaxed);
    app.set_publisher(Box::new(Publisher(Arc::downgrade(app))));
    let mut tasks = vec![
        tokio::spawn(follow(app.clone(), stop.clone())),
        tokio::spawn(heartbeat(app.clone(), stop.clone())),
    ];
    if app.cluster.clustered {
        tasks.push(tokio::spawn(resync_loop(app.clone(), stop.clone())));
        tasks.push(tokio::spawn(probe_leases(app.clone(), stop.clone())));
        tasks.push(tokio::spawn(token_sync(app.clone(), stop)));
    }
    tasks
}

// === publishing and applying decisions ===

/// Shares a local transition with the other replicas (in the background).
pub fn publish_transition(app: &Arc<App>, backend: &Backend, t: &Transition) {
    if !app.cluster.clustered {
        return;
    }
    let decision = match t {
        Transition::CircuitOpened { reason, for_ } => {
            // A failed probe: let whichever replica has traffic probe next time.
            release_probe(app, &backend.key);
            Decision::Circuit {
                state: CircuitState::Open,
                remaining_ms: for_.as_millis() as u64,
                reason: reason.clone(),
            }
        }
        Transition::CircuitHalfOpen => Decision::Circuit {
            state: CircuitState::HalfOpen,
            remaining_ms: {
                let snap = app.snapshot();
                let cfg = snap
                    .find(&backend.key)
                    .map_or(&snap.config, |(s, _)| &s.config);
                probe_hold(cfg).as_millis() as u64
            },
            reason: "probing".into(),
        },
        Transition::CircuitClosed => {
            release_probe(app, &backend.key);
            Decision::Circuit {
                state: CircuitState::Closed,
                remaining_ms: 0,
                reason: "probe succeeded".into(),
            }
        }
        Transition::Ejected {
            reason,
            for_,
            count,
        } => Decision::Ejection {
            ejected: true,
            remaining_ms: for_.as_millis() as u64,
            count: *count,
            reason: reason.clone(),
        },
        Transition::Restored => Decision::Ejection {
            ejected: false,
            remaining_ms: 0,
            count: 0,
            reason: "returned".into(),
        },
    };
    publish(app, &backend.key, decision);
}

/// Stores and broadcasts a decision about `key` (in the background).
pub fn publish(app: &Arc<App>, key: &str, decision: Decision) {
    if !app.cluster.clustered {
        return;
    }
    let record = Record {
        key: key.to_string(),
        by: app.replica.id.clone(),
        version: 0,
        decision,
    };
    let app = app.clone();
    tokio::spawn(async move {
        if let Err(e) = app.store.publish(record).await {
            debug!(error = %e, "decision not shared (store unreachable); kept locally");
        }
    });
}

/// Follows a decision another replica made.
fn apply(app: &App, r: &Record) {
    if r.by == app.replica.id {
        return;
    }
    let snap = app.snapshot();
    let Some((_, m)) = snap.find(&r.key) else {
        return;
    };
    let b = &m.backend;
    let now_ns = b.nanos(Instant::now());
    let by = &r.by;
    match &r.decision {
        Decision::Circuit {
            state,
            remaining_ms,
            reason,
        } => {
            let before = b.circuit.state(now_ns);
            match state {
                CircuitState::Open => b
                    .circuit
                    .force(CircuitState::Open, now_ns + remaining_ms * 1_000_000),
                CircuitState::Closed => b.circuit.force(CircuitState::Closed, 0),
                // Another replica is probing: keep refusing here until it reports.
                CircuitState::HalfOpen => b
                    .circuit
                    .force(CircuitState::Open, now_ns + remaining_ms * 1_000_000),
            }
            let after = b.circuit.state(now_ns);
            if before != after || *state == CircuitState::Open {
                let kind = match state {
                    CircuitState::Open => EventKind::CircuitOpened,
                    CircuitState::HalfOpen => EventKind::CircuitHalfOpen,
                    CircuitState::Closed => EventKind::CircuitClosed,
                };
                if before != after {
                    app.events.emit(
                        kind,
                        Some(&r.key),
                        format!(
                            "circuit of {} {} (decided by {by}): {reason}",
                            r.key,
                            state.as_str()
                        ),
                    );
                }
            }
        }
        Decision::Ejection {
            ejected,
            remaining_ms,
            count,
            reason,
        } => {
            if *ejected {
                let was = b.outlier.is_ejected(now_ns);
                b.outlier
                    .force(now_ns + remaining_ms * 1_000_000, *count, reason.clone());
                if !was && b.outlier.is_ejected(now_ns) {
                    app.events.emit(
                        EventKind::Ejected,
                        Some(&r.key),
                        format!("backend {} ejected (decided by {by}): {reason}", r.key),
                    );
                }
            } else if b.outlier.is_ejected(now_ns) {
                b.outlier.force(now_ns.max(1), *count, String::new());
                b.outlier.expire(now_ns);
                app.events.emit(
                    EventKind::Restored,
                    Some(&r.key),
                    format!("backend {} returned (decided by {by})", r.key),
                );
            }
        }
        Decision::Health { status, reason } => {
            let before = b.health.status();
            if before != *status {
                b.health.set(*status, reason.clone());
                b.health_changed(before, *status, tokio::time::Instant::now());
                let what = match status {
                    HealthStatus::Unhealthy => "unhealthy",
                    HealthStatus::Healthy => "healthy",
                    HealthStatus::Unchecked => "unchecked",
                };
                app.events.emit(
                    EventKind::HealthChanged,
                    Some(&r.key),
                    format!(
                        "backend {} {what} (checked by {by}){}",
                        r.key,
                        reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ),
                );
            }
        }
    }
}

/// This replica's current non-default decisions, to re-seed an empty store.
fn local_decisions(app: &App) -> Vec<(String, Decision)> {
    let snap = app.snapshot();
    let now = Instant::now();
    let mut out = Vec::new();
    for (_, m) in snap.all_members() {
        let b = &m.backend;
        let ns = b.nanos(now);
        if let Some(left) = b.circuit.remaining(ns)
            && !left.is_zero()
        {
            out.push((
                b.key.to_string(),
                Decision::Circuit {
                    state: CircuitState::Open,
                    remaining_ms: left.as_millis() as u64,
                    reason: "re-seeded after a store restart".into(),
                },
            ));
        }
        if let Some((left, reason, count)) = b.outlier.ejection(ns) {
            out.push((
                b.key.to_string(),
                Decision::Ejection {
                    ejected: true,
                    remaining_ms: left.as_millis() as u64,
                    count,
                    reason,
                },
            ));
        }
        if b.health.status() == HealthStatus::Unhealthy {
            out.push((
                b.key.to_string(),
                Decision::Health {
                    status: HealthStatus::Unhealthy,
                    reason: b.health.reason(),
                },
            ));
        }
    }
    out
}

// === tasks ===

async fn resync(app: &Arc<App>) {
    if let Ok(overlay) = app.store.membership().await {
        app.apply_overlay(overlay);
    }
    if let Ok(records) = app.store.records().await {
        for r in &records {
            apply(app, r);
        }
    }
}

async fn follow(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut events = app.store.subscribe();
    if app.cluster.clustered && app.store.is_connected() {
        on_connected(&app).await;
    }
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = stop.changed() => return,
        };
        match ev {
            Ok(StoreEvent::Membership(v)) => {
                if v > app.overlay().version
                    && let Ok(overlay) = app.store.membership().await
                {
                    app.apply_overlay(overlay);
                }
            }
            Ok(StoreEvent::Record(r)) => apply(&app, &r),
            Ok(StoreEvent::Reconnected) => on_connected(&app).await,
            Ok(StoreEvent::Disconnected(e)) => {
                app.cluster.link.store_ok.store(false, Relaxed);
                app.events.emit(
                    EventKind::StoreDisconnected,
                    None,
                    format!("state store unreachable ({e}): serving on last-known state"),
                );
            }
            Err(RecvError::Lagged(_)) => resync(&app).await,
            Err(RecvError::Closed) => return,
        }
    }
}

/// The store is (again) reachable: re-seed it from what this replica knows, then
/// take whatever is newer from it.
async fn on_connected(app: &Arc<App>) {
    let overlay = app.overlay();
    if overlay.version > 0 {
        match app.store.reseed_membership(overlay).await {
            Ok(o) => {
                app.apply_overlay(o);
            }
            Err(e) => warn!(error = %e, "re-seeding the membership failed"),
        }
    }
    for (key, d) in local_decisions(app) {
        publish(app, &key, d);
    }
    resync(app).await;
    app.cluster
        .link
        .store_ok
        .store(app.store.is_connected(), Relaxed);
    app.events.emit(
        EventKind::StoreReconnected,
        None,
        format!("state store {} connected; state resynced", app.store.kind()),
    );
}

async fn resync_loop(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    loop {
        let (_, _, every) = cluster_settings(&app.snapshot().config);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if app.store.is_connected() {
            resync(&app).await;
        }
    }
}

/// Per-backend figures over the last heartbeat interval.
#[derive(Default)]
struct StatsWindow {
    prev: HashMap<Arc<str>, (Instant, u64, u64, Vec<u64>)>,
}

impl StatsWindow {
    fn sample(&mut self, app: &App) -> Vec<BackendStats> {
        let snap = app.snapshot();
        let now = Instant::now();
        let mut out = Vec::new();
        let mut next = HashMap::new();
        for (svc, m) in snap.all_members() {
            let b = &m.backend;
            let requests = b.stats.requests.load(Relaxed);
            let errors = b.stats.errors.load(Relaxed);
            let buckets = b.stats.latency.counts();
            let (rps, eps, window_buckets) = match self.prev.get(&b.key) {
                Some((t, r0, e0, b0)) => {
                    let secs = now.saturating_duration_since(*t).as_secs_f64().max(1e-3);
                    (
                        requests.saturating_sub(*r0) as f64 / secs,
                        errors.saturating_sub(*e0) as f64 / secs,
                        switchyard_shared::bucket_delta(&buckets, b0),
                    )
                }
                None => (0.0, 0.0, vec![0; buckets.len()]),
            };
            out.push(BackendStats {
                url: b.key.to_string(),
                requests,
                errors,
                active_conns: b.active(),
                rps,
                eps,
                window_buckets,
                circuit: if svc.config.circuit_breaker.is_some() {
                    b.circuit.state(b.nanos(now))
                } else {
                    CircuitState::Closed
                },
                available: b.available(now, &svc.config),
            });
            next.insert(b.key.clone(), (now, requests, errors, buckets));
        }
        self.prev = next;
        out
    }
}

fn me(app: &App, backends: Vec<BackendStats>) -> ReplicaView {
    let status = app.config_status();
    let (proxy, admin) = app.cluster.addrs.lock().clone();
    ReplicaView {
        id: app.replica.id.clone(),
        address: proxy,
        admin_address: admin,
        version: app.replica.version.to_string(),
        started_at_ms: app.replica.started_ms,
        uptime_s: app.replica.started.elapsed().as_secs(),
        config_commit: status.commit,
        config_generation: status.generation,
        config_digest: app.config_digest(),
        last_heartbeat_ms: now_ms(),
        is_self: false,
        backends,
    }
}

async fn heartbeat(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut window = StatsWindow::default();
    let mut known: Vec<String> = Vec::new();
    loop {
        let backends = window.sample(&app);
        let view = me(&app, backends);
        *app.cluster.me.lock() = view.clone();
        let (every, ttl, _) = cluster_settings(&app.snapshot().config);
        if app.cluster.clustered {
            let _ = app.store.heartbeat(view, ttl).await;
            if let Ok(list) = app.store.replicas().await {
                let ids: Vec<String> = list.iter().map(|r| r.id.clone()).collect();
                for id in ids
                    .iter()
                    .filter(|id| !known.contains(id) && **id != app.replica.id)
                {
                    app.events.emit(
                        EventKind::ReplicaJoined,
                        None,
                        format!("replica {id} joined"),
                    );
                }
                for id in known
                    .iter()
                    .filter(|id| !ids.contains(id) && **id != app.replica.id)
                {
                    app.events
                        .emit(EventKind::ReplicaLeft, None, format!("replica {id} left"));
                }
                known = ids;
                app.cluster.link.live.store(list.len().max(1), Relaxed);
                *app.cluster.replicas.lock() = list;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Decides, per open circuit, whether this replica may probe it. The probe lease
/// is asked for only once a request here wanted to probe (so it goes to a replica
/// with traffic) and renewed while held; without the store, every replica probes.
async fn probe_leases(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let snap = app.snapshot();
        let connected = app.store.is_connected();
        for (svc, m) in snap.all_members() {
            let hold = probe_hold(&svc.config);
            let b = &m.backend;
            let ns = b.nanos(Instant::now());
            let Some(left) = b.circuit.remaining(ns) else {
                app.cluster.probing.lock().remove(&b.key);
                b.circuit.set_may_probe(true);
                continue;
            };
            if !connected {
                b.circuit.set_may_probe(true);
                continue;
            }
            let holding = app.cluster.probing.lock().contains_key(&b.key);
            let wanted = b.circuit.take_probe_demand();
            if !(holding || (left.is_zero() && wanted)) {
                b.circuit.set_may_probe(false);
                continue;
            }
            let name = format!("probe:{}", b.key);
            match app
                .store
                .try_lease(name, app.replica.id.clone(), left + hold)
                .await
            {
                Ok(won) => {
                    b.circuit.set_may_probe(won);
                    let mut probing = app.cluster.probing.lock();
                    if won {
                        probing.insert(b.key.clone(), Instant::now());
                    } else {
                        probing.remove(&b.key);
                    }
                }
                Err(_) => b.circuit.set_may_probe(true),
            }
        }
    }
}

fn release_probe(app: &Arc<App>, key: &Arc<str>) {
    if app.cluster.probing.lock().remove(key).is_some() {
        let app = app.clone();
        let name = format!("probe:{key}");
        tokio::spawn(async move {
            let _ = app.store.release_lease(name, app.replica.id.clone()).await;
        });
    }
}

/// Rate-limit leases for the limiters in force (see [`ratelimit::lease_loop`]).
async fn token_sync(app: Arc<App>, stop: watch::Receiver<bool>) {
    let link = app.cluster.link.clone();
    let store = app.store.clone();
    crate::ratelimit::lease_loop(&link, || app.snapshot().limiters(), store, stop).await
}

// === the cluster view ===

impl App {
    /// `GET /admin/config`: the status plus, when clustered, every replica's commit.
    pub fn config_status_with_replicas(&self) -> ConfigStatus {
        let mut status = self.config_status();
        let view = view(self);
        status.replicas = view
            .replicas
            .iter()
            .map(|r| switchyard_shared::ReplicaConfigView {
                id: r.id.clone(),
                commit: r.config_commit.clone(),
                generation: r.config_generation,
            })
            .collect();
        status.converged = view.converged;
        status
    }
}

/// `GET /admin/cluster`: live replicas and cluster-wide per-backend figures.
pub fn view(app: &App) -> ClusterView {
    let me = app.cluster.me.lock().clone();
    let mut replicas = if app.cluster.clustered {
        app.cluster.replicas.lock().clone()
    } else {
        Vec::new()
    };
    match replicas.iter_mut().find(|r| r.id == me.id) {
        Some(r) => r.is_self = true,
        None => replicas.push(ReplicaView {
            is_self: true,
            ..me.clone()
        }),
    }
    replicas.sort_by(|a, b| a.id.cmp(&b.id));
    let converged = replicas.windows(2).all(|w| {
        w[0].config_digest == w[1].config_digest && w[0].config_commit == w[1].config_commit
    });
    ClusterView {
        mode: if app.cluster.clustered {
            "clustered"
        } else {
            "standalone"
        }
        .into(),
        name: app.cluster.name.clone(),
        self_id: app.replica.id.clone(),
        store: app.store.status(),
        backends: merge(&replicas),
        replicas,
        converged,
    }
}

fn merge(replicas: &[ReplicaView]) -> Vec<ClusterBackendView> {
    let mut by_url: BTreeMap<String, (ClusterBackendView, f64, Vec<u64>)> = BTreeMap::new();
    for r in replicas {
        for b in &r.backends {
            let (v, eps, buckets) = by_url.entry(b.url.clone()).or_insert_with(|| {
                (
                    ClusterBackendView {
                        url: b.url.clone(),
                        ..Default::default()
                    },
                    0.0,
                    vec![0; b.window_buckets.len()],
                )
            });
            v.rps += b.rps;
            *eps += b.eps;
            v.active_conns += b.active_conns;
            v.available_on += u32::from(b.available);
            v.circuit_open_on += u32::from(b.circuit == CircuitState::Open);
            if buckets.len() == b.window_buckets.len() {
                for (t, x) in buckets.iter_mut().zip(&b.window_buckets) {
                    *t += x;
                }
            }
        }
    }
    by_url
        .into_values()
        .map(|(mut v, eps, buckets)| {
            v.error_rate = if v.rps > 0.0 {
                (eps / v.rps).min(1.0)
            } else {
                0.0
            };
            v.p50_ms = quantile_from_buckets(&buckets, 0.5).map(|s| s * 1e3);
            v.p99_ms = quantile_from_buckets(&buckets, 0.99).map(|s| s * 1e3);
            v
        })
        .collect()
}
