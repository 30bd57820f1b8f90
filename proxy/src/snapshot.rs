//! The immutable view every request reads: config, route table, and per service
//! its settings, members and balancer, built together and swapped whole (one
//! `ArcSwap` store), so no request ever sees the backends of one version with the
//! settings of another, nor a route naming a service of another version.
//!
//! A service's running set is its config's backends with the admin overlay on top:
//! an overlay `add` puts a backend in (or changes its weight) whatever the config
//! says, an overlay `remove` takes it out whatever the config says. Backends are
//! matched by key across rebuilds, so a kept backend keeps its live state.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use smallvec::SmallVec;

use switchyard_shared::BackendSource;
use switchyard_shared::validate::{self, BackendUrl};
use tokio::time::Instant;

use crate::backend::{Backend, Member, Outcome, Recorded};
use crate::balance::{self, Balance};
use crate::config::routes::{scoped_key, split_key};
use crate::config::{Config, DEFAULT_SERVICE, Protocol, Strategy};
use crate::ratelimit::RateLimiter;
use crate::route::Router;
use crate::state::{Overlay, OverlayOp};

pub struct Snapshot {
    /// Increases with every rebuild (config change or membership change).
    pub generation: u64,
    /// The whole config in force.
    pub config: Arc<Config>,
    /// `default` first, then the `services:` map in name order.
    pub services: Vec<Service>,
    /// The compiled routes; `None` without routes (every request goes to `default`).
    pub router: Option<Router>,
    /// Each route's own rate limit, by route index.
    pub route_limiters: Vec<Option<Arc<RateLimiter>>>,
    /// The proxy-wide rate limit (the top-level `rate_limit`).
    pub limiter: Option<Arc<RateLimiter>>,
    /// Overlay version this snapshot reflects.
    pub overlay_version: u64,
}

/// One service: its settings, members and balancer.
pub struct Service {
    pub name: Arc<str>,
    /// The service's settings as a config whose top-level blocks are the
    /// service's (see [`Config::service_config`]).
    pub config: Arc<Config>,
    pub members: Vec<Member>,
    pub balancer: Box<dyn Balance>,
    /// The service's own rate limit.
    pub limiter: Option<Arc<RateLimiter>>,
}

/// Rate limiters a rebuild keeps or makes: the proxy-wide one, per service name,
/// per route name.
#[derive(Default)]
pub struct Limiters {
    pub proxy: Option<Arc<RateLimiter>>,
    pub services: HashMap<String, Arc<RateLimiter>>,
    pub routes: HashMap<String, Arc<RateLimiter>>,
}

/// A backend the running set should contain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Scoped by service (see [`scoped_key`]).
    pub key: String,
    pub url: String,
    pub target: BackendUrl,
    pub weight: u32,
    pub source: BackendSource,
    pub health_path: Option<String>,
    pub protocol: Protocol,
}

/// Members found by DNS, per service name: the `discover.dns` name that gave them
/// (a set answering another name than the config's now is ignored) and their URLs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered(pub HashMap<String, (String, Vec<BackendUrl>)>);

impl Discovered {
    /// Service `name`'s members, if its config still follows the name they answer.
    fn members(&self, name: &str, service: &Config) -> &[BackendUrl] {
        match (self.0.get(name), &service.discover) {
            (Some((dns, urls)), Some(d)) if *dns == d.dns => urls,
            _ => &[],
        }
    }
}

