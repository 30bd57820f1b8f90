//! ACME (RFC 8555) for the whole cluster, with instant-acme.
//!
//! Everything lives in the cluster store, so replicas cooperate instead of each
//! ordering its own certificate:
//! - `acme:account:<directory>`: the account's credentials (one account per CA);
//! - `acme:cert:<set>`: the certificate and key for a set of names (`<set>` hashes
//!   the directory and the sorted names, so changing the names orders anew);
//! - `acme:http01:<token>` / `acme:alpn:<name>`: pending challenge answers;
//! - `acme:backoff:<set>`: failures so far and when to try again;
//! - the lease `acme:<set>`: who may order.
//!
//! Every replica, every `check_interval`: serve the stored certificate if it is new;
//! if none is stored or it is due for renewal, and no backoff is running, try the
//! lease; the holder reads the store again (another replica may just have
//! finished), orders, stores the result and releases the lease. Challenges are
//! answered by whichever replica the CA reaches: HTTP-01 on the plain port and
//! TLS-ALPN-01 on the TLS port both look the answer up in the store. Failures back
//! off exponentially (`retry_min` doubling to `retry_max`), cluster-wide, so a
//! broken setup never orders once per replica per minute.
//!
//! On the embedded store the account and certificate are also written to
//! `storage_dir` (and read back at start), so a restarted single replica serves its
//! certificate at once and does not order again.

mod client;
mod disk;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use parking_lot::Mutex;
use rustls::ServerConfig;
use serde::{Deserialize, Serialize};
use switchyard_shared::AcmeView;
use tokio::sync::watch;
use tracing::{info, warn};

use super::certs::{self, Loaded, unix_now};
use super::resolver::ACME_TLS_ALPN;
use crate::config::tls::{AcmeConfig, Challenge};
use crate::state::StateStore;

/// Where HTTP-01 tokens are asked for (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
/// How long a pending challenge answer is kept in the store.
const CHALLENGE_TTL: Duration = Duration::from_secs(15 * 60);
/// The ordering lease; renewed while an order runs, so a replica that dies
/// mid-order hands over after this long.
const LEASE_TTL: Duration = Duration::from_secs(60);
/// Longest wait for the CA to validate, and then to issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// A certificate as stored for the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredCert {
    domains: Vec<String>,
    cert_pem: String,
    key_pem: String,
    /// Unix seconds.
    issued_at: i64,
}

/// Failures so far, shared so every replica waits.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Backoff {
    failures: u32,
    retry_at: i64,
    error: String,
}

#[derive(Default)]
struct Status {
    phase: &'static str,
    serial: Option<String>,
    not_before: i64,
    not_after: i64,
    last_error: Option<String>,
    retry_at: Option<i64>,
}

/// A TLS-ALPN-01 answer: the key authorization's digest and the config showing it.
type AlpnConfig = (Vec<u8>, Arc<ServerConfig>);

pub struct Acme {
    cfg: ArcSwap<AcmeConfig>,
    store: Arc<dyn StateStore>,
    replica: String,
    disk: Option<PathBuf>,
    /// HTTP-01 answers this replica has seen (token → key authorization).
    http01: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01 configs built here (name → (digest, config)).
    alpn: Mutex<HashMap<String, AlpnConfig>>,
    status: Mutex<Status>,
    pub orders: AtomicU64,
    pub failures: AtomicU64,
    pub answered: AtomicU64,
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
        0u8.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// The store key of a certificate set.
fn set_id(cfg: &AcmeConfig) -> String {
    let mut names: Vec<String> = cfg.domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    let mut parts = vec![cfg.directory_url.as_str()];
    parts.extend(names.iter().map(String::as_str));
    short_hash(&parts)
}

/// When a certificate valid from `not_before` to `not_after` is due: `renew_before`
/// ahead of expiry, or with a third of its lifetime left if that comes later.
pub fn renew_at(not_before: i64, not_after: i64, renew_before: Duration) -> i64 {
    let third = (not_after - not_before).max(0) / 3;
    let before = renew_before.as_secs().min(i64::MAX as u64) as i64;
    not_after - before.min(third)
}

fn backoff_after(failures: u32, min: Duration, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(20);
    (min * factor).min(max)
}

impl Acme {
    pub fn new(
        cfg: AcmeConfig,
        store: Arc<dyn StateStore>,
        replica: &str,
    ) -> Result<Arc<Self>, String> {
        // The client is built per order, but its CA file is checked now.
        client::Client::new(cfg.ca_file.as_deref())?;
        let disk = disk::dir(&cfg, store.kind());
        Ok(Arc::new(Self {
            cfg: ArcSwap::from_pointee(cfg),
            store,
            replica: replica.to_string(),
            disk,
            http01: Mutex::new(HashMap::new()),
            alpn: Mutex::new(HashMap::new()),
            status: Mutex::new(Status {
                phase: "waiting",
                ..Default::default()
            }),
            orders: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            answered: AtomicU64::new(0),
        }))
    }

