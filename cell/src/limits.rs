//! Token buckets: the per-org, per-subject and per-cell rate limits.
//!
//! A bucket lives in exactly one cell (the owner of its org), so it is a
//! plain struct with no atomics or locks; the exactness of per-tenant limits
//! comes from placement, not from coordination. Time is passed in, which
//! keeps the check a few arithmetic operations (see `benches/limits.rs`)
//! and makes it testable without sleeping.

use hashbrown::HashMap;
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;

/// A token bucket refilled continuously at `rate` tokens per second.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    rate: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: f64, capacity: f64, now: Instant) -> Self {
        let capacity = capacity.max(1.0);
        Self {
            tokens: capacity,
            capacity,
            rate: rate_per_sec.max(f64::MIN_POSITIVE),
            updated: now,
        }
    }

    /// Changes the rate and capacity (a tier change), keeping the tokens.
    fn set_rate(&mut self, rate_per_sec: f64, capacity: f64, now: Instant) {
        let rate = rate_per_sec.max(f64::MIN_POSITIVE);
        if rate != self.rate {
            self.refill(now);
            self.rate = rate;
            self.capacity = capacity.max(1.0);
            self.tokens = self.tokens.min(self.capacity);
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.updated = now;
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    /// Gives one token back (used when a later check in the same request fails).
    pub fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }
}

/// Reads and writes are limited separately, so an analyst's bulk reads never
/// starve the org's ingest and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    Read,
    Write,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
        }
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    Cell,
    Org,
    Subject,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Cell => "cell",
            LimitScope::Org => "org",
            LimitScope::Subject => "subject",
        }
    }
}

/// A refused request: which limit, and when to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub scope: LimitScope,
    pub kind: OpKind,
    pub retry_after: Duration,
}

/// The buckets of one org: its own, per kind, and those of its subjects.
#[derive(Debug)]
struct OrgBuckets {
    org: [TokenBucket; 2],
    subjects: HashMap<String, [TokenBucket; 2]>,
}

/// All buckets of one cell. Keys are looked up by `&str` with hashbrown's
/// `entry_ref` (one foldhash per map), so a check allocates only the first
/// time it sees an org or subject.
#[derive(Debug)]
pub struct RateLimiter {
    enabled: bool,
    cell: [TokenBucket; 2],
    org_rate: f64,
    client_rate: f64,
    burst: f64,
    orgs: HashMap<String, OrgBuckets>,
}

impl RateLimiter {
    /// The limiter of one cell out of `cells`: the global budget is split evenly.
    pub fn new(config: &RateLimitConfig, cells: u32, now: Instant) -> Self {
        let per_cell = f64::from(config.global_max_qps) / f64::from(cells.max(1));
        let bucket = TokenBucket::new(per_cell, per_cell * config.burst_seconds, now);
        Self {
            enabled: config.enabled,
            cell: [bucket.clone(), bucket],
            org_rate: f64::from(config.org_max_qps),
            client_rate: f64::from(config.client_max_qps),
            burst: config.burst_seconds,
            orgs: HashMap::new(),
        }
    }

    /// One limit check: the cell's share of the global budget, the org's
    /// bucket and the subject's bucket for this kind of operation. Either all
    /// three take a token or none does.
    pub fn check(
        &mut self,
        org: &str,
        subject: &str,
        kind: OpKind,
        now: Instant,
    ) -> Result<(), Limited> {
        self.check_with(org, subject, kind, now, None)
    }

    /// [`RateLimiter::check`] with the org's own rate (its quota tier's
    /// `max_qps`) in place of `org_max_qps`; a changed rate applies to the
    /// org's existing buckets at once.
    pub fn check_with(
        &mut self,
        org: &str,
        subject: &str,
        kind: OpKind,
        now: Instant,
        org_rate: Option<f64>,
    ) -> Result<(), Limited> {
        if !self.enabled {
            return Ok(());
        }
        let k = kind as usize;
        let limited = |scope, retry_after| Limited {
            scope,
            kind,
            retry_after,
        };
        self.cell[k]
            .try_take(now)
            .map_err(|d| limited(LimitScope::Cell, d))?;

        let org_rate = org_rate.unwrap_or(self.org_rate);
        let (client_rate, burst) = (self.client_rate, self.burst);
        // One hash per map; the key is allocated only the first time.
        let buckets = self.orgs.entry_ref(org).or_insert_with(|| {
            let b = TokenBucket::new(org_rate, org_rate * burst, now);
            OrgBuckets {
                org: [b.clone(), b],
                subjects: HashMap::new(),
            }
        });
        buckets.org[k].set_rate(org_rate, org_rate * burst, now);
        if let Err(d) = buckets.org[k].try_take(now) {
            self.cell[k].refund();
            return Err(limited(LimitScope::Org, d));
        }
        let subject_buckets = buckets.subjects.entry_ref(subject).or_insert_with(|| {
            let b = TokenBucket::new(client_rate, client_rate * burst, now);
            [b.clone(), b]
        });
        if let Err(d) = subject_buckets[k].try_take(now) {
            buckets.org[k].refund();
            self.cell[k].refund();
            return Err(limited(LimitScope::Subject, d));
        }
        Ok(())
    }

