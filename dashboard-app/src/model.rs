//! The dashboard's view model: snapshots and events go in, display-ready rows come
//! out (text, tone, chart paths). No browser types here, so it is tested natively;
//! the UI only lays the rows out.

use std::collections::{BTreeMap, HashSet, VecDeque};

use switchyard_shared::{
    BackendSource, BackendView, CircuitState, ClusterBackendView, DashboardSnapshot, Event,
    EventKind, HealthStatus,
};

use crate::chart::{self, Chart};
use crate::format;
use crate::rates::{History, Sample, WindowStats, counter_delta, per_second};
use crate::series::Series;

mod tls;
pub use tls::{CertRow, TlsInfo};

/// Chart points kept: three minutes at one snapshot a second.
pub const CHART_POINTS: usize = 180;
/// Samples kept per backend for the table's window figures.
pub const SAMPLES: usize = 64;
/// Window of the table's rates, error rates and percentiles.
pub const WINDOW_MS: u64 = 10_000;
/// Events kept in the log.
pub const EVENTS: usize = 200;

/// How a state reads at a glance. Always shown with text, never by colour alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Good,
    Warn,
    Bad,
    Neutral,
}

impl Tone {
    /// CSS class.
    pub fn class(self) -> &'static str {
        match self {
            Tone::Good => "good",
            Tone::Warn => "warn",
            Tone::Bad => "bad",
            Tone::Neutral => "neutral",
        }
    }
}

/// A short state word with its tone.
#[derive(Clone, Debug, PartialEq)]
pub struct Badge {
    pub text: String,
    pub tone: Tone,
    /// Longer explanation (tooltip).
    pub detail: String,
}

impl Badge {
    fn new(text: impl Into<String>, tone: Tone) -> Self {
        Self {
            text: text.into(),
            tone,
            detail: String::new(),
        }
    }

    fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }
}

// === backends ===

/// One backend, ready to show.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendRow {
    /// Unique over services: the URL in `default`, `<service>|<url>` elsewhere (what
    /// the page keys cards, history and actions by).
    pub id: String,
    pub url: String,
    pub service: String,
    pub source: &'static str,
    pub weight: String,
    /// Whether it gets new requests, and if not why.
    pub status: Badge,
    pub health: Badge,
    pub circuit: Badge,
    pub ejection: Badge,
    pub draining: bool,
    pub active: String,
    pub rps: String,
    pub error_rate: String,
    pub p50: String,
    pub p99: String,
    pub requests: String,
    pub errors: String,
    pub charts: Vec<Chart>,
    /// In a cluster: the figures over every live replica, in one line.
    pub cluster: Option<Badge>,
}

/// A backend seen before that is no longer in the running set.
#[derive(Clone, Debug, PartialEq)]
pub struct GoneRow {
    pub url: String,
    /// The weight it last ran with (what "re-add" asks for).
    pub weight: u32,
    /// Unix ms of the last snapshot that listed it.
    pub last_seen_ms: u64,
}

/// Per-backend history for windows and charts.
#[derive(Clone, Debug, PartialEq)]
struct Track {
    history: History,
    rps: Series,
    eps: Series,
    p50_ms: Series,
    p99_ms: Series,
}

impl Track {
    fn new() -> Self {
        Self {
            history: History::new(SAMPLES),
            rps: Series::new(CHART_POINTS),
            eps: Series::new(CHART_POINTS),
            p50_ms: Series::new(CHART_POINTS),
            p99_ms: Series::new(CHART_POINTS),
        }
    }

    fn add(&mut self, at_ms: u64, b: &BackendView) {
        let before = self.history.latest().map(|s| s.at_ms);
        self.history.push(Sample::of(at_ms, b));
        if before.is_some_and(|t| t < at_ms)
            && let Some(step) = self.history.last_step()
        {
            self.rps.push(Some(step.rps));
            self.eps.push(Some(step.eps));
            self.p50_ms.push(step.p50_s.map(|s| s * 1000.0));
            self.p99_ms.push(step.p99_s.map(|s| s * 1000.0));
        }
    }

    fn charts(&self) -> Vec<Chart> {
        vec![
            chart::chart("requests/s", &[(&self.rps, "rps", "now")], format::rate),
            chart::chart(
                "latency",
                &[(&self.p50_ms, "p50", "p50"), (&self.p99_ms, "p99", "p99")],
                format::duration_ms,
            ),
            chart::chart("errors/s", &[(&self.eps, "eps", "now")], format::rate),
        ]
    }
}

