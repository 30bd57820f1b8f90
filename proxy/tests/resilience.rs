//! Health checks, circuit breaker, outlier ejection and rate limiting on real
//! sockets, with demo upstreams made to crash, fail or lie.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use http::{Method, Request, StatusCode};
use switchyard::config;
use switchyard::ratelimit::RateLimiter;
use switchyard::telemetry::metrics::Metrics;

async fn get_n(proxy: SocketAddr, n: usize) -> Vec<Resp> {
    let c = client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(send(&c, Method::GET, &url(proxy, "/"), None).await.unwrap());
    }
    out
}

async fn view(admin: SocketAddr, key: &str) -> serde_json::Value {
    backend_view(admin, key)
        .await
        .unwrap_or_else(|| panic!("{key} not listed"))
}

#[tokio::test]
async fn a_crashed_backend_is_detected_and_skipped_without_client_errors() {
    let (a, b, c) = (demo("a").await, demo("b").await, demo("c").await);
    let p = proxy(&format!(
        "{}health_check:\n  interval: 200ms\n  timeout: 100ms\n  unhealthy_threshold: 2\noutlier_detection:\n  consecutive_failures: 3\n{}",
        server_yaml(),
        backends_yaml(&[(&a, 1), (&b, 1), (&c, 1)])
    ))
    .await;
    let (proxy_addr, admin) = (p.proxy_addr, p.admin_addr);
    for r in get_n(proxy_addr, 30).await {
        assert_eq!(r.status, StatusCode::OK);
    }
    let key = b.url();
    b.stop();
    // Keep serving while the crash is noticed: no client sees an error.
    let mut failures = 0;
    let c2 = client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = send(&c2, Method::GET, &url(proxy_addr, "/"), None)
            .await
            .unwrap();
        if r.status != StatusCode::OK {
            failures += 1;
        }
        let v = view(admin, &key).await;
        if v["healthy"] == false {
            assert_eq!(v["available"], false);
            assert!(
                v["health_reason"].as_str().unwrap().contains("connect"),
                "{v}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "crash not detected: {v}"
        );
    }
    assert_eq!(failures, 0);
    // Detected: it gets nothing, not even a retry's worth of connect attempts.
    let errors_before = view(admin, &key).await["errors"].as_u64().unwrap();
    for r in get_n(proxy_addr, 60).await {
        assert_eq!(r.status, StatusCode::OK);
        assert_ne!(r.backend(), "b");
    }
    assert_eq!(
        view(admin, &key).await["errors"].as_u64().unwrap(),
        errors_before
    );
    p.shutdown().await;
}

