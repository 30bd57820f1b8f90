//! Hostile input at the edge and at the admin API: stalled clients, smuggling-shaped
//! requests, connection floods, missing and wrong tokens, garbage bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and returns the first response's status line (or what came back).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_stalled_connections_do_not_stop_normal_requests() {
    let a = demo("a").await;
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  header_read_timeout: 2s\n{}",
        backends_yaml(&[(&a, 1)])
    ))
    .await;
    // Slowloris: half a request head each, then silence.
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(s);
    }
    let c = client();
    for _ in 0..50 {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            send(&c, Method::GET, &url(p.proxy_addr, "/"), None),
        )
        .await
        .expect("served while 300 clients stall")
        .unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    // The stalled ones are cut off after the header-read timeout.
    for mut s in stalled.drain(..10) {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("stalled connection closed by the proxy")
            .unwrap_or(0);
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || got.starts_with("HTTP/1.1 408"), "{got}");
    }
    p.shutdown().await;
}

#[tokio::test]
async fn smuggling_shaped_requests_get_400_and_never_reach_a_backend() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let cases: [&[u8]; 7] = [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc",
    ];
    for (i, req) in cases.iter().enumerate() {
        let before = a.control.requests.load(Relaxed);
        let line = raw(p.proxy_addr, req).await;
        assert!(line.starts_with("HTTP/1.1 400"), "case {i}: {line}");
        assert_eq!(
            a.control.requests.load(Relaxed),
            before,
            "case {i} reached the backend"
        );
    }
    // A legitimate chunked request, and one pipelined after a body that looks like
    // headers, are fine.
    let line = raw(
        p.proxy_addr,
        b"POST /sink HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n",
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let body = "x: y\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
    let two = format!(
        "POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(two.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    // Cases 0-3 are smuggling-shaped framing (length with chunked, repeated
    // lengths); 4-6 malformed heads (a list of codings, chunked on HTTP/1.0, a
    // space before the colon). Each kind has its counter.
    let prom = prometheus_text(p.admin_addr).await;
    assert!(
        prom.contains("switchyard_requests_refused_framing_total 4"),
        "{prom}"
    );
    assert!(
        prom.contains("switchyard_requests_refused_malformed_total 3"),
        "{prom}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_200kb_header_gets_431() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200 * 1024)
    );
    assert!(
        raw(p.proxy_addr, req.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert!(
        raw(p.proxy_addr, req.as_bytes())
            .await
            .starts_with("HTTP/1.1 431"),
        "too many headers"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_a_clear_503() {
    let a = demo("a").await;
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  max_connections: 5\n{}",
        backends_yaml(&[(&a, 1)])
    ))
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s); // kept open: keep-alive
    }
    let line = raw(p.proxy_addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(line.starts_with("HTTP/1.1 503"), "{line}");
    drop(held);
    let admin = p.admin_addr;
    wait_until(Duration::from_secs(5), "slots freed", || async move {
        prometheus_text(admin)
            .await
            .contains("switchyard_connections_active 0")
    })
    .await;
    assert_eq!(get(&url(p.proxy_addr, "/")).await.status, StatusCode::OK);
    assert!(
        prometheus_text(p.admin_addr)
            .await
            .contains("switchyard_connections_rejected_total 1")
    );
    p.shutdown().await;
}

#[tokio::test]
async fn every_admin_endpoint_rejects_missing_and_wrong_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "correct horse battery staple").unwrap();
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  admin_bind: 127.0.0.1\nadmin:\n  token_file: \"{}\"\n",
        token.display()
    ))
    .await;
    let endpoints = [
        (
            Method::POST,
            "/admin/add",
            r#"{"url":"http://127.0.0.1:9"}"#,
        ),
        (
            Method::POST,
            "/admin/remove",
            r#"{"url":"http://127.0.0.1:9"}"#,
        ),
        (Method::POST, "/admin/reload", ""),
        (Method::GET, "/admin/backends", ""),
        (Method::GET, "/admin/config", ""),
        (Method::GET, "/admin/cluster", ""),
        (Method::GET, "/admin/events", ""),
        (Method::GET, "/metrics", ""),
    ];
    let c = client();
    for (method, path, body) in &endpoints {
        for (auth, want) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("Bearer wrong"), StatusCode::FORBIDDEN),
            (
                Some("Bearer correct horse battery stapl"),
                StatusCode::FORBIDDEN,
            ),
            (Some("Basic Y29ycmVjdA=="), StatusCode::UNAUTHORIZED),
        ] {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(url(p.admin_addr, path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = c
                .request(req.body(full(body.to_string())).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), want, "{method} {path} with {auth:?}");
        }
    }
    // The probes and the dashboard's files stay open.
    assert_eq!(
        get(&url(p.admin_addr, "/healthz")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&url(p.admin_addr, "/readyz")).await.status,
        StatusCode::OK
    );
    // The right token works.
    let resp = c
        .request(
            Request::get(url(p.admin_addr, "/admin/backends"))
                .header("authorization", "Bearer correct horse battery staple")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    p.shutdown().await;
}

