//! Three `switchyard` processes sharing a real `redis-server`: membership, circuits,
//! global rate limits, Redis crashes and replica crashes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use switchyard_demo::DemoServer;
use tokio::time::Instant;

struct Cluster {
    redis: RedisServer,
    replicas: Vec<Proc>,
}

fn cluster_yaml(redis: &RedisServer, extra: &str, backends: &[(&DemoServer, u32)]) -> String {
    format!(
        "{}cluster:\n  redis_url: \"{}\"\n  name: test\n  heartbeat_interval: 200ms\n  heartbeat_ttl: 1s\n  resync_interval: 1s\n  timeout: 300ms\n{extra}{}",
        server_yaml(),
        redis.url(),
        backends_yaml(backends)
    )
}

impl Cluster {
    fn start(extra: &str, backends: &[(&DemoServer, u32)]) -> Cluster {
        let redis = RedisServer::start();
        let yaml = cluster_yaml(&redis, extra, backends);
        let replicas = (0..3).map(|_| Proc::start(&yaml, &[], &[])).collect();
        Cluster { redis, replicas }
    }

    fn admins(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|p| p.admin).collect()
    }

    fn proxies(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|p| p.proxy).collect()
    }

    async fn wait_formed(&self) {
        for admin in self.admins() {
            wait_until(
                Duration::from_secs(10),
                "3 replicas listed and the store connected",
                || async move {
                    let v = get(&url(admin, "/admin/cluster")).await.json();
                    v["replicas"].as_array().map(|r| r.len()) == Some(3)
                        && v["store"]["connected"] == true
                },
            )
            .await;
        }
    }
}