fn status_badge(b: &BackendView) -> Badge {
    if b.available {
        return Badge::new("serving", Tone::Good).detail("receives new requests");
    }
    let mut why = Vec::new();
    if b.draining {
        why.push("draining");
    }
    if b.circuit == CircuitState::Open {
        why.push("circuit open");
    }
    if b.ejected {
        why.push("ejected");
    }
    if b.health == HealthStatus::Unhealthy {
        why.push("unhealthy");
    }
    if b.draining {
        Badge::new("draining", Tone::Warn).detail("no new requests; in-flight ones finish")
    } else if why.is_empty() {
        Badge::new("not serving", Tone::Bad)
    } else {
        Badge::new(format!("not serving: {}", why.join(", ")), Tone::Bad)
    }
}

fn health_badge(b: &BackendView) -> Badge {
    let badge = match b.health {
        HealthStatus::Healthy => Badge::new("healthy", Tone::Good),
        HealthStatus::Unhealthy => Badge::new("unhealthy", Tone::Bad),
        HealthStatus::Unchecked => Badge::new("unchecked", Tone::Neutral)
            .detail("no active health check configured, or none concluded yet"),
    };
    match &b.health_reason {
        Some(r) => badge.detail(r.clone()),
        None => badge,
    }
}

fn circuit_badge(c: CircuitState) -> Badge {
    match c {
        CircuitState::Closed => Badge::new("closed", Tone::Good).detail("requests flow"),
        CircuitState::Open => Badge::new("open", Tone::Bad).detail("requests are refused"),
        CircuitState::HalfOpen => {
            Badge::new("half-open", Tone::Warn).detail("trial requests decide")
        }
    }
}

fn ejection_badge(b: &BackendView) -> Badge {
    match (&b.ejection, b.ejected) {
        (Some(e), _) => Badge::new(
            format!(
                "ejected, back in {}",
                format::duration_s(e.remaining_ms.div_ceil(1000))
            ),
            Tone::Bad,
        )
        .detail(format!("{} (ejection #{})", e.reason, e.count)),
        (None, true) => Badge::new("ejected", Tone::Bad),
        (None, false) => Badge::new("not ejected", Tone::Good),
    }
}

/// One line of cluster-wide figures for a backend (summed or merged by the proxy over
/// the live replicas' heartbeats); warns when some replicas do not route to it.
fn cluster_line(c: &ClusterBackendView, replicas: usize) -> Badge {
    let mut parts = vec![
        format::rate(c.rps),
        format!("{} errors", format::percent(Some(c.error_rate))),
        format!("p50 {}", format::latency(c.p50_ms.map(|ms| ms / 1000.0))),
        format!("p99 {}", format::latency(c.p99_ms.map(|ms| ms / 1000.0))),
        format!("serving on {} of {replicas} replicas", c.available_on),
    ];
    if c.circuit_open_on > 0 {
        parts.push(format!("circuit open on {}", c.circuit_open_on));
    }
    let tone = if c.available_on as usize >= replicas {
        Tone::Good
    } else if c.available_on == 0 {
        Tone::Bad
    } else {
        Tone::Warn
    };
    Badge::new(format!("cluster: {}", parts.join(" · ")), tone)
}

/// A backend's identity on the page (see [`BackendRow::id`]).
pub fn backend_id(b: &BackendView) -> String {
    if b.service == "default" {
        b.url.clone()
    } else {
        format!("{}|{}", b.service, b.url)
    }
}

/// The service and URL of an id (see [`BackendRow::id`]).
pub fn split_id(id: &str) -> (Option<&str>, &str) {
    match id.split_once('|') {
        Some((service, url)) => (Some(service), url),
        None => (None, id),
    }
}

fn backend_row(b: &BackendView, track: Option<&Track>, cluster: Option<Badge>) -> BackendRow {
    let window: Option<WindowStats> = track.and_then(|t| t.history.window(WINDOW_MS));
    let measured = window.is_some();
    let w = window.unwrap_or_default();
    BackendRow {
        id: backend_id(b),
        url: b.url.clone(),
        service: b.service.clone(),
        source: match b.source {
            BackendSource::Config => "config",
            BackendSource::Admin => "admin",
            BackendSource::Dns => "dns",
        },
        weight: if b.draining && b.weight == 0 {
            format::NONE.into()
        } else {
            b.weight.to_string()
        },
        status: status_badge(b),
        health: health_badge(b),
        circuit: circuit_badge(b.circuit),
        ejection: ejection_badge(b),
        draining: b.draining,
        active: b.active_conns.to_string(),
        rps: if measured {
            format::rate(w.rps)
        } else {
            format::NONE.into()
        },
        error_rate: format::percent(w.error_rate),
        p50: format::latency(w.p50_s),
        p99: format::latency(w.p99_s),
        requests: format::count(b.requests),
        errors: format::count(b.errors),
        charts: track.map(Track::charts).unwrap_or_default(),
        cluster,
    }
}

