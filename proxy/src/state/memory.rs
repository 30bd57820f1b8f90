//! The embedded store: one replica, state in this process. It implements the whole
//! contract (same semantics as the Redis store, checked by the same test suite), so
//! code above it never needs to know which store it has.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use switchyard_shared::{ReplicaView, StoreView};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    Decision, MembershipChange, Overlay, OverlayEntry, Record, StateStore, StoreEvent, StoreResult,
    TokenGrant, TokenRequest,
};

#[derive(Default)]
struct Inner {
    overlay: Overlay,
    records: HashMap<(&'static str, String), (Record, Instant)>,
    record_version: u64,
    leases: HashMap<String, (String, Instant)>,
    buckets: HashMap<String, (f64, Instant)>,
    replicas: HashMap<String, (ReplicaView, Instant)>,
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Shared blobs ([`super::SharedKv`], implemented in `kv.rs`).
    pub(super) kv: super::kv::MemoryKv,
    events: broadcast::Sender<StoreEvent>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            kv: Default::default(),
            events: broadcast::channel(256).0,
        }
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    async move { v }.boxed()
}

fn remaining_of(d: &Decision) -> u64 {
    match d {
        Decision::Circuit { remaining_ms, .. } | Decision::Ejection { remaining_ms, .. } => {
            *remaining_ms
        }
        Decision::Health { .. } => 0,
    }
}

fn with_remaining(mut d: Decision, ms: u64) -> Decision {
    match &mut d {
        Decision::Circuit { remaining_ms, .. } | Decision::Ejection { remaining_ms, .. } => {
            *remaining_ms = ms
        }
        Decision::Health { .. } => {}
    }
    d
}

impl StateStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn membership(&self) -> BoxFuture<'_, StoreResult<Overlay>> {
        ready(Ok(self.inner.lock().overlay.clone()))
    }

    fn change_membership(&self, change: MembershipChange) -> BoxFuture<'_, StoreResult<Overlay>> {
        let overlay = {
            let mut i = self.inner.lock();
            i.overlay.version += 1;
            let seq = i.overlay.version;
            i.overlay.entries.insert(
                change.key,
                OverlayEntry {
                    url: change.url,
                    op: change.op,
                    weight: change.weight,
                    seq,
                },
            );
            i.overlay.clone()
        };
        let _ = self.events.send(StoreEvent::Membership(overlay.version));
        ready(Ok(overlay))
    }

    fn reseed_membership(&self, overlay: Overlay) -> BoxFuture<'_, StoreResult<Overlay>> {
        let mut i = self.inner.lock();
        if overlay.version > i.overlay.version {
            i.overlay = overlay;
            let _ = self.events.send(StoreEvent::Membership(i.overlay.version));
        }
        ready(Ok(i.overlay.clone()))
    }

    fn publish(&self, mut record: Record) -> BoxFuture<'_, StoreResult<()>> {
        {
            let mut i = self.inner.lock();
            i.record_version += 1;
            record.version = i.record_version;
            let until = Instant::now() + Duration::from_millis(remaining_of(&record.decision));
            i.records.insert(
                (record.decision.kind(), record.key.clone()),
                (record.clone(), until),
            );
        }
        let _ = self.events.send(StoreEvent::Record(record));
        ready(Ok(()))
    }

    fn records(&self) -> BoxFuture<'_, StoreResult<Vec<Record>>> {
        let now = Instant::now();
        let out = self
            .inner
            .lock()
            .records
            .values()
            .map(|(r, until)| {
                let left = until.saturating_duration_since(now).as_millis() as u64;
                Record {
                    decision: with_remaining(r.decision.clone(), left),
                    ..r.clone()
                }
            })
            .collect();
        ready(Ok(out))
    }

    fn try_lease(
        &self,
        name: String,
        holder: String,
        ttl: Duration,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        let now = Instant::now();
        let mut i = self.inner.lock();
        let ok = match i.leases.get(&name) {
            Some((h, exp)) if *exp > now && *h != holder => false,
            _ => {
                i.leases.insert(name, (holder, now + ttl));
                true
            }
        };
        ready(Ok(ok))
    }

    fn release_lease(&self, name: String, holder: String) -> BoxFuture<'_, StoreResult<()>> {
        let mut i = self.inner.lock();
        if i.leases.get(&name).is_some_and(|(h, _)| *h == holder) {
            i.leases.remove(&name);
        }
        ready(Ok(()))
    }

    fn take_tokens(
        &self,
        requests: Vec<TokenRequest>,
    ) -> BoxFuture<'_, StoreResult<Vec<TokenGrant>>> {
        let now = Instant::now();
        let mut i = self.inner.lock();
        let grants = requests
            .into_iter()
            .map(|r| {
                let (tokens, ts) = i.buckets.get(&r.bucket).copied().unwrap_or((r.burst, now));
                let elapsed = now.saturating_duration_since(ts).as_secs_f64();
                let mut tokens = (tokens + elapsed * r.rate).min(r.burst) - f64::from(r.debt);
                tokens = tokens.max(-r.burst);
                let granted = tokens.floor().clamp(0.0, f64::from(r.want)) as u32;
                tokens -= f64::from(granted);
                i.buckets.insert(r.bucket, (tokens, now));
                TokenGrant {
                    granted,
                    remaining: tokens,
                }
            })
            .collect();
        ready(Ok(grants))
    }

    fn heartbeat(&self, replica: ReplicaView, ttl: Duration) -> BoxFuture<'_, StoreResult<()>> {
        let now = Instant::now();
        let mut i = self.inner.lock();
        i.replicas.retain(|_, (_, exp)| *exp > now);
        i.replicas.insert(replica.id.clone(), (replica, now + ttl));
        ready(Ok(()))
    }

    fn replicas(&self) -> BoxFuture<'_, StoreResult<Vec<ReplicaView>>> {
        let now = Instant::now();
        let mut out: Vec<ReplicaView> = self
            .inner
            .lock()
            .replicas
            .values()
            .filter(|(_, exp)| *exp > now)
            .map(|(r, _)| r.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        ready(Ok(out))
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    fn status(&self) -> StoreView {
        StoreView {
            kind: "memory".into(),
            connected: true,
            last_error: None,
            on_store_error: "local".into(),
            errors: 0,
            ..StoreView::default()
        }
    }

    fn is_connected(&self) -> bool {
        true
    }
}
