//! `GET /admin/tls` (also `/admin/certificates`) and the dashboard's TLS panel:
//! the certificates served, where they come from, when they expire, and ACME.

use serde::{Deserialize, Serialize};

/// The HTTPS side of a replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct TlsView {
    /// The HTTPS listener's address (`None` when TLS is off).
    pub listen: Option<String>,
    /// `"1.2"` (TLS 1.2 and 1.3) or `"1.3"`.
    pub min_version: String,
    /// ALPN protocols offered, in order.
    pub alpn: Vec<String>,
    pub certificates: Vec<CertificateView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeView>,
    /// Session tickets on, and how many shared ticket keys are accepted now.
    pub session_tickets: bool,
    pub ticket_keys: u32,
    pub redirect_http: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
    /// The admin listener is served over TLS too.
    pub admin_tls: bool,
    /// Handshakes since start: completed (full and resumed), failed, timed out.
    pub handshakes: u64,
    pub resumed: u64,
    pub handshake_failures: u64,
    pub handshake_timeouts: u64,
}

/// One certificate in service (or one that failed to load).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct CertificateView {
    /// `file` or `acme`.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// DNS names it covers (`*.example.com` for wildcards).
    pub names: Vec<String>,
    /// Validity, Unix seconds (0 when nothing is loaded).
    pub not_before: i64,
    pub not_after: i64,
    /// Seconds until it expires (negative: expired).
    pub expires_in_s: i64,
    pub serial: String,
    pub issuer: String,
    /// Served to clients without SNI or with an unknown name.
    pub default: bool,
    /// The last refused load (the previous certificate keeps serving), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When what is served was loaded, Unix ms.
    pub loaded_at_ms: u64,
}

/// ACME state as this replica sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct AcmeView {
    pub directory_url: String,
    pub domains: Vec<String>,
    /// `http-01` or `tls-alpn-01`.
    pub challenge: String,
    /// `waiting` (nothing yet), `ordering` (this replica holds the lease and
    /// orders), `valid`, `renewing`, `backoff` (after a failure).
    pub state: String,
    /// When the certificate in hand is due for renewal, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Unix seconds before which no new order is tried (after failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<i64>,
    /// Orders this replica placed since start, and of them, the failed ones.
    pub orders: u64,
    pub failures: u64,
    /// Challenges this replica answered (HTTP-01 and TLS-ALPN-01).
    pub challenges_answered: u64,
}
