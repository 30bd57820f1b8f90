//! The data path on real loopback sockets: strategies, failover, draining,
//! streaming, WebSocket, h2c, header handling and error statuses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

async fn tally(proxy: std::net::SocketAddr, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = send(&c, Method::GET, &url(proxy, "/"), None).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        *counts.entry(r.backend()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_weights_give_exact_proportions() {
    let (a, b, c) = (demo("a").await, demo("b").await, demo("c").await);
    let p = proxy(&format!(
        "{}strategy: round-robin\n{}",
        server_yaml(),
        backends_yaml(&[(&a, 3), (&b, 1), (&c, 1)])
    ))
    .await;
    let counts = tally(p.proxy_addr, 50).await;
    assert_eq!(counts["a"], 30, "{counts:?}");
    assert_eq!(counts["b"], 10, "{counts:?}");
    assert_eq!(counts["c"], 10, "{counts:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn least_connections_avoids_a_backend_holding_slow_requests() {
    let (slow, fast) = (demo("slow").await, demo("fast").await);
    slow.control.set_latency(Duration::from_millis(300));
    let p = proxy(&format!(
        "{}strategy: least-connections\n{}",
        server_yaml(),
        backends_yaml(&[(&slow, 1), (&fast, 1)])
    ))
    .await;
    let addr = p.proxy_addr;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move { tally(addr, 10).await }));
    }
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    let s = total.get("slow").copied().unwrap_or(0);
    let f = total.get("fast").copied().unwrap_or(0);
    assert_eq!(s + f, 80);
    // Round-robin would send 40 to each; least-connections keeps the slow one's queue short.
    assert!(s * 4 < f, "slow {s} vs fast {f}");
    p.shutdown().await;
}

#[tokio::test]
async fn adaptive_moves_traffic_off_a_slower_backend() {
    let (a, b, slow) = (demo("a").await, demo("b").await, demo("slow").await);
    slow.control.set_latency(Duration::from_millis(50));
    let p = proxy(&format!(
        "{}strategy: adaptive\n{}",
        server_yaml(),
        backends_yaml(&[(&a, 1), (&b, 1), (&slow, 1)])
    ))
    .await;
    let counts = tally(p.proxy_addr, 200).await;
    let s = counts.get("slow").copied().unwrap_or(0);
    // An even spread would give it 67; at least 90 % of that must move away.
    assert!(s <= 6, "slow backend got {s} of 200: {counts:?}");
    p.shutdown().await;
}

#[tokio::test]
async fn killing_a_backend_mid_loop_costs_no_failed_requests() {
    let (a, b, victim) = (demo("a").await, demo("b").await, demo("victim").await);
    let p = proxy(&format!(
        "{}{}",
        server_yaml(),
        backends_yaml(&[(&a, 1), (&b, 1), (&victim, 1)])
    ))
    .await;
    let addr = p.proxy_addr;
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let served = served.clone();
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut failures = Vec::new();
            for _ in 0..150 {
                match send(&c, Method::GET, &url(addr, "/"), None).await {
                    Ok(r) if r.status == StatusCode::OK => {}
                    Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failures.push(e),
                }
                served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            failures
        }));
    }
    // Kill it while the loop is running, with requests in flight.
    wait_until(Duration::from_secs(10), "traffic", || {
        let n = served.load(std::sync::atomic::Ordering::Relaxed);
        async move { n >= 150 }
    })
    .await;
    victim.stop();
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    p.shutdown().await;
}

