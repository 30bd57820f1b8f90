//! The running proxy's shared state: the current snapshot, the state store, the
//! draining backends, metrics and events. Everything that changes the running set
//! (config apply, admin overlay) goes through [`App::rebuild`], one at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use switchyard_shared::{
    BackendView, CircuitState, ConfigErrorView, ConfigSourceView, ConfigStatus, DriftView,
    EjectionView, EventKind, MetricsEntry,
};
use tokio::time::Instant;

use crate::backend::{Backend, Member, Recorded};
use crate::cluster::Cluster;
use crate::config::{Config, Dur};
use crate::events::{EventLog, now_ms};
use crate::ratelimit::RateLimiter;
use crate::resilience::Transition;
use crate::snapshot::{self, Diff, Snapshot};
use crate::state::{Overlay, OverlayOp, StateStore};
use crate::telemetry::metrics::Metrics;

/// Who this replica is.
#[derive(Clone, Debug)]
pub struct Replica {
    pub id: String,
    pub version: &'static str,
    pub started_ms: u64,
    pub started: Instant,
}

pub struct App {
    snapshot: ArcSwap<Snapshot>,
    pub store: Arc<dyn StateStore>,
    pub metrics: Metrics,
    pub events: EventLog,
    pub replica: Replica,
    pub source: ConfigSourceView,
    /// Set when shutdown begins: `/readyz` turns 503 so load balancers move away.
    pub shutting_down: AtomicBool,
    pub cluster: Cluster,
    /// Reloads on demand (`POST /admin/reload`), when a config source is followed.
    pub reloader: std::sync::OnceLock<crate::gitops::ReloadHandle>,
    /// Set by `POST /admin/reload?allow_unrelated=true`: accept one revision whose
    /// history does not descend from the applied one.
    pub allow_unrelated_history: AtomicBool,
    /// OpenTelemetry export, when an endpoint is configured.
    telemetry: std::sync::OnceLock<Arc<crate::telemetry::otel::Telemetry>>,
    /// What the plain listener answers itself (ACME HTTP-01, HTTPS redirect), when
    /// TLS is configured.
    pub plain_intercept: std::sync::OnceLock<Arc<dyn crate::forward::PlainIntercept>>,
    inner: Mutex<Inner>,
}

struct Inner {
    config: Arc<Config>,
    overlay: Overlay,
    /// Removed from the running set, finishing their in-flight requests.
    draining: Vec<Arc<Backend>>,
    status: AppliedConfig,
}

#[derive(Default)]
struct AppliedConfig {
    /// Hash of the config in force, to compare replicas.
    digest: String,
    commit: Option<String>,
    generation: u64,
    applied_at_ms: u64,
    last_error: Option<ConfigErrorView>,
}

impl App {
    pub fn new(
        config: Config,
        store: Arc<dyn StateStore>,
        replica_id: String,
        source: ConfigSourceView,
    ) -> Arc<Self> {
        let config = Arc::new(config);
        let clustered = store.kind() != "memory";
        let app = Arc::new(Self {
            snapshot: ArcSwap::from_pointee(Snapshot::empty(config.clone())),
            store,
            metrics: Metrics::default(),
            events: EventLog::new(replica_id.clone()),
            replica: Replica {
                id: replica_id,
                version: env!("CARGO_PKG_VERSION"),
                started_ms: now_ms(),
                started: Instant::now(),
            },
            source,
            shutting_down: AtomicBool::new(false),
            cluster: Cluster::new(&config, clustered),
            reloader: std::sync::OnceLock::new(),
            allow_unrelated_history: AtomicBool::new(false),
            telemetry: std::sync::OnceLock::new(),
            plain_intercept: std::sync::OnceLock::new(),
            inner: Mutex::new(Inner {
                config: config.clone(),
                overlay: Overlay::default(),
                draining: Vec::new(),
                status: AppliedConfig::default(),
            }),
        });
        {
            let mut inner = app.inner.lock();
            inner.status.generation = 1;
            inner.status.applied_at_ms = now_ms();
            inner.status.digest = digest(&inner.config);
            app.rebuild(&mut inner);
        }
        app
    }