/// Service `name`'s config backends (`service` is its settings), then its members
/// from DNS, with the overlay entries of that service applied, in config order,
/// then DNS order, then admin order.
pub fn desired(
    name: &str,
    service: &Config,
    overlay: &Overlay,
    discovered: &Discovered,
) -> Vec<Desired> {
    let mut out: Vec<Desired> = service
        .backends
        .iter()
        .map(|b| Desired {
            key: scoped_key(name, &b.url.parsed.key()),
            url: b.url.raw.clone(),
            target: b.url.parsed.clone(),
            weight: b.weight.0,
            source: BackendSource::Config,
            health_path: b.health_check_path.clone(),
            protocol: b.protocol,
        })
        .collect();
    for target in discovered.members(name, service) {
        let key = scoped_key(name, &target.key());
        if out.iter().any(|d| d.key == key) {
            continue; // a fixed backend with the same address keeps its settings
        }
        out.push(Desired {
            key,
            url: target.to_string(),
            target: target.clone(),
            weight: 1,
            source: BackendSource::Dns,
            health_path: None,
            protocol: Protocol::Http1,
        });
    }
    let mut admin: Vec<_> = overlay
        .entries
        .iter()
        .filter(|(k, _)| split_key(k).0 == name)
        .collect();
    admin.sort_by_key(|(_, e)| e.seq);
    for (key, entry) in admin {
        let pos = out.iter().position(|d| &d.key == key);
        match entry.op {
            OverlayOp::Remove => {
                if let Some(i) = pos {
                    out.remove(i);
                }
            }
            OverlayOp::Add => {
                let Ok(target) = validate::backend_url(&entry.url) else {
                    continue;
                };
                match pos {
                    Some(i) => {
                        out[i].weight = entry.weight;
                        out[i].source = BackendSource::Admin;
                    }
                    None => out.push(Desired {
                        key: key.clone(),
                        url: entry.url.clone(),
                        target,
                        weight: entry.weight,
                        source: BackendSource::Admin,
                        health_path: None,
                        protocol: Protocol::Http1,
                    }),
                }
            }
        }
    }
    out
}

/// Every service's desired set, `default` first.
pub fn desired_all(config: &Config, overlay: &Overlay, discovered: &Discovered) -> Vec<Desired> {
    config
        .service_names()
        .into_iter()
        .filter_map(|n| Some(desired(n, &config.service_config(n)?, overlay, discovered)))
        .flatten()
        .collect()
}

/// What a rebuild changes, by backend key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Present before and after with a different weight, source or health path.
    pub changed: Vec<String>,
    pub kept: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares the current members with a desired set.
pub fn diff<'a>(old: impl Iterator<Item = &'a Member>, new: &[Desired]) -> Diff {
    let old: Vec<&Member> = old.collect();
    let old_by_key: HashMap<&str, &Member> = old.iter().map(|m| (&*m.backend.key, *m)).collect();
    let new_keys: std::collections::HashSet<&str> = new.iter().map(|n| n.key.as_str()).collect();
    let mut d = Diff::default();
    for n in new {
        match old_by_key.get(n.key.as_str()) {
            None => d.added.push(n.key.clone()),
            Some(m) => {
                if m.weight != n.weight
                    || m.source != n.source
                    || m.health_path.as_deref() != n.health_path.as_deref()
                    || m.protocol != n.protocol
                {
                    d.changed.push(n.key.clone());
                } else {
                    d.kept.push(n.key.clone());
                }
            }
        }
    }
    for m in old {
        if !new_keys.contains(&*m.backend.key) {
            d.removed.push(m.backend.key.to_string());
        }
    }
    d
}

impl Snapshot {
    /// An empty snapshot (before the first config is applied).
    pub fn empty(config: Arc<Config>) -> Self {
        let service = Service {
            name: DEFAULT_SERVICE.into(),
            balancer: balance::build(&config, &[]),
            config: config.clone(),
            members: Vec::new(),
            limiter: None,
        };
        Self {
            generation: 0,
            config,
            services: vec![service],
            router: None,
            route_limiters: Vec::new(),
            limiter: None,
            overlay_version: 0,
        }
    }

    /// Builds the snapshot for `config` + `overlay`, taking live backends from
    /// `reuse` (by scoped key) when it has them, and rate limiters from `limiters`.
    pub fn build(
        generation: u64,
        config: Arc<Config>,
        overlay: &Overlay,
        limiters: Limiters,
        reuse: &dyn Fn(&str) -> Option<Arc<Backend>>,
    ) -> Self {
        let discovered = Discovered::default();
        Self::build_after(
            generation,
            config,
            (overlay, &discovered),
            limiters,
            reuse,
            None,
        )
    }