    /// Drops buckets that are full again (idle tenants), bounding memory.
    pub fn evict_idle(&mut self, now: Instant) {
        let busy = |b: &mut [TokenBucket; 2]| {
            b.iter_mut().any(|b| {
                b.refill(now);
                b.tokens < b.capacity
            })
        };
        self.orgs.retain(|_, o| {
            o.subjects.retain(|_, b| busy(b));
            busy(&mut o.org) || !o.subjects.is_empty()
        });
    }

    /// Number of per-org and per-subject buckets held (for metrics).
    pub fn buckets(&self) -> usize {
        self.orgs.values().map(|o| 1 + o.subjects.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(global: u32, org: u32, client: u32) -> RateLimitConfig {
        RateLimitConfig {
            enabled: true,
            global_max_qps: global,
            org_max_qps: org,
            client_max_qps: client,
            burst_seconds: 1.0,
        }
    }

    #[test]
    fn bucket_refills_at_rate_and_caps_at_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        for _ in 0..5 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).expect_err("empty bucket");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(b.try_take(t0 + Duration::from_millis(100)).is_ok());
        // A long idle period refills only up to the capacity.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(b.try_take(later).is_ok());
        }
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn org_limit_is_per_org_and_per_kind() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(&config(1_000, 3, 100), 1, t0);
        for _ in 0..3 {
            assert!(l.check("a", "u", OpKind::Write, t0).is_ok());
        }
        let err = l
            .check("a", "u", OpKind::Write, t0)
            .expect_err("org a exhausted");
        assert_eq!(err.scope, LimitScope::Org);
        // Reads of the same org and writes of another org are unaffected.
        assert!(l.check("a", "u", OpKind::Read, t0).is_ok());
        assert!(l.check("b", "u", OpKind::Write, t0).is_ok());
    }

    #[test]
    fn subject_limit_refunds_the_outer_buckets() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(&config(1_000, 10, 2), 1, t0);
        assert!(l.check("a", "u1", OpKind::Read, t0).is_ok());
        assert!(l.check("a", "u1", OpKind::Read, t0).is_ok());
        let err = l
            .check("a", "u1", OpKind::Read, t0)
            .expect_err("subject exhausted");
        assert_eq!(err.scope, LimitScope::Subject);
        // The refused call did not use up org tokens: 8 more by other subjects pass.
        for i in 0..8 {
            assert!(l.check("a", &format!("s{i}"), OpKind::Read, t0).is_ok());
        }
        assert_eq!(
            l.check("a", "s9", OpKind::Read, t0).expect_err("org").scope,
            LimitScope::Org
        );
    }

    #[test]
    fn global_budget_is_divided_among_cells() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(&config(8, 100, 100), 4, t0);
        assert!(l.check("a", "u", OpKind::Read, t0).is_ok());
        assert!(l.check("b", "u", OpKind::Read, t0).is_ok());
        let err = l
            .check("c", "u", OpKind::Read, t0)
            .expect_err("cell share is 2/s");
        assert_eq!(err.scope, LimitScope::Cell);
    }

    #[test]
    fn disabled_limiter_admits_everything() {
        let t0 = Instant::now();
        let mut c = config(1, 1, 1);
        c.enabled = false;
        let mut l = RateLimiter::new(&c, 1, t0);
        for _ in 0..100 {
            assert!(l.check("a", "u", OpKind::Write, t0).is_ok());
        }
    }

    #[test]
    fn idle_buckets_are_evicted() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(&config(1_000, 10, 10), 1, t0);
        assert!(l.check("a", "u", OpKind::Read, t0).is_ok());
        assert_eq!(l.buckets(), 2);
        l.evict_idle(t0 + Duration::from_secs(10));
        assert_eq!(l.buckets(), 0);
    }
}