// === events ===

/// The event log: de-duplicated (the stream repeats recent events in every snapshot,
/// and a reconnect replays them), ordered, bounded.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct EventLog {
    /// Oldest first.
    items: VecDeque<Event>,
    seen: HashSet<(String, u64, u64)>,
}

impl EventLog {
    fn key(e: &Event) -> (String, u64, u64) {
        (e.replica.clone(), e.seq, e.at_ms)
    }

    /// Adds an event unless already known. Returns whether it was new.
    pub fn add(&mut self, e: Event) -> bool {
        if !self.seen.insert(Self::key(&e)) {
            return false;
        }
        // Usually the newest; keep order by time, then sequence, if not.
        let pos = self
            .items
            .iter()
            .rposition(|x| (x.at_ms, x.seq) <= (e.at_ms, e.seq))
            .map_or(0, |p| p + 1);
        self.items.insert(pos, e);
        while self.items.len() > EVENTS {
            if let Some(old) = self.items.pop_front() {
                self.seen.remove(&Self::key(&old));
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn newest_first(&self) -> impl Iterator<Item = &Event> {
        self.items.iter().rev()
    }
}

/// One event log line.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    /// Stable key for the list.
    pub key: String,
    pub time: String,
    pub kind: &'static str,
    pub tone: Tone,
    pub backend: String,
    pub message: String,
    pub replica: String,
}

pub fn event_kind(k: EventKind) -> (&'static str, Tone) {
    match k {
        EventKind::BackendAdded => ("backend added", Tone::Good),
        EventKind::BackendDraining => ("draining", Tone::Warn),
        EventKind::BackendRemoved => ("backend removed", Tone::Neutral),
        EventKind::HealthChanged => ("health changed", Tone::Warn),
        EventKind::CircuitOpened => ("circuit opened", Tone::Bad),
        EventKind::CircuitHalfOpen => ("circuit half-open", Tone::Warn),
        EventKind::CircuitClosed => ("circuit closed", Tone::Good),
        EventKind::Ejected => ("ejected", Tone::Bad),
        EventKind::Restored => ("restored", Tone::Good),
        EventKind::ConfigApplied => ("config applied", Tone::Good),
        EventKind::ConfigRefused => ("config refused", Tone::Bad),
        EventKind::StoreDisconnected => ("store disconnected", Tone::Bad),
        EventKind::StoreReconnected => ("store reconnected", Tone::Good),
        EventKind::ReplicaJoined => ("replica joined", Tone::Neutral),
        EventKind::ReplicaLeft => ("replica left", Tone::Warn),
    }
}

fn event_row(e: &Event) -> EventRow {
    let (kind, mut tone) = event_kind(e.kind);
    // The kind does not say which way health went; the message does.
    if e.kind == EventKind::HealthChanged {
        tone = if e.message.contains("unhealthy") {
            Tone::Bad
        } else {
            Tone::Good
        };
    }
    EventRow {
        key: format!("{}/{}/{}", e.replica, e.seq, e.at_ms),
        time: format::clock_utc(e.at_ms),
        kind,
        tone,
        backend: e.backend.clone().unwrap_or_default(),
        message: e.message.clone(),
        replica: e.replica.clone(),
    }
}

// === cluster, config, rate limit ===

#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaRow {
    pub id: String,
    pub is_self: bool,
    pub address: String,
    pub version: String,
    pub commit: String,
    pub generation: String,
    pub heartbeat: String,
    pub uptime: String,
    /// Runs a different config (commit or digest) than this replica.
    pub differs: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterInfo {
    /// `single replica` or `cluster "name": N replicas`.
    pub mode: String,
    pub converged: Badge,
    pub store: Badge,
    pub replicas: Vec<ReplicaRow>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConfigInfo {
    pub source: String,
    pub commit: String,
    pub generation: String,
    pub applied: String,
    pub last_error: Option<String>,
    pub drift: Badge,
    /// One line per backend that differs between config and runtime.
    pub drift_lines: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitInfo {
    pub state: Badge,
    /// `100/s, burst 200, per client-ip`, or empty when off.
    pub limit: String,
    pub admitted: String,
    pub rejected: String,
    pub admitted_rate: String,
    pub rejected_rate: String,
    pub chart: Chart,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub replica: String,
    pub version: String,
    pub strategy: String,
    pub rps: String,
    pub error_rate: String,
    pub in_flight: String,
    pub retries: String,
    pub updated: String,
    pub auth_required: bool,
}

// === the model ===

/// Everything the page shows, fed by the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Dashboard {
    latest: Option<DashboardSnapshot>,
    tracks: BTreeMap<String, Track>,
    /// Every backend seen, with the last weight it ran with.
    known: BTreeMap<String, (u32, u64)>,
    events: EventLog,
    totals: History,
    limit_prev: Option<(u64, u64, u64)>,
    admitted_rate: Series,
    rejected_rate: Series,
    /// Bumped on every change, so the UI can tell versions apart cheaply.
    pub version: u64,
}

impl Default for Dashboard {
    fn default() -> Self {
        Self {
            latest: None,
            tracks: BTreeMap::new(),
            known: BTreeMap::new(),
            events: EventLog::default(),
            totals: History::new(SAMPLES),
            limit_prev: None,
            admitted_rate: Series::new(CHART_POINTS),
            rejected_rate: Series::new(CHART_POINTS),
            version: 0,
        }
    }
}

impl Dashboard {
    pub fn has_data(&self) -> bool {
        self.latest.is_some()
    }

    pub fn latest(&self) -> Option<&DashboardSnapshot> {
        self.latest.as_ref()
    }

    /// Takes in an `event: snapshot`.
    pub fn apply_snapshot(&mut self, snap: DashboardSnapshot) {
        let at = snap.at_ms;
        for b in &snap.backends {
            self.tracks
                .entry(backend_id(b))
                .or_insert_with(Track::new)
                .add(at, b);
            let entry = self
                .known
                .entry(backend_id(b))
                .or_insert((b.weight.max(1), at));
            if b.weight > 0 {
                entry.0 = b.weight;
            }
            entry.1 = at;
        }
        self.tracks
            .retain(|id, _| snap.backends.iter().any(|b| backend_id(b) == *id));
        self.totals.push(Sample {
            at_ms: at,
            requests: snap.totals.requests,
            errors: snap.totals.errors,
            latency_buckets: Vec::new(),
        });
        let rl = &snap.rate_limit;
        if let Some((t, a, r)) = self.limit_prev
            && at > t
        {
            let dt = at - t;
            self.admitted_rate
                .push(Some(per_second(counter_delta(rl.admitted, a), dt)));
            self.rejected_rate
                .push(Some(per_second(counter_delta(rl.rejected, r), dt)));
        }
        if self.limit_prev.is_none_or(|(t, _, _)| at > t) {
            self.limit_prev = Some((at, rl.admitted, rl.rejected));
        }
        for e in &snap.events {
            self.events.add(e.clone());
        }
        self.latest = Some(snap);
        self.version += 1;
    }

    /// Takes in an `event: event`.
    pub fn apply_event(&mut self, e: Event) {
        if self.events.add(e) {
            self.version += 1;
        }
    }

    pub fn auth_required(&self) -> bool {
        self.latest.as_ref().is_some_and(|s| s.auth_required)
    }

    pub fn backends(&self) -> Vec<BackendRow> {
        let Some(s) = &self.latest else {
            return Vec::new();
        };
        let clustered = s.cluster.mode == "clustered";
        let replicas = s.cluster.replicas.len();
        let mut rows: Vec<BackendRow> = s
            .backends
            .iter()
            .map(|b| {
                let cluster = s
                    .cluster
                    .backends
                    .iter()
                    .find(|c| clustered && c.url == backend_id(b))
                    .map(|c| cluster_line(c, replicas));
                backend_row(b, self.tracks.get(&backend_id(b)), cluster)
            })
            .collect();
        // Grouped by service, in the proxy's service order (`default` first).
        let order = |svc: &str| s.services.iter().position(|x| x.name == svc);
        rows.sort_by_key(|r| order(&r.service).unwrap_or(usize::MAX));
        rows
    }

    /// The backends' ids by service, in service order (services without backends
    /// included, so an empty pool shows).
    pub fn service_groups(&self) -> Vec<(String, Vec<String>)> {
        let Some(s) = &self.latest else {
            return Vec::new();
        };
        let rows = self.backends();
        let mut out: Vec<(String, Vec<String>)> = s
            .services
            .iter()
            .map(|svc| (svc.name.clone(), Vec::new()))
            .collect();
        for r in rows {
            match out.iter_mut().find(|(n, _)| *n == r.service) {
                Some((_, ids)) => ids.push(r.id),
                None => out.push((r.service, vec![r.id])),
            }
        }
        // Before services existed (an older proxy): one unnamed group.
        if s.services.is_empty() && out.len() == 1 {
            out[0].0 = "default".into();
        }
        out
    }

    /// The route table, in evaluation order.
    pub fn routes(&self) -> Vec<switchyard_shared::RouteView> {
        self.latest
            .as_ref()
            .map(|s| s.routes.clone())
            .unwrap_or_default()
    }

    /// Backends seen earlier that the running set no longer has (removed, or drained
    /// and gone), most recently seen first.
    pub fn gone(&self) -> Vec<GoneRow> {
        let Some(s) = &self.latest else {
            return Vec::new();
        };
        let mut out: Vec<GoneRow> = self
            .known
            .iter()
            .filter(|(id, _)| !s.backends.iter().any(|b| backend_id(b) == **id))
            .map(|(url, (weight, seen))| GoneRow {
                url: url.clone(),
                weight: *weight,
                last_seen_ms: *seen,
            })
            .collect();
        out.sort_by(|a, b| b.last_seen_ms.cmp(&a.last_seen_ms).then(a.url.cmp(&b.url)));
        out
    }

    /// The weight to re-add `url` with: the last it ran with, else 1.
    pub fn known_weight(&self, url: &str) -> u32 {
        self.known.get(url).map_or(1, |(w, _)| *w)
    }

    pub fn events(&self) -> Vec<EventRow> {
        self.events.newest_first().map(event_row).collect()
    }

    pub fn header(&self) -> Option<Header> {
        let s = self.latest.as_ref()?;
        let w = self.totals.window(WINDOW_MS);
        Some(Header {
            replica: s.replica_id.clone(),
            version: s.version.clone(),
            strategy: s.strategy.clone(),
            rps: w
                .as_ref()
                .map_or_else(|| format::NONE.into(), |w| format::rate(w.rps)),
            error_rate: format::percent(w.and_then(|w| w.error_rate)),
            in_flight: s.totals.in_flight.to_string(),
            retries: format::count(s.totals.retries),
            updated: format::clock_utc(s.at_ms),
            auth_required: s.auth_required,
        })
    }

    pub fn cluster(&self) -> Option<ClusterInfo> {
        let s = self.latest.as_ref()?;
        let c = &s.cluster;
        let mode = if c.mode == "clustered" {
            let name = if c.name.is_empty() {
                String::new()
            } else {
                format!(" \u{201c}{}\u{201d}", c.name)
            };
            format!("cluster{name}: {} replicas", c.replicas.len())
        } else {
            "single replica".to_string()
        };
        let converged = if c.converged {
            Badge::new("converged", Tone::Good).detail("every replica runs the same config")
        } else {
            Badge::new("not converged", Tone::Warn).detail("replicas run different config versions")
        };
        // `redis sentinel`, `redis cluster`: the topology beside the kind.
        let kind = match c.store.topology.as_str() {
            "" | "single" => c.store.kind.clone(),
            t => format!("{} {t}", c.store.kind),
        };
        // The primary taking writes, and how often it changed.
        let mut about = Vec::new();
        if let Some(p) = &c.store.primary {
            about.push(format!("primary {p}"));
        }
        if c.store.failovers > 0 {
            let s = if c.store.failovers == 1 { "" } else { "s" };
            about.push(format!("{} failover{s}", c.store.failovers));
        }
        let store = match (&c.store.last_error, c.store.connected) {
            (_, true) => {
                Badge::new(format!("{kind} connected"), Tone::Good).detail(about.join(" · "))
            }
            (Some(e), false) => {
                Badge::new(format!("{kind} unreachable"), Tone::Bad).detail(e.clone())
            }
            (None, false) => Badge::new(format!("{kind} unreachable"), Tone::Bad),
        };
        let own = c
            .replicas
            .iter()
            .find(|r| r.is_self)
            .map(|r| (r.config_commit.clone(), r.config_digest.clone()));
        let replicas = c
            .replicas
            .iter()
            .map(|r| ReplicaRow {
                id: r.id.clone(),
                is_self: r.is_self,
                address: r.address.clone(),
                version: r.version.clone(),
                commit: format::commit(r.config_commit.as_deref()),
                generation: r.config_generation.to_string(),
                heartbeat: format::age(s.at_ms, r.last_heartbeat_ms),
                uptime: format::duration_s(r.uptime_s),
                differs: own.as_ref().is_some_and(|(commit, digest)| {
                    commit != &r.config_commit || digest != &r.config_digest
                }),
            })
            .collect();
        Some(ClusterInfo {
            mode,
            converged,
            store,
            replicas,
        })
    }

    pub fn config(&self) -> Option<ConfigInfo> {
        let s = self.latest.as_ref()?;
        let c = &s.config;
        let src = &c.source;
        let source = match (&src.repo, &src.r#ref) {
            (Some(repo), Some(r)) => format!("{} {repo}@{r}: {}", src.kind, src.path),
            (Some(repo), None) => format!("{} {repo}: {}", src.kind, src.path),
            _ => format!("{} {}", src.kind, src.path),
        };
        let last_error = c.last_error.as_ref().map(|e| {
            let at = match e.line {
                Some(l) => format!("{}:{l}", e.file),
                None => e.file.clone(),
            };
            let commit = e
                .commit
                .as_deref()
                .map(|c| format!(" (commit {})", format::commit(Some(c))))
                .unwrap_or_default();
            format!(
                "{at}: {}{commit}, {}",
                e.reason,
                format::age(s.at_ms, e.at_ms)
            )
        });
        let d = &c.drift;
        let mut drift_lines = Vec::new();
        drift_lines.extend(
            d.only_runtime
                .iter()
                .map(|u| format!("{u}: added at runtime")),
        );
        drift_lines.extend(
            d.only_config
                .iter()
                .map(|u| format!("{u}: in the config, removed at runtime")),
        );
        drift_lines.extend(
            d.weight_changed
                .iter()
                .map(|u| format!("{u}: weight changed at runtime")),
        );
        let drift = if drift_lines.is_empty() {
            Badge::new("no drift", Tone::Good).detail("the running set matches the config")
        } else {
            Badge::new(format!("drift: {}", drift_lines.len()), Tone::Warn)
                .detail("admin API changes are an overlay on the config")
        };
        Some(ConfigInfo {
            source,
            commit: format::commit(c.commit.as_deref()),
            generation: c.generation.to_string(),
            applied: if c.applied_at_ms == 0 {
                format::NONE.into()
            } else {
                format!(
                    "{} ({})",
                    format::date_time_utc(c.applied_at_ms),
                    format::age(s.at_ms, c.applied_at_ms)
                )
            },
            last_error,
            drift,
            drift_lines,
        })
    }

    /// The TLS panel, when the replica serves HTTPS.
    pub fn tls(&self) -> Option<TlsInfo> {
        self.latest.as_ref()?.tls.as_ref().map(tls::tls_info)
    }

    pub fn rate_limit(&self) -> Option<RateLimitInfo> {
        let s = self.latest.as_ref()?;
        let rl = &s.rate_limit;
        let state = if rl.enabled {
            let tone = if rl.mode == "deny" || rl.mode == "allow" {
                Tone::Warn
            } else {
                Tone::Good
            };
            Badge::new(format!("on ({})", rl.mode), tone)
        } else {
            Badge::new("off", Tone::Neutral)
        };
        let limit = if rl.enabled {
            format!(
                "{}, burst {}, per {}",
                format::rate(rl.requests_per_second),
                rl.burst,
                rl.key
            )
        } else {
            String::new()
        };
        let chart = chart::chart(
            "admitted vs rejected",
            &[
                (&self.admitted_rate, "admitted", "admitted"),
                (&self.rejected_rate, "rejected", "rejected"),
            ],
            format::rate,
        );
        Some(RateLimitInfo {
            state,
            limit,
            admitted: format::count(rl.admitted),
            rejected: format::count(rl.rejected),
            admitted_rate: format::rate(self.admitted_rate.last().unwrap_or(0.0)),
            rejected_rate: format::rate(self.rejected_rate.last().unwrap_or(0.0)),
            chart,
        })
    }
}

#[cfg(test)]
mod tests;
