//! The admin API: seed shapes, runtime add/remove, every bad-input case, tokens,
//! and `switchyard check` / startup errors of the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as AxumBody;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use switchyard::admin::{self, AdminState};
use switchyard::app::App;
use switchyard::state::MemoryStore;
use tower::ServiceExt;

fn app(yaml: &str) -> Arc<App> {
    let config = switchyard::config::parse(yaml, "t.yaml").unwrap();
    App::new(
        config,
        Arc::new(MemoryStore::default()),
        "test".into(),
        switchyard::server::file_source("t.yaml"),
    )
}

async fn oneshot(
    app: &Arc<App>,
    token: Option<&str>,
    req: Request<AxumBody>,
) -> (StatusCode, serde_json::Value) {
    let router = admin::router(AdminState {
        app: app.clone(),
        token: token.map(str::to_string),
        public_read: false,
        dashboard_dir: "/nonexistent".into(),
        cors_origins: vec!["https://ops.example".into()],
        tls: None,
    });
    let resp = router.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, v)
}

fn post_json(path: &str, body: impl Into<AxumBody>) -> Request<AxumBody> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

#[tokio::test]
async fn bad_add_requests_get_400_with_one_line_messages() {
    let a = app("backends:\n  - url: http://127.0.0.1:9\n");
    let cases: &[(&str, &str)] = &[
        ("{", "invalid JSON body: EOF while parsing"),
        ("", "invalid JSON body: EOF while parsing"),
        (
            "[1,2]",
            "invalid JSON body: invalid type: integer `1`, expected a string",
        ),
        (
            "\"just a string\"",
            "invalid JSON body: invalid type: string",
        ),
        (
            r#"{"url": 5}"#,
            "invalid JSON body: invalid type: integer `5`, expected a string",
        ),
        (
            r#"{"url": "http://x:80", "weight": "3"}"#,
            "invalid JSON body: invalid type: string \"3\"",
        ),
        (r#"{"weight": 3}"#, "invalid JSON body: missing field `url`"),
        (
            r#"{"url": "http://x:80", "wieght": 3}"#,
            "invalid JSON body: unknown field `wieght`",
        ),
        (r#"{"url": "ftp://x"}"#, "unsupported scheme `ftp`"),
        (r#"{"url": "x:80"}"#, "is not a URL"),
        (r#"{"url": "http://x/api"}"#, "has a path"),
        (r#"{"url": "http://x:99999"}"#, "not a valid port"),
        (
            r#"{"url": "http://x", "weight": 0}"#,
            "weight must be an integer from 1 to 1000, got 0",
        ),
        (
            r#"{"url": "http://x", "weight": -2}"#,
            "weight must be an integer from 1 to 1000, got -2",
        ),
        (
            r#"{"url": "http://x", "weight": 100000}"#,
            "weight must be an integer from 1 to 1000, got 100000",
        ),
    ];
    for (body, expect) in cases {
        let (status, v) = oneshot(&a, None, post_json("/admin/add", body.to_string())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{body} -> {v}"));
        assert!(msg.contains(expect), "{body}: {msg:?} lacks {expect:?}");
        assert!(!msg.contains('\n'), "{msg:?}");
    }
    // Nothing was added by any of them.
    assert_eq!(a.snapshot().default_service().members.len(), 1);
    assert_eq!(
        a.metrics
            .admin_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        cases.len() as u64
    );
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let a = app("");
    let big = format!(r#"{{"url":"http://x","pad":"{}"}}"#, "p".repeat(70 * 1024));
    let (status, v) = oneshot(&a, None, post_json("/admin/add", big.clone())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"], "request body over 64 KiB");
    // Without a Content-Length (chunked), the limit still holds.
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(4096)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let (status, _) = oneshot(
        &a,
        None,
        post_json("/admin/remove", AxumBody::from_stream(stream)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn remove_unknown_backend_is_404_and_bad_url_is_400() {
    let a = app("backends:\n  - url: http://127.0.0.1:9\n");
    let (status, v) = oneshot(
        &a,
        None,
        post_json("/admin/remove", r#"{"url":"http://127.0.0.1:10"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        v["error"],
        "backend http://127.0.0.1:10 is not in the running set"
    );
    let (status, v) = oneshot(&a, None, post_json("/admin/remove", r#"{"url":"nope"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = oneshot(
        &a,
        None,
        post_json("/admin/remove", r#"{"url":"http://127.0.0.1:9","x":1}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = oneshot(
        &a,
        None,
        Request::get("/admin/nothing")
            .body(AxumBody::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "no such endpoint");
}

#[tokio::test]
async fn tokens_guard_mutations_and_reads() {
    let a = app("backends:\n  - url: http://127.0.0.1:9\n");
    let add = || post_json("/admin/add", r#"{"url":"http://127.0.0.1:10"}"#);
    let (status, v) = oneshot(&a, Some("s3cret"), add()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"], "missing bearer token");
    let mut req = add();
    req.headers_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    let (status, v) = oneshot(&a, Some("s3cret"), req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(v["error"], "invalid token");
    let (status, _) = oneshot(
        &a,
        Some("s3cret"),
        Request::get("/admin/backends")
            .body(AxumBody::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // probes stay open
    let (status, _) = oneshot(
        &a,
        Some("s3cret"),
        Request::get("/healthz").body(AxumBody::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut req = add();
    req.headers_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let (status, v) = oneshot(&a, Some("s3cret"), req).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(a.snapshot().default_service().members.len(), 2);
}

#[tokio::test]
async fn seed_endpoints_keep_their_shapes_and_runtime_add_routes_traffic() {
    let (a, b) = (demo("a").await, demo("b").await);
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let admin = p.admin_addr;
    let m = get(&url(admin, "/metrics")).await.json();
    let entry = &m.as_array().unwrap()[0];
    let mut keys: Vec<_> = entry.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["active_conns", "alive", "fails", "latency", "url"]);
    assert_eq!(entry["url"], a.url());
    assert_eq!(entry["alive"], true);

    let r = post(
        &url(admin, "/admin/add"),
        &format!(r#"{{"url":"{}","weight":2}}"#, b.url()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["ok"], true);
    let v = backend_view(admin, &b.url()).await.unwrap();
    assert_eq!(v["source"], "admin");
    assert_eq!(v["weight"], 2);
    assert_eq!(v["circuit"], "closed");
    assert_eq!(v["healthy"], true);
    assert_eq!(v["draining"], false);
    let c = client();
    let mut to_b = 0;
    for _ in 0..30 {
        let r = send(&c, Method::GET, &url(p.proxy_addr, "/"), None)
            .await
            .unwrap();
        if r.backend() == "b" {
            to_b += 1;
        }
    }
    assert_eq!(to_b, 20, "weight 2 of 3");

    // Remove, then re-add: state (request counts) survives the round trip.
    let before = backend_view(admin, &b.url()).await.unwrap()["requests"]
        .as_u64()
        .unwrap();
    assert_eq!(
        post(
            &url(admin, "/admin/remove"),
            &format!(r#"{{"url":"{}"}}"#, b.url())
        )
        .await
        .status,
        StatusCode::OK
    );
    wait_until(Duration::from_secs(5), "b to finish draining", || {
        let key = b.url();
        async move { backend_view(admin, &key).await.is_none() }
    })
    .await;
    let r = post(
        &url(admin, "/admin/add"),
        &format!(r#"{{"url":"{}/"}}"#, b.url()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = backend_view(admin, &b.url()).await.unwrap();
    assert_eq!(v["weight"], 1);
    assert!(v["requests"].as_u64().unwrap() <= before);

    let h = get(&url(admin, "/healthz")).await;
    assert_eq!(h.status, StatusCode::OK);
    let r = get(&url(admin, "/readyz")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["ready"], true);
    let cfg = get(&url(admin, "/admin/config")).await.json();
    assert_eq!(cfg["drift"]["only_runtime"][0], b.url());
    p.shutdown().await;
}

#[test]
fn check_command_reports_file_line_field_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "server:\n  port: 8080\nstrategy: fastest\n").unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "server:\n  port: 8080\n  admin_port: 8081\nstrategy: \"round-robin\"\nbackends:\n  - url: \"http://backend1:80\"\n    weight: 1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:3: strategy: unknown strategy `fastest`",
            bad.display()
        )),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn startup_errors_are_clear_and_exit_nonzero() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "127.0.0.1:0",
            "--backend",
            "http://127.0.0.1:9",
        ])
        .args(["--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot bind the proxy listener on 127.0.0.1:{port}"
        )),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.yaml: cannot read"));
}

#[tokio::test]
async fn admin_binds_loopback_without_a_token() {
    let p =
        proxy("server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  admin_bind: 0.0.0.0\n")
            .await;
    assert!(p.admin_addr.ip().is_loopback(), "{}", p.admin_addr);
    p.shutdown().await;
}

/// Reads SSE frames from `/admin/events` until `want` returns true for one.
async fn read_sse_until(
    admin: std::net::SocketAddr,
    query: &str,
    mut want: impl FnMut(&str, &serde_json::Value) -> bool,
) -> (String, serde_json::Value) {
    let resp = client()
        .request(
            Request::get(url(admin, &format!("/admin/events{query}")))
                .body(full(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("SSE frame in time")
            .unwrap()
            .unwrap();
        if let Ok(d) = frame.into_data() {
            buf.push_str(&String::from_utf8_lossy(&d));
        }
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = "";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e;
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if data.is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&data).unwrap();
            if want(event, &v) {
                return (event.to_string(), v);
            }
        }
    }
}

#[tokio::test]
async fn event_stream_pushes_snapshots_and_events() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let admin = p.admin_addr;
    let (_, snap) = read_sse_until(admin, "", |e, _| e == "snapshot").await;
    assert_eq!(snap["backends"][0]["url"], a.url());
    assert_eq!(snap["strategy"], "round-robin");
    assert_eq!(snap["auth_required"], false);
    // Two snapshots arrive about a second apart.
    let t = tokio::time::Instant::now();
    let mut seen = 0;
    read_sse_until(admin, "", |e, _| {
        seen += (e == "snapshot") as u32;
        seen == 2
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(3));
    // A change shows up as an event. The watcher's first snapshot proves it is subscribed.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        read_sse_until(admin, "", move |e, v| {
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
            e == "event" && v["kind"] == "backend_added"
        })
        .await
    });
    ready_rx.await.unwrap();
    let r = post(&url(admin, "/admin/add"), r#"{"url":"http://127.0.0.1:9"}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    let (_, ev) = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev["backend"], "http://127.0.0.1:9");
    p.shutdown().await;
}

#[tokio::test]
async fn event_stream_accepts_the_token_as_a_query_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    // base64-ish characters must survive the query string's percent-encoding
    std::fs::write(&token, "t0+k/en=\n").unwrap();
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  admin_bind: 127.0.0.1\nadmin:\n  token_file: \"{}\"\n",
        token.display()
    ))
    .await;
    let r = get(&url(p.admin_addr, "/admin/events")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // elsewhere the query parameter is not a credential
    let r = get(&url(
        p.admin_addr,
        "/admin/backends?access_token=t0%2Bk%2Fen%3D",
    ))
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let (_, snap) = read_sse_until(p.admin_addr, "?access_token=t0%2Bk%2Fen%3D", |e, _| {
        e == "snapshot"
    })
    .await;
    assert_eq!(snap["auth_required"], true);
    p.shutdown().await;
}

#[tokio::test]
async fn dashboard_files_are_served_with_types_and_etags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html><p>hi</p>").unwrap();
    std::fs::write(dir.path().join("app_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("app.js"), "export default 1;").unwrap();
    let p = proxy(&format!(
        "{}admin:\n  dashboard_dir: \"{}\"\n",
        server_yaml(),
        dir.path().display()
    ))
    .await;
    let base = p.admin_addr;
    let r = get(&url(base, "/dashboard/")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers["cache-control"], "no-cache");
    let etag = r.headers["etag"].clone();
    let r = get(&url(base, "/dashboard/app_bg.wasm")).await;
    assert_eq!(r.headers["content-type"], "application/wasm");
    let r = get(&url(base, "/dashboard/app.js")).await;
    assert_eq!(r.headers["content-type"], "text/javascript; charset=utf-8");
    let resp = client()
        .request(
            Request::get(url(base, "/dashboard/"))
                .header("if-none-match", etag)
                .body(full(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        get(&url(base, "/dashboard/../Cargo.toml")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&url(base, "/dashboard/%2e%2e/x")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&url(base, "/dashboard/missing.js")).await.status,
        StatusCode::NOT_FOUND
    );
    let r = get(&url(base, "/dashboard")).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    p.shutdown().await;
    // Not built: a page that says how to build it.
    let p = proxy(&format!(
        "{}admin:\n  dashboard_dir: /nonexistent\n",
        server_yaml()
    ))
    .await;
    let r = get(&url(p.admin_addr, "/dashboard/")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("scripts/build-dashboard.sh"));
    p.shutdown().await;
}

/// The copy embedded in the binary: right types, the `.br`/`.gz` twins to clients
/// that accept them (byte for byte what the dashboard build wrote), an `ETag` per
/// encoding, `304` on revalidation. Skipped for a build made before the dashboard.
#[tokio::test]
async fn embedded_dashboard_is_negotiated_compressed_with_etags() {
    if !switchyard::admin::dashboard::embedded() {
        eprintln!(
            "SKIPPED: this build embeds no dashboard (scripts/build-dashboard.sh, then cargo test)"
        );
        return;
    }
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboard-app/dist");
    let p = proxy(server_yaml()).await;
    let fetch = |path: &'static str, accept: &'static str, inm: Option<String>| {
        let u = url(p.admin_addr, path);
        async move {
            let mut req = Request::get(u).header("accept-encoding", accept);
            if let Some(tag) = inm {
                req = req.header("if-none-match", tag);
            }
            let resp = client()
                .request(req.body(full(bytes::Bytes::new())).unwrap())
                .await
                .unwrap();
            let (parts, body) = resp.into_parts();
            let bytes = http_body_util::BodyExt::collect(body)
                .await
                .unwrap()
                .to_bytes();
            (parts, bytes)
        }
    };
    let mut etags = Vec::new();
    for (accept, encoding, file) in [
        ("gzip, deflate, br", Some("br"), "dashboard_app_bg.wasm.br"),
        ("gzip", Some("gzip"), "dashboard_app_bg.wasm.gz"),
        ("identity", None, "dashboard_app_bg.wasm"),
    ] {
        let (parts, body) = fetch("/dashboard/dashboard_app_bg.wasm", accept, None).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["content-type"], "application/wasm");
        assert_eq!(parts.headers["vary"], "accept-encoding");
        assert_eq!(
            parts
                .headers
                .get("content-encoding")
                .map(|v| v.to_str().unwrap()),
            encoding,
            "{accept}"
        );
        assert_eq!(body, std::fs::read(dist.join(file)).unwrap(), "{file}");
        etags.push(parts.headers["etag"].to_str().unwrap().to_string());
    }
    etags.dedup();
    assert_eq!(etags.len(), 3, "one validator per encoding: {etags:?}");
    let (parts, body) = fetch(
        "/dashboard/dashboard_app_bg.wasm",
        "br",
        Some(etags[0].clone()),
    )
    .await;
    assert_eq!(parts.status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    let (parts, _) = fetch("/dashboard/", "gzip", None).await;
    assert_eq!(parts.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(parts.headers["content-encoding"], "gzip");
    let (parts, _) = fetch("/dashboard/dashboard_app.js", "br;q=0, gzip", None).await;
    assert_eq!(
        parts.headers["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(parts.headers["content-encoding"], "gzip");
    let (parts, _) = fetch("/dashboard/../Cargo.toml", "br", None).await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_subcommand_checks_healthz_for_container_healthchecks() {
    let p = proxy(server_yaml()).await;
    let admin = p.admin_addr;
    let ok = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["probe", &format!("http://{admin}/healthz")])
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(ok.success());
    let missing = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["probe", &format!("http://{admin}/nothing-here")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("answered 404"));
    p.shutdown().await;
}
