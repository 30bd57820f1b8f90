//! Read-only views the admin API and the dashboard stream share.

use std::sync::atomic::Ordering::Relaxed;

use switchyard_shared::{ClusterView, DashboardSnapshot, RateLimitView, Totals};

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
        strategy: snap.config.strategy().as_str().to_string(),
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
    }
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
