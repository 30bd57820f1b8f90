//! The Redis store: cluster state shared by every replica.
//!
//! Keys live under `switchyard:{<cluster>}:` (the hash tag keeps a cluster on one
//! slot). Every operation that reads and writes is a Lua script, so it is atomic and
//! ordered by Redis; anything time-based (token refill, open-circuit deadlines,
//! heartbeat expiry) uses Redis' `TIME`, never a replica's clock. Changes are also
//! published on `switchyard:{<cluster>}:events` so replicas hear of them at once;
//! the periodic resync in `cluster` heals missed messages.
//!
//! Every command has a short timeout (`cluster.timeout`); nothing on the request
//! path waits for Redis (a cold rate-limit key waits at most one bounded round
//! trip). Connectivity is tracked from both the command connection and the
//! subscription, and its edges are broadcast as `Disconnected` / `Reconnected` so
//! the cluster layer can fall back and later resync and re-seed.
//!
//! Failover ([`topology`]): the supervisor reconnects after any failed command,
//! asking the sentinels (or the cluster) anew, and checks every 2 s who takes the
//! writes (`run_id`); a new primary, even one that took over without a visible
//! outage, is broadcast as `Reconnected` so replicas re-seed what it lacks and
//! resync. Membership changes wait for `WAIT 1` when the primary has replicas, so
//! an acknowledged admin change survives the primary's loss.

mod topology;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use redis::Script;
use switchyard_shared::{ReplicaView, StoreView};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use self::topology::{Conn, Topology};

use super::{
    Decision, MembershipChange, Overlay, OverlayEntry, OverlayOp, Record, StateStore, StoreError,
    StoreEvent, StoreResult, TokenGrant, TokenRequest,
};

const NOW_MS: &str = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

struct Scripts {
    read_membership: Script,
    reseed: Script,
    publish: Script,
    records: Script,
    lease: Script,
    release: Script,
    tokens: Script,
    heartbeat: Script,
    replicas: Script,
}

/// One membership change: keys overlay, version; args key, url, op, weight, channel.
const CHANGE: &str = "local v = redis.call('INCR', KEYS[2])
local entry = cjson.encode({url = ARGV[2], op = ARGV[3], weight = tonumber(ARGV[4]), seq = v})
redis.call('HSET', KEYS[1], ARGV[1], entry)
redis.call('PUBLISH', ARGV[5], 'membership:' .. v)
return tostring(v)";

const READ_OVERLAY: &str = "local v = redis.call('GET', KEYS[2]) or '0'\nlocal all = redis.call('HGETALL', KEYS[1])\ntable.insert(all, 1, v)\nreturn all\n";

impl Scripts {
    fn new() -> Self {
        Self {
            read_membership: Script::new(READ_OVERLAY),
            reseed: Script::new(&format!(
                "local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
                 if tonumber(ARGV[1]) > cur then
                   redis.call('DEL', KEYS[1])
                   for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
                   redis.call('SET', KEYS[2], ARGV[1])
                   redis.call('PUBLISH', ARGV[2], 'membership:' .. ARGV[1])
                 end
                 {READ_OVERLAY}"
            )),
            publish: Script::new(&format!(
                "{NOW_MS}
                 local v = redis.call('INCR', KEYS[2])
                 local rec = cjson.decode(ARGV[2])
                 rec['version'] = v
                 rec['until_ms'] = now + tonumber(ARGV[3])
                 local enc = cjson.encode(rec)
                 redis.call('HSET', KEYS[1], ARGV[1], enc)
                 redis.call('PUBLISH', ARGV[4], 'record:' .. enc)
                 return tostring(v)"
            )),
            records: Script::new(&format!(
                "{NOW_MS}
                 local all = redis.call('HGETALL', KEYS[1])
                 table.insert(all, 1, tostring(now))
                 return all"
            )),
            lease: Script::new(
                "local cur = redis.call('GET', KEYS[1])
                 if (not cur) or cur == ARGV[1] then
                   redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                   return '1'
                 end
                 return '0'",
            ),
            release: Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                 return '1'",
            ),
            tokens: Script::new(&format!(
                "{NOW_MS}
                 local out = {{}}
                 for i, key in ipairs(KEYS) do
                   local base = (i - 1) * 4
                   local rate = tonumber(ARGV[base + 1])
                   local burst = tonumber(ARGV[base + 2])
                   local want = tonumber(ARGV[base + 3])
                   local debt = tonumber(ARGV[base + 4])
                   local b = redis.call('HMGET', key, 'tokens', 'ts')
                   local tokens = tonumber(b[1])
                   local ts = tonumber(b[2])
                   if tokens == nil or ts == nil then tokens = burst; ts = now end
                   tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000) - debt
                   if tokens < -burst then tokens = -burst end
                   local g = math.max(0, math.min(want, math.floor(tokens)))
                   tokens = tokens - g
                   redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
                   redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
                   table.insert(out, tostring(g))
                   table.insert(out, tostring(tokens))
                 end
                 return out"
            )),
            heartbeat: Script::new(&format!(
                "{NOW_MS}
                 redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
                 redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
                 redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
                 return 'ok'"
            )),
            replicas: Script::new(&format!(
                "{NOW_MS}
                 local ids = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
                 local out = {{}}
                 for _, id in ipairs(ids) do
                   local v = redis.call('GET', ARGV[1] .. id)
                   if v then table.insert(out, v) end
                 end
                 return out"
            )),
        }
    }
}

