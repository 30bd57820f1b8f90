//! instant-acme's HTTP client: one HTTPS connection per ACME request (a few per
//! order, rarely), through rustls with Mozilla's roots plus `tls.acme.ca_file`.
//! Our own, so the proxy needs neither hyper-rustls nor a platform verifier.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest an ACME request may take (connect to last byte).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    tls: TlsConnector,
}

impl Client {
    /// Trusts Mozilla's roots and the certificates in `ca_file`.
    pub fn new(ca_file: Option<&str>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("tls.acme.ca_file {path}: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("tls.acme.ca_file {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("tls.acme.ca_file {path}: no certificates"));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("tls.acme.ca_file {path}: {e}"))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(super::super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    async fn send(
        tls: TlsConnector,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Result<BytesResponse, String> {
        let uri = req.uri().clone();
        if uri.scheme_str() != Some("https") {
            return Err(format!("{uri}: ACME needs https"));
        }
        let host = uri.host().ok_or("no host in the ACME URL")?.to_string();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|e| e.to_string())?;
        let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (mut parts, body) = req.into_parts();
        let authority = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        if let Ok(v) = http::HeaderValue::from_str(&authority) {
            parts.headers.insert(http::header::HOST, v);
        }
        parts.uri = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        let resp = sender
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(BytesResponse::from(http::Response::from_parts(
            parts,
            http_body_util::Full::new(bytes),
        )))
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, Self::send(tls, req)).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(Error::Other(e.into())),
                Err(_) => Err(Error::Other("ACME request timed out".into())),
            }
        })
    }
}
