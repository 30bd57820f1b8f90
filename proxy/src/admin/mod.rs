//! The admin listener: the seed's endpoints (`/admin/add`, `/admin/remove`,
//! `/metrics`), backend/config/cluster views, health probes and the dashboard.
//! [`router`] is a plain function of the state, so tests drive it with `oneshot`.

mod auth;
mod cors;
pub mod dashboard;
mod json;
pub mod stream;
pub mod views;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use switchyard_shared::validate;
use switchyard_shared::{
    AddBackendRequest, ChangeResponse, ReadyCheck, ReadyView, RemoveBackendRequest,
};

pub use auth::{constant_time_eq, load_token};
pub use json::{AdminError, JsonBody, MAX_BODY};

use crate::app::App;
use crate::state::{MembershipChange, OverlayOp};

#[derive(Clone)]
pub struct AdminState {
    pub app: Arc<App>,
    pub token: Option<String>,
    pub public_read: bool,
    /// Where the dashboard is served from: the copy embedded in the binary, or a
    /// directory (`"dir".into()`).
    pub dashboard_dir: dashboard::Source,
    /// Origins allowed to call the API from a browser (`admin.cors_origins`).
    pub cors_origins: Vec<String>,
    /// The HTTPS side, when configured (`/admin/tls`, TLS metrics).
    pub tls: Option<Arc<crate::tls::Tls>>,
}

pub fn router(state: AdminState) -> Router {
    let read = Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/backends", get(backends))
        .route("/admin/services", get(services))
        .route("/admin/routes", get(routes))
        .route("/admin/config", get(config))
        .route("/admin/cluster", get(cluster))
        .route("/admin/tls", get(tls))
        .route("/admin/certificates", get(tls))
        .route("/admin/events", get(stream::events))
        .route_layer(from_fn_with_state(state.clone(), auth::require_read));
    let write = Router::new()
        .route("/admin/add", post(add))
        .route("/admin/remove", post(remove))
        .route("/admin/reload", post(reload))
        .route_layer(from_fn_with_state(state.clone(), auth::require_write));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/dashboard", get(dashboard::redirect))
        .route("/dashboard/", get(dashboard::index))
        .route("/dashboard/{*path}", get(dashboard::asset))
        .merge(read)
        .merge(write)
        .fallback(not_found)
        .layer(from_fn_with_state(state.clone(), cors::cors))
        .with_state(state)
}

async fn not_found() -> AdminError {
    AdminError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let app = &s.app;
    let store = app.store.status();
    let snap = app.snapshot();
    let stopping = app.shutting_down.load(Relaxed);
    let checks = vec![
        ReadyCheck {
            name: "config".into(),
            ok: true,
            detail: format!("generation {}", app.config_status().generation),
        },
        ReadyCheck {
            name: "store".into(),
            // A replica with an unreachable store still serves on last-known state.
            ok: true,
            detail: if store.connected {
                format!("{} connected", store.kind)
            } else {
                format!("{} unreachable, serving last-known state", store.kind)
            },
        },
        ReadyCheck {
            name: "backends".into(),
            ok: true,
            detail: format!("{} in the running set", snap.all_members().count()),
        },
        ReadyCheck {
            name: "shutdown".into(),
            ok: !stopping,
            detail: if stopping {
                "draining for shutdown".into()
            } else {
                "running".into()
            },
        },
    ];
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(ReadyView { ready, checks })).into_response()
}

async fn metrics(State(s): State<AdminState>, headers: axum::http::HeaderMap) -> Response {
    use crate::telemetry::metrics::Source;
    use crate::telemetry::prometheus::{Format, render};
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    match Format::negotiate(accept) {
        Format::Json => Json(s.app.metrics_entries()).into_response(),
        format => {
            let mut text = String::new();
            s.app.read(&mut |r| text = render(r, format));
            (
                [(axum::http::header::CONTENT_TYPE, format.content_type())],
                text,
            )
                .into_response()
        }
    }
}

/// `GET /admin/tls` (and `/admin/certificates`): certificates served, their
/// sources and expiry, ACME state; 404 when TLS is off.
async fn tls(State(s): State<AdminState>) -> Response {
    match &s.tls {
        Some(t) => Json(t.view()).into_response(),
        None => AdminError::new(StatusCode::NOT_FOUND, "TLS is not configured").into_response(),
    }
}

async fn backends(State(s): State<AdminState>) -> Response {
    Json(s.app.backend_views()).into_response()
}

async fn config(State(s): State<AdminState>) -> Response {
    Json(s.app.config_status_with_replicas()).into_response()
}