    /// A reloaded config's ACME block (new names: a new certificate set).
    pub fn set_config(&self, cfg: AcmeConfig) {
        self.cfg.store(Arc::new(cfg));
    }

    /// The certificate stored for the configured names (from the store, else from
    /// disk, which then seeds the store), checked.
    pub async fn load_existing(&self) -> Option<Loaded> {
        let cfg = self.cfg.load_full();
        let id = set_id(&cfg);
        let stored = match self.read_cert(&id).await {
            Some(s) => Some(s),
            None => {
                let s = self
                    .disk
                    .as_ref()
                    .and_then(|d| disk::read::<StoredCert>(d, &format!("cert-{id}.json")))?;
                if let Ok(bytes) = serde_json::to_vec(&s) {
                    let _ = self
                        .store
                        .kv_set(format!("acme:cert:{id}"), bytes, None)
                        .await;
                }
                info!(dir = ?self.disk, "ACME certificate loaded from disk");
                Some(s)
            }
        }?;
        self.check(&stored).inspect(|l| self.note_serving(l, &cfg))
    }

    async fn read_cert(&self, id: &str) -> Option<StoredCert> {
        let bytes = self.store.kv_get(format!("acme:cert:{id}")).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    fn check(&self, s: &StoredCert) -> Option<Loaded> {
        match certs::from_pem(
            s.cert_pem.as_bytes(),
            s.key_pem.as_bytes(),
            &super::provider(),
        ) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(error = %e, "stored ACME certificate unusable; ignored");
                None
            }
        }
    }

    fn note_serving(&self, l: &Loaded, cfg: &AcmeConfig) {
        let mut st = self.status.lock();
        st.serial = Some(l.info.serial.clone());
        st.not_before = l.info.not_before;
        st.not_after = l.info.not_after;
        let due = renew_at(l.info.not_before, l.info.not_after, cfg.renew_before.get());
        st.phase = if unix_now() >= due {
            "renewing"
        } else {
            "valid"
        };
    }

