//! The embedded store: one replica, state in this process.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use switchyard_shared::StoreView;
use tokio::sync::broadcast;

use super::{MembershipChange, Overlay, OverlayEntry, StateStore, StoreError, StoreEvent};

pub struct MemoryStore {
    overlay: Mutex<Overlay>,
    events: broadcast::Sender<StoreEvent>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            overlay: Mutex::new(Overlay::default()),
            events: broadcast::channel(64).0,
        }
    }
}

impl StateStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn membership(&self) -> BoxFuture<'_, Result<Overlay, StoreError>> {
        let overlay = self.overlay.lock().clone();
        async move { Ok(overlay) }.boxed()
    }

    fn change_membership(
        &self,
        change: MembershipChange,
    ) -> BoxFuture<'_, Result<Overlay, StoreError>> {
        let overlay = {
            let mut o = self.overlay.lock();
            o.version += 1;
            let seq = o.version;
            o.entries.insert(
                change.key,
                OverlayEntry {
                    url: change.url,
                    op: change.op,
                    weight: change.weight,
                    seq,
                },
            );
            o.clone()
        };
        let _ = self.events.send(StoreEvent::Membership(overlay.version));
        async move { Ok(overlay) }.boxed()
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
        }
    }
}
