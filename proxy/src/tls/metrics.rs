//! The TLS families of `/metrics` (Prometheus text or OpenMetrics), appended by the
//! admin handler to the proxy's own.

use std::sync::atomic::Ordering::Relaxed;

use super::Tls;
use crate::telemetry::prometheus::Out;

pub const CERT_EXPIRY: &str = "switchyard_tls_certificate_expiry_seconds";
pub const HANDSHAKES: &str = "switchyard_tls_handshakes_total";
pub const HANDSHAKE_FAILURES: &str = "switchyard_tls_handshake_failures_total";
pub const CERT_RELOADS: &str = "switchyard_tls_certificate_reloads_total";
pub const TICKET_KEYS: &str = "switchyard_tls_session_ticket_keys";
pub const ACME_ORDERS: &str = "switchyard_acme_orders_total";
pub const ACME_FAILURES: &str = "switchyard_acme_order_failures_total";
pub const ACME_CHALLENGES: &str = "switchyard_acme_challenges_answered_total";

/// Appends the TLS families to `buf` (before OpenMetrics' `# EOF`, which the
/// caller writes).
pub fn render(tls: &Tls, buf: &mut String, open: bool) {
    let mut o = Out {
        buf: std::mem::take(buf),
        open,
    };
    let view = tls.view();
    o.family(
        CERT_EXPIRY,
        "gauge",
        "Seconds until the certificate served for a name expires (negative: expired).",
    );
    for c in &view.certificates {
        if c.not_after == 0 {
            continue;
        }
        for n in &c.names {
            o.sample(
                CERT_EXPIRY,
                &[("name", n), ("source", &c.source)],
                c.expires_in_s as f64,
            );
        }
    }
    let s = &tls.stats;
    o.family(HANDSHAKES, "counter", "Completed TLS handshakes, by kind.");
    let resumed = s.resumed.load(Relaxed);
    let all = s.handshakes.load(Relaxed);
    o.sample(
        HANDSHAKES,
        &[("kind", "full")],
        all.saturating_sub(resumed) as f64,
    );
    o.sample(HANDSHAKES, &[("kind", "resumed")], resumed as f64);
    o.family(
        HANDSHAKE_FAILURES,
        "counter",
        "TLS handshakes that failed or timed out (the connection was closed).",
    );
    o.sample(
        HANDSHAKE_FAILURES,
        &[("reason", "error")],
        s.failures.load(Relaxed) as f64,
    );
    o.sample(
        HANDSHAKE_FAILURES,
        &[("reason", "timeout")],
        s.timeouts.load(Relaxed) as f64,
    );
    o.family(
        CERT_RELOADS,
        "counter",
        "Certificate file reloads: applied, or refused (the last good one kept serving).",
    );
    o.sample(
        CERT_RELOADS,
        &[("result", "applied")],
        s.reloads.load(Relaxed) as f64,
    );
    o.sample(
        CERT_RELOADS,
        &[("result", "refused")],
        s.reloads_refused.load(Relaxed) as f64,
    );
    o.family(TICKET_KEYS, "gauge", "Session-ticket keys accepted now.");
    o.sample(TICKET_KEYS, &[], f64::from(view.ticket_keys));
    if let Some(a) = &view.acme {
        o.family(ACME_ORDERS, "counter", "ACME orders this replica placed.");
        o.sample(ACME_ORDERS, &[], a.orders as f64);
        o.family(
            ACME_FAILURES,
            "counter",
            "ACME orders that failed (then backed off).",
        );
        o.sample(ACME_FAILURES, &[], a.failures as f64);
        o.family(
            ACME_CHALLENGES,
            "counter",
            "ACME challenges this replica answered (HTTP-01 and TLS-ALPN-01).",
        );
        o.sample(ACME_CHALLENGES, &[], a.challenges_answered as f64);
    }
    *buf = o.buf;
}
