//! Config from git and from files, with real repositories, `git daemon`, and
//! `switchyard` processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use switchyard_demo::DemoServer;

/// A git repository made for the test.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let r = Repo {
            dir: tempfile::tempdir().unwrap(),
        };
        r.git(&["init", "-q", "-b", "main"]);
        r
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) -> String {
        git(self.path(), args)
    }

    /// Commits `content` as `config.yaml`; returns the commit id.
    fn commit(&self, content: &str, msg: &str) -> String {
        std::fs::write(self.path().join("config.yaml"), content).unwrap();
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Replaces `main` with a new history that shares nothing with the old one.
    fn force_unrelated(&self, content: &str) -> String {
        self.git(&["checkout", "-q", "--orphan", "other"]);
        let c = self.commit(content, "unrelated");
        self.git(&["branch", "-q", "-M", "main"]);
        c
    }
}

/// `git daemon` serving a directory on a free loopback port.
struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    fn start(base: &Path) -> GitDaemon {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            // git-daemon itself (the `git daemon` wrapper would outlive a kill as a
            // parent of the real daemon).
            let exec = Command::new("git").arg("--exec-path").output().unwrap();
            let exec_path = String::from_utf8_lossy(&exec.stdout).trim().to_string();
            let mut child = Command::new(Path::new(&exec_path).join("git-daemon"))
                .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
                .arg(format!("--port={port}"))
                .arg(format!("--base-path={}", base.display()))
                .arg(base)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while tokio::time::Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return GitDaemon { child, port };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("git daemon did not start");
    }

    fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(backends: &[(&DemoServer, u32)]) -> String {
    format!("strategy: round-robin\n{}", backends_yaml(backends))
}

