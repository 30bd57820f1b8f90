//! scripts/local-cluster.sh run for real on free ports: three replicas, Redis on a
//! unix socket, a git repository; it serves, follows a commit, and stops everything
//! it started on SIGTERM and on Ctrl-C.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use super::*;
use crate::common::*;

/// The script running on free ports; SIGTERM and then SIGKILL (by PID, to what it
/// started) on drop if a test fails half-way.
struct LocalCluster {
    child: Child,
    dir: tempfile::TempDir,
    base: u16,
    upstream_base: u16,
    out: Arc<parking_lot::Mutex<Vec<String>>>,
}

/// `base..base+6`, `upstream..upstream+3` and the HTTPS ports `base+20..base+23` all
/// free (outside 18080-18099, below the ephemeral range). Bases are 30 apart and
/// taken in turn by this process's tests, from a random first one: two clusters
/// started at once never get overlapping ranges (random bases 2 apart could, and
/// both saw the ports free before either bound them).
fn free_ranges() -> (u16, u16) {
    use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
    static NEXT: std::sync::LazyLock<AtomicU16> =
        std::sync::LazyLock::new(|| AtomicU16::new(fastrand::u16(0..260)));
    for _ in 0..50 {
        let base = 20000 + 30 * (NEXT.fetch_add(1, Relaxed) % 260);
        let upstream = base + 10;
        let ports: Vec<u16> = (base..base + 6)
            .chain(upstream..upstream + 3)
            .chain(base + 20..base + 23)
            .collect();
        let listeners: Vec<_> = ports
            .iter()
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).ok())
            .collect();
        if listeners.len() == ports.len() {
            return (base, upstream);
        }
    }
    panic!("no free port range found");
}

