//! Backends from DNS against a real `dnsmasq` started by the test on a free
//! loopback port, answering from a hosts file the test edits (SIGHUP re-reads it,
//! TTL 1 s): records added and removed become members and drain; a config reload
//! to another name follows it; the server stopped keeps the last set and raises
//! the failure metric. Demo upstreams listen on 127.0.0.2, .3, .4 … on one port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;
use switchyard_demo::DemoServer;

/// Generous: the machine is shared and may be loaded.
const LIMIT: Duration = Duration::from_secs(30);

/// `dnsmasq` on 127.0.0.1:<port>, answering from `hosts`; killed on drop.
struct Dnsmasq {
    child: Child,
    port: u16,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

/// A port free for both UDP and TCP on 127.0.0.1 a moment ago.
fn free_udp_tcp_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

impl Dnsmasq {
    fn start(hosts: &str) -> Dnsmasq {
        Self::start_with(hosts, &[])
    }

    /// With more options (e.g. `--srv-host=…`).
    fn start_with(hosts: &str, extra: &[String]) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        // dnsmasq drops root for `nobody`, who must read the hosts file on SIGHUP.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, hosts).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let port = free_udp_tcp_port();
        let child = Command::new(dnsmasq_bin())
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local-ttl=1",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", file.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (apt-get install dnsmasq)");
        Dnsmasq {
            child,
            port,
            hosts: file,
            _dir: dir,
        }
    }

