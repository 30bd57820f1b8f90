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
use crate::config::{HealthKind, StatusRanges, UpstreamHttp2};
use crate::forward::body::ReqBody;
use crate::forward::{grpc, h2, pool};
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
        let (pass, detail) = match cfg.kind {
            HealthKind::Http => {
                // Validated at load; the fallback only keeps this total.
                let expected = StatusRanges::parse(&cfg.expected_status)
                    .unwrap_or_else(|_| StatusRanges::success());
                match probe(&backend, &path, cfg.timeout.get()).await {
                    Ok(status) if expected.contains(status) => {
                        (true, format!("GET {path} answered {status}"))
                    }
                    Ok(status) => (false, format!("GET {path} answered {status}")),
                    Err(e) => (false, format!("GET {path}: {e}")),
                }
            }
            HealthKind::Grpc => {
                let h2 = app.snapshot().config.upstream.http2.clone();
                let service = &cfg.service;
                match grpc_probe(&backend, service, cfg.timeout.get(), &h2).await {
                    Ok(status) => (
                        status == "SERVING",
                        format!("grpc health check of {service:?} answered {status}"),
                    ),
                    Err(e) => (false, format!("grpc health check of {service:?}: {e}")),
                }
            }
        };
        let before = backend.health.status();
        if let Some(status) = backend.health.observe(
            pass,
            &detail,
            cfg.healthy_threshold.as_u32(),
            cfg.unhealthy_threshold.as_u32(),
        ) {
            app.metrics.health_transitions.fetch_add(1, Relaxed);
            backend.health_changed(before, status, tokio::time::Instant::now());
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

/// The path of the standard gRPC health check (grpc.health.v1).
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// One `grpc.health.v1.Health/Check` for `service` on a fresh HTTP/2 connection
/// (h2c for `http://` backends, h2 for `https://`): the serving status's name
/// (`SERVING`, `NOT_SERVING`, `SERVICE_UNKNOWN`, `UNKNOWN`), or why there is
/// none (a non-OK `grpc-status` included).
async fn grpc_probe(
    backend: &Backend,
    service: &str,
    timeout: Duration,
    h2cfg: &UpstreamHttp2,
) -> Result<&'static str, String> {
    let work = async {
        let send = h2::dial_once(backend, timeout, h2cfg)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let scheme = match backend.target.scheme {
            switchyard_shared::validate::Scheme::Http => "http",
            switchyard_shared::validate::Scheme::Https => "https",
        };
        let uri = format!(
            "{scheme}://{}{GRPC_HEALTH_CHECK}",
            backend.target.authority()
        );
        let req = Request::post(uri)
            .version(http::Version::HTTP_2)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .header(header::USER_AGENT, "switchyard-health-check")
            .body(ReqBody::Full(Some(grpc_health_request(service))))
            .map_err(|e| e.to_string())?;
        let resp = h2::request_once(&send, req)
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status().as_u16()));
        }
        let head_status = grpc::status(resp.headers());
        let collected = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let trailer_status = collected.trailers().and_then(grpc::status);
        match trailer_status.or(head_status) {
            Some(0) => {}
            Some(code) => {
                return Err(format!(
                    "grpc-status {code} ({})",
                    crate::backend::grpc_code_name(code)
                ));
            }
            None => return Err("no grpc-status".into()),
        }
        Ok(serving_status(&collected.to_bytes()))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// A gRPC message frame holding `HealthCheckRequest { service }` (protobuf
/// field 1, a string).
fn grpc_health_request(service: &str) -> bytes::Bytes {
    let mut msg = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        msg.push(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(msg.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    frame.into()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The `status` of a `HealthCheckResponse` frame (protobuf field 1, an enum);
/// absent means 0, `UNKNOWN`.
fn serving_status(frame: &[u8]) -> &'static str {
    let msg = frame.get(5..).unwrap_or_default();
    let mut i = 0;
    let mut status = 0u64;
    while i < msg.len() {
        let key = msg[i];
        i += 1;
        let read_varint = |i: &mut usize| -> Option<u64> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let b = *msg.get(*i)?;
                *i += 1;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Some(v);
                }
            }
            None
        };
        match (key >> 3, key & 7) {
            (1, 0) => match read_varint(&mut i) {
                Some(v) => status = v,
                None => break,
            },
            // Skip other fields (none are defined; be lenient).
            (_, 0) => {
                if read_varint(&mut i).is_none() {
                    break;
                }
            }
            (_, 2) => match read_varint(&mut i) {
                Some(len) => i = i.saturating_add(len as usize),
                None => break,
            },
            _ => break,
        }
    }
    match status {
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages_round_trip_by_hand() {
        let f = grpc_health_request("svc");
        assert_eq!(&f[..], &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']);
        assert_eq!(&grpc_health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), "SERVING");
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), "NOT_SERVING");
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), "UNKNOWN");
        assert_eq!(serving_status(&[]), "UNKNOWN");
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 0xff]), "UNKNOWN");
    }
}
