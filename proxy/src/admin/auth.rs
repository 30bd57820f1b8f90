//! Bearer-token protection of the admin API.
//!
//! With a token (`SWITCHYARD_ADMIN_TOKEN` or `admin.token_file`), mutating endpoints
//! need `Authorization: Bearer <token>`: 401 without it, 403 with a wrong one; the
//! read-only ones too unless `admin.public_read` is set. `/healthz`, `/readyz` and the
//! dashboard's static files are always open (probes and the login screen need them).
//! Without a token the admin listener binds to loopback only.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AdminState;
use super::json::AdminError;

/// Reads the token from the environment or the configured file.
pub fn load_token(token_file: Option<&str>) -> Result<Option<String>, String> {
    if let Ok(t) = std::env::var("SWITCHYARD_ADMIN_TOKEN") {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(Some(t));
        }
    }
    match token_file {
        None => Ok(None),
        Some(path) => {
            let t = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read admin token file {path}: {e}"))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(format!("admin token file {path} is empty"));
            }
            Ok(Some(t))
        }
    }
}

/// Compares without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check(state: &AdminState, req: &Request) -> Result<(), AdminError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
        .or_else(|| query_token(req));
    match presented {
        None => Err(AdminError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token",
        )),
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(AdminError::new(StatusCode::FORBIDDEN, "invalid token")),
    }
}

/// `?access_token=` on the event stream only (EventSource cannot send headers),
/// percent-decoded.
fn query_token(req: &Request) -> Option<String> {
    if req.uri().path() != "/admin/events" {
        return None;
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("access_token="))
        .and_then(percent_decode)
}

/// Decodes `%XX` escapes and `+` (a space in form encoding); `None` if malformed.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub async fn require_write(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    match check(&state, &req) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            state
                .app
                .metrics
                .admin_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            e.into_response()
        }
    }
}

pub async fn require_read(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if state.public_read {
        return next.run(req).await;
    }
    require_write(State(state), req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn query_tokens_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Bb%3D%3D").as_deref(), Some("a+b=="));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a b"));
        assert_eq!(
            percent_decode("plain-token_1.2~").as_deref(),
            Some("plain-token_1.2~")
        );
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }
}
