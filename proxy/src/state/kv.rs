//! Small shared blobs with an optional time to live: what TLS keeps in the cluster
//! store (session-ticket keys, the ACME account, certificates and pending challenge
//! tokens). A separate trait from [`super::StateStore`]'s policy operations so the
//! two grow apart without touching each other; both stores implement it (the Redis
//! side in `redis_kv.rs`).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::StoreResult;

/// Get / set / set-if-absent / delete of byte values under string keys. Keys are
/// relative: each store puts them under its cluster's namespace.
pub trait SharedKv: Send + Sync {
    /// The value, if present and not expired.
    fn kv_get(&self, key: String) -> BoxFuture<'_, StoreResult<Option<Vec<u8>>>>;

    /// Stores `value`, replacing any; `ttl` `None` keeps it until deleted.
    fn kv_set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, StoreResult<()>>;

    /// Stores `value` unless the key holds one; returns what the key holds
    /// afterwards (ours, or the one that was there first). Every replica racing for
    /// the same key ends up with the same value.
    fn kv_set_nx(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, StoreResult<Vec<u8>>>;

    fn kv_delete(&self, key: String) -> BoxFuture<'_, StoreResult<()>>;
}

/// A value and when it expires.
type Slot = (Vec<u8>, Option<Instant>);

/// The embedded store's blobs.
#[derive(Default)]
pub struct MemoryKv {
    map: Mutex<HashMap<String, Slot>>,
}

impl MemoryKv {
    fn live(entry: &Slot, now: Instant) -> bool {
        entry.1.is_none_or(|t| t > now)
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let mut map = self.map.lock();
        match map.get(key) {
            Some(e) if Self::live(e, now) => Some(e.0.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>) {
        let until = ttl.map(|t| Instant::now() + t);
        self.map.lock().insert(key, (value, until));
    }

    pub fn set_nx(&self, key: String, value: Vec<u8>, ttl: Option<Duration>) -> Vec<u8> {
        let now = Instant::now();
        let mut map = self.map.lock();
        if let Some(e) = map.get(&key)
            && Self::live(e, now)
        {
            return e.0.clone();
        }
        map.insert(key, (value.clone(), ttl.map(|t| now + t)));
        value
    }

    pub fn delete(&self, key: &str) {
        self.map.lock().remove(key);
    }
}

impl SharedKv for MemoryKv {
    fn kv_get(&self, key: String) -> BoxFuture<'_, StoreResult<Option<Vec<u8>>>> {
        let v = self.get(&key);
        async move { Ok(v) }.boxed()
    }

    fn kv_set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, StoreResult<()>> {
        self.set(key, value, ttl);
        async move { Ok(()) }.boxed()
    }

    fn kv_set_nx(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, StoreResult<Vec<u8>>> {
        let v = self.set_nx(key, value, ttl);
        async move { Ok(v) }.boxed()
    }

    fn kv_delete(&self, key: String) -> BoxFuture<'_, StoreResult<()>> {
        self.delete(&key);
        async move { Ok(()) }.boxed()
    }
}

impl SharedKv for super::MemoryStore {
    fn kv_get(&self, key: String) -> BoxFuture<'_, StoreResult<Option<Vec<u8>>>> {
        self.kv.kv_get(key)
    }

    fn kv_set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, StoreResult<()>> {
        self.kv.kv_set(key, value, ttl)
    }

    fn kv_set_nx(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, StoreResult<Vec<u8>>> {
        self.kv.kv_set_nx(key, value, ttl)
    }

    fn kv_delete(&self, key: String) -> BoxFuture<'_, StoreResult<()>> {
        self.kv.kv_delete(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn values_expire_and_set_nx_keeps_the_first() {
        let kv = MemoryKv::default();
        assert_eq!(kv.set_nx("a".into(), b"1".to_vec(), None), b"1");
        assert_eq!(kv.set_nx("a".into(), b"2".to_vec(), None), b"1");
        kv.set("t".into(), b"x".to_vec(), Some(Duration::from_secs(5)));
        assert_eq!(kv.get("t"), Some(b"x".to_vec()));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(kv.get("t"), None);
        assert_eq!(kv.set_nx("t".into(), b"y".to_vec(), None), b"y");
        kv.delete("a");
        assert_eq!(kv.get("a"), None);
    }
}