pub struct RedisStore {
    topology: Topology,
    prefix: String,
    channel: String,
    timeout: Duration,
    on_store_error: String,
    conn: ArcSwapOption<Conn>,
    /// A connection of its own for membership changes: `WAIT` blocks the connection
    /// it runs on, and the shared one carries everything else.
    durable: tokio::sync::Mutex<Option<Conn>>,
    /// Poked when a command fails: check the connection now, not at the next tick.
    broken: tokio::sync::Notify,
    cmd_ok: AtomicBool,
    sub_ok: AtomicBool,
    last_error: Mutex<Option<String>>,
    errors: AtomicU64,
    /// The primary's `run_id` and address, as last seen.
    primary: Mutex<(Option<String>, Option<String>)>,
    failovers: AtomicU64,
    events: broadcast::Sender<StoreEvent>,
    scripts: Scripts,
}

/// Reconnect attempts while the store is unreachable: quick at first (a failover
/// is usually over within seconds), then every quarter second.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// How often a healthy connection is checked (who the primary is).
const WATCH_EVERY: Duration = Duration::from_secs(2);

impl RedisStore {
    /// A store for cluster `name` at `url` (`redis://`, `rediss://`, `unix://`,
    /// `redis+sentinel://`, `redis+cluster://`); nothing is connected until
    /// [`spawn`](Self::spawn).
    pub fn new(
        url: &str,
        name: &str,
        timeout: Duration,
        on_store_error: &str,
    ) -> Result<Arc<Self>, String> {
        let topology = Topology::parse(url).map_err(|e| format!("cluster.redis_url: {e}"))?;
        let prefix = format!("switchyard:{{{name}}}:");
        Ok(Arc::new(Self {
            topology,
            channel: format!("{prefix}events"),
            prefix,
            timeout,
            on_store_error: on_store_error.to_string(),
            conn: ArcSwapOption::empty(),
            durable: tokio::sync::Mutex::new(None),
            broken: tokio::sync::Notify::new(),
            cmd_ok: AtomicBool::new(false),
            sub_ok: AtomicBool::new(false),
            last_error: Mutex::new(None),
            errors: AtomicU64::new(0),
            primary: Mutex::new((None, None)),
            failovers: AtomicU64::new(0),
            events: broadcast::channel(1024).0,
            scripts: Scripts::new(),
        }))
    }

