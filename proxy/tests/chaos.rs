//! The chaos soak: Redis, three replicas following a git repository, three demo
//! upstreams and continuous GET load on every replica, while faults are injected one
//! after another. Every client request and every admin change is counted; the run
//! prints the table `docs/reliability.md` reports, and fails unless no idempotent
//! request failed outside the replica that was killed and no acknowledged admin
//! change was lost. Bounded: about two minutes (`SWITCHYARD_CHAOS_PHASE_SECS`
//! scales each phase; the default keeps the whole run under five minutes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use parking_lot::Mutex;
use switchyard_demo::DemoServer;

fn commit(dir: &Path, content: &str, msg: &str) -> String {
    std::fs::write(dir.join("config.yaml"), content).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", msg]);
    git(dir, &["rev-parse", "HEAD"])
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// (total, failed, first failure seen)
type Cell = (u64, u64, Option<String>);

/// Requests counted per phase and per replica.
#[derive(Default)]
struct Tally {
    /// (phase, replica) -> counts
    cells: Mutex<BTreeMap<(usize, usize), Cell>>,
}

impl Tally {
    fn add(&self, phase: usize, replica: usize, failure: Option<String>) {
        let mut c = self.cells.lock();
        let e = c.entry((phase, replica)).or_default();
        e.0 += 1;
        if let Some(f) = failure {
            e.1 += 1;
            e.2.get_or_insert(f);
        }
    }
}

struct Replica {
    proc: Option<Proc>,
    listen: SocketAddr,
    admin: SocketAddr,
    cache: tempfile::TempDir,
}

fn spawn_replica(repo: &Path, listen: SocketAddr, admin: SocketAddr, cache: &Path) -> Proc {
    Proc::spawn(
        &[
            "--config",
            "/nonexistent/config.yaml",
            "--config-repo",
            repo.to_str().unwrap(),
            "--poll-interval",
            "300ms",
            "--git-cache",
            cache.join("git").to_str().unwrap(),
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--log-format",
            "json",
        ],
        &[],
    )
}

fn config(redis: &str, backends: &[&DemoServer]) -> String {
    let mut s = format!(
        "cluster:\n  redis_url: \"{redis}\"\n  name: chaos\n  heartbeat_interval: 300ms\n  heartbeat_ttl: 2s\n  resync_interval: 1s\n  timeout: 300ms\n\
         retries:\n  attempts: 2\n  on_status: [500, 502, 503, 504]\n\
         health_check:\n  interval: 500ms\n  timeout: 300ms\n  unhealthy_threshold: 2\n\
         outlier_detection:\n  consecutive_failures: 3\n  failure_rate: 0.2\n  min_requests: 20\n  base_ejection_time: 5s\n\
         circuit_breaker:\n  failure_threshold: 20\n  open_duration: 5s\n\
         timeouts:\n  request: 5s\n\
         backends:\n"
    );
    for b in backends {
        s.push_str(&format!("  - url: \"{}\"\n", b.url()));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak() {
    let phase_secs: u64 = std::env::var("SWITCHYARD_CHAOS_PHASE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let phase = Duration::from_secs(phase_secs);
    let mut redis = RedisServer::start();
    let (b1, b2, b3) = (demo("b1").await, demo("b2").await, demo("b3").await);
    let b1_addr = b1.addr;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    commit(
        repo.path(),
        &config(&redis.url(), &[&b1, &b2, &b3]),
        "initial",
    );

    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| {
            let (listen, admin, cache) = (free_addr(), free_addr(), tempfile::tempdir().unwrap());
            let proc = spawn_replica(repo.path(), listen, admin, cache.path());
            Replica {
                proc: Some(proc),
                listen,
                admin,
                cache,
            }
        })
        .collect();
    let admins: Vec<SocketAddr> = replicas.iter().map(|r| r.admin).collect();
    for admin in &admins {
        let admin = *admin;
        wait_until(Duration::from_secs(15), "cluster formed", || async move {
            let v = get(&url(admin, "/admin/cluster")).await.json();
            v["replicas"].as_array().map(|r| r.len()) == Some(3)
        })
        .await;
    }

    // Continuous GET load: two clients per replica.
    let tally = Arc::new(Tally::default());
    let current = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        for _ in 0..2 {
            let (tally, current, stop, target) =
                (tally.clone(), current.clone(), stop.clone(), r.listen);
            load.push(tokio::spawn(async move {
                let c = client();
                while !stop.load(Relaxed) {
                    let res = tokio::time::timeout(
                        Duration::from_secs(10),
                        send(&c, Method::GET, &url(target, "/"), None),
                    )
                    .await;
                    // Counted in the phase it ended in: a request still in flight on
                    // the replica killed at the start of a phase fails because of that
                    // kill, not because of the phase it was sent in.
                    let ph = current.load(Relaxed) as usize;
                    let failure = match res {
                        Ok(Ok(r)) if r.status == StatusCode::OK => None,
                        Ok(Ok(r)) => Some(format!("{} {}", r.status, r.body.trim())),
                        Ok(Err(e)) => Some(e.chars().take(120).collect()),
                        Err(_) => Some("no answer in 10 s".into()),
                    };
                    let failed = failure.is_some();
                    tally.add(ph, i, failure);
                    if failed {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
    }

    // Admin changes: (replica used, change, acknowledged?)
    let mut acknowledged: Vec<(String, Option<u32>)> = Vec::new();
    let mut refused = 0u32;
    let mut phases: Vec<(&str, String)> = Vec::new();
    let mut killed_replica: Option<usize> = None;
    let next_phase = |name: &'static str, note: String, phases: &mut Vec<(&str, String)>| {
        phases.push((name, note));
        current.store(phases.len() as u64 - 1, Relaxed);
    };

    next_phase("baseline", "steady load".into(), &mut phases);
    tokio::time::sleep(phase).await;

    next_phase(
        "kill a backend",
        "b1 stopped, then started again on its port".into(),
        &mut phases,
    );
    b1.stop();
    tokio::time::sleep(phase).await;
    let b1 = DemoServer::start(b1_addr, "b1").await.unwrap();
    tokio::time::sleep(phase / 2).await;

    next_phase(
        "drain and re-add",
        "b2 drained on replica 1, re-added on replica 3".into(),
        &mut phases,
    );
    let r = post(
        &url(admins[0], "/admin/remove"),
        &format!(r#"{{"url":"{}"}}"#, b2.url()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    acknowledged.push((b2.url(), None));
    tokio::time::sleep(phase / 2).await;
    let r = post(
        &url(admins[2], "/admin/add"),
        &format!(r#"{{"url":"{}","weight":2}}"#, b2.url()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    acknowledged.push((b2.url(), Some(2)));
    tokio::time::sleep(phase / 2).await;

    next_phase(
        "config commit",
        "b3 weight 3 by git commit".into(),
        &mut phases,
    );
    let mut cfg = config(&redis.url(), &[&b1, &b2, &b3]);
    cfg = cfg.replace(
        &format!("  - url: \"{}\"\n", b3.url()),
        &format!("  - url: \"{}\"\n    weight: 3\n", b3.url()),
    );
    let good = commit(repo.path(), &cfg, "b3 heavier");
    for admin in &admins {
        let (admin, good) = (*admin, good.clone());
        wait_until(Duration::from_secs(5), "commit applied", || {
            let good = good.clone();
            async move { get(&url(admin, "/admin/config")).await.json()["commit"] == good.as_str() }
        })
        .await;
    }
    tokio::time::sleep(phase / 2).await;

    next_phase(
        "broken commit",
        "invalid YAML pushed: refused everywhere".into(),
        &mut phases,
    );
    let broken = commit(repo.path(), "backends: [\n", "broken");
    for admin in &admins {
        let (admin, broken) = (*admin, broken.clone());
        wait_until(Duration::from_secs(5), "broken commit refused", || {
            let broken = broken.clone();
            async move {
                get(&url(admin, "/admin/config")).await.json()["last_error"]["commit"]
                    == broken.as_str()
            }
        })
        .await;
        assert_eq!(
            get(&url(admin, "/admin/config")).await.json()["commit"],
            good.as_str()
        );
    }
    tokio::time::sleep(phase / 2).await;
    let fixed = commit(repo.path(), &cfg, "fixed");
    tokio::time::sleep(phase / 2).await;

    next_phase(
        "kill and restart a replica",
        "replica 2 killed with SIGKILL, restarted".into(),
        &mut phases,
    );
    killed_replica = killed_replica.or(Some(1));
    {
        let r = &mut replicas[1];
        r.proc.as_ref().unwrap().signal("KILL");
        r.proc.take();
        tokio::time::sleep(phase / 2).await;
        r.proc = Some(spawn_replica(
            repo.path(),
            r.listen,
            r.admin,
            r.cache.path(),
        ));
    }
    tokio::time::sleep(phase / 2).await;

    next_phase(
        "restart Redis empty",
        "kill -9, change refused while down, restart without data".into(),
        &mut phases,
    );
    redis.kill9();
    let admin = admins[0];
    wait_until(Duration::from_secs(5), "store seen down", || async move {
        get(&url(admin, "/admin/cluster")).await.json()["store"]["connected"] == false
    })
    .await;
    let r = post(
        &url(admins[0], "/admin/add"),
        r#"{"url":"http://127.0.0.1:9"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    refused += 1;
    tokio::time::sleep(phase / 2).await;
    redis.restart();
    tokio::time::sleep(phase / 2).await;

    next_phase(
        "slow and failing backends",
        "b1 +200 ms, b3 fails 30 % of requests".into(),
        &mut phases,
    );
    b1.control.set_latency(Duration::from_millis(200));
    b3.control.set_fail_rate(0.3);
    tokio::time::sleep(phase * 2).await;
    b1.control.set_latency(Duration::ZERO);
    b3.control.set_fail_rate(0.0);

    stop.store(true, Relaxed);
    for l in load {
        l.await.unwrap();
    }

    // Every acknowledged change is in force everywhere; the refused one nowhere.
    let mut lost = 0;
    for admin in &admins {
        let v = get(&url(*admin, "/admin/backends")).await.json();
        let list = v.as_array().unwrap();
        let (url_, weight) = acknowledged.last().unwrap();
        let entry = list
            .iter()
            .find(|b| b["url"] == url_.as_str() && b["draining"] == false);
        if entry.map(|e| e["weight"].as_u64().map(|w| w as u32)) != Some(*weight) {
            lost += 1;
        }
        if list.iter().any(|b| b["url"] == "http://127.0.0.1:9") {
            lost += 1;
        }
        assert_eq!(
            get(&url(*admin, "/admin/config")).await.json()["commit"],
            fixed.as_str()
        );
    }

    // The table.
    let cells = tally.cells.lock();
    let mut report = String::from(
        "| # | fault | failed / total (replicas not killed) | failed / total (killed replica) | first failure seen |\n|---|---|---|---|---|\n",
    );
    let mut failed_outside = 0;
    let (mut all_total, mut all_failed_killed, mut all_total_killed) = (0, 0, 0);
    for (p, (name, note)) in phases.iter().enumerate() {
        let (mut t, mut f, mut kt, mut kf, mut example) = (0, 0, 0, 0, None);
        for r in 0..3 {
            if let Some((total, failed, ex)) = cells.get(&(p, r)) {
                if Some(r) == killed_replica && *name == "kill and restart a replica" {
                    kt += total;
                    kf += failed;
                } else {
                    t += total;
                    f += failed;
                }
                if example.is_none() {
                    example = ex.clone();
                }
            }
        }
        failed_outside += f;
        all_total += t + kt;
        all_failed_killed += kf;
        all_total_killed += kt;
        let killed = if kt > 0 {
            format!("{kf} / {kt}")
        } else {
            "–".into()
        };
        report.push_str(&format!(
            "| {p} | {name}: {note} | {f} / {t} | {killed} | {} |\n",
            example.unwrap_or_else(|| "–".into())
        ));
    }
    report.push_str(&format!(
        "\nrequests: {all_total}; failed outside the killed replica: {failed_outside}; \
         killed replica: {all_failed_killed} of {all_total_killed} while it was down/restarting; \
         admin changes acknowledged: {}, lost: {lost}; refused with 503 while Redis was down: {refused}\n",
        acknowledged.len()
    ));
    println!("{report}");
    if let Ok(path) = std::env::var("SWITCHYARD_CHAOS_REPORT") {
        std::fs::write(path, &report).unwrap();
    }
    assert_eq!(
        failed_outside, 0,
        "idempotent requests failed outside the killed replica:\n{report}"
    );
    assert_eq!(lost, 0, "admin changes lost:\n{report}");
    assert!(
        all_total > 1000,
        "too little load to mean anything:\n{report}"
    );
}
