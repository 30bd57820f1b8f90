//! HTTPS at the edge: the certificates a replica serves (from files, reloaded when
//! they change, or from ACME, shared by the cluster), SNI, session tickets with
//! cluster-wide keys, the HTTPS listener, and what the plain listener does for it
//! (HTTP-01 answers, the redirect).
//!
//! [`Tls`] is the narrow handle the rest of the proxy sees: the listener asks it for
//! the rustls config, the plain path for [`Tls::intercept_plain`], admin and
//! `/metrics` for [`Tls::view`]. Crypto: rustls with the ring provider (chosen by
//! measurement, see docs/benchmarks.md §7).

pub mod acme;
pub mod admin;
pub mod certs;
pub mod listener;
pub mod metrics;
pub mod resolver;
pub mod tickets;
mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, header};
use parking_lot::Mutex;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use switchyard_shared::{CertificateView, TlsView};
use tracing::{info, warn};

use self::acme::Acme;
use self::resolver::{Entry, Origin, Resolver, Table};
use self::tickets::Ticketer;
use crate::config::Config;
use crate::config::tls::{CertificateFiles, TlsConfig};
use crate::events::now_ms;
use crate::forward::body::{ProxyBody, ReqBody};
use crate::state::StateStore;

pub use crate::forward::tls::provider;

/// Settings read per connection or request, swapped on a config reload.
#[derive(Debug)]
pub struct Settings {
    pub redirect_http: bool,
    pub hsts: Option<HeaderValue>,
    pub handshake_timeout: Duration,
    pub http2: bool,
}

/// Handshake and reload counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub handshakes: AtomicU64,
    pub resumed: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub reloads: AtomicU64,
    pub reloads_refused: AtomicU64,
}

/// One `tls.certificates` entry: its files, what was last loaded from them, and
/// the last refusal.
#[derive(Clone, Debug)]
struct FileSlot {
    files: CertificateFiles,
    /// Hash of the two files' contents last looked at.
    seen: Option<u64>,
    entry: Option<Entry>,
    error: Option<String>,
    loaded_at_ms: u64,
}

/// The TLS side of a replica.
pub struct Tls {
    resolver: Arc<Resolver>,
    ticketer: Option<Arc<Ticketer>>,
    server: ArcSwap<ServerConfig>,
    admin: ArcSwap<ServerConfig>,
    settings: ArcSwap<Settings>,
    config: Mutex<TlsConfig>,
    files: Mutex<Vec<FileSlot>>,
    acme_entry: Mutex<Option<(Entry, u64)>>,
    /// The `tls.self_signed` certificate, made at start.
    self_signed: Option<(Entry, u64)>,
    pub acme: Option<Arc<Acme>>,
    pub stats: Stats,
    /// The HTTPS listener's address, once bound.
    pub listen: OnceLock<SocketAddr>,
    pub admin_tls: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

fn settings_of(t: &TlsConfig) -> Settings {
    Settings {
        redirect_http: t.redirect_http,
        hsts: t
            .hsts
            .as_deref()
            .and_then(|h| HeaderValue::from_str(h).ok()),
        handshake_timeout: t.handshake_timeout.get(),
        http2: t.http2,
    }
}

/// `tls.certificates[index]`, loaded and checked.
fn load_slot(
    index: usize,
    f: &CertificateFiles,
    provider: &CryptoProvider,
) -> Result<FileSlot, String> {
    let l = certs::load_files(&f.cert, &f.key, provider)?;
    Ok(FileSlot {
        files: f.clone(),
        seen: files_hash(f),
        entry: Some(Entry {
            key: l.key,
            info: l.info,
            origin: Origin::File {
                index,
                cert: f.cert.clone(),
                key: f.key.clone(),
            },
        }),
        error: None,
        loaded_at_ms: now_ms(),
    })
}

/// Hash of a certificate entry's files, to notice a change (a rename, a symlink
/// swap, an edit in place all change what the paths read as).
fn files_hash(f: &CertificateFiles) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let cert = std::fs::read(&f.cert).ok()?;
    let key = std::fs::read(&f.key).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    cert.hash(&mut h);
    key.hash(&mut h);
    Some(h.finish())
}

