//! Switchyard: an adaptive HTTP API load balancer.
//!
//! The request path, in order: [`listener`] → [`ratelimit`] → [`balance`] (over the
//! [`snapshot`]) → [`forward`]; beside it [`health`], [`resilience`] (circuit breaker
//! and outlier ejection), [`state`] (the store behind shared state), [`admin`],
//! [`telemetry`], [`tls`] (HTTPS: certificates, ACME, the HTTPS listener). [`server`] starts and stops it all; `main.rs` only wires the CLI.

pub mod admin;
pub mod app;
pub mod backend;
pub mod balance;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod errors;
pub mod events;
pub mod flush;
pub mod forward;
pub mod gitops;
pub mod health;
pub mod listener;
pub mod ratelimit;
pub mod resilience;
pub mod server;
pub mod snapshot;
pub mod sockio;
pub mod state;
pub mod telemetry;
pub mod tls;
