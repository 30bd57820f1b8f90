//! ACME against a real ACME server: Pebble (Let's Encrypt's test CA), with
//! `pebble-challtestsrv` as its DNS (every name resolves to 127.0.0.1), started on
//! loopback ports; its validation ports point at a round-robin TCP forwarder in
//! front of the replicas, as DNS with several A records would.
//!
//! - Three replicas sharing one `redis-server`, HTTP-01 (with the HTTPS redirect on,
//!   which challenge paths are exempt from): exactly one order, challenges answered
//!   by several replicas, all three serve the certificate; a short-lived certificate
//!   is then renewed once (one more order, every replica serves the new one).
//! - One replica on the embedded store, TLS-ALPN-01: obtains and persists the
//!   certificate, and after a restart serves it again without a new order.
//!
//! Skipped (with a message) where `pebble` is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::tls::{self as t, Ca};
use common::*;
use parking_lot::Mutex;
use switchyard::server::Running;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A TCP forwarder that hands each connection to the next target in turn, and
/// records where each went.
struct Forwarder {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    used: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Forwarder {
    async fn start() -> Forwarder {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let targets: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let used: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let (tg, us) = (targets.clone(), used.clone());
        tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                // Until the test has named the targets (all replicas up), hold the
                // connection as a slow network would.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while tg.lock().is_empty() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let target = {
                    let tg = tg.lock();
                    if tg.is_empty() {
                        continue;
                    }
                    let t = tg[next % tg.len()];
                    next += 1;
                    t
                };
                us.lock().push(target);
                tokio::spawn(async move {
                    if let Ok(mut s) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                    }
                });
            }
        });
        Forwarder {
            addr,
            targets,
            used,
        }
    }
}

