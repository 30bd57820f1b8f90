//! Session tickets whose keys every replica shares, so a client resumes on any
//! replica behind the same name (HAProxy and nginx need a key file distributed by
//! hand for that).
//!
//! Time is cut into epochs of `ticket_rotation`; epoch `e`'s key is 48 random bytes
//! (16 name + 32 AES-256-GCM key) stored in the cluster store under
//! `tls:ticket:<e>` by whichever replica asks first (set-if-absent, so all agree).
//! A replica seals with the current epoch's key and opens with the last
//! `ticket_keys` epochs' keys and the next one's (fetched ahead, so a replica whose
//! clock runs a little ahead is understood). With the store unreachable, missing
//! keys are made locally: resumption then works per replica until it returns.
//!
//! Ticket: key name (16) ‖ nonce (12) ‖ AES-256-GCM(session state), the name as
//! associated data.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::state::SharedKv;

const NAME_LEN: usize = 16;
const KEY_LEN: usize = 32;
const MATERIAL_LEN: usize = NAME_LEN + KEY_LEN;
const TAG_LEN: usize = 16;
/// Longest ticket lifetime TLS 1.3 allows (RFC 8446 §4.6.1).
const MAX_LIFETIME: u64 = 7 * 24 * 3600;

struct TicketKey {
    epoch: u64,
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

#[derive(Default)]
struct KeySet {
    current: Option<Arc<TicketKey>>,
    accepted: Vec<Arc<TicketKey>>,
}

/// rustls' ticket hook, with keys kept in sync by [`Ticketer::run`].
pub struct Ticketer {
    keys: ArcSwap<KeySet>,
    rotation: u64,
    keep: u64,
    rng: SystemRandom,
    /// Keys made here while the store was unreachable, by epoch.
    local: Mutex<HashMap<u64, [u8; MATERIAL_LEN]>>,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticketer")
            .field("rotation", &self.rotation)
            .finish()
    }
}

fn key_of(epoch: u64, material: &[u8]) -> Option<TicketKey> {
    if material.len() != MATERIAL_LEN {
        return None;
    }
    let mut name = [0u8; NAME_LEN];
    name.copy_from_slice(&material[..NAME_LEN]);
    let unbound = UnboundKey::new(&AES_256_GCM, &material[NAME_LEN..]).ok()?;
    Some(TicketKey {
        epoch,
        name,
        aead: LessSafeKey::new(unbound),
    })
}

