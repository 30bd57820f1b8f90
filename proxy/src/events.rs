//! The event log: notable state changes, kept in a short ring for the dashboard,
//! broadcast to live subscribers, and logged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use switchyard_shared::{Event, EventKind};
use tokio::sync::broadcast;
use tracing::info;

/// Events kept for a newly opened dashboard.
const RECENT: usize = 200;

pub struct EventLog {
    replica: String,
    seq: AtomicU64,
    recent: Mutex<VecDeque<Event>>,
    tx: broadcast::Sender<Event>,
}

impl EventLog {
    pub fn new(replica: String) -> Self {
        Self {
            replica,
            seq: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            tx: broadcast::channel(256).0,
        }
    }

    pub fn emit(&self, kind: EventKind, backend: Option<&str>, message: impl Into<String>) {
        let message = message.into();
        info!(event = ?kind, backend = backend.unwrap_or(""), "{message}");
        let ev = Event {
            seq: self.seq.fetch_add(1, Relaxed) + 1,
            at_ms: now_ms(),
            kind,
            backend: backend.map(str::to_string),
            message,
            replica: self.replica.clone(),
        };
        {
            let mut r = self.recent.lock();
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(ev.clone());
        }
        let _ = self.tx.send(ev);
    }

    pub fn recent(&self) -> Vec<Event> {
        self.recent.lock().iter().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// Wall-clock milliseconds since the Unix epoch, for display only (policies use
/// monotonic time).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