impl Tls {
    /// Builds the TLS side from `config` (which must have a `tls:` block): every
    /// certificate file must load, so a typo stops the start with its reason.
    pub async fn new(
        config: &Config,
        store: Arc<dyn StateStore>,
        replica: &str,
    ) -> Result<Arc<Self>, String> {
        let t = config
            .tls
            .clone()
            .ok_or_else(|| "no tls block in the config".to_string())?;
        let provider = provider();
        let mut slots = Vec::new();
        for (i, f) in t.certificates.iter().enumerate() {
            slots.push(
                load_slot(i, f, &provider).map_err(|e| format!("tls.certificates[{i}]: {e}"))?,
            );
        }
        let resolver = Arc::new(Resolver::new());
        let ticketer = t
            .session_tickets
            .then(|| Ticketer::new(t.ticket_rotation.get(), t.ticket_keys.as_usize()));
        let acme = match &t.acme {
            Some(a) => Some(Acme::new(a.clone(), store.clone(), replica)?),
            None => None,
        };
        // What the cluster already has (ticket keys, an ACME or self-signed
        // certificate) is read from the store: give a Redis store that is still
        // connecting a moment, as the replica's start does for the overlay.
        if store.kind() != "memory" {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while !store.is_connected() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let self_signed = match t.self_signed.is_empty() {
            true => None,
            false => Some((self_signed(&t.self_signed, &*store).await?, now_ms())),
        };
        let (server, admin) = build_configs(&t, &resolver, ticketer.as_ref())?;
        let tls = Arc::new(Self {
            resolver,
            ticketer,
            server: ArcSwap::from_pointee(server),
            admin: ArcSwap::from_pointee(admin),
            settings: ArcSwap::from_pointee(settings_of(&t)),
            config: Mutex::new(t),
            files: Mutex::new(slots),
            acme_entry: Mutex::new(None),
            self_signed,
            acme,
            stats: Stats::default(),
            listen: OnceLock::new(),
            admin_tls: config.admin.tls,
        });
        if let Some(a) = &tls.acme {
            // A certificate obtained before (the store, or the disk for one replica)
            // serves from the first handshake on.
            if let Some(loaded) = a.load_existing().await {
                tls.install_acme(loaded);
            }
        }
        tls.rebuild_table();
        if let Some(tk) = &tls.ticketer {
            tk.sync(&*store, certs::unix_now().max(0) as u64).await;
        }
        Ok(tls)
    }

    /// Starts the background work: file watching (and SIGHUP, and config reloads),
    /// ticket-key rotation, ACME.
    pub fn spawn(
        self: &Arc<Self>,
        app: Arc<crate::app::App>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = vec![tokio::spawn(watch::run(
            self.clone(),
            app.clone(),
            stop.clone(),
        ))];
        if let Some(tk) = &self.ticketer {
            tasks.push(tokio::spawn(
                tk.clone().run(kv_of(&app.store), stop.clone()),
            ));
        }
        if let Some(a) = &self.acme {
            tasks.push(tokio::spawn(a.clone().run(self.clone(), stop)));
        }
        tasks
    }

    /// The rustls config for new proxy connections.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.load_full()
    }

    /// The rustls config for new admin connections.
    pub fn admin_config(&self) -> Arc<ServerConfig> {
        self.admin.load_full()
    }

    pub fn settings(&self) -> arc_swap::Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// Serves an ACME certificate (replacing the previous one).
    pub fn install_acme(&self, loaded: certs::Loaded) {
        let entry = Entry {
            key: loaded.key,
            info: loaded.info,
            origin: Origin::Acme,
        };
        info!(names = ?entry.info.names, serial = %entry.info.serial, not_after = entry.info.not_after, "serving the ACME certificate");
        *self.acme_entry.lock() = Some((entry, now_ms()));
        self.rebuild_table();
    }

    /// The certificate currently served for ACME, if any (its serial).
    pub fn acme_serial(&self) -> Option<String> {
        self.acme_entry
            .lock()
            .as_ref()
            .map(|(e, _)| e.info.serial.clone())
    }

    fn rebuild_table(&self) {
        let mut entries: Vec<Entry> = self
            .files
            .lock()
            .iter()
            .filter_map(|s| s.entry.clone())
            .collect();
        if let Some((e, _)) = &self.self_signed {
            entries.push(e.clone());
        }
        if let Some((e, _)) = &*self.acme_entry.lock() {
            entries.push(e.clone());
        }
        let strict = self.config.lock().strict_sni;
        self.resolver
            .table
            .store(Arc::new(Table::new(entries, strict)));
    }

    /// Re-reads every certificate file that changed; a pair that does not load is
    /// refused and the last good one keeps serving. Returns whether anything changed.
    pub fn check_files(&self) -> bool {
        let provider = provider();
        let mut changed = false;
        {
            let mut slots = self.files.lock();
            for (i, slot) in slots.iter_mut().enumerate() {
                let now = files_hash(&slot.files);
                if now.is_some() && now == slot.seen {
                    continue;
                }
                slot.seen = now;
                match certs::load_files(&slot.files.cert, &slot.files.key, &provider) {
                    Ok(l) => {
                        info!(cert = %slot.files.cert, names = ?l.info.names, serial = %l.info.serial, "certificate reloaded");
                        self.stats.reloads.fetch_add(1, Relaxed);
                        slot.entry = Some(Entry {
                            key: l.key,
                            info: l.info,
                            origin: Origin::File {
                                index: i,
                                cert: slot.files.cert.clone(),
                                key: slot.files.key.clone(),
                            },
                        });
                        slot.error = None;
                        slot.loaded_at_ms = now_ms();
                        changed = true;
                    }
                    Err(e) => {
                        if slot.error.as_deref() != Some(e.as_str()) {
                            warn!(error = %e, "certificate refused; the last good one keeps serving");
                            self.stats.reloads_refused.fetch_add(1, Relaxed);
                        }
                        slot.error = Some(e);
                    }
                }
            }
        }
        if changed {
            self.rebuild_table();
        }
        changed
    }

