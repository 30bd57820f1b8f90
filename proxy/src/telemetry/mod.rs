//! Metrics, logs and (with an OTLP endpoint) traces.

pub mod logging;
pub mod metrics;
pub mod otel;
pub mod prometheus;
