//! HTTPS at the edge over real sockets: SNI among several certificates, ALPN h2 and
//! http/1.1 to the backends, certificate files replaced on disk (rename, symlink
//! swap, broken pairs), SIGHUP, handshake timeouts and garbage, strict SNI, the
//! redirect and HSTS, upstream TLS (CA, SNI name, client certificate, no
//! verification) and the admin listener over TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::tls::{self as t, Ca};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tls_yaml(pairs: &[(&Path, &Path)], extra: &str) -> String {
    let mut y = String::from("tls:\n  port: 0\n  watch_interval: 100ms\n  certificates:\n");
    for (c, k) in pairs {
        y.push_str(&format!(
            "    - cert: \"{}\"\n      key: \"{}\"\n",
            c.display(),
            k.display()
        ));
    }
    y.push_str(extra);
    y
}

async fn tls_view(admin: SocketAddr) -> serde_json::Value {
    get(&url(admin, "/admin/tls")).await.json()
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_reaches_the_backends_over_h2_and_http11() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let default = t::write_pair(dir.path(), "default", &ca.leaf(&["default.test"]));
    let wild = t::write_pair(dir.path(), "wild", &ca.leaf(&["*.example.com"]));
    let api = t::write_pair(dir.path(), "api", &ca.leaf(&["api.example.com"]));
    let backend = demo("b1").await;
    let yaml = format!(
        "{}{}{}",
        server_yaml(),
        backends_yaml(&[(&backend, 1)]),
        tls_yaml(
            &[
                (&default.0, &default.1),
                (&wild.0, &wild.1),
                (&api.0, &api.1)
            ],
            ""
        )
    );
    let p = proxy(&yaml).await;
    let addr = p.tls_addr.unwrap();

    for (sni, want) in [
        ("api.example.com", "api.example.com"),
        ("www.example.com", "*.example.com"),
        ("unknown.test", "default.test"),
        ("127.0.0.1", "default.test"),
    ] {
        let seen = t::cert_for(addr, sni).await.unwrap();
        assert_eq!(seen.names, [want], "SNI {sni}");
    }

    // Verified against the CA, with each protocol: the backend answers, and learns
    // the client came over HTTPS.
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let s = t::connect(
            addr,
            "api.example.com",
            t::verifying_config(&ca.pem, &[alpn]),
        )
        .await
        .unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(alpn));
        let (status, _, body) = t::get_over(s, "api.example.com", "/headers").await;
        assert_eq!(status, 200, "{body}");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(h["x-forwarded-proto"], "https", "{body}");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }
    // No ALPN at all: HTTP/1.1.
    let s = t::connect(addr, "api.example.com", t::verifying_config(&ca.pem, &[]))
        .await
        .unwrap();
    let (status, _, body) = t::get_over(s, "api.example.com", "/").await;
    assert_eq!((status, body.trim()), (200, "b1"));

    // curl, as an operator would: --cacert and --resolve.
    let ca_file = ca.write(dir.path());
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&ca_file)
        .args([
            "--resolve",
            &format!("api.example.com:{}:127.0.0.1", addr.port()),
            "-w",
            "\n%{http_version}",
            &format!("https://api.example.com:{}/", addr.port()),
        ])
        .output()
        .await
        .expect("curl");
    let out = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.trim(),
        "b1\n\n2",
        "curl: body, then the HTTP version: {out}"
    );

    let v = tls_view(p.admin_addr).await;
    assert_eq!(v["certificates"].as_array().unwrap().len(), 3);
    assert_eq!(v["certificates"][0]["default"], true);
    assert_eq!(v["certificates"][0]["names"][0], "default.test");
    assert!(v["certificates"][1]["expires_in_s"].as_i64().unwrap() > 86_400);
    assert_eq!(v["alpn"], serde_json::json!(["h2", "http/1.1"]));
    let m = prometheus_text(p.admin_addr).await;
    assert!(
        m.contains(
            "switchyard_tls_certificate_expiry_seconds{name=\"api.example.com\",source=\"file\"}"
        ),
        "{m}"
    );
    assert!(m.contains("switchyard_tls_handshakes_total{kind=\"full\"}"));
    p.shutdown().await;
}