#[tokio::test]
async fn malformed_admin_bodies_get_4xx_never_5xx() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"{}".to_vec(),
        b"{\"url\":null}".to_vec(),
        b"{\"url\":\"\"}".to_vec(),
        b"{\"url\":\"http://a\",\"weight\":1e308}".to_vec(),
        b"{\"url\":\"http://a\",\"weight\":-0}".to_vec(),
        b"{\"url\":\"http://a\",\"weight\":18446744073709551616}".to_vec(),
        b"{\"url\":[\"http://a\"]}".to_vec(),
        b"{\"url\":\"http://\\u0000\"}".to_vec(),
        b"{\"url\":\"http://a\"}{\"url\":\"http://b\"}".to_vec(),
        "{\"url\":\"http://\u{1F600}.example\"}".as_bytes().to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        "[".repeat(100_000).into_bytes(),
        format!(
            "{{\"url\":\"http://a\",\"pad\":\"{}\"}}",
            "x".repeat(70_000)
        )
        .into_bytes(),
    ];
    // and random bytes
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..200 {
        let n = rng.usize(0..300);
        bodies.push((0..n).map(|_| rng.u8(..)).collect());
    }
    let c = client();
    for path in ["/admin/add", "/admin/remove"] {
        for b in &bodies {
            let resp = c
                .request(
                    Request::post(url(p.admin_addr, path))
                        .header("content-type", "application/json")
                        .body(full(Bytes::from(b.clone())))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(
                status.is_client_error() || status.is_success(),
                "{path} with {:?}: {status}",
                String::from_utf8_lossy(&b[..b.len().min(80)])
            );
            if status.is_client_error() {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert!(v["error"].is_string());
            }
        }
    }
    // The proxy is still fine and its backend list intact.
    assert_eq!(get(&url(p.proxy_addr, "/")).await.status, StatusCode::OK);
    p.shutdown().await;
}

#[tokio::test]
async fn cors_is_off_unless_configured() {
    let p = proxy(server_yaml()).await;
    let resp = client()
        .request(
            Request::get(url(p.admin_addr, "/admin/backends"))
                .header("origin", "https://evil.example")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    p.shutdown().await;

    let p = proxy(&format!(
        "{}admin:\n  cors_origins: [\"https://ops.example\"]\n",
        server_yaml()
    ))
    .await;
    let preflight = client()
        .request(
            Request::builder()
                .method(Method::OPTIONS)
                .uri(url(p.admin_addr, "/admin/add"))
                .header("origin", "https://ops.example")
                .header("access-control-request-method", "POST")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://ops.example"
    );
    assert!(
        preflight.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let other = client()
        .request(
            Request::get(url(p.admin_addr, "/admin/backends"))
                .header("origin", "https://evil.example")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    p.shutdown().await;
}