/// Pebble and its DNS, killed on drop; Pebble's log is kept.
struct Pebble {
    procs: Vec<Child>,
    directory: String,
    ca_file: std::path::PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port`, issuing certificates valid for `validity_s`.
    async fn start(http_port: u16, tls_port: u16, validity_s: u64) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("pebble listener CA");
        let ca_file = ca.write(dir.path());
        let (cert, key) =
            t::write_pair(dir.path(), "pebble", &ca.leaf(&["127.0.0.1", "localhost"]));
        let dns_port = t::free_port();
        let acme_port = t::free_port();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": "",
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_s,
        }});
        let cfg = dir.path().join("pebble.json");
        std::fs::write(&cfg, config.to_string()).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{}", t::free_port()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv");
        let mut pebble = Command::new("pebble")
            .arg("-config")
            .arg(&cfg)
            .args([
                "-dnsserver",
                &format!("127.0.0.1:{dns_port}"),
                "-strict=false",
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pebble");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        for out in [
            Box::new(pebble.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(pebble.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    log.lock().push(l);
                }
            });
        }
        let p = Pebble {
            procs: vec![dns, pebble],
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            ca_file,
            log,
            _dir: dir,
        };
        let addr: SocketAddr = format!("127.0.0.1:{acme_port}").parse().unwrap();
        wait_until(Duration::from_secs(20), "pebble listening", || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        wait_until(
            Duration::from_secs(20),
            "challtestsrv listening",
            || async move {
                std::net::UdpSocket::bind("127.0.0.1:0").is_ok_and(|s| {
                    // Any answer to a query means the DNS server is up.
                    let q = [
                        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
                    ];
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    s.send_to(&q, ("127.0.0.1", dns_port)).is_ok()
                        && s.recv(&mut [0u8; 512]).is_ok()
                })
            },
        )
        .await;
        p
    }

    fn issued(&self) -> usize {
        self.log
            .lock()
            .iter()
            .filter(|l| l.contains("Issued certificate serial"))
            .count()
    }
}

/// The proxy's logs, shown when a test fails.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("switchyard=debug")
        .with_test_writer()
        .try_init();
}

fn acme_yaml(p: &Pebble, domains: &[&str], challenge: &str, extra: &str) -> String {
    format!(
        "tls:\n  port: 0\n  acme:\n    directory_url: \"{}\"\n    email: ops@example.com\n    domains: [{}]\n    challenge: {challenge}\n    ca_file: \"{}\"\n    check_interval: 200ms\n    retry_min: 1s\n    retry_max: 2s\n{extra}",
        p.directory,
        domains.join(", "),
        p.ca_file.display()
    )
}

fn acme_of(r: &Running) -> serde_json::Value {
    serde_json::to_value(r.tls.as_ref().unwrap().view().acme.unwrap()).unwrap()
}

/// Waits until `r` serves a Pebble certificate for `name` (other than `not`); on a
/// timeout the panic shows the replica's ACME state and Pebble's log.
async fn wait_for_cert(r: &Running, name: &str, not: Option<&str>, pebble: &Pebble) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = serial_on(r, name).await
            && Some(s.serial.as_str()) != not
        {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "no ACME certificate for {name}: {}\npebble: {:#?}",
                acme_of(r),
                pebble.log.lock()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn serial_on(r: &Running, name: &str) -> Option<t::Seen> {
    let s = t::cert_for(r.tls_addr.unwrap(), name).await.ok()?;
    s.issuer.contains("Pebble").then_some(s)
}

#[tokio::test]
async fn three_replicas_share_one_order_answer_challenges_anywhere_and_renew_once() {
    if !have("pebble") || !have("redis-server") {
        eprintln!("skipped: needs pebble and redis-server (apt-get install pebble redis-server)");
        return;
    }
    logs();
    let redis = RedisServer::start();
    let http = Forwarder::start().await;
    // 30 s certificates: renewed with a third of their life left (after ~20 s).
    let pebble = Pebble::start(http.addr.port(), t::free_port(), 30).await;
    let backend = demo("b1").await;
    let domains = ["a.test", "b.test", "c.test"];
    let mut replicas = Vec::new();
    for i in 0..3 {
        let yaml = format!(
            "{}{}cluster:\n  redis_url: \"{}\"\n  name: acme\n  replica_id: r{i}\n{}",
            server_yaml(),
            backends_yaml(&[(&backend, 1)]),
            redis.url(),
            acme_yaml(&pebble, &domains, "http-01", "  redirect_http: true\n")
        );
        replicas.push(proxy(&yaml).await);
    }
    *http.targets.lock() = replicas.iter().map(|r| r.proxy_addr).collect();

    // Every replica serves the issued certificate.
    let mut first = None;
    for r in &replicas {
        wait_for_cert(r, "b.test", None, &pebble).await;
        let seen = serial_on(r, "b.test").await.unwrap();
        let mut names = seen.names.clone();
        names.sort();
        assert_eq!(names, domains);
        first.get_or_insert(seen.serial.clone());
        assert_eq!(first.as_deref(), Some(seen.serial.as_str()));
    }
    let orders: u64 = replicas
        .iter()
        .map(|r| acme_of(r)["orders"].as_u64().unwrap())
        .sum();
    assert_eq!(orders, 1, "exactly one order for the cluster");
    wait_until(Duration::from_secs(10), "Pebble's log line", || async {
        pebble.issued() >= 1
    })
    .await;
    assert_eq!(
        pebble.issued(),
        1,
        "Pebble issued once: {:?}",
        pebble.log.lock()
    );
    // The three validations went round-robin: answered by several replicas, not
    // only the one that ordered.
    let answered: Vec<u64> = replicas
        .iter()
        .map(|r| acme_of(r)["challenges_answered"].as_u64().unwrap())
        .collect();
    assert!(
        answered.iter().filter(|&&n| n > 0).count() >= 2,
        "answers per replica: {answered:?}, connections: {:?}",
        http.used.lock()
    );
    // The redirect is on, yet the challenge path was exempt; other paths redirect.
    let r = get(&url(replicas[0].proxy_addr, "/x")).await;
    assert_eq!(r.status, 308);

    // Renewal: once, by one replica, served by all.
    let first = first.unwrap();
    for r in &replicas {
        wait_until(
            Duration::from_secs(60),
            "the renewed certificate",
            || async {
                serial_on(r, "a.test")
                    .await
                    .is_some_and(|s| s.serial != first)
            },
        )
        .await;
    }
    let orders: u64 = replicas
        .iter()
        .map(|r| acme_of(r)["orders"].as_u64().unwrap())
        .sum();
    assert_eq!(orders, 2, "one renewal order for the cluster");
    wait_until(Duration::from_secs(10), "Pebble's log line", || async {
        pebble.issued() >= 2
    })
    .await;
    assert_eq!(pebble.issued(), 2);
    let m = prometheus_text(replicas[1].admin_addr).await;
    assert!(
        m.contains("switchyard_tls_certificate_expiry_seconds{name=\"a.test\",source=\"acme\"}"),
        "{m}"
    );
    for r in replicas {
        r.shutdown().await;
    }
}

#[tokio::test]
async fn one_replica_alone_obtains_persists_and_serves_after_a_restart_without_reordering() {
    if !have("pebble") {
        eprintln!("skipped: needs pebble (apt-get install pebble)");
        return;
    }
    logs();
    let tls = Forwarder::start().await;
    let pebble = Pebble::start(t::free_port(), tls.addr.port(), 3600).await;
    let storage = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}{}",
        server_yaml(),
        acme_yaml(
            &pebble,
            &["alone.test"],
            "tls-alpn-01",
            &format!("    storage_dir: \"{}\"\n", storage.path().display())
        )
    );
    let r = proxy(&yaml).await;
    *tls.targets.lock() = vec![r.tls_addr.unwrap()];
    wait_for_cert(&r, "alone.test", None, &pebble).await;
    let serial = serial_on(&r, "alone.test").await.unwrap().serial;
    assert_eq!(acme_of(&r)["orders"], 1);
    assert!(acme_of(&r)["challenges_answered"].as_u64().unwrap() >= 1);
    assert!(has_files(storage.path()));
    r.shutdown().await;

    // Restarted on a fresh embedded store: the certificate comes from disk and is
    // served from the first handshake; no new order.
    let r = proxy(&yaml).await;
    let seen = serial_on(&r, "alone.test").await.expect("served at once");
    assert_eq!(seen.serial, serial);
    tokio::time::sleep(Duration::from_millis(1000)).await; // five check intervals
    assert_eq!(acme_of(&r)["orders"], 0);
    assert_eq!(acme_of(&r)["state"], "valid");
    assert_eq!(pebble.issued(), 1);
    r.shutdown().await;
}

fn has_files(dir: &Path) -> bool {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.iter().any(|n| n.starts_with("cert-")) && names.iter().any(|n| n.starts_with("account-"))
}
