//! The compose stack for real: the images deploy/Dockerfile builds, running as
//! docker-compose.yml describes them, driven from outside through the published
//! ports and the Docker CLI — the seed's production scenarios and a few more.
//!
//! `scripts/compose-test.sh` builds the images, brings the stack up, runs this test
//! (it is `#[ignore]`d otherwise) and tears everything down. It hands over the compose
//! command line (`SWITCHYARD_COMPOSE`) and the admin token (`SWITCHYARD_ADMIN_TOKEN`). Every loop is bounded in count and in time, and every
//! scenario prints its counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use switchyard_shared::api::{BackendView, CircuitState, ClusterView, ConfigStatus};

use super::{IMAGE_ENV, IMAGE_PROGRAMS, IMAGE_USER};
use crate::common::{Body, client, git, send_with, url, wait_until};

type Http =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// The proxy image's size limit (Docker counts MB as 10^6 bytes).
const IMAGE_LIMIT_BYTES: u64 = 40_000_000;
/// One request may take this long before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The backends of deploy/config-repo/config.yaml, as the replicas name them.
const BACKENDS: [&str; 3] = ["backend1", "backend2", "backend3"];

fn backend_url(name: &str) -> String {
    format!("http://{name}:9000")
}

/// Runs `docker ARGS`; its trimmed stdout. Panics with stderr when it fails.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The running stack, as scripts/compose-test.sh started it.
struct Stack {
    compose: Vec<String>,
    token: String,
    /// Replica 1 and 2: proxy and admin listeners, as published on the host.
    proxy: [SocketAddr; 2],
    admin: [SocketAddr; 2],
    https: [SocketAddr; 2],
    /// The demo upstreams' published ports (for `/_demo/control`).
    control: BTreeMap<&'static str, SocketAddr>,
    git: SocketAddr,
    prometheus: SocketAddr,
    http: Http,
}

impl Stack {
    fn from_env() -> Stack {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: this test runs inside scripts/compose-test.sh")
            })
        };
        let compose: Vec<String> = var("SWITCHYARD_COMPOSE")
            .split_whitespace()
            .map(String::from)
            .collect();
        let mut stack = Stack {
            compose,
            token: var("SWITCHYARD_ADMIN_TOKEN"),
            proxy: [SocketAddr::from(([0, 0, 0, 0], 0)); 2],
            admin: [SocketAddr::from(([0, 0, 0, 0], 0)); 2],
            https: [SocketAddr::from(([0, 0, 0, 0], 0)); 2],
            control: BTreeMap::new(),
            git: SocketAddr::from(([0, 0, 0, 0], 0)),
            prometheus: SocketAddr::from(([0, 0, 0, 0], 0)),
            http: client(),
        };
        for (i, svc) in ["switchyard-1", "switchyard-2"].into_iter().enumerate() {
            stack.proxy[i] = stack.port(svc, 8080);
            stack.admin[i] = stack.port(svc, 8081);
            stack.https[i] = stack.port(svc, 8443);
        }
        for b in BACKENDS {
            let addr = stack.port(b, 9000);
            stack.control.insert(b, addr);
        }
        stack.git = stack.port("config-repo", 9418);
        stack.prometheus = stack.port("prometheus", 9090);
        stack
    }

    /// Runs the compose CLI with `args`; its trimmed stdout.
    fn compose(&self, args: &[&str]) -> String {
        let (bin, pre) = self.compose.split_first().unwrap();
        let out = Command::new(bin).args(pre).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            self.compose.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Where `service`'s `port` is published on the host.
    fn port(&self, service: &str, port: u16) -> SocketAddr {
        let out = self.compose(&["port", service, &port.to_string()]);
        out.parse()
            .unwrap_or_else(|e| panic!("{service}:{port} published as {out:?}: {e}"))
    }

    /// The container id of `service`.
    fn container(&self, service: &str) -> String {
        let id = self.compose(&["ps", "-q", service]);
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    async fn admin_send(
        &self,
        replica: usize,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> crate::common::Resp {
        let bearer = format!("Bearer {}", self.token);
        let u = url(self.admin[replica], path);
        let headers = [("authorization", bearer.as_str())];
        let fut = send_with(&self.http, method, &u, &headers, body);
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{u}: {e}"),
            Err(_) => panic!("{u}: no answer in {REQUEST_TIMEOUT:?}"),
        }
    }

    /// `GET path` on a replica's admin API, decoded.
    async fn admin<T: DeserializeOwned>(&self, replica: usize, path: &str) -> T {
        let r = self.admin_send(replica, Method::GET, path, None).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.body))
    }

    /// `POST path` with a JSON body on a replica's admin API; must answer 200.
    async fn admin_post(&self, replica: usize, path: &str, body: &str) {
        let r = self
            .admin_send(replica, Method::POST, path, Some(body))
            .await;
        assert_eq!(r.status, StatusCode::OK, "POST {path} {body}: {}", r.body);
    }

    async fn backend(&self, replica: usize, name: &str) -> Option<BackendView> {
        let all: Vec<BackendView> = self.admin(replica, "/admin/backends").await;
        all.into_iter().find(|b| b.url == backend_url(name))
    }

    /// Changes a demo upstream's behaviour through its own published port.
    async fn control(&self, backend: &str, body: &str) {
        let u = url(self.control[backend], "/_demo/control");
        let r = send_with(&self.http, Method::POST, &u, &[], Some(body))
            .await
            .unwrap_or_else(|e| panic!("{u}: {e}"));
        assert_eq!(r.status, StatusCode::OK, "{u}: {}", r.body);
    }

    /// `n` requests through a replica: who answered each, or why it failed.
    async fn hits(&self, replica: usize, n: usize) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(hit(&self.http, self.proxy[replica]).await);
        }
        out
    }
}