/// A replica following `repo`.
fn follower(repo: &str, poll: &str, extra: &[&str]) -> (Proc, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let cache_arg = cache.path().join("git").display().to_string();
    let mut args = vec![
        "--config",
        "/nonexistent/config.yaml",
        "--config-repo",
        repo,
        "--poll-interval",
        poll,
        "--git-cache",
        &cache_arg,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    (Proc::spawn(&args, &[]), cache)
}

async fn config_status(admin: SocketAddr) -> serde_json::Value {
    get(&url(admin, "/admin/config")).await.json()
}

async fn wait_commit(admin: SocketAddr, commit: &str, limit: Duration) {
    let commit = commit.to_string();
    wait_until(
        limit,
        &format!("commit {commit} applied on {admin}"),
        || {
            let commit = commit.clone();
            async move { config_status(admin).await["commit"] == commit.as_str() }
        },
    )
    .await;
}

async fn serves(proxy: SocketAddr, name: &str) -> bool {
    for _ in 0..12 {
        if get(&url(proxy, "/")).await.backend() == name {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_reaches_two_replicas_and_a_broken_one_is_refused() {
    let (a, b) = (demo("a").await, demo("b").await);
    let repo = Repo::new();
    let first = repo.commit(&config(&[(&a, 1)]), "a only");
    let path = repo.path().display().to_string();
    let (r1, _c1) = follower(&path, "500ms", &[]);
    let (r2, _c2) = follower(&path, "500ms", &[]);
    for r in [&r1, &r2] {
        let s = config_status(r.admin).await;
        assert_eq!(s["commit"], first);
        assert_eq!(s["source"]["kind"], "git");
        assert_eq!(s["source"]["ref"], "main");
        assert_eq!(s["source"]["path"], "config.yaml");
    }

    // A commit adding a backend is served within the poll interval + 1 s.
    let second = repo.commit(&config(&[(&a, 1), (&b, 1)]), "add b");
    for r in [&r1, &r2] {
        wait_commit(r.admin, &second, Duration::from_millis(1500)).await;
        assert!(serves(r.proxy, "b").await);
    }

    // A broken commit: both keep serving the previous config; the error is reported.
    let broken = repo.commit(
        &format!(
            "strategy: round-robin\nbackends:\n  - url: \"{}\"\n    weight: lots\n",
            a.url()
        ),
        "broken",
    );
    for r in [&r1, &r2] {
        let admin = r.admin;
        let broken = broken.clone();
        wait_until(Duration::from_secs(3), "the error reported", || {
            let broken = broken.clone();
            async move { config_status(admin).await["last_error"]["commit"] == broken.as_str() }
        })
        .await;
        let s = config_status(admin).await;
        assert_eq!(s["commit"], second, "the previous commit keeps running");
        assert_eq!(s["last_error"]["file"], "config.yaml");
        assert_eq!(s["last_error"]["line"], 4);
        assert!(
            s["last_error"]["reason"]
                .as_str()
                .unwrap()
                .contains("backends[0].weight"),
            "{s}"
        );
        assert!(
            serves(r.proxy, "b").await,
            "still serving the last good config"
        );
        let prom = prometheus_text(admin).await;
        assert!(
            prom.contains("switchyard_config_reloads_total{result=\"refused\"} 1"),
            "{prom}"
        );
        assert!(
            prom.contains("switchyard_config_last_reload_failed 1"),
            "{prom}"
        );
    }
    assert!(
        r1.logs()
            .contains("config refused; the last good config keeps serving"),
        "{}",
        r1.logs()
    );

    // The next good commit is applied normally and clears the error.
    let fixed = repo.commit(&config(&[(&b, 1)]), "b only");
    for r in [&r1, &r2] {
        wait_commit(r.admin, &fixed, Duration::from_millis(1500)).await;
        let s = config_status(r.admin).await;
        assert!(s.get("last_error").is_none(), "{s}");
        assert!(!serves(r.proxy, "a").await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_commits_under_load_fail_no_request_and_a_removed_backends_inflight_request_completes()
 {
    let (a, b, c) = (demo("a").await, demo("b").await, demo("c").await);
    let repo = Repo::new();
    repo.commit(&config(&[(&a, 1), (&b, 1), (&c, 1)]), "all");
    let (r, _cache) = follower(&repo.path().display().to_string(), "200ms", &[]);
    let proxy = r.proxy;
    let stop = Arc::new(AtomicBool::new(false));
    let (failed, served) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, failed, served) = (stop.clone(), failed.clone(), served.clone());
        load.push(tokio::spawn(async move {
            let cl = client();
            while !stop.load(Relaxed) {
                match send(&cl, Method::GET, &url(proxy, "/"), None).await {
                    Ok(r) if r.status == StatusCode::OK => {}
                    _ => {
                        failed.fetch_add(1, Relaxed);
                    }
                }
                served.fetch_add(1, Relaxed);
            }
        }));
    }
    let sets: [&[(&DemoServer, u32)]; 4] = [
        &[(&a, 1), (&b, 2)],
        &[(&b, 1), (&c, 1)],
        &[(&a, 3), (&c, 1)],
        &[(&a, 1), (&b, 1), (&c, 1)],
    ];
    for i in 0..20 {
        let commit = repo.commit(&config(sets[i % 4]), &format!("change {i}"));
        wait_commit(r.admin, &commit, Duration::from_secs(3)).await;
    }

    // A request in flight on a backend the next commit removes still completes.
    let slow = tokio::spawn(async move { get(&url(proxy, "/sleep?ms=2000")).await });
    let admin = r.admin;
    let holder = Arc::new(parking_lot::Mutex::new(String::new()));
    let h2 = holder.clone();
    wait_until(Duration::from_secs(5), "slow request in flight", || {
        let h2 = h2.clone();
        async move {
            let v = get(&url(admin, "/admin/backends")).await.json();
            match v
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["active_conns"].as_u64().unwrap_or(0) > 0 && b["draining"] == false)
            {
                Some(b) => {
                    *h2.lock() = b["url"].as_str().unwrap().to_string();
                    true
                }
                None => false,
            }
        }
    })
    .await;
    let busy = holder.lock().clone();
    let keep: Vec<(&DemoServer, u32)> = [&a, &b, &c]
        .into_iter()
        .filter(|d| d.url() != busy)
        .map(|d| (d, 1))
        .collect();
    let commit = repo.commit(&config(&keep), "remove the busy one");
    wait_commit(r.admin, &commit, Duration::from_secs(3)).await;
    let resp = slow.await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.body.contains("slept 2000ms"), "{}", resp.body);

    stop.store(true, Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Relaxed),
        0,
        "of {} requests",
        served.load(Relaxed)
    );
    assert!(served.load(Relaxed) > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_daemon_url_missing_file_unreachable_repo_and_unrelated_history() {
    let (a, b) = (demo("a").await, demo("b").await);
    let base = tempfile::tempdir().unwrap();
    let repo = Repo {
        dir: tempfile::TempDir::new_in(base.path()).unwrap(),
    };
    repo.git(&["init", "-q", "-b", "main"]);
    let first = repo.commit(&config(&[(&a, 1)]), "first");
    let name = repo
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let daemon = GitDaemon::start(base.path());
    let (r, _cache) = follower(&daemon.url(&name), "300ms", &[]);
    let admin = r.admin;
    assert_eq!(config_status(admin).await["commit"], first);
    assert!(
        config_status(admin).await["source"]["repo"]
            .as_str()
            .unwrap()
            .starts_with("git://127.0.0.1:")
    );

    // The file disappears in a commit: refused.
    repo.git(&["rm", "-q", "config.yaml"]);
    repo.git(&["commit", "-q", "-m", "oops"]);
    let gone = repo.git(&["rev-parse", "HEAD"]);
    wait_until(Duration::from_secs(3), "missing file refused", || {
        let gone = gone.clone();
        async move { config_status(admin).await["last_error"]["commit"] == gone.as_str() }
    })
    .await;
    let s = config_status(admin).await;
    assert!(
        s["last_error"]["reason"]
            .as_str()
            .unwrap()
            .contains("no such file"),
        "{s}"
    );
    assert_eq!(s["commit"], first);

    // A force-push of an unrelated history: refused until explicitly allowed.
    let unrelated = repo.force_unrelated(&config(&[(&b, 1)]));
    wait_until(Duration::from_secs(3), "unrelated history refused", || {
        let unrelated = unrelated.clone();
        async move { config_status(admin).await["last_error"]["commit"] == unrelated.as_str() }
    })
    .await;
    let s = config_status(admin).await;
    assert!(
        s["last_error"]["reason"]
            .as_str()
            .unwrap()
            .contains("history rewritten"),
        "{s}"
    );
    assert_eq!(s["commit"], first);
    assert!(serves(r.proxy, "a").await);
    let resp = post(&url(admin, "/admin/reload?allow_unrelated=true"), "").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_eq!(resp.json()["result"], "applied");
    assert_eq!(config_status(admin).await["commit"], unrelated);
    assert!(serves(r.proxy, "b").await);

    // The repository becomes unreachable: refused, the last good config serves.
    drop(daemon);
    let resp = post(&url(admin, "/admin/reload"), "").await;
    assert_eq!(resp.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        resp.json()["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot fetch"),
        "{}",
        resp.body
    );
    assert_eq!(config_status(admin).await["commit"], unrelated);
    assert!(serves(r.proxy, "b").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_webhook_fetches_at_once() {
    let (a, b) = (demo("a").await, demo("b").await);
    let repo = Repo::new();
    repo.commit(&config(&[(&a, 1)]), "first");
    let (r, _cache) = follower(&repo.path().display().to_string(), "1h", &[]);
    let second = repo.commit(&config(&[(&b, 1)]), "second");
    // A push webhook body is ignored, whatever its size or shape.
    let resp = post(
        &url(r.admin, "/admin/reload"),
        r#"{"ref":"refs/heads/main","commits":[]}"#,
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let v = resp.json();
    assert_eq!(v["result"], "applied");
    assert_eq!(v["commit"], second);
    assert_eq!(v["added"][0], b.url());
    assert_eq!(v["removed"][0], a.url());
    let again = post(&url(r.admin, "/admin/reload"), "").await.json();
    assert_eq!(again["result"], "unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_replicas_report_each_others_commits_and_convergence() {
    let (a, b) = (demo("a").await, demo("b").await);
    let redis = RedisServer::start();
    let repo = Repo::new();
    let cluster = format!(
        "cluster:\n  redis_url: \"{}\"\n  name: g\n  heartbeat_interval: 200ms\n  heartbeat_ttl: 1s\n",
        redis.url()
    );
    repo.commit(&format!("{cluster}{}", config(&[(&a, 1)])), "first");
    let path = repo.path().display().to_string();
    let (r1, _c1) = follower(&path, "300ms", &[]);
    let (r2, _c2) = follower(&path, "300ms", &[]);
    let second = repo.commit(
        &format!("{cluster}{}", config(&[(&a, 1), (&b, 1)])),
        "second",
    );
    for r in [&r1, &r2] {
        wait_commit(r.admin, &second, Duration::from_secs(3)).await;
    }
    let admin = r1.admin;
    wait_until(
        Duration::from_secs(5),
        "both replicas on the new commit, converged",
        || {
            let second = second.clone();
            async move {
                let s = config_status(admin).await;
                let reps = s["replicas"].as_array().cloned().unwrap_or_default();
                reps.len() == 2
                    && reps.iter().all(|r| r["commit"] == second.as_str())
                    && s["converged"] == true
            }
        },
    )
    .await;
}

// === file mode ===

fn file_follower(path: &Path, poll: &str) -> Proc {
    Proc::spawn(
        &[
            "--config",
            path.to_str().unwrap(),
            "--poll-interval",
            poll,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        &[],
    )
}

async fn generation(admin: SocketAddr) -> u64 {
    config_status(admin).await["generation"].as_u64().unwrap()
}

async fn wait_serving(proxy: SocketAddr, name: &str) {
    let name = name.to_string();
    wait_until(Duration::from_secs(5), &format!("{name} served"), || {
        let name = name.clone();
        async move { get(&url(proxy, "/")).await.backend() == name }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_mode_sees_atomic_renames_and_configmap_symlink_swaps() {
    let (a, b, c) = (demo("a").await, demo("b").await, demo("c").await);
    let dir = tempfile::tempdir().unwrap();
    // Kubernetes ConfigMap layout: config.yaml -> ..data/config.yaml, ..data -> ..v1
    let v1 = dir.path().join("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("config.yaml"), config(&[(&a, 1)])).unwrap();
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.yaml", dir.path().join("config.yaml")).unwrap();
    let r = file_follower(&dir.path().join("config.yaml"), "200ms");
    assert_eq!(config_status(r.admin).await["source"]["kind"], "file");
    wait_serving(r.proxy, "a").await;

    // The swap: new version directory, then an atomic rename of the ..data link.
    let v2 = dir.path().join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("config.yaml"), config(&[(&b, 1)])).unwrap();
    std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    wait_serving(r.proxy, "b").await;

    // An editor's atomic save: write a temp file, rename over the target.
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, config(&[(&b, 1)])).unwrap();
    let r2 = file_follower(&plain, "200ms");
    wait_serving(r2.proxy, "b").await;
    let tmp: PathBuf = dir.path().join(".plain.yaml.swp");
    std::fs::write(&tmp, config(&[(&c, 1)])).unwrap();
    std::fs::rename(&tmp, &plain).unwrap();
    wait_serving(r2.proxy, "c").await;

    // A broken save is refused and the last good one serves on.
    let before = generation(r2.admin).await;
    std::fs::write(&plain, "backends: [\n").unwrap();
    let admin = r2.admin;
    wait_until(Duration::from_secs(5), "refusal reported", || async move {
        config_status(admin).await.get("last_error").is_some()
    })
    .await;
    assert_eq!(generation(r2.admin).await, before);
    assert_eq!(get(&url(r2.proxy, "/")).await.backend(), "c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_at_once() {
    let (a, b) = (demo("a").await, demo("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config(&[(&a, 1)])).unwrap();
    // Polling once an hour: only the signal can make the change visible.
    let r = file_follower(&path, "1h");
    wait_serving(r.proxy, "a").await;
    std::fs::write(&path, config(&[(&b, 1)])).unwrap();
    assert_eq!(get(&url(r.proxy, "/")).await.backend(), "a");
    r.signal("HUP");
    wait_serving(r.proxy, "b").await;
    assert_eq!(generation(r.admin).await, 2);
}

/// Routes and services reload together: a commit that moves a route to a new
/// service applies whole; one naming an unknown service is refused and the
/// running routes stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_services_reload_atomically_from_git() {
    let (a, b) = (demo("a").await, demo("b").await);
    let routed = |svc: &str, target: &str| {
        format!(
            "services:\n  sa:\n    backends: [{{url: '{}'}}]\n  sb:\n    backends: [{{url: '{}'}}]\nroutes:\n  - {{match: {{path_segment_prefix: /x}}, service: {svc}}}\n  - {{match: {{path: /t}}, respond: {{status: 200, body: {target}}}}}\n",
            a.url(),
            b.url()
        )
    };
    let repo = Repo::new();
    repo.commit(&routed("sa", "one"), "first");
    let (r, _cache) = follower(&repo.path().display().to_string(), "1h", &[]);
    wait_until(Duration::from_secs(30), "first routes", || async {
        get(&url(r.proxy, "/x")).await.backend() == "a"
    })
    .await;
    assert_eq!(get(&url(r.proxy, "/t")).await.body, "one");
    let second = repo.commit(&routed("sb", "two"), "second");
    let v = post(&url(r.admin, "/admin/reload"), "").await.json();
    assert_eq!(v["result"], "applied", "{v}");
    assert_eq!(v["commit"], second);
    // Both changes at once: the route's new service and the fixed body.
    assert_eq!(get(&url(r.proxy, "/x")).await.backend(), "b");
    assert_eq!(get(&url(r.proxy, "/t")).await.body, "two");
    repo.commit(&routed("nope", "three"), "broken");
    let resp = post(&url(r.admin, "/admin/reload"), "").await;
    let v = resp.json();
    assert_eq!(v["result"], "refused", "{v}");
    assert!(
        v["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown service `nope`"),
        "{v}"
    );
    assert_eq!(get(&url(r.proxy, "/x")).await.backend(), "b");
    assert_eq!(get(&url(r.proxy, "/t")).await.body, "two");
}
