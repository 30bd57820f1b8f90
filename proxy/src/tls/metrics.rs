//! The HTTPS edge's figures for the metric table
//! ([`crate::telemetry::metrics::TABLE`]: `switchyard_tls_*` and `switchyard_acme_*`),
//! so `/metrics` and OTLP show them as they show every other family.

use std::sync::atomic::Ordering::Relaxed;

use super::Tls;
use crate::telemetry::metrics::{AcmeReading, TlsReading, TlsSource};

impl TlsSource for Tls {
    fn tls_reading(&self) -> TlsReading {
        let view = self.view();
        let s = &self.stats;
        let mut certificates = Vec::new();
        for c in &view.certificates {
            if c.not_after == 0 {
                continue;
            }
            for n in &c.names {
                certificates.push((
                    n.clone(),
                    c.source.clone(),
                    u64::try_from(c.expires_in_s).unwrap_or(0),
                ));
            }
        }
        TlsReading {
            certificates,
            handshakes: s.handshakes.load(Relaxed),
            resumed: s.resumed.load(Relaxed),
            failures: s.failures.load(Relaxed),
            timeouts: s.timeouts.load(Relaxed),
            reloads: s.reloads.load(Relaxed),
            reloads_refused: s.reloads_refused.load(Relaxed),
            ticket_keys: u64::from(view.ticket_keys),
            acme: view.acme.as_ref().map(|a| AcmeReading {
                orders: a.orders,
                failures: a.failures,
                challenges: a.challenges_answered,
            }),
        }
    }
}
