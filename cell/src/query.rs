//! The native query path: filters, cursor paging and counts over an org's
//! snapshot, computed with Arrow kernels on the batches themselves.
//!
//! A snapshot is an immutable list of Arrow batches with absolute offsets, so
//! a page of results is a set of `take`s from those batches and the cursor is
//! simply the offset of the last row returned. Nothing here converts rows to
//! JSON: the protocol crates encode what this returns (JSON, Arrow IPC or
//! Flight).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::kernels::cmp;
use arrow::compute::{and, take_record_batch};
use arrow::datatypes::TimestampMicrosecondType;
use arrow_array::{Scalar, StringArray, TimestampMicrosecondArray};
use base64::Engine as _;
use honeycell_storage::{Chunk, EventType, OrgSnapshot, col};

use crate::{Error, Result};

/// Row filters shared by every protocol.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventFilter {
    pub entity_type: Option<String>,
    pub event_type: Option<EventType>,
    pub entity_id: Option<String>,
    /// Inclusive lower bound on `occurred_at`, µs since the epoch.
    pub since_us: Option<i64>,
    /// Exclusive upper bound on `occurred_at`, µs since the epoch.
    pub until_us: Option<i64>,
}

/// Parses RFC 3339 text (`2026-11-26T10:00:00Z`) or integer microseconds
/// since the epoch.
pub fn parse_time(s: &str) -> std::result::Result<i64, String> {
    if let Ok(us) = s.parse::<i64>() {
        return Ok(us);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-11-26T10:00:00Z, nor integer microseconds ({e})"))
}

impl EventFilter {
    /// Builds a filter from textual parameters, as every protocol receives them.
    pub fn from_params(
        entity_type: Option<String>,
        event_type: Option<&str>,
        entity_id: Option<String>,
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<Self> {
        let bad = |field: &'static str, reason: String| Error::BadFilter { field, reason };
        let event_type = event_type
            .map(|t| {
                t.parse::<EventType>()
                    .map_err(|e| bad("event_type", e.to_string()))
            })
            .transpose()?;
        let since_us = since
            .map(|s| parse_time(s).map_err(|e| bad("since", e)))
            .transpose()?;
        let until_us = until
            .map(|s| parse_time(s).map_err(|e| bad("until", e)))
            .transpose()?;
        Ok(Self {
            entity_type,
            event_type,
            entity_id,
            since_us,
            until_us,
        })
    }

    fn is_empty(&self) -> bool {
        *self == EventFilter::default()
    }

    /// Whether some `occurred_at` in `[min, max]` may match the time bounds.
    fn time_overlaps(&self, min_us: i64, max_us: i64) -> bool {
        self.since_us.is_none_or(|s| s <= max_us) && self.until_us.is_none_or(|u| min_us < u)
    }

    /// Whether every `occurred_at` in `[min, max]` matches the time bounds.
    fn time_covers(&self, min_us: i64, max_us: i64) -> bool {
        self.since_us.is_none_or(|s| s <= min_us) && self.until_us.is_none_or(|u| max_us < u)
    }

    /// Whether a summary entry's types match.
    fn types_match(&self, entity_type: &str, event_type: &str) -> bool {
        self.entity_type.as_deref().is_none_or(|t| t == entity_type)
            && self.event_type.is_none_or(|t| t.as_str() == event_type)
    }

    /// The rows of `batch` that match, as a boolean mask (None: all rows).
    pub fn mask(&self, batch: &RecordBatch) -> Result<Option<BooleanArray>> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut mask: Option<BooleanArray> = None;
        let mut add = |m: BooleanArray| -> Result<()> {
            mask = Some(match mask.take() {
                Some(prev) => and(&prev, &m)?,
                None => m,
            });
            Ok(())
        };
        let eq_str = |column: usize, value: &str| -> Result<BooleanArray> {
            let scalar = Scalar::new(StringArray::from(vec![value]));
            Ok(cmp::eq(batch.column(column), &scalar)?)
        };
        if let Some(v) = &self.entity_type {
            add(eq_str(col::ENTITY_TYPE, v)?)?;
        }
        if let Some(v) = &self.event_type {
            add(eq_str(col::EVENT_TYPE, v.as_str())?)?;
        }
        if let Some(v) = &self.entity_id {
            add(eq_str(col::ENTITY_ID, v)?)?;
        }
        let ts =
            |v: i64| Scalar::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC"));
        if let Some(v) = self.since_us {
            add(cmp::gt_eq(batch.column(col::OCCURRED_AT), &ts(v))?)?;
        }
        if let Some(v) = self.until_us {
            add(cmp::lt(batch.column(col::OCCURRED_AT), &ts(v))?)?;
        }
        Ok(mask)
    }
}

/// One page of matching events.
#[derive(Debug)]
pub struct Page {
    pub batches: Vec<RecordBatch>,
    /// Absolute offset of every returned row, in order (for per-row cursors).
    pub offsets: Vec<u64>,
    /// Set when more matching rows exist after this page.
    pub next_cursor: Option<Cursor>,
}

impl Page {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Opaque paging position: the offset of the last row already returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor(pub u64);

impl Cursor {
    const PREFIX: &'static str = "hc1:";
    /// The largest offset a cursor may name.
    pub const MAX: u64 = i64::MAX as u64;

    pub fn encode(self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{}{}",
            Self::PREFIX,
            self.0
        ))
    }

    pub fn decode(s: &str) -> Result<Self> {
        let bad = || Error::BadCursor {
            cursor: s.chars().take(64).collect(),
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad())?;
        let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
        let n = text.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        // Offsets count events from 0 and never come near 2^63: a larger
        // cursor was not made by this server (and `offset + 1` would wrap).
        match n.parse::<u64>() {
            Ok(offset) if offset <= Self::MAX => Ok(Cursor(offset)),
            _ => Err(bad()),
        }
    }
}