    /// [`Snapshot::build`] after `old`, whose route counters carry over, with the
    /// members found by DNS beside the overlay.
    pub fn build_after(
        generation: u64,
        config: Arc<Config>,
        (overlay, discovered): (&Overlay, &Discovered),
        limiters: Limiters,
        reuse: &dyn Fn(&str) -> Option<Arc<Backend>>,
        old: Option<&Snapshot>,
    ) -> Self {
        let mut limiters = limiters;
        let joining = old.is_some_and(|o| o.generation > 0);
        let names = config.service_names();
        let services: Vec<Service> = names
            .iter()
            .map(|&name| {
                let sc = Arc::new(config.service_config(name).unwrap_or_default());
                let members: Vec<Member> = desired(name, &sc, overlay, discovered)
                    .into_iter()
                    .map(|d| {
                        let backend = reuse(&d.key).unwrap_or_else(|| {
                            let b = Backend::in_service(&d.url, d.target.clone(), name);
                            // Joined a running proxy: slow start (the first set,
                            // at start-up, takes traffic at once).
                            if joining {
                                b.start_ramp(Instant::now());
                            }
                            b
                        });
                        Member {
                            backend,
                            weight: d.weight,
                            source: d.source,
                            health_path: d.health_path.map(Into::into),
                            protocol: d.protocol,
                        }
                    })
                    .collect();
                Service {
                    name: name.into(),
                    balancer: balance::build(&sc, &members),
                    limiter: limiters.services.remove(name),
                    config: sc,
                    members,
                }
            })
            .collect();
        let router = (!config.routes.is_empty()).then(|| {
            Router::build(
                &config.routes,
                &|n| names.iter().position(|x| *x == n),
                old.and_then(|o| o.router.as_ref()),
            )
        });
        let route_limiters = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| limiters.routes.remove(&r.label(i)))
            .collect();
        Self {
            generation,
            config,
            services,
            router,
            route_limiters,
            limiter: limiters.proxy,
            overlay_version: overlay.version,
        }
    }

    /// The service unmatched requests go to (always present).
    pub fn default_service(&self) -> &Service {
        &self.services[0]
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| &*s.name == name)
    }

    /// Every member of every service, with its service.
    pub fn all_members(&self) -> impl Iterator<Item = (&Service, &Member)> {
        self.services
            .iter()
            .flat_map(|s| s.members.iter().map(move |m| (s, m)))
    }

    /// A member by scoped key, with its service.
    pub fn find(&self, key: &str) -> Option<(&Service, &Member)> {
        let svc = self.service(split_key(key).0)?;
        Some((svc, svc.find(key)?))
    }

    /// Every rate limiter in force.
    pub fn limiters(&self) -> Vec<Arc<RateLimiter>> {
        self.limiter
            .iter()
            .chain(self.services.iter().filter_map(|s| s.limiter.as_ref()))
            .chain(self.route_limiters.iter().flatten())
            .cloned()
            .collect()
    }
}

impl Service {
    pub fn find(&self, key: &str) -> Option<&Member> {
        self.members.iter().find(|m| &*m.backend.key == key)
    }

    /// Picks a backend for a request, skipping the indexes in `exclude` (already
    /// tried). Below the panic threshold of available backends, health and
    /// ejections are ignored and traffic spreads over every backend whose circuit
    /// is not open (see `panic_threshold` in the config).
    pub fn pick(&self, exclude: &[usize], now: Instant) -> Option<usize> {
        self.pick_keyed(exclude, None, now)
    }

    /// The request's key hash when this service hashes requests onto a ring
    /// (`consistent-hash`); `None` at once for the other strategies.
    pub fn request_key(
        &self,
        headers: &http::HeaderMap,
        path: &str,
        client: IpAddr,
    ) -> Option<u64> {
        if self.config.strategy() != Strategy::ConsistentHash {
            return None;
        }
        crate::route::key_hash(&self.config.consistent_hash.key, headers, path, client)
    }

    /// [`Service::pick`] for a request whose key hashed to `key` (see
    /// [`Service::request_key`]).
    pub fn pick_keyed(&self, exclude: &[usize], key: Option<u64>, now: Instant) -> Option<usize> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        // Availability once per member (the balancer would otherwise ask again).
        let available: SmallVec<[bool; 16]> = self
            .members
            .iter()
            .map(|m| m.backend.available(now, &self.config))
            .collect();
        let threshold = self.config.panic_threshold.as_usize();
        if threshold > 0 {
            let up = available.iter().filter(|&&a| a).count();
            if up * 100 < threshold * n {
                let ok = |i: usize| {
                    !exclude.contains(&i)
                        && self.members[i].backend.routable_in_panic(now, &self.config)
                };
                return self.balancer.pick_keyed(&self.members, &ok, key, now);
            }
        }
        let ok = |i: usize| available[i] && !exclude.contains(&i);
        self.balancer.pick_keyed(&self.members, &ok, key, now)
    }
}

