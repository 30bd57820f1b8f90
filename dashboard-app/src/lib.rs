//! Switchyard's live dashboard.
