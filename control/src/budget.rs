//! Budgets of attempts that hold for the whole process: failed
//! authentications per source address and per API key id (brute force),
//! and OAuth sign-ins started per address. Each key has one token bucket
//! per process, whichever cell its connections land on.
//!
//! Why one table for all cells. Connections land on any cell
//! (SO_REUSEPORT hashes each connection's ports), so buckets kept per cell
//! gave an attacker N times the budget on N cells, one fresh connection at
//! a time. Routing each check to an owner cell over the bus (as orgs are)
//! was the other way: but the check runs before every authentication, so
//! it would put a hop on every request, or need each cell to keep a copy of
//! the owner's verdicts (stale by a hop, so again more than one budget).
//! Here the server makes each table once and hands it to every cell.
//!
//! What it costs. The table is split into [`SHARDS`] mutex-guarded shards
//! by the key's hash, and a lock is taken only where a budget is spent (a
//! failed attempt, a sign-in start) or while the key's shard may hold an
//! exhausted bucket. Each shard keeps, in an atomic, the latest moment any
//! of its buckets is empty until; an ordinary request's check is one hash
//! and one relaxed load of that atomic, which only failures write, so the
//! success path takes no lock and shares no cache line that is written.
//!
//! Exactness. Attempts one after the other meet exactly one budget per
//! process. Attempts in flight at once are each checked before any of them
//! is counted (a failure is only known after the check), so they may pass
//! by as many as are in flight, on one cell or several alike; a sign-in
//! start is checked and counted under one lock ([`Budgets::take`]).
//! Deliberately not shared between servers: a cluster's nodes each have
//! their own budgets.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::BruteForce;

/// Shards of each table: enough that cells rarely wait for one another.
pub const SHARDS: usize = 64;
/// Buckets kept per shard; past it, full buckets (the same as none) are
/// dropped, and if that is not enough the shard starts over, so a flood
/// of distinct addresses costs bounded memory.
const MAX_PER_SHARD: usize = 4096;

/// One token bucket per key, `max` per `window`, for the whole process.
pub struct Budgets<K> {
    /// Tokens per second.
    rate: f64,
    cap: f64,
    hasher: RandomState,
    /// The origin of the shards' `empty_until_ms`.
    epoch: Instant,
    shards: Box<[Shard<K>]>,
}