#[tokio::test]
async fn draining_lets_an_inflight_request_finish_and_sends_new_ones_elsewhere() {
    let (a, b) = (demo("a").await, demo("b").await);
    let p = proxy(&format!(
        "{}{}",
        server_yaml(),
        backends_yaml(&[(&a, 1), (&b, 1)])
    ))
    .await;
    let (proxy_addr, admin) = (p.proxy_addr, p.admin_addr);
    let slow = tokio::spawn(async move { get(&url(proxy_addr, "/sleep?ms=2000")).await });
    // Find which backend holds it.
    let busy = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
    wait_until(Duration::from_secs(5), "the slow request in flight", || {
        let busy = busy.clone();
        async move {
            let v = get(&url(admin, "/admin/backends")).await.json();
            match v
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["active_conns"] == 1)
            {
                Some(b) => {
                    *busy.lock() = b["url"].as_str().unwrap().to_string();
                    true
                }
                None => false,
            }
        }
    })
    .await;
    let busy = busy.lock().clone();
    let (busy_name, other_name) = if busy == a.url() {
        ("a", "b")
    } else {
        ("b", "a")
    };
    let r = post(
        &url(admin, "/admin/remove"),
        &format!(r#"{{"url":"{busy}"}}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let v = backend_view(admin, &busy)
        .await
        .expect("still listed while draining");
    assert_eq!(v["draining"], true);
    let counts = tally(proxy_addr, 20).await;
    assert_eq!(counts.get(other_name), Some(&20), "{counts:?}");
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, format!("{busy_name} slept 2000ms\n"));
    wait_until(
        Duration::from_secs(5),
        "drained backend to be removed",
        || {
            let busy = busy.clone();
            async move { backend_view(admin, &busy).await.is_none() }
        },
    )
    .await;
    p.shutdown().await;
}

#[tokio::test]
async fn websocket_echo_passes_through() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", p.proxy_addr))
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for msg in ["hello", "second message"] {
        ws.send(Message::text(msg)).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), msg);
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &[1, 2, 3]
    );
    ws.close(None).await.unwrap();
    p.shutdown().await;
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let resp = c
        .request(
            Request::get(url(p.proxy_addr, "/headers"))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let headers: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // The backend sees HTTP/1.1 with a Host taken from :authority.
    assert_eq!(headers["host"], p.proxy_addr.to_string());
    p.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_removed() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let req = Request::get(url(p.proxy_addr, "/headers"))
        .header("host", "api.example")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-custom", "kept")
        .body(full(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "untrusted client's XFF is replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example");
    assert_eq!(h["host"], "api.example");
    assert_eq!(h["x-custom"], "kept");
    assert!(h.get("x-private").is_none(), "{h}");
    assert!(h.get("keep-alive").is_none(), "{h}");
    p.shutdown().await;
}

#[tokio::test]
async fn trusted_proxies_have_their_chain_extended() {
    let a = demo("a").await;
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  trusted_proxies: [\"127.0.0.0/8\"]\n{}",
        backends_yaml(&[(&a, 1)])
    ))
    .await;
    let req = Request::get(url(p.proxy_addr, "/headers"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .body(full(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let h: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    p.shutdown().await;
}

#[tokio::test]
async fn no_backend_gives_a_fast_503_with_retry_after() {
    let p = proxy(&format!("{}backends: []\n", server_yaml())).await;
    let r = get(&url(p.proxy_addr, "/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.body, "no backend available\n");
    p.shutdown().await;
}

#[tokio::test]
async fn dead_backends_give_502_without_detail() {
    // A port that was free a moment ago: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = proxy(&format!(
        "{}backends:\n  - url: \"http://{dead}\"\n",
        server_yaml()
    ))
    .await;
    let r = get(&url(p.proxy_addr, "/")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.body, "bad gateway\n");
    p.shutdown().await;
}

#[tokio::test]
async fn garbage_from_a_backend_gives_502() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"this is not http\r\n\r\n").await;
            });
        }
    });
    let p = proxy(&format!(
        "{}backends:\n  - url: \"http://{addr}\"\n",
        server_yaml()
    ))
    .await;
    let r = get(&url(p.proxy_addr, "/")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.body, "bad gateway\n");
    p.shutdown().await;
}

#[tokio::test]
async fn a_hung_backend_gives_504_after_the_request_timeout() {
    let a = demo("a").await;
    a.control.set_hang(true);
    let p = proxy(&format!(
        "{}timeouts:\n  request: 300ms\n{}",
        server_yaml(),
        backends_yaml(&[(&a, 1)])
    ))
    .await;
    let r = get(&url(p.proxy_addr, "/")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.body, "gateway timeout\n");
    p.shutdown().await;
}

