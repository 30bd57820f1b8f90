//! Switchyard: an adaptive HTTP API load balancer.
//!
//! The request path, in order: [`listener`] (the HTTP/1.1 wire is the
//! `switchyard-http1` crate's) → [`forward`]: [`ratelimit`] → [`balance`] (over the
//! [`snapshot`]) → an attempt on a backend; it is handed the [`dataplane`] (snapshot,
//! metrics, events, tracer), never the whole [`app`]. Beside it [`health`],
//! [`resilience`] (circuit breaker and outlier ejection), [`state`] (the store behind
//! shared state), [`cluster`], [`gitops`], [`admin`], [`telemetry`], [`tls`]
//! (HTTPS: certificates, ACME, the HTTPS listener). [`server`] starts
//! and stops it all; `main.rs` only wires the CLI. Each module imports only the layers
//! below its own (docs/architecture.md; `tests/architecture.rs` checks it).

pub mod admin;
pub mod app;
pub mod backend;
pub mod balance;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod discovery;
pub mod errors;
pub mod events;
pub mod forward;
pub mod gitops;
pub mod health;
pub mod listener;
pub mod ratelimit;
pub mod resilience;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod telemetry;
pub mod tls;