/// `POST /admin/reload`: fetch the config source now (a git host's push webhook).
/// The request body is ignored, so any webhook payload will do.
async fn reload(State(s): State<AdminState>, uri: axum::http::Uri) -> Response {
    use crate::gitops::Outcome;
    let Some(handle) = s.app.reloader.get() else {
        return AdminError::new(
            StatusCode::CONFLICT,
            "this replica does not follow a config source",
        )
        .into_response();
    };
    let allow_unrelated = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "allow_unrelated=true"));
    match handle.reload(allow_unrelated).await {
        Some(o @ Outcome::Refused { .. }) => {
            (StatusCode::UNPROCESSABLE_ENTITY, Json(o)).into_response()
        }
        Some(o) => Json(o).into_response(),
        None => AdminError::new(StatusCode::SERVICE_UNAVAILABLE, "the reloader is stopping")
            .into_response(),
    }
}

async fn services(State(s): State<AdminState>) -> Response {
    Json(views::services(&s.app)).into_response()
}

async fn routes(State(s): State<AdminState>) -> Response {
    Json(views::routes(&s.app)).into_response()
}

/// The service an admin change names (absent: `default`), known to the running
/// config, and the backend's key in it.
fn scoped(s: &AdminState, service: Option<&str>, key: &str) -> Result<String, AdminError> {
    let service = service.unwrap_or(crate::config::DEFAULT_SERVICE);
    if s.app.snapshot().service(service).is_none() {
        return Err(count_error(
            s,
            AdminError::new(
                StatusCode::NOT_FOUND,
                format!("unknown service `{service}`"),
            ),
        ));
    }
    Ok(crate::config::routes::scoped_key(service, key))
}

async fn cluster(State(s): State<AdminState>) -> Response {
    Json(views::cluster_view(&s.app)).into_response()
}

fn count_error(s: &AdminState, e: AdminError) -> AdminError {
    if e.status.is_client_error() {
        s.app.metrics.admin_errors.fetch_add(1, Relaxed);
    }
    e
}

/// Stores a membership change and applies the overlay it yields.
async fn commit(s: &AdminState, change: MembershipChange) -> Result<(), AdminError> {
    let overlay = s
        .app
        .store
        .change_membership(change)
        .await
        .map_err(store_refused)?;
    s.app.apply_overlay(overlay);
    Ok(())
}

/// A membership change the store did not take (503): not stored at all, or stored
/// on the Redis primary without a replica's confirmation (it may not survive a
/// failover; sending it again is safe).
fn store_refused(e: crate::state::StoreError) -> AdminError {
    let message = match e {
        crate::state::StoreError::NotDurable(why) => {
            format!("change could not be made durable: {why}")
        }
        e => format!("change not stored: {e}"),
    };
    AdminError::new(StatusCode::SERVICE_UNAVAILABLE, message)
}

async fn add(
    State(s): State<AdminState>,
    body: Result<JsonBody<AddBackendRequest>, AdminError>,
) -> Result<Json<ChangeResponse>, AdminError> {
    let JsonBody(req) = body.map_err(|e| count_error(&s, e))?;
    let target =
        validate::backend_url(&req.url).map_err(|e| count_error(&s, AdminError::bad_request(e)))?;
    let weight = validate::weight(req.weight.unwrap_or(1))
        .map_err(|e| count_error(&s, AdminError::bad_request(e)))?;
    let key = target.key();
    let scoped_key = scoped(&s, req.service.as_deref(), &key)?;
    let change = MembershipChange {
        key: scoped_key,
        url: req.url.trim().trim_end_matches('/').to_string(),
        op: OverlayOp::Add,
        weight,
    };
    commit(&s, change).await?;
    Ok(Json(ChangeResponse {
        ok: true,
        message: format!("backend {key} in the running set with weight {weight}"),
        url: key,
    }))
}

async fn remove(
    State(s): State<AdminState>,
    body: Result<JsonBody<RemoveBackendRequest>, AdminError>,
) -> Result<Json<ChangeResponse>, AdminError> {
    let JsonBody(req) = body.map_err(|e| count_error(&s, e))?;
    let target =
        validate::backend_url(&req.url).map_err(|e| count_error(&s, AdminError::bad_request(e)))?;
    let key = target.key();
    let scoped_key = scoped(&s, req.service.as_deref(), &key)?;
    let snap = s.app.snapshot();
    let Some((_, member)) = snap.find(&scoped_key) else {
        return Err(count_error(
            &s,
            AdminError::new(
                StatusCode::NOT_FOUND,
                format!("backend {key} is not in the running set"),
            ),
        ));
    };
    let change = MembershipChange {
        key: scoped_key,
        url: member.backend.url.to_string(),
        op: OverlayOp::Remove,
        weight: member.weight,
    };
    commit(&s, change).await?;
    Ok(Json(ChangeResponse {
        ok: true,
        message: format!("backend {key} draining: no new requests, in-flight ones finish"),
        url: key,
    }))
}
