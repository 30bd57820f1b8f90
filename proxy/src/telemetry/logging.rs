//! Structured logs through `tracing`: `text` or `json`, level from `RUST_LOG`
//! (default `info`). The request spans for OpenTelemetry go to their own layer,
//! which `RUST_LOG` does not filter (sampling decides which exist at all).

use opentelemetry_sdk::trace::SdkTracer;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use super::otel::SPAN_TARGET;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: &str, tracer: Option<SdkTracer>) {
    let filter = || {
        let base = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        match format!("{SPAN_TARGET}=off").parse() {
            Ok(d) => base.add_directive(d),
            Err(_) => base,
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt_layer = if format == "json" {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_filter(filter())
            .boxed()
    } else {
        fmt::layer()
            .with_target(false)
            .with_ansi(ansi)
            .with_filter(filter())
            .boxed()
    };
    let otel = tracer.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(|m| m.target() == SPAN_TARGET))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel)
        .try_init();
}
