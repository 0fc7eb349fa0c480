//! WAL append latency with fsync durability: one 1000-event batch at a time,
//! and 16 such batches in flight at once, which group commit writes with one
//! fsync per drain of the I/O thread's queue.

use std::hint::black_box;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use honeycell_storage::{NewEvent, OrgLog, StorageConfig, Store, build_batch};
use honeycell_types::OrgId;
use tokio::task::LocalSet;

const EVENTS: usize = 1000;
/// Seal and drop the data every so many appends so that memory and disk use
/// stay flat however many iterations criterion asks for.
const CLEAN_EVERY: u64 = 64;

fn sample_batch(org: &OrgId) -> RecordBatch {
    let events: Vec<NewEvent> = (0..EVENTS)
        .map(|i| NewEvent {
            event_id: None,
            event_type: "UPDATE".into(),
            entity_type: "order".into(),
            entity_id: format!("order-{i}"),
            occurred_at_us: None,
            data: Some(format!(
                r#"{{"total":{i},"currency":"EUR","items":[1,2,3]}}"#
            )),
            changes: Some(r#"{"status":{"old":"open","new":"paid"}}"#.into()),
            user_id: Some("user-42".into()),
            trace_id: None,
        })
        .collect();
    build_batch(org, &events, 1_700_000_000_000_000).expect("valid events")
}

async fn clean(log: &OrgLog) {
    // A "now" far in the future makes every sealed segment expire.
    log.maintain(i64::MAX / 2, true).await.expect("maintenance");
}

fn bench_wal(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = LocalSet::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StorageConfig {
        retention: Some(Duration::from_secs(1)),
        ..StorageConfig::default()
    };
    let store = Store::open(dir.path(), config, "bench-io".into()).expect("store");
    let org = OrgId::new("bench").expect("org id");
    let log = local.block_on(&rt, store.org(&org)).expect("org log");
    let batch = sample_batch(&org);

    let mut group = c.benchmark_group("wal_append_fsync");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));

    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("1x1000_events", |b| {
        b.iter_custom(|iters| {
            local.block_on(&rt, async {
                let mut spent = Duration::ZERO;
                for i in 0..iters {
                    let start = Instant::now();
                    black_box(log.append(batch.clone()).await.expect("append"));
                    spent += start.elapsed();
                    if i % CLEAN_EVERY == CLEAN_EVERY - 1 {
                        clean(&log).await;
                    }
                }
                spent
            })
        })
    });

    const IN_FLIGHT: usize = 16;
    group.throughput(Throughput::Elements((EVENTS * IN_FLIGHT) as u64));
    group.bench_function("16x1000_events_group_commit", |b| {
        b.iter_custom(|iters| {
            local.block_on(&rt, async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let handles: Vec<_> = (0..IN_FLIGHT)
                        .map(|_| {
                            let log = log.clone();
                            let batch = batch.clone();
                            tokio::task::spawn_local(async move { log.append(batch).await })
                        })
                        .collect();
                    for h in handles {
                        black_box(h.await.expect("task").expect("append"));
                    }
                    spent += start.elapsed();
                    clean(&log).await;
                }
                spent
            })
        })
    });
    group.finish();

    drop(log);
    local.block_on(&rt, store.shutdown()).expect("shutdown");
}

criterion_group!(benches, bench_wal);
criterion_main!(benches);