#[tokio::test]
async fn replaced_certificate_files_are_served_without_a_restart_and_broken_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    // Kubernetes secret layout: the files are symlinks through `..data`, which is
    // swapped to a new timestamped directory in one rename.
    let v1 = dir.path().join("..2026_01");
    std::fs::create_dir(&v1).unwrap();
    let first = ca.leaf(&["a.test"]);
    t::write_pair(&v1, "tls", &first);
    std::os::unix::fs::symlink("..2026_01", dir.path().join("..data")).unwrap();
    let cert = dir.path().join("tls.pem");
    let key = dir.path().join("tls.key");
    std::os::unix::fs::symlink("..data/tls.pem", &cert).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", &key).unwrap();

    let backend = demo("b1").await;
    let yaml = format!(
        "{}{}{}",
        server_yaml(),
        backends_yaml(&[(&backend, 1)]),
        tls_yaml(&[(&cert, &key)], "")
    );
    let p = proxy(&yaml).await;
    let addr = p.tls_addr.unwrap();
    let serial0 = t::cert_for(addr, "a.test").await.unwrap().serial;

    // 1. A symlink swap.
    let v2 = dir.path().join("..2026_02");
    std::fs::create_dir(&v2).unwrap();
    t::write_pair(&v2, "tls", &ca.leaf(&["a.test"]));
    std::os::unix::fs::symlink("..2026_02", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the swapped certificate",
        || async { t::cert_for(addr, "a.test").await.unwrap().serial != serial0 },
    )
    .await;
    let serial1 = t::cert_for(addr, "a.test").await.unwrap().serial;

    // 2. A broken replacement (garbage certificate) is refused: the last good one
    // keeps serving, and the admin API says why.
    let real_cert = dir.path().join("..data/tls.pem");
    t::replace_atomically(&real_cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    wait_until(
        Duration::from_secs(10),
        "the refusal in /admin/tls",
        || async { tls_view(p.admin_addr).await["certificates"][0]["error"].is_string() },
    )
    .await;
    assert_eq!(t::cert_for(addr, "a.test").await.unwrap().serial, serial1);

    // 3. A mismatched pair (another certificate's key) is refused too.
    let other = ca.leaf(&["a.test"]);
    t::replace_atomically(&real_cert, &other.0);
    wait_until(Duration::from_secs(10), "the mismatch refusal", || async {
        tls_view(p.admin_addr).await["certificates"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not belong"))
    })
    .await;
    assert_eq!(t::cert_for(addr, "a.test").await.unwrap().serial, serial1);

    // 4. The matching key arrives by atomic rename: served, error cleared.
    t::replace_atomically(&dir.path().join("..data/tls.key"), &other.1);
    wait_until(Duration::from_secs(10), "the fixed pair", || async {
        t::cert_for(addr, "a.test").await.unwrap().serial != serial1
    })
    .await;
    let v = tls_view(p.admin_addr).await;
    assert!(v["certificates"][0]["error"].is_null(), "{v}");
    let m = prometheus_text(p.admin_addr).await;
    assert!(
        m.contains("switchyard_tls_certificate_reloads_total{result=\"refused\"} 2"),
        "{m}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_mismatched_certificate_stops_the_start_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (c, _) = t::write_pair(dir.path(), "a", &ca.leaf(&["a.test"]));
    let (_, k) = t::write_pair(dir.path(), "b", &ca.leaf(&["a.test"]));
    let yaml = format!("{}{}", server_yaml(), tls_yaml(&[(&c, &k)], ""));
    let config = switchyard::config::parse(&yaml, "t.yaml").unwrap();
    let err = switchyard::server::start(config, switchyard::server::file_source("t.yaml"))
        .await
        .err()
        .expect("refused");
    assert!(
        err.contains("tls.certificates[0]") && err.contains("does not belong"),
        "{err}"
    );
    let missing = dir.path().join("nope.pem");
    let yaml = format!("{}{}", server_yaml(), tls_yaml(&[(&missing, &k)], ""));
    let config = switchyard::config::parse(&yaml, "t.yaml").unwrap();
    let err = switchyard::server::start(config, switchyard::server::file_source("t.yaml"))
        .await
        .err()
        .expect("refused");
    assert!(err.contains("nope.pem"), "{err}");
}

#[tokio::test]
async fn stalled_and_garbage_handshakes_are_closed_and_free_their_slot() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let pair = t::write_pair(dir.path(), "a", &ca.leaf(&["a.test"]));
    let backend = demo("b1").await;
    let yaml = format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  max_connections: 2\n{}{}",
        backends_yaml(&[(&backend, 1)]),
        tls_yaml(&[(&pair.0, &pair.1)], "  handshake_timeout: 300ms\n")
    );
    let p = proxy(&yaml).await;
    let addr = p.tls_addr.unwrap();

    // Two clients connect and say nothing: they hold both slots ...
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(TcpStream::connect(addr).await.unwrap());
    }
    wait_until(Duration::from_secs(10), "both counted", || {
        let a = p.app.clone();
        async move {
            a.metrics
                .connections_active
                .load(std::sync::atomic::Ordering::Relaxed)
                == 2
        }
    })
    .await;
    // ... until the handshake timeout closes them (the server hangs up).
    for mut s in stalled {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    wait_until(Duration::from_secs(10), "slots freed", || {
        let a = p.app.clone();
        async move {
            a.metrics
                .connections_active
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
        }
    })
    .await;

    // Garbage instead of a ClientHello: closed at once (an alert, then EOF), no panic.
    let mut g = TcpStream::connect(addr).await.unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut rest))
        .await
        .expect("closed at once")
        .ok();
    assert!(
        !rest.starts_with(b"HTTP/"),
        "no plain answer on the TLS port"
    );

    // A real client is served afterwards.
    let s = t::connect(addr, "a.test", t::verifying_config(&ca.pem, &[b"http/1.1"]))
        .await
        .unwrap();
    let (status, _, _) = t::get_over(s, "a.test", "/").await;
    assert_eq!(status, 200);
    let v = tls_view(p.admin_addr).await;
    assert!(v["handshake_timeouts"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["handshake_failures"].as_u64().unwrap() >= 1, "{v}");
    p.shutdown().await;
}