async fn field(admin: SocketAddr, key: &str, name: &str) -> serde_json::Value {
    backend_view(admin, key)
        .await
        .map(|v| v[name].clone())
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_reach_every_replica_within_a_second() {
    let (a, b, d) = (demo("a").await, demo("b").await, demo("d").await);
    let c = Cluster::start("", &[(&a, 1), (&b, 1)]);
    c.wait_formed().await;
    let admins = c.admins();
    let proxies = c.proxies();

    // Add on replica A; B and C route to it within a second.
    let t = Instant::now();
    let r = post(
        &url(admins[0], "/admin/add"),
        &format!(r#"{{"url":"{}","weight":8}}"#, d.url()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for (admin, proxy) in admins.iter().zip(&proxies).skip(1) {
        let (admin, proxy) = (*admin, *proxy);
        let key = d.url();
        wait_until(
            Duration::from_secs(1).saturating_sub(t.elapsed()),
            "the new backend on another replica",
            || {
                let key = key.clone();
                async move { backend_view(admin, &key).await.is_some() }
            },
        )
        .await;
        let mut routed = false;
        for _ in 0..20 {
            if get(&url(proxy, "/")).await.backend() == "d" {
                routed = true;
                break;
            }
        }
        assert!(routed, "replica {proxy} routes to the backend added on A");
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );

    // A drain started on B drains on all.
    let r = post(
        &url(admins[1], "/admin/remove"),
        &format!(r#"{{"url":"{}"}}"#, a.url()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    for admin in &admins {
        let admin = *admin;
        let key = a.url();
        wait_until(Duration::from_secs(1), "drain everywhere", || {
            let key = key.clone();
            async move {
                backend_view(admin, &key)
                    .await
                    .is_none_or(|v| v["draining"] == true)
            }
        })
        .await;
    }
    for proxy in &proxies {
        for _ in 0..10 {
            assert_ne!(get(&url(*proxy, "/")).await.backend(), "a");
        }
    }

    // Conflicting changes at once on different replicas: every replica ends up with
    // the same outcome, the one Redis ordered last.
    let x = "http://127.0.0.1:9";
    let (u1, b1) = (
        url(admins[0], "/admin/add"),
        format!(r#"{{"url":"{x}","weight":3}}"#),
    );
    let (u2, b2) = (
        url(admins[2], "/admin/add"),
        format!(r#"{{"url":"{x}","weight":5}}"#),
    );
    let (r1, r2) = tokio::join!(post(&u1, &b1), post(&u2, &b2));
    assert_eq!((r1.status, r2.status), (StatusCode::OK, StatusCode::OK));
    let mut weights = Vec::new();
    for admin in &admins {
        let admin = *admin;
        wait_until(Duration::from_secs(2), "x everywhere", || async move {
            backend_view(admin, "http://127.0.0.1:9").await.is_some()
        })
        .await;
    }
    // Give every replica the chance to have applied the later version, then compare.
    for admin in &admins {
        let admin = *admin;
        wait_until(Duration::from_secs(2), "same overlay version", || {
            let first = admins[0];
            async move {
                let a = get(&url(first, "/admin/backends")).await.body;
                let b = get(&url(admin, "/admin/backends")).await.body;
                let w = |s: &str| {
                    let v: serde_json::Value = serde_json::from_str(s).unwrap();
                    v.as_array()
                        .unwrap()
                        .iter()
                        .find(|b| b["url"] == "http://127.0.0.1:9")
                        .map(|b| b["weight"].clone())
                };
                w(&a) == w(&b)
            }
        })
        .await;
        weights.push(field(admin, x, "weight").await);
    }
    assert!(weights.windows(2).all(|w| w[0] == w[1]), "{weights:?}");

    // The membership survives a replica restart (it comes from the store).
    let mut c = c;
    let yaml = cluster_yaml(&c.redis, "", &[(&a, 1), (&b, 1)]);
    c.replicas[2].signal("KILL");
    c.replicas[2] = Proc::start(&yaml, &[], &[]);
    let admin = c.replicas[2].admin;
    assert!(
        backend_view(admin, &d.url()).await.is_some(),
        "restarted replica has the admin-added backend"
    );
    assert!(backend_view(admin, &a.url()).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_opened_on_one_replica_opens_everywhere_and_one_replica_probes() {
    let (good, bad) = (demo("good").await, demo("bad").await);
    let c = Cluster::start(
        "circuit_breaker:\n  failure_threshold: 3\n  open_duration: 2s\n",
        &[(&good, 1), (&bad, 1)],
    );
    c.wait_formed().await;
    let admins = c.admins();
    let proxies = c.proxies();
    bad.control.set_fail_rate(1.0);
    // Failures seen only through replica A.
    for _ in 0..6 {
        get(&url(proxies[0], "/")).await;
    }
    assert_eq!(field(admins[0], &bad.url(), "circuit").await, "open");
    let t = Instant::now();
    for admin in &admins[1..] {
        let admin = *admin;
        let key = bad.url();
        wait_until(Duration::from_secs(1), "open on the other replicas", || {
            let key = key.clone();
            async move { field(admin, &key, "circuit").await == "open" }
        })
        .await;
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    let before = bad.control.requests.load(Relaxed);
    for proxy in &proxies[1..] {
        for _ in 0..10 {
            assert_eq!(get(&url(*proxy, "/")).await.backend(), "good");
        }
    }
    assert_eq!(
        bad.control.requests.load(Relaxed),
        before,
        "B and C sent nothing to it"
    );

    // Healed; after open_duration exactly one replica probes, and its success
    // closes the circuit everywhere.
    bad.control.set_fail_rate(0.0);
    let stop = Arc::new(AtomicBool::new(false));
    let mut drivers = Vec::new();
    for proxy in proxies.clone() {
        let stop = stop.clone();
        drivers.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Relaxed) {
                let _ = send(&c, Method::GET, &url(proxy, "/"), None).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for admin in &admins {
        let admin = *admin;
        let key = bad.url();
        wait_until(Duration::from_secs(10), "closed everywhere", || {
            let key = key.clone();
            async move { field(admin, &key, "circuit").await == "closed" }
        })
        .await;
    }
    stop.store(true, Relaxed);
    for d in drivers {
        d.await.unwrap();
    }
    let mut half_opens = 0;
    for admin in &admins {
        let prom = prometheus_text(*admin).await;
        half_opens += metric(
            &prom,
            "switchyard_circuit_transitions_total{to=\"half-open\"}",
        );
    }
    assert_eq!(
        half_opens, 1,
        "exactly one replica went half-open and probed"
    );
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        })
        .unwrap_or(0)
}

/// `n` requests to `path` at once, spread round-robin over `proxies`: how many
/// were admitted (anything but 200/429 fails the test).
async fn burst(proxies: &[SocketAddr], path: &str, n: usize) -> usize {
    let mut tasks = Vec::new();
    for i in 0..n {
        let u = url(proxies[i % proxies.len()], path);
        tasks.push(tokio::spawn(async move { get(&u).await.status }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            s => panic!("unexpected {s}"),
        }
    }
    ok
}

/// Two limits, 10/s (burst 10) and 1000/s (burst 200 under `/fast`), global keys.
const LIMITS: &str = "rate_limit:\n  requests_per_second: 10\n  burst: 10\n  key: global\n  rules:\n    - path_prefix: /fast\n      requests_per_second: 1000\n      burst: 200\n";

async fn bursts_are_admitted_in_full(replicas: usize) {
    let a = demo("a").await;
    let redis = RedisServer::start();
    // A cold key waits for one store round trip; on a loaded machine that can take
    // longer than the suite's usual 300 ms store timeout, after which the fallback
    // (each replica its share) would decide instead. Counting is what is tested.
    let yaml = cluster_yaml(&redis, LIMITS, &[(&a, 1)])
        .replace("timeout: 300ms", "timeout: 10s")
        .replace("heartbeat_ttl: 1s", "heartbeat_ttl: 5s");
    let procs: Vec<Proc> = (0..replicas)
        .map(|_| Proc::start(&yaml, &[], &[]))
        .collect();
    let proxies: Vec<SocketAddr> = procs.iter().map(|p| p.proxy).collect();
    for p in &procs {
        let admin = p.admin;
        wait_until(
            Duration::from_secs(10),
            "the replicas listed",
            || async move {
                let v = get(&url(admin, "/admin/cluster")).await.json();
                v["replicas"].as_array().map(|r| r.len()) == Some(replicas)
                    && v["store"]["connected"] == true
            },
        )
        .await;
    }
    // The first requests ever (cold keys), then again after 2 s of quiet: every
    // request of a burst up to `burst` is admitted, wherever it lands.
    for round in ["cold", "after 2 s idle"] {
        if round != "cold" {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        assert_eq!(
            burst(&proxies, "/", 10).await,
            10,
            "10/s, {round}, {replicas} replicas"
        );
        assert_eq!(
            burst(&proxies, "/fast/x", 200).await,
            200,
            "1000/s, {round}, {replicas} replicas"
        );
    }
    // Over the limit at once: the bucket and what refilled meanwhile, and a burst
    // is not refused outright.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    let ok = burst(&proxies, "/", 40).await;
    let elapsed = t.elapsed().as_secs_f64();
    let bound = 10.0 + 10.0 * elapsed + 1.0;
    eprintln!("{replicas} replicas: {ok} of 40 admitted in {elapsed:.3}s (bucket 10, 10/s)");
    assert!(ok >= 10, "{ok} admitted of a full bucket of 10");
    assert!(
        ok as f64 <= bound,
        "{ok} admitted in {elapsed:.3}s (bound {bound:.1})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_after_idle_are_admitted_in_full_on_two_replicas() {
    bursts_are_admitted_in_full(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_after_idle_are_admitted_in_full_on_three_replicas() {
    bursts_are_admitted_in_full(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_at_three_times_the_limit_admits_the_limit() {
    let a = demo("a").await;
    let rate = 10.0;
    let c = Cluster::start(
        &format!("rate_limit:\n  requests_per_second: {rate}\n  burst: 10\n  key: global\n"),
        &[(&a, 1)],
    );
    c.wait_formed().await;
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(60);
    let mut tasks = Vec::new();
    // 3 × 10 rps, one client per replica, evenly paced.
    for proxy in c.proxies() {
        let (ok, limited) = (ok.clone(), limited.clone());
        tasks.push(tokio::spawn(async move {
            let cl = client();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while Instant::now() < end {
                tick.tick().await;
                match send(&cl, Method::GET, &url(proxy, "/"), None)
                    .await
                    .unwrap()
                    .status
                {
                    StatusCode::OK => ok.fetch_add(1, Relaxed),
                    StatusCode::TOO_MANY_REQUESTS => limited.fetch_add(1, Relaxed),
                    s => panic!("unexpected {s}"),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = ok.load(Relaxed) as f64;
    eprintln!(
        "minute: admitted {admitted}, refused {} in {elapsed:.1}s",
        limited.load(Relaxed)
    );
    let expected = 10.0 + rate * elapsed;
    assert!(
        (admitted - expected).abs() <= 0.05 * expected,
        "admitted {admitted} in {elapsed:.1}s; limit gives {expected:.0} (±5 %); {} refused",
        limited.load(Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crash_costs_no_errors_and_an_empty_redis_is_reseeded() {
    let (a, b, d) = (demo("a").await, demo("b").await, demo("d").await);
    let mut c = Cluster::start(
        "rate_limit:\n  requests_per_second: 1000\n  burst: 1000\n  key: global\n",
        &[(&a, 1), (&b, 1)],
    );
    c.wait_formed().await;
    let admins = c.admins();
    // A change made before the crash.
    let r = post(
        &url(admins[0], "/admin/add"),
        &format!(r#"{{"url":"{}"}}"#, d.url()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    for admin in &admins {
        let (admin, key) = (*admin, d.url());
        wait_until(Duration::from_secs(2), "d everywhere", || {
            let key = key.clone();
            async move { backend_view(admin, &key).await.is_some() }
        })
        .await;
    }
    // Load on all replicas throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for proxy in c.proxies() {
        let (stop, errors, served) = (stop.clone(), errors.clone(), served.clone());
        load.push(tokio::spawn(async move {
            let cl = client();
            while !stop.load(Relaxed) {
                match send(&cl, Method::GET, &url(proxy, "/"), None).await {
                    Ok(r)
                        if r.status == StatusCode::OK
                            || r.status == StatusCode::TOO_MANY_REQUESTS => {}
                    _ => {
                        errors.fetch_add(1, Relaxed);
                    }
                }
                served.fetch_add(1, Relaxed);
            }
        }));
    }
    c.redis.kill9();
    for admin in &admins {
        let admin = *admin;
        wait_until(
            Duration::from_secs(5),
            "store seen as down",
            || async move {
                get(&url(admin, "/admin/cluster")).await.json()["store"]["connected"] == false
            },
        )
        .await;
    }
    // While it is down, writes are refused, not lost silently.
    let r = post(
        &url(admins[1], "/admin/add"),
        r#"{"url":"http://127.0.0.1:8"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("change not stored"),
        "{}",
        r.body
    );
    let ready = get(&url(admins[1], "/readyz")).await.json();
    assert!(ready.to_string().contains("unreachable"), "{ready}");
    let during = served.load(Relaxed);
    wait_until(Duration::from_secs(5), "traffic continuing", || {
        let served = served.clone();
        async move { served.load(Relaxed) > during + 50 }
    })
    .await;

    // Restarted empty: the replicas put the membership back.
    c.redis.restart();
    wait_until(Duration::from_secs(10), "overlay re-seeded", || {
        let redis = &c.redis;
        async move { redis.cli(&["HLEN", "switchyard:{test}:overlay"]) == "1" }
    })
    .await;
    for admin in &admins {
        let admin = *admin;
        wait_until(Duration::from_secs(5), "store back", || async move {
            get(&url(admin, "/admin/cluster")).await.json()["store"]["connected"] == true
        })
        .await;
        assert!(
            backend_view(admin, &d.url()).await.is_some(),
            "the pre-crash change is still in force"
        );
        assert!(
            backend_view(admin, "http://127.0.0.1:8").await.is_none(),
            "the refused change was not applied"
        );
    }
    // And changes flow again.
    let r = post(
        &url(admins[2], "/admin/remove"),
        &format!(r#"{{"url":"{}"}}"#, d.url()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    for admin in &admins {
        let (admin, key) = (*admin, d.url());
        wait_until(Duration::from_secs(2), "removal everywhere", || {
            let key = key.clone();
            async move {
                backend_view(admin, &key)
                    .await
                    .is_none_or(|v| v["draining"] == true)
            }
        })
        .await;
    }
    stop.store(true, Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        errors.load(Relaxed),
        0,
        "of {} requests",
        served.load(Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_leaves_the_cluster_view_within_its_ttl() {
    let a = demo("a").await;
    let c = Cluster::start("", &[(&a, 1)]);
    c.wait_formed().await;
    let admin = c.replicas[0].admin;
    let victim_id = get(&url(c.replicas[2].admin, "/admin/cluster"))
        .await
        .json()["self_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.replicas[2].signal("KILL");
    let t = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "the dead replica to disappear",
        || {
            let victim_id = victim_id.clone();
            async move {
                let v = get(&url(admin, "/admin/cluster")).await.json();
                v["replicas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r["id"] != victim_id.as_str())
            }
        },
    )
    .await;
    // heartbeat_ttl is 1 s; allow one heartbeat interval for the next refresh.
    assert!(
        t.elapsed() <= Duration::from_millis(1200 + 50),
        "took {:?}",
        t.elapsed()
    );
    let v = get(&url(admin, "/admin/cluster")).await.json();
    assert_eq!(v["mode"], "clustered");
    assert_eq!(v["replicas"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_probes_health_and_every_replica_follows() {
    let (a, b) = (demo("a").await, demo("b").await);
    let c = Cluster::start(
        "health_check:\n  interval: 200ms\n  timeout: 100ms\n  unhealthy_threshold: 2\n  jitter: 0\n",
        &[(&a, 1), (&b, 1)],
    );
    c.wait_formed().await;
    let admins = c.admins();
    // Replicas with different ports run the same config: converged.
    let v = get(&url(admins[0], "/admin/cluster")).await.json();
    assert_eq!(v["converged"], true, "{v}");
    // Probe traffic: about one probe per interval for the whole cluster, not three.
    let before = b.control.health_checks.load(Relaxed);
    let t = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "two seconds of probing",
        || async move { t.elapsed() >= Duration::from_secs(2) },
    )
    .await;
    let probes = b.control.health_checks.load(Relaxed) - before;
    let per_interval = probes as f64 / (t.elapsed().as_secs_f64() / 0.2);
    assert!(
        per_interval < 1.6,
        "{probes} probes in {:?}: {per_interval:.2} per interval",
        t.elapsed()
    );
    // A failing /health is seen by every replica.
    b.control.set_fail_health(true);
    for admin in &admins {
        let (admin, key) = (*admin, b.url());
        wait_until(Duration::from_secs(3), "unhealthy everywhere", || {
            let key = key.clone();
            async move { field(admin, &key, "healthy").await == false }
        })
        .await;
    }
    for proxy in c.proxies() {
        for _ in 0..6 {
            assert_eq!(get(&url(proxy, "/")).await.backend(), "a");
        }
    }
    b.control.set_fail_health(false);
    for admin in &admins {
        let (admin, key) = (*admin, b.url());
        wait_until(Duration::from_secs(3), "healthy everywhere", || {
            let key = key.clone();
            async move { field(admin, &key, "healthy").await == true }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_with_traffic_gets_the_probe() {
    let (good, bad) = (demo("good").await, demo("bad").await);
    let c = Cluster::start(
        "circuit_breaker:\n  failure_threshold: 3\n  open_duration: 1s\n",
        &[(&good, 1), (&bad, 1)],
    );
    c.wait_formed().await;
    let (admins, proxies) = (c.admins(), c.proxies());
    bad.control.set_fail_rate(1.0);
    for _ in 0..6 {
        get(&url(proxies[0], "/")).await;
    }
    for admin in &admins {
        let (admin, key) = (*admin, bad.url());
        wait_until(Duration::from_secs(2), "open everywhere", || {
            let key = key.clone();
            async move { field(admin, &key, "circuit").await == "open" }
        })
        .await;
    }
    bad.control.set_fail_rate(0.0);
    // Only the third replica gets traffic: it must be the one that probes, soon
    // after the open time is up.
    let t = Instant::now();
    let (proxy, admin) = (proxies[2], admins[2]);
    wait_until(
        Duration::from_secs(5),
        "closed by a probe through the busy replica",
        || {
            let key = bad.url();
            async move {
                let _ = get(&url(proxy, "/")).await;
                field(admin, &key, "circuit").await == "closed"
            }
        },
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "probed after {:?}",
        t.elapsed()
    );
}

/// Cluster state is per service: one URL in two services has two circuits; the
/// one a replica opens for `api` opens for `api` everywhere, under a key scoped by
/// the service, while `default` keeps the plain keys it had before services
/// existed (an upgraded cluster finds its state where it left it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_and_overlay_are_kept_per_service_and_default_keeps_its_keys() {
    let (good, shared) = (demo("good").await, demo("shared").await);
    let extra = format!(
        "circuit_breaker:\n  failure_threshold: 3\n  open_duration: 30s\nservices:\n  api:\n    backends: [{{url: '{}'}}, {{url: '{}'}}]\nroutes:\n  - {{match: {{path_segment_prefix: /api}}, service: api}}\n",
        good.url(),
        shared.url()
    );
    let c = Cluster::start(&extra, &[(&good, 1), (&shared, 1)]);
    c.wait_formed().await;
    let (admins, proxies) = (c.admins(), c.proxies());
    shared.control.set_fail_rate(1.0);
    for _ in 0..8 {
        get(&url(proxies[0], "/api/x")).await;
    }
    let circuit = |admin: SocketAddr, service: &'static str| {
        let key = shared.url();
        async move {
            let v = get(&url(admin, "/admin/backends")).await.json();
            v.as_array()
                .unwrap()
                .iter()
                .find(|b| b["url"] == key.as_str() && b["service"] == service)
                .map(|b| b["circuit"].clone())
                .unwrap_or_default()
        }
    };
    for admin in &admins {
        let admin = *admin;
        wait_until(
            Duration::from_secs(5),
            "api's circuit open everywhere",
            || async move { circuit(admin, "api").await == "open" },
        )
        .await;
        assert_eq!(circuit(admin, "default").await, "closed");
    }
    let fields = c.redis.cli(&["HKEYS", "switchyard:{test}:records"]);
    assert!(
        fields.contains(&format!("circuit|api|{}", shared.url())),
        "{fields}"
    );
    // An admin change to `default` (no service named) is stored under the plain key.
    let r = post(
        &url(admins[1], "/admin/remove"),
        &format!(r#"{{"url":"{}"}}"#, shared.url()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let overlay = c.redis.cli(&["HKEYS", "switchyard:{test}:overlay"]);
    assert_eq!(overlay.trim(), shared.url(), "{overlay}");
    // `api` still has it (open circuit): `/api` goes to `good`, and so does `/`.
    for proxy in &proxies {
        assert_eq!(get(&url(*proxy, "/api/x")).await.backend(), "good");
    }
}
