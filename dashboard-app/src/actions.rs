//! The changes the dashboard can ask for (add, drain, re-add): checked with the same
//! validation the proxy uses, described for the confirmation dialog, turned into
//! admin API requests, and the server's answer turned into one line for the user.

use switchyard_shared::validate;
use switchyard_shared::{AddBackendRequest, ApiError, ChangeResponse, RemoveBackendRequest};

/// Where the admin API is, relative to the dashboard page (`/dashboard/`).
pub const API_BASE: &str = "../";

/// `sessionStorage` key of the admin token (kept for the tab only).
pub const TOKEN_KEY: &str = "switchyard.admin-token";

/// A change waiting for confirmation.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Add { url: String, weight: u32 },
    Drain { url: String },
    ReAdd { url: String, weight: u32 },
}

impl Action {
    /// The backend the action is about.
    pub fn url(&self) -> &str {
        match self {
            Action::Add { url, .. } | Action::Drain { url } | Action::ReAdd { url, .. } => url,
        }
    }

    /// The confirmation dialog's question.
    pub fn question(&self) -> String {
        match self {
            Action::Add { url, weight } => {
                format!("Add backend {url} with weight {weight}? It gets traffic at once.")
            }
            Action::Drain { url } => format!(
                "Drain and remove backend {url}? It gets no new requests; in-flight ones finish."
            ),
            Action::ReAdd { url, weight } => {
                format!("Re-add backend {url} with weight {weight}? It gets traffic at once.")
            }
        }
    }

    /// The confirm button's label.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Add { .. } => "Add",
            Action::Drain { .. } => "Drain",
            Action::ReAdd { .. } => "Re-add",
        }
    }

    /// Admin API path, relative to the page.
    pub fn path(&self) -> String {
        match self {
            Action::Add { .. } | Action::ReAdd { .. } => format!("{API_BASE}admin/add"),
            Action::Drain { .. } => format!("{API_BASE}admin/remove"),
        }
    }

    /// JSON request body.
    pub fn body(&self) -> String {
        let json = match self {
            // A backend of a service other than `default` is named `<service>|<url>`.
            Action::Add { url, weight } | Action::ReAdd { url, weight } => {
                let (service, url) = crate::model::split_id(url);
                serde_json::to_string(&AddBackendRequest {
                    url: url.to_string(),
                    weight: Some(i64::from(*weight)),
                    service: service.map(String::from),
                })
            }
            Action::Drain { url } => {
                let (service, url) = crate::model::split_id(url);
                serde_json::to_string(&RemoveBackendRequest {
                    url: url.to_string(),
                    service: service.map(String::from),
                })
            }
        };
        // Serialising two plain fields cannot fail; an empty body would get a clear
        // 400 from the server anyway.
        json.unwrap_or_default()
    }
}

/// Checks the add form. `weight` may be empty (meaning 1).
pub fn validate_add(url: &str, weight: &str) -> Result<Action, String> {
    validate::backend_url(url)?;
    let weight = match weight.trim() {
        "" => 1,
        w => {
            let n: i64 = w
                .parse()
                .map_err(|_| format!("weight must be a whole number, got `{w}`"))?;
            validate::weight(n)?
        }
    };
    // Send what the user typed (trimmed): the server keeps it as the address and
    // derives the same canonical key the backend list shows.
    Ok(Action::Add {
        url: url.trim().trim_end_matches('/').to_string(),
        weight,
    })
}

/// The server's answer to a change, for the user.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub message: String,
    /// 401/403: the token is missing or wrong.
    pub auth: bool,
}

/// Reads the answer to a change request; `status` 0 means no answer at all.
pub fn outcome(status: u16, body: &str) -> Outcome {
    if status == 0 {
        return Outcome {
            ok: false,
            message: format!("no answer from the proxy: {}", one_line(body)),
            auth: false,
        };
    }
    if (200..300).contains(&status) {
        return match serde_json::from_str::<ChangeResponse>(body) {
            Ok(r) => Outcome {
                ok: r.ok,
                message: r.message,
                auth: false,
            },
            Err(_) => Outcome {
                ok: true,
                message: format!("done (HTTP {status})"),
                auth: false,
            },
        };
    }
    let detail = match serde_json::from_str::<ApiError>(body) {
        Ok(e) => e.error,
        Err(_) if body.trim().is_empty() => "no details".to_string(),
        Err(_) => one_line(body),
    };
    Outcome {
        ok: false,
        message: format!("refused (HTTP {status}): {detail}"),
        auth: status == 401 || status == 403,
    }
}

fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    let mut out: String = line.chars().take(200).collect();
    if line.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// The event stream's URL; the token goes in the query because `EventSource` cannot
/// send headers.
pub fn events_url(token: Option<&str>) -> String {
    match token.filter(|t| !t.is_empty()) {
        Some(t) => format!(
            "{API_BASE}admin/events?access_token={}",
            encode_component(t)
        ),
        None => format!("{API_BASE}admin/events"),
    }
}

/// What the connection probe asks after the stream fails (same auth rules as the
/// stream, but a plain response with a status code).
pub fn probe_url() -> String {
    format!("{API_BASE}admin/config")
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `Authorization` header value for a token, if there is one.
pub fn bearer(token: Option<&str>) -> Option<String> {
    token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}"))
}

#[cfg(test)]
mod tests;
