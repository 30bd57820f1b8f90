//! TLS to `https` backends (rustls, the proxy's crypto provider): Mozilla's roots
//! plus `upstream.ca_file`, and per backend (`backends[].tls`) verification on or
//! off, an extra CA file, the SNI name, and a client certificate for mutual TLS.
//!
//! The settings are built into connectors when a config is applied ([`configure`]),
//! one per distinct setting, so a new connection only looks its backend up.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

use crate::config::Config;
use crate::config::tls::UpstreamTls;

/// The crypto provider for every TLS endpoint of the proxy (server and upstream):
/// ring, or aws-lc-rs with the `aws-lc-rs` feature (measured, docs/benchmarks.md §7).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            #[cfg(feature = "aws-lc-rs")]
            let p = rustls::crypto::aws_lc_rs::default_provider();
            #[cfg(not(feature = "aws-lc-rs"))]
            let p = rustls::crypto::ring::default_provider();
            Arc::new(p)
        })
        .clone()
}

/// One setting's connectors: HTTP/1.1 (no ALPN, as before) and HTTP/2 (ALPN `h2`,
/// for `protocol: h2` backends).
#[derive(Clone)]
struct Connectors {
    http1: TlsConnector,
    h2: TlsConnector,
}

impl Connectors {
    fn new(config: rustls::ClientConfig) -> Self {
        let mut h2 = config.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        Self {
            http1: TlsConnector::from(Arc::new(config)),
            h2: TlsConnector::from(Arc::new(h2)),
        }
    }

    fn pick(&self, h2: bool) -> TlsConnector {
        if h2 {
            self.h2.clone()
        } else {
            self.http1.clone()
        }
    }
}

/// One backend's TLS: its connectors and the name it sends.
struct Client {
    connector: Connectors,
    server_name: Option<ServerName<'static>>,
}

/// The client TLS settings in force.
struct Current {
    default: Connectors,
    /// By backend key (`https://host:port`), for backends with a `tls:` block.
    backends: HashMap<String, Arc<Client>>,
}

static CURRENT: ArcSwapOption<Current> = ArcSwapOption::const_empty();

fn read_cas(path: &str, roots: &mut RootCertStore) -> Result<(), String> {
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
    Ok(())
}

fn build(ca_file: Option<&str>, backend: Option<&UpstreamTls>) -> Result<Connectors, String> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        read_cas(path, &mut roots)?;
    }
    if let Some(path) = backend.and_then(|b| b.ca_file.as_deref()) {
        read_cas(path, &mut roots)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if backend.is_some_and(|b| !b.verify) {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        builder.with_root_certificates(roots)
    };
    let config = match backend.and_then(|b| b.cert.as_deref().zip(b.key.as_deref())) {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("client certificate {cert}: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("client certificate {cert}: {e}"))?;
            if chain.is_empty() {
                return Err(format!("client certificate {cert}: no certificate"));
            }
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("client key {key}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate {cert}: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Connectors::new(config))
}

/// Builds the upstream TLS settings of `config` and puts them in force for new
/// connections; an error (a missing or bad file) leaves the previous ones in force
/// and the caller refuses the config.
pub fn configure(config: &Config) -> Result<(), String> {
    let ca = config.upstream.ca_file.as_deref();
    let default = build(ca, None).map_err(|e| format!("upstream.ca_file: {e}"))?;
    let mut by_setting: HashMap<&UpstreamTls, Arc<Client>> = HashMap::new();
    // Entries of backends this config does not name are kept: a backend added
    // back at runtime keeps its settings, and replicas sharing a process (tests)
    // do not drop each other's.
    let mut backends = CURRENT
        .load_full()
        .map(|c| c.backends.clone())
        .unwrap_or_default();
    for b in &config.backends {
        backends.remove(&b.url.parsed.key());
    }
    for (i, b) in config.backends.iter().enumerate() {
        let Some(t) = &b.tls else { continue };
        let client = match by_setting.get(t) {
            Some(c) => c.clone(),
            None => {
                let connector =
                    build(ca, Some(t)).map_err(|e| format!("backends[{i}].tls: {e}"))?;
                let server_name = match &t.server_name {
                    Some(n) => Some(
                        ServerName::try_from(n.clone())
                            .map_err(|e| format!("backends[{i}].tls.server_name: {e}"))?,
                    ),
                    None => None,
                };
                let c = Arc::new(Client {
                    connector,
                    server_name,
                });
                by_setting.insert(t, c.clone());
                c
            }
        };
        backends.insert(b.url.parsed.key(), client);
    }
    CURRENT.store(Some(Arc::new(Current { default, backends })));
    Ok(())
}

/// The connector and server name for a new TLS connection to the backend `key`
/// at `host` (Mozilla's roots alone until a config says otherwise); with `h2`,
/// one that offers ALPN `h2`.
pub fn connector_for(
    key: &str,
    host: &str,
    h2: bool,
) -> Result<(TlsConnector, ServerName<'static>), String> {
    let current = match CURRENT.load_full() {
        Some(c) => c,
        None => {
            configure(&Config::default())?;
            CURRENT
                .load_full()
                .ok_or_else(|| "TLS not configured".to_string())?
        }
    };
    let (connector, name) = match current.backends.get(key) {
        Some(c) => (c.connector.pick(h2), c.server_name.clone()),
        None => (current.default.pick(h2), None),
    };
    let name = match name {
        Some(n) => n,
        None => ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?,
    };
    Ok((connector, name))
}

/// `backends[].tls.verify: false`: any certificate is accepted (the handshake's
/// signatures are still checked, so the connection is encrypted to whoever holds
/// the key the backend presented).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
