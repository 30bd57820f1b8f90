//! The TLS panel's rows: each certificate with its names, source and time to
//! expiry (warned at 14 days, bad when expired or failing to reload), and ACME.

use switchyard_shared::{CertificateView, TlsView};

use super::{Badge, Tone};
use crate::format;

/// Expiry closer than this reads as a warning.
const WARN_S: i64 = 14 * 86_400;

#[derive(Clone, Debug, PartialEq)]
pub struct CertRow {
    pub names: String,
    pub source: String,
    pub expiry: Badge,
    pub serial: String,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TlsInfo {
    pub listen: String,
    pub protocols: String,
    pub certs: Vec<CertRow>,
    pub acme: Option<(Badge, String)>,
    pub handshakes: String,
}

fn expiry(c: &CertificateView) -> Badge {
    if c.not_after == 0 {
        return Badge::new("not loaded", Tone::Bad);
    }
    let s = c.expires_in_s;
    let until = format::date_time_utc((c.not_after.max(0) as u64) * 1000);
    if s <= 0 {
        Badge::new("expired", Tone::Bad).detail(format!("expired {until}"))
    } else if s < WARN_S {
        Badge::new(
            format!("expires in {}", format::duration_s(s as u64)),
            Tone::Warn,
        )
        .detail(until)
    } else {
        Badge::new(
            format!("expires in {}", format::duration_s(s as u64)),
            Tone::Good,
        )
        .detail(until)
    }
}

pub fn tls_info(t: &TlsView) -> TlsInfo {
    let certs = t
        .certificates
        .iter()
        .map(|c| CertRow {
            names: if c.names.is_empty() {
                c.cert_file.clone().unwrap_or_default()
            } else {
                c.names.join(", ")
            },
            source: match (&c.cert_file, c.default) {
                (Some(f), true) => format!("file {f} (default)"),
                (Some(f), false) => format!("file {f}"),
                (None, true) => format!("{} (default)", c.source),
                (None, false) => c.source.clone(),
            },
            expiry: expiry(c),
            serial: c.serial.chars().take(16).collect(),
            error: c.error.clone(),
        })
        .collect();
    let acme = t.acme.as_ref().map(|a| {
        let tone = match a.state.as_str() {
            "valid" => Tone::Good,
            "backoff" => Tone::Bad,
            _ => Tone::Warn,
        };
        let mut text = format!(
            "{} via {} · {} orders, {} failed, {} challenges answered here",
            a.domains.join(", "),
            a.challenge,
            a.orders,
            a.failures,
            a.challenges_answered
        );
        if let Some(e) = &a.last_error {
            text.push_str(&format!(" · last error: {e}"));
        }
        (Badge::new(a.state.clone(), tone), text)
    });
    TlsInfo {
        listen: t.listen.clone().unwrap_or_else(|| format::NONE.into()),
        protocols: format!(
            "TLS {}+ · ALPN {} · tickets {}{}",
            t.min_version,
            t.alpn.join(", "),
            if t.session_tickets {
                format!("on ({} keys, shared)", t.ticket_keys)
            } else {
                "off".into()
            },
            if t.redirect_http {
                " · HTTP→HTTPS redirect"
            } else {
                ""
            }
        ),
        certs,
        acme,
        handshakes: format!(
            "{} handshakes ({} resumed), {} failed, {} timed out",
            format::count(t.handshakes),
            format::count(t.resumed),
            format::count(t.handshake_failures),
            format::count(t.handshake_timeouts)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_reads_as_a_word_and_a_tone() {
        let mut c = CertificateView {
            names: vec!["a.test".into()],
            not_after: 2_000_000_000,
            expires_in_s: 90 * 86_400,
            source: "file".into(),
            cert_file: Some("a.pem".into()),
            default: true,
            ..Default::default()
        };
        let t = TlsView {
            certificates: vec![c.clone()],
            min_version: "1.2".into(),
            alpn: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        };
        let info = tls_info(&t);
        assert_eq!(info.certs[0].expiry.tone, Tone::Good);
        assert_eq!(info.certs[0].source, "file a.pem (default)");
        c.expires_in_s = 3 * 86_400;
        assert_eq!(expiry(&c).tone, Tone::Warn);
        c.expires_in_s = -5;
        assert_eq!(expiry(&c).text, "expired");
        c.not_after = 0;
        assert_eq!(expiry(&c).text, "not loaded");
    }
}