/// Iterates the matching rows of a snapshot after `after`, batch by batch,
/// in offset order. It owns what it reads (a snapshot is a cheap `Arc`), so
/// a protocol can stream from it lazily without holding borrows.
#[derive(Clone, Debug)]
pub struct Scan {
    snapshot: OrgSnapshot,
    filter: EventFilter,
    after: Option<u64>,
    next_chunk: usize,
    /// Offset ranges of segments not to read (in order): outside the
    /// filter's time range, or answered otherwise (`counts`).
    skip: Vec<Range<u64>>,
    next_skip: usize,
    /// Rows of the chunks looked at so far, matching or not.
    read_rows: u64,
}

impl Scan {
    pub fn new(snapshot: &OrgSnapshot, filter: &EventFilter, after: Option<Cursor>) -> Self {
        let after = after.map(|c| c.0);
        // Skip whole chunks before the cursor without looking at them.
        let next_chunk = match after {
            Some(a) => snapshot.chunks().partition_point(|c| {
                c.first_offset + c.batch.num_rows() as u64 <= a.saturating_add(1)
            }),
            None => 0,
        };
        // Segments wholly outside the time range are skipped unread.
        let skip = snapshot
            .segments()
            .iter()
            .filter(|s| !filter.time_overlaps(s.min_occurred_at_us, s.max_occurred_at_us))
            .map(|s| s.first..s.end)
            .collect();
        Self {
            snapshot: snapshot.clone(),
            filter: filter.clone(),
            after,
            next_chunk,
            skip,
            next_skip: 0,
            read_rows: 0,
        }
    }

    /// Also skips the segments holding offsets in `ranges`.
    fn excluding(mut self, ranges: impl IntoIterator<Item = Range<u64>>) -> Self {
        self.skip.extend(ranges);
        self.skip.sort_by_key(|r| r.start);
        self
    }

    /// Whether the chunk starting at `first_offset` lies in a skipped
    /// segment (a segment's chunks are wholly inside it).
    fn skipped(&mut self, first_offset: u64) -> bool {
        while self
            .skip
            .get(self.next_skip)
            .is_some_and(|r| r.end <= first_offset)
        {
            self.next_skip += 1;
        }
        self.skip
            .get(self.next_skip)
            .is_some_and(|r| r.contains(&first_offset))
    }

