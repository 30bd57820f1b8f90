//! A replica's share of the cluster's global token buckets (see the parent module
//! for the accuracy argument).
//!
//! Per key the replica holds:
//! - `avail`: tokens the store granted and nobody has used yet;
//! - `credit`: requests it may admit before telling the store (`debt`), extended
//!   only while the store's bucket holds at least twice what every live replica
//!   could spend on credit, and at most 1.5× the key's demand per sync period;
//! - `dry_until`: the store said the bucket is empty; refuse locally until a token
//!   can have come back.
//!
//! A request that finds none of these waits for one store round trip
//! ([`Leases::fetch`]): every request of that key waiting on this replica is asked
//! for at once, and what the store grants goes to them in arrival order. The
//! background [`Leases::requests`]/[`Leases::apply`] round pays the debt and
//! refreshes the credit of every key with traffic, so a warm key never waits.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Decision, IdentityHasher, Limit, SHARDS, SYNC_PERIOD, shard_of};
use crate::state::{TokenGrant, TokenRequest};

/// Keys unused this long are forgotten (their unspent tokens are lost).
pub const LEASE_IDLE: Duration = Duration::from_secs(30);

/// Credit not refreshed for this long lapses: the bucket may have been drained by
/// other replicas meanwhile, so the next request asks the store (one round trip).
/// Keys with traffic are refreshed every sync period and never see it lapse.
const CREDIT_TTL: Duration = Duration::from_secs(1);

/// Requests of one key that may wait on one replica; more are decided by the
/// store-error fallback at once (bounded memory under a flood).
const MAX_WAITERS: usize = 4096;

/// A replica's share of one global bucket.
struct Lease {
    limit: Limit,
    /// Granted by the store, not yet used.
    avail: u32,
    /// Requests that may still be admitted on credit, and when it was extended.
    credit: u32,
    credit_at: Instant,
    /// Admitted on credit, not yet told to the store.
    debt: u32,
    /// Debt sent in a store call that has not answered yet.
    paying: u32,
    /// Requests seen this sync period, and in the last full one.
    demand: u32,
    last_demand: u32,
    /// The store's bucket was empty: refuse locally until then.
    dry_until: Option<Instant>,
    last_used: Instant,
    /// Requests waiting for the store, oldest first.
    waiters: Vec<oneshot::Sender<bool>>,
    /// How many of `waiters` the in-flight fetch asked tokens for (0: none in flight).
    asked: u32,
    /// In the pending list, waiting for a fetch.
    queued: bool,
}

impl Lease {
    fn new(limit: Limit, now: Instant) -> Self {
        Lease {
            limit,
            avail: 0,
            credit: 0,
            credit_at: now,
            debt: 0,
            paying: 0,
            demand: 0,
            last_demand: 0,
            dry_until: None,
            last_used: now,
            waiters: Vec::new(),
            asked: 0,
            queued: false,
        }
    }

    fn busy(&self) -> bool {
        self.debt > 0 || self.paying > 0 || !self.waiters.is_empty() || self.asked > 0
    }

    /// Credit after the store reported `remaining` tokens: half of an equal share
    /// of what is there, and no more than this key needed in a sync period and a
    /// half, less what was spent on credit that this answer does not count yet.
    fn refresh_credit(&mut self, remaining: f64, live: usize, now: Instant) {
        self.credit_at = now;
        let share = (remaining.max(0.0) / (2 * live.max(1)) as f64).floor();
        // The last full period's demand: a burst on a cold key goes through the
        // store (exact) rather than earning itself credit.
        let need = (f64::from(self.last_demand) * 1.5).ceil();
        self.credit = (share.min(need) as u32).saturating_sub(self.debt + self.paying);
    }

    /// The store's bucket is empty: until when this replica refuses by itself.
    fn mark_dry(&mut self, remaining: f64, now: Instant) {
        let wait = ((1.0 - remaining.min(0.0)) / self.limit.rate).clamp(0.001, 60.0);
        self.dry_until = Some(now + Duration::from_secs_f64(wait));
    }
}

/// What [`Leases::take`] decided.
pub enum Take {
    Now(Decision),
    /// Wait for the store's answer (`true`: admitted).
    Wait(oneshot::Receiver<bool>),
    /// Too many waiting already: decide with the fallback.
    Fallback,
}

type Shard = HashMap<u64, Lease, BuildHasherDefault<IdentityHasher>>;

/// Lease state per key, sharded like the local buckets and capped at `max_keys`.
pub struct Leases {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    /// Keys with requests waiting for a fetch.
    pending: Mutex<Vec<u64>>,
}

