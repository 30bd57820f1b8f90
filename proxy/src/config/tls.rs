//! The `tls:` block (HTTPS listener, certificates from files or ACME, redirect, HSTS,
//! session tickets) and the per-backend `tls:` block (upstream TLS). Keys of the
//! issue's contract are kept as named there; everything else is an extension with
//! a default.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Config, Dur, Int};

/// The HTTPS listener and where its certificates come from.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// HTTPS listener port (0 picks a free one). `--tls-listen` overrides.
    pub port: u16,
    /// Address the HTTPS listener binds (default: `server.bind`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<IpAddr>,
    /// PEM chain + key pairs; SNI picks among them, the first is the default.
    pub certificates: Vec<CertificateFiles>,
    /// Certificates obtained and renewed through ACME (RFC 8555).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeConfig>,
    /// Names (or IP addresses) for a self-signed development certificate, made at
    /// start and shared by the cluster (Caddy's `tls internal`); for demos and
    /// tests, not for clients that verify.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub self_signed: Vec<String>,
    /// Answer plain-HTTP requests with a redirect to HTTPS (ACME HTTP-01 paths exempt).
    pub redirect_http: bool,
    /// `Strict-Transport-Security` value sent on HTTPS responses, e.g.
    /// `"max-age=31536000; includeSubDomains"` (unset: not sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts: Option<String>,
    /// Oldest protocol accepted: `"1.2"` (TLS 1.2 and 1.3) or `"1.3"` (1.3 only).
    pub min_version: String,
    /// Offer `h2` by ALPN (HTTP/1.1 is always offered).
    pub http2: bool,
    /// Time a client has to complete the handshake; then it is closed.
    pub handshake_timeout: Dur,
    /// Clients without SNI or with a name no certificate covers: `false` serves the
    /// default certificate (the first), `true` refuses the handshake
    /// (`unrecognized_name`).
    pub strict_sni: bool,
    /// TLS session tickets (resumption without a full handshake), with keys shared
    /// by every replica through the cluster store.
    pub session_tickets: bool,
    /// How often a new ticket key takes over.
    pub ticket_rotation: Dur,
    /// Ticket keys accepted at once (the current one and older ones); a ticket
    /// lives `ticket_rotation × (ticket_keys − 1)`.
    pub ticket_keys: Int<2, 16>,
    /// How often certificate files are checked for changes (SIGHUP checks at once).
    pub watch_interval: Dur,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            port: 8443,
            bind: None,
            certificates: Vec::new(),
            acme: None,
            self_signed: Vec::new(),
            redirect_http: false,
            hsts: None,
            min_version: "1.2".into(),
            http2: true,
            handshake_timeout: Dur::secs(10),
            strict_sni: false,
            session_tickets: true,
            ticket_rotation: Dur::secs(3600),
            ticket_keys: Int(3),
            watch_interval: Dur::secs(1),
        }
    }
}

/// One certificate from files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// Which ACME challenge proves control of a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Challenge {
    /// A token under `/.well-known/acme-challenge/` on the plain port.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A special certificate on the TLS port (ALPN `acme-tls/1`).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl Challenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// ACME: one certificate for `domains`, ordered by one replica, served by all.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// The CA's directory, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory_url: String,
    /// Contact for the account (optional at most CAs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Names on the certificate (no wildcards: those need DNS-01).
    pub domains: Vec<String>,
    pub challenge: Challenge,
    /// Extra PEM CA trusted for the ACME server itself (a private CA: step-ca, Pebble).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Where a replica on the embedded store keeps the account and certificates so a
    /// restart does not order again (default `~/.local/share/switchyard/acme`).
    /// With Redis the store is the source of truth and this is not used unless set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_dir: Option<String>,
    /// Renew this long before expiry (or at a third of the lifetime left, whichever
    /// comes later, so short-lived certificates are renewed in time).
    pub renew_before: Dur,
    /// First wait after a failed order; doubles per failure up to `retry_max`.
    pub retry_min: Dur,
    pub retry_max: Dur,
    /// How often each replica looks for a certificate another replica obtained, and
    /// the lease holder for work to do.
    pub check_interval: Dur,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            directory_url: String::new(),
            email: None,
            domains: Vec::new(),
            challenge: Challenge::Http01,
            ca_file: None,
            storage_dir: None,
            renew_before: Dur::secs(30 * 24 * 3600),
            retry_min: Dur::secs(60),
            retry_max: Dur::secs(6 * 3600),
            check_interval: Dur::secs(5),
        }
    }
}

