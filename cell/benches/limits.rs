//! Cost of one rate-limit check (goal: under 50 ns), for an org and subject
//! already seen, as on the hot path.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use honeycell_cell::RateLimitConfig;
use honeycell_cell::limits::{OpKind, RateLimiter};

fn limit_check(c: &mut Criterion) {
    let config = RateLimitConfig {
        global_max_qps: u32::MAX,
        org_max_qps: u32::MAX,
        client_max_qps: u32::MAX,
        ..RateLimitConfig::default()
    };
    let now = Instant::now();
    let mut limiter = RateLimiter::new(&config, 2, now);
    // A realistic population of buckets in the cell.
    for i in 0..1_000 {
        let _ = limiter.check(&format!("org-{i}"), "svc", OpKind::Write, now);
    }
    c.bench_function("rate_limit_check", |b| {
        b.iter(|| {
            let r = limiter.check(black_box("org-500"), black_box("svc"), OpKind::Write, now);
            black_box(r.is_ok())
        })
    });
}

criterion_group!(benches, limit_check);
criterion_main!(benches);
