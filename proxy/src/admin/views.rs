//! Read-only views the admin API and the dashboard stream share.

use std::sync::atomic::Ordering::Relaxed;

use switchyard_shared::{
    ClusterView, DashboardSnapshot, RateLimitView, RouteView, ServiceView, Totals,
};
use tokio::time::Instant;

use super::AdminState;
use crate::app::App;
use crate::events::now_ms;

pub fn dashboard_snapshot(s: &AdminState) -> DashboardSnapshot {
    let app = &s.app;
    let snap = app.snapshot();
    let m = &app.metrics;
    let status = m.status_classes();
    DashboardSnapshot {
        at_ms: now_ms(),
        replica_id: app.replica.id.clone(),
        version: app.replica.version.to_string(),
        strategy: snap
            .default_service()
            .config
            .strategy()
            .as_str()
            .to_string(),
        backends: app.backend_views(),
        cluster: cluster_view(app),
        config: app.config_status(),
        rate_limit: rate_limit_view(app),
        totals: Totals {
            requests: m.requests.load(Relaxed),
            errors: status[4],
            in_flight: m.in_flight.load(Relaxed),
            rate_limited: m.rate_limited.load(Relaxed),
            retries: m.retries.load(Relaxed),
        },
        events: app.events.recent(),
        auth_required: s.token.is_some(),
        tls: s.tls.as_ref().map(|t| t.view()),
        services: services(app),
        routes: routes(app),
    }
}

/// Every service, `default` first.
pub fn services(app: &App) -> Vec<ServiceView> {
    let snap = app.snapshot();
    let now = Instant::now();
    let mut discovery = app.discovery();
    snap.services
        .iter()
        .map(|s| ServiceView {
            discovery: s.config.discover.as_ref().map(|d| {
                let mut v = discovery.remove(&*s.name).unwrap_or_default();
                if v.dns != d.dns {
                    // Not yet resolved since the name changed.
                    v.members = 0;
                    v.last_resolved_ms = 0;
                    v.dns = d.dns.clone();
                }
                v
            }),
            name: s.name.to_string(),
            strategy: s.config.strategy().as_str().to_string(),
            backends: s.members.len(),
            available: s
                .members
                .iter()
                .filter(|m| m.backend.available(now, &s.config))
                .count(),
            health_checks: s.config.health_check.is_some(),
            rate_limited: s.limiter.is_some(),
        })
        .collect()
}

/// The route table in evaluation order.
pub fn routes(app: &App) -> Vec<RouteView> {
    let snap = app.snapshot();
    snap.config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let m = &r.matches;
            let mut conds = Vec::new();
            let mut push = |k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    conds.push(format!("{k}={v}"));
                }
            };
            push("host", &m.host);
            push("path", &m.path);
            push("path_prefix", &m.path_prefix);
            push("path_segment_prefix", &m.path_segment_prefix);
            if !m.method.is_empty() {
                conds.push(format!("method={}", m.method.0.join(",")));
            }
            let show = |v: &crate::config::routes::ValueMatch| match v {
                crate::config::routes::ValueMatch::Present => "*".to_string(),
                crate::config::routes::ValueMatch::Absent => "!".to_string(),
                crate::config::routes::ValueMatch::Exact(x) => x.clone(),
            };
            for (k, v) in &m.headers {
                conds.push(format!("header:{k}={}", show(v)));
            }
            for (k, v) in &m.query {
                conds.push(format!("query:{k}={}", show(v)));
            }
            let (action, services, detail) = if let Some(svc) = &r.service {
                ("service", vec![(svc.clone(), 1)], String::new())
            } else if !r.split.is_empty() {
                let to = r
                    .split
                    .iter()
                    .map(|t| (t.service.clone(), t.weight.get() as u32))
                    .collect();
                let sticky = r.sticky.as_ref().map(|k| format!("sticky {k}"));
                ("split", to, sticky.unwrap_or_default())
            } else if let Some(rd) = &r.redirect {
                (
                    "redirect",
                    Vec::new(),
                    format!("{} {}", rd.status.get(), rd.location),
                )
            } else if let Some(f) = &r.respond {
                ("respond", Vec::new(), format!("{}", f.status.get()))
            } else {
                ("service", Vec::new(), String::new())
            };
            RouteView {
                index: i,
                name: r.label(i),
                matches: if conds.is_empty() {
                    "*".into()
                } else {
                    conds.join(" ")
                },
                action: action.into(),
                services,
                detail,
            }
        })
        .collect()
}

pub fn rate_limit_view(app: &App) -> RateLimitView {
    let snap = app.snapshot();
    match &snap.limiter {
        None => RateLimitView {
            enabled: false,
            mode: "off".into(),
            ..Default::default()
        },
        Some(l) => RateLimitView {
            enabled: true,
            requests_per_second: l.config.requests_per_second.0,
            burst: l.config.burst.as_u64(),
            key: l.config.key.to_string(),
            admitted: l.admitted.load(Relaxed),
            rejected: l.rejected.load(Relaxed),
            mode: rate_limit_mode(app).into(),
        },
    }
}

fn rate_limit_mode(app: &App) -> &'static str {
    use crate::config::OnStoreError;
    let c = &app.cluster;
    if !c.clustered {
        "local"
    } else if c.link.store_ok.load(Relaxed) {
        "cluster"
    } else {
        match c.link.on_error {
            OnStoreError::Local => "local-fallback",
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        }
    }
}

pub fn cluster_view(app: &App) -> ClusterView {
    crate::cluster::view(app)
}
