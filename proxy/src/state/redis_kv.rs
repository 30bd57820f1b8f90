//! [`SharedKv`] on Redis: plain keys under the cluster's `kv:` namespace, one
//! command each (set-if-absent is a script so it also returns the winner).

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use redis::Script;

use super::kv::SharedKv;
use super::{RedisStore, StoreResult};

const SET_NX: &str = "local v = redis.call('GET', KEYS[1])
if v then return v end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return ARGV[1]";

fn ttl_ms(ttl: Option<Duration>) -> u64 {
    ttl.map(|t| (t.as_millis() as u64).max(1)).unwrap_or(0)
}

impl SharedKv for RedisStore {
    fn kv_get(&self, key: String) -> BoxFuture<'_, StoreResult<Option<Vec<u8>>>> {
        async move {
            let key = self.key(&format!("kv:{key}"));
            self.run(async |c| redis::cmd("GET").arg(&key).query_async(c).await)
                .await
        }
        .boxed()
    }

    fn kv_set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, StoreResult<()>> {
        async move {
            let key = self.key(&format!("kv:{key}"));
            let ms = ttl_ms(ttl);
            self.run(async |c| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&key).arg(&value);
                if ms > 0 {
                    cmd.arg("PX").arg(ms);
                }
                cmd.query_async::<()>(c).await
            })
            .await
        }
        .boxed()
    }

    fn kv_set_nx(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, StoreResult<Vec<u8>>> {
        async move {
            let key = self.key(&format!("kv:{key}"));
            let ms = ttl_ms(ttl);
            let script = Script::new(SET_NX);
            self.run(async |c| script.key(&key).arg(&value).arg(ms).invoke_async(c).await)
                .await
        }
        .boxed()
    }

    fn kv_delete(&self, key: String) -> BoxFuture<'_, StoreResult<()>> {
        async move {
            let key = self.key(&format!("kv:{key}"));
            self.run(async |c| redis::cmd("DEL").arg(&key).query_async::<()>(c).await)
                .await
        }
        .boxed()
    }
}
