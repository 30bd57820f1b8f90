//! The running proxy's control state: the config in force, the admin overlay, the
//! draining backends, the state store, the replica's cluster view and its reload
//! port, around the [`DataPlane`] the request path reads (`App` derefs to it).
//! Everything that changes the running set (config apply, admin overlay) goes
//! through [`App::rebuild`], one at a time.

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use switchyard_shared::validate::BackendUrl;
use switchyard_shared::{
    BackendView, CircuitState, ConfigErrorView, ConfigSourceView, ConfigStatus, DiscoveryView,
    DriftView, EjectionView, EventKind, MetricsEntry, ReplicaView,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backend::{Backend, Member};
use crate::config::{Config, OnStoreError, RateLimitConfig};
use crate::dataplane::DataPlane;
use crate::events::now_ms;
use crate::ratelimit::{ClusterLink, RateLimiter};
use crate::snapshot::{self, Diff, Discovered, Limiters, Snapshot};
use crate::state::{Overlay, OverlayOp, StateStore};
use crate::telemetry::metrics::{BackendReading, Reading, RouteReading, Source, TlsSource};
use crate::telemetry::otel::Telemetry;

/// Who this replica is.
#[derive(Clone, Debug)]
pub struct Replica {
    pub id: String,
    pub version: &'static str,
    pub started_ms: u64,
    pub started: Instant,
}

pub struct App {
    /// What the request path reads (the snapshot, metrics, events, tracer).
    plane: Arc<DataPlane>,
    pub store: Arc<dyn StateStore>,
    pub replica: Replica,
    pub source: ConfigSourceView,
    /// Set when shutdown begins: `/readyz` turns 503 so load balancers move away.
    pub shutting_down: AtomicBool,
    pub cluster: Cluster,
    /// Reloads on demand (`POST /admin/reload`), when a config source is followed.
    pub reloader: std::sync::OnceLock<ReloadHandle>,
    /// The HTTPS edge's figures for the metric families, when TLS is configured.
    pub tls_source: std::sync::OnceLock<Arc<dyn TlsSource>>,
    inner: Mutex<Inner>,
}

impl Deref for App {
    type Target = DataPlane;

    fn deref(&self) -> &DataPlane {
        &self.plane
    }
}

/// This replica's view of the cluster (the cluster layer keeps it current).
pub struct Cluster {
    pub name: String,
    /// Sharing state with other replicas (a Redis store), or alone.
    pub clustered: bool,
    pub link: Arc<ClusterLink>,
    pub(crate) replicas: Mutex<Vec<ReplicaView>>,
    pub(crate) me: Mutex<ReplicaView>,
    /// Addresses, known once the listeners are bound.
    pub(crate) addrs: Mutex<(String, String)>,
    /// Backends this replica holds the probe lease for.
    pub(crate) probing: Mutex<HashMap<Arc<str>, Instant>>,
    pub(crate) started: AtomicBool,
}

impl Cluster {
    pub fn new(config: &Config, clustered: bool) -> Self {
        let (name, on_error, timeout) = match &config.cluster {
            Some(c) => (c.name.clone(), c.on_store_error, c.timeout.get()),
            None => (
                "default".into(),
                OnStoreError::Local,
                Duration::from_millis(500),
            ),
        };
        Self {
            link: Arc::new(ClusterLink::new(&name, on_error, timeout, !clustered)),
            name,
            clustered,
            replicas: Mutex::new(Vec::new()),
            me: Mutex::new(ReplicaView::default()),
            addrs: Mutex::new((String::new(), String::new())),
            probing: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
        }
    }

    pub fn set_addresses(&self, proxy: String, admin: String) {
        *self.addrs.lock() = (proxy, admin);
    }
}

/// What one reload did.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Applied {
        #[serde(skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
        /// Settings that take effect only after a restart.
        restart_needed: Vec<String>,
    },
    Unchanged {
        #[serde(skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
    },
    Refused {
        error: ConfigErrorView,
    },
}

/// A reload asked for now, answered with its outcome.
#[derive(Debug)]
pub struct ReloadRequest {
    /// Accept one revision whose history does not descend from the applied one
    /// (`POST /admin/reload?allow_unrelated=true`).
    pub allow_unrelated: bool,
    pub reply: oneshot::Sender<Outcome>,
}

/// Asks the reloader (the config source's follower) for an immediate reload.
#[derive(Clone, Debug)]
pub struct ReloadHandle {
    tx: mpsc::Sender<ReloadRequest>,
}

impl ReloadHandle {
    pub fn new(tx: mpsc::Sender<ReloadRequest>) -> Self {
        Self { tx }
    }