    /// The loop every replica runs.
    pub async fn run(self: Arc<Self>, tls: Arc<super::Tls>, mut stop: watch::Receiver<bool>) {
        loop {
            let cfg = self.cfg.load_full();
            self.tick(&tls, &cfg).await;
            tokio::select! {
                _ = tokio::time::sleep(cfg.check_interval.get()) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn tick(&self, tls: &super::Tls, cfg: &AcmeConfig) {
        let id = set_id(cfg);
        // 1. Serve what the cluster has.
        let stored = self.read_cert(&id).await;
        let mut serving = None;
        if let Some(s) = &stored
            && let Some(l) = self.check(s)
        {
            if tls.acme_serial().as_deref() != Some(l.info.serial.as_str()) {
                tls.install_acme(l.clone());
            }
            self.note_serving(&l, cfg);
            serving = Some(l.info);
        }
        // 2. Order if nothing is stored or it is due, unless backing off.
        let now = unix_now();
        let due = serving
            .as_ref()
            .is_none_or(|i| now >= renew_at(i.not_before, i.not_after, cfg.renew_before.get()));
        if !due {
            return;
        }
        let backoff = self.read_backoff(&id).await;
        {
            let mut st = self.status.lock();
            st.retry_at = (backoff.retry_at > now).then_some(backoff.retry_at);
            if !backoff.error.is_empty() {
                st.last_error = Some(backoff.error.clone());
            }
            if backoff.retry_at > now {
                st.phase = "backoff";
                return;
            }
        }
        let lease = format!("acme:{id}");
        match self
            .store
            .try_lease(lease.clone(), self.replica.clone(), LEASE_TTL)
            .await
        {
            Ok(true) => {}
            _ => return,
        }
        // Holding the lease: read again, another replica may just have finished.
        let fresh = self.read_cert(&id).await.and_then(|s| self.check(&s));
        let still_due = fresh.as_ref().is_none_or(|l| {
            unix_now() >= renew_at(l.info.not_before, l.info.not_after, cfg.renew_before.get())
        });
        let backoff = self.read_backoff(&id).await;
        if still_due && backoff.retry_at <= unix_now() {
            self.status.lock().phase = "ordering";
            let result = self.order_holding(cfg, &lease).await;
            self.finish(tls, cfg, &id, result, backoff).await;
        }
        let _ = self.store.release_lease(lease, self.replica.clone()).await;
    }

    /// Orders while keeping the lease; gives up if the lease is lost.
    async fn order_holding(&self, cfg: &AcmeConfig, lease: &str) -> Result<StoredCert, String> {
        let order = self.order(cfg);
        let mut order = std::pin::pin!(order);
        let mut renew = tokio::time::interval(LEASE_TTL / 3);
        renew.tick().await;
        loop {
            tokio::select! {
                r = order.as_mut() => return r,
                _ = renew.tick() => {
                    match self.store.try_lease(lease.to_string(), self.replica.clone(), LEASE_TTL).await {
                        Ok(true) => {}
                        Ok(false) => return Err("lost the ordering lease".into()),
                        // A store blip: keep going, the lease outlives it.
                        Err(_) => {}
                    }
                }
            }
        }
    }

    async fn finish(
        &self,
        tls: &super::Tls,
        cfg: &AcmeConfig,
        id: &str,
        result: Result<StoredCert, String>,
        backoff: Backoff,
    ) {
        let stored_ok = match result {
            Ok(s) => match (self.check(&s), serde_json::to_vec(&s)) {
                (Some(l), Ok(bytes)) => {
                    match self
                        .store
                        .kv_set(format!("acme:cert:{id}"), bytes, None)
                        .await
                    {
                        Ok(()) => {
                            if let Some(d) = &self.disk {
                                disk::write(d, &format!("cert-{id}.json"), &s);
                            }
                            let _ = self.store.kv_delete(format!("acme:backoff:{id}")).await;
                            info!(names = ?l.info.names, serial = %l.info.serial, "ACME certificate obtained");
                            tls.install_acme(l.clone());
                            self.note_serving(&l, cfg);
                            let mut st = self.status.lock();
                            st.last_error = None;
                            st.retry_at = None;
                            Ok(())
                        }
                        Err(e) => Err(format!("certificate obtained but not stored: {e}")),
                    }
                }
                _ => Err("the CA returned an unusable certificate".to_string()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = stored_ok {
            self.failures.fetch_add(1, Relaxed);
            let failures = backoff.failures + 1;
            let wait = backoff_after(failures, cfg.retry_min.get(), cfg.retry_max.get());
            let next = Backoff {
                failures,
                retry_at: unix_now() + wait.as_secs().max(1) as i64,
                error: e.clone(),
            };
            warn!(error = %e, failures, retry_in = ?wait, "ACME order failed");
            if let Ok(bytes) = serde_json::to_vec(&next) {
                let _ = self
                    .store
                    .kv_set(
                        format!("acme:backoff:{id}"),
                        bytes,
                        Some(cfg.retry_max.get() * 2),
                    )
                    .await;
            }
            let mut st = self.status.lock();
            st.phase = "backoff";
            st.last_error = Some(e);
            st.retry_at = Some(next.retry_at);
        }
    }

    async fn read_backoff(&self, id: &str) -> Backoff {
        match self.store.kv_get(format!("acme:backoff:{id}")).await {
            Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_default(),
            _ => Backoff::default(),
        }
    }

    /// The account for `cfg`'s CA: from the store (or disk), else created.
    async fn account(&self, cfg: &AcmeConfig) -> Result<Account, String> {
        let key = format!("acme:account:{}", short_hash(&[cfg.directory_url.as_str()]));
        let file = format!("account-{}.json", short_hash(&[cfg.directory_url.as_str()]));
        let builder = || -> Result<_, String> {
            Ok(Account::builder_with_http(Box::new(client::Client::new(
                cfg.ca_file.as_deref(),
            )?)))
        };
        let known = match self.store.kv_get(key.clone()).await {
            Ok(Some(b)) => serde_json::from_slice::<AccountCredentials>(&b).ok(),
            Ok(None) => None,
            Err(e) => return Err(format!("state store: {e}")),
        };
        let known = known.or_else(|| {
            self.disk
                .as_ref()
                .and_then(|d| disk::read::<AccountCredentials>(d, &file))
        });
        if let Some(creds) = known {
            return builder()?
                .from_credentials(creds)
                .await
                .map_err(|e| format!("ACME account: {e}"));
        }
        let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, creds) = builder()?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                cfg.directory_url.clone(),
                None,
            )
            .await
            .map_err(|e| format!("ACME account: {e}"))?;
        info!(id = account.id(), "ACME account created");
        let bytes = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
        self.store
            .kv_set(key, bytes, None)
            .await
            .map_err(|e| format!("state store: {e}"))?;
        if let Some(d) = &self.disk {
            disk::write(d, &file, &creds);
        }
        Ok(account)
    }

    /// One order, start to finish.
    async fn order(&self, cfg: &AcmeConfig) -> Result<StoredCert, String> {
        let account = self.account(cfg).await?;
        let ids: Vec<Identifier> = cfg
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.to_ascii_lowercase()))
            .collect();
        self.orders.fetch_add(1, Relaxed);
        info!(domains = ?cfg.domains, challenge = cfg.challenge.as_str(), "placing an ACME order");
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let kind = match cfg.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut published = Vec::new();
        let result = async {
            let mut authzs = order.authorizations();
            while let Some(a) = authzs.next().await {
                let mut a = a.map_err(|e| format!("authorization: {e}"))?;
                match a.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    s => return Err(format!("authorization is {s:?}")),
                }
                let mut ch = a.challenge(kind.clone()).ok_or_else(|| {
                    format!("the CA offers no {} challenge", cfg.challenge.as_str())
                })?;
                let ka = ch.key_authorization();
                let (key, value) = match cfg.challenge {
                    Challenge::Http01 => {
                        self.http01
                            .lock()
                            .insert(ch.token.clone(), ka.as_str().to_string());
                        (
                            format!("acme:http01:{}", ch.token),
                            ka.as_str().as_bytes().to_vec(),
                        )
                    }
                    Challenge::TlsAlpn01 => (
                        format!("acme:alpn:{}", ch.identifier()),
                        ka.digest().as_ref().to_vec(),
                    ),
                };
                self.store
                    .kv_set(key.clone(), value, Some(CHALLENGE_TTL))
                    .await
                    .map_err(|e| format!("challenge not shared: {e}"))?;
                published.push(key);
                ch.set_ready()
                    .await
                    .map_err(|e| format!("challenge ready: {e}"))?;
            }
            let policy = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .timeout(ORDER_TIMEOUT);
            let status = order
                .poll_ready(&policy)
                .await
                .map_err(|e| format!("validation: {e}"))?;
            if status != OrderStatus::Ready {
                return Err(format!("order is {status:?} (validation failed)"));
            }
            let key_pem = order
                .finalize()
                .await
                .map_err(|e| format!("finalize: {e}"))?;
            let cert_pem = order
                .poll_certificate(&policy)
                .await
                .map_err(|e| format!("certificate: {e}"))?;
            Ok(StoredCert {
                domains: cfg.domains.clone(),
                cert_pem,
                key_pem,
                issued_at: unix_now(),
            })
        }
        .await;
        for key in published {
            let _ = self.store.kv_delete(key).await;
        }
        self.http01.lock().clear();
        self.alpn.lock().clear();
        result
    }

    /// The key authorization for an HTTP-01 token: from this replica, else from
    /// the store (the replica that ordered may be another one).
    pub async fn http01_answer(&self, token: &str) -> Option<String> {
        if token.is_empty() || token.len() > 256 || token.contains('/') {
            return None;
        }
        let local = self.http01.lock().get(token).cloned();
        let answer = match local {
            Some(a) => Some(a),
            None => self
                .store
                .kv_get(format!("acme:http01:{token}"))
                .await
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok()),
        };
        if answer.is_some() {
            self.challenge_answered();
        }
        answer
    }