struct Shard<K> {
    /// Milliseconds after `epoch` until which some bucket of this shard
    /// may be empty (never earlier than any of them is): the lock-free
    /// check's "certainly not blocked" when now is past it.
    empty_until_ms: AtomicU64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K> std::fmt::Debug for Budgets<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("per_second", &self.rate)
            .field("max", &self.cap)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> Budgets<K> {
    /// `max` attempts per key in `window` (refilled continuously).
    pub fn new(max: u32, window: Duration) -> Self {
        Budgets {
            rate: f64::from(max) / window.as_secs_f64().max(0.001),
            cap: f64::from(max),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            shards: (0..SHARDS)
                .map(|_| Shard {
                    empty_until_ms: AtomicU64::new(0),
                    buckets: Mutex::new(HashMap::new()),
                })
                .collect(),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, k: &Q) -> &Shard<K> {
        // `String` and `str` hash alike, so a key may be looked up borrowed.
        let i = (self.hasher.hash_one(k) % SHARDS as u64) as usize;
        &self.shards[i]
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Tops `b` up for the time since it was last touched.
    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.cap);
        b.at = now;
    }

    /// Whole seconds until `b` holds a token again (at least 1), if empty.
    fn wait(&self, b: &Bucket) -> Option<u64> {
        (b.tokens < 1.0).then(|| ((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64)
    }

    /// `Some(seconds to wait)` while `k` has nothing left. No lock unless
    /// a bucket of `k`'s shard may be empty.
    pub fn blocked<Q>(&self, k: &Q) -> Option<u64>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard(k);
        if self.now_ms() >= shard.empty_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let mut buckets = shard.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let b = buckets.get_mut(k)?;
        self.refill(b, Instant::now());
        self.wait(b)
    }

    /// Spends one of `k`'s budget (a failed attempt).
    pub fn spend(&self, k: K) {
        let shard = self.shard(&k);
        let mut buckets = shard.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        self.spend_locked(shard, &mut buckets, k);
    }

    /// Spends one of `k`'s budget if it has one left; else `Err(seconds to
    /// wait)`, spending nothing. Checked and counted under one lock, so
    /// attempts at once cannot pass together.
    pub fn take(&self, k: K) -> Result<(), u64> {
        let shard = self.shard(&k);
        let mut buckets = shard.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = buckets.get_mut(&k) {
            self.refill(b, Instant::now());
            if let Some(wait) = self.wait(b) {
                return Err(wait);
            }
        }
        self.spend_locked(shard, &mut buckets, k);
        Ok(())
    }

    fn spend_locked(&self, shard: &Shard<K>, buckets: &mut HashMap<K, Bucket>, k: K) {
        let now = Instant::now();
        if buckets.len() >= MAX_PER_SHARD && !buckets.contains_key(&k) {
            buckets.retain(|_, b| {
                self.refill(b, now);
                b.tokens < self.cap
            });
            if buckets.len() >= MAX_PER_SHARD {
                buckets.clear();
            }
        }
        let b = buckets.entry(k).or_insert(Bucket {
            tokens: self.cap,
            at: now,
        });
        self.refill(b, now);
        b.tokens -= 1.0;
        if b.tokens < 1.0 {
            // Rounded up, so the lock-free check never ends a block early.
            let empty_for = Duration::from_secs_f64((1.0 - b.tokens) / self.rate);
            let until = now.saturating_duration_since(self.epoch) + empty_for;
            let until_ms = u64::try_from(until.as_millis()).unwrap_or(u64::MAX);
            shard
                .empty_until_ms
                .fetch_max(until_ms.saturating_add(1), Ordering::Relaxed);
        }
    }
}

/// The brute-force budgets of one process (`control.brute_force_*`), shared
/// by every cell's [`crate::Authenticator`]: failed attempts per source
/// address and per API key id.
#[derive(Debug)]
pub struct BruteForceBudgets {
    pub(crate) by_addr: Budgets<IpAddr>,
    pub(crate) by_key: Budgets<String>,
}

impl BruteForceBudgets {
    pub fn new(limit: BruteForce) -> Self {
        BruteForceBudgets {
            by_addr: Budgets::new(limit.max_failures, limit.window),
            by_key: Budgets::new(limit.max_failures, limit.window),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_budget_is_spent_by_many_threads() {
        let b = std::sync::Arc::new(Budgets::<IpAddr>::new(8, Duration::from_secs(60)));
        let ip: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(b.blocked(&ip), None);
        // Four "cells" spend two each: together, the whole budget.
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    b.spend(ip);
                    b.spend(ip);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let wait = b.blocked(&ip).expect("the one budget is spent");
        assert!((1..=8).contains(&wait), "{wait}");
        assert_eq!(b.blocked(&IpAddr::from([10, 0, 0, 2])), None);
        assert!(b.take(ip).is_err());
    }

    #[test]
    fn take_counts_and_refuses_under_one_lock() {
        let b = Budgets::<String>::new(2, Duration::from_millis(200));
        assert_eq!(b.take("k".to_owned()), Ok(()));
        assert_eq!(b.take("k".to_owned()), Ok(()));
        assert!(b.take("k".to_owned()).is_err());
        assert!(b.blocked("k").is_some(), "looked up by &str");
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(b.blocked("k"), None, "refilled");
        assert_eq!(b.take("k".to_owned()), Ok(()));
    }

    #[test]
    fn a_flood_of_keys_stays_bounded() {
        let b = Budgets::<u32>::new(1, Duration::from_secs(60));
        for k in 0..(SHARDS * MAX_PER_SHARD * 2) as u32 {
            b.spend(k);
        }
        for s in b.shards.iter() {
            assert!(s.buckets.lock().unwrap().len() <= MAX_PER_SHARD);
        }
    }
}
