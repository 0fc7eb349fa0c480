#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use honeycell_types::{ErrorClass, OrgId};

use crate::io::wal_file_name;
use crate::segment::segment_file_name;
use crate::*;

const NOW: i64 = 1_700_000_000_000_000;
const HOUR_US: i64 = 3_600_000_000;

fn org(name: &str) -> OrgId {
    OrgId::new(name).unwrap()
}

fn events(n: usize, tag: &str, occurred_at_us: Option<i64>) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent {
            event_id: None,
            event_type: "INSERT".into(),
            entity_type: "order".into(),
            entity_id: format!("{tag}-{i}"),
            occurred_at_us,
            data: Some(format!(r#"{{"i":{i}}}"#)),
            changes: None,
            user_id: Some("u1".into()),
            trace_id: None,
        })
        .collect()
}

fn batch(o: &OrgId, n: usize, tag: &str) -> RecordBatch {
    build_batch(o, &events(n, tag, None), NOW).unwrap()
}

fn open(dir: &Path, config: StorageConfig) -> Store {
    Store::open(dir, config, "test-io".into()).unwrap()
}

/// Entity ids of a snapshot in offset order.
fn entity_ids(s: &OrgSnapshot) -> Vec<String> {
    let mut out = Vec::new();
    let mut expected = s.first_offset();
    for c in s.chunks() {
        assert_eq!(c.first_offset, expected, "chunks must be contiguous");
        expected = c.end_offset();
        let col = c.batch.column(4).as_string::<i32>();
        out.extend(col.iter().map(|v| v.unwrap().to_owned()));
    }
    assert_eq!(expected, s.end_offset());
    out
}

