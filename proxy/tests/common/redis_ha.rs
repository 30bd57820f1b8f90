//! Real Redis topologies for failover tests: a primary with replicas watched by
//! `redis-sentinel`s, and a Redis Cluster made with `redis-cli --cluster create`.
//! Every process listens on loopback TCP ports the OS handed out (Redis cannot bind
//! port 0 and report it), all with a password; every one is killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const PASSWORD: &str = "s3cret";

/// A port that was free a moment ago (the OS picked it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// One `redis-server` (or sentinel) process.
pub struct Node {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    sentinel: bool,
}

impl Node {
    /// A Redis node with `extra` arguments (retried on another port if the one
    /// picked was taken meanwhile).
    pub fn redis(extra: &[String]) -> Node {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                PASSWORD,
                "--masterauth",
                PASSWORD,
                "--loglevel",
                "warning",
                // Replicas get the data at once (the default waits 5 s for others).
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.push(dir.path().display().to_string());
            args.extend(extra.iter().cloned());
            let child = Command::new("redis-server")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (apt-get install redis-server)");
            let mut node = Node {
                port,
                dir,
                child: Some(child),
                sentinel: false,
            };
            if node.wait_up() {
                return node;
            }
        }
        panic!("redis-server did not start");
    }

    /// A sentinel watching `master` (`down-after-milliseconds` 1000).
    pub fn sentinel(master_port: u16) -> Node {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                     sentinel auth-pass mymaster {PASSWORD}\nsentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 5000\nsentinel parallel-syncs mymaster 2\n",
                    dir.path().display()
                ),
            )
            .expect("sentinel.conf");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel (apt-get install redis-sentinel)");
            let mut node = Node {
                port,
                dir,
                child: Some(child),
                sentinel: true,
            };
            if node.wait_up() {
                return node;
            }
        }
        panic!("redis-sentinel did not start");
    }

    fn wait_up(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if let Some(c) = &mut self.child
                && let Ok(Some(_)) = c.try_wait()
            {
                return false; // exited: the port was probably taken
            }
            if self.cli(&["PING"]) == "PONG" {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Runs `redis-cli` against this node; its trimmed output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if !self.sentinel {
            cmd.args(["--no-auth-warning", "-a", PASSWORD]);
        }
        match cmd.args(args).output() {
            Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
            Err(_) => String::new(),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `kill -9`: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `SIGSTOP` / `SIGCONT`: a node that hangs, then comes back.
    pub fn freeze(&self, frozen: bool) {
        if let Some(pid) = self.pid() {
            let sig = if frozen { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The replicas connected to this primary (`ROLE`), as `host:port`.
    pub fn replicas(&self) -> Vec<String> {
        // master, offset, then ip, port, offset per replica
        let out = self.cli(&["ROLE"]);
        let lines: Vec<&str> = out.lines().collect();
        if lines.first() != Some(&"master") {
            return Vec::new();
        }
        lines[2..]
            .chunks(3)
            .filter(|c| c.len() == 3)
            .map(|c| format!("{}:{}", c[0], c[1]))
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.freeze(false);
        self.kill9();
    }
}

/// Polls `f` (blocking) until it returns `Some`, up to `limit`.
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A primary, two replicas and three sentinels (quorum 2).
pub struct SentinelGroup {
    pub nodes: Vec<Node>,
    pub sentinels: Vec<Node>,
}

impl SentinelGroup {
    pub fn start() -> SentinelGroup {
        let primary = Node::redis(&[]);
        let mut nodes = vec![primary];
        for _ in 0..2 {
            let replicaof = vec![
                "--replicaof".to_string(),
                format!("127.0.0.1 {}", nodes[0].port),
            ];
            nodes.push(Node::redis(&replicaof));
        }
        poll(Duration::from_secs(20), "two replicas in sync", || {
            (nodes[0].replicas().len() == 2).then_some(())
        });
        let sentinels: Vec<Node> = (0..3).map(|_| Node::sentinel(nodes[0].port)).collect();
        // Failover needs the sentinels to know each other and the replicas.
        poll(
            Duration::from_secs(30),
            "sentinels that know each other",
            || {
                sentinels
                    .iter()
                    .all(|s| {
                        let r = s.cli(&["SENTINEL", "master", "mymaster"]);
                        let field = |name: &str| {
                            let mut lines = r.lines();
                            while let Some(l) = lines.next() {
                                if l == name {
                                    return lines.next().unwrap_or("").to_string();
                                }
                            }
                            String::new()
                        };
                        field("num-other-sentinels") == "2" && field("num-slaves") == "2"
                    })
                    .then_some(())
            },
        );
        SentinelGroup { nodes, sentinels }
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| s.addr()).collect();
        format!(
            "redis+sentinel://:{PASSWORD}@{}/mymaster/0",
            hosts.join(",")
        )
    }

    /// The primary the sentinels name now.
    pub fn primary(&self) -> Option<String> {
        self.sentinels.iter().find_map(|s| {
            let out = s.cli(&["SENTINEL", "get-master-addr-by-name", "mymaster"]);
            let mut l = out.lines();
            Some(format!("{}:{}", l.next()?, l.next()?)).filter(|a| a.len() > 2)
        })
    }

    pub fn node(&mut self, addr: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.addr() == addr)
            .expect("a node of the group")
    }
}

/// Three primaries with a replica each, `cluster-node-timeout` 1000 ms.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<Node> = (0..6)
            .map(|_| {
                let bus = free_port();
                Node::redis(&[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                    "--cluster-node-timeout".into(),
                    "1000".into(),
                    "--cluster-port".into(),
                    bus.to_string(),
                ])
            })
            .collect();
        let mut cmd = Command::new("redis-cli");
        cmd.args(["--no-auth-warning", "-a", PASSWORD, "--cluster", "create"]);
        for n in &nodes {
            cmd.arg(n.addr());
        }
        let out = cmd
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster { nodes };
        poll(
            Duration::from_secs(30),
            "the cluster ok on every node, every primary with its replica in sync",
            || {
                let ok = c
                    .nodes
                    .iter()
                    .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
                let primaries: Vec<&Node> = c
                    .nodes
                    .iter()
                    .filter(|n| n.cli(&["ROLE"]).starts_with("master"))
                    .collect();
                (ok && primaries.len() == 3 && primaries.iter().all(|p| p.replicas().len() == 1))
                    .then_some(())
            },
        );
        c
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().take(3).map(|n| n.addr()).collect();
        format!("redis+cluster://:{PASSWORD}@{}", hosts.join(","))
    }

    /// The primary serving `key`'s slot, as the live nodes see it (agreed by all).
    pub fn primary_of(&self, key: &str) -> Option<String> {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
        let slot: u32 = live
            .first()?
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .ok()?;
        let mut seen = None;
        for n in live {
            // `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master> … <slots…>`
            let nodes = n.cli(&["CLUSTER", "NODES"]);
            let owner = nodes.lines().find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let flags = f.get(2)?;
                if !flags.contains("master") || flags.contains("fail") {
                    return None;
                }
                let serves = f.iter().skip(8).any(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    matches!((a.parse::<u32>(), b.parse::<u32>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                });
                serves.then(|| f[1].split('@').next().unwrap_or("").to_string())
            })?;
            if seen.get_or_insert(owner.clone()) != &owner {
                return None;
            }
        }
        seen
    }

    pub fn node(&mut self, addr: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.addr() == addr)
            .expect("a node of the cluster")
    }
}