    /// Applies a reloaded config's `tls:` block: certificate list, SNI and protocol
    /// settings, ACME names. Listener address and ticket settings need a restart.
    pub fn apply_config(&self, t: &TlsConfig) {
        if *self.config.lock() == *t {
            return;
        }
        let provider = provider();
        {
            let mut slots = self.files.lock();
            let old = std::mem::take(&mut *slots);
            for (i, f) in t.certificates.iter().enumerate() {
                let kept = old.iter().find(|s| s.files == *f).cloned();
                let slot = match load_slot(i, f, &provider) {
                    Ok(slot) => slot,
                    Err(e) => {
                        warn!(error = %e, "tls.certificates[{i}] refused on reload");
                        self.stats.reloads_refused.fetch_add(1, Relaxed);
                        let mut s = kept.unwrap_or(FileSlot {
                            files: f.clone(),
                            seen: None,
                            entry: None,
                            error: None,
                            loaded_at_ms: 0,
                        });
                        s.seen = files_hash(f);
                        s.error = Some(e);
                        s
                    }
                };
                slots.push(slot);
            }
        }
        *self.config.lock() = t.clone();
        match build_configs(t, &self.resolver, self.ticketer.as_ref()) {
            Ok((server, admin)) => {
                self.server.store(Arc::new(server));
                self.admin.store(Arc::new(admin));
            }
            Err(e) => warn!(error = %e, "TLS settings not applied"),
        }
        self.settings.store(Arc::new(settings_of(t)));
        if let (Some(a), Some(cfg)) = (&self.acme, &t.acme) {
            a.set_config(cfg.clone());
        }
        self.rebuild_table();
    }

    /// The answer to an ACME HTTP-01 request on the plain port (exempt from the
    /// redirect): the token's key authorization, or `None` (404).
    async fn intercept_plain(&self, req: &Request<ReqBody>) -> Option<Response<ProxyBody>> {
        let token = req.uri().path().strip_prefix(acme::HTTP01_PREFIX)?;
        let answer = self.acme.as_ref()?.http01_answer(token).await?;
        Some(crate::errors::acme_answer(answer).map(ProxyBody::full))
    }

    /// `/admin/tls`.
    pub fn view(&self) -> TlsView {
        let t = self.config.lock().clone();
        let now = certs::unix_now();
        let mut certificates = Vec::new();
        let table = self.resolver.table.load();
        let default_serial = if t.strict_sni {
            None
        } else {
            table.entries.first().map(|e| e.info.serial.clone())
        };
        let view_of = |e: &Entry, loaded: u64| CertificateView {
            source: match e.origin {
                Origin::File { .. } => "file".into(),
                Origin::Acme => "acme".into(),
                Origin::SelfSigned => "self-signed".into(),
            },
            cert_file: match &e.origin {
                Origin::File { cert, .. } => Some(cert.clone()),
                _ => None,
            },
            key_file: match &e.origin {
                Origin::File { key, .. } => Some(key.clone()),
                _ => None,
            },
            names: e.info.names.clone(),
            not_before: e.info.not_before,
            not_after: e.info.not_after,
            expires_in_s: e.info.not_after - now,
            serial: e.info.serial.clone(),
            issuer: e.info.issuer.clone(),
            default: default_serial.as_deref() == Some(e.info.serial.as_str()),
            error: None,
            loaded_at_ms: loaded,
        };
        for s in self.files.lock().iter() {
            let mut v = match &s.entry {
                Some(e) => view_of(e, s.loaded_at_ms),
                None => CertificateView {
                    source: "file".into(),
                    cert_file: Some(s.files.cert.clone()),
                    key_file: Some(s.files.key.clone()),
                    ..Default::default()
                },
            };
            v.error = s.error.clone();
            certificates.push(v);
        }
        if let Some((e, at)) = &self.self_signed {
            certificates.push(view_of(e, *at));
        }
        if let Some((e, at)) = &*self.acme_entry.lock() {
            certificates.push(view_of(e, *at));
        }
        let mut alpn = Vec::new();
        if t.http2 {
            alpn.push("h2".to_string());
        }
        alpn.push("http/1.1".to_string());
        TlsView {
            listen: self.listen.get().map(|a| a.to_string()),
            min_version: t.min_version.clone(),
            alpn,
            certificates,
            acme: self.acme.as_ref().map(|a| a.view()),
            session_tickets: self.ticketer.is_some(),
            ticket_keys: self.ticketer.as_ref().map_or(0, |t| t.key_count() as u32),
            redirect_http: t.redirect_http,
            hsts: t.hsts.clone(),
            admin_tls: self.admin_tls,
            handshakes: self.stats.handshakes.load(Relaxed),
            resumed: self.stats.resumed.load(Relaxed),
            handshake_failures: self.stats.failures.load(Relaxed),
            handshake_timeouts: self.stats.timeouts.load(Relaxed),
        }
    }
}