fn files(dir: &Path, o: &OrgId, sub: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("orgs").join(o.as_str()).join(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn wal_path(dir: &Path, o: &OrgId, first: u64) -> PathBuf {
    dir.join("orgs")
        .join(o.as_str())
        .join("wal")
        .join(wal_file_name(first))
}

#[test]
fn wal_frames_roundtrip() {
    let o = org("acme");
    let batches = [batch(&o, 3, "a"), batch(&o, 1, "b"), batch(&o, 5, "c")];
    let mut bytes = Vec::new();
    let mut offset = 0;
    for b in &batches {
        bytes.extend(wal::encode_frame(offset, b).unwrap());
        offset += b.num_rows() as u64;
    }
    let (frames, bad) = wal::scan(&bytes);
    assert_eq!(bad, None);
    assert_eq!(frames.len(), 3);
    assert_eq!(
        frames.iter().map(|f| f.first_offset).collect::<Vec<_>>(),
        vec![0, 3, 4]
    );
    for (f, b) in frames.iter().zip(&batches) {
        assert_eq!(&f.batch, b);
    }
}

#[test]
fn wal_scan_stops_at_torn_tail_and_flipped_byte() {
    let o = org("acme");
    let f1 = wal::encode_frame(0, &batch(&o, 2, "a")).unwrap();
    let f2 = wal::encode_frame(2, &batch(&o, 2, "b")).unwrap();
    let f3 = wal::encode_frame(4, &batch(&o, 2, "c")).unwrap();
    let all = [f1.clone(), f2.clone(), f3.clone()].concat();

    for cut in [1, wal::HEADER_LEN, f3.len() - 1] {
        let torn = &all[..all.len() - cut];
        let (frames, bad) = wal::scan(torn);
        assert_eq!(frames.len(), 2, "cut {cut}");
        assert_eq!(bad.unwrap().pos, (f1.len() + f2.len()) as u64);
    }

    let mut flipped = all.clone();
    flipped[f1.len() + wal::HEADER_LEN + 40] ^= 0x10;
    let (frames, bad) = wal::scan(&flipped);
    assert_eq!(frames.len(), 1);
    let bad = bad.unwrap();
    assert_eq!(bad.pos, f1.len() as u64);
    assert!(bad.reason.contains("checksum"), "{}", bad.reason);
}

#[tokio::test]
async fn append_then_reopen_gives_same_events_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    let a = log.append(batch(&o, 3, "a")).await.unwrap();
    let b = log.append(batch(&o, 2, "b")).await.unwrap();
    assert_eq!((a.first_offset, a.rows), (0, 3));
    assert_eq!((b.first_offset, b.rows), (3, 2));
    let before = log.snapshot();
    assert_eq!(entity_ids(&before), ["a-0", "a-1", "a-2", "b-0", "b-1"]);
    store.shutdown().await.unwrap();
    drop(log);

    let store = open(dir.path(), StorageConfig::default());
    assert_eq!(store.orgs_on_disk().unwrap(), vec![o.clone()]);
    let log = store.org(&o).await.unwrap();
    let after = log.snapshot();
    assert_eq!((after.first_offset(), after.end_offset()), (0, 5));
    assert_eq!(entity_ids(&after), entity_ids(&before));
    let c = log.append(batch(&o, 1, "c")).await.unwrap();
    assert_eq!(c.first_offset, 5);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn store_truncates_torn_wal_tail_and_keeps_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    let mut acks = Vec::new();
    for tag in ["a", "b", "c"] {
        acks.push(log.append(batch(&o, 2, tag)).await.unwrap());
    }
    store.shutdown().await.unwrap();
    drop(log);

    let path = wal_path(dir.path(), &o, 0);
    let len = std::fs::metadata(&path).unwrap().len();
    let good = len - acks[2].bytes;
    // kill -9 in the middle of the last frame:
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 7).unwrap();
    drop(f);

    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    assert_eq!(entity_ids(&log.snapshot()), ["a-0", "a-1", "b-0", "b-1"]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
    assert_eq!(log.append(batch(&o, 1, "d")).await.unwrap().first_offset, 4);
    store.shutdown().await.unwrap();
    drop(log);

    // A flipped byte inside the second frame: only the first survives.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = acks[0].bytes as usize + wal::HEADER_LEN + 10;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    assert_eq!(entity_ids(&log.snapshot()), ["a-0", "a-1"]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), acks[0].bytes);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_appends_share_fsyncs_and_become_visible_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Rc::new(open(dir.path(), StorageConfig::default()));
    let orgs = [org("acme"), org("globex")];
    let logs = [
        store.org(&orgs[0]).await.unwrap(),
        store.org(&orgs[1]).await.unwrap(),
    ];
    const TASKS: usize = 64;
    let local = tokio::task::LocalSet::new();
    let fsyncs_before = store.wal_fsyncs();
    // Hold the I/O thread so that every append is queued before it drains.
    let release = store.hold_io_for_tests();
    let results = local
        .run_until(async {
            let mut handles = Vec::new();
            for t in 0..TASKS {
                let log = logs[t % 2].clone();
                let o = orgs[t % 2].clone();
                handles.push(tokio::task::spawn_local(async move {
                    let ack = log.append(batch(&o, 3, &format!("t{t}"))).await.unwrap();
                    // Once acked, this append and every earlier one are visible.
                    let snap = log.snapshot();
                    assert!(snap.end_offset() >= ack.first_offset + 3);
                    assert_eq!(snap.num_rows() as u64, snap.end_offset());
                    (t, ack)
                }));
            }
            while store.queued_writes() < TASKS {
                tokio::task::yield_now().await;
            }
            release.send(()).unwrap();
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out
        })
        .await;
    assert!(store.queued_writes() == 0);
    // One group, two WAL files touched: one fsync each.
    let fsyncs = store.wal_fsyncs() - fsyncs_before;
    assert_eq!(fsyncs, 2, "{fsyncs} fsyncs for {TASKS} appends to two orgs");
    for (i, log) in logs.iter().enumerate() {
        let ids = entity_ids(&log.snapshot());
        assert_eq!(ids.len(), TASKS / 2 * 3);
        for (t, ack) in results.iter().filter(|(t, _)| t % 2 == i) {
            assert_eq!(ids[ack.first_offset as usize], format!("t{t}-0"));
        }
    }
    drop(logs);
    Rc::try_unwrap(store).unwrap().shutdown().await.unwrap();
}

use std::rc::Rc;

#[tokio::test]
async fn dropped_append_future_still_becomes_visible() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    let release = store.hold_io_for_tests();
    let mut first = Box::pin(log.append(batch(&o, 2, "a")));
    // Poll once so the append is queued, then abandon it.
    assert!(futures_poll_once(first.as_mut()).await.is_none());
    drop(first);
    drop(release);
    let ack = log.append(batch(&o, 1, "b")).await.unwrap();
    assert_eq!(ack.first_offset, 2);
    assert_eq!(entity_ids(&log.snapshot()), ["a-0", "a-1", "b-0"]);
    store.shutdown().await.unwrap();
}

