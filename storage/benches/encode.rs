//! Arrow encoding of an event batch: building the stored batch from parsed
//! events (what every JSON ingest does) and writing it as Arrow IPC stream
//! bytes (what every WAL frame and every Flight/HTTP Arrow answer does).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use honeycell_storage::{NewEvent, build_batch, event_schema};
use honeycell_types::OrgId;

const EVENTS: usize = 1000;

fn events() -> Vec<NewEvent> {
    (0..EVENTS)
        .map(|i| NewEvent {
            event_id: None,
            event_type: "UPDATE".into(),
            entity_type: "order".into(),
            entity_id: format!("order-{i}"),
            occurred_at_us: Some(1_795_000_000_000_000 + i as i64),
            data: Some(format!(
                r#"{{"total":{i},"currency":"EUR","items":[1,2,3]}}"#
            )),
            changes: Some(r#"{"status":{"old":"open","new":"paid"}}"#.into()),
            user_id: Some(format!("user-{}", i % 50)),
            trace_id: None,
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    let org = OrgId::new("bench").expect("org");
    let input = events();
    let mut group = c.benchmark_group("arrow_encode");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("build_batch_1000_events", |b| {
        b.iter(|| black_box(build_batch(&org, black_box(&input), 0).expect("batch")))
    });
    let batch = build_batch(&org, &input, 0).expect("batch");
    let schema = event_schema();
    group.bench_function("ipc_stream_write_1000_events", |b| {
        b.iter(|| {
            let mut w =
                arrow_ipc::writer::StreamWriter::try_new(Vec::with_capacity(256 * 1024), &schema)
                    .expect("writer");
            w.write(black_box(&batch)).expect("write");
            w.finish().expect("finish");
            black_box(w.into_inner().expect("bytes").len())
        })
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