    /// Replaces the records and has dnsmasq read them again.
    fn set_hosts(&self, hosts: &str) {
        write_atomic(&self.hosts, hosts);
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "SIGHUP to dnsmasq");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn dnsmasq_bin() -> &'static str {
    if Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq"
    }
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Demo upstreams on 127.0.0.<i> for each i, all on one port (as a name's
/// addresses would be), named `b<i>`.
async fn upstreams(last_octets: &[u8]) -> (u16, Vec<DemoServer>) {
    'again: for _ in 0..50 {
        let port = TcpListener::bind("127.0.0.2:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut out = Vec::new();
        for i in last_octets {
            let addr: SocketAddr = format!("127.0.0.{i}:{port}").parse().unwrap();
            match DemoServer::start(addr, &format!("b{i}")).await {
                Ok(d) => out.push(d),
                Err(_) => continue 'again,
            }
        }
        return (port, out);
    }
    panic!("no port free on every upstream address");
}

fn hosts(name: &str, last_octets: &[u8]) -> String {
    last_octets
        .iter()
        .map(|i| format!("127.0.0.{i} {name}\n"))
        .collect()
}

/// The JSON array an admin endpoint answers.
async fn admin_list(admin: SocketAddr, path: &str) -> Vec<serde_json::Value> {
    let v = get(&url(admin, path)).await.json();
    v.as_array().cloned().unwrap_or_default()
}

/// URLs `/admin/backends` lists for `service` that pass `keep`.
async fn backend_urls(
    admin: SocketAddr,
    service: &str,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> BTreeSet<String> {
    admin_list(admin, "/admin/backends")
        .await
        .iter()
        .filter(|b| b["service"] == service && keep(b))
        .map(|b| b["url"].as_str().unwrap().to_string())
        .collect()
}

/// The running (not draining) members of `service` that came from DNS.
async fn dns_members(admin: SocketAddr, service: &str) -> BTreeSet<String> {
    backend_urls(admin, service, |b| {
        b["source"] == "dns" && b["draining"] == false
    })
    .await
}

/// Every URL `/admin/backends` lists for `service`, draining ones too.
async fn all_urls(admin: SocketAddr, service: &str) -> BTreeSet<String> {
    backend_urls(admin, service, |_| true).await
}

fn urls(port: u16, last_octets: &[u8]) -> BTreeSet<String> {
    last_octets
        .iter()
        .map(|i| format!("http://127.0.0.{i}:{port}"))
        .collect()
}

/// `service`'s `discovery` in `/admin/services`.
async fn discovery(admin: SocketAddr, service: &str) -> serde_json::Value {
    admin_list(admin, "/admin/services")
        .await
        .into_iter()
        .find(|s| s["name"] == service)
        .map(|s| s["discovery"].clone())
        .unwrap_or_default()
}

/// Who answers `n` requests to the proxy.
async fn answered_by(proxy: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for _ in 0..n {
        let r = get(&url(proxy, "/")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        out.insert(r.backend());
    }
    out
}

async fn failures(admin: SocketAddr, service: &str) -> u64 {
    let text = prometheus_text(admin).await;
    let prefix = format!("switchyard_dns_resolution_failures_total{{service=\"{service}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn records_added_and_removed_become_members_and_drain_and_a_dead_server_keeps_them() {
    let (port, _ups) = upstreams(&[2, 3, 4, 5]).await;
    let mut dns = Dnsmasq::start(&hosts("api.test", &[2, 3]));
    let p = proxy(&format!(
        "{}services:
  api:
    discover:
      dns: 'api.test:{port}'
routes:
  - match: {{path_prefix: /}}
    service: api
dns:
  nameservers: ['127.0.0.1:{}']
  timeout: 500ms
",
        server_yaml(),
        dns.port
    ))
    .await;
    let admin = p.admin_addr;

    wait_until(LIMIT, "the two records as members", || async {
        dns_members(admin, "api").await == urls(port, &[2, 3])
    })
    .await;
    wait_until(LIMIT, "both members answering", || async {
        answered_by(p.proxy_addr, 20).await == ["b2", "b3"].map(String::from).into()
    })
    .await;
    let d = discovery(admin, "api").await;
    assert_eq!(d["dns"], format!("api.test:{port}"));
    assert_eq!(d["members"], 2);
    assert!(d["last_resolved_ms"].as_u64().unwrap() > 0, "{d}");
    assert!(d.get("last_error").is_none(), "{d}");

    // One record added, one removed: the set follows within the TTL bound, and the
    // removed address drains (then leaves, as it has nothing in flight).
    dns.set_hosts(&hosts("api.test", &[3, 4]));
    wait_until(LIMIT, "127.0.0.4 in and 127.0.0.2 out", || async {
        dns_members(admin, "api").await == urls(port, &[3, 4])
    })
    .await;
    wait_until(LIMIT, "127.0.0.2 drained and gone", || async {
        all_urls(admin, "api").await == urls(port, &[3, 4])
    })
    .await;
    wait_until(LIMIT, "the new member answering", || async {
        answered_by(p.proxy_addr, 20).await == ["b3", "b4"].map(String::from).into()
    })
    .await;

    // A reload naming another name follows it (the task restarts).
    dns.set_hosts(&format!(
        "{}{}",
        hosts("api.test", &[3, 4]),
        hosts("other.test", &[5])
    ));
    let yaml = p.app.config();
    let mut next = (*yaml).clone();
    next.services.get_mut("api").unwrap().discover = Some(switchyard::config::DiscoverConfig {
        dns: format!("other.test:{port}"),
        min_ttl: None,
        max_ttl: None,
    });
    p.app.apply_config(next, None);
    wait_until(LIMIT, "the reloaded name's member", || async {
        dns_members(admin, "api").await == urls(port, &[5])
    })
    .await;

    // The server stopped: failures counted and shown, the last set stays and serves.
    dns.stop();
    wait_until(LIMIT, "a failed resolution counted", || async {
        failures(admin, "api").await >= 1
    })
    .await;
    wait_until(LIMIT, "the failure shown in /admin/services", || async {
        discovery(admin, "api").await["last_error"].is_string()
    })
    .await;
    assert_eq!(dns_members(admin, "api").await, urls(port, &[5]));
    assert_eq!(
        answered_by(p.proxy_addr, 5).await,
        ["b5"].map(String::from).into()
    );
    let text = prometheus_text(admin).await;
    assert!(
        text.contains("switchyard_dns_members{service=\"api\"} 1"),
        "{text}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn top_level_discover_feeds_the_default_service_beside_fixed_backends() {
    let (port, _ups) = upstreams(&[6, 7]).await;
    let fixed = demo("fixed").await;
    let dns = Dnsmasq::start(&hosts("web.test", &[6, 7]));
    let p = proxy(&format!(
        "{}{}discover:
  dns: 'web.test:{port}'
  max_ttl: 2s
dns:
  nameservers: ['127.0.0.1:{}']
",
        server_yaml(),
        backends_yaml(&[(&fixed, 1)]),
        dns.port
    ))
    .await;
    wait_until(LIMIT, "both records as members of default", || async {
        dns_members(p.admin_addr, "default").await == urls(port, &[6, 7])
    })
    .await;
    wait_until(LIMIT, "fixed and discovered members answering", || async {
        answered_by(p.proxy_addr, 30).await == ["b6", "b7", "fixed"].map(String::from).into()
    })
    .await;
    p.shutdown().await;
}

#[tokio::test]
async fn srv_targets_become_members_on_their_records_ports() {
    let (port_a, _a) = upstreams(&[8]).await;
    let (port_b, _b) = upstreams(&[9]).await;
    let dns = Dnsmasq::start_with(
        &format!("{}{}", hosts("one.test", &[8]), hosts("two.test", &[9])),
        &[
            format!("--srv-host=_http._tcp.api.test,one.test,{port_a}"),
            format!("--srv-host=_http._tcp.api.test,two.test,{port_b}"),
        ],
    );
    let p = proxy(&format!(
        "{}services:
  api:
    discover:
      dns: '_http._tcp.api.test'
routes:
  - match: {{path_prefix: /}}
    service: api
dns:
  nameservers: ['127.0.0.1:{}']
",
        server_yaml(),
        dns.port
    ))
    .await;
    let want: BTreeSet<String> = [
        format!("http://127.0.0.8:{port_a}"),
        format!("http://127.0.0.9:{port_b}"),
    ]
    .into();
    wait_until(LIMIT, "both SRV targets as members", || async {
        dns_members(p.admin_addr, "api").await == want
    })
    .await;
    wait_until(LIMIT, "both targets answering", || async {
        answered_by(p.proxy_addr, 20).await == ["b8", "b9"].map(String::from).into()
    })
    .await;
    p.shutdown().await;
}

#[tokio::test]
async fn a_nameserver_that_never_answers_costs_bounded_time_and_is_reported() {
    // Takes queries over UDP and TCP and never answers.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port)).await;
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        if let Ok(l) = tcp {
            while let Ok((s, _)) = l.accept().await {
                open.push(s);
            }
        }
    });
    let p = proxy(&format!(
        "{}services:
  api:
    discover:
      dns: 'api.test:80'
routes:
  - match: {{path_prefix: /}}
    service: api
dns:
  nameservers: ['127.0.0.1:{port}']
  timeout: 200ms
",
        server_yaml(),
    ))
    .await;
    // Failing again and again: each resolution ends (the task is not stuck).
    wait_until(LIMIT, "two failed resolutions counted", || async {
        failures(p.admin_addr, "api").await >= 2
    })
    .await;
    let d = discovery(p.admin_addr, "api").await;
    eprintln!("discovery with a silent nameserver: {d}");
    assert_eq!(d["members"], 0, "{d}");
    assert!(d["last_error"].is_string(), "{d}");
    // No members: the routed request is answered (an error), not left hanging.
    let r = get(&url(p.proxy_addr, "/")).await;
    assert!(r.status.is_server_error(), "{}", r.status);
    drop(udp);
    p.shutdown().await;
}