    pub fn challenge_answered(&self) {
        self.answered.fetch_add(1, Relaxed);
    }

    /// The TLS-ALPN-01 config for `name` (RFC 8737: a self-signed certificate for
    /// the name carrying the key authorization's digest), if a challenge is pending.
    pub async fn alpn_config(&self, name: &str) -> Option<Arc<ServerConfig>> {
        if name.is_empty() {
            return None;
        }
        let digest = self
            .store
            .kv_get(format!("acme:alpn:{name}"))
            .await
            .ok()??;
        if let Some((d, c)) = self.alpn.lock().get(name)
            && *d == digest
        {
            return Some(c.clone());
        }
        let config = match alpn_server_config(name, &digest) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                warn!(error = %e, name, "cannot build the TLS-ALPN-01 certificate");
                return None;
            }
        };
        self.alpn
            .lock()
            .insert(name.to_string(), (digest, config.clone()));
        Some(config)
    }

    pub fn view(&self) -> AcmeView {
        let cfg = self.cfg.load();
        let st = self.status.lock();
        AcmeView {
            directory_url: cfg.directory_url.clone(),
            domains: cfg.domains.clone(),
            challenge: cfg.challenge.as_str().into(),
            state: st.phase.into(),
            renew_at: st
                .serial
                .as_ref()
                .map(|_| renew_at(st.not_before, st.not_after, cfg.renew_before.get())),
            last_error: st.last_error.clone(),
            retry_at: st.retry_at,
            orders: self.orders.load(Relaxed),
            failures: self.failures.load(Relaxed),
            challenges_answered: self.answered.load(Relaxed),
        }
    }
}

