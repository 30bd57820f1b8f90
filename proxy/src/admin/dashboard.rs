//! Serves the dashboard under `/dashboard/`: the copy embedded in the binary at
//! compile time (`dashboard-app/dist`, written by `scripts/build-dashboard.sh`), or a
//! directory (`admin.dashboard_dir` / `SWITCHYARD_DASHBOARD_DIR`) for development.
//!
//! Content types by extension; strong `ETag`s (the content's SHA-256 when embedded)
//! with `If-None-Match`; the `.br` / `.gz` twins the dashboard build writes are
//! served to clients that accept them (`Vary: Accept-Encoding`), so the binary
//! never compresses at run time; no path escapes. Everything is local: the app
//! loads nothing from elsewhere.
//!
//! A binary built before the dashboard (`cargo build` on a clean clone works: the
//! folder may be missing) embeds nothing; it says so at start and `/dashboard/`
//! explains how to get it.

use std::borrow::Cow;
use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::AdminState;

/// The dashboard as built when this binary was compiled (empty if it was not).
#[derive(rust_embed::Embed)]
#[folder = "../dashboard-app/dist"]
#[allow_missing = true]
struct Embedded;

/// Where `/dashboard/` is served from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The copy inside the binary.
    Embedded,
    /// A directory on disk (development, or a dashboard built separately).
    Dir(PathBuf),
}

impl From<&str> for Source {
    fn from(dir: &str) -> Self {
        Source::Dir(dir.into())
    }
}

impl From<PathBuf> for Source {
    fn from(dir: PathBuf) -> Self {
        Source::Dir(dir)
    }
}

/// Whether this binary carries a built dashboard.
pub fn embedded() -> bool {
    Embedded::get("index.html").is_some()
}

/// `admin.dashboard_dir`, else `SWITCHYARD_DASHBOARD_DIR`, else the embedded copy,
/// else (a binary built without it) `dashboard-app/dist` under the working directory.
pub fn resolve(configured: Option<&str>) -> Source {
    match configured
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("SWITCHYARD_DASHBOARD_DIR").map(PathBuf::from))
    {
        Some(dir) => Source::Dir(dir),
        None if embedded() => Source::Embedded,
        None => Source::Dir(PathBuf::from("dashboard-app/dist")),
    }
}

/// One line for the start-up log: where the dashboard comes from, and whether it
/// is there at all (`false`: `/dashboard/` explains how to build it).
pub fn describe(source: &Source) -> (bool, String) {
    match source {
        Source::Embedded => (
            true,
            format!(
                "embedded in the binary ({} files)",
                Embedded::iter().count()
            ),
        ),
        Source::Dir(dir) if dir.join("index.html").is_file() => {
            (true, format!("served from {}", dir.display()))
        }
        Source::Dir(dir) => (
            false,
            format!(
                "not built: this binary was compiled without dashboard-app/dist and {} has no index.html; \
                 /dashboard/ explains how to build it (scripts/build-dashboard.sh, then cargo build)",
                dir.display()
            ),
        ),
    }
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

fn content_type(path: &str) -> &'static str {
    match Path::new(path).extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("gz") => "application/gzip",
        Some("br") => "application/x-brotli",
        _ => "application/octet-stream",
    }
}

/// The encodings the client takes, best first (`br`, then `gzip`); `q=0` refuses.
fn accepted(req: &HeaderMap) -> Vec<(&'static str, &'static str)> {
    let mut ok = (false, false);
    for v in req.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            match coding.as_str() {
                "br" => ok.0 = true,
                "gzip" => ok.1 = true,
                "*" => ok = (true, true),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    if ok.0 {
        out.push(("br", ".br"));
    }
    if ok.1 {
        out.push(("gzip", ".gz"));
    }
    out
}

/// A file's bytes and validator, in the encoding chosen.
struct Found {
    bytes: Cow<'static, [u8]>,
    etag: String,
    encoding: Option<&'static str>,
}

async fn find(
    source: &Source,
    rel: &str,
    encodings: &[(&'static str, &'static str)],
) -> Option<Found> {
    let candidates = encodings
        .iter()
        .map(|(enc, ext)| (Some(*enc), format!("{rel}{ext}")))
        .chain([(None, rel.to_string())]);
    for (encoding, name) in candidates {
        match source {
            Source::Embedded => {
                if let Some(f) = Embedded::get(&name) {
                    let hash = f.metadata.sha256_hash();
                    let hex: String = hash[..12].iter().map(|b| format!("{b:02x}")).collect();
                    return Some(Found {
                        bytes: f.data,
                        etag: format!("\"{hex}\""),
                        encoding,
                    });
                }
            }
            Source::Dir(dir) => {
                let path = dir.join(&name);
                let Ok(meta) = tokio::fs::metadata(&path).await else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let Ok(bytes) = tokio::fs::read(&path).await else {
                    continue;
                };
                return Some(Found {
                    bytes: Cow::Owned(bytes),
                    etag: format!("\"{:x}-{:x}\"", meta.len(), mtime),
                    encoding,
                });
            }
        }
    }
    None
}

async fn serve(source: &Source, rel: &str, req_headers: &HeaderMap) -> Response {
    if Path::new(rel)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    let encodings = accepted(req_headers);
    let Some(found) = find(source, rel, &encodings).await else {
        return if rel == "index.html" {
            not_built(source)
        } else {
            (StatusCode::NOT_FOUND, "not found\n").into_response()
        };
    };
    let etag = HeaderValue::from_str(&found.etag).ok();
    if let Some(etag) = &etag
        && req_headers.get_all(header::IF_NONE_MATCH).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii() == etag.as_bytes())
        })
    {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, etag.clone());
        resp.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        return resp;
    }
    let mut resp = Response::new(Body::from(found.bytes));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(rel)),
    );
    if let Some(enc) = found.encoding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
    }
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    // File names are not content-hashed: revalidate every time (cheap with the ETag).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Some(etag) = etag {
        h.insert(header::ETAG, etag);
    }
    resp
}

fn not_built(source: &Source) -> Response {
    let where_ = match source {
        Source::Embedded => "the binary".to_string(),
        Source::Dir(dir) => format!("<code>{}</code>", dir.display()),
    };
    let body = format!(
        "<!doctype html><title>Switchyard dashboard</title><h1>Dashboard not built</h1>\
         <p>This binary was compiled without the dashboard, and there is no <code>index.html</code> in {where_}.</p>\
         <p>In a checkout: run <code>scripts/build-dashboard.sh</code>, then <code>cargo build</code> again \
         (the binary embeds <code>dashboard-app/dist</code>); or point <code>admin.dashboard_dir</code> / \
         <code>SWITCHYARD_DASHBOARD_DIR</code> at a built copy.</p>"
    );
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_negotiated() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).unwrap_or_else(|_| HeaderValue::from_static("")),
            );
            accepted(&m).into_iter().map(|(e, _)| e).collect::<Vec<_>>()
        };
        assert_eq!(h("gzip, deflate, br, zstd"), vec!["br", "gzip"]);
        assert_eq!(h("gzip"), vec!["gzip"]);
        assert_eq!(h("br;q=0, gzip;q=0.5"), vec!["gzip"]);
        assert_eq!(h("identity"), Vec::<&str>::new());
        assert_eq!(h("*"), vec!["br", "gzip"]);
        assert!(accepted(&HeaderMap::new()).is_empty());
    }
}
