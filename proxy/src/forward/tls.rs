//! TLS to `https` backends (rustls with the ring provider; Mozilla's roots plus an
//! optional CA file for private PKI).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;

/// The client TLS settings in force, with the CA file they were built from.
struct Current {
    ca_file: Option<String>,
    connector: TlsConnector,
}

static CURRENT: ArcSwapOption<Current> = ArcSwapOption::const_empty();

fn build(ca_file: Option<&str>) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read CA file {path}: {e}"))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad PEM in CA file {path}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("no certificates in CA file {path}"));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("bad certificate in {path}: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Makes `ca_file` the trust source for new upstream TLS connections; an error
/// leaves the previous one in force (the caller refuses the config).
pub fn configure(ca_file: Option<&str>) -> Result<(), String> {
    if let Some(cur) = CURRENT.load().as_ref()
        && cur.ca_file.as_deref() == ca_file
    {
        return Ok(());
    }
    let connector = build(ca_file)?;
    CURRENT.store(Some(Arc::new(Current {
        ca_file: ca_file.map(str::to_string),
        connector,
    })));
    Ok(())
}

/// The connector for new upstream TLS connections (Mozilla's roots alone until a
/// config says otherwise).
pub fn connector() -> Result<TlsConnector, String> {
    if let Some(c) = CURRENT.load_full() {
        return Ok(c.connector.clone());
    }
    configure(None)?;
    match CURRENT.load_full() {
        Some(c) => Ok(c.connector.clone()),
        None => Err("TLS not configured".into()),
    }
}
