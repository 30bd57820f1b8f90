//! The data-plane handle: what the request path needs, and nothing more — the
//! snapshot in force, the metrics, the event sink and the tracer — handed to the
//! listener and to forwarding instead of the whole [`crate::app::App`] (linkerd's
//! narrow runtime handles are the model).
//!
//! The policy transitions a request causes (a circuit opening, an ejection) are
//! logged, counted and recorded here, and handed to a [`Publish`] the cluster
//! layer installs, so they reach the other replicas without the request path
//! knowing the cluster.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use switchyard_shared::EventKind;

use crate::backend::{Backend, Recorded};
use crate::config::Dur;
use crate::events::EventLog;
use crate::resilience::Transition;
use crate::snapshot::Snapshot;
use crate::state::Decision;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otel::Telemetry;

/// Where this replica's decisions go beyond it (the cluster layer's
/// implementation stores and broadcasts them).
pub trait Publish: Send + Sync {
    /// A circuit or ejection change this replica made.
    fn transition(&self, backend: &Backend, t: &Transition);
    /// Another decision this replica made (an active-health verdict).
    fn decision(&self, key: &str, decision: Decision);
}

/// The request path's view of the running proxy.
pub struct DataPlane {
    snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    /// Notable state changes, for the dashboard and the log.
    pub events: EventLog,
    /// OpenTelemetry (sampling, trace context), when an exporter is configured.
    telemetry: OnceLock<Arc<Telemetry>>,
    publish: OnceLock<Box<dyn Publish>>,
}

impl DataPlane {
    /// A data plane serving `snapshot`, emitting events as `replica`.
    pub fn new(snapshot: Snapshot, replica: String) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics: Metrics::default(),
            events: EventLog::new(replica),
            telemetry: OnceLock::new(),
            publish: OnceLock::new(),
        }
    }

    /// The snapshot requests read (one atomic load and a reference count).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Swaps in the next snapshot, whole.
    pub fn install(&self, next: Snapshot) {
        self.snapshot.store(Arc::new(next));
    }

    pub fn telemetry(&self) -> Option<&Arc<Telemetry>> {
        self.telemetry.get()
    }

    /// Attaches OpenTelemetry (once).
    pub fn set_telemetry(&self, t: Arc<Telemetry>) {
        let _ = self.telemetry.set(t);
    }

    /// Sets where decisions are published (once; without one they stay local).
    pub fn set_publisher(&self, p: Box<dyn Publish>) {
        let _ = self.publish.set(p);
    }

    /// Publishes a decision that is not a transition (a health verdict).
    pub fn publish(&self, key: &str, decision: Decision) {
        if let Some(p) = self.publish.get() {
            p.decision(key, decision);
        }
    }

    /// Logs, counts and publishes the policy transitions one attempt caused.
    pub fn noted(&self, backend: &Backend, r: Recorded) {
        if let Some(t) = r.circuit {
            self.note(backend, t);
        }
        if let Some(t) = r.outlier {
            self.note(backend, t);
        }
    }

    /// Logs, counts and publishes one policy transition.
    pub fn note(&self, backend: &Backend, t: Transition) {
        if let Some(p) = self.publish.get() {
            p.transition(backend, &t);
        }
        let key = &*backend.key;
        let m = &self.metrics;
        use std::sync::atomic::Ordering::Relaxed;
        let (kind, msg) = match t {
            Transition::CircuitOpened { reason, for_ } => {
                m.circuits_opened.fetch_add(1, Relaxed);
                (
                    EventKind::CircuitOpened,
                    format!("circuit of {key} opened for {}: {reason}", Dur(for_)),
                )
            }
            Transition::CircuitHalfOpen => {
                m.circuits_half_opened.fetch_add(1, Relaxed);
                (
                    EventKind::CircuitHalfOpen,
                    format!("circuit of {key} half-open: probing"),
                )
            }
            Transition::CircuitClosed => {
                m.circuits_closed.fetch_add(1, Relaxed);
                (
                    EventKind::CircuitClosed,
                    format!("circuit of {key} closed: probe succeeded"),
                )
            }
            Transition::Ejected {
                reason,
                for_,
                count,
            } => {
                m.ejections.fetch_add(1, Relaxed);
                (
                    EventKind::Ejected,
                    format!(
                        "backend {key} ejected for {} (ejection #{count}): {reason}",
                        Dur(for_)
                    ),
                )
            }
            Transition::Restored => {
                m.restores.fetch_add(1, Relaxed);
                (
                    EventKind::Restored,
                    format!("backend {key} returned from ejection"),
                )
            }
        };
        self.events.emit(kind, Some(key), msg);
    }
}