#[tokio::test]
async fn oversized_request_headers_get_431() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    let mut s = tokio::net::TcpStream::connect(p.proxy_addr).await.unwrap();
    let big = "x".repeat(200 * 1024);
    let req = format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    p.shutdown().await;
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let a = demo("a").await;
    let p = proxy(&format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)]))).await;
    // 8 MiB up, counted by the backend
    let chunks = (0..128).map(|_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(vec![
            7u8;
            64 * 1024
        ])))
    });
    let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
    let req = Request::post(url(p.proxy_addr, "/sink"))
        .body(body)
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&n),
        format!("{}\n", 128 * 64 * 1024)
    );
    // echo round trip
    let r = send(
        &client(),
        Method::POST,
        &url(p.proxy_addr, "/echo"),
        Some("ping pong"),
    )
    .await
    .unwrap();
    assert_eq!(r.body, "ping pong");
    // 8 MiB down
    let r = get(&url(p.proxy_addr, &format!("/bytes?n={}", 8 << 20))).await;
    assert_eq!(r.body.len(), 8 << 20);
    p.shutdown().await;
}

/// Streams 200 MB up and 200 MB down through a `switchyard` process and watches its RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_200_mb_keeps_proxy_memory_small() {
    let a = demo("a").await;
    let proc = Proc::start(
        &format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)])),
        &[],
        &[],
    );
    let pid = proc.pid();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (peak2, stop2) = (peak.clone(), stop.clone());
    let sampler = tokio::spawn(async move {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            peak2.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    const TOTAL: usize = 200 * 1000 * 1000;
    const CHUNK: usize = 256 * 1024;
    let chunk = Bytes::from(vec![1u8; CHUNK]);
    let chunks = (0..TOTAL / CHUNK + 1).map(move |i| {
        let len = if i == TOTAL / CHUNK {
            TOTAL % CHUNK
        } else {
            CHUNK
        };
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.slice(..len)))
    });
    let body = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
    let resp = client()
        .request(Request::post(url(proc.proxy, "/sink")).body(body).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&n), format!("{TOTAL}\n"));

    let resp = client()
        .request(
            Request::get(url(proc.proxy, &format!("/bytes?n={TOTAL}")))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got += d.len();
        }
    }
    assert_eq!(got, TOTAL);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.await.unwrap();
    let peak_mib = peak.load(std::sync::atomic::Ordering::Relaxed) / 1024;
    assert!(peak_mib > 0, "RSS was not sampled");
    assert!(peak_mib < 64, "proxy RSS peaked at {peak_mib} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_inflight_request_complete_then_exits_zero() {
    let a = demo("a").await;
    let mut proc = Proc::start(
        &format!("{}{}", server_yaml(), backends_yaml(&[(&a, 1)])),
        &[],
        &[],
    );
    let addr = proc.proxy;
    let admin = proc.admin;
    let inflight = tokio::spawn(async move { get(&url(addr, "/sleep?ms=1500")).await });
    let key = a.url();
    wait_until(Duration::from_secs(5), "request in flight", || {
        let key = key.clone();
        async move {
            backend_view(admin, &key)
                .await
                .is_some_and(|b| b["active_conns"] == 1)
        }
    })
    .await;
    proc.signal("TERM");
    let r = inflight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "a slept 1500ms\n");
    let code = tokio::task::spawn_blocking(move || {
        let code = proc.wait_exit(Duration::from_secs(15));
        (code, proc.logs())
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "logs:\n{}", code.1);
    // After shutdown nothing listens.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Reads one request head (to the blank line); false when the peer closed first.
async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_closed_by_the_backend_cost_the_client_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    // A backend that answers one request per connection and closes a connection
    // when a second request arrives on it, without answering (the race of a server
    // timing out an idle keep-alive connection just as a request comes in). The
    // proxy cannot see those closes coming: its idle connections look open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let warm = 5;
    let barrier = Arc::new(tokio::sync::Barrier::new(warm));
    let (accepted, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (acc, drp) = (accepted.clone(), dropped.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let n = acc.fetch_add(1, Relaxed);
            let (barrier, drp) = (barrier.clone(), drp.clone());
            tokio::spawn(async move {
                if !read_head(&mut s).await {
                    return;
                }
                if n < warm {
                    // The first connections answer together, so the proxy pools them all.
                    barrier.wait().await;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                if read_head(&mut s).await {
                    drp.fetch_add(1, Relaxed);
                }
                // dropped: closed without an answer
            });
        }
    });
    let p = proxy(&format!(
        "{}backends:\n  - url: \"http://{addr}\"\n",
        server_yaml()
    ))
    .await;
    let c = client();
    let first: Vec<_> = (0..warm)
        .map(|_| {
            let c = c.clone();
            let u = url(p.proxy_addr, "/");
            tokio::spawn(async move { send(&c, Method::GET, &u, None).await.unwrap().status })
        })
        .collect();
    for f in first {
        assert_eq!(f.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(accepted.load(Relaxed), warm, "one upstream connection each");
    // Every pooled connection is now a trap; the next GETs must still succeed.
    for i in 0..3 {
        let r = send(&c, Method::GET, &url(p.proxy_addr, "/"), None)
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
    }
    assert!(dropped.load(Relaxed) >= 1, "a pooled connection was tried");
}

/// `server.threads: 2`: two workers, each with its own socket on the proxy port
/// (`SO_REUSEPORT`); the kernel spreads new connections over both, each serves
/// its connections itself (upstream connections included), and shutdown waits
/// for both.
#[tokio::test]
async fn two_workers_share_the_port_and_both_serve() {
    let d = demo("w").await;
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  threads: 2\n{}",
        backends_yaml(&[(&d, 1)])
    ))
    .await;
    // 64 connections, each with two requests (the second on a pooled upstream
    // connection of whichever worker took the client).
    let conns = 64;
    for i in 0..conns {
        let mut s = tokio::net::TcpStream::connect(p.proxy_addr).await.unwrap();
        for _ in 0..2 {
            s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
                .await
                .unwrap();
            let got = read_one_response(&mut s, Duration::from_secs(10)).await;
            assert!(got.starts_with("HTTP/1.1 200"), "connection {i}: {got:?}");
            assert!(got.contains("x-backend: w"), "connection {i}: {got:?}");
        }
    }
    let text = prometheus_text(p.admin_addr).await;
    let per_worker = |w: &str| -> u64 {
        let key = format!("switchyard_worker_connections_total{{worker=\"{w}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (w0, w1) = (per_worker("0"), per_worker("1"));
    assert_eq!(w0 + w1, conns, "{text}");
    // Each connection lands on one of two sockets by a hash of its addresses: all
    // 64 on one has odds of 2^-63.
    assert!(w0 > 0 && w1 > 0, "worker 0: {w0}, worker 1: {w1}");
    assert!(!text.contains("switchyard_worker_connections_total{worker=\"2\"}"));
    p.shutdown().await;
}

/// A backend that answers nothing until `wave` requests are in: every wave of
/// requests is in flight at once. Counts the connections it accepted.
async fn barrier_backend(
    wave: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(wave));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            count.fetch_add(1, Relaxed);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                loop {
                    // One request head (no body) per exchange.
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    barrier.wait().await;
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// `upstream.max_idle_per_backend` is 2, but 32 requests were in flight at once:
/// the pool keeps the 32 connections that demand needed, and the next wave of 32
/// reuses them instead of opening 30 new ones.
#[tokio::test]
async fn the_idle_pool_follows_the_peak_in_flight() {
    use std::sync::atomic::Ordering::Relaxed;
    const WAVE: usize = 32;
    let (backend, accepted) = barrier_backend(WAVE).await;
    let p = proxy(&format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  threads: 1\n\
         upstream:\n  max_idle_per_backend: 2\n\
         backends:\n  - url: \"http://{backend}\"\n"
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..WAVE {
        clients.push(tokio::net::TcpStream::connect(p.proxy_addr).await.unwrap());
    }
    let wave = |clients: Vec<tokio::net::TcpStream>| async move {
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
                        .await
                        .unwrap();
                    let got = read_one_response(&mut s, Duration::from_secs(10)).await;
                    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
                    s
                })
            })
            .collect();
        let mut back = Vec::new();
        for t in tasks {
            back.push(t.await.unwrap());
        }
        back
    };
    let clients = wave(clients).await;
    assert_eq!(accepted.load(Relaxed), WAVE);
    let idle = || {
        p.app
            .snapshot()
            .all_members()
            .map(|(_, m)| m.backend.pool.idle_count())
            .sum::<usize>()
    };
    wait_until(
        Duration::from_secs(10),
        "32 idle upstream connections",
        || {
            let n = idle();
            async move { n == WAVE }
        },
    )
    .await;
    let _clients = wave(clients).await;
    assert_eq!(
        accepted.load(Relaxed),
        WAVE,
        "the second wave opened connections"
    );
    p.shutdown().await;
}
