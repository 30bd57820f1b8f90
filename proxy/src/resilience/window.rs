//! A sliding window of attempt outcomes: ten time buckets of `window / 10` each,
//! kept in atomics. A bucket is recycled when its time slot comes round again;
//! concurrent writers racing on a recycle may lose a count, which a failure-rate
//! estimate tolerates.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const BUCKETS: u64 = 10;

#[derive(Debug, Default)]
pub struct Window {
    buckets: [Bucket; BUCKETS as usize],
}

#[derive(Debug, Default)]
struct Bucket {
    /// Time slot (now / width) this bucket counts for, plus one (0 = never used).
    slot: AtomicU64,
    ok: AtomicU32,
    failed: AtomicU32,
}

fn width_ns(window: Duration) -> u64 {
    (window.as_nanos() as u64 / BUCKETS).max(1)
}

impl Window {
    pub fn record(&self, failed: bool, now_ns: u64, window: Duration) {
        let slot = now_ns / width_ns(window) + 1;
        let b = &self.buckets[(slot % BUCKETS) as usize];
        let seen = b.slot.load(Relaxed);
        if seen != slot
            && b.slot
                .compare_exchange(seen, slot, Relaxed, Relaxed)
                .is_ok()
        {
            b.ok.store(0, Relaxed);
            b.failed.store(0, Relaxed);
        }
        if failed {
            b.failed.fetch_add(1, Relaxed);
        } else {
            b.ok.fetch_add(1, Relaxed);
        }
    }

    /// (attempts, failures) over the last `window`.
    pub fn totals(&self, now_ns: u64, window: Duration) -> (u64, u64) {
        let current = now_ns / width_ns(window) + 1;
        let oldest = current.saturating_sub(BUCKETS - 1);
        let (mut total, mut failed) = (0u64, 0u64);
        for b in &self.buckets {
            let slot = b.slot.load(Relaxed);
            if slot >= oldest && slot <= current {
                let f = u64::from(b.failed.load(Relaxed));
                total += u64::from(b.ok.load(Relaxed)) + f;
                failed += f;
            }
        }
        (total, failed)
    }

    pub fn reset(&self) {
        for b in &self.buckets {
            b.slot.store(0, Relaxed);
            b.ok.store(0, Relaxed);
            b.failed.store(0, Relaxed);
        }
    }
}