impl crate::forward::PlainIntercept for Tls {
    fn intercept<'a>(
        &'a self,
        req: &'a Request<ReqBody>,
    ) -> Option<futures_util::future::BoxFuture<'a, Response<ProxyBody>>> {
        let path = req.uri().path();
        if self.acme.is_some() && path.starts_with(acme::HTTP01_PREFIX) {
            return Some(Box::pin(async move {
                match self.intercept_plain(req).await {
                    Some(r) => r,
                    None => crate::errors::not_found().map(ProxyBody::full),
                }
            }));
        }
        if !self.settings.load().redirect_http {
            return None;
        }
        let port = self.listen.get().map(|a| a.port()).unwrap_or(443);
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())?;
        let resp = crate::errors::redirect(&https_location(
            host,
            port,
            req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        ))
        .map(|_| ProxyBody::empty());
        Some(Box::pin(std::future::ready(resp)))
    }
}

/// The `tls.self_signed` certificate: made by the first replica to start and kept
/// in the cluster store, so every replica serves the same one (a replica that
/// cannot reach the store serves its own).
async fn self_signed(names: &[String], store: &dyn StateStore) -> Result<Entry, String> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Pair {
        cert: String,
        key: String,
    }
    let make = || -> Result<Pair, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())
            .map_err(|e| format!("tls.self_signed: {e}"))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchyard self-signed");
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    };
    let fresh = serde_json::to_vec(&make()?).map_err(|e| e.to_string())?;
    let mut sorted = names.to_vec();
    sorted.sort();
    let key = format!("tls:self-signed:{}", sorted.join(","));
    let bytes = store
        .kv_set_nx(key, fresh.clone(), None)
        .await
        .unwrap_or(fresh);
    let pair: Pair = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let l = certs::from_pem(pair.cert.as_bytes(), pair.key.as_bytes(), &provider())?;
    Ok(Entry {
        key: l.key,
        info: l.info,
        origin: Origin::SelfSigned,
    })
}

/// The store as the blob interface.
pub fn kv_of(store: &Arc<dyn StateStore>) -> Arc<dyn crate::state::SharedKv> {
    store.clone()
}

/// `https://host[:port]/path` for a plain request's `Host` (its port dropped).
fn https_location(host: &str, port: u16, path_and_query: &str) -> String {
    let name = match host.rsplit_once(':') {
        // IPv6 literal without a port: `[::1]`.
        Some((h, p)) if !p.contains(']') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    if port == 443 {
        format!("https://{name}{path_and_query}")
    } else {
        format!("https://{name}:{port}{path_and_query}")
    }
}

/// The proxy's and the admin listener's rustls configs for `t`.
fn build_configs(
    t: &TlsConfig,
    resolver: &Arc<Resolver>,
    ticketer: Option<&Arc<Ticketer>>,
) -> Result<(ServerConfig, ServerConfig), String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if t.min_version == "1.3" {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let build = |alpn: Vec<Vec<u8>>| -> Result<ServerConfig, String> {
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        c.alpn_protocols = alpn;
        if let Some(tk) = ticketer {
            c.ticketer = tk.clone();
        }
        Ok(c)
    };
    let mut alpn = Vec::new();
    if t.http2 {
        alpn.push(b"h2".to_vec());
    }
    alpn.push(b"http/1.1".to_vec());
    let server = build(alpn.clone())?;
    let admin = build(alpn)?;
    Ok((server, admin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_location_keeps_the_path_and_names_the_https_port() {
        assert_eq!(
            https_location("example.com:8080", 8443, "/a?b=1"),
            "https://example.com:8443/a?b=1"
        );
        assert_eq!(
            https_location("example.com", 443, "/"),
            "https://example.com/"
        );
        assert_eq!(https_location("[::1]:80", 443, "/x"), "https://[::1]/x");
        assert_eq!(https_location("[::1]", 8443, "/x"), "https://[::1]:8443/x");
    }
}
