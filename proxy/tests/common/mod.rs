//! Test harness: real sockets on ephemeral loopback ports, in-process demo upstreams
//! and proxies, and real `switchyard` processes where a test needs one (signals, RSS).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod tls;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use switchyard::server::{self, Running};
use switchyard_demo::DemoServer;

pub mod redis_ha;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Runs `git` in `dir` with a test identity; its trimmed stdout. Panics with git's
/// stderr when it fails.
pub fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.email=test@example.com", "-c", "user.name=test"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The admin `/metrics` body, asking for it with this `Accept` header (the
/// Prometheus text format for `text/plain`).
pub async fn metrics_with_accept(admin: SocketAddr, accept: &str) -> String {
    let resp = client()
        .request(
            Request::get(url(admin, "/metrics"))
                .header("accept", accept)
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

/// The admin `/metrics` in the Prometheus text format.
pub async fn prometheus_text(admin: SocketAddr) -> String {
    metrics_with_accept(admin, "text/plain").await
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

pub async fn send(
    c: &Client<HttpConnector, Body>,
    method: Method,
    url: &str,
    body: Option<&str>,
) -> Result<Resp, String> {
    send_with(c, method, url, &[], body).await
}

/// `send` with extra request headers (e.g. `authorization`).
pub async fn send_with(
    c: &Client<HttpConnector, Body>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Resp, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(match body {
            Some(b) => full(b.to_string()),
            None => full(Bytes::new()),
        })
        .map_err(|e| e.to_string())?;
    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

pub async fn get(url: &str) -> Resp {
    send(&client(), Method::GET, url, None)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub async fn post(url: &str, body: &str) -> Resp {
    send(&client(), Method::POST, url, Some(body))
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// The `demo-upstream` binary (package `switchyard-demo`). `CARGO_BIN_EXE_*` only
/// names binaries of the package under test, so it is built here, once per test
/// process, into this test's own target directory and profile (a no-op when it is
/// up to date, as after `cargo test --workspace`), and found there.
pub fn demo_upstream_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        // The test runs as <target>/<profile>/deps/<test>-<hash>.
        let exe = std::env::current_exe().expect("test executable");
        let profile_dir = exe
            .parent()
            .and_then(std::path::Path::parent)
            .expect("<target>/<profile>");
        let target = profile_dir.parent().expect("<target>");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile name");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "-q",
                "-p",
                "switchyard-demo",
                "--bin",
                "demo-upstream",
            ])
            .arg("--target-dir")
            .arg(target);
        match profile {
            "debug" => {}
            "release" => {
                cargo.arg("--release");
            }
            other => {
                cargo.args(["--profile", other]);
            }
        }
        let out = cargo.output().expect("run cargo");
        assert!(
            out.status.success(),
            "cargo build -p switchyard-demo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join("demo-upstream");
        assert!(bin.exists(), "{} not built", bin.display());
        bin.to_string_lossy().into_owned()
    })
}

/// A demo upstream on a free loopback port.
pub async fn demo(name: &str) -> DemoServer {
    DemoServer::start("127.0.0.1:0".parse().unwrap(), name)
        .await
        .unwrap()
}

/// The config prefix that binds everything to free loopback ports.
pub fn server_yaml() -> &'static str {
    "server:\n  port: 0\n  admin_port: 0\n  bind: 127.0.0.1\n"
}

/// `backends:` YAML for the given upstreams and weights.
pub fn backends_yaml(servers: &[(&DemoServer, u32)]) -> String {
    let mut s = String::from("backends:\n");
    for (d, w) in servers {
        s.push_str(&format!("  - url: \"{}\"\n    weight: {w}\n", d.url()));
    }
    s
}

/// Starts an in-process proxy from config YAML.
pub async fn proxy(yaml: &str) -> Running {
    let config =
        switchyard::config::parse(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    server::start(config, server::file_source("test.yaml"))
        .await
        .unwrap()
}

/// Reads one HTTP/1.1 response off `s` (its head and a `Content-Length` body), as
/// text; what arrived when the peer closed or `limit` passed if it is not whole.
pub async fn read_one_response(s: &mut tokio::net::TcpStream, limit: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => all.extend_from_slice(&buf[..n]),
            _ => break,
        }
        let text = String::from_utf8_lossy(&all);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|n| all.len() >= end + 4 + n) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A `switchyard` process; killed on drop if still running.
pub struct Proc {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    /// Starts `switchyard` with `yaml` written to a temp file, plus `args`.
    pub fn start(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut all = vec!["--config", path.to_str().unwrap(), "--log-format", "json"];
        all.extend_from_slice(args);
        let mut p = Self::spawn(&all, env);
        p._dir = Some(dir);
        p
    }

    /// [`start`](Self::start), run from `cwd` (e.g. a directory with no checkout).
    pub fn start_in(yaml: &str, cwd: &std::path::Path) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        let args = ["--config", path.to_str().unwrap(), "--log-format", "json"];
        let mut p = Self::spawn_in(&args, &[], Some(cwd));
        p._dir = Some(dir);
        p
    }

    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        Self::spawn_in(args, env, None)
    }

    fn spawn_in(args: &[&str], env: &[(&str, &str)], cwd: Option<&std::path::Path>) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd).env_remove("SWITCHYARD_DASHBOARD_DIR");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchyard");
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"listening\"")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.clone());
                }
                log2.lock().push(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let log3 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log3.lock().push(line);
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("switchyard did not start: {:?}", log.lock());
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        Proc {
            child,
            proxy: v["proxy"].as_str().unwrap().parse().unwrap(),
            admin: v["admin"].as_str().unwrap().parse().unwrap(),
            log,
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    pub fn logs(&self) -> String {
        self.log.lock().join("\n")
    }

    /// Waits for the process to exit (bounded), returning its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        wait_child(&mut self.child, limit).and_then(|s| s.code())
    }
}

/// Waits (bounded, polling) for a child process to exit; its status, or `None` if it
/// still runs after `limit`.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Fetches `/admin/backends` and returns the entry for `url`.
pub async fn backend_view(admin: SocketAddr, key: &str) -> Option<serde_json::Value> {
    let v = get(&url(admin, "/admin/backends")).await.json();
    v.as_array()?.iter().find(|b| b["url"] == key).cloned()
}

/// A real `redis-server` on a unix socket in a temp dir (no TCP port to collide
/// on), no persistence. Killed on drop.
pub struct RedisServer {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.launch();
        r
    }

    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn launch(&mut self) {
        let sock = self.socket();
        let _ = std::fs::remove_file(&sock);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 16];
                    if let Ok(n) = s.read(&mut buf)
                        && buf[..n].starts_with(b"+PONG")
                    {
                        return;
                    }
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9`, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again, empty (no persistence), on the same socket.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Runs a command with redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