    /// The snapshot requests read (one atomic load and a reference count).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn telemetry(&self) -> Option<&Arc<crate::telemetry::otel::Telemetry>> {
        self.telemetry.get()
    }

    /// Attaches OpenTelemetry export (once) and registers its metric instruments.
    pub fn set_telemetry(self: &Arc<Self>, t: Arc<crate::telemetry::otel::Telemetry>) {
        if let Some(h) = t.register_metrics(self) {
            let _ = self.metrics.otel.set(h);
        }
        let _ = self.telemetry.set(t);
    }

    /// The running set and the draining backends.
    pub fn all_backends(&self) -> Vec<Arc<Backend>> {
        let mut v: Vec<_> = self
            .snapshot()
            .members
            .iter()
            .map(|m| m.backend.clone())
            .collect();
        v.extend(self.draining());
        v
    }

    pub fn config_digest(&self) -> String {
        self.inner.lock().status.digest.clone()
    }

    pub fn config(&self) -> Arc<Config> {
        self.inner.lock().config.clone()
    }

    /// Swaps in a new, already validated config; live backends are kept.
    pub fn apply_config(&self, config: Config, commit: Option<String>) -> Diff {
        let mut inner = self.inner.lock();
        inner.status.digest = digest(&config);
        inner.config = Arc::new(config);
        inner.status.commit = commit.clone();
        inner.status.generation += 1;
        inner.status.applied_at_ms = now_ms();
        inner.status.last_error = None;
        let diff = self.rebuild(&mut inner);
        let what = match &commit {
            Some(c) => format!("config {} applied", short(c)),
            None => format!("config generation {} applied", inner.status.generation),
        };
        self.events.emit(
            EventKind::ConfigApplied,
            None,
            format!(
                "{what}: {} added, {} removed, {} changed",
                diff.added.len(),
                diff.removed.len(),
                diff.changed.len()
            ),
        );
        diff
    }

    /// Records what the first load found: the commit it runs, or why the source
    /// could not be used (the process then runs a fallback config).
    pub fn mark_initial(&self, commit: Option<String>, error: Option<ConfigErrorView>) {
        let mut inner = self.inner.lock();
        inner.status.commit = commit;
        inner.status.last_error = error;
    }

    /// Records a refused config; the running one stays.
    pub fn refuse_config(&self, error: ConfigErrorView) {
        self.events.emit(
            EventKind::ConfigRefused,
            None,
            format!(
                "config refused: {}{}: {}",
                error.file,
                error.line.map(|l| format!(":{l}")).unwrap_or_default(),
                error.reason
            ),
        );
        self.inner.lock().status.last_error = Some(error);
    }

    /// Applies an overlay read from the store, unless it is older than the one in
    /// force (changes are ordered by the store's version).
    pub fn apply_overlay(&self, overlay: Overlay) -> Option<Diff> {
        let mut inner = self.inner.lock();
        if overlay.version < inner.overlay.version || overlay == inner.overlay {
            return None;
        }
        inner.overlay = overlay;
        Some(self.rebuild(&mut inner))
    }

    pub fn overlay(&self) -> Overlay {
        self.inner.lock().overlay.clone()
    }

    fn rebuild(&self, inner: &mut Inner) -> Diff {
        let old = self.snapshot.load_full();
        let desired = snapshot::desired(&inner.config, &inner.overlay);
        let diff = snapshot::diff(&old.members, &desired);
        let limiter = match (&inner.config.rate_limit, &old.limiter) {
            (Some(cfg), Some(l)) if l.config == *cfg => Some(l.clone()),
            (Some(cfg), _) => Some(Arc::new(RateLimiter::new(
                cfg,
                &inner.config.server.trusted_proxies,
                self.cluster.clustered.then(|| self.cluster.link.clone()),
            ))),
            (None, _) => None,
        };
        let draining = &inner.draining;
        let reuse = |key: &str| {
            old.find(key)
                .map(|m| m.backend.clone())
                .or_else(|| draining.iter().find(|b| &*b.key == key).cloned())
        };
        let next = Snapshot::build(
            old.generation + 1,
            inner.config.clone(),
            &inner.overlay,
            limiter,
            &reuse,
        );
        // Backends coming back from draining keep their state and stop draining.
        inner.draining.retain(|b| {
            let back = next.find(&b.key).is_some();
            if back {
                b.draining.store(false, Relaxed);
            }
            !back
        });
        for key in &diff.removed {
            if let Some(m) = old.find(key) {
                m.backend.draining.store(true, Relaxed);
                inner.draining.push(m.backend.clone());
            }
        }
        self.snapshot.store(Arc::new(next));
        for key in &diff.added {
            self.events.emit(
                EventKind::BackendAdded,
                Some(key),
                format!("backend {key} added"),
            );
        }
        for key in &diff.removed {
            self.events.emit(
                EventKind::BackendDraining,
                Some(key),
                format!("backend {key} draining"),
            );
        }
        diff
    }

    /// Forgets drained backends whose last request has finished.
    pub fn prune_draining(&self) {
        let done: Vec<Arc<Backend>> = {
            let mut inner = self.inner.lock();
            let (done, keep): (Vec<_>, Vec<_>) =
                inner.draining.drain(..).partition(|b| b.active() == 0);
            inner.draining = keep;
            done
        };
        for b in done {
            b.pool.clear();
            self.events.emit(
                EventKind::BackendRemoved,
                Some(&b.key),
                format!("backend {} drained and removed", b.key),
            );
        }
    }

    pub fn draining(&self) -> Vec<Arc<Backend>> {
        self.inner.lock().draining.clone()
    }

    /// Every backend the admin API shows: the running set, then the draining ones.
    pub fn backend_views(&self) -> Vec<BackendView> {
        let snap = self.snapshot();
        let now = Instant::now();
        let mut out: Vec<BackendView> = snap
            .members
            .iter()
            .map(|m| view(m, now, &snap.config))
            .collect();
        for b in self.draining() {
            let m = Member {
                backend: b,
                weight: 0,
                source: switchyard_shared::BackendSource::Admin,
                health_path: None,
            };
            out.push(view(&m, now, &snap.config));
        }
        out
    }

    /// The seed's `/metrics` array.
    pub fn metrics_entries(&self) -> Vec<MetricsEntry> {
        self.backend_views()
            .into_iter()
            .map(|v| MetricsEntry {
                alive: v.available,
                active_conns: v.active_conns,
                latency: v.latency_ns,
                fails: v.errors,
                url: v.url,
            })
            .collect()
    }

    pub fn config_status(&self) -> ConfigStatus {
        let inner = self.inner.lock();
        ConfigStatus {
            source: self.source.clone(),
            commit: inner.status.commit.clone(),
            generation: inner.status.generation,
            applied_at_ms: inner.status.applied_at_ms,
            last_error: inner.status.last_error.clone(),
            drift: drift(&inner.config, &inner.overlay),
            replicas: Vec::new(),
            converged: true,
        }
    }

    /// `GET /admin/config`: the status plus, when clustered, every replica's commit.
    pub fn config_status_with_replicas(&self) -> ConfigStatus {
        let mut status = self.config_status();
        let view = crate::cluster::view(self);
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

impl App {
    /// Logs, counts and publishes the policy transitions one attempt caused.
    pub fn noted(self: &Arc<Self>, backend: &Backend, r: Recorded) {
        if let Some(t) = r.circuit {
            self.note(backend, t);
        }
        if let Some(t) = r.outlier {
            self.note(backend, t);
        }
    }

    /// Logs, counts and publishes one policy transition.
    pub fn note(self: &Arc<Self>, backend: &Backend, t: Transition) {
        crate::cluster::publish_transition(self, backend, &t);
        let key = &*backend.key;
        let m = &self.metrics;
        let (kind, msg) = match t {
            Transition::CircuitOpened { reason, for_ } => {
                m.circuits_opened.fetch_add(1, Relaxed);
                (
                    EventKind::CircuitOpened,
                    format!("circuit of {key} opened for {}: {reason}", Dur(for_)),
                )
            }
            Transition::CircuitHalfOpen => {
                m.circuits_half_opened.fetch_add(1, Relaxed);
                (
                    EventKind::CircuitHalfOpen,
                    format!("circuit of {key} half-open: probing"),
                )
            }
            Transition::CircuitClosed => {
                m.circuits_closed.fetch_add(1, Relaxed);
                (
                    EventKind::CircuitClosed,
                    format!("circuit of {key} closed: probe succeeded"),
                )
            }
            Transition::Ejected {
                reason,
                for_,
                count,
            } => {
                m.ejections.fetch_add(1, Relaxed);
                (
                    EventKind::Ejected,
                    format!(
                        "backend {key} ejected for {} (ejection #{count}): {reason}",
                        Dur(for_)
                    ),
                )
            }
            Transition::Restored => {
                m.restores.fetch_add(1, Relaxed);
                (
                    EventKind::Restored,
                    format!("backend {key} returned from ejection"),
                )
            }
        };
        self.events.emit(kind, Some(key), msg);
    }

    /// Ends ejections whose time is up (so the event log says when they return).
    pub fn expire_ejections(self: &Arc<Self>) {
        let snap = self.snapshot();
        let now = Instant::now();
        for m in &snap.members {
            if let Some(t) = m.backend.outlier.expire(m.backend.nanos(now)) {
                self.note(&m.backend, t);
            }
        }
    }
}

/// A short, stable digest of a config (same config, same digest, on any replica).
/// Listener addresses and thread counts are left out: replicas legitimately differ
/// there (command-line overrides), and it says nothing about routing.
fn digest(config: &Config) -> String {
    use std::hash::{Hash, Hasher};
    let mut shared = config.clone();
    let defaults = crate::config::ServerConfig::default();
    shared.server.port = defaults.port;
    shared.server.admin_port = defaults.admin_port;
    shared.server.bind = defaults.bind;
    shared.server.admin_bind = None;
    shared.server.threads = defaults.threads;
    if let Some(c) = shared.cluster.as_mut() {
        c.replica_id = None;
    }
    let text = yaml_serde::to_string(&shared).unwrap_or_default();
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn view(m: &Member, now: Instant, cfg: &Config) -> BackendView {
    let b = &m.backend;
    let ns = b.nanos(now);
    let ejection = b
        .outlier
        .ejection(ns)
        .map(|(left, reason, count)| EjectionView {
            reason,
            remaining_ms: left.as_millis() as u64,
            count,
        });
    BackendView {
        url: b.url.to_string(),
        weight: m.weight,
        source: m.source,
        healthy: b.health.is_healthy(),
        health: b.health.status(),
        health_reason: b.health.reason(),
        circuit: if cfg.circuit_breaker.is_some() {
            b.circuit.state(ns)
        } else {
            CircuitState::Closed
        },
        ejected: ejection.is_some(),
        ejection,
        draining: b.is_draining(),
        available: b.available(now, cfg),
        active_conns: b.active(),
        requests: b.stats.requests.load(Relaxed),
        errors: b.stats.errors.load(Relaxed),
        latency_ns: b.latency.raw_ns(),
        status_classes: b.stats.status_classes(),
        latency_buckets: b.stats.latency.counts(),
    }
}

/// Where the running set differs from the config.
fn drift(config: &Config, overlay: &Overlay) -> DriftView {
    let mut d = DriftView::default();
    for (key, e) in &overlay.entries {
        let in_config = config.backends.iter().find(|b| &b.url.parsed.key() == key);
        match (e.op, in_config) {
            (OverlayOp::Add, None) => d.only_runtime.push(key.clone()),
            (OverlayOp::Add, Some(b)) if b.weight.0 != e.weight => {
                d.weight_changed.push(key.clone())
            }
            (OverlayOp::Remove, Some(_)) => d.only_config.push(key.clone()),
            _ => {}
        }
    }
    d
}