/// One request through a proxy: the backend that answered (its `x-backend`), or why
/// it failed (no answer, or a status other than 200).
async fn hit(http: &Http, proxy: SocketAddr) -> Outcome {
    let u = url(proxy, "/");
    let fut = send_with(http, Method::GET, &u, &[], None);
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(r)) if r.status == StatusCode::OK => Ok(r.backend()),
        Ok(Ok(r)) => Err(format!("{} from {}", r.status, r.backend())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer in {REQUEST_TIMEOUT:?}")),
    }
}

/// One request's outcome: the backend that answered, or why it failed.
type Outcome = Result<String, String>;

/// Who answered how often, and the failures.
fn tally<'a>(
    results: impl IntoIterator<Item = &'a Outcome>,
) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut served = BTreeMap::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(b) => *served.entry(b.clone()).or_default() += 1,
            Err(e) => failed.push(e.clone()),
        }
    }
    (served, failed)
}

// === traffic in the background ===

/// Requests in a loop on a background task, round-robin over some replicas, one at a
/// time and at most one every `PACE`, until stopped or `max` requests or `limit` have
/// passed; every outcome kept in order.
const PACE: Duration = Duration::from_millis(5);

struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(usize, Outcome)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(stack: &Stack, replicas: &[usize], max: usize, limit: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let targets: Vec<(usize, SocketAddr)> =
            replicas.iter().map(|r| (*r, stack.proxy[*r])).collect();
        let (stop2, log2) = (stop.clone(), log.clone());
        let task = tokio::spawn(async move {
            let http = client();
            let deadline = tokio::time::Instant::now() + limit;
            let mut pace = tokio::time::interval(PACE);
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for i in 0..max {
                pace.tick().await;
                if stop2.load(Ordering::Relaxed) || tokio::time::Instant::now() > deadline {
                    break;
                }
                let (replica, addr) = targets[i % targets.len()];
                let r = hit(&http, addr).await;
                log2.lock().push((replica, r));
            }
        });
        Traffic { stop, log, task }
    }

    fn len(&self) -> usize {
        self.log.lock().len()
    }

    /// Waits until `n` more requests than now have been made (bounded).
    async fn wait_more(&self, n: usize, what: &str) {
        let want = self.len() + n;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while self.len() < want {
            if tokio::time::Instant::now() > deadline || self.task.is_finished() {
                let log = self.log.lock();
                let tail = &log[log.len().saturating_sub(5)..];
                panic!(
                    "{what}: {} of {want} requests made (loop finished: {}); the last: {tail:?}",
                    log.len(),
                    self.task.is_finished()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Outcomes from index `from` on, for one replica.
    fn since(&self, from: usize, replica: usize) -> Vec<Outcome> {
        self.log.lock()[from..]
            .iter()
            .filter(|(r, _)| *r == replica)
            .map(|(_, x)| x.clone())
            .collect()
    }

    async fn finish(self) -> Vec<(usize, Outcome)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        std::mem::take(&mut *self.log.lock())
    }
}

// === the scenarios ===

/// The images as built: the proxy's size, user and HEALTHCHECK, and the replicas
/// running healthy on a read-only root filesystem.
fn images(stack: &Stack) {
    let c1 = stack.container("switchyard-1");
    let image = docker(&["inspect", "--format", "{{.Image}}", &c1]);
    let inspect = |fmt: &str| docker(&["image", "inspect", "--format", fmt, &image]);
    let size: u64 = inspect("{{.Size}}").parse().unwrap();
    println!("proxy image: {:.1} MB", size as f64 / 1e6);
    // With binaries built outside the image (SWITCHYARD_COMPOSE_BINARIES, e.g. a
    // debug build) the size says nothing about the shipped image.
    if std::env::var_os("SWITCHYARD_COMPOSE_PREBUILT").is_some_and(|v| !v.is_empty()) {
        println!("proxy image size not bounded: prebuilt binaries");
    } else {
        assert!(
            size < IMAGE_LIMIT_BYTES,
            "the proxy image is {size} bytes, over {IMAGE_LIMIT_BYTES}"
        );
    }
    assert_eq!(inspect("{{.Config.User}}"), IMAGE_USER, "the image's USER");
    let env = inspect("{{json .Config.Env}}");
    for (k, v) in IMAGE_ENV {
        assert!(
            env.contains(&format!("\"{k}={v}\"")),
            "the image's {k}: {env}"
        );
    }
    // The programs the Kubernetes test lets exec hooks name are there, and run.
    for program in IMAGE_PROGRAMS {
        let args: &[&str] = match program {
            "ssh" => &["-V"],
            "sh" => &["-c", "exit 0"],
            _ => &["--version"],
        };
        let mut run = vec![
            "run",
            "--rm",
            "--read-only",
            "--entrypoint",
            program,
            &image,
        ];
        run.extend_from_slice(args);
        docker(&run);
    }
    let health = inspect("{{json .Config.Healthcheck.Test}}");
    assert!(health.contains("probe"), "HEALTHCHECK: {health}");
    for svc in ["switchyard-1", "switchyard-2"] {
        let c = stack.container(svc);
        let state = docker(&[
            "inspect",
            "--format",
            "{{.State.Health.Status}} {{.HostConfig.ReadonlyRootfs}} {{.Config.User}}",
            &c,
        ]);
        assert_eq!(
            state,
            format!("healthy true {IMAGE_USER}"),
            "{svc}: health, read-only root, user"
        );
    }
    for svc in ["backend1", "config-repo"] {
        let c = stack.container(svc);
        let img = docker(&["inspect", "--format", "{{.Image}}", &c]);
        let size: u64 = docker(&["image", "inspect", "--format", "{{.Size}}", &img])
            .parse()
            .unwrap();
        println!("{svc} image: {:.1} MB", size as f64 / 1e6);
    }
}

/// Both replicas follow the config repository and route to its three backends.
async fn ready(stack: &Stack) {
    for replica in 0..2 {
        wait_until(
            Duration::from_secs(120),
            "every backend served by both replicas",
            || async move {
                let (served, _) = tally(&stack.hits(replica, 9).await);
                BACKENDS.iter().all(|b| served.contains_key(*b))
            },
        )
        .await;
        let status: ConfigStatus = stack.admin(replica, "/admin/config").await;
        assert_eq!(status.source.kind, "git", "replica {}", replica + 1);
        assert!(
            status.commit.is_some(),
            "replica {}: no commit",
            replica + 1
        );
    }
    let cluster: ClusterView = stack.admin(0, "/admin/cluster").await;
    assert!(cluster.store.connected, "Redis: {:?}", cluster.store);
    assert_eq!(cluster.replicas.len(), 2, "replicas in the registry");
    println!(
        "ready: both replicas serve backend1-3 from the config repository, 2 replicas in Redis"
    );
}

/// Both replicas serve HTTPS (ALPN h2 and http/1.1) with one self-signed
/// certificate, made once for the cluster (`tls.self_signed`) and shared through Redis.
async fn https_both(stack: &Stack) {
    let mut serials = Vec::new();
    for (replica, addr) in stack.https.iter().enumerate() {
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let (config, rec) = crate::common::tls::recording_config(&[alpn]);
            let s = crate::common::tls::connect(*addr, "localhost", config)
                .await
                .unwrap_or_else(|e| panic!("HTTPS of replica {}: {e}", replica + 1));
            let (status, _, body) = crate::common::tls::get_over(s, "localhost", "/").await;
            assert_eq!(status, 200, "HTTPS of replica {}: {body}", replica + 1);
            let der = rec.seen.lock().clone().expect("a certificate");
            serials.push(crate::common::tls::describe(&der).serial);
        }
    }
    serials.dedup();
    assert_eq!(
        serials.len(),
        1,
        "one certificate for the cluster: {serials:?}"
    );
    println!("https: both replicas answer over h2 and http/1.1 with one shared certificate");
}

/// Prometheus finds both replicas by DNS and scrapes them with the token: `up == 1`.
async fn prometheus_scrapes_both(stack: &Stack) {
    let query = url(
        stack.prometheus,
        "/api/v1/query?query=up%7Bjob%3D%22switchyard%22%7D",
    );
    let http = &stack.http;
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = send_with(http, Method::GET, &query, &[], None).await {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            let results = v["data"]["result"].as_array().cloned().unwrap_or_default();
            let up = results.iter().filter(|s| s["value"][1] == "1").count();
            if results.len() == 2 && up == 2 {
                println!("prometheus: up{{job=\"switchyard\"}} == 1 for 2 of 2 replicas");
                return;
            }
            last = r.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus does not scrape both replicas: {last}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `docker stop` of a backend under a request loop: at most one failed request,
/// then none; it is back once started again.
async fn backend_crash(stack: &Stack) {
    let traffic = Traffic::start(stack, &[0, 1], 30_000, Duration::from_secs(120));
    traffic.wait_more(30, "requests before the stop").await;
    let id = stack.container("backend2");
    docker(&["stop", "--time", "5", &id]);
    let stopped_at = traffic.len();
    traffic.wait_more(100, "requests after the stop").await;
    let log = traffic.finish().await;
    let (_, failed) = tally(log.iter().map(|(_, r)| r));
    let (after, _) = tally(log[stopped_at..].iter().map(|(_, r)| r));
    println!(
        "backend crash: {} requests around `docker stop backend2`, {} failed {:?}; after the stop served by {after:?}",
        log.len(),
        failed.len(),
        failed
    );
    assert!(
        failed.len() <= 1,
        "more than one failed request: {failed:?}"
    );
    assert!(
        !after.contains_key("backend2"),
        "backend2 served after its stop"
    );
    // Then none: a fresh round on each replica.
    for replica in 0..2 {
        let (served, failed) = tally(&stack.hits(replica, 30).await);
        println!(
            "backend crash: then 30 requests on replica {}: {} failed, served by {served:?}",
            replica + 1,
            failed.len()
        );
        assert!(failed.is_empty(), "{failed:?}");
        assert!(!served.contains_key("backend2"));
    }
    // Back in service once started (its circuit closes on the first good probe).
    docker(&["start", &id]);
    let t0 = tokio::time::Instant::now();
    for replica in 0..2 {
        wait_until(
            Duration::from_secs(120),
            "backend2 served again",
            || async move {
                let (served, _) = tally(&stack.hits(replica, 6).await);
                served.contains_key("backend2")
            },
        )
        .await;
    }
    println!(
        "backend crash: backend2 served by both replicas {:.0}s after `docker start`",
        t0.elapsed().as_secs_f64()
    );
}

/// `/admin/remove` through replica 1, then `/admin/add` through replica 2, under a
/// request loop over both: zero failed requests, and the traffic leaves backend3
/// and comes back, on both replicas.
async fn drain_and_readd(stack: &Stack) {
    let traffic = Traffic::start(stack, &[0, 1], 30_000, Duration::from_secs(120));
    traffic.wait_more(20, "requests before the drain").await;
    let b3 = backend_url("backend3");
    stack
        .admin_post(0, "/admin/remove", &format!(r#"{{"url":"{b3}"}}"#))
        .await;
    let removed_at = traffic.len();
    // Gone on both replicas: the last 12 requests each made no use of it.
    let gone = |replica: usize| {
        let seen = traffic.since(removed_at, replica);
        seen.len() >= 12
            && seen[seen.len() - 12..]
                .iter()
                .all(|r| r.as_deref() != Ok("backend3"))
    };
    wait_until(
        Duration::from_secs(30),
        "backend3 drained on both replicas",
        || async { gone(0) && gone(1) },
    )
    .await;
    // How many requests each replica still sent it after the remove.
    let late: Vec<usize> = (0..2)
        .map(|replica| {
            traffic
                .since(removed_at, replica)
                .iter()
                .filter(|r| r.as_deref() == Ok("backend3"))
                .count()
        })
        .collect();
    let drained = traffic.len();
    traffic.wait_more(40, "requests while drained").await;
    // Requests that finish while the add is in flight may already reach backend3:
    // the drained window ends where the add was sent, the re-added one starts where
    // it was answered.
    let add_sent = traffic.len();
    stack
        .admin_post(1, "/admin/add", &format!(r#"{{"url":"{b3}","weight":1}}"#))
        .await;
    let added_at = traffic.len();
    let back = |replica: usize| {
        traffic
            .since(added_at, replica)
            .iter()
            .any(|r| r.as_deref() == Ok("backend3"))
    };
    wait_until(
        Duration::from_secs(30),
        "backend3 back on both replicas",
        || async { back(0) && back(1) },
    )
    .await;
    traffic.wait_more(20, "requests after the re-add").await;
    let log = traffic.finish().await;
    let (_, failed) = tally(log.iter().map(|(_, r)| r));
    let (while_drained, _) = tally(log[drained..add_sent].iter().map(|(_, r)| r));
    let back_on: Vec<BTreeMap<String, usize>> = (0..2)
        .map(|replica| {
            tally(
                log[added_at..]
                    .iter()
                    .filter(|(r, _)| *r == replica)
                    .map(|(_, x)| x),
            )
            .0
        })
        .collect();
    println!(
        "drain and re-add: {} requests over both replicas, {} failed; after /admin/remove backend3 answered {} (replica 1) and {} (replica 2) more, then none: {} requests while drained, served by {while_drained:?}; after /admin/add: replica 1 {:?}, replica 2 {:?}",
        log.len(),
        failed.len(),
        late[0],
        late[1],
        add_sent - drained,
        back_on[0],
        back_on[1]
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(add_sent - drained >= 40);
    assert!(!while_drained.contains_key("backend3"));
}

/// A backend answering 500 to everything: its circuit opens, on both replicas, and
/// replica 2 then sends it nothing.
async fn circuit_breaker(stack: &Stack) {
    stack.control("backend1", r#"{"fail_rate": 1.0}"#).await;
    let mut sent = 0;
    let mut errors = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let open = stack
            .backend(0, "backend1")
            .await
            .is_some_and(|b| b.circuit == CircuitState::Open);
        if open {
            break;
        }
        assert!(
            sent < 200 && tokio::time::Instant::now() < deadline,
            "backend1's circuit did not open after {sent} requests"
        );
        for r in stack.hits(0, 3).await {
            sent += 1;
            errors += usize::from(r.is_err());
        }
    }
    wait_until(
        Duration::from_secs(10),
        "the circuit open on replica 2",
        || async {
            stack
                .backend(1, "backend1")
                .await
                .is_some_and(|b| b.circuit == CircuitState::Open)
        },
    )
    .await;
    let (served, failed) = tally(&stack.hits(1, 12).await);
    println!(
        "circuit breaker: open on both replicas after {sent} requests through replica 1 ({errors} answered 500); then replica 2: {} failed, served by {served:?}",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(!served.contains_key("backend1"));
    stack.control("backend1", r#"{"fail_rate": 0}"#).await;
}

/// A new backend container, registered with `/admin/add`: it takes traffic at once,
/// on both replicas.
async fn scale_out(stack: &Stack) {
    // The compose file's `backend4` (profile scale-out): named, it starts.
    stack.compose(&["up", "--detach", "--no-deps", "backend4"]);
    let b4 = backend_url("backend4");
    stack
        .admin_post(0, "/admin/add", &format!(r#"{{"url":"{b4}","weight":2}}"#))
        .await;
    for replica in 0..2 {
        let results = stack.hits(replica, 10).await;
        let (served, failed) = tally(&results);
        println!(
            "scale out: the first 10 requests on replica {} after /admin/add: {} failed, served by {served:?}",
            replica + 1,
            failed.len()
        );
        assert!(failed.is_empty(), "{failed:?}");
        assert!(
            served.get("backend4").copied().unwrap_or(0) >= 2,
            "backend4 did not take traffic at once on replica {}",
            replica + 1
        );
    }
}

/// A commit pushed to the config-repo container changes the backends on both
/// replicas: backend1 leaves the config, backend4 (added at runtime) joins it.
async fn git_commit(stack: &Stack) {
    let dir = tempfile::tempdir().unwrap();
    let remote = format!("git://{}/config.git", stack.git);
    git(dir.path(), &["clone", "-q", &remote, "repo"]);
    let repo = dir.path().join("repo");
    let file = repo.join("config.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let b1 = "  - url: \"http://backend1:9000\"\n    weight: 1\n";
    let b3 = "  - url: \"http://backend3:9000\"\n    weight: 1\n";
    assert!(text.contains(b1) && text.contains(b3), "{text}");
    let text = text.replace(b1, "").replace(
        b3,
        &format!("{b3}  - url: \"http://backend4:9000\"\n    weight: 2\n"),
    );
    std::fs::write(&file, text).unwrap();
    git(&repo, &["commit", "-q", "-am", "backend1 out, backend4 in"]);
    git(&repo, &["push", "-q", "origin", "HEAD:main"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    let t0 = tokio::time::Instant::now();
    for replica in 0..2 {
        let head = head.clone();
        wait_until(Duration::from_secs(60), "the commit applied", || {
            let head = head.clone();
            async move {
                let s: ConfigStatus = stack.admin(replica, "/admin/config").await;
                s.commit.as_deref() == Some(head.as_str())
            }
        })
        .await;
        let status: ConfigStatus = stack.admin(replica, "/admin/config").await;
        assert!(status.last_error.is_none(), "{:?}", status.last_error);
        assert!(
            status.drift.only_runtime.is_empty(),
            "backend4 is in git now: {:?}",
            status.drift
        );
        // Removed from the config: it drains, then leaves the list.
        wait_until(Duration::from_secs(30), "backend1 gone", || async {
            stack.backend(replica, "backend1").await.is_none()
        })
        .await;
        assert!(stack.backend(replica, "backend4").await.is_some());
        let (served, failed) = tally(&stack.hits(replica, 12).await);
        println!(
            "git commit: replica {} runs {} ({:.0}s after the push); 12 requests: {} failed, served by {served:?}",
            replica + 1,
            &head[..12],
            t0.elapsed().as_secs_f64(),
            failed.len()
        );
        assert!(failed.is_empty(), "{failed:?}");
        assert!(!served.contains_key("backend1"));
    }
}

/// `docker kill` of replica 2 under a request loop on replica 1: replica 1 goes on
/// serving without a failure, and its cluster view drops replica 2.
async fn replica_kill(stack: &Stack) {
    let traffic = Traffic::start(stack, &[0], 15_000, Duration::from_secs(60));
    traffic.wait_more(20, "requests before the kill").await;
    docker(&["kill", &stack.container("switchyard-2")]);
    traffic.wait_more(100, "requests after the kill").await;
    let log = traffic.finish().await;
    let (served, failed) = tally(log.iter().map(|(_, r)| r));
    println!(
        "replica kill: {} requests on replica 1 around `docker kill switchyard-2`, {} failed, served by {served:?}",
        log.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    let gone = hit(&client(), stack.proxy[1]).await;
    assert!(gone.is_err(), "replica 2 still answers: {gone:?}");
    wait_until(
        Duration::from_secs(60),
        "replica 2 gone from the cluster view",
        || async {
            let c: ClusterView = stack.admin(0, "/admin/cluster").await;
            c.replicas.len() == 1
        },
    )
    .await;
    println!("replica kill: replica 1's /admin/cluster lists 1 replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the compose stack: scripts/compose-test.sh runs it"]
async fn compose_stack_production_scenarios() {
    let stack = Stack::from_env();
    images(&stack);
    ready(&stack).await;
    https_both(&stack).await;
    prometheus_scrapes_both(&stack).await;
    backend_crash(&stack).await;
    drain_and_readd(&stack).await;
    circuit_breaker(&stack).await;
    scale_out(&stack).await;
    git_commit(&stack).await;
    replica_kill(&stack).await;
}
