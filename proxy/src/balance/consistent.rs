//! Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2016;
//! Envoy's `hash_balance_factor`, HAProxy's `hash-balance-factor`).
//!
//! Each member owns `256 × weight` points on a 64-bit ring (xxh3 of its key and
//! the point's number, so every replica builds the same ring; capped at
//! [`MAX_POINTS`] in all). A request's key (`consistent_hash.key`) hashes to a
//! point; the walk goes clockwise from there and takes the first eligible member
//! whose in-flight load is below
//!
//! ```text
//! cap = ceil((1 + balance_factor) × (in_flight_total + 1) / eligible_members)
//! ```
//!
//! so no backend carries more than `1 + balance_factor` times the mean, and a key
//! leaves its home backend only while that backend is full. Adding or removing
//! one of N backends moves about 1/N of the keys (only the arcs the changed
//! backend owns). A request without the key lands on a random point.
//!
//! Slow start: a ramping backend keeps the share `ramp` of the keys that land on
//! it, chosen by a second hash of the key (so a key once admitted stays as the
//! ramp grows); the others go on clockwise, where they lived before it joined.

use std::time::Duration;

use tokio::time::Instant;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::Balance;
use crate::backend::Member;
use crate::config::ConsistentHashConfig;

/// Points per unit of weight.
pub const POINTS_PER_WEIGHT: u64 = 256;
/// Ring size bound (weights are scaled down to fit).
pub const MAX_POINTS: u64 = 1 << 16;

pub struct ConsistentHash {
    /// (point, member index), sorted.
    ring: Vec<(u64, u32)>,
    /// `1 + balance_factor`.
    bound: f64,
    slow_start: Option<Duration>,
}

impl ConsistentHash {
    pub fn new(
        members: &[Member],
        config: &ConsistentHashConfig,
        slow_start: Option<Duration>,
    ) -> Self {
        let wanted: u64 = members
            .iter()
            .map(|m| POINTS_PER_WEIGHT * u64::from(m.weight.max(1)))
            .sum();
        let scale = if wanted > MAX_POINTS {
            MAX_POINTS as f64 / wanted as f64
        } else {
            1.0
        };
        let mut ring = Vec::with_capacity(wanted.min(MAX_POINTS) as usize + members.len());
        for (i, m) in members.iter().enumerate() {
            let points = POINTS_PER_WEIGHT * u64::from(m.weight.max(1));
            let points = ((points as f64 * scale).round() as u64).max(1);
            let key = m.backend.key.as_bytes();
            ring.extend((0..points).map(|p| (xxh3_64_with_seed(key, p), i as u32)));
        }
        ring.sort_unstable();
        Self {
            ring,
            bound: 1.0 + config.balance_factor.0,
            slow_start,
        }
    }

    /// Points on the ring (for tests and figures).
    pub fn points(&self) -> usize {
        self.ring.len()
    }
}

/// SplitMix64's finaliser: spreads a hash over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Balance for ConsistentHash {
    fn pick(
        &self,
        members: &[Member],
        eligible: &dyn Fn(usize) -> bool,
        now: Instant,
    ) -> Option<usize> {
        self.pick_keyed(members, eligible, None, now)
    }

    fn pick_keyed(
        &self,
        members: &[Member],
        eligible: &dyn Fn(usize) -> bool,
        key: Option<u64>,
        now: Instant,
    ) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let (mut n, mut total) = (0u64, 0u64);
        for (i, m) in members.iter().enumerate() {
            if eligible(i) {
                n += 1;
                total += m.backend.active();
            }
        }
        if n == 0 {
            return None;
        }
        let cap = (self.bound * (total + 1) as f64 / n as f64).ceil() as u64;
        let point = mix(key.unwrap_or_else(|| fastrand::u64(..)));
        // Where in its slow start this key gets in: [0, 1).
        let admit = (mix(point ^ 0x5157_5EED) >> 11) as f64 / (1u64 << 53) as f64;
        let start = self.ring.partition_point(|&(p, _)| p < point);
        let len = self.ring.len();
        let mut refused = usize::MAX;
        let mut ramping = None;
        for k in 0..len {
            let i = self.ring[(start + k) % len].1 as usize;
            if i == refused || i >= members.len() {
                continue;
            }
            let m = &members[i];
            if !eligible(i) || m.backend.active() >= cap {
                refused = i;
                continue;
            }
            if let Some(window) = self.slow_start
                && admit >= m.backend.ramp(now, window)
            {
                ramping.get_or_insert(i);
                refused = i;
                continue;
            }
            return Some(i);
        }
        // Every member with room is ramping and passed this key on: the first.
        ramping
    }
}
