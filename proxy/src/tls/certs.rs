//! Loading a certificate chain and its key (PEM), checking that they belong
//! together, and reading what an operator needs to see: names, validity, serial.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What the leaf certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names (subject alternative names; the common name when there are none).
    pub names: Vec<String>,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Hex serial number.
    pub serial: String,
    pub issuer: String,
}

/// A usable certificate: what rustls serves and what the admin API shows.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// Reads and checks a PEM chain + key pair from files.
pub fn load_files(cert: &str, key: &str, provider: &CryptoProvider) -> Result<Loaded, String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("cannot read {cert}: {e}"))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("cannot read {key}: {e}"))?;
    from_pem(&cert_pem, &key_pem, provider).map_err(|e| format!("{cert} + {key}: {e}"))
}

/// Checks a PEM chain + key pair: both parse, the chain is not empty, and the key
/// is the leaf's.
pub fn from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<Loaded, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the chain file".into());
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("bad PEM private key: {e}"))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not belong to the certificate".to_string()
        }
        e => format!("unusable key: {e}"),
    })?;
    let info = info(&certified.cert[0])?;
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

/// Names, validity and serial of a DER certificate.
pub fn info(der: &[u8]) -> Result<CertInfo, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let validity = cert.validity();
    Ok(CertInfo {
        names,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        serial: cert.raw_serial_as_string().replace(':', ""),
        issuer: cert.issuer().to_string(),
    })
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads_with_its_names() {
        let (c, k) = self_signed(&["a.example.com", "*.b.example.com"]);
        let l = from_pem(c.as_bytes(), k.as_bytes(), &provider()).unwrap();
        assert_eq!(l.info.names, ["a.example.com", "*.b.example.com"]);
        assert!(l.info.not_after > l.info.not_before);
    }

    #[test]
    fn a_mismatched_pair_is_refused_clearly() {
        let (c, _) = self_signed(&["a.example.com"]);
        let (_, k) = self_signed(&["a.example.com"]);
        let e = from_pem(c.as_bytes(), k.as_bytes(), &provider()).unwrap_err();
        assert!(e.contains("does not belong"), "{e}");
    }

    #[test]
    fn garbage_is_refused_clearly() {
        let (c, k) = self_signed(&["a.example.com"]);
        let e = from_pem(b"not pem", k.as_bytes(), &provider()).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let e = from_pem(c.as_bytes(), b"junk", &provider()).unwrap_err();
        assert!(e.contains("private key"), "{e}");
        let half = &c.as_bytes()[..c.len() / 2];
        assert!(from_pem(half, k.as_bytes(), &provider()).is_err());
    }
}
