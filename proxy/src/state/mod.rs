//! Runtime state that outlives a config snapshot and, in a cluster, is shared by
//! every replica: the membership overlay (backends added or removed through the
//! admin API), and the records the resilience policies publish.
//!
//! [`StateStore`] is the seam: [`MemoryStore`] keeps it in this process (one replica,
//! the default); the Redis store shares it. Nothing on the request path calls the
//! store: policies act on local state and the store is read and written by
//! background tasks and admin calls.

mod memory;

use std::collections::BTreeMap;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use switchyard_shared::StoreView;
use tokio::sync::broadcast;

pub use memory::MemoryStore;

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

/// Something changed in the store (possibly on another replica).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    /// The overlay is now at least at this version.
    Membership(u64),
    /// The connection to the store came back; shared state should be resynced.
    Reconnected,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached; nothing was written.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
}

/// Where runtime state lives.
pub trait StateStore: Send + Sync + 'static {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// The current overlay.
    fn membership(&self) -> BoxFuture<'_, Result<Overlay, StoreError>>;

    /// Applies one change atomically and returns the overlay after it. Changes are
    /// ordered by the store, never by replica clocks.
    fn change_membership(
        &self,
        change: MembershipChange,
    ) -> BoxFuture<'_, Result<Overlay, StoreError>>;

    /// Changes made anywhere, as they happen. Receivers that lag simply resync.
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;

    /// Connectivity, for `/readyz` and the cluster view.
    fn status(&self) -> StoreView;
}