impl LocalCluster {
    fn start() -> LocalCluster {
        let (base, upstream_base) = free_ranges();
        let dir = tempfile::tempdir().unwrap();
        // Default signal dispositions whatever this test process inherited (a
        // harness started in the background has SIGINT ignored).
        let mut child = Command::new("env")
            .args(["--default-signal=INT,TERM", "bash"])
            .arg(root().join("scripts/local-cluster.sh"))
            .process_group(0)
            .env("SWITCHYARD_BASE_PORT", base.to_string())
            .env("SWITCHYARD_UPSTREAM_BASE_PORT", upstream_base.to_string())
            .env("SWITCHYARD_TLS_BASE_PORT", (base + 20).to_string())
            .env("SWITCHYARD_CLUSTER_DIR", dir.path())
            .env("SWITCHYARD_BIN", SWITCHYARD)
            .env("DEMO_UPSTREAM_BIN", common::demo_upstream_bin())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (out, tx) = (out.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line == "local-cluster: ready" {
                        let _ = tx.send(());
                    }
                    out.lock().push(line);
                }
            });
        }
        let cluster = LocalCluster {
            child,
            dir,
            base,
            upstream_base,
            out,
        };
        if rx.recv_timeout(Duration::from_secs(90)).is_err() {
            panic!("local-cluster.sh did not get ready:\n{}", cluster.output());
        }
        cluster
    }

    fn output(&self) -> String {
        self.out.lock().join("\n")
    }

    fn proxy(&self, replica: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 2 * (replica - 1)))
    }

    fn admin(&self, replica: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + 2 * (replica - 1) + 1))
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("config-repo")
    }

    /// (name, pid, start time) of everything the script says it started.
    fn started(&self) -> Vec<(String, u32, String)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path().join("pids")).unwrap() {
            let p = e.unwrap().path();
            let pid: u32 = std::fs::read_to_string(&p).unwrap().trim().parse().unwrap();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            out.push((name, pid, start_time(pid).unwrap_or_default()));
        }
        out.sort();
        out
    }

    fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// The script exits, nothing it started is left (same PID and start time), and
    /// nothing runs out of its directory (e.g. a git under a replica).
    fn assert_all_stopped(&mut self, started: &[(String, u32, String)]) {
        let status = self.wait_exit(Duration::from_secs(60));
        assert!(
            status.is_some(),
            "the script did not exit:\n{}",
            self.output()
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<_> = started
                .iter()
                .filter(|(_, pid, start)| still_running(*pid, start))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "left behind: {left:?}\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = self.dir.path().display().to_string();
        let strays: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .chars()
                    .all(|c| c.is_ascii_digit())
            })
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&dir))
            .collect();
        assert!(strays.is_empty(), "still running: {strays:?}");
        assert!(self.output().contains("==> stopped"), "{}", self.output());
        assert!(!self.dir.path().join("redis/redis.sock").exists());
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_child(&mut self.child, limit)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.sigterm();
            if self.wait_exit(Duration::from_secs(60)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        for (_, pid, start) in self.started() {
            if still_running(pid, &start) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Field 22 of /proc/PID/stat (start time), to tell a process from a later one with
/// the same PID.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(format!("{}:{}", fields.first()?, fields.get(19)?))
}

/// The same process (same start time), not a zombie.
fn still_running(pid: u32, start: &str) -> bool {
    match start_time(pid) {
        Some(now) => {
            let same = now.split(':').nth(1) == start.split(':').nth(1);
            same && !now.starts_with("Z:")
        }
        None => false,
    }
}

async fn served_by(proxy: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        if let Ok(r) = send(&client(), Method::GET, &url(proxy, "/"), None).await {
            seen.insert(r.backend());
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_serves_follows_git_and_stops_everything_it_started() {
    for tool in ["redis-server", "git"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success(),
            "{tool} is needed (apt-get install redis-server git)"
        );
    }
    let mut cluster = LocalCluster::start();
    let started = cluster.started();
    let names: Vec<&str> = started.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "backend1", "backend2", "backend3", "redis", "replica1", "replica2", "replica3"
        ],
        "{}",
        cluster.output()
    );
    for (name, pid, start) in &started {
        assert!(still_running(*pid, start), "{name} ({pid}) is not running");
    }
    let out = cluster.output();
    assert!(
        out.contains(&cluster.repo().display().to_string()),
        "the repository is named:\n{out}"
    );
    assert!(
        out.contains("git commit"),
        "how to change backends is shown:\n{out}"
    );

    // Every replica routes to all three upstreams.
    let all: BTreeSet<String> = ["backend1", "backend2", "backend3"]
        .map(String::from)
        .into();
    for r in 1..=3 {
        assert_eq!(served_by(cluster.proxy(r), 6).await, all, "replica {r}");
    }
    // HTTPS too, with the certificate the script made (verified against it).
    let cert = std::fs::read_to_string(cluster.dir.path().join("tls/localhost.pem")).unwrap();
    for r in 0..3u16 {
        let addr: SocketAddr = ([127, 0, 0, 1], cluster.base + 20 + r).into();
        let s = common::tls::connect(addr, "localhost", common::tls::verifying_config(&cert, &[]))
            .await
            .unwrap_or_else(|e| panic!("HTTPS on {addr}: {e}"));
        let (status, _, body) = common::tls::get_over(s, "localhost", "/").await;
        assert_eq!(status, 200, "HTTPS on {addr}: {body}");
    }
    // They are one cluster: each sees the three replicas through Redis.
    let admin2 = cluster.admin(2);
    wait_until(
        Duration::from_secs(5),
        "three replicas in the registry",
        || async move {
            let view = get(&url(admin2, "/admin/cluster")).await.json();
            view["store"]["connected"] == true
                && view["replicas"].as_array().map(Vec::len) == Some(3)
        },
    )
    .await;

    // A drain on replica 1 reaches replica 3.
    let b1 = format!("http://127.0.0.1:{}", cluster.upstream_base);
    let r = post(
        &url(cluster.admin(1), "/admin/remove"),
        &format!("{{\"url\":\"{b1}\"}}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let admin3 = cluster.admin(3);
    let b1_key = b1.clone();
    wait_until(Duration::from_secs(3), "replica 3 sees the drain", || {
        let b1 = b1_key.clone();
        async move {
            backend_view(admin3, &b1)
                .await
                .is_none_or(|b| b["draining"] == true)
        }
    })
    .await;
    assert!(!served_by(cluster.proxy(3), 6).await.contains("backend1"));
    let r = post(
        &url(cluster.admin(1), "/admin/add"),
        &format!("{{\"url\":\"{b1}\",\"weight\":1}}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // A git commit in the printed repository swaps backend3 for a new upstream.
    let backend4 = demo("backend4").await;
    let cfg = cluster.repo().join("config.yaml");
    let b3 = format!("http://127.0.0.1:{}", cluster.upstream_base + 2);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, mutate(&text, &b3, &backend4.url())).unwrap();
    // As a user would: the repository has an identity of its own.
    let out = Command::new("git")
        .current_dir(cluster.repo())
        .args(["commit", "-q", "-am", "backend4 instead of backend3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = git(&cluster.repo(), &["rev-parse", "HEAD"]);
    for r in 1..=3 {
        let admin = cluster.admin(r);
        let head = head.clone();
        wait_until(Duration::from_secs(10), "the commit applied", || {
            let head = head.clone();
            async move { get(&url(admin, "/admin/config")).await.json()["commit"] == head.as_str() }
        })
        .await;
    }
    for r in 1..=3 {
        let proxy = cluster.proxy(r);
        wait_until(
            Duration::from_secs(5),
            "backend4 served, backend3 gone",
            || async move {
                let seen = served_by(proxy, 6).await;
                seen.contains("backend4") && !seen.contains("backend3")
            },
        )
        .await;
    }

    // SIGTERM to the script: it stops, and so does everything it started.
    cluster.sigterm();
    cluster.assert_all_stopped(&started);
}

/// Ctrl-C in a terminal: SIGINT to the whole foreground process group (the script
/// and its children at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_stops_on_ctrl_c() {
    let mut cluster = LocalCluster::start();
    let started = cluster.started();
    assert_eq!(started.len(), 7, "{}", cluster.output());
    assert_eq!(
        get(&url(cluster.proxy(3), "/")).await.status,
        StatusCode::OK
    );
    let ok = Command::new("kill")
        .args(["-INT", "--", &format!("-{}", cluster.child.id())])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -INT to the process group");
    cluster.assert_all_stopped(&started);
}
