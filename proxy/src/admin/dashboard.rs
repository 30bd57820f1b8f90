//! Serves the built dashboard (`dashboard-app/dist`) under `/dashboard/`: correct
//! content types, `ETag` revalidation, no path escapes. Everything is local; the app
//! loads nothing from elsewhere.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::AdminState;

/// Where the built dashboard lives: `admin.dashboard_dir`, else
/// `SWITCHYARD_DASHBOARD_DIR`, else `dashboard-app/dist` under the working directory.
pub fn resolve_dir(configured: Option<&str>) -> PathBuf {
    configured
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("SWITCHYARD_DASHBOARD_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("dashboard-app/dist"))
}

pub async fn redirect() -> Redirect {
    Redirect::permanent("/dashboard/")
}

pub async fn index(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    serve(&s.dashboard_dir, "index.html", &headers).await
}

pub async fn asset(
    State(s): State<AdminState>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    serve(&s.dashboard_dir, &path, &headers).await
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

async fn serve(dir: &Path, rel: &str, req_headers: &HeaderMap) -> Response {
    let rel = Path::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    let path = dir.join(rel);
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() => m,
        _ if rel == Path::new("index.html") => return not_built(dir),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let etag = format!("\"{:x}-{:x}\"", meta.len(), mtime);
    if req_headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let Ok(bytes) = tokio::fs::read(&path).await else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&path)),
    );
    // File names are not content-hashed: revalidate every time (cheap with the ETag).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

fn not_built(dir: &Path) -> Response {
    let body = format!(
        "<!doctype html><title>Switchyard dashboard</title><h1>Dashboard not built</h1>\
         <p>No <code>index.html</code> in <code>{}</code>. Build it with \
         <code>scripts/build-dashboard.sh</code>, or point <code>admin.dashboard_dir</code> / \
         <code>SWITCHYARD_DASHBOARD_DIR</code> at a built copy.</p>",
        dir.display()
    );
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}