    /// Connects (and keeps reconnecting) in the background.
    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().connect_loop()),
            tokio::spawn(self.clone().subscribe_loop()),
        ]
    }

    /// Commands failed since start (a metric).
    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    /// `single`, `sentinel` or `cluster`.
    pub fn topology(&self) -> &'static str {
        self.topology.kind()
    }

    pub(super) fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// Connects to whoever takes the writes now, and learns who that is. Answers
    /// on the connection may take `patience`.
    async fn connect_primary(&self, patience: Duration) -> Result<(Conn, String, String), String> {
        let attempt = async {
            let (mut conn, addr) = self.topology.connect(self.timeout, patience).await?;
            let (run_id, cluster_addr) = conn.identify(&self.prefix).await?;
            Ok::<_, redis::RedisError>((conn, cluster_addr.unwrap_or(addr), run_id))
        };
        match tokio::time::timeout(self.timeout * 4, attempt).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no primary within {:?}", self.timeout * 4)),
        }
    }

    /// Records who the primary is; a different one than before (failover, or a
    /// restart) is announced so that replicas re-seed it and resync.
    fn adopt(&self, addr: String, run_id: String) {
        let before = {
            let mut p = self.primary.lock();
            let before = p.0.replace(run_id.clone());
            p.1 = Some(addr.clone());
            before
        };
        if before.is_some_and(|b| b != run_id) {
            self.failovers.fetch_add(1, Relaxed);
            warn!(primary = %addr, topology = self.topology.kind(), "state store primary changed: re-seeding and resyncing");
            // While connected no edge will say so: tell the cluster layer directly.
            if self.is_connected() {
                let _ = self.events.send(StoreEvent::Reconnected);
            }
        }
    }

    async fn connect_loop(self: Arc<Self>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.connect_primary(self.timeout).await {
                Ok((conn, addr, run_id)) => {
                    self.conn.store(Some(Arc::new(conn)));
                    self.adopt(addr, run_id);
                    self.set_ok(&self.cmd_ok, true, None);
                    backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    self.errors.fetch_add(1, Relaxed);
                    self.set_ok(&self.cmd_ok, false, Some(e));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            // Watch it: a failed command or the tick checks who the primary is; a
            // connection that cannot tell, or to a node that is no longer the
            // primary, is replaced (asking the sentinels or the cluster again).
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                    _ = self.broken.notified() => {}
                }
                let Some(conn) = self.conn.load_full() else {
                    break;
                };
                let mut conn = (*conn).clone();
                match tokio::time::timeout(self.timeout, conn.identify(&self.prefix)).await {
                    Ok(Ok((run_id, cluster_addr))) if !run_id.is_empty() => {
                        let addr = cluster_addr
                            .or_else(|| self.primary.lock().1.clone())
                            .unwrap_or_default();
                        self.adopt(addr, run_id);
                        self.set_ok(&self.cmd_ok, true, None);
                    }
                    Ok(Ok(_)) => {
                        self.errors.fetch_add(1, Relaxed);
                        self.set_ok(&self.cmd_ok, false, Some("not a primary".into()));
                        break;
                    }
                    Ok(Err(e)) => {
                        self.errors.fetch_add(1, Relaxed);
                        self.set_ok(&self.cmd_ok, false, Some(e.to_string()));
                        break;
                    }
                    Err(_) => {
                        self.errors.fetch_add(1, Relaxed);
                        self.set_ok(
                            &self.cmd_ok,
                            false,
                            Some(format!("no answer within {:?}", self.timeout)),
                        );
                        break;
                    }
                }
            }
        }
    }

    async fn subscribe_loop(self: Arc<Self>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let attempt = tokio::time::timeout(self.timeout.max(Duration::from_secs(1)), async {
                let (mut ps, at) = self.topology.pubsub(self.timeout).await?;
                ps.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>((ps, at))
            })
            .await;
            match attempt {
                Ok(Ok((mut ps, at))) => {
                    backoff = MIN_BACKOFF;
                    tracing::debug!(node = %at, "subscribed to the cluster's changes");
                    self.set_ok(&self.sub_ok, true, None);
                    let mut stream = ps.on_message();
                    while let Some(msg) = stream.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        self.dispatch(&payload);
                    }
                    self.set_ok(&self.sub_ok, false, Some("subscription lost".into()));
                    // Likely the node went away: check the command side now too.
                    self.broken.notify_one();
                }
                Ok(Err(e)) => self.set_ok(&self.sub_ok, false, Some(e.to_string())),
                Err(_) => self.set_ok(&self.sub_ok, false, Some("subscribe timed out".into())),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn dispatch(&self, payload: &str) {
        if let Some(v) = payload.strip_prefix("membership:") {
            if let Ok(v) = v.parse() {
                let _ = self.events.send(StoreEvent::Membership(v));
            }
        } else if let Some(json) = payload.strip_prefix("record:") {
            match serde_json::from_str::<Record>(json) {
                Ok(r) => {
                    let _ = self.events.send(StoreEvent::Record(r));
                }
                Err(e) => warn!(error = %e, "ignoring a malformed record from the store"),
            }
        }
    }

    /// Updates one side's health and broadcasts the edges of the combined state.
    fn set_ok(&self, flag: &AtomicBool, ok: bool, error: Option<String>) {
        let before = self.is_connected();
        flag.store(ok, Relaxed);
        if let Some(e) = &error {
            *self.last_error.lock() = Some(e.clone());
        }
        let after = self.is_connected();
        if before && !after {
            let e = error.unwrap_or_default();
            warn!(error = %e, "state store unreachable: serving on last-known state");
            let _ = self.events.send(StoreEvent::Disconnected(e));
        } else if !before && after {
            info!("state store connected");
            *self.last_error.lock() = None;
            let _ = self.events.send(StoreEvent::Reconnected);
        }
    }

    /// Runs one command with the timeout; a failure makes the supervisor check the
    /// connection.
    pub(super) async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: AsyncFnOnce(&mut Conn) -> redis::RedisResult<T>,
    {
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError::Unavailable("not connected yet".into()));
        };
        let mut conn = (*conn).clone();
        let result = match tokio::time::timeout(self.timeout, f(&mut conn)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        // Connectivity is the supervisor's to judge (a command that fails may have
        // started on a connection since replaced): it checks at once.
        result.map_err(|e| {
            self.errors.fetch_add(1, Relaxed);
            self.broken.notify_one();
            StoreError::Unavailable(e)
        })
    }

    /// Applies a membership change and waits until a replica has it (`WAIT 1`), on
    /// a connection of its own. With no replica connected to the primary there is
    /// nothing to wait for; with replicas and no confirmation in time the change is
    /// stored but reported as not durable.
    async fn durable_change(&self, change: &MembershipChange) -> StoreResult<()> {
        let (overlay, version) = (self.key("overlay"), self.key("overlay:version"));
        let op = match change.op {
            OverlayOp::Add => "add",
            OverlayOp::Remove => "remove",
        };
        // Replicas acknowledge within milliseconds; a replica that takes longer
        // than a command may is as good as absent.
        let wait = self.timeout;
        let wait_ms = wait.as_millis().max(1) as u64;
        // One change at a time per replica: `WAIT` counts this connection's writes.
        let mut slot = self.durable.lock().await;
        for attempt in 0..2 {
            let fresh = slot.is_none();
            if slot.is_none() {
                match self.connect_primary(self.timeout * 2 + wait).await {
                    Ok((conn, _, _)) => *slot = Some(conn),
                    Err(e) => {
                        self.errors.fetch_add(1, Relaxed);
                        return Err(StoreError::Unavailable(e));
                    }
                }
            }
            let Some(conn) = slot.as_mut() else {
                continue;
            };
            // The change, `WAIT` and `ROLE` in one pipeline on the one node that
            // holds the keys: `WAIT` on another node would count nothing of ours.
            let mut pipe = redis::pipe();
            pipe.cmd("EVAL")
                .arg(CHANGE)
                .arg(2)
                .arg(&overlay)
                .arg(&version)
                .arg(&change.key)
                .arg(&change.url)
                .arg(op)
                .arg(change.weight)
                .arg(&self.channel);
            pipe.cmd("WAIT").arg(1).arg(wait_ms);
            pipe.cmd("ROLE");
            let write = async {
                let replies = conn.pipeline_on_primary(pipe, &overlay).await?;
                let [v, acked, role] = replies.as_slice() else {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Parse,
                        "change: expected three replies",
                    )));
                };
                let _: String = redis::from_redis_value(v.clone())?;
                let acked: i64 = redis::from_redis_value(acked.clone())?;
                let replicas = match redis::from_redis_value::<redis::Role>(role.clone())? {
                    redis::Role::Primary { replicas, .. } => replicas.len(),
                    _ => 0,
                };
                Ok::<_, redis::RedisError>((acked, replicas))
            };
            match tokio::time::timeout(self.timeout * 3 + wait, write).await {
                Ok(Ok((acked, replicas))) => {
                    if acked == 0 && replicas > 0 {
                        return Err(StoreError::NotDurable(format!(
                            "change stored on the Redis primary, but none of its {replicas} replica(s) confirmed it within {wait_ms} ms: it could be lost if the primary fails now; send it again to confirm"
                        )));
                    }
                    return Ok(());
                }
                Ok(Err(e)) => {
                    *slot = None;
                    self.errors.fetch_add(1, Relaxed);
                    self.broken.notify_one();
                    // A cached connection may point at a former primary: once more
                    // on a fresh one.
                    if fresh || attempt == 1 {
                        return Err(StoreError::Unavailable(e.to_string()));
                    }
                }
                Err(_) => {
                    *slot = None;
                    self.errors.fetch_add(1, Relaxed);
                    return Err(StoreError::Unavailable(format!(
                        "no answer within {:?} (it may have been applied; sending it again is safe)",
                        self.timeout * 3 + wait
                    )));
                }
            }
        }
        Err(StoreError::Unavailable("no primary".into()))
    }

    fn parse_overlay(raw: Vec<String>) -> StoreResult<Overlay> {
        let mut it = raw.into_iter();
        let version = it
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| StoreError::Protocol("overlay version".into()))?;
        let mut entries = std::collections::BTreeMap::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let e: OverlayEntry = serde_json::from_str(&v)
                .map_err(|e| StoreError::Protocol(format!("overlay entry {k}: {e}")))?;
            entries.insert(k, e);
        }
        Ok(Overlay { version, entries })
    }

    fn record_field(r: &Record) -> String {
        format!("{}|{}", r.decision.kind(), r.key)
    }
}