    /// Reloads now; `None` when the reloader is stopping.
    pub async fn reload(&self, allow_unrelated: bool) -> Option<Outcome> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(ReloadRequest {
                allow_unrelated,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }
}

struct Inner {
    config: Arc<Config>,
    overlay: Overlay,
    /// Removed from the running set, finishing their in-flight requests.
    draining: Vec<Arc<Backend>>,
    /// Members found by DNS, per service (see [`crate::discovery`]).
    discovered: Discovered,
    /// Per discovering service: how its resolutions went.
    discovery: BTreeMap<String, DiscoveryView>,
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
            plane: Arc::new(DataPlane::new(
                Snapshot::empty(config.clone()),
                replica_id.clone(),
            )),
            store,
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
            tls_source: std::sync::OnceLock::new(),
            inner: Mutex::new(Inner {
                config: config.clone(),
                overlay: Overlay::default(),
                draining: Vec::new(),
                discovered: Discovered::default(),
                discovery: BTreeMap::new(),
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

    /// The request path's handle.
    pub fn plane(&self) -> &Arc<DataPlane> {
        &self.plane
    }

    /// Attaches OpenTelemetry export (once) and registers its metric instruments,
    /// which read this replica at each export.
    pub fn set_telemetry(self: &Arc<Self>, t: Arc<Telemetry>) {
        let weak = Arc::downgrade(self);
        let source: std::sync::Weak<dyn Source> = weak;
        if let Some(h) = t.register_metrics(source) {
            let _ = self.metrics.otel.set(h);
        }
        self.plane.set_telemetry(t);
    }

    /// The running set and the draining backends.
    pub fn all_backends(&self) -> Vec<Arc<Backend>> {
        let mut v: Vec<_> = self
            .snapshot()
            .all_members()
            .map(|(_, m)| m.backend.clone())
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

    /// Puts in what service `service`'s name `dns` answered (the members found by
    /// DNS are replaced; those gone drain like `/admin/remove`), and when the next
    /// resolution is due. Rebuilds only when the set changed.
    pub fn set_discovered(
        &self,
        service: &str,
        dns: &str,
        mut urls: Vec<BackendUrl>,
        next_ms: u64,
    ) -> Option<Diff> {
        urls.sort_by_key(|u| u.key());
        urls.dedup();
        let mut inner = self.inner.lock();
        let status = inner.discovery.entry(service.to_string()).or_default();
        status.dns = dns.to_string();
        status.members = urls.len();
        status.last_resolved_ms = now_ms();
        status.next_resolve_ms = next_ms;
        status.last_error = None;
        status.last_error_ms = None;
        let entry = (dns.to_string(), urls);
        if inner.discovered.0.get(service) == Some(&entry) {
            return None;
        }
        inner.discovered.0.insert(service.to_string(), entry);
        Some(self.rebuild(&mut inner))
    }

    /// Records a failed resolution of service `service`'s name: its members stay
    /// as the last answer left them.
    pub fn discovery_failed(&self, service: &str, dns: &str, error: String, next_ms: u64) {
        let mut inner = self.inner.lock();
        let status = inner.discovery.entry(service.to_string()).or_default();
        status.dns = dns.to_string();
        status.failures += 1;
        status.last_error = Some(error);
        status.last_error_ms = Some(now_ms());
        status.next_resolve_ms = next_ms;
    }

    /// Forgets a service's discovery (its `discover` block is gone): its members
    /// from DNS leave with the next rebuild (the config no longer asks for them).
    pub fn forget_discovery(&self, service: &str) {
        let mut inner = self.inner.lock();
        inner.discovery.remove(service);
        if inner.discovered.0.remove(service).is_some() {
            self.rebuild(&mut inner);
        }
    }

    /// Every discovering service's resolution record, by service name.
    pub fn discovery(&self) -> BTreeMap<String, DiscoveryView> {
        self.inner.lock().discovery.clone()
    }

    fn rebuild(&self, inner: &mut Inner) -> Diff {
        let old = self.snapshot();
        let desired = snapshot::desired_all(&inner.config, &inner.overlay, &inner.discovered);
        let diff = snapshot::diff(old.all_members().map(|(_, m)| m), &desired);
        let limiters = self.limiters(&inner.config, &old);
        let draining = &inner.draining;
        let reuse = |key: &str| {
            old.find(key)
                .map(|(_, m)| m.backend.clone())
                .or_else(|| draining.iter().find(|b| &*b.key == key).cloned())
        };
        let next = Snapshot::build_after(
            old.generation + 1,
            inner.config.clone(),
            (&inner.overlay, &inner.discovered),
            limiters,
            &reuse,
            Some(&old),
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
            if let Some((_, m)) = old.find(key) {
                m.backend.draining.store(true, Relaxed);
                inner.draining.push(m.backend.clone());
            }
        }
        self.plane.install(next);
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

    /// The rate limiters `config` asks for, the old snapshot's kept where their
    /// settings did not change (their buckets stay).
    fn limiters(&self, config: &Config, old: &Snapshot) -> Limiters {
        let link = || self.cluster.clustered.then(|| self.cluster.link.clone());
        let trusted = &config.server.trusted_proxies;
        let keep = |cfg: &RateLimitConfig, was: Option<&Arc<RateLimiter>>, scope: &str| match was {
            Some(l) if l.config == *cfg => l.clone(),
            _ => {
                let l = RateLimiter::new(cfg, trusted, link());
                Arc::new(if scope.is_empty() { l } else { l.scoped(scope) })
            }
        };
        let mut out = Limiters {
            proxy: config
                .rate_limit
                .as_ref()
                .map(|c| keep(c, old.limiter.as_ref(), "")),
            ..Limiters::default()
        };
        for (name, s) in &config.services {
            if let Some(rl) = &s.rate_limit {
                let was = old.service(name).and_then(|s| s.limiter.as_ref());
                let l = keep(rl, was, &format!("service:{name}"));
                out.services.insert(name.clone(), l);
            }
        }
        for (i, r) in config.routes.iter().enumerate() {
            if let Some(rl) = &r.rate_limit {
                let label = r.label(i);
                let was = old.router.as_ref().and_then(|t| {
                    let at = t.routes().iter().position(|x| *x.name == *label)?;
                    old.route_limiters.get(at)?.as_ref()
                });
                let l = keep(rl, was, &format!("route:{label}"));
                out.routes.insert(label, l);
            }
        }
        out
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
            .all_members()
            .map(|(s, m)| view(m, now, &s.config))
            .collect();
        for b in self.draining() {
            let cfg = snap
                .service(&b.service)
                .map_or(&snap.default_service().config, |s| &s.config);
            let m = Member {
                backend: b,
                weight: 0,
                source: switchyard_shared::BackendSource::Admin,
                health_path: None,
                protocol: Default::default(),
            };
            out.push(view(&m, now, cfg));
        }
        out
    }

    /// The seed's `/metrics` array, from the same reading as the metric families.
    pub fn metrics_entries(&self) -> Vec<MetricsEntry> {
        let mut out = Vec::new();
        self.read(&mut |r| {
            out = r
                .backends
                .iter()
                .map(|b| MetricsEntry {
                    alive: b.up,
                    active_conns: b.active,
                    latency: b.latency_ewma_ns,
                    fails: b.errors,
                    url: b.url.to_string(),
                })
                .collect();
        });
        out
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
}

impl App {
    /// Ends ejections whose time is up (so the event log says when they return).
    pub fn expire_ejections(&self) {
        let snap = self.snapshot();
        let now = Instant::now();
        for (_, m) in snap.all_members() {
            if let Some(t) = m.backend.outlier.expire(m.backend.nanos(now)) {
                self.note(&m.backend, t);
            }
        }
    }
}

impl Source for App {
    /// Reads every figure the metric families show, the running set's backends
    /// first, then the draining ones.
    fn read(&self, f: &mut dyn FnMut(&Reading<'_>)) {
        let snap = self.snapshot();
        let draining = self.draining();
        let now = Instant::now();
        let default = &snap.default_service().config;
        let backends = snap
            .all_members()
            .map(|(_, m)| &m.backend)
            .chain(&draining)
            .map(|b| {
                let cfg = snap.service(&b.service).map_or(default, |s| &s.config);
                let ns = b.nanos(now);
                BackendReading {
                    key: match crate::config::routes::split_key(&b.key) {
                        (_, plain) if plain.len() < b.key.len() => plain.into(),
                        _ => b.key.clone(),
                    },
                    service: b.service.clone(),
                    url: b.url.clone(),
                    status: b.stats.status_classes(),
                    errors: b.stats.errors.load(Relaxed),
                    active: b.active(),
                    up: b.available(now, cfg),
                    healthy: b.health.is_healthy(),
                    ejected: b.outlier.is_ejected(ns),
                    circuit: if cfg.circuit_breaker.is_some() {
                        b.circuit.state(ns)
                    } else {
                        CircuitState::Closed
                    },
                    latency: &b.stats.latency,
                    latency_ewma_ns: b.latency.raw_ns(),
                }
            })
            .collect();
        let (generation, refused) = {
            let inner = self.inner.lock();
            (inner.status.generation, inner.status.last_error.is_some())
        };
        f(&Reading {
            proxy: &self.metrics,
            spans_lost: self.telemetry().map_or(0, |t| t.spans_lost()),
            config_generation: generation,
            config_refused: refused,
            store: self.store.status(),
            replicas: self.cluster.link.live() as u64,
            backends,
            tls: self.tls_source.get().map(|t| t.tls_reading()),
            routes: route_readings(&snap),
            discovery: self.discovery().into_iter().collect(),
        });
    }
}

/// Every route's answers per service.
fn route_readings(snap: &Snapshot) -> Vec<RouteReading> {
    let Some(router) = &snap.router else {
        return Vec::new();
    };
    router
        .routes()
        .iter()
        .flat_map(|r| {
            r.stats.by_service.iter().map(|(service, c)| RouteReading {
                route: r.name.clone(),
                service: service.clone(),
                status: std::array::from_fn(|i| c[i].load(Relaxed)),
            })
        })
        .collect()
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
        service: b.service.to_string(),
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
        let (service, url_key) = crate::config::routes::split_key(key);
        let backends = match config.services.get(service) {
            Some(s) => &s.backends[..],
            None if service == crate::config::DEFAULT_SERVICE => &config.backends[..],
            None => &[],
        };
        let in_config = backends.iter().find(|b| b.url.parsed.key() == url_key);
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