impl Leases {
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Decides locally if it can; else queues the request for a fetch. `wake` is
    /// called when a key joins the pending list.
    pub fn take(&self, key: u64, limit: Limit, now: Instant, wake: impl FnOnce()) -> Take {
        let mut shard = self.shards[shard_of(key)].lock();
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            evict(&mut shard, self.per_shard, now);
        }
        let l = shard.entry(key).or_insert_with(|| Lease::new(limit, now));
        if l.limit != limit {
            // The limit changed (a reload): what was extended for the old one goes.
            l.limit = limit;
            l.credit = 0;
        }
        l.demand = l.demand.saturating_add(1);
        l.last_used = now;
        if l.credit > 0 && now.saturating_duration_since(l.credit_at) > CREDIT_TTL {
            l.credit = 0;
        }
        if l.avail > 0 {
            l.avail -= 1;
            return Take::Now(Decision::Admit {
                remaining: f64::from(l.avail + l.credit),
            });
        }
        if l.credit > 0 {
            l.credit -= 1;
            l.debt += 1;
            return Take::Now(Decision::Admit {
                remaining: f64::from(l.credit),
            });
        }
        if let Some(until) = l.dry_until {
            if until > now {
                return Take::Now(Decision::Reject {
                    retry_after_s: until.saturating_duration_since(now).as_secs_f64(),
                });
            }
            l.dry_until = None;
        }
        if l.waiters.len() >= MAX_WAITERS {
            return Take::Fallback;
        }
        let (tx, rx) = oneshot::channel();
        l.waiters.push(tx);
        if l.asked == 0 && !l.queued {
            l.queued = true;
            drop(shard);
            self.pending.lock().push(key);
            wake();
        }
        Take::Wait(rx)
    }

    /// Keys with waiting requests: what to ask the store for now (their waiters'
    /// tokens, and their debts). Marks them in flight.
    pub fn fetch_requests(&self) -> Vec<(u64, TokenRequest)> {
        let keys = std::mem::take(&mut *self.pending.lock());
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let mut shard = self.shards[shard_of(key)].lock();
            let Some(l) = shard.get_mut(&key) else {
                continue;
            };
            l.queued = false;
            // Waiters whose request was dropped meanwhile need no token.
            l.waiters.retain(|w| !w.is_closed());
            if l.waiters.is_empty() || l.asked > 0 {
                continue;
            }
            l.asked = l.waiters.len() as u32;
            out.push((key, Self::request(key, l, l.asked)));
        }
        out
    }

    /// Every key with traffic, debt or leftover tokens since the last round: pay
    /// the debt, refresh the credit. Forgets keys idle for [`LEASE_IDLE`].
    pub fn sync_requests(&self, now: Instant) -> Vec<(u64, TokenRequest)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock();
            shard.retain(|_, l| {
                l.busy() || l.demand > 0 || now.saturating_duration_since(l.last_used) < LEASE_IDLE
            });
            for (key, l) in shard.iter_mut() {
                if l.demand == 0 {
                    // A quiet period: the next credit is sized from scratch.
                    l.last_demand = 0;
                }
                if l.asked > 0 || l.paying > 0 || (l.demand == 0 && l.debt == 0) {
                    continue;
                }
                out.push((*key, Self::request(*key, l, 0)));
            }
        }
        out
    }

    fn request(key: u64, l: &mut Lease, want: u32) -> TokenRequest {
        let debt = std::mem::take(&mut l.debt);
        l.paying += debt;
        TokenRequest {
            bucket: format!("{key:016x}"),
            rate: l.limit.rate,
            burst: l.limit.burst,
            want,
            debt,
        }
    }

    /// Books the store's answer to [`fetch_requests`](Self::fetch_requests) or
    /// [`sync_requests`](Self::sync_requests) (`None`: the call failed).
    pub fn apply(
        &self,
        asked: &[(u64, TokenRequest)],
        grants: Option<&[TokenGrant]>,
        live: usize,
        now: Instant,
        wake: impl Fn(),
    ) {
        for (i, (key, req)) in asked.iter().enumerate() {
            let mut shard = self.shards[shard_of(*key)].lock();
            let Some(l) = shard.get_mut(key) else {
                continue;
            };
            let fetch = req.want > 0;
            let Some(grant) = grants.and_then(|g| g.get(i)) else {
                // Not paid: owed again at the next call. Waiters learn of the
                // failure now (their receivers see the sender dropped) and fall back.
                l.paying = l.paying.saturating_sub(req.debt);
                l.debt += req.debt;
                if fetch {
                    let n = (l.asked as usize).min(l.waiters.len());
                    l.waiters.drain(..n);
                    l.asked = 0;
                }
                continue;
            };
            l.paying = l.paying.saturating_sub(req.debt);
            if !fetch {
                l.last_demand = l.demand;
                l.demand = 0;
            }
            l.refresh_credit(grant.remaining, live, now);
            let mut tokens = grant.granted;
            if !fetch && l.asked > 0 {
                // A sync that was sent before a fetch and answers first: the waiters
                // are the fetch's, whose answer brings their tokens. Serving them on
                // credit now would charge the bucket twice for them (the fetch's
                // tokens and the debt), refusing later requests it had room for.
                l.avail += tokens;
                if grant.remaining < 1.0 && l.avail == 0 && l.credit == 0 {
                    l.mark_dry(grant.remaining, now);
                }
                continue;
            }
            // Only a fetch's answer ends the fetch in flight.
            let asked_for = if fetch {
                std::mem::take(&mut l.asked)
            } else {
                0
            };
            // Tokens to the waiters in arrival order (also those that came while
            // the call was in flight), then credit, then the verdict.
            let mut served = Vec::new();
            for w in l.waiters.drain(..) {
                if tokens > 0 {
                    tokens -= 1;
                    served.push((w, true, false));
                } else if l.credit > 0 {
                    l.credit -= 1;
                    served.push((w, true, true));
                } else {
                    served.push((w, false, false));
                }
            }
            l.avail += tokens;
            let dry = grant.granted < asked_for || grant.remaining < 1.0;
            let mut left = Vec::new();
            for (w, admit, on_credit) in served {
                if admit {
                    match w.send(true) {
                        Ok(()) if on_credit => l.debt += 1,
                        Ok(()) => {}
                        // Gave up waiting: keep the token, or the credit.
                        Err(_) if on_credit => l.credit += 1,
                        Err(_) => l.avail += 1,
                    }
                } else if dry {
                    let _ = w.send(false);
                } else {
                    left.push(w);
                }
            }
            if dry && l.avail == 0 && l.credit == 0 {
                l.mark_dry(grant.remaining, now);
            }
            // More waiters than the call covered and the store has more: ask again.
            if !left.is_empty() {
                l.waiters = left;
                if !l.queued {
                    l.queued = true;
                    drop(shard);
                    self.pending.lock().push(*key);
                    wake();
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any key has requests waiting for a fetch.
    pub fn has_pending(&self) -> bool {
        !self.pending.lock().is_empty()
    }
}

/// Makes room in a full shard: idle keys without debt first, then any without.
fn evict(shard: &mut Shard, cap: usize, now: Instant) {
    shard.retain(|_, l| l.busy() || now.saturating_duration_since(l.last_used) < SYNC_PERIOD * 2);
    if shard.len() >= cap {
        let mut drop = (cap / 8).max(1);
        shard.retain(|_, l| {
            if drop > 0 && !l.busy() {
                drop -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn grant(granted: u32, remaining: f64) -> [TokenGrant; 1] {
        [TokenGrant { granted, remaining }]
    }

    fn wait(leases: &Leases, key: u64, limit: Limit, now: Instant) -> oneshot::Receiver<bool> {
        match leases.take(key, limit, now, || {}) {
            Take::Wait(rx) => rx,
            _ => panic!("a request of a key without tokens or credit waits"),
        }
    }

    /// A sync sent before a fetch answers first: the fetch's waiters get the
    /// fetch's tokens, not credit on top (which would charge the bucket twice).
    #[tokio::test(start_paused = true)]
    async fn a_sync_answering_before_a_fetch_leaves_its_waiters_to_it() {
        let leases = Leases::new(100);
        let limit = Limit {
            rate: 1000.0,
            burst: 200.0,
        };
        let (key, live, now) = (7, 2, Instant::now());
        let first: Vec<_> = (0..5).map(|_| wait(&leases, key, limit, now)).collect();
        let fetch = leases.fetch_requests();
        assert_eq!(fetch[0].1.want, 5);
        leases.apply(&fetch, Some(&grant(5, 195.0)), live, now, || {});
        for mut rx in first {
            assert_eq!(rx.try_recv(), Ok(true));
        }
        // The sync round goes out; then ten more requests, and their fetch.
        let sync = leases.sync_requests(now);
        assert_eq!((sync[0].1.want, sync[0].1.debt), (0, 0));
        let later: Vec<_> = (0..10).map(|_| wait(&leases, key, limit, now)).collect();
        let fetch = leases.fetch_requests();
        assert_eq!(fetch[0].1.want, 10);
        // The sync's answer comes first, and extends credit (15 requests this period).
        leases.apply(&sync, Some(&grant(0, 195.0)), live, now, || {});
        leases.apply(&fetch, Some(&grant(10, 185.0)), live, now, || {});
        for mut rx in later {
            assert_eq!(rx.try_recv(), Ok(true));
        }
        let shard = leases.shards[shard_of(key)].lock();
        let l = &shard[&key];
        assert_eq!(
            (l.debt, l.avail, l.asked),
            (0, 0, 0),
            "fifteen requests, fifteen tokens taken from the store"
        );
    }
}
