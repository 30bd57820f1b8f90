//! Runtime state that outlives a config snapshot and, in a cluster, is shared by
//! every replica: the membership overlay (backends added or removed through the
//! admin API), policy decisions (circuits, ejections, health verdicts), leases,
//! global token buckets and the replica registry.
//!
//! [`StateStore`] is the seam: [`MemoryStore`] keeps it in this process (one replica,
//! the default); [`RedisStore`] shares it. Nothing on the request path calls the
//! store: policies act on local state, and the store is read and written by
//! background tasks and admin calls.

pub mod kv;
mod memory;
mod redis;
mod redis_kv;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use switchyard_shared::{CircuitState, HealthStatus, ReplicaView, StoreView};
use tokio::sync::broadcast;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
pub use kv::SharedKv;

/// Admin changes layered over the config's backends, keyed by backend key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    /// Bumped by the store on every change; orders changes cluster-wide.
    pub version: u64,
    pub entries: BTreeMap<String, OverlayEntry>,
}

/// The last admin change made to one backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayEntry {
    /// As the operator wrote it.
    pub url: String,
    pub op: OverlayOp,
    pub weight: u32,
    /// The overlay version this entry was written at.
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlayOp {
    /// Present with this weight, whatever the config says.
    Add,
    /// Absent (drained), whatever the config says.
    Remove,
}

/// One admin change to the membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipChange {
    /// Canonical backend key.
    pub key: String,
    pub url: String,
    pub op: OverlayOp,
    pub weight: u32,
}

/// A policy decision one replica made and the others follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    Circuit {
        state: CircuitState,
        /// How long it stays open, from when the store recorded it.
        remaining_ms: u64,
        reason: String,
    },
    Ejection {
        ejected: bool,
        remaining_ms: u64,
        count: u32,
        reason: String,
    },
    Health {
        status: HealthStatus,
        reason: Option<String>,
    },
}

impl Decision {
    /// Records of the same kind for the same backend replace each other.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Circuit { .. } => "circuit",
            Decision::Ejection { .. } => "ejection",
            Decision::Health { .. } => "health",
        }
    }
}

/// A decision about one backend, as stored and broadcast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Backend key.
    pub key: String,
    /// Replica that decided it.
    pub by: String,
    /// Store-assigned order (0 before it is stored).
    #[serde(default)]
    pub version: u64,
    pub decision: Decision,
}

/// A replica's request for tokens of one global bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRequest {
    /// Bucket name, the same on every replica for the same client and rule.
    pub bucket: String,
    pub rate: f64,
    pub burst: f64,
    /// Tokens wanted for the coming period.
    pub want: u32,
    /// Tokens already spent on credit since the last request (charged first).
    pub debt: u32,
}

/// What the store granted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenGrant {
    pub granted: u32,
    /// Tokens left in the global bucket after the grant (may be negative: debt).
    pub remaining: f64,
}

/// Something changed in the store (possibly on another replica).
#[derive(Clone, Debug, PartialEq)]
pub enum StoreEvent {
    /// The overlay is now at least at this version.
    Membership(u64),
    /// A replica published a decision.
    Record(Record),
    /// The store is reachable again; shared state should be resynced and re-seeded.
    Reconnected,
    /// The store became unreachable.
    Disconnected(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached; nothing was written.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something we cannot use.
    #[error("state store answered badly: {0}")]
    Protocol(String),
    /// Written on the primary, but no replica confirmed it in time: a failover now
    /// could lose it.
    #[error("{0}")]
    NotDurable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Where runtime state lives (with [`SharedKv`] for small shared blobs).
pub trait StateStore: SharedKv + Send + Sync + 'static {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// The current overlay.
    fn membership(&self) -> BoxFuture<'_, StoreResult<Overlay>>;

    /// Applies one change atomically and returns the overlay after it. Changes are
    /// ordered by the store, never by replica clocks.
    fn change_membership(&self, change: MembershipChange) -> BoxFuture<'_, StoreResult<Overlay>>;

    /// Writes `overlay` if the store holds an older version (e.g. it restarted
    /// empty); returns the overlay the store has afterwards.
    fn reseed_membership(&self, overlay: Overlay) -> BoxFuture<'_, StoreResult<Overlay>>;

    /// Stores a decision and tells every replica.
    fn publish(&self, record: Record) -> BoxFuture<'_, StoreResult<()>>;

    /// Every stored decision, with remaining times as of now.
    fn records(&self) -> BoxFuture<'_, StoreResult<Vec<Record>>>;

    /// Takes or renews the lease `name` for `holder`; false if someone else has it.
    fn try_lease(
        &self,
        name: String,
        holder: String,
        ttl: Duration,
    ) -> BoxFuture<'_, StoreResult<bool>>;

    /// Gives the lease up if `holder` has it.
    fn release_lease(&self, name: String, holder: String) -> BoxFuture<'_, StoreResult<()>>;

    /// Takes tokens from global buckets (refilled by the store's own clock).
    fn take_tokens(
        &self,
        requests: Vec<TokenRequest>,
    ) -> BoxFuture<'_, StoreResult<Vec<TokenGrant>>>;

    /// Registers this replica for `ttl`.
    fn heartbeat(&self, replica: ReplicaView, ttl: Duration) -> BoxFuture<'_, StoreResult<()>>;

    /// Replicas whose heartbeat has not expired.
    fn replicas(&self) -> BoxFuture<'_, StoreResult<Vec<ReplicaView>>>;

    /// Changes made anywhere, as they happen. Receivers that lag simply resync.
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;

    /// Connectivity, for `/readyz` and the cluster view.
    fn status(&self) -> StoreView;

    /// Whether the last contact with the store succeeded.
    fn is_connected(&self) -> bool;
}
