//! Where the cluster state lives and how to reach the node that takes its writes:
//! one Redis (`redis://`, `rediss://`, `unix://`), a group watched by Sentinel
//! (`redis+sentinel://`) or a Redis Cluster (`redis+cluster://`).
//!
//! - **Sentinel**: redis-rs' sentinel client asks the sentinels for the primary and
//!   checks it with `ROLE`; every reconnect asks again, so a failover is followed.
//! - **Cluster**: redis-rs' cluster client follows slot moves and promotions. Every
//!   key of a Switchyard cluster carries the `{name}` hash tag: one slot, one
//!   primary, so the Lua scripts keep working. Commands that name no key (`WAIT`,
//!   `ROLE`, `INFO`) are routed to that slot's primary explicitly.
//!
//! Pub/sub: on the primary (single, Sentinel); on any reachable node for Cluster,
//! since a classic `PUBLISH` reaches every node of a Redis Cluster.

use std::fmt;
use std::time::Duration;

use futures_util::FutureExt;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, IntoConnectionInfo, RedisFuture, RedisResult,
    TlsMode, Value,
};

/// A parsed `cluster.redis_url`.
pub enum Topology {
    /// One Redis: `redis://`, `rediss://`, `unix://`, `redis+unix://`.
    Single(redis::Client),
    /// `redis+sentinel://[user:password@]host:port[,host:port…]/<master>[/<db>]`.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// `redis+cluster://[user:password@]host:port[,host:port…]`.
    Cluster(redis::cluster::ClusterClient, Vec<redis::ConnectionInfo>),
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// The pieces of a multi-host URL.
#[derive(Debug, PartialEq)]
struct MultiHost {
    tls: bool,
    username: Option<String>,
    password: Option<String>,
    hosts: Vec<(String, u16)>,
    /// Path segments (without empty ones).
    path: Vec<String>,
    /// `key=value` pairs after `?`.
    query: Vec<(String, String)>,
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

fn parse_multi(rest: &str, tls: bool, default_port: u16) -> Result<MultiHost, String> {
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q),
        None => (rest, ""),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = match u.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (u, None),
            };
            let user = (!user.is_empty())
                .then(|| percent_decode(user))
                .transpose()?;
            let pass = pass
                .filter(|p| !p.is_empty())
                .map(percent_decode)
                .transpose()?;
            (user, pass)
        }
    };
    let mut out = Vec::new();
    for h in hosts.split(',').filter(|h| !h.is_empty()) {
        let (host, port) = if let Some(v6) = h.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{h}`: unclosed `[`"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p,
                None if after.is_empty() => "",
                None => return Err(format!("`{h}`: expected `:port` after `]`")),
            };
            (host.to_string(), port)
        } else {
            match h.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), port),
                None => (h.to_string(), ""),
            }
        };
        if host.is_empty() {
            return Err(format!("`{h}`: empty host"));
        }
        let port = if port.is_empty() {
            default_port
        } else {
            port.parse()
                .map_err(|_| format!("`{h}`: port must be a number 1-65535"))?
        };
        out.push((host, port));
    }
    if out.is_empty() {
        return Err("no host given".into());
    }
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Ok((k.to_string(), percent_decode(v)?))
        })
        .collect::<Result<_, String>>()?;
    Ok(MultiHost {
        tls,
        username,
        password,
        hosts: out,
        path: path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        query,
    })
}

fn addr(tls: bool, host: &str, port: u16) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_string(), port)
    }
}

impl Topology {
    /// Parses a `cluster.redis_url`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Topology, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("expected <scheme>://… (redis, rediss, unix, redis+sentinel, redis+cluster)")?;
        match scheme {
            "redis+sentinel" | "rediss+sentinel" => {
                Self::sentinel(rest, scheme.starts_with("rediss"))
            }
            "redis+cluster" | "rediss+cluster" => Self::cluster(rest, scheme.starts_with("rediss")),
            "redis" | "rediss" | "unix" | "redis+unix" => redis::Client::open(url)
                .map(Topology::Single)
                .map_err(|e| e.to_string()),
            other => Err(format!(
                "unknown scheme `{other}`: use redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
            )),
        }
    }

    fn sentinel(rest: &str, tls: bool) -> Result<Topology, String> {
        let m = parse_multi(rest, tls, 26379)?;
        let usage = "redis+sentinel://[:password@]host:26379[,host:26379…]/<master name>[/<db>]";
        let (master, db) = match m.path.as_slice() {
            [master] => (master.clone(), 0),
            [master, db] => (
                master.clone(),
                db.parse::<i64>()
                    .map_err(|_| format!("db `{db}` is not a number ({usage})"))?,
            ),
            [] => return Err(format!("the master name is missing ({usage})")),
            _ => return Err(format!("too many path segments ({usage})")),
        };
        let mut b = SentinelClientBuilder::new(
            m.hosts.iter().map(|(h, p)| addr(tls, h, *p)),
            &master,
            SentinelServerType::Master,
        )
        .map_err(|e| e.to_string())?
        .set_client_to_redis_db(db);
        if let Some(u) = &m.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &m.password {
            b = b.set_client_to_redis_password(p);
        }
        if tls {
            b = b
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        }
        for (k, v) in &m.query {
            b = match k.as_str() {
                "sentinel_username" => b.set_client_to_sentinel_username(v),
                "sentinel_password" => b.set_client_to_sentinel_password(v),
                other => {
                    return Err(format!(
                        "unknown parameter `{other}` (sentinel_username, sentinel_password)"
                    ));
                }
            };
        }
        let client = b.build().map_err(|e| e.to_string())?;
        Ok(Topology::Sentinel(tokio::sync::Mutex::new(client)))
    }

    fn cluster(rest: &str, tls: bool) -> Result<Topology, String> {
        let m = parse_multi(rest, tls, 6379)?;
        if !(m.path.is_empty() || m.path == ["0"]) {
            return Err(
                "Redis Cluster has only db 0: redis+cluster://[:password@]host:6379[,host:6379…]"
                    .into(),
            );
        }
        if let Some((k, _)) = m.query.first() {
            return Err(format!("unknown parameter `{k}`"));
        }
        let mut nodes = Vec::new();
        for (h, p) in &m.hosts {
            let mut info = addr(tls, h, *p)
                .into_connection_info()
                .map_err(|e| e.to_string())?;
            let mut settings = info.redis_settings().clone();
            if let Some(u) = &m.username {
                settings = settings.set_username(u);
            }
            if let Some(p) = &m.password {
                settings = settings.set_password(p);
            }
            info = info.set_redis_settings(settings);
            nodes.push(info);
        }
        let mut b = ClusterClientBuilder::new(nodes.clone());
        if let Some(u) = &m.username {
            b = b.username(u);
        }
        if let Some(p) = &m.password {
            b = b.password(p);
        }
        if tls {
            b = b.tls(TlsMode::Secure);
        }
        let client = b.build().map_err(|e| e.to_string())?;
        Ok(Topology::Cluster(client, nodes))
    }

    /// `single`, `sentinel` or `cluster`.
    pub fn kind(&self) -> &'static str {
        match self {
            Topology::Single(_) => "single",
            Topology::Sentinel(_) => "sentinel",
            Topology::Cluster(..) => "cluster",
        }
    }

    /// A connection to the node that takes the writes, and that node's address.
    /// Each call looks again (asks the sentinels; builds a fresh cluster client view).
    /// `patience` bounds each answer (longer than any `WAIT` sent on it).
    pub async fn connect(
        &self,
        timeout: Duration,
        patience: Duration,
    ) -> RedisResult<(Conn, String)> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(patience));
        match self {
            Topology::Single(client) => {
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok((Conn::Node(conn), show(client.get_connection_info().addr())))
            }
            Topology::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok((Conn::Node(conn), show(client.get_connection_info().addr())))
            }
            Topology::Cluster(client, _) => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(patience);
                let conn = client.get_async_connection_with_config(config).await?;
                Ok((Conn::Cluster(conn), String::new()))
            }
        }
    }

    /// A pub/sub connection that hears the cluster's `PUBLISH`es, and where it is.
    pub async fn pubsub(&self, timeout: Duration) -> RedisResult<(PubSub, String)> {
        match self {
            Topology::Single(client) => Ok((
                client.get_async_pubsub().await?,
                show(client.get_connection_info().addr()),
            )),
            Topology::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                Ok((
                    client.get_async_pubsub().await?,
                    show(client.get_connection_info().addr()),
                ))
            }
            Topology::Cluster(_, nodes) => {
                // Any node will do; start at a different one each time so that a
                // dead first seed does not delay every attempt.
                let start = fastrand::usize(..nodes.len().max(1));
                let mut last = None;
                for i in 0..nodes.len() {
                    let info = &nodes[(start + i) % nodes.len()];
                    let attempt = async {
                        let client = redis::Client::open(info.clone())?;
                        client.get_async_pubsub().await
                    };
                    match tokio::time::timeout(timeout, attempt).await {
                        Ok(Ok(ps)) => return Ok((ps, show(info.addr()))),
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => {}
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "no cluster node answered a subscription",
                    ))
                }))
            }
        }
    }
}

fn show(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            if h.contains(':') {
                format!("[{h}]:{p}")
            } else {
                format!("{h}:{p}")
            }
        }
        ConnectionAddr::Unix(path) => format!("unix:{}", path.display()),
        other => format!("{other:?}"),
    }
}

/// A connection to the primary of the cluster's slot.
#[derive(Clone)]
pub enum Conn {
    /// One node (single Redis, or the primary Sentinel named).
    Node(MultiplexedConnection),
    /// Redis Cluster: routed by key.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Runs `pipe` on one node, the primary that holds `key` (for a single node,
    /// simply on it), and returns every reply. One node for all of it matters:
    /// `WAIT` counts the writes this connection made on that node.
    pub fn pipeline_on_primary<'a>(
        &'a mut self,
        pipe: redis::Pipeline,
        key: &'a str,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => async move { pipe.query_async(c).await }.boxed(),
            Conn::Cluster(c) => async move {
                let n = pipe.cmd_iter().count();
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                c.route_pipeline(pipe, 0, n, SingleNodeRoutingInfo::SpecificNode(route))
                    .await
            }
            .boxed(),
        }
    }

    /// Who takes the writes for `key` right now: its `run_id` (new after a
    /// failover or a restart) and, for Redis Cluster, its address. An error if the
    /// node answering is not that primary (e.g. a former primary, demoted; or,
    /// while a Redis Cluster fails over, another node).
    pub async fn identify(&mut self, key: &str) -> RedisResult<(String, Option<String>)> {
        let cluster = matches!(self, Conn::Cluster(_));
        let mut pipe = redis::pipe();
        pipe.cmd("INFO");
        if cluster {
            pipe.cmd("CLUSTER").arg("NODES");
            pipe.cmd("CLUSTER").arg("KEYSLOT").arg(key);
        }
        let replies = self.pipeline_on_primary(pipe, key).await?;
        let text = |i: usize| -> RedisResult<String> {
            match replies.get(i) {
                Some(v) => Ok(redis::from_redis_value(v.clone())?),
                None => Err(not_primary("a reply is missing".into())),
            }
        };
        let info = text(0)?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let (run_id, role) = (field("run_id"), field("role"));
        if role != "master" {
            return Err(not_primary(format!("the node answers with role `{role}`")));
        }
        if !cluster {
            return Ok((run_id, None));
        }
        // `<id> <ip:port@cport[,hostname]> myself,master <…> <…> <…> <…> <…> <slots…>`
        let nodes = text(1)?;
        let slot: u32 = match replies.get(2) {
            Some(v) => redis::from_redis_value(v.clone())?,
            None => return Err(not_primary("a reply is missing".into())),
        };
        let me = nodes
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f.get(2).is_some_and(|flags| flags.contains("myself")))
            .ok_or_else(|| not_primary("CLUSTER NODES has no `myself`".into()))?;
        let serves = me.iter().skip(8).any(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            matches!((a.parse::<u32>(), b.parse::<u32>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
        });
        if !serves {
            return Err(not_primary(format!("the node does not serve slot {slot}")));
        }
        let addr = me
            .get(1)
            .map(|a| a.split(['@', ',']).next().unwrap_or(a).to_string());
        Ok((run_id, addr))
    }
}

fn not_primary(detail: String) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
        "not the primary",
        detail,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_host_urls() {
        let m = parse_multi(":s3cr%40t@10.0.0.1:26379,10.0.0.2/mymaster/2", false, 26379)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.username, None);
        assert_eq!(m.password.as_deref(), Some("s3cr@t"));
        assert_eq!(
            m.hosts,
            vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26379)]
        );
        assert_eq!(m.path, vec!["mymaster", "2"]);
        let m =
            parse_multi("user:pw@[::1]:7000,[::1]", false, 6379).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.username.as_deref(), Some("user"));
        assert_eq!(m.hosts, vec![("::1".into(), 7000), ("::1".into(), 6379)]);
        assert!(parse_multi("h:notaport", false, 1).is_err());
        assert!(parse_multi("@", false, 1).is_err());
    }

    #[test]
    fn the_contract_urls_parse() {
        for url in [
            "redis+sentinel://:password@10.0.0.1:26379,10.0.0.2:26379/mymaster/0",
            "redis+sentinel://10.0.0.1/mymaster",
            "redis+cluster://:password@10.0.0.1:6379,10.0.0.2:6379",
            "redis://127.0.0.1:6379/0",
            "unix:///tmp/redis.sock",
        ] {
            let t = Topology::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(!t.kind().is_empty());
        }
        let kind = |u: &str| Topology::parse(u).map(|t| t.kind());
        assert_eq!(kind("redis+sentinel://h:1/m/0"), Ok("sentinel"));
        assert_eq!(kind("redis+cluster://h:1,h:2"), Ok("cluster"));
        assert_eq!(kind("redis://h:1"), Ok("single"));
        let err = |u: &str| Topology::parse(u).err().unwrap_or_default();
        assert!(err("redis+sentinel://h:26379").contains("master name"));
        assert!(err("redis+sentinel://h/m/x").contains("db"));
        assert!(err("redis+cluster://h/3").contains("db 0"));
        assert!(err("memcached://h").contains("unknown scheme"));
        assert!(err("redis+sentinel://h/m?bogus=1").contains("bogus"));
    }
}