/// TLS to one backend (`https://` URLs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// Verify the backend's certificate (chain and name). Off only for tests and
    /// self-signed lab setups.
    pub verify: bool,
    /// Extra PEM CAs trusted for this backend (beside `upstream.ca_file` and the
    /// Mozilla roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Name sent as SNI and verified (default: the URL's host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS; needs `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Client private key (PEM) for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        Self {
            verify: true,
            ca_file: None,
            server_name: None,
            cert: None,
            key: None,
        }
    }
}

/// Whether `name` is a DNS name a certificate can carry (`*.` only as the first
/// label when `wildcard`).
pub fn is_dns_name(name: &str, wildcard: bool) -> bool {
    let rest = match name.strip_prefix("*.") {
        Some(r) if wildcard => r,
        Some(_) => return false,
        None => name,
    };
    !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Cross-field rules of the TLS blocks: `(field path, reason)` each.
pub fn validate(c: &Config) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    for (i, b) in c.backends.iter().enumerate() {
        if let Some(t) = &b.tls {
            if t.cert.is_some() != t.key.is_some() {
                errs.push((
                    format!("backends[{i}].tls"),
                    "a client certificate needs both `cert` and `key`".into(),
                ));
            }
            if let Some(n) = &t.server_name
                && rustls_pki_types::ServerName::try_from(n.as_str()).is_err()
            {
                errs.push((
                    format!("backends[{i}].tls.server_name"),
                    format!("`{n}` is not a DNS name or IP address"),
                ));
            }
        }
    }
    let Some(t) = &c.tls else {
        if c.admin.tls {
            errs.push((
                "admin.tls".into(),
                "needs a `tls:` block (its certificates serve the admin listener)".into(),
            ));
        }
        return errs;
    };
    if t.port != 0 && (t.port == c.server.port || t.port == c.server.admin_port) {
        errs.push((
            "tls.port".into(),
            format!(
                "must differ from server.port and server.admin_port ({})",
                t.port
            ),
        ));
    }
    if t.certificates.is_empty() && t.acme.is_none() && t.self_signed.is_empty() {
        errs.push((
            "tls".into(),
            "needs `certificates`, `acme` or `self_signed` (nothing to serve)".into(),
        ));
    }
    for (i, n) in t.self_signed.iter().enumerate() {
        if !is_dns_name(n, true) && n.parse::<IpAddr>().is_err() {
            errs.push((
                format!("tls.self_signed[{i}]"),
                format!("`{n}` is not a DNS name or IP address"),
            ));
        }
    }
    for (i, f) in t.certificates.iter().enumerate() {
        if f.cert.trim().is_empty() {
            errs.push((format!("tls.certificates[{i}].cert"), "is empty".into()));
        }
        if f.key.trim().is_empty() {
            errs.push((format!("tls.certificates[{i}].key"), "is empty".into()));
        }
    }
    if !matches!(t.min_version.as_str(), "1.2" | "1.3") {
        errs.push((
            "tls.min_version".into(),
            format!("`{}`: expected \"1.2\" or \"1.3\"", t.min_version),
        ));
    }
    if let Some(h) = &t.hsts
        && (!h.trim_start().to_ascii_lowercase().starts_with("max-age=")
            || http::HeaderValue::from_str(h).is_err())
    {
        errs.push((
            "tls.hsts".into(),
            format!("`{h}`: expected e.g. \"max-age=31536000; includeSubDomains\""),
        ));
    }
    for (name, d) in [
        ("tls.handshake_timeout", t.handshake_timeout),
        ("tls.ticket_rotation", t.ticket_rotation),
        ("tls.watch_interval", t.watch_interval),
    ] {
        if d.get().is_zero() {
            errs.push((name.into(), "must be greater than 0".into()));
        }
    }
    if let Some(a) = &t.acme {
        if !a.directory_url.starts_with("https://") {
            errs.push((
                "tls.acme.directory_url".into(),
                "must be an https:// URL".into(),
            ));
        }
        if a.domains.is_empty() {
            errs.push(("tls.acme.domains".into(), "needs at least one name".into()));
        }
        for (i, d) in a.domains.iter().enumerate() {
            if !is_dns_name(d, false) {
                errs.push((
                    format!("tls.acme.domains[{i}]"),
                    format!("`{d}` is not a DNS name (wildcards need DNS-01, not supported)"),
                ));
            }
        }
        if let Some(e) = &a.email
            && !e.contains('@')
        {
            errs.push(("tls.acme.email".into(), format!("`{e}` is not an address")));
        }
        for (name, d) in [
            ("tls.acme.retry_min", a.retry_min),
            ("tls.acme.check_interval", a.check_interval),
        ] {
            if d.get().is_zero() {
                errs.push((name.into(), "must be greater than 0".into()));
            }
        }
        if a.retry_max < a.retry_min {
            errs.push((
                "tls.acme.retry_max".into(),
                "must be at least retry_min".into(),
            ));
        }
    }
    errs
}
