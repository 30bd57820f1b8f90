//! API types shared by the `switchyard` proxy and its dashboard.
//!
//! Serde data and pure validation only: this crate must keep compiling for
//! `wasm32-unknown-unknown`, so no tokio, hyper or OS access here.

pub mod api;
pub mod tls;
pub mod validate;

pub use api::*;
pub use tls::*;
