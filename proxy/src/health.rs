//! Active health checks: each backend in the running set is probed with
//! `GET health_check.path` (or its own `health_check_path`) on a fresh connection
//! every `interval`, shortened by a random share of up to `jitter` so replicas and
//! backends do not probe in lockstep (shortened, never lengthened, so detection
//! stays within `interval × unhealthy_threshold` plus the first interval).
//!
//! Verdicts: `unchecked` (no checks, or none concluded; routable) → `healthy` on a
//! passing probe; `unhealthy` after `unhealthy_threshold` failures in a row; back to
//! `healthy` after `healthy_threshold` passes in a row. A pass is an answer within
//! `timeout` whose status is in `expected_status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::{HeaderMap, Request, header};
use http_body_util::BodyExt;
use switchyard_http1::{Exchange, SendError};
use switchyard_shared::{EventKind, HealthStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::backend::Backend;
use crate::config::StatusRanges;
use crate::forward::body::ReqBody;
use crate::forward::pool;
use crate::state::Decision;

/// A backend's verdict (kept with the backend's other state).
pub use crate::backend::HealthCell;

/// Keeps one probe loop per backend in the running set, following reloads and
/// membership changes.
pub async fn supervise(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut loops: HashMap<Arc<str>, (Arc<Backend>, JoinHandle<()>)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let snap = app.snapshot();
        // Per service: a backend is probed while its service has health checks.
        loops.retain(|key, (b, h)| {
            let keep = snap.find(key).is_some_and(|(s, m)| {
                Arc::ptr_eq(&m.backend, b) && s.config.health_check.is_some()
            }) && !h.is_finished();
            if !keep {
                h.abort();
                if snap
                    .find(key)
                    .is_some_and(|(s, _)| s.config.health_check.is_none())
                {
                    b.health.set(HealthStatus::Unchecked, None);
                }
            }
            keep
        });
        for (s, m) in snap.all_members() {
            if s.config.health_check.is_some() && !loops.contains_key(&m.backend.key) {
                let h = tokio::spawn(probe_loop(app.clone(), m.backend.clone()));
                loops.insert(m.backend.key.clone(), (m.backend.clone(), h));
            }
        }
    }
    for (_, (_, h)) in loops {
        h.abort();
    }
}

async fn probe_loop(app: Arc<App>, backend: Arc<Backend>) {
    let mut first = true;
    loop {
        let snap = app.snapshot();
        let Some((service, member)) = snap.find(&backend.key) else {
            return;
        };
        let Some(cfg) = service.config.health_check.clone() else {
            return;
        };
        let path = member
            .health_path
            .as_deref()
            .unwrap_or(&cfg.path)
            .to_string();
        drop(snap);
        let interval = cfg.interval.get();
        let wait = if first {
            // Spread the first probes over one interval.
            interval.mul_f64(fastrand::f64())
        } else {
            interval.mul_f64(1.0 - cfg.jitter.0 * fastrand::f64())
        };
        first = false;
        tokio::time::sleep(wait).await;
        // In a cluster one replica probes each backend (a lease renewed each round)
        // and shares the verdicts; without the store every replica probes itself.
        if app.cluster.clustered && app.store.is_connected() {
            let lease = app
                .store
                .try_lease(
                    format!("hc:{}", backend.key),
                    app.replica.id.clone(),
                    interval.mul_f64(1.5),
                )
                .await;
            if matches!(lease, Ok(false)) {
                continue;
            }
        }
        // Validated at load; the fallback only keeps this total.
        let expected =
            StatusRanges::parse(&cfg.expected_status).unwrap_or_else(|_| StatusRanges::success());
        let (pass, detail) = match probe(&backend, &path, cfg.timeout.get()).await {
            Ok(status) if expected.contains(status) => {
                (true, format!("GET {path} answered {status}"))
            }
            Ok(status) => (false, format!("GET {path} answered {status}")),
            Err(e) => (false, format!("GET {path}: {e}")),
        };
        if let Some(status) = backend.health.observe(
            pass,
            &detail,
            cfg.healthy_threshold.as_u32(),
            cfg.unhealthy_threshold.as_u32(),
        ) {
            app.metrics.health_transitions.fetch_add(1, Relaxed);
            let msg = match status {
                HealthStatus::Unhealthy => format!("backend {} unhealthy: {detail}", backend.key),
                _ => format!("backend {} healthy: {detail}", backend.key),
            };
            app.events
                .emit(EventKind::HealthChanged, Some(&backend.key), msg);
            // In a cluster the other replicas follow this replica's verdict.
            app.publish(
                &backend.key,
                Decision::Health {
                    status,
                    reason: backend.health.reason(),
                },
            );
        }
    }
}

/// One probe on a fresh connection (so a broken listener is noticed, not hidden by
/// a pooled connection).
async fn probe(backend: &Backend, path: &str, timeout: Duration) -> Result<u16, String> {
    let work = async {
        let conn = pool::connect(backend, timeout)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (parts, ()) = Request::get(path)
            .header(header::USER_AGENT, "switchyard-health-check")
            .header(header::CONNECTION, "close")
            .body(())
            .map_err(|e| e.to_string())?
            .into_parts();
        let host = Some(&backend.authority);
        let exchange =
            Exchange::start(conn, &parts, host, &HeaderMap::new(), ReqBody::Empty, false)
                .map_err(|e| e.to_string())?;
        let resp = exchange.await.map_err(|e| match e {
            SendError::Failed(e) => e.to_string(),
            SendError::Stale(_) => "connection closed".to_string(),
        })?;
        let status = resp.status().as_u16();
        // Read (and discard) a bounded body so the connection ends cleanly.
        let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await;
        Ok(status)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