async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn seal_then_reopen_reads_segments_zero_copy() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    let a = log.append(batch(&o, 3, "a")).await.unwrap();
    let b = log.append(batch(&o, 2, "b")).await.unwrap();
    assert_eq!(log.stored_bytes(), a.bytes + b.bytes);
    assert!(store.buffered_bytes() > 0);
    assert!(!log.needs_maintenance(NOW));

    let report = log.maintain(NOW, true).await.unwrap();
    assert_eq!((report.sealed_segments, report.sealed_rows), (1, 5));
    assert_eq!(store.buffered_bytes(), 0);
    assert_eq!(files(dir.path(), &o, "segments"), [segment_file_name(0, 5)]);
    // The sealed WAL file is gone; a fresh empty one takes the next offsets.
    assert_eq!(files(dir.path(), &o, "wal"), [wal_file_name(5)]);
    let seg_bytes = std::fs::metadata(
        dir.path()
            .join("orgs/acme/segments")
            .join(segment_file_name(0, 5)),
    )
    .unwrap()
    .len();
    assert_eq!(log.stored_bytes(), seg_bytes);
    assert_zero_copy(&log);

    let c = log.append(batch(&o, 1, "c")).await.unwrap();
    assert_eq!(c.first_offset, 5);
    assert_eq!(log.stored_bytes(), seg_bytes + c.bytes);
    let before = entity_ids(&log.snapshot());
    store.shutdown().await.unwrap();
    drop(log);

    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    assert_eq!(entity_ids(&log.snapshot()), before);
    assert_eq!(log.event_count(), 6);
    assert_eq!(log.stored_bytes(), seg_bytes + c.bytes);
    assert_zero_copy(&log);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn appends_do_not_wait_for_a_seal_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    log.append(batch(&o, 3, "a")).await.unwrap();
    // The seal's segment write is held on the segment thread…
    let hold = store.hold_segments_for_tests();
    let seal = log.maintain(NOW, true);
    tokio::pin!(seal);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut seal)
            .await
            .is_err(),
        "the seal waits for the segment thread"
    );
    // …and an append meanwhile is written, made durable and visible.
    let b = tokio::time::timeout(Duration::from_secs(10), log.append(batch(&o, 2, "b")))
        .await
        .expect("the append must not queue behind the seal")
        .unwrap();
    assert_eq!(b.first_offset, 3);
    assert_eq!(log.snapshot().num_rows(), 5);
    drop(hold);
    let report = seal.await.unwrap();
    assert_eq!((report.sealed_segments, report.sealed_rows), (1, 3));
    assert_eq!(files(dir.path(), &o, "segments"), [segment_file_name(0, 3)]);
    let ids = entity_ids(&log.snapshot());
    assert_eq!(ids, ["a-0", "a-1", "a-2", "b-0", "b-1"]);
    // Restart: the sealed rows come from the segment, the rest from the WAL.
    store.shutdown().await.unwrap();
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    assert_eq!(entity_ids(&log.snapshot()), ids);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn sealed_segments_carry_their_summary_in_the_footer() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    log.append(build_batch(&o, &events(3, "a", Some(NOW)), NOW).unwrap())
        .await
        .unwrap();
    log.append(build_batch(&o, &events(2, "b", Some(NOW + HOUR_US)), NOW).unwrap())
        .await
        .unwrap();
    log.maintain(NOW, true).await.unwrap();
    log.append(batch(&o, 1, "tail")).await.unwrap();
    let snapshot = log.snapshot();
    let [seg] = snapshot.segments() else {
        panic!("one segment: {:?}", snapshot.segments());
    };
    assert_eq!((seg.first, seg.end), (0, 5));
    assert_eq!(
        (seg.min_occurred_at_us, seg.max_occurred_at_us),
        (NOW, NOW + HOUR_US)
    );
    let summary = seg.summary.clone().expect("a summary");
    let minute = |t: i64| t.div_euclid(60_000_000) * 60_000_000;
    let rows: Vec<_> = summary
        .rows
        .iter()
        .map(|r| (r.bucket_start_us, &*r.entity_type, &*r.event_type, r.count))
        .collect();
    assert_eq!(
        rows,
        [
            (minute(NOW), "order", "INSERT", 3),
            (minute(NOW + HOUR_US), "order", "INSERT", 2)
        ]
    );
    // It is in the file's footer, and read back from there.
    let path = dir
        .path()
        .join("orgs/acme/segments")
        .join(segment_file_name(0, 5));
    let reader =
        arrow_ipc::reader::FileReader::try_new(std::fs::File::open(&path).unwrap(), None).unwrap();
    assert!(
        reader
            .custom_metadata()
            .contains_key(crate::summary::FOOTER_KEY)
    );
    store.shutdown().await.unwrap();
    drop(log);
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    let again = log.snapshot();
    assert_eq!(again.segments()[0].summary.as_deref(), Some(&*summary));
    store.shutdown().await.unwrap();
}