#[tokio::test]
async fn strict_sni_refuses_unknown_names_with_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let pair = t::write_pair(dir.path(), "a", &ca.leaf(&["a.test"]));
    let yaml = format!(
        "{}{}",
        server_yaml(),
        tls_yaml(&[(&pair.0, &pair.1)], "  strict_sni: true\n")
    );
    let p = proxy(&yaml).await;
    let addr = p.tls_addr.unwrap();
    assert_eq!(t::cert_for(addr, "a.test").await.unwrap().names, ["a.test"]);
    let err = t::cert_for(addr, "b.test").await.expect_err("refused");
    assert!(
        err.to_string().to_lowercase().contains("alert"),
        "an alert, got: {err}"
    );
    assert!(t::cert_for(addr, "127.0.0.1").await.is_err(), "no SNI");
    p.shutdown().await;
}

#[tokio::test]
async fn tls13_only_refuses_tls12_clients() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let pair = t::write_pair(dir.path(), "a", &ca.leaf(&["a.test"]));
    let yaml = format!(
        "{}{}",
        server_yaml(),
        tls_yaml(&[(&pair.0, &pair.1)], "  min_version: \"1.3\"\n")
    );
    let p = proxy(&yaml).await;
    let addr = p.tls_addr.unwrap();
    let tls12 = {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::pem::PemObject::pem_slice_iter(ca.pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    };
    assert!(t::connect(addr, "a.test", tls12).await.is_err());
    let s = t::connect(addr, "a.test", t::verifying_config(&ca.pem, &[]))
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    p.shutdown().await;
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_and_https_answers_carry_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let pair = t::write_pair(dir.path(), "a", &ca.leaf(&["a.test"]));
    let backend = demo("b1").await;
    let yaml = format!(
        "{}{}{}",
        server_yaml(),
        backends_yaml(&[(&backend, 1)]),
        tls_yaml(
            &[(&pair.0, &pair.1)],
            "  redirect_http: true\n  hsts: \"max-age=31536000; includeSubDomains\"\n"
        )
    );
    let p = proxy(&yaml).await;
    let tls_port = p.tls_addr.unwrap().port();
    let r = client()
        .request(
            http::Request::post(url(p.proxy_addr, "/a/b?c=1"))
                .header("host", "a.test:8080")
                .body(full("x"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://a.test:{tls_port}/a/b?c=1")
    );
    let s = t::connect(
        p.tls_addr.unwrap(),
        "a.test",
        t::verifying_config(&ca.pem, &[b"h2"]),
    )
    .await
    .unwrap();
    let (status, headers, body) = t::get_over(s, "a.test", "/").await;
    assert_eq!((status, body.trim()), (200, "b1"));
    assert_eq!(
        headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    p.shutdown().await;

    // Off by default: plain HTTP is proxied, no HSTS.
    let yaml = format!(
        "{}{}{}",
        server_yaml(),
        backends_yaml(&[(&backend, 1)]),
        tls_yaml(&[(&pair.0, &pair.1)], "")
    );
    let p = proxy(&yaml).await;
    let r = get(&url(p.proxy_addr, "/")).await;
    assert_eq!((r.status.as_u16(), r.body.trim()), (200, "b1"));
    let s = t::connect(
        p.tls_addr.unwrap(),
        "a.test",
        t::verifying_config(&ca.pem, &[]),
    )
    .await
    .unwrap();
    let (_, headers, _) = t::get_over(s, "a.test", "/").await;
    assert!(headers.get("strict-transport-security").is_none());
    p.shutdown().await;
}

/// An HTTPS backend that requires a client certificate from `ca` and answers with
/// the SNI name it saw and the client certificate's name.
async fn mtls_backend(ca: &Ca, names: &[&str], require_client: bool) -> SocketAddr {
    use std::sync::Arc;
    let (cert, key) = ca.leaf(names);
    let chain: Vec<_> = rustls_pki_types::pem::PemObject::pem_slice_iter(cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::pem::PemObject::pem_slice_iter(ca.pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            tokio::spawn(async move {
                let Ok(s) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, conn) = s.get_ref();
                let sni = conn.server_name().unwrap_or("-").to_string();
                let client = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| t::describe(c).names.join(","))
                    .unwrap_or_else(|| "-".into());
                let body = format!("sni={sni} client={client}");
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_tls_per_backend_with_sni_override_client_certificate_and_no_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let ca_file = ca.write(dir.path());
    let client = t::write_pair(dir.path(), "client", &ca.leaf(&["proxy.client"]));
    let mtls = mtls_backend(&ca, &["backend.internal"], true).await;

    // SNI override + extra CA + client certificate: verified, and the backend sees
    // both the name and the client.
    let yaml = format!(
        "{}backends:\n  - url: \"https://127.0.0.1:{}\"\n    tls:\n      ca_file: \"{}\"\n      server_name: backend.internal\n      cert: \"{}\"\n      key: \"{}\"\n",
        server_yaml(),
        mtls.port(),
        ca_file.display(),
        client.0.display(),
        client.1.display()
    );
    let p = proxy(&yaml).await;
    let r = get(&url(p.proxy_addr, "/")).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "sni=backend.internal client=proxy.client")
    );
    p.shutdown().await;

    // Without the client certificate the backend refuses the handshake: 502.
    let yaml = format!(
        "{}backends:\n  - url: \"https://127.0.0.1:{}\"\n    tls:\n      ca_file: \"{}\"\n      server_name: backend.internal\nretries:\n  attempts: 0\n",
        server_yaml(),
        mtls.port(),
        ca_file.display()
    );
    let p = proxy(&yaml).await;
    assert_eq!(get(&url(p.proxy_addr, "/")).await.status, 502);
    p.shutdown().await;

    // A self-signed lab backend: refused when verified, served with verify: false.
    let lab_ca = Ca::new("lab");
    let lab = mtls_backend(&lab_ca, &["lab.local"], false).await;
    let yaml = format!(
        "{}backends:\n  - url: \"https://127.0.0.1:{}\"\nretries:\n  attempts: 0\n",
        server_yaml(),
        lab.port()
    );
    let p = proxy(&yaml).await;
    assert_eq!(get(&url(p.proxy_addr, "/")).await.status, 502);
    p.shutdown().await;
    let yaml = format!(
        "{}backends:\n  - url: \"https://127.0.0.1:{}\"\n    tls:\n      verify: false\n",
        server_yaml(),
        lab.port()
    );
    let p = proxy(&yaml).await;
    let r = get(&url(p.proxy_addr, "/")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    p.shutdown().await;
}

#[tokio::test]
async fn the_admin_listener_is_served_over_tls_with_the_same_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let pair = t::write_pair(dir.path(), "a", &ca.leaf(&["admin.test", "127.0.0.1"]));
    let yaml = format!(
        "{}admin:\n  tls: true\n{}",
        server_yaml(),
        tls_yaml(&[(&pair.0, &pair.1)], "")
    );
    let p = proxy(&yaml).await;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let s = t::connect(
            p.admin_addr,
            "admin.test",
            t::verifying_config(&ca.pem, &[alpn]),
        )
        .await
        .unwrap();
        let (status, _, body) = t::get_over(s, "admin.test", "/admin/tls").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["admin_tls"], true);
        assert_eq!(v["certificates"][0]["names"][0], "admin.test");
    }
    // Plain HTTP to the admin port gets no answer.
    let mut s = TcpStream::connect(p.admin_addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(!rest.starts_with(b"HTTP/1.1 200"));
    p.shutdown().await;
}

#[tokio::test]
async fn sighup_and_config_reloads_change_certificates_in_a_running_process() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let a = t::write_pair(dir.path(), "a", &ca.leaf(&["a.test"]));
    let b = t::write_pair(dir.path(), "b", &ca.leaf(&["b.test"]));
    let config = dir.path().join("config.yaml");
    // Files are polled only hourly here: only SIGHUP can pick the change up.
    let base = "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n";
    let tls = |pairs: &[&(std::path::PathBuf, std::path::PathBuf)]| {
        let mut y = String::from("tls:\n  port: 0\n  watch_interval: 1h\n  certificates:\n");
        for (c, k) in pairs {
            y.push_str(&format!(
                "    - cert: \"{}\"\n      key: \"{}\"\n",
                c.display(),
                k.display()
            ));
        }
        y
    };
    std::fs::write(&config, format!("{base}{}", tls(&[&a]))).unwrap();
    let mut proc = Proc::spawn(
        &["--config", config.to_str().unwrap(), "--log-format", "json"],
        &[],
    );
    // The reader thread hands the "listening" line over before it logs it: poll.
    let mut line = String::new();
    wait_until(Duration::from_secs(10), "the listening line", || {
        let found = proc
            .logs()
            .lines()
            .find(|l| l.contains("\"listening\""))
            .map(str::to_string);
        if let Some(l) = &found {
            line = l.clone();
        }
        std::future::ready(found.is_some())
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let https: SocketAddr = v["https"].as_str().unwrap().parse().unwrap();
    let serial0 = t::cert_for(https, "a.test").await.unwrap().serial;
    let fresh = ca.leaf(&["a.test"]);
    t::replace_atomically(&a.0, &fresh.0);
    t::replace_atomically(&a.1, &fresh.1);
    proc.signal("HUP");
    wait_until(Duration::from_secs(10), "SIGHUP reload", || async {
        t::cert_for(https, "a.test").await.unwrap().serial != serial0
    })
    .await;
    // A config change adds a certificate for b.test (the file source is watched).
    std::fs::write(&config, format!("{base}{}", tls(&[&a, &b]))).unwrap();
    wait_until(
        Duration::from_secs(15),
        "b.test from the reloaded config",
        || async { t::cert_for(https, "b.test").await.unwrap().names == ["b.test"] },
    )
    .await;
    proc.signal("TERM");
    assert_eq!(proc.wait_exit(Duration::from_secs(20)), Some(0));
}

#[tokio::test]
async fn websockets_pass_through_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let pair = t::write_pair(dir.path(), "a", &ca.leaf(&["a.test"]));
    let backend = demo("b1").await;
    let yaml = format!(
        "{}{}{}",
        server_yaml(),
        backends_yaml(&[(&backend, 1)]),
        tls_yaml(&[(&pair.0, &pair.1)], "")
    );
    let p = proxy(&yaml).await;
    // wss:// is HTTP/1.1 over TLS (ALPN http/1.1), then the upgrade.
    let s = t::connect(
        p.tls_addr.unwrap(),
        "a.test",
        t::verifying_config(&ca.pem, &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://a.test/ws", s)
        .await
        .expect("websocket handshake over TLS");
    assert_eq!(resp.status(), 101);
    for msg in ["hello", "over tls"] {
        ws.send(Message::text(msg)).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), msg);
    }
    ws.close(None).await.unwrap();
    p.shutdown().await;
}

/// HTTP/2 over TLS gets the same idle rule as h2c (issue #22): a connection that
/// only answers PINGs, with no stream open, is closed after `header_read_timeout`.
#[tokio::test]
async fn an_idle_h2_connection_over_tls_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let leaf = t::write_pair(dir.path(), "leaf", &ca.leaf(&["api.example.com"]));
    let backend = demo("b1").await;
    let yaml = format!(
        "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n  header_read_timeout: 2s\n{}{}",
        backends_yaml(&[(&backend, 1)]),
        tls_yaml(&[(&leaf.0, &leaf.1)], "")
    );
    let p = proxy(&yaml).await;
    let mut s = t::connect(
        p.tls_addr.unwrap(),
        "api.example.com",
        t::verifying_config(&ca.pem, &[b"h2"]),
    )
    .await
    .unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(25), async {
        let mut h = [0u8; 9];
        loop {
            if s.read_exact(&mut h).await.is_err() {
                return;
            }
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return;
            }
            let reply: Vec<u8> = match (h[3], h[4] & 1) {
                (0x4, 0) => b"\x00\x00\x00\x04\x01\x00\x00\x00\x00".to_vec(),
                (0x6, 0) => [&b"\x00\x00\x08\x06\x01\x00\x00\x00\x00"[..], &payload].concat(),
                _ => continue,
            };
            if s.write_all(&reply).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle h2 over TLS still open after 25 s");
    p.shutdown().await;
}
