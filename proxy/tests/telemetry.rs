//! OpenTelemetry export to an OTLP receiver running inside the test (gRPC and
//! HTTP/protobuf), W3C trace-context propagation, `/metrics` parsed with a real
//! exposition-format parser, and the access log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use parking_lot::Mutex;
use prost::Message;

/// What the receiver got.
#[derive(Default)]
struct Received {
    spans: Vec<(Vec<KeyValue>, Span)>,
    metrics: Vec<Metric>,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Received>>);

impl Sink {
    fn take_traces(&self, req: ExportTraceServiceRequest) {
        let mut r = self.0.lock();
        for rs in req.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    r.spans.push((resource.clone(), s));
                }
            }
        }
    }

    fn take_metrics(&self, req: ExportMetricsServiceRequest) {
        let mut r = self.0.lock();
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                r.metrics.extend(sm.metrics);
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take_traces(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.take_metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn grpc_receiver(sink: Sink) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .add_service(MetricsServiceServer::new(sink))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

async fn http_receiver(sink: Sink) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let sink = sink.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let ct = req.headers().get("content-type").cloned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        assert_eq!(ct.unwrap(), "application/x-protobuf");
                        let out = match path.as_str() {
                            "/v1/traces" => {
                                sink.take_traces(ExportTraceServiceRequest::decode(body).unwrap());
                                ExportTraceServiceResponse::default().encode_to_vec()
                            }
                            "/v1/metrics" => {
                                sink.take_metrics(
                                    ExportMetricsServiceRequest::decode(body).unwrap(),
                                );
                                ExportMetricsServiceResponse::default().encode_to_vec()
                            }
                            other => panic!("unexpected OTLP path {other}"),
                        };
                        let mut resp = http::Response::new(Full::new(Bytes::from(out)));
                        resp.headers_mut()
                            .insert("content-type", "application/x-protobuf".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A `switchyard` process exporting to `endpoint` with `protocol`.
fn exporting(yaml: &str, endpoint: &str, protocol: &str, extra_env: &[(&str, &str)]) -> Proc {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_SERVICE_NAME", "switchyard-under-test"),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
    ];
    env.extend_from_slice(extra_env);
    Proc::start(yaml, &[], &env)
}

async fn traces_and_metrics_arrive(protocol: &str) {
    let (good, dead_port) = (demo("good").await, free_port());
    let sink = Sink::default();
    let receiver = match protocol {
        "grpc" => grpc_receiver(sink.clone()).await,
        _ => http_receiver(sink.clone()).await,
    };
    // The dead backend comes first in round-robin order: the first request is
    // retried, and the retry must show as a second client span.
    let yaml = format!(
        "{}backends:\n  - url: \"http://127.0.0.1:{dead_port}\"\n  - url: \"{}\"\n",
        server_yaml(),
        good.url()
    );
    let p = exporting(&yaml, &format!("http://{receiver}"), protocol, &[]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let req = Request::get(url(p.proxy, "/headers"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .header("tracestate", "vendor=opaque")
        .body(full(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.0.lock().spans.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans did not arrive over {protocol}; proxy log:\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spans: Vec<(Vec<KeyValue>, Span)> = sink.0.lock().spans.clone();
    let server: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s.kind == SpanKind::Server as i32)
        .collect();
    let clients: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s.kind == SpanKind::Client as i32)
        .collect();
    assert_eq!(server.len(), 1, "{spans:#?}");
    assert_eq!(clients.len(), 2, "{spans:#?}");
    let (resource, server) = server[0];
    assert_eq!(
        attr_str(resource, "service.name").as_deref(),
        Some("switchyard-under-test")
    );
    assert_eq!(hex(&server.trace_id), trace_id);
    assert_eq!(
        hex(&server.parent_span_id),
        caller_span,
        "the server span's parent is the caller's span"
    );
    assert_eq!(
        attr_str(&server.attributes, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        attr_str(&server.attributes, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr_str(&server.attributes, "url.path").as_deref(),
        Some("/headers")
    );
    assert_eq!(
        attr_str(&server.attributes, "url.scheme").as_deref(),
        Some("http")
    );
    assert_eq!(
        attr_str(&server.attributes, "client.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        attr_str(&server.attributes, "switchyard.strategy").as_deref(),
        Some("round-robin")
    );
    assert_eq!(
        attr_str(&server.attributes, "switchyard.retries").as_deref(),
        Some("1")
    );
    for (_, c) in &clients {
        assert_eq!(hex(&c.trace_id), trace_id);
        assert_eq!(
            c.parent_span_id, server.span_id,
            "client spans are children of the server span"
        );
    }
    let failed = clients
        .iter()
        .find(|(_, c)| attr_str(&c.attributes, "switchyard.attempt").as_deref() == Some("1"))
        .unwrap()
        .1
        .clone();
    let ok = clients
        .iter()
        .find(|(_, c)| attr_str(&c.attributes, "switchyard.attempt").as_deref() == Some("2"))
        .unwrap()
        .1
        .clone();
    assert_eq!(
        attr_str(&failed.attributes, "error.type").as_deref(),
        Some("connect"),
        "{failed:#?}"
    );
    assert_eq!(
        attr_str(&ok.attributes, "switchyard.backend"),
        Some(good.url())
    );
    assert_eq!(
        attr_str(&ok.attributes, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr_str(&ok.attributes, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    // The backend got the trace id and the proxy's client span as parent.
    let tp = seen["traceparent"].as_str().unwrap();
    assert_eq!(tp, format!("00-{trace_id}-{}-01", hex(&ok.span_id)));
    assert_eq!(seen["tracestate"], "vendor=opaque");

    wait_until(Duration::from_secs(10), "metrics", || {
        let sink = sink.clone();
        async move {
            let r = sink.0.lock();
            [
                "switchyard_requests",
                "switchyard_request_duration_seconds",
                "switchyard_backend_requests",
            ]
            .iter()
            .all(|n| r.metrics.iter().any(|m| m.name == *n))
        }
    })
    .await;
    let metrics = sink.0.lock().metrics.clone();
    let requests = metrics
        .iter()
        .rev()
        .find(|m| m.name == "switchyard_requests")
        .unwrap();
    let Some(metric::Data::Sum(sum)) = &requests.data else {
        panic!("{requests:?}")
    };
    assert!(sum.is_monotonic);
    assert!(
        sum.data_points
            .iter()
            .any(|dp| attr_str(&dp.attributes, "code_class").as_deref() == Some("2xx"))
    );
    let duration = metrics
        .iter()
        .rev()
        .find(|m| m.name == "switchyard_request_duration_seconds")
        .unwrap();
    assert_eq!(duration.unit, "s");
    let Some(metric::Data::Histogram(h)) = &duration.data else {
        panic!("{duration:?}")
    };
    assert!(h.data_points[0].count >= 1);
    assert_eq!(
        h.data_points[0].explicit_bounds.len(),
        switchyard_shared::LATENCY_BUCKETS_S.len()
    );
    let backend = metrics
        .iter()
        .rev()
        .find(|m| m.name == "switchyard_backend_requests")
        .unwrap();
    let Some(metric::Data::Sum(b)) = &backend.data else {
        panic!()
    };
    assert!(
        b.data_points
            .iter()
            .any(|dp| attr_str(&dp.attributes, "backend")
                == Some(format!("http://127.0.0.1:{}", good.addr.port())))
    );
    drop(p);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_arrive_over_grpc() {
    traces_and_metrics_arrive("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_metrics_arrive_over_http_protobuf() {
    traces_and_metrics_arrive("http/protobuf").await;
}

/// Every family on `/metrics` reaches the OTLP receiver under the same name
/// (counters without `_total`, which a Prometheus exporter puts back) and with
/// the same value type: a counter as a monotonic sum, a gauge as a gauge, a
/// histogram as a histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metrics_family_reaches_otlp_with_the_same_name_and_type() {
    let sink = Sink::default();
    let addr = http_receiver(sink.clone()).await;
    let good = demo("good").await;
    let yaml = format!("{}{}", server_yaml(), backends_yaml(&[(&good, 1)]));
    let p = exporting(
        &yaml,
        &format!("http://{addr}"),
        "http/protobuf",
        &[("OTEL_TRACES_EXPORTER", "none")],
    );
    // Answers (request and backend histograms) over a new connection (connect).
    for _ in 0..3 {
        assert_eq!(get(&url(p.proxy, "/")).await.status, StatusCode::OK);
    }
    // The families `/metrics` shows samples of, with their types.
    let text = prometheus_text(p.admin).await;
    let mut families: std::collections::BTreeMap<String, String> = Default::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            let sampled = text.lines().any(|l| {
                !l.starts_with('#')
                    && l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with([' ', '{', '_']))
            });
            if sampled {
                families.insert(name.to_string(), kind.to_string());
            }
        }
    }
    assert!(families.len() >= 29, "{families:#?}");
    // The families the first OTLP exporter left out (all must be there now).
    for name in [
        "switchyard_admin_errors_total",
        "switchyard_backend_ejected",
        "switchyard_cluster_replicas",
        "switchyard_config_generation",
        "switchyard_config_last_reload_failed",
        "switchyard_requests_refused_framing_total",
        "switchyard_requests_refused_malformed_total",
    ] {
        assert!(families.contains_key(name), "{name} not on /metrics");
    }
    let otlp_name = |name: &str, kind: &str| match kind {
        "counter" => name.strip_suffix("_total").unwrap_or(name).to_string(),
        _ => name.to_string(),
    };
    let problems = |metrics: &[Metric]| -> Vec<String> {
        let mut out = Vec::new();
        for (name, kind) in &families {
            let want = otlp_name(name, kind);
            let Some(m) = metrics.iter().rev().find(|m| m.name == want) else {
                out.push(format!("{name} ({kind}): no OTLP metric `{want}`"));
                continue;
            };
            let same = match (kind.as_str(), &m.data) {
                ("counter", Some(metric::Data::Sum(s))) => s.is_monotonic,
                ("gauge", Some(metric::Data::Gauge(_))) => true,
                ("histogram", Some(metric::Data::Histogram(_))) => true,
                _ => false,
            };
            if !same {
                out.push(format!("{name} ({kind}): OTLP `{want}` is {:?}", m.data));
            }
        }
        out
    };
    // Exports come every 300 ms; give a loaded machine plenty of time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let missing = problems(&sink.0.lock().metrics);
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "families on /metrics not exported over OTLP as they are:\n  {}",
            missing.join("\n  ")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsampled_requests_make_no_spans_and_pass_traceparent_through() {
    let good = demo("good").await;
    let sink = Sink::default();
    let receiver = grpc_receiver(sink.clone()).await;
    let yaml = format!("{}{}", server_yaml(), backends_yaml(&[(&good, 1)]));
    let p = exporting(
        &yaml,
        &format!("http://{receiver}"),
        "grpc",
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
    );
    // Caller says "not sampled": no span, header passed on as it came.
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let r = client()
        .request(
            Request::get(url(p.proxy, "/headers"))
                .header("traceparent", tp)
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let seen: serde_json::Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(seen["traceparent"], tp);
    // Ratio 0 and no parent: no span either, and no traceparent invented.
    let r = get(&url(p.proxy, "/headers")).await.json();
    assert!(r.get("traceparent").is_none(), "{r}");
    // A sampled caller is still followed (parent-based).
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    client()
        .request(
            Request::get(url(p.proxy, "/"))
                .header("traceparent", tp)
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the sampled request's spans",
        || {
            let sink = sink.clone();
            async move { sink.0.lock().spans.len() >= 2 }
        },
    )
    .await;
    let spans = sink.0.lock().spans.clone();
    assert!(
        spans
            .iter()
            .all(|(_, s)| hex(&s.trace_id) == "0af7651916cd43dd8448eb211c80319c"),
        "only the sampled trace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_requests_nothing_and_drops_are_counted() {
    let good = demo("good").await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let yaml = format!("{}{}", server_yaml(), backends_yaml(&[(&good, 1)]));
    let p = exporting(
        &yaml,
        &dead,
        "grpc",
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "200"),
        ],
    );
    let c = client();
    for _ in 0..200 {
        let r = send(&c, Method::GET, &url(p.proxy, "/"), None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    let admin = p.admin;
    wait_until(
        Duration::from_secs(10),
        "dropped spans counted",
        || async move {
            let text = metrics_with_accept(admin, "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1").await;
            text.lines()
                .find_map(|l| l.strip_prefix("switchyard_telemetry_spans_dropped_total "))
                .is_some_and(|v| v.trim().parse::<f64>().unwrap() > 0.0)
        },
    )
    .await;
}

#[tokio::test]
async fn metrics_parse_as_prometheus_exposition_with_types_and_labels() {
    let (a, b) = (demo("a").await, demo("b").await);
    let p = proxy(&format!(
        "{}circuit_breaker:\n  failure_threshold: 5\nrate_limit:\n  requests_per_second: 1000\n  burst: 1000\n{}",
        server_yaml(),
        backends_yaml(&[(&a, 1), (&b, 1)])
    ))
    .await;
    for _ in 0..10 {
        get(&url(p.proxy_addr, "/")).await;
    }
    for accept in [
        "text/plain;version=0.0.4",
        "application/openmetrics-text;version=1.0.0",
    ] {
        let resp = client()
            .request(
                Request::get(url(p.admin_addr, "/metrics"))
                    .header("accept", accept)
                    .body(full(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(accept.split(';').next().unwrap()), "{ct}");
        let text = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        if accept.starts_with("application/openmetrics") {
            assert!(text.ends_with("# EOF\n"));
        }
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let find = |name: &'static str| scrape.samples.iter().filter(move |s| s.metric == name);
        // counters with their labels
        let reqs: Vec<_> = find("switchyard_requests_total").collect();
        assert_eq!(reqs.len(), 5, "one per status class");
        let ok = reqs
            .iter()
            .find(|s| s.labels.get("code_class") == Some("2xx"))
            .unwrap();
        match ok.value {
            prometheus_parse::Value::Counter(v) => assert_eq!(v, 10.0),
            // OpenMetrics names the family without `_total`, which this
            // Prometheus-text parser does not connect to the `_total` sample.
            prometheus_parse::Value::Untyped(v)
                if accept.starts_with("application/openmetrics") =>
            {
                assert_eq!(v, 10.0);
                assert!(text.contains("# TYPE switchyard_requests counter\n"));
            }
            ref other => panic!("switchyard_requests_total is {other:?}"),
        }
        // a histogram
        let dur: Vec<_> = find("switchyard_request_duration_seconds").collect();
        assert_eq!(dur.len(), 1, "{dur:?}");
        match &dur[0].value {
            prometheus_parse::Value::Histogram(buckets) => {
                assert_eq!(
                    buckets.len(),
                    switchyard_shared::LATENCY_BUCKETS_S.len() + 1
                );
                assert_eq!(buckets.last().unwrap().count, 10.0);
            }
            other => panic!("duration is {other:?}"),
        }
        // gauges with backend labels, one series per backend
        let up: Vec<_> = find("switchyard_backend_up").collect();
        assert_eq!(up.len(), 2);
        assert!(
            up.iter()
                .all(|s| matches!(s.value, prometheus_parse::Value::Gauge(v) if v == 1.0))
        );
        let mut backends: Vec<_> = up
            .iter()
            .map(|s| s.labels.get("backend").unwrap().to_string())
            .collect();
        backends.sort();
        let mut want = vec![a.url(), b.url()];
        want.sort();
        assert_eq!(backends, want);
        let circuit: Vec<_> = find("switchyard_circuit_state").collect();
        assert_eq!(circuit.len(), 6, "3 states × 2 backends");
        assert!(
            circuit
                .iter()
                .all(|s| ["closed", "open", "half-open"].contains(&s.labels.get("state").unwrap()))
        );
        assert_eq!(find("switchyard_backend_response_seconds").count(), 2);
        assert_eq!(find("switchyard_rate_limited_total").count(), 1);
        // every family has a HELP line
        for s in &scrape.samples {
            let family = ["_total", "_sum", "_count", "_bucket"]
                .iter()
                .fold(s.metric.as_str(), |m, suffix| {
                    m.strip_suffix(suffix).unwrap_or(m)
                });
            assert!(
                scrape.docs.contains_key(&s.metric) || scrape.docs.contains_key(family),
                "no HELP for {}",
                s.metric
            );
        }
    }
    // A plain GET still answers the seed's JSON.
    let v = get(&url(p.admin_addr, "/metrics")).await.json();
    assert_eq!(v.as_array().unwrap().len(), 2);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_and_can_be_off() {
    let good = demo("good").await;
    let yaml = format!(
        "{}logging:\n  access_log: true\n{}",
        server_yaml(),
        backends_yaml(&[(&good, 1)])
    );
    let p = Proc::start(&yaml, &[], &[]);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    client()
        .request(
            Request::get(url(p.proxy, "/x?y=1"))
                .header("traceparent", tp)
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    get(&url(p.proxy, "/second")).await;
    let log = p.log.clone();
    wait_until(Duration::from_secs(5), "access lines", || {
        let log = log.clone();
        async move {
            log.lock()
                .iter()
                .filter(|l| l.contains("\"duration_ms\""))
                .count()
                >= 2
        }
    })
    .await;
    let lines: Vec<serde_json::Value> = p
        .log
        .lock()
        .iter()
        .filter(|l| l.contains("\"duration_ms\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = &lines[0];
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(first["path"], "/x");
    assert_eq!(first["status"], 200);
    assert_eq!(first["backend"], good.url());
    assert_eq!(first["method"], "GET");
    assert!(first["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(lines[1]["trace_id"], "-");
    drop(p);

    // Off by default.
    let p = Proc::start(
        &format!("{}{}", server_yaml(), backends_yaml(&[(&good, 1)])),
        &[],
        &[],
    );
    get(&url(p.proxy, "/")).await;
    let h = get(&url(p.admin, "/healthz")).await;
    assert_eq!(h.status, StatusCode::OK);
    assert!(!p.logs().contains("duration_ms"), "{}", p.logs());
}
