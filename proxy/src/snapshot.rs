//! The immutable view every request reads: config, members and balancer, built
//! together and swapped whole (one `ArcSwap` store), so no request ever sees the
//! backends of one version with the settings of another.
//!
//! The running set is the config's backends with the admin overlay on top:
//! an overlay `add` puts a backend in (or changes its weight) whatever the config
//! says, an overlay `remove` takes it out whatever the config says. Backends are
//! matched by key across rebuilds, so a kept backend keeps its live state.

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

use switchyard_shared::BackendSource;
use switchyard_shared::validate::{self, BackendUrl};
use tokio::time::Instant;

use crate::backend::{Backend, Member, Outcome, Recorded};
use crate::balance::{self, Balance};
use crate::config::{Config, Protocol};
use crate::ratelimit::RateLimiter;
use crate::state::{Overlay, OverlayOp};

pub struct Snapshot {
    /// Increases with every rebuild (config change or membership change).
    pub generation: u64,
    pub config: Arc<Config>,
    pub members: Vec<Member>,
    pub balancer: Box<dyn Balance>,
    pub limiter: Option<Arc<RateLimiter>>,
    /// Overlay version this snapshot reflects.
    pub overlay_version: u64,
}

/// A backend the running set should contain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub key: String,
    pub url: String,
    pub target: BackendUrl,
    pub weight: u32,
    pub source: BackendSource,
    pub health_path: Option<String>,
    pub protocol: Protocol,
}

/// Config backends with the overlay applied, in config order then admin order.
pub fn desired(config: &Config, overlay: &Overlay) -> Vec<Desired> {
    let mut out: Vec<Desired> = config
        .backends
        .iter()
        .map(|b| Desired {
            key: b.url.parsed.key(),
            url: b.url.raw.clone(),
            target: b.url.parsed.clone(),
            weight: b.weight.0,
            source: BackendSource::Config,
            health_path: b.health_check_path.clone(),
            protocol: b.protocol,
        })
        .collect();
    let mut admin: Vec<_> = overlay.entries.iter().collect();
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
pub fn diff(old: &[Member], new: &[Desired]) -> Diff {
    let old_by_key: HashMap<&str, &Member> = old.iter().map(|m| (&*m.backend.key, m)).collect();
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
        if !new.iter().any(|n| *n.key == *m.backend.key) {
            d.removed.push(m.backend.key.to_string());
        }
    }
    d
}

impl Snapshot {
    /// An empty snapshot (before the first config is applied).
    pub fn empty(config: Arc<Config>) -> Self {
        Self {
            generation: 0,
            balancer: balance::build(&config, &[]),
            config,
            members: Vec::new(),
            limiter: None,
            overlay_version: 0,
        }
    }

    /// Builds the snapshot for `config` + `overlay`, taking live backends from
    /// `reuse` when it has them.
    pub fn build(
        generation: u64,
        config: Arc<Config>,
        overlay: &Overlay,
        limiter: Option<Arc<RateLimiter>>,
        reuse: &dyn Fn(&str) -> Option<Arc<Backend>>,
    ) -> Self {
        let members: Vec<Member> = desired(&config, overlay)
            .into_iter()
            .map(|d| {
                let backend =
                    reuse(&d.key).unwrap_or_else(|| Backend::new(&d.url, d.target.clone()));
                Member {
                    backend,
                    weight: d.weight,
                    source: d.source,
                    health_path: d.health_path.map(Into::into),
                    protocol: d.protocol,
                }
            })
            .collect();
        Self {
            generation,
            balancer: balance::build(&config, &members),
            config,
            members,
            limiter,
            overlay_version: overlay.version,
        }
    }

    pub fn find(&self, key: &str) -> Option<&Member> {
        self.members.iter().find(|m| &*m.backend.key == key)
    }

    /// Picks a backend for a request, skipping the indexes in `exclude` (already
    /// tried). Below the panic threshold of available backends, health and
    /// ejections are ignored and traffic spreads over every backend whose circuit
    /// is not open (see `panic_threshold` in the config).
    pub fn pick(&self, exclude: &[usize], now: Instant) -> Option<usize> {
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
                return self.balancer.pick(&self.members, &ok, now);
            }
        }
        let ok = |i: usize| available[i] && !exclude.contains(&i);
        self.balancer.pick(&self.members, &ok, now)
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
        snap: &Snapshot,
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
        snap: &Snapshot,
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
    fn overlay_adds_removes_and_reweights() {
        let c = cfg("backends:\n  - url: http://a:80\n  - url: http://b:80\n    weight: 2\n");
        let o = overlay(&[
            ("http://c:80", OverlayOp::Add, 3),
            ("http://a:80", OverlayOp::Remove, 1),
            ("http://b", OverlayOp::Add, 5),
        ]);
        let d = desired(&c, &o);
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
        let snap = Snapshot::build(1, Arc::new(c.clone()), &Overlay::default(), None, &|_| None);
        snap.members
    }

    #[test]
    fn diff_names_added_removed_changed_kept() {
        let old = members_of(&cfg(
            "backends:\n  - url: http://a:80\n  - url: http://b:80\n  - url: http://c:80\n",
        ));
        let new_cfg = cfg(
            "backends:\n  - url: http://a:80\n  - url: http://b:80\n    weight: 4\n  - url: http://d:80\n",
        );
        let d = diff(&old, &desired(&new_cfg, &Overlay::default()));
        assert_eq!(d.added, vec!["http://d:80"]);
        assert_eq!(d.removed, vec!["http://c:80"]);
        assert_eq!(d.changed, vec!["http://b:80"]);
        assert_eq!(d.kept, vec!["http://a:80"]);
        assert!(!d.is_empty());
        let same = diff(
            &old,
            &desired(
                &cfg(
                    "backends:\n  - url: http://a:80\n  - url: http://b:80\n  - url: http://c:80\n",
                ),
                &Overlay::default(),
            ),
        );
        assert!(same.is_empty());
    }

    #[test]
    fn rebuild_reuses_live_backends() {
        let c = Arc::new(cfg(
            "backends:\n  - url: http://a:80\n  - url: http://b:80\n",
        ));
        let first = Snapshot::build(1, c.clone(), &Overlay::default(), None, &|_| None);
        let second = Snapshot::build(2, c, &Overlay::default(), None, &|k| {
            first.find(k).map(|m| m.backend.clone())
        });
        for (a, b) in first.members.iter().zip(&second.members) {
            assert!(Arc::ptr_eq(&a.backend, &b.backend));
        }
    }
}