impl Backend {
    /// Accounts one attempt that began at `started` and ended now, under `snap`'s
    /// policies (see [`Backend::account`]). `probe`: a half-open circuit probe.
    pub fn record(
        &self,
        outcome: Outcome,
        started: Instant,
        probe: bool,
        snap: &Service,
    ) -> Recorded {
        self.record_at(outcome, started, Instant::now(), probe, snap)
    }

    /// [`Backend::record`] for an attempt that ended at `now` (a clock reading
    /// the caller already has).
    pub fn record_at(
        &self,
        outcome: Outcome,
        started: Instant,
        now: Instant,
        probe: bool,
        snap: &Service,
    ) -> Recorded {
        self.account(outcome, started, now, probe, &snap.config, &snap.members)
    }
}

/// The breaker, ejection backoff, the ejection cap and the panic threshold, on
/// paused time, through a snapshot's backends.
#[cfg(test)]
mod resilience_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::state::OverlayEntry;

    fn cfg(yaml: &str) -> Config {
        config::parse(yaml, "t.yaml").unwrap()
    }

    fn overlay(entries: &[(&str, OverlayOp, u32)]) -> Overlay {
        let mut o = Overlay::default();
        for (url, op, weight) in entries {
            o.version += 1;
            let key = validate::backend_url(url).unwrap().key();
            o.entries.insert(
                key,
                OverlayEntry {
                    url: url.to_string(),
                    op: *op,
                    weight: *weight,
                    seq: o.version,
                },
            );
        }
        o
    }

    #[test]
    fn dns_members_join_after_fixed_ones_and_the_overlay_still_applies() {
        let c = cfg(
            "services:\n  api:\n    backends: [{url: 'http://10.0.0.1:80', weight: 4}]\n    discover: {dns: 'api.internal:80'}\n",
        );
        let api = c.service_config("api").unwrap();
        let found = |dns: &str| {
            let urls = [
                "http://10.0.0.1:80",
                "http://10.0.0.2:80",
                "http://10.0.0.3:80",
            ]
            .map(|u| validate::backend_url(u).unwrap());
            Discovered(HashMap::from([(
                "api".to_string(),
                (dns.to_string(), urls.to_vec()),
            )]))
        };
        let mut o = Overlay {
            version: 1,
            ..Default::default()
        };
        o.entries.insert(
            "api|http://10.0.0.3:80".into(),
            OverlayEntry {
                url: "http://10.0.0.3:80".into(),
                op: OverlayOp::Remove,
                weight: 1,
                seq: 1,
            },
        );
        let d = desired("api", &api, &o, &found("api.internal:80"));
        let got: Vec<_> = d
            .iter()
            .map(|d| (d.key.as_str(), d.weight, d.source))
            .collect();
        // The fixed backend keeps its weight; the removed address stays out.
        assert_eq!(
            got,
            vec![
                ("api|http://10.0.0.1:80", 4, BackendSource::Config),
                ("api|http://10.0.0.2:80", 1, BackendSource::Dns),
            ]
        );
        // An answer for a name the config no longer follows is ignored.
        let stale = desired("api", &api, &Overlay::default(), &found("old.internal:80"));
        assert_eq!(stale.len(), 1);
        // As are answers for a service without `discover`.
        let plain = cfg("backends: [{url: 'http://10.0.0.1:80'}]\n");
        let none = desired(
            DEFAULT_SERVICE,
            &plain,
            &Overlay::default(),
            &found("api.internal:80"),
        );
        assert_eq!(none.len(), 1);
    }

    #[test]
    fn overlay_adds_removes_and_reweights() {
        let c = cfg("backends:\n  - url: http://a:80\n  - url: http://b:80\n    weight: 2\n");
        let o = overlay(&[
            ("http://c:80", OverlayOp::Add, 3),
            ("http://a:80", OverlayOp::Remove, 1),
            ("http://b", OverlayOp::Add, 5),
        ]);
        let d = desired(DEFAULT_SERVICE, &c, &o, &Discovered::default());
        let keys: Vec<_> = d
            .iter()
            .map(|d| (d.key.as_str(), d.weight, d.source))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("http://b:80", 5, BackendSource::Admin),
                ("http://c:80", 3, BackendSource::Admin)
            ]
        );
    }

    fn members_of(c: &Config) -> Vec<Member> {
        let snap = Snapshot::build(
            1,
            Arc::new(c.clone()),
            &Overlay::default(),
            Limiters::default(),
            &|_| None,
        );
        snap.services.into_iter().next().unwrap().members
    }

    #[test]
    fn diff_names_added_removed_changed_kept() {
        let old = members_of(&cfg(
            "backends:\n  - url: http://a:80\n  - url: http://b:80\n  - url: http://c:80\n",
        ));
        let new_cfg = cfg(
            "backends:\n  - url: http://a:80\n  - url: http://b:80\n    weight: 4\n  - url: http://d:80\n",
        );
        let d = diff(
            old.iter(),
            &desired_all(&new_cfg, &Overlay::default(), &Discovered::default()),
        );
        assert_eq!(d.added, vec!["http://d:80"]);
        assert_eq!(d.removed, vec!["http://c:80"]);
        assert_eq!(d.changed, vec!["http://b:80"]);
        assert_eq!(d.kept, vec!["http://a:80"]);
        assert!(!d.is_empty());
        let same = diff(
            old.iter(),
            &desired_all(
                &cfg(
                    "backends:\n  - url: http://a:80\n  - url: http://b:80\n  - url: http://c:80\n",
                ),
                &Overlay::default(),
                &Discovered::default(),
            ),
        );
        assert!(same.is_empty());
    }

    #[test]
    fn services_have_their_own_members_keys_and_settings() {
        let c = cfg(
            "backends:\n  - url: http://a:80\ntimeouts:\n  request: 5s\nservices:\n  api:\n    strategy: least-connections\n    backends:\n      - url: http://a:80\n      - url: http://b:80\n    timeouts:\n      request: 1s\n",
        );
        let mut o = Overlay {
            version: 1,
            ..Overlay::default()
        };
        o.entries.insert(
            scoped_key("api", "http://c:80"),
            crate::state::OverlayEntry {
                url: "http://c:80".into(),
                op: OverlayOp::Add,
                weight: 2,
                seq: 1,
            },
        );
        let snap = Snapshot::build(1, Arc::new(c), &o, Limiters::default(), &|_| None);
        let names: Vec<_> = snap.services.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["default", "api"]);
        let keys = |i: usize| -> Vec<String> {
            snap.services[i]
                .members
                .iter()
                .map(|m| m.backend.key.to_string())
                .collect()
        };
        // `default` keeps plain keys (its cluster state keeps its Redis keys).
        assert_eq!(keys(0), ["http://a:80"]);
        assert_eq!(
            keys(1),
            ["api|http://a:80", "api|http://b:80", "api|http://c:80"]
        );
        let api = snap.service("api").unwrap();
        assert_eq!(api.config.timeouts.request, crate::config::Dur::secs(1));
        assert_eq!(
            api.config.strategy(),
            crate::config::Strategy::LeastConnections
        );
        assert_eq!(
            snap.default_service().config.timeouts.request,
            crate::config::Dur::secs(5)
        );
        let (svc, m) = snap.find("api|http://c:80").unwrap();
        assert_eq!((&*svc.name, m.weight), ("api", 2));
        assert!(!Arc::ptr_eq(
            &keys_backend(&snap, 0),
            &keys_backend(&snap, 1)
        ));
    }

    fn keys_backend(snap: &Snapshot, service: usize) -> Arc<Backend> {
        snap.services[service].members[0].backend.clone()
    }

    #[test]
    fn rebuild_reuses_live_backends() {
        let c = Arc::new(cfg(
            "backends:\n  - url: http://a:80\n  - url: http://b:80\n",
        ));
        let first = Snapshot::build(
            1,
            c.clone(),
            &Overlay::default(),
            Limiters::default(),
            &|_| None,
        );
        let second = Snapshot::build(2, c, &Overlay::default(), Limiters::default(), &|k| {
            first.find(k).map(|(_, m)| m.backend.clone())
        });
        for ((_, a), (_, b)) in first.all_members().zip(second.all_members()) {
            assert!(Arc::ptr_eq(&a.backend, &b.backend));
        }
    }
}