    /// The matching row indices of one chunk past the cursor, and whether
    /// that is the whole chunk.
    fn matching(&self, chunk: &Chunk) -> Result<Option<(Vec<u32>, bool)>> {
        let rows = chunk.batch.num_rows() as u64;
        let skip = match self.after {
            Some(a) if a.saturating_add(1) >= chunk.first_offset + rows => return Ok(None),
            Some(a) if a >= chunk.first_offset => a + 1 - chunk.first_offset,
            _ => 0,
        } as usize;
        let mask = self.filter.mask(&chunk.batch)?;
        match mask {
            None => Ok(Some(((skip as u32..rows as u32).collect(), skip == 0))),
            Some(m) => {
                let idx: Vec<u32> = (skip..m.len())
                    .filter(|i| m.is_valid(*i) && m.value(*i))
                    .map(|i| i as u32)
                    .collect();
                let whole = idx.len() == m.len();
                Ok(Some((idx, whole)))
            }
        }
    }
}

/// Matching rows of one chunk.
#[derive(Debug)]
pub struct ScanBatch {
    pub batch: RecordBatch,
    chunk_first_offset: u64,
    /// Row indices within the chunk; None when the whole chunk matched.
    rows: Option<Vec<u32>>,
}

impl ScanBatch {
    /// Absolute offset of row `i` of `batch`.
    pub fn offset_of(&self, i: usize) -> u64 {
        let within = match &self.rows {
            Some(rows) => u64::from(rows[i]),
            None => i as u64,
        };
        self.chunk_first_offset + within
    }
}

impl Iterator for Scan {
    type Item = Result<ScanBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let snapshot = self.snapshot.clone();
            let chunk = snapshot.chunks().get(self.next_chunk)?;
            self.next_chunk += 1;
            if self.skipped(chunk.first_offset) {
                continue;
            }
            self.read_rows += chunk.batch.num_rows() as u64;
            let (idx, whole) = match self.matching(chunk) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            };
            if idx.is_empty() {
                continue;
            }
            // A whole, unfiltered chunk is passed on without copying.
            if whole {
                return Some(Ok(ScanBatch {
                    batch: chunk.batch.clone(),
                    chunk_first_offset: chunk.first_offset,
                    rows: None,
                }));
            }
            let batch = take_record_batch(&chunk.batch, &UInt32Array::from(idx.clone()));
            return Some(batch.map_err(Error::from).map(|batch| ScanBatch {
                batch,
                chunk_first_offset: chunk.first_offset,
                rows: Some(idx),
            }));
        }
    }
}

/// One page of at most `limit` matching rows after `after`.
pub fn page(
    snapshot: &OrgSnapshot,
    filter: &EventFilter,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Page> {
    let mut batches = Vec::new();
    let mut offsets = Vec::new();
    let mut taken = 0usize;
    let mut last = None;
    for item in Scan::new(snapshot, filter, after) {
        if taken >= limit {
            break;
        }
        let sb = item?;
        let n = sb.batch.num_rows().min(limit - taken);
        offsets.extend((0..n).map(|i| sb.offset_of(i)));
        last = Some(sb.offset_of(n - 1));
        batches.push(if n == sb.batch.num_rows() {
            sb.batch
        } else {
            sb.batch.slice(0, n)
        });
        taken += n;
    }
    // A full page has a next page if one more matching row exists after it.
    let next_cursor = match last {
        Some(l)
            if taken >= limit
                && Scan::new(snapshot, filter, Some(Cursor(l)))
                    .next()
                    .is_some() =>
        {
            Some(Cursor(l))
        }
        _ => None,
    };
    Ok(Page {
        batches,
        offsets,
        next_cursor,
    })
}

/// Grouping key of `eventCounts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    EntityType,
    EventType,
}

/// Time bucket of `eventCounts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    fn micros(self) -> i64 {
        match self {
            Bucket::Minute => 60_000_000,
            Bucket::Hour => 3_600_000_000,
            Bucket::Day => 86_400_000_000,
        }
    }
}

/// One row of `eventCounts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Count {
    pub key: String,
    pub bucket_start_us: i64,
    pub count: u64,
}

/// Counts matching events by key and time bucket, ordered by bucket then key.
/// Sealed segments the filter covers wholly are counted from their
/// summaries (when the summary's buckets nest in `bucket` and the filter
/// names no entity); the rest is scanned.
pub fn counts(
    snapshot: &OrgSnapshot,
    filter: &EventFilter,
    group_by: GroupBy,
    bucket: Bucket,
) -> Result<Vec<Count>> {
    counts_scanning(snapshot, filter, group_by, bucket).map(|(counts, _)| counts)
}

