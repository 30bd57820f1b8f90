//! SNI: which certificate a handshake gets. Exact names first, then a `*.` wildcard
//! for the name's parent (one label deep, as browsers match), then the default (the
//! first certificate) unless `strict_sni` refuses unknown names. (TLS-ALPN-01
//! validations never get here: the listener gives them their own config.)
//!
//! The table is immutable and swapped whole (one `ArcSwap` load per handshake).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::CertInfo;

/// ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where a served certificate came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `tls.certificates[index]`, with its file names.
    File {
        index: usize,
        cert: String,
        key: String,
    },
    /// Obtained through ACME.
    Acme,
    /// Made at start (`tls.self_signed`).
    SelfSigned,
}

/// One certificate in the table.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
    pub origin: Origin,
}

/// The certificates in force.
#[derive(Default)]
pub struct Table {
    pub entries: Vec<Entry>,
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, usize>,
    strict: bool,
}

impl Table {
    /// Indexes `entries`; an earlier entry wins a name both carry.
    pub fn new(entries: Vec<Entry>, strict: bool) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for n in &e.info.names {
                match n.strip_prefix("*.") {
                    Some(parent) => {
                        wildcard.entry(parent.to_string()).or_insert(i);
                    }
                    None => {
                        exact.entry(n.clone()).or_insert(i);
                    }
                }
            }
        }
        Self {
            entries,
            exact,
            wildcard,
            strict,
        }
    }

    /// The certificate for `sni` (lower-cased), or the default.
    pub fn pick(&self, sni: Option<&str>) -> Option<&Entry> {
        if let Some(name) = sni {
            if let Some(&i) = self.exact.get(name) {
                return self.entries.get(i);
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(&i) = self.wildcard.get(parent)
            {
                return self.entries.get(i);
            }
        }
        if self.strict {
            return None;
        }
        self.entries.first()
    }
}

/// rustls' certificate hook.
pub struct Resolver {
    pub table: ArcSwap<Table>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl Resolver {
    pub fn new() -> Self {
        Self {
            table: ArcSwap::from_pointee(Table::default()),
        }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        self.table
            .load()
            .pick(sni.as_deref())
            .map(|e| e.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(names: &[&str]) -> Entry {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap()
                .self_signed(&key)
                .unwrap();
        let l = super::super::certs::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            &rustls::crypto::ring::default_provider(),
        )
        .unwrap();
        Entry {
            key: l.key,
            info: l.info,
            origin: Origin::Acme,
        }
    }

    fn first_name(e: Option<&Entry>) -> Option<&str> {
        e.map(|e| e.info.names[0].as_str())
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let t = Table::new(
            vec![
                entry(&["default.test"]),
                entry(&["*.example.com"]),
                entry(&["api.example.com"]),
            ],
            false,
        );
        assert_eq!(
            first_name(t.pick(Some("api.example.com"))),
            Some("api.example.com")
        );
        assert_eq!(
            first_name(t.pick(Some("www.example.com"))),
            Some("*.example.com")
        );
        // A wildcard covers one label only.
        assert_eq!(
            first_name(t.pick(Some("a.b.example.com"))),
            Some("default.test")
        );
        assert_eq!(
            first_name(t.pick(Some("example.com"))),
            Some("default.test")
        );
        assert_eq!(
            first_name(t.pick(Some("unknown.org"))),
            Some("default.test")
        );
        assert_eq!(first_name(t.pick(None)), Some("default.test"));
    }

    #[test]
    fn strict_sni_refuses_unknown_names() {
        let t = Table::new(vec![entry(&["a.test"])], true);
        assert_eq!(first_name(t.pick(Some("a.test"))), Some("a.test"));
        assert!(t.pick(Some("b.test")).is_none());
        assert!(t.pick(None).is_none());
        assert!(Table::default().pick(Some("a.test")).is_none());
    }
}
