//! Active health checks.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use switchyard_shared::HealthStatus;

/// A backend's active-health verdict.
#[derive(Default)]
pub struct HealthCell {
    status: AtomicU8,
}

impl HealthCell {
    pub fn status(&self) -> HealthStatus {
        match self.status.load(Relaxed) {
            1 => HealthStatus::Healthy,
            2 => HealthStatus::Unhealthy,
            _ => HealthStatus::Unchecked,
        }
    }

    /// Unchecked counts as healthy: without checks every backend is presumed up.
    pub fn is_healthy(&self) -> bool {
        self.status() != HealthStatus::Unhealthy
    }
}