fn alpn_server_config(name: &str, digest: &[u8]) -> Result<ServerConfig, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key_der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = super::provider();
    let signer = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| e.to_string())?;
    // Not `with_single_cert`: its check refuses the critical acmeIdentifier
    // extension that this certificate exists to carry.
    let certified = Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    ));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ChallengeCert(certified)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(config)
}

/// Always the one challenge certificate.
#[derive(Debug)]
struct ChallengeCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for ChallengeCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_30_days_ahead_or_at_a_third_of_a_short_life() {
        let day = 86_400;
        // A 90-day certificate: 30 days before expiry.
        assert_eq!(
            renew_at(0, 90 * day, Duration::from_secs(30 * day as u64)),
            60 * day
        );
        // A 6-day certificate: with 2 days left, not at once.
        assert_eq!(
            renew_at(0, 6 * day, Duration::from_secs(30 * day as u64)),
            4 * day
        );
        // A shorter renew_before wins over a third.
        assert_eq!(
            renew_at(0, 90 * day, Duration::from_secs(day as u64)),
            89 * day
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        assert_eq!(backoff_after(1, min, max), min);
        assert_eq!(backoff_after(2, min, max), min * 2);
        assert_eq!(backoff_after(5, min, max), min * 16);
        assert_eq!(backoff_after(30, min, max), max);
    }

    #[test]
    fn the_set_id_ignores_name_order_and_case() {
        let a = AcmeConfig {
            directory_url: "https://ca/dir".into(),
            domains: vec!["b.test".into(), "A.test".into()],
            ..Default::default()
        };
        let b = AcmeConfig {
            domains: vec!["a.test".into(), "b.test".into()],
            ..a.clone()
        };
        assert_eq!(set_id(&a), set_id(&b));
        let c = AcmeConfig {
            domains: vec!["a.test".into()],
            ..a.clone()
        };
        assert_ne!(set_id(&a), set_id(&c));
    }

    #[test]
    fn the_alpn_certificate_builds() {
        let c = alpn_server_config("a.test", &[7u8; 32]).unwrap();
        assert_eq!(c.alpn_protocols, vec![ACME_TLS_ALPN.to_vec()]);
    }
}