#[tokio::test]
async fn circuit_opens_on_5xx_with_healthy_health_checks_then_probes_and_closes() {
    let (good, bad) = (demo("good").await, demo("bad").await);
    let p = proxy(&format!(
        "{}health_check:\n  interval: 200ms\n  timeout: 100ms\ncircuit_breaker:\n  failure_threshold: 5\n  open_duration: 1s\n{}",
        server_yaml(),
        backends_yaml(&[(&good, 1), (&bad, 1)])
    ))
    .await;
    let (proxy_addr, admin) = (p.proxy_addr, p.admin_addr);
    bad.control.set_fail_rate(1.0);
    let key = bad.url();
    // Round-robin alternates: 10 requests give the bad one its 5 failures.
    let rs = get_n(proxy_addr, 10).await;
    assert_eq!(
        rs.iter()
            .filter(|r| r.status == StatusCode::INTERNAL_SERVER_ERROR)
            .count(),
        5
    );
    let v = view(admin, &key).await;
    assert_eq!(v["circuit"], "open", "{v}");
    assert_eq!(v["healthy"], true, "its /health still answers 200: {v}");
    assert_eq!(v["available"], false);
    let served_before = bad.control.requests.load(Relaxed);
    for r in get_n(proxy_addr, 30).await {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.backend(), "good");
    }
    assert_eq!(
        bad.control.requests.load(Relaxed),
        served_before,
        "0 of the next 30"
    );

    // It recovers; after open_duration one probe goes through and closes it.
    bad.control.set_fail_rate(0.0);
    wait_until(Duration::from_secs(5), "half-open", || {
        let key = key.clone();
        async move { view(admin, &key).await["circuit"] == "half-open" }
    })
    .await;
    let before_probe = bad.control.requests.load(Relaxed);
    let mut probed_at = None;
    for i in 0..4 {
        let r = send(&client(), Method::GET, &url(proxy_addr, "/"), None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK);
        if r.backend() == "bad" {
            probed_at = Some(i);
            break;
        }
    }
    assert!(probed_at.is_some(), "the probe went through");
    assert_eq!(
        bad.control.requests.load(Relaxed),
        before_probe + 1,
        "exactly one probe"
    );
    assert_eq!(view(admin, &key).await["circuit"], "closed");
    let rs = get_n(proxy_addr, 20).await;
    assert_eq!(
        rs.iter().filter(|r| r.backend() == "bad").count(),
        10,
        "back in rotation"
    );

    // The transitions are counted in the Prometheus metrics.
    let prom = metrics_with_accept(admin, "text/plain;version=0.0.4").await;
    assert!(
        prom.contains("switchyard_circuit_transitions_total{to=\"open\"} 1"),
        "{prom}"
    );
    assert!(
        prom.contains("switchyard_circuit_transitions_total{to=\"closed\"} 1"),
        "{prom}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn every_circuit_open_gives_an_immediate_503() {
    let (a, b) = (demo("a").await, demo("b").await);
    a.control.set_fail_rate(1.0);
    b.control.set_fail_rate(1.0);
    let p = proxy(&format!(
        "{}circuit_breaker:\n  failure_threshold: 2\n  open_duration: 60s\n{}",
        server_yaml(),
        backends_yaml(&[(&a, 1), (&b, 1)])
    ))
    .await;
    get_n(p.proxy_addr, 4).await;
    let t = tokio::time::Instant::now();
    let r = get(&url(p.proxy_addr, "/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "answered at once, not after a timeout"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn failing_health_leaves_rotation_within_the_bound_and_returns() {
    let (a, b) = (demo("a").await, demo("b").await);
    let p = proxy(&format!(
        "{}health_check:\n  interval: 300ms\n  timeout: 200ms\n  unhealthy_threshold: 3\n  healthy_threshold: 2\n{}",
        server_yaml(),
        backends_yaml(&[(&a, 1), (&b, 1)])
    ))
    .await;
    let (proxy_addr, admin) = (p.proxy_addr, p.admin_addr);
    let key = b.url();
    wait_until(Duration::from_secs(5), "first health verdict", || {
        let key = key.clone();
        async move { view(admin, &key).await["health"] == "healthy" }
    })
    .await;
    b.control.set_fail_health(true);
    let t = tokio::time::Instant::now();
    wait_until(Duration::from_secs(5), "unhealthy", || {
        let key = key.clone();
        async move { view(admin, &key).await["healthy"] == false }
    })
    .await;
    // interval × unhealthy_threshold + one interval (and the 10 ms polling step)
    let bound = Duration::from_millis(300 * 3 + 300 + 10);
    assert!(t.elapsed() <= bound, "took {:?}", t.elapsed());
    let v = view(admin, &key).await;
    assert_eq!(v["health_reason"], "GET /health answered 503", "{v}");
    for r in get_n(proxy_addr, 20).await {
        assert_eq!(r.backend(), "a");
    }
    b.control.set_fail_health(false);
    wait_until(Duration::from_secs(5), "healthy again", || {
        let key = key.clone();
        async move { view(admin, &key).await["healthy"] == true }
    })
    .await;
    let rs = get_n(proxy_addr, 20).await;
    assert_eq!(rs.iter().filter(|r| r.backend() == "b").count(), 10);
    p.shutdown().await;
}

#[tokio::test]
async fn per_backend_health_path_override() {
    let (a, b) = (demo("a").await, demo("b").await);
    // b's checks go to a path that answers 404: it is found unhealthy; a stays up.
    let p = proxy(&format!(
        "{}health_check:\n  interval: 100ms\n  timeout: 100ms\n  unhealthy_threshold: 1\nbackends:\n  - url: \"{}\"\n  - url: \"{}\"\n    health_check_path: \"/status?code=404\"\n",
        server_yaml(),
        a.url(),
        b.url()
    ))
    .await;
    let admin = p.admin_addr;
    let key = b.url();
    wait_until(
        Duration::from_secs(5),
        "override path found failing",
        || {
            let key = key.clone();
            async move { view(admin, &key).await["healthy"] == false }
        },
    )
    .await;
    assert_eq!(view(admin, &a.url()).await["healthy"], true);
    p.shutdown().await;
}

#[tokio::test]
async fn a_failing_backend_is_ejected_and_returns_by_itself() {
    let (a, b, c) = (demo("a").await, demo("b").await, demo("c").await);
    let p = proxy(&format!(
        "{}outlier_detection:\n  consecutive_failures: 3\n  base_ejection_time: 1s\n  max_ejection_percent: 34\n{}",
        server_yaml(),
        backends_yaml(&[(&a, 1), (&b, 1), (&c, 1)])
    ))
    .await;
    let (proxy_addr, admin) = (p.proxy_addr, p.admin_addr);
    b.control.set_fail_rate(1.0);
    get_n(proxy_addr, 9).await;
    let v = view(admin, &b.url()).await;
    assert_eq!(v["ejected"], true, "{v}");
    assert!(
        v["ejection"]["reason"]
            .as_str()
            .unwrap()
            .contains("3 consecutive failures"),
        "{v}"
    );
    assert_eq!(v["ejection"]["count"], 1);
    for r in get_n(proxy_addr, 20).await {
        assert_eq!(r.status, StatusCode::OK);
    }
    // the cap (34 % of 3 = 1): c failing too is not ejected
    c.control.set_fail_rate(1.0);
    get_n(proxy_addr, 12).await;
    assert_eq!(view(admin, &c.url()).await["ejected"], false);
    c.control.set_fail_rate(0.0);
    b.control.set_fail_rate(0.0);
    let key = b.url();
    wait_until(Duration::from_secs(5), "return from ejection", || {
        let key = key.clone();
        async move { view(admin, &key).await["ejected"] == false }
    })
    .await;
    let rs = get_n(proxy_addr, 30).await;
    assert_eq!(rs.iter().filter(|r| r.backend() == "b").count(), 10);
    let events = get(&url(admin, "/admin/backends")).await;
    assert_eq!(events.status, StatusCode::OK);
    p.shutdown().await;
}

#[tokio::test]
async fn rate_limit_burst_then_429_with_headers() {
    let a = demo("a").await;
    let p = proxy(&format!(
        "{}rate_limit:\n  requests_per_second: 5\n  burst: 5\n  key: client_ip\n{}",
        server_yaml(),
        backends_yaml(&[(&a, 1)])
    ))
    .await;
    let rs = get_n(p.proxy_addr, 30).await;
    let ok = rs.iter().filter(|r| r.status == StatusCode::OK).count();
    assert!((5..=7).contains(&ok), "{ok} admitted");
    let limited: Vec<_> = rs
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(limited.len(), 30 - ok);
    let r = limited[0];
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["ratelimit-limit"], "5");
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    assert!(r.headers.contains_key("ratelimit-reset"));
    assert_eq!(r.body, "too many requests\n");
    let prom = metrics_with_accept(p.admin_addr, "text/plain").await;
    assert!(
        prom.contains(&format!("switchyard_rate_limited_total {}", 30 - ok)),
        "{prom}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_accuracy_over_ten_seconds_of_overload() {
    let a = demo("a").await;
    let rate = 20.0;
    let burst = 5.0;
    let p = proxy(&format!(
        "{}rate_limit:\n  requests_per_second: {rate}\n  burst: {burst}\n  key: global\n{}",
        server_yaml(),
        backends_yaml(&[(&a, 1)])
    ))
    .await;
    let addr = p.proxy_addr;
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(10);
    let mut tasks = Vec::new();
    // 3 clients at ~25 rps each: about 3.75× the limit.
    for _ in 0..3 {
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            let (mut ok, mut limited) = (0u64, 0u64);
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                match send(&c, Method::GET, &url(addr, "/"), None)
                    .await
                    .unwrap()
                    .status
                {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => limited += 1,
                    s => panic!("unexpected {s}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok += o;
        limited += l;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let admitted_rate = (ok as f64 - burst) / elapsed;
    assert!(
        limited > ok,
        "the load was over the limit ({ok} ok, {limited} limited)"
    );
    assert!(
        (admitted_rate - rate).abs() <= rate * 0.05,
        "admitted {admitted_rate:.2}/s for a limit of {rate}/s ({ok} in {elapsed:.2}s)"
    );
    p.shutdown().await;
}

#[test]
fn a_million_distinct_clients_stay_within_the_key_cap() {
    let cfg = config::parse(
        "server:\n  trusted_proxies: [\"127.0.0.1/32\"]\nrate_limit:\n  requests_per_second: 1\n  burst: 2\n  max_keys: 100000\n",
        "t.yaml",
    )
    .unwrap();
    let limiter = RateLimiter::new(
        cfg.rate_limit.as_ref().unwrap(),
        &cfg.server.trusted_proxies,
        None,
    );
    let metrics = Metrics::default();
    let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let rss = |_: ()| rss_kib(std::process::id());
    let before = rss(());
    rt.block_on(async {
        for i in 0u32..1_000_000 {
            let ip = std::net::Ipv4Addr::from(0x0b00_0000 + i);
            let req = Request::get("/")
                .header("x-forwarded-for", ip.to_string())
                .body(())
                .unwrap();
            limiter
                .check(&req, peer, &metrics)
                .decision()
                .await
                .unwrap();
        }
    });
    let grown_mib = rss(()).saturating_sub(before) / 1024;
    assert!(
        limiter.tracked_keys() <= 100_000 + 64,
        "{} keys",
        limiter.tracked_keys()
    );
    // Documented: about 6 MB at 100,000 keys.
    assert!(grown_mib <= 16, "grew {grown_mib} MiB");
}
