//! Switchyard's live dashboard: a client-side rendered Leptos app, built for wasm32
//! and served by the proxy's admin listener at `/dashboard/`.
//!
//! The view model (formatting, rates from snapshot differences, percentiles over a
//! window, chart series, the reconnect state machine, the admin changes) is plain Rust
//! with no browser types, tested natively; [`ui`] lays it out and [`browser`] talks to
//! the admin API.

pub mod actions;
pub mod chart;
pub mod format;
pub mod link;
pub mod model;
pub mod rates;
pub mod series;

pub mod browser;
pub mod ui;