/// [`counts`], and how many rows it read (matching or not).
fn counts_scanning(
    snapshot: &OrgSnapshot,
    filter: &EventFilter,
    group_by: GroupBy,
    bucket: Bucket,
) -> Result<(Vec<Count>, u64)> {
    let column = match group_by {
        GroupBy::EntityType => col::ENTITY_TYPE,
        GroupBy::EventType => col::EVENT_TYPE,
    };
    let width = bucket.micros();
    let mut acc: BTreeMap<(i64, Arc<str>), u64> = BTreeMap::new();
    let mut keys: std::collections::HashMap<String, Arc<str>> = Default::default();
    let mut summarised = Vec::new();
    for seg in snapshot.segments() {
        let Some(summary) = &seg.summary else {
            continue;
        };
        if filter.entity_id.is_some()
            || width % summary.bucket_us != 0
            || !filter.time_covers(seg.min_occurred_at_us, seg.max_occurred_at_us)
        {
            continue;
        }
        for r in &summary.rows {
            if !filter.types_match(&r.entity_type, &r.event_type) {
                continue;
            }
            let key = match group_by {
                GroupBy::EntityType => &r.entity_type,
                GroupBy::EventType => &r.event_type,
            };
            let start = r.bucket_start_us.div_euclid(width) * width;
            *acc.entry((start, key.clone())).or_default() += r.count;
        }
        summarised.push(seg.first..seg.end);
    }
    let mut scan = Scan::new(snapshot, filter, None).excluding(summarised);
    for item in scan.by_ref() {
        let batch = item?.batch;
        let key_col = batch.column(column).as_string::<i32>();
        let ts = batch
            .column(col::OCCURRED_AT)
            .as_primitive::<TimestampMicrosecondType>();
        for i in 0..batch.num_rows() {
            let k = key_col.value(i);
            let key = match keys.get(k) {
                Some(a) => a.clone(),
                None => {
                    let a: Arc<str> = Arc::from(k);
                    keys.insert(k.to_owned(), a.clone());
                    a
                }
            };
            let start = ts.value(i).div_euclid(width) * width;
            *acc.entry((start, key)).or_default() += 1;
        }
    }
    let counts = acc
        .into_iter()
        .map(|((start, key), count)| Count {
            key: key.to_string(),
            bucket_start_us: start,
            count,
        })
        .collect();
    Ok((counts, scan.read_rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use honeycell_storage::{NewEvent, StorageConfig, Store, build_batch};
    use honeycell_types::OrgId;

    const T0: i64 = 1_700_000_000_000_000;
    const MINUTE: i64 = 60_000_000;

    /// `n` events, one a minute from `start`, alternating two entity types
    /// and two event types.
    fn events(n: usize, start: i64) -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent {
                event_id: None,
                event_type: if i % 3 == 0 { "UPDATE" } else { "INSERT" }.into(),
                entity_type: if i % 2 == 0 { "order" } else { "user" }.into(),
                entity_id: format!("e-{}", i % 5),
                occurred_at_us: Some(start + i as i64 * MINUTE),
                data: None,
                changes: None,
                user_id: None,
                trace_id: None,
            })
            .collect()
    }

    /// Counts by reading every row, the way `counts` did before summaries.
    fn by_scanning(s: &OrgSnapshot, f: &EventFilter, g: GroupBy, b: Bucket) -> Vec<Count> {
        let mut acc: BTreeMap<(i64, String), u64> = BTreeMap::new();
        for item in Scan::new(s, f, None) {
            let batch = item.expect("scan").batch;
            let column = match g {
                GroupBy::EntityType => col::ENTITY_TYPE,
                GroupBy::EventType => col::EVENT_TYPE,
            };
            let keys = batch.column(column).as_string::<i32>();
            let ts = batch
                .column(col::OCCURRED_AT)
                .as_primitive::<TimestampMicrosecondType>();
            for i in 0..batch.num_rows() {
                let start = ts.value(i).div_euclid(b.micros()) * b.micros();
                *acc.entry((start, keys.value(i).to_owned())).or_default() += 1;
            }
        }
        acc.into_iter()
            .map(|((bucket_start_us, key), count)| Count {
                key,
                bucket_start_us,
                count,
            })
            .collect()
    }

    #[tokio::test]
    async fn counts_come_from_summaries_of_covered_segments_and_scans_of_the_rest() {
        let dir = tempfile::tempdir().expect("dir");
        let config = StorageConfig {
            // Keep the two segments apart.
            compact_below_rows: 1,
            ..StorageConfig::default()
        };
        let store = Store::open(dir.path(), config, "io".into()).expect("store");
        let org = OrgId::new("acme").expect("org");
        let log = store.org(&org).await.expect("log");
        // Two sealed segments of 500 minutes each, then a tail of 100.
        for part in 0..2 {
            let batch =
                build_batch(&org, &events(500, T0 + part * 500 * MINUTE), T0).expect("batch");
            log.append(batch).await.expect("append");
            log.maintain(T0, true).await.expect("seal");
        }
        let tail = build_batch(&org, &events(100, T0 + 1_000 * MINUTE), T0).expect("batch");
        log.append(tail).await.expect("append");
        let s = log.snapshot();
        assert_eq!(s.segments().len(), 2);
        assert!(s.segments().iter().all(|seg| seg.summary.is_some()));

        let all = EventFilter::default();
        let (c, read) =
            counts_scanning(&s, &all, GroupBy::EntityType, Bucket::Hour).expect("counts");
        assert_eq!(c, by_scanning(&s, &all, GroupBy::EntityType, Bucket::Hour));
        assert_eq!(read, 100, "only the unsealed tail is read");
        let (c, read) =
            counts_scanning(&s, &all, GroupBy::EventType, Bucket::Minute).expect("counts");
        assert_eq!(c, by_scanning(&s, &all, GroupBy::EventType, Bucket::Minute));
        assert_eq!(read, 100);

        // A type filter is answered from the summaries too.
        let typed = EventFilter {
            entity_type: Some("user".into()),
            event_type: Some(EventType::Update),
            ..Default::default()
        };
        let (c, read) =
            counts_scanning(&s, &typed, GroupBy::EventType, Bucket::Day).expect("counts");
        assert_eq!(c, by_scanning(&s, &typed, GroupBy::EventType, Bucket::Day));
        assert_eq!(read, 100);

        // A time range covering the second segment only: the first is
        // skipped unread, the second summarised; one cutting the first
        // segment makes it scanned.
        let second = EventFilter {
            since_us: Some(T0 + 500 * MINUTE),
            until_us: Some(T0 + 1_000 * MINUTE),
            ..Default::default()
        };
        let (c, read) =
            counts_scanning(&s, &second, GroupBy::EntityType, Bucket::Hour).expect("counts");
        assert_eq!(
            c,
            by_scanning(&s, &second, GroupBy::EntityType, Bucket::Hour)
        );
        assert_eq!(c.iter().map(|c| c.count).sum::<u64>(), 500);
        assert_eq!(read, 100, "the tail, which has no summary");
        let cut = EventFilter {
            since_us: Some(T0 + 250 * MINUTE),
            ..Default::default()
        };
        let (c, read) =
            counts_scanning(&s, &cut, GroupBy::EntityType, Bucket::Hour).expect("counts");
        assert_eq!(c, by_scanning(&s, &cut, GroupBy::EntityType, Bucket::Hour));
        assert_eq!(read, 600);

        // An entity filter cannot use summaries.
        let one = EventFilter {
            entity_id: Some("e-3".into()),
            ..Default::default()
        };
        let (c, read) =
            counts_scanning(&s, &one, GroupBy::EntityType, Bucket::Hour).expect("counts");
        assert_eq!(c, by_scanning(&s, &one, GroupBy::EntityType, Bucket::Hour));
        assert_eq!(read, 1_100);
        store.shutdown().await.expect("shutdown");
    }

    fn cursor_of(text: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    #[test]
    fn cursors_round_trip() {
        for n in [0, 1, 41, Cursor::MAX] {
            assert_eq!(Cursor::decode(&Cursor(n).encode()).ok(), Some(Cursor(n)));
        }
    }

    #[test]
    fn out_of_range_cursors_are_refused_not_wrapped() {
        for text in [
            "hc1:18446744073709551615",
            "hc1:9223372036854775808",
            "hc1:18446744073709551616",
            "hc1:-1",
            "hc1:",
            "hc2:1",
        ] {
            assert!(
                matches!(
                    Cursor::decode(&cursor_of(text)),
                    Err(Error::BadCursor { .. })
                ),
                "{text}"
            );
        }
    }
}
