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
//! path waits for Redis. Connectivity is tracked from both the command connection
//! and the subscription, and its edges are broadcast as `Disconnected` /
//! `Reconnected` so the cluster layer can fall back and later resync and re-seed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use switchyard_shared::{ReplicaView, StoreView};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{
    Decision, MembershipChange, Overlay, OverlayEntry, OverlayOp, Record, StateStore, StoreError,
    StoreEvent, StoreResult, TokenGrant, TokenRequest,
};

const NOW_MS: &str = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

struct Scripts {
    change: Script,
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

const READ_OVERLAY: &str = "local v = redis.call('GET', KEYS[2]) or '0'\nlocal all = redis.call('HGETALL', KEYS[1])\ntable.insert(all, 1, v)\nreturn all\n";

impl Scripts {
    fn new() -> Self {
        Self {
            change: Script::new(
                "local v = redis.call('INCR', KEYS[2])
                 local entry = cjson.encode({url = ARGV[2], op = ARGV[3], weight = tonumber(ARGV[4]), seq = v})
                 redis.call('HSET', KEYS[1], ARGV[1], entry)
                 redis.call('PUBLISH', ARGV[5], 'membership:' .. v)
                 return tostring(v)",
            ),
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
    client: redis::Client,
    prefix: String,
    channel: String,
    timeout: Duration,
    on_store_error: String,
    conn: ArcSwapOption<ConnectionManager>,
    cmd_ok: AtomicBool,
    sub_ok: AtomicBool,
    last_error: Mutex<Option<String>>,
    errors: AtomicU64,
    events: broadcast::Sender<StoreEvent>,
    scripts: Scripts,
}

impl RedisStore {
    /// A store for cluster `name` at `url` (`redis://`, `rediss://`); nothing is
    /// connected until [`spawn`](Self::spawn).
    pub fn new(
        url: &str,
        name: &str,
        timeout: Duration,
        on_store_error: &str,
    ) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("cluster.redis_url: {e}"))?;
        let prefix = format!("switchyard:{{{name}}}:");
        Ok(Arc::new(Self {
            client,
            channel: format!("{prefix}events"),
            prefix,
            timeout,
            on_store_error: on_store_error.to_string(),
            conn: ArcSwapOption::empty(),
            cmd_ok: AtomicBool::new(false),
            sub_ok: AtomicBool::new(false),
            last_error: Mutex::new(None),
            errors: AtomicU64::new(0),
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

    pub(super) fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    async fn connect_loop(self: Arc<Self>) {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let mut backoff = Duration::from_millis(50);
        loop {
            match ConnectionManager::new_with_config(self.client.clone(), config.clone()).await {
                Ok(conn) => {
                    self.conn.store(Some(Arc::new(conn)));
                    self.set_ok(&self.cmd_ok, true, None);
                    break;
                }
                Err(e) => {
                    self.set_ok(&self.cmd_ok, false, Some(e.to_string()));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        // Keep checking: notices an outage while idle, and a recovery after one.
        loop {
            let down = !self.cmd_ok.load(Relaxed);
            tokio::time::sleep(if down {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(2)
            })
            .await;
            let _: StoreResult<String> = self
                .run(async |c| redis::cmd("PING").query_async(c).await)
                .await;
        }
    }

    async fn subscribe_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = tokio::time::timeout(self.timeout.max(Duration::from_secs(1)), async {
                let mut ps = self.client.get_async_pubsub().await?;
                ps.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(ps)
            })
            .await;
            match attempt {
                Ok(Ok(mut ps)) => {
                    backoff = Duration::from_millis(50);
                    self.set_ok(&self.sub_ok, true, None);
                    let mut stream = ps.on_message();
                    while let Some(msg) = stream.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        self.dispatch(&payload);
                    }
                    self.set_ok(&self.sub_ok, false, Some("subscription lost".into()));
                }
                Ok(Err(e)) => self.set_ok(&self.sub_ok, false, Some(e.to_string())),
                Err(_) => self.set_ok(&self.sub_ok, false, Some("subscribe timed out".into())),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
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

    /// Runs one command with the timeout, tracking connectivity.
    pub(super) async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    {
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError::Unavailable("not connected yet".into()));
        };
        let mut conn = (*conn).clone();
        let result = match tokio::time::timeout(self.timeout, f(&mut conn)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match result {
            Ok(v) => {
                self.set_ok(&self.cmd_ok, true, None);
                Ok(v)
            }
            Err(e) => {
                self.errors.fetch_add(1, Relaxed);
                self.set_ok(&self.cmd_ok, false, Some(e.clone()));
                Err(StoreError::Unavailable(e))
            }
        }
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
            let (overlay, version) = (self.key("overlay"), self.key("overlay:version"));
            let op = match change.op {
                OverlayOp::Add => "add",
                OverlayOp::Remove => "remove",
            };
            let _: String = self
                .run(async |c| {
                    self.scripts
                        .change
                        .key(&overlay)
                        .key(&version)
                        .arg(&change.key)
                        .arg(&change.url)
                        .arg(op)
                        .arg(change.weight)
                        .arg(&self.channel)
                        .invoke_async(c)
                        .await
                })
                .await?;
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
        }
    }

    fn is_connected(&self) -> bool {
        self.cmd_ok.load(Relaxed) && self.sub_ok.load(Relaxed)
    }
}