impl Ticketer {
    /// Keys rotating every `rotation`, `keep` of them accepted.
    pub fn new(rotation: Duration, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            keys: ArcSwap::from_pointee(KeySet::default()),
            rotation: rotation.as_secs().max(1),
            keep: keep.max(2) as u64,
            rng: SystemRandom::new(),
            local: Mutex::new(HashMap::new()),
        })
    }

    fn epoch_at(&self, unix: u64) -> u64 {
        unix / self.rotation
    }

    fn random_material(&self) -> Option<[u8; MATERIAL_LEN]> {
        let mut m = [0u8; MATERIAL_LEN];
        self.rng.fill(&mut m).ok()?;
        Some(m)
    }

    /// Fetches (or creates) the keys for the epochs around `unix` and installs them.
    pub async fn sync(&self, kv: &dyn SharedKv, unix: u64) {
        let now = self.epoch_at(unix);
        let ttl = Duration::from_secs(self.rotation * (self.keep + 2));
        let first = now.saturating_sub(self.keep - 1);
        let mut accepted = Vec::new();
        let mut current = None;
        let old = self.keys.load();
        for epoch in (first..=now + 1).rev() {
            let Some(fresh) = self.random_material() else {
                continue;
            };
            let material = match kv
                .kv_set_nx(format!("tls:ticket:{epoch}"), fresh.to_vec(), Some(ttl))
                .await
            {
                Ok(m) => {
                    self.local.lock().remove(&epoch);
                    m
                }
                Err(e) => {
                    debug!(error = %e, epoch, "ticket key not shared; using a local one");
                    // Keep the key in force for this epoch if there is one.
                    if let Some(k) = old.accepted.iter().find(|k| k.epoch == epoch) {
                        if epoch == now {
                            current = Some(k.clone());
                        }
                        accepted.push(k.clone());
                        continue;
                    }
                    self.local.lock().entry(epoch).or_insert(fresh).to_vec()
                }
            };
            let Some(key) = key_of(epoch, &material).map(Arc::new) else {
                warn!(epoch, "malformed ticket key in the store; ignored");
                continue;
            };
            if epoch == now {
                current = Some(key.clone());
            }
            accepted.push(key);
        }
        self.local.lock().retain(|e, _| *e >= first);
        self.keys.store(Arc::new(KeySet { current, accepted }));
    }

    /// Keeps the keys in sync until `stop`: at every epoch boundary and every 30 s.
    pub async fn run(self: Arc<Self>, kv: Arc<dyn SharedKv>, mut stop: watch::Receiver<bool>) {
        loop {
            let unix = super::certs::unix_now().max(0) as u64;
            self.sync(&*kv, unix).await;
            let next_boundary = (self.epoch_at(unix) + 1) * self.rotation;
            let wait = Duration::from_secs(next_boundary.saturating_sub(unix).clamp(1, 30));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Keys accepted now (for the admin view).
    pub fn key_count(&self) -> usize {
        self.keys.load().accepted.len()
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        (self.rotation * (self.keep - 1)).min(MAX_LIFETIME) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let key = keys.current.as_ref()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.load();
        let key = keys.accepted.iter().find(|k| k.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(&key.name), &mut body)
            .ok()?;
        let n = plain.len();
        body.truncate(n);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::kv::MemoryKv;

    #[tokio::test]
    async fn replicas_sharing_a_store_open_each_others_tickets() {
        let kv = MemoryKv::default();
        let a = Ticketer::new(Duration::from_secs(3600), 3);
        let b = Ticketer::new(Duration::from_secs(3600), 3);
        let t0 = 10 * 3600 + 5;
        a.sync(&kv, t0).await;
        b.sync(&kv, t0).await;
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&ticket).unwrap(), b"session state");
        // Tampering is refused, never a panic.
        let mut bad = ticket.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(b.decrypt(&bad).is_none());
        assert!(b.decrypt(&ticket[..20]).is_none());
        assert!(b.decrypt(&[]).is_none());
        // A replica alone (its own store) cannot open them.
        let c = Ticketer::new(Duration::from_secs(3600), 3);
        c.sync(&MemoryKv::default(), t0).await;
        assert!(c.decrypt(&ticket).is_none());
    }

    #[tokio::test]
    async fn old_keys_are_accepted_until_they_rotate_out() {
        let kv = MemoryKv::default();
        let t = Ticketer::new(Duration::from_secs(3600), 3);
        let h = 3600;
        t.sync(&kv, 100 * h).await;
        let ticket = t.encrypt(b"x").unwrap();
        // Two rotations later the key is still accepted (3 kept) ...
        t.sync(&kv, 102 * h).await;
        assert_eq!(t.decrypt(&ticket).unwrap(), b"x");
        assert_ne!(t.encrypt(b"x").unwrap()[..NAME_LEN], ticket[..NAME_LEN]);
        // ... a third rotation drops it.
        t.sync(&kv, 103 * h).await;
        assert!(t.decrypt(&ticket).is_none());
        assert_eq!(t.lifetime(), 7200);
    }

    #[tokio::test]
    async fn a_replica_whose_clock_is_ahead_is_understood() {
        let kv = MemoryKv::default();
        let ahead = Ticketer::new(Duration::from_secs(60), 3);
        let behind = Ticketer::new(Duration::from_secs(60), 3);
        ahead.sync(&kv, 61 * 60 + 1).await;
        behind.sync(&kv, 61 * 60 - 1).await;
        let ticket = ahead.encrypt(b"y").unwrap();
        assert_eq!(behind.decrypt(&ticket).unwrap(), b"y");
    }
}
