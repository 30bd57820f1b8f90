//! OpenTelemetry: traces and metrics over OTLP (gRPC or HTTP/protobuf).
//!
//! Configured the OpenTelemetry way: the standard `OTEL_*` environment variables
//! win over the `telemetry:` block. With no endpoint there is no exporter and no
//! per-request work at all.
//!
//! **Traces.** Sampling is decided before anything is created: parent-based (a
//! request carrying a W3C `traceparent` follows its sampled flag) with a ratio for
//! new traces. An unsampled request creates no span and passes `traceparent` on
//! untouched. A sampled one gets a server span (parented to the caller's span) and a
//! client span per upstream attempt, so retries show as siblings; the upstream
//! request carries a `traceparent` naming the proxy's client span.
//!
//! **Never hurting serving.** Finished spans go into a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`, `telemetry.max_queue_size`); when it is full — a dead
//! or slow collector — spans are dropped and counted
//! (`switchyard_telemetry_spans_dropped_total`), never waited for. Export runs in
//! its own task with a timeout.
//!
//! **Metrics.** One instrument per family of the metrics table
//! ([`super::metrics::TABLE`], the same families as `/metrics`): counters and
//! gauges are observed from a [`Source`] reading at each export; the latency
//! histograms are recorded (only while OTLP metrics are on) with the same bucket
//! bounds. Over OTLP counters drop the Prometheus `_total` suffix, which a
//! Prometheus exporter puts back, so names end up identical.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use switchyard_shared::LATENCY_BUCKETS_S;
use tokio::sync::mpsc;
use tracing::warn;

use super::metrics::{Def, Kind, OtelHistograms, Source, TABLE, Value};
use crate::config::TelemetryConfig;

/// Target of the request spans (the log output leaves it out).
pub const SPAN_TARGET: &str = "switchyard::otel";

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Resolved settings (environment over config).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub traces_endpoint: Option<String>,
    pub metrics_endpoint: Option<String>,
    pub traces_protocol: Protocol,
    pub metrics_protocol: Protocol,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
    /// Follow a remote parent's sampled flag.
    pub parent_based: bool,
    /// Share of new traces sampled.
    pub ratio: f64,
    pub metric_interval: Duration,
    pub queue_size: usize,
    pub batch_size: usize,
    pub schedule_delay: Duration,
    pub export_timeout: Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn env_ms(name: &str) -> Result<Option<Duration>, String> {
    env(name)
        .map(|v| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{name}: `{v}` is not a number of milliseconds"))
        })
        .transpose()
}

fn env_usize(name: &str) -> Result<Option<usize>, String> {
    env(name)
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| format!("{name}: `{v}` is not a number"))
        })
        .transpose()
}

fn protocol(name: &str, value: &str) -> Result<Protocol, String> {
    match value {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        other => Err(format!(
            "{name}: `{other}` is not supported (grpc or http/protobuf)"
        )),
    }
}