fn remaining_of(d: &Decision) -> u64 {
    match d {
        Decision::Circuit { remaining_ms, .. } | Decision::Ejection { remaining_ms, .. } => {
            *remaining_ms
        }
        Decision::Health { .. } => 0,
    }
}

impl StateStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn membership(&self) -> BoxFuture<'_, StoreResult<Overlay>> {
        async move {
            let (overlay, version) = (self.key("overlay"), self.key("overlay:version"));
            let raw: Vec<String> = self
                .run(async |c| {
                    self.scripts
                        .read_membership
                        .key(&overlay)
                        .key(&version)
                        .invoke_async(c)
                        .await
                })
                .await?;
            Self::parse_overlay(raw)
        }
        .boxed()
    }

    fn change_membership(&self, change: MembershipChange) -> BoxFuture<'_, StoreResult<Overlay>> {
        async move {
            if !self.is_connected() {
                return Err(StoreError::Unavailable(
                    self.last_error
                        .lock()
                        .clone()
                        .unwrap_or_else(|| "not connected".into()),
                ));
            }
            self.durable_change(&change).await?;
            self.membership().await
        }
        .boxed()
    }

    fn reseed_membership(&self, mine: Overlay) -> BoxFuture<'_, StoreResult<Overlay>> {
        async move {
            let (overlay, version) = (self.key("overlay"), self.key("overlay:version"));
            let mut fields = Vec::new();
            for (k, e) in &mine.entries {
                fields.push(k.clone());
                fields.push(
                    serde_json::to_string(e).map_err(|e| StoreError::Protocol(e.to_string()))?,
                );
            }
            let raw: Vec<String> = self
                .run(async |c| {
                    let mut inv = self.scripts.reseed.key(&overlay);
                    inv.key(&version).arg(mine.version).arg(&self.channel);
                    for f in &fields {
                        inv.arg(f);
                    }
                    inv.invoke_async(c).await
                })
                .await?;
            Self::parse_overlay(raw)
        }
        .boxed()
    }

    fn publish(&self, record: Record) -> BoxFuture<'_, StoreResult<()>> {
        async move {
            let json =
                serde_json::to_string(&record).map_err(|e| StoreError::Protocol(e.to_string()))?;
            let field = Self::record_field(&record);
            let remaining = remaining_of(&record.decision);
            let (records, version) = (self.key("records"), self.key("records:version"));
            let _: String = self
                .run(async |c| {
                    self.scripts
                        .publish
                        .key(&records)
                        .key(&version)
                        .arg(&field)
                        .arg(&json)
                        .arg(remaining)
                        .arg(&self.channel)
                        .invoke_async(c)
                        .await
                })
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn records(&self) -> BoxFuture<'_, StoreResult<Vec<Record>>> {
        async move {
            let key = self.key("records");
            let raw: Vec<String> = self
                .run(async |c| self.scripts.records.key(&key).invoke_async(c).await)
                .await?;
            let mut it = raw.into_iter();
            let now: u64 = it
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| StoreError::Protocol("records time".into()))?;
            let mut out = Vec::new();
            while let (Some(_field), Some(json)) = (it.next(), it.next()) {
                let v: serde_json::Value =
                    serde_json::from_str(&json).map_err(|e| StoreError::Protocol(e.to_string()))?;
                let until = v.get("until_ms").and_then(|u| u.as_f64()).unwrap_or(0.0) as u64;
                let mut r: Record =
                    serde_json::from_value(v).map_err(|e| StoreError::Protocol(e.to_string()))?;
                let left = until.saturating_sub(now);
                match &mut r.decision {
                    Decision::Circuit { remaining_ms, .. }
                    | Decision::Ejection { remaining_ms, .. } => *remaining_ms = left,
                    Decision::Health { .. } => {}
                }
                out.push(r);
            }
            Ok(out)
        }
        .boxed()
    }

    fn try_lease(
        &self,
        name: String,
        holder: String,
        ttl: Duration,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        async move {
            let key = self.key(&format!("lease:{name}"));
            let ms = ttl.as_millis().max(1) as u64;
            let r: String = self
                .run(async |c| {
                    self.scripts
                        .lease
                        .key(&key)
                        .arg(&holder)
                        .arg(ms)
                        .invoke_async(c)
                        .await
                })
                .await?;
            Ok(r == "1")
        }
        .boxed()
    }

    fn release_lease(&self, name: String, holder: String) -> BoxFuture<'_, StoreResult<()>> {
        async move {
            let key = self.key(&format!("lease:{name}"));
            let _: String = self
                .run(async |c| {
                    self.scripts
                        .release
                        .key(&key)
                        .arg(&holder)
                        .invoke_async(c)
                        .await
                })
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn take_tokens(
        &self,
        requests: Vec<TokenRequest>,
    ) -> BoxFuture<'_, StoreResult<Vec<TokenGrant>>> {
        async move {
            if requests.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = requests
                .iter()
                .map(|r| self.key(&format!("rl:{}", r.bucket)))
                .collect();
            let raw: Vec<String> = self
                .run(async |c| {
                    let mut inv = self.scripts.tokens.prepare_invoke();
                    for (k, r) in keys.iter().zip(&requests) {
                        inv.key(k).arg(r.rate).arg(r.burst).arg(r.want).arg(r.debt);
                    }
                    inv.invoke_async(c).await
                })
                .await?;
            if raw.len() != requests.len() * 2 {
                return Err(StoreError::Protocol("token grant count".into()));
            }
            Ok(raw
                .chunks(2)
                .map(|p| TokenGrant {
                    granted: p[0].parse().unwrap_or(0),
                    remaining: p[1].parse().unwrap_or(0.0),
                })
                .collect())
        }
        .boxed()
    }

    fn heartbeat(&self, replica: ReplicaView, ttl: Duration) -> BoxFuture<'_, StoreResult<()>> {
        async move {
            let json =
                serde_json::to_string(&replica).map_err(|e| StoreError::Protocol(e.to_string()))?;
            let (rkey, zset) = (
                self.key(&format!("replica:{}", replica.id)),
                self.key("replicas"),
            );
            let ms = ttl.as_millis().max(1) as u64;
            let _: String = self
                .run(async |c| {
                    self.scripts
                        .heartbeat
                        .key(&rkey)
                        .key(&zset)
                        .arg(&replica.id)
                        .arg(&json)
                        .arg(ms)
                        .invoke_async(c)
                        .await
                })
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn replicas(&self) -> BoxFuture<'_, StoreResult<Vec<ReplicaView>>> {
        async move {
            let (zset, prefix) = (self.key("replicas"), self.key("replica:"));
            let raw: Vec<String> = self
                .run(async |c| {
                    self.scripts
                        .replicas
                        .key(&zset)
                        .arg(&prefix)
                        .invoke_async(c)
                        .await
                })
                .await?;
            let mut out: Vec<ReplicaView> = raw
                .iter()
                .filter_map(|j| serde_json::from_str(j).ok())
                .collect();
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        }
        .boxed()
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    fn status(&self) -> StoreView {
        StoreView {
            kind: "redis".into(),
            connected: self.is_connected(),
            last_error: self.last_error.lock().clone(),
            on_store_error: self.on_store_error.clone(),
            errors: self.errors.load(Relaxed),
            topology: self.topology.kind().into(),
            primary: self.primary.lock().1.clone(),
            failovers: self.failovers.load(Relaxed),
        }
    }

    fn is_connected(&self) -> bool {
        self.cmd_ok.load(Relaxed) && self.sub_ok.load(Relaxed)
    }
}