/// Every buffer of every sealed chunk points into its segment's mapping.
fn assert_zero_copy(log: &OrgLog) {
    let st = log.inner_state_for_tests();
    assert!(!st.segments.is_empty());
    for seg in &st.segments {
        let range = seg.mmap.as_ptr_range();
        for chunk in &seg.chunks {
            for col in chunk.batch.columns() {
                for buf in col.to_data().buffers() {
                    let p = buf.as_ptr();
                    assert!(
                        range.contains(&p),
                        "buffer of {} is not inside the mmap",
                        seg.path.display()
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn memtable_over_threshold_is_sealed_into_bounded_segments() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let config = StorageConfig {
        segment_max_rows: 4,
        compact_below_rows: 0,
        ..StorageConfig::default()
    };
    let store = open(dir.path(), config);
    let log = store.org(&o).await.unwrap();
    log.append(batch(&o, 3, "a")).await.unwrap();
    assert!(!log.needs_maintenance(NOW));
    log.append(batch(&o, 7, "b")).await.unwrap();
    assert!(log.needs_maintenance(NOW));
    let before = entity_ids(&log.snapshot());
    let report = log.maintain(NOW, false).await.unwrap();
    assert_eq!((report.sealed_segments, report.sealed_rows), (3, 10));
    assert_eq!(
        files(dir.path(), &o, "segments"),
        [
            segment_file_name(0, 4),
            segment_file_name(4, 8),
            segment_file_name(8, 10)
        ]
    );
    assert_eq!(entity_ids(&log.snapshot()), before);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn compaction_merges_small_segments_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let config = StorageConfig {
        compact_below_rows: 100,
        ..StorageConfig::default()
    };
    let store = open(dir.path(), config.clone());
    let log = store.org(&o).await.unwrap();
    let mut compacted = 0;
    for tag in ["a", "b", "c"] {
        log.append(batch(&o, 10, tag)).await.unwrap();
        let report = log.maintain(NOW, true).await.unwrap();
        compacted += report.compacted_inputs;
    }
    assert_eq!(compacted, 4);
    assert_eq!(
        files(dir.path(), &o, "segments"),
        [segment_file_name(0, 30)]
    );
    assert!(!log.needs_maintenance(NOW));
    let snap = log.snapshot();
    assert_eq!(snap.num_rows(), 30);
    let ids = entity_ids(&snap);
    assert_eq!(ids[0], "a-0");
    assert_eq!(ids[29], "c-9");
    assert_zero_copy(&log);
    store.shutdown().await.unwrap();
    drop(log);

    let store = open(dir.path(), config);
    let log = store.org(&o).await.unwrap();
    assert_eq!(entity_ids(&log.snapshot()), ids);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn recovery_keeps_covering_segment_after_interrupted_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let config = StorageConfig {
        compact_below_rows: 0,
        ..StorageConfig::default()
    };
    let store = open(dir.path(), config.clone());
    let log = store.org(&o).await.unwrap();
    for tag in ["a", "b"] {
        log.append(batch(&o, 2, tag)).await.unwrap();
        log.maintain(NOW, true).await.unwrap();
    }
    let ids = entity_ids(&log.snapshot());
    let batches: Vec<RecordBatch> = log
        .snapshot()
        .chunks()
        .iter()
        .map(|c| c.batch.clone())
        .collect();
    store.shutdown().await.unwrap();
    drop(log);

    // The merged file was renamed into place but the inputs were not yet deleted.
    let seg_dir = dir.path().join("orgs/acme/segments");
    segment::write_segment(&seg_dir, 0, 4, &batches).unwrap();
    std::fs::write(seg_dir.join("seg-x.arrow.tmp"), b"partial").unwrap();
    assert_eq!(files(dir.path(), &o, "segments").len(), 4);

    let store = open(dir.path(), config);
    let log = store.org(&o).await.unwrap();
    assert_eq!(entity_ids(&log.snapshot()), ids);
    assert_eq!(files(dir.path(), &o, "segments"), [segment_file_name(0, 4)]);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn retention_drops_old_segments_and_advances_first_offset() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let config = StorageConfig {
        compact_below_rows: 0,
        retention: Some(Duration::from_secs(3600)),
        ..StorageConfig::default()
    };
    let store = open(dir.path(), config.clone());
    let log = store.org(&o).await.unwrap();
    let old = build_batch(&o, &events(10, "old", Some(NOW - 2 * HOUR_US)), NOW).unwrap();
    log.append(old).await.unwrap();
    log.maintain(NOW - 3 * HOUR_US, true).await.unwrap();
    log.append(batch(&o, 5, "new")).await.unwrap();
    log.maintain(NOW - 3 * HOUR_US, true).await.unwrap();
    let bytes_before = log.stored_bytes();

    assert!(log.needs_maintenance(NOW));
    let report = log.maintain(NOW, false).await.unwrap();
    assert_eq!((report.dropped_segments, report.dropped_rows), (1, 10));
    assert_eq!(log.first_offset(), 10);
    assert_eq!(log.end_offset(), 15);
    assert_eq!(log.event_count(), 5);
    assert_eq!(log.stored_bytes(), bytes_before - report.dropped_bytes);
    assert_eq!(log.snapshot().chunks()[0].first_offset, 10);
    assert_eq!(
        files(dir.path(), &o, "segments"),
        [segment_file_name(10, 15)]
    );

    // Everything expires: the log is empty but remembers where it ends.
    let later = NOW + 3 * HOUR_US;
    log.maintain(later, false).await.unwrap();
    assert_eq!((log.first_offset(), log.end_offset()), (15, 15));
    assert_eq!(log.stored_bytes(), 0);
    store.shutdown().await.unwrap();
    drop(log);

    let store = open(dir.path(), config);
    let log = store.org(&o).await.unwrap();
    assert_eq!((log.first_offset(), log.end_offset()), (15, 15));
    assert_eq!(
        log.append(batch(&o, 1, "x")).await.unwrap().first_offset,
        15
    );
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn retention_survives_wal_file_shared_with_unsealed_appends() {
    // Appends queued behind a seal land in the WAL file being sealed; once
    // the sealed segment expires, recovery must not bring its rows back.
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let config = StorageConfig {
        compact_below_rows: 0,
        retention: Some(Duration::from_secs(3600)),
        ..StorageConfig::default()
    };
    let store = open(dir.path(), config.clone());
    let log = store.org(&o).await.unwrap();
    let old = build_batch(&o, &events(4, "old", Some(NOW - 2 * HOUR_US)), NOW).unwrap();
    log.append(old).await.unwrap();
    // Queue the append before the seal so the I/O thread writes it into the
    // WAL file that the seal then rotates away from.
    let release = store.hold_io_for_tests();
    let mut pending = Box::pin(log.append(batch(&o, 2, "new")));
    assert!(futures_poll_once(pending.as_mut()).await.is_none());
    let (report, ()) = tokio::join!(log.maintain(NOW, true), async { drop(release) });
    let report = report.unwrap();
    assert_eq!(report.sealed_rows, 4);
    assert_eq!(pending.await.unwrap().first_offset, 4);
    assert_eq!(
        files(dir.path(), &o, "wal"),
        [wal_file_name(0), wal_file_name(6)]
    );
    log.maintain(NOW, false).await.unwrap();
    let ids = entity_ids(&log.snapshot());
    assert_eq!(ids, ["new-0", "new-1"]);
    let first = log.first_offset();
    assert_eq!(first, 4);
    store.shutdown().await.unwrap();
    drop(log);

    let store = open(dir.path(), config);
    let log = store.org(&o).await.unwrap();
    assert_eq!(log.first_offset(), first);
    assert_eq!(entity_ids(&log.snapshot()), ids);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn interval_durability_acks_and_fsyncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let config = StorageConfig {
        durability: DurabilityConfig::Interval,
        fsync_interval_ms: 5,
        ..StorageConfig::default()
    };
    assert_eq!(
        config.durability(),
        Durability::Interval(Duration::from_millis(5))
    );
    let store = open(dir.path(), config.clone());
    let log = store.org(&o).await.unwrap();
    for i in 0..10 {
        let ack = log.append(batch(&o, 1, &format!("e{i}"))).await.unwrap();
        assert_eq!(ack.first_offset, i);
        assert_eq!(log.end_offset(), i + 1);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.wal_fsyncs() == 0 {
        assert!(std::time::Instant::now() < deadline, "no background fsync");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    store.shutdown().await.unwrap();
    drop(log);

    let store = open(dir.path(), config);
    let log = store.org(&o).await.unwrap();
    assert_eq!(log.event_count(), 10);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn closed_store_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    store.shutdown().await.unwrap();
    let err = log.append(batch(&o, 1, "a")).await.unwrap_err();
    assert!(matches!(err, Error::Closed), "{err}");
    assert_eq!(err.class(), ErrorClass::Unavailable);
}

#[test]
fn build_batch_has_the_stored_schema_and_defaults() {
    let o = org("acme");
    let b = batch(&o, 2, "a");
    assert_eq!(b.schema(), event_schema());
    let ids = b.column(0).as_string::<i32>();
    let id = uuid::Uuid::parse_str(ids.value(0)).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(b.column(1).as_string::<i32>().value(1), "acme");
    let mut bad = events(1, "a", None);
    bad[0].changes = Some("{nope".into());
    let err = build_batch(&o, &bad, NOW).unwrap_err();
    assert!(matches!(&err, Error::Schema { field, row: Some(0), .. } if field == "changes"));
}

#[test]
fn column_positions_match_the_schema() {
    let schema = event_schema();
    let positions = [
        (col::EVENT_ID, "event_id"),
        (col::ORG_ID, "org_id"),
        (col::EVENT_TYPE, "event_type"),
        (col::ENTITY_TYPE, "entity_type"),
        (col::ENTITY_ID, "entity_id"),
        (col::OCCURRED_AT, "occurred_at"),
        (col::DATA, "data"),
        (col::CHANGES, "changes"),
        (col::USER_ID, "user_id"),
        (col::TRACE_ID, "trace_id"),
    ];
    assert_eq!(positions.len(), schema.fields().len());
    for (i, name) in positions {
        assert_eq!(schema.field(i).name(), name);
    }
}

fn client_batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

fn strs(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

#[test]
fn normalize_batch_fills_defaults_and_checks_org() {
    let o = org("acme");
    let input = client_batch(vec![
        ("entity_id", strs(&[Some("1"), Some("2")])),
        ("event_type", strs(&[Some("UPDATE"), Some("CUSTOM")])),
        ("entity_type", strs(&[Some("user"), Some("user")])),
        (
            "occurred_at",
            Arc::new(Int64Array::from(vec![Some(42), None])),
        ),
        ("org_id", strs(&[Some("acme"), None])),
        (
            "event_id",
            strs(&[Some("0190a0a0-0000-7000-8000-000000000001"), None]),
        ),
        ("data", strs(&[Some("{\"a\":1}"), None])),
    ]);
    let out = normalize_batch(&o, &input, NOW).unwrap();
    assert_eq!(out.schema(), event_schema());
    assert_eq!(
        out.column(0).as_string::<i32>().value(0),
        "0190a0a0-0000-7000-8000-000000000001"
    );
    assert!(uuid::Uuid::parse_str(out.column(0).as_string::<i32>().value(1)).is_ok());
    assert_eq!(out.column(1).as_string::<i32>().value(1), "acme");
    let ts = out
        .column(5)
        .as_primitive::<arrow_array::types::TimestampMicrosecondType>();
    assert_eq!((ts.value(0), ts.value(1)), (42, NOW));
    assert!(out.column(7).is_null(0));
}

#[test]
fn normalize_batch_errors_name_the_field() {
    let o = org("acme");
    let base = || {
        vec![
            ("event_type", strs(&[Some("INSERT")])),
            ("entity_type", strs(&[Some("user")])),
            ("entity_id", strs(&[Some("1")])),
        ]
    };
    let with = |name: &'static str, col: ArrayRef| {
        let mut cols = base();
        cols.retain(|(n, _)| *n != name);
        cols.push((name, col));
        client_batch(cols)
    };
    let without = |name: &str| {
        let mut cols = base();
        cols.retain(|(n, _)| *n != name);
        client_batch(cols)
    };
    let cases: Vec<(RecordBatch, &str, Option<usize>, &str)> = vec![
        (
            with("colour", strs(&[Some("red")])),
            "colour",
            None,
            "unknown column",
        ),
        (without("entity_id"), "entity_id", None, "missing"),
        (
            with("entity_type", strs(&[None])),
            "entity_type",
            Some(0),
            "null",
        ),
        (
            with("event_type", strs(&[Some("insert")])),
            "event_type",
            Some(0),
            "INSERT, UPDATE, DELETE or CUSTOM",
        ),
        (
            with("event_type", Arc::new(Int64Array::from(vec![1]))),
            "event_type",
            None,
            "Utf8",
        ),
        (
            with("event_id", strs(&[Some("not-a-uuid")])),
            "event_id",
            Some(0),
            "UUID",
        ),
        (
            with("occurred_at", strs(&[Some("yesterday")])),
            "occurred_at",
            None,
            "Int64",
        ),
        (
            with("data", strs(&[Some("{oops")])),
            "data",
            Some(0),
            "JSON",
        ),
        (
            with("changes", strs(&[Some("[1,")])),
            "changes",
            Some(0),
            "JSON",
        ),
        (
            with("org_id", strs(&[Some("globex")])),
            "org_id",
            Some(0),
            "acme",
        ),
        // The rules the JSON paths apply hold for DoPut too (`rules.rs`).
        (
            with("entity_id", strs(&[Some("")])),
            "entity_id",
            Some(0),
            "empty",
        ),
        (
            with("changes", strs(&[Some(r#"{"status": "paid"}"#)])),
            "changes.status",
            Some(0),
            "\"old\"",
        ),
    ];
    for (input, field, row, hint) in cases {
        let err = normalize_batch(&o, &input, NOW).unwrap_err();
        assert_eq!(err.class(), ErrorClass::BadRequest);
        let msg = err.to_string();
        match err {
            Error::Schema {
                field: f,
                row: r,
                reason,
            } => {
                assert_eq!((f.as_str(), r), (field, row), "{msg}");
                assert!(reason.contains(hint), "{field}: {reason:?} lacks {hint:?}");
                assert!(msg.contains(field));
            }
            other => panic!("{field}: unexpected {other}"),
        }
    }
}

#[test]
fn normalize_batch_accepts_other_timestamp_units_and_string_types() {
    let o = org("acme");
    let ts = arrow_array::TimestampNanosecondArray::from(vec![5_000]).with_timezone("+02:00");
    let large: ArrayRef = Arc::new(arrow_array::LargeStringArray::from(vec!["user"]));
    let input = client_batch(vec![
        ("event_type", strs(&[Some("DELETE")])),
        ("entity_type", large),
        ("entity_id", strs(&[Some("1")])),
        ("occurred_at", Arc::new(ts)),
    ]);
    let out = normalize_batch(&o, &input, NOW).unwrap();
    let ts = out
        .column(5)
        .as_primitive::<arrow_array::types::TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 5);
    assert_eq!(out.column(3).as_string::<i32>().value(0), "user");
    assert_eq!(out.column(3).data_type(), &DataType::Utf8);
}

#[test]
fn event_type_parsing_says_what_is_allowed() {
    assert_eq!("DELETE".parse::<EventType>().unwrap(), EventType::Delete);
    let err = "delete".parse::<EventType>().unwrap_err().to_string();
    assert!(err.contains("INSERT, UPDATE, DELETE or CUSTOM"), "{err}");
}

#[test]
fn config_parses_retention_and_validates() {
    let parse = |json: &str| serde_json::from_str::<StorageConfig>(json).unwrap();
    assert_eq!(parse("{}"), StorageConfig::default());
    assert_eq!(
        parse(r#"{"retention":"30d"}"#).retention,
        Some(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(
        parse(r#"{"retention":3600}"#).retention,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        parse(r#"{"retention":"3600"}"#).retention,
        Some(Duration::from_secs(3600))
    );
    assert!(serde_json::from_str::<StorageConfig>(r#"{"retention":"soon"}"#).is_err());
    let bad = StorageConfig {
        segment_max_rows: 0,
        ..StorageConfig::default()
    };
    assert!(matches!(
        bad.validate(),
        Err(Error::Config {
            key: "segment_max_rows",
            ..
        })
    ));
}

#[test]
fn corrupt_segment_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(segment_file_name(0, 3));
    for bytes in [
        &b"ARROW1\0\0garbage garbage garbage ARROW1"[..],
        &[0u8; 64][..],
        &b"short"[..],
    ] {
        std::fs::write(&path, bytes).unwrap();
        let err = segment::load_segment(&path, 0, 3).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}

#[test]
fn many_tiny_appends_are_coalesced_in_the_memtable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let store = Store::open(dir.path(), StorageConfig::default(), "t-io".into()).expect("open");
        let org = OrgId::new("tiny").expect("org");
        let log = store.org(&org).await.expect("org log");
        for i in 0..1_000i64 {
            let ev = NewEvent {
                event_id: None,
                event_type: "INSERT".into(),
                entity_type: "t".into(),
                entity_id: format!("e{i}"),
                occurred_at_us: Some(i),
                data: None,
                changes: None,
                user_id: None,
                trace_id: None,
            };
            let batch = build_batch(&org, &[ev], 0).expect("batch");
            log.append(batch).await.expect("append");
        }
        let snap = log.snapshot();
        assert_eq!(snap.num_rows(), 1_000);
        // 1,000 one-row appends: tiered merging leaves far fewer chunks.
        assert!(snap.chunks().len() < 40, "{} chunks", snap.chunks().len());
        // Offsets stay contiguous and in order through the merges.
        let mut next = 0;
        for c in snap.chunks() {
            assert_eq!(c.first_offset, next);
            next += c.batch.num_rows() as u64;
        }
        let ids: Vec<String> = snap
            .chunks()
            .iter()
            .flat_map(|c| {
                let a = c.batch.column(4).as_string::<i32>().clone();
                (0..a.len()).map(move |i| a.value(i).to_owned())
            })
            .collect();
        assert_eq!(ids.first().map(String::as_str), Some("e0"));
        assert_eq!(ids.last().map(String::as_str), Some("e999"));
        store.shutdown().await.expect("shutdown");
    });
}

#[test]
fn assigned_event_ids_are_unique_time_ordered_uuid_v7s() {
    let org = OrgId::new("ids").expect("org");
    let events: Vec<NewEvent> = (0..10_000)
        .map(|i| NewEvent {
            event_id: None,
            event_type: "CUSTOM".into(),
            entity_type: "t".into(),
            entity_id: format!("e{i}"),
            occurred_at_us: None,
            data: None,
            changes: None,
            user_id: None,
            trace_id: None,
        })
        .collect();
    let first = build_batch(&org, &events, 0).expect("batch");
    let second = build_batch(&org, &events[..10], 0).expect("batch");
    let ids: Vec<uuid::Uuid> = [first, second]
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_string::<i32>().clone();
            (0..a.len()).map(move |i| uuid::Uuid::parse_str(a.value(i)).expect("uuid"))
        })
        .collect();
    assert!(ids.iter().all(|u| u.get_version_num() == 7));
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "every assigned id is unique");
    // Within a batch the ids follow the rows.
    assert!(ids[..10_000].windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn draining_a_seal_cuts_a_chunk_coalesced_across_its_end() {
    // Chunks [0,4) and [4,10) were sealed up to 4 while coalescing merged
    // [4,6) with newer rows into [4,10): only [0,4) is sealed, so a chunk
    // [2,10) built by coalescing across the boundary keeps [4,10).
    let o = org("acme");
    let a = batch(&o, 2, "a");
    let straddling = batch(&o, 8, "b");
    let mut memtable = vec![
        Chunk {
            first_offset: 0,
            batch: a,
        },
        Chunk {
            first_offset: 2,
            batch: straddling.clone(),
        },
    ];
    let (rows, _) = crate::store::drain_sealed(&mut memtable, 4);
    assert_eq!(rows, 4, "rows 0..4 leave the memtable, no more, no less");
    assert_eq!(memtable.len(), 1);
    assert_eq!(memtable[0].first_offset, 4);
    assert_eq!(memtable[0].batch.num_rows(), 6);
    assert_eq!(
        memtable[0].batch,
        straddling.slice(2, 6),
        "the unsealed rows, unchanged"
    );

    // A boundary between chunks cuts nothing.
    let (rows, _) = crate::store::drain_sealed(&mut memtable, 4);
    assert_eq!((rows, memtable[0].first_offset), (0, 4));
    let (rows, _) = crate::store::drain_sealed(&mut memtable, 10);
    assert_eq!((rows, memtable.len()), (6, 0));
}

/// Events `from..to` with client ids (the same id for the same number).
fn with_ids(o: &OrgId, range: std::ops::Range<usize>, tag: &str) -> RecordBatch {
    let events: Vec<NewEvent> = range
        .map(|i| NewEvent {
            event_id: Some(format!("00000000-0000-4000-8000-{i:012}")),
            entity_id: format!("{tag}-{i}"),
            ..events(1, tag, None).remove(0)
        })
        .collect();
    build_batch(o, &events, NOW).unwrap()
}

fn ack(a: &AppendAck) -> (usize, usize) {
    (a.rows, a.duplicates)
}

#[tokio::test]
async fn a_resent_event_id_is_stored_once_per_org_also_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (o, other) = (org("acme"), org("other"));
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    assert_eq!(
        ack(&log.append(with_ids(&o, 0..3, "a")).await.unwrap()),
        (3, 0)
    );
    assert_eq!(
        ack(&log.append(with_ids(&o, 0..3, "b")).await.unwrap()),
        (0, 3)
    );
    let partial = log.append(with_ids(&o, 2..5, "c")).await.unwrap();
    assert_eq!(
        (partial.first_offset, partial.rows, partial.duplicates),
        (3, 2, 1)
    );
    // Events without an id are never duplicates.
    assert_eq!(ack(&log.append(batch(&o, 2, "n")).await.unwrap()), (2, 0));
    assert_eq!(ack(&log.append(batch(&o, 2, "n")).await.unwrap()), (2, 0));
    // Per org.
    let other_log = store.org(&other).await.unwrap();
    assert_eq!(
        ack(&other_log.append(with_ids(&other, 0..3, "a")).await.unwrap()),
        (3, 0)
    );
    assert_eq!(
        entity_ids(&log.snapshot()),
        [
            "a-0", "a-1", "a-2", "c-3", "c-4", "n-0", "n-1", "n-0", "n-1"
        ]
    );
    // Some in a segment, some in the WAL only.
    log.maintain(NOW, true).await.unwrap();
    assert_eq!(
        ack(&log.append(with_ids(&o, 5..7, "d")).await.unwrap()),
        (2, 0)
    );
    store.shutdown().await.unwrap();
    drop((log, other_log));

    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    assert_eq!(
        ack(&log.append(with_ids(&o, 0..8, "e")).await.unwrap()),
        (1, 7)
    );
    assert_eq!(log.event_count(), 12);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_segment_sealed_before_the_window_is_not_reread() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let config = StorageConfig {
        dedup_window: Duration::from_secs(3600),
        ..StorageConfig::default()
    };
    let store = open(dir.path(), config.clone());
    let log = store.org(&o).await.unwrap();
    log.append(with_ids(&o, 0..3, "a")).await.unwrap();
    log.maintain(NOW, true).await.unwrap();
    store.shutdown().await.unwrap();
    drop(log);
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    for name in files(dir.path(), &o, "segments") {
        let path = dir.path().join("orgs/acme/segments").join(name);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let store = open(dir.path(), config);
    let log = store.org(&o).await.unwrap();
    assert_eq!(
        ack(&log.append(with_ids(&o, 0..3, "b")).await.unwrap()),
        (3, 0)
    );
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retry_racing_its_original_answers_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let store = open(dir.path(), StorageConfig::default());
    let log = store.org(&o).await.unwrap();
    let release = store.hold_io_for_tests();
    let mut original = Box::pin(log.append(with_ids(&o, 0..2, "a")));
    assert!(futures_poll_once(original.as_mut()).await.is_none());
    let mut retry = Box::pin(log.append(with_ids(&o, 0..2, "a")));
    assert!(
        futures_poll_once(retry.as_mut()).await.is_none(),
        "a retry of an append in flight waits for it"
    );
    drop(release);
    assert_eq!(ack(&original.await.unwrap()), (2, 0));
    assert_eq!(ack(&retry.await.unwrap()), (0, 2));
    assert_eq!(entity_ids(&log.snapshot()), ["a-0", "a-1"]);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_zero_dedup_window_stores_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let o = org("acme");
    let config = StorageConfig {
        dedup_window: Duration::ZERO,
        ..StorageConfig::default()
    };
    let store = open(dir.path(), config);
    let log = store.org(&o).await.unwrap();
    log.append(with_ids(&o, 0..2, "a")).await.unwrap();
    assert_eq!(
        ack(&log.append(with_ids(&o, 0..2, "a")).await.unwrap()),
        (2, 0)
    );
    store.shutdown().await.unwrap();
}

#[test]
fn config_parses_the_dedup_window() {
    let parse = |json: &str| serde_json::from_str::<StorageConfig>(json);
    assert_eq!(
        StorageConfig::default().dedup_window,
        Duration::from_secs(86_400)
    );
    assert_eq!(
        parse(r#"{"dedup_window":"2s"}"#).unwrap().dedup_window,
        Duration::from_secs(2)
    );
    assert_eq!(
        parse(r#"{"dedup_window":0}"#).unwrap().dedup_window,
        Duration::ZERO
    );
    assert_eq!(
        parse(r#"{"dedup_window":"0"}"#).unwrap().dedup_window,
        Duration::ZERO
    );
    let err = parse(r#"{"dedup_window":"soon"}"#).unwrap_err().to_string();
    assert!(err.contains("dedup_window"), "{err}");
}
