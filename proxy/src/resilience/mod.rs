//! Circuit breaking and passive outlier ejection.

use switchyard_shared::CircuitState;

/// Per-backend circuit breaker state.
#[derive(Default)]
pub struct Circuit {}

impl Circuit {
    pub fn state(&self) -> CircuitState {
        CircuitState::Closed
    }
}

/// Per-backend passive-health (ejection) state.
#[derive(Default)]
pub struct Outlier {}

impl Outlier {
    pub fn is_ejected(&self) -> bool {
        false
    }
}