/// Reads the `OTEL_*` variables over the config block.
pub fn settings(cfg: &TelemetryConfig) -> Result<Option<Settings>, String> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let base = env("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| cfg.otlp_endpoint.clone());
    let default_protocol = match env("OTEL_EXPORTER_OTLP_PROTOCOL") {
        Some(p) => protocol("OTEL_EXPORTER_OTLP_PROTOCOL", &p)?,
        None => protocol("telemetry.protocol", &cfg.protocol)?,
    };
    let signal_protocol = |var: &str| -> Result<Protocol, String> {
        match env(var) {
            Some(p) => protocol(var, &p),
            None => Ok(default_protocol),
        }
    };
    let traces_protocol = signal_protocol("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")?;
    let metrics_protocol = signal_protocol("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")?;
    // A signal endpoint is used as is; the base gets the signal path for HTTP.
    let endpoint =
        |signal_var: &str, exporter_var: &str, proto: Protocol, path: &str| -> Option<String> {
            if env(exporter_var).is_some_and(|v| v == "none") {
                return None;
            }
            env(signal_var).or_else(|| {
                base.as_ref().map(|b| match proto {
                    Protocol::Grpc => b.clone(),
                    Protocol::HttpProtobuf => format!("{}/{path}", b.trim_end_matches('/')),
                })
            })
        };
    let traces_endpoint = endpoint(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        traces_protocol,
        "v1/traces",
    );
    let metrics_endpoint = endpoint(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_METRICS_EXPORTER",
        metrics_protocol,
        "v1/metrics",
    );
    if traces_endpoint.is_none() && metrics_endpoint.is_none() {
        return Ok(None);
    }
    let mut resource: Vec<(String, String)> = env("OTEL_RESOURCE_ATTRIBUTES")
        .map(|v| {
            v.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let service_name = env("OTEL_SERVICE_NAME")
        .or_else(|| {
            resource
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| cfg.service_name.clone());
    resource.retain(|(k, _)| k != "service.name");
    let (parent_based, ratio) = match env("OTEL_TRACES_SAMPLER").as_deref() {
        None => (true, cfg.sampler_ratio.0),
        Some(s) => {
            let arg = || -> Result<f64, String> {
                match env("OTEL_TRACES_SAMPLER_ARG") {
                    None => Ok(1.0),
                    Some(a) => match a.parse::<f64>() {
                        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                        _ => Err(format!(
                            "OTEL_TRACES_SAMPLER_ARG: `{a}` is not a ratio from 0 to 1"
                        )),
                    },
                }
            };
            match s {
                "always_on" => (false, 1.0),
                "always_off" => (false, 0.0),
                "traceidratio" => (false, arg()?),
                "parentbased_always_on" => (true, 1.0),
                "parentbased_always_off" => (true, 0.0),
                "parentbased_traceidratio" => (true, arg()?),
                other => return Err(format!("OTEL_TRACES_SAMPLER: `{other}` is not supported")),
            }
        }
    };
    Ok(Some(Settings {
        traces_endpoint,
        metrics_endpoint,
        traces_protocol,
        metrics_protocol,
        service_name,
        resource,
        parent_based,
        ratio,
        metric_interval: env_ms("OTEL_METRIC_EXPORT_INTERVAL")?
            .unwrap_or(cfg.metric_export_interval.get()),
        queue_size: env_usize("OTEL_BSP_MAX_QUEUE_SIZE")?.unwrap_or(cfg.max_queue_size.as_usize()),
        batch_size: env_usize("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?
            .unwrap_or(512)
            .max(1),
        schedule_delay: env_ms("OTEL_BSP_SCHEDULE_DELAY")?.unwrap_or(Duration::from_secs(5)),
        export_timeout: env_ms("OTEL_BSP_EXPORT_TIMEOUT")?
            .or(env_ms("OTEL_EXPORTER_OTLP_TIMEOUT")?)
            .unwrap_or(Duration::from_secs(10)),
    }))
}

/// Span-export counters.
#[derive(Debug, Default)]
pub struct SpanCounters {
    pub dropped: AtomicU64,
    pub exported: AtomicU64,
    pub failed: AtomicU64,
}

/// Hands finished spans to the export task through a bounded queue; drops (and
/// counts) rather than waits when the queue is full.
#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
    counters: Arc<SpanCounters>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            self.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    s: Settings,
    counters: Arc<SpanCounters>,
) {
    let mut batch = Vec::with_capacity(s.batch_size);
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + s.schedule_delay;
        while batch.len() < s.batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(s.batch_size));
        match tokio::time::timeout(s.export_timeout, exporter.export(spans)).await {
            Ok(Ok(())) => counters.exported.fetch_add(n, Relaxed),
            Ok(Err(e)) => {
                warn!(error = %e, spans = n, "span export failed; spans dropped");
                counters.failed.fetch_add(n, Relaxed)
            }
            Err(_) => {
                warn!(spans = n, "span export timed out; spans dropped");
                counters.failed.fetch_add(n, Relaxed)
            }
        };
    }
    let _ = exporter.shutdown();
}

/// Running telemetry.
pub struct Telemetry {
    pub settings: Settings,
    pub spans: Arc<SpanCounters>,
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    /// Keeps the observable instruments registered.
    instruments: parking_lot::Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>,
    propagator: TraceContextPropagator,
}

/// What to do about one request's trace.
pub enum Sampling {
    /// Not sampled: no spans; headers pass through as they are.
    Skip,
    /// Sampled: spans parented to this context (the caller's, or empty for a root).
    Record(opentelemetry::Context),
}

/// `tracing` layer that turns the request spans into OpenTelemetry spans.
pub type OtelLayer<S> = tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>;

impl Telemetry {
    /// Builds the exporters (inside a Tokio runtime). Returns the tracer for the
    /// `tracing` layer when traces are exported.
    pub fn start(
        settings: Settings,
        replica: &str,
    ) -> Result<(Telemetry, Option<SdkTracer>), String> {
        let mut attrs = vec![
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", replica.to_string()),
        ];
        attrs.extend(
            settings
                .resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        );
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attributes(attrs)
            .build();
        let spans = Arc::new(SpanCounters::default());

        let (tracer_provider, tracer) = match &settings.traces_endpoint {
            None => (None, None),
            Some(endpoint) => {
                let mut exporter = match settings.traces_protocol {
                    Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(endpoint.clone())
                        .with_timeout(settings.export_timeout)
                        .build(),
                    Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_endpoint(endpoint.clone())
                        .with_timeout(settings.export_timeout)
                        .with_headers(HashMap::new())
                        .build(),
                }
                .map_err(|e| format!("OTLP span exporter: {e}"))?;
                exporter.set_resource(&resource);
                let (tx, rx) = mpsc::channel(settings.queue_size.max(1));
                tokio::spawn(export_loop(exporter, rx, settings.clone(), spans.clone()));
                let provider = SdkTracerProvider::builder()
                    .with_span_processor(QueueProcessor {
                        tx,
                        counters: spans.clone(),
                    })
                    // Sampling was decided before the span existed.
                    .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
                    .with_resource(resource.clone())
                    .build();
                let tracer = provider.tracer("switchyard");
                (Some(provider), Some(tracer))
            }
        };

        let meter_provider = match &settings.metrics_endpoint {
            None => None,
            Some(endpoint) => {
                let exporter = match settings.metrics_protocol {
                    Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                        .with_tonic()
                        .with_endpoint(endpoint.clone())
                        .with_timeout(settings.export_timeout)
                        .build(),
                    Protocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                        .with_http()
                        .with_endpoint(endpoint.clone())
                        .with_timeout(settings.export_timeout)
                        .build(),
                }
                .map_err(|e| format!("OTLP metric exporter: {e}"))?;
                let reader = opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
                    exporter,
                    opentelemetry_sdk::runtime::Tokio,
                )
                .with_interval(settings.metric_interval)
                .build();
                Some(
                    SdkMeterProvider::builder()
                        .with_reader(reader)
                        .with_resource(resource)
                        .build(),
                )
            }
        };

        Ok((
            Telemetry {
                settings,
                spans,
                tracer_provider,
                meter_provider,
                instruments: parking_lot::Mutex::new(Vec::new()),
                propagator: TraceContextPropagator::new(),
            },
            tracer,
        ))
    }

    pub fn traces_on(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Decides one request's sampling from its headers.
    pub fn sample(&self, headers: &HeaderMap) -> Sampling {
        let s = &self.settings;
        let parent = if headers.contains_key("traceparent") {
            self.propagator.extract(&HeaderExtractor(headers))
        } else {
            opentelemetry::Context::new()
        };
        let remote = parent.span().span_context().clone();
        let sampled = if s.parent_based && remote.is_valid() {
            remote.is_sampled()
        } else {
            s.ratio >= 1.0 || (s.ratio > 0.0 && fastrand::f64() < s.ratio)
        };
        if sampled {
            Sampling::Record(parent)
        } else {
            Sampling::Skip
        }
    }

    /// Writes `traceparent`/`tracestate` for `cx` into upstream request headers.
    pub fn inject(&self, cx: &opentelemetry::Context, headers: &mut HeaderMap) {
        self.propagator
            .inject_context(cx, &mut HeaderInjector(headers));
    }

    /// Registers one instrument per family of the metrics table (counters and
    /// gauges read from `source` at each export) and returns the histograms to
    /// record into.
    pub fn register_metrics(&self, source: Weak<dyn Source>) -> Option<OtelHistograms> {
        let meter = self.meter_provider.as_ref()?.meter("switchyard");
        self.observe(&meter, source);
        let h = |name: &str| -> Option<Histogram<f64>> {
            let def = TABLE.iter().find(|d| d.name == name)?;
            Some(
                meter
                    .f64_histogram(def.otlp_name())
                    .with_unit(def.unit)
                    .with_description(def.help)
                    .with_boundaries(LATENCY_BUCKETS_S.to_vec())
                    .build(),
            )
        };
        use super::metrics::{BACKEND_LATENCY, REQUEST_DURATION, UPSTREAM_CONNECT};
        Some(OtelHistograms {
            duration: h(REQUEST_DURATION)?,
            backend: h(BACKEND_LATENCY)?,
            connect: h(UPSTREAM_CONNECT)?,
        })
    }

    /// An observable instrument for each counter and gauge of the table.
    fn observe(&self, meter: &Meter, source: Weak<dyn Source>) {
        let mut keep = self.instruments.lock();
        for def in TABLE {
            let w = source.clone();
            let callback = move |o: &dyn opentelemetry::metrics::AsyncInstrument<u64>| {
                if let Some(src) = w.upgrade() {
                    observe_family(def, &*src, o);
                }
            };
            match def.kind {
                Kind::Counter => keep.push(Box::new(
                    meter
                        .u64_observable_counter(def.otlp_name())
                        .with_unit(def.unit)
                        .with_description(def.help)
                        .with_callback(callback)
                        .build(),
                )),
                Kind::Gauge => keep.push(Box::new(
                    meter
                        .u64_observable_gauge(def.otlp_name())
                        .with_unit(def.unit)
                        .with_description(def.help)
                        .with_callback(callback)
                        .build(),
                )),
                // Recorded as they happen (see `register_metrics`).
                Kind::Histogram => {}
            }
        }
    }

    /// Spans lost: dropped at a full queue or in a failed export.
    pub fn spans_lost(&self) -> u64 {
        self.spans.dropped.load(Relaxed) + self.spans.failed.load(Relaxed)
    }

    /// Flushes what it can (bounded) and stops the exporters.
    pub fn shutdown(&self) {
        if let Some(p) = &self.tracer_provider {
            let _ = p.shutdown();
        }
        if let Some(p) = &self.meter_provider {
            let _ = p.shutdown();
        }
    }
}

/// Reports one family's samples from a fresh reading of `source`.
fn observe_family(
    def: &'static Def,
    source: &dyn Source,
    o: &dyn opentelemetry::metrics::AsyncInstrument<u64>,
) {
    let mut samples = Vec::new();
    source.read(&mut |r| (def.read)(r, &mut samples));
    for s in samples {
        if let Value::Int(v) = s.value {
            let attrs: Vec<KeyValue> = def
                .labels
                .iter()
                .zip(s.labels)
                .map(|(k, v)| KeyValue::new(*k, v))
                .collect();
            o.observe(v, &attrs);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}
