//! Per-segment summaries: how many events of each entity type and event
//! type fall into each time bucket, and the segment's earliest and latest
//! `occurred_at`.
//!
//! A summary is computed once, when a segment is written (sealing or
//! compaction, on the I/O thread), and kept in the segment file's footer as
//! custom metadata (key [`FOOTER_KEY`]), so it is as durable and as
//! immutable as the segment and costs nothing to reload. Segments written
//! before summaries existed get theirs computed when they are loaded.
//!
//! Counting queries (`eventCounts`) answer from the summaries of the
//! segments their filter covers wholly and scan only the rest (segments the
//! time range cuts, the unsealed tail), so their cost follows the number of
//! segments and buckets, not of events. The time bounds alone let any scan
//! skip segments outside a time range.
//!
//! Buckets are minutes when that keeps the summary under
//! [`MAX_SUMMARY_ROWS`] entries, else hours; a segment with more distinct
//! (hour, entity type, event type) triples than that has no summary and is
//! scanned (its size is bounded by the events it summarises, not by what a
//! client chooses to send).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use serde::{Deserialize, Serialize};

use crate::event::col;

/// The footer metadata key a summary is stored under.
pub(crate) const FOOTER_KEY: &str = "honeycell.summary.v1";

/// Most entries a summary keeps.
pub const MAX_SUMMARY_ROWS: usize = 16_384;

const MINUTE_US: i64 = 60_000_000;
const HOUR_US: i64 = 3_600_000_000;

/// Counts of one segment's events by time bucket, entity type and event
/// type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Width of a bucket in microseconds: a minute or an hour, aligned to
    /// the epoch.
    pub bucket_us: i64,
    /// Sorted by bucket start, then entity type, then event type.
    pub rows: Vec<SummaryRow>,
}

/// One entry of a [`Summary`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRow {
    pub bucket_start_us: i64,
    pub entity_type: Arc<str>,
    pub event_type: Arc<str>,
    pub count: u64,
}

/// What a loaded segment tells readers without reading its rows.
#[derive(Clone, Debug)]
pub struct SegmentStats {
    /// Offsets `[first, end)` the segment holds.
    pub first: u64,
    pub end: u64,
    /// Earliest and latest `occurred_at`, µs since the epoch.
    pub min_occurred_at_us: i64,
    pub max_occurred_at_us: i64,
    /// `None` when the segment has too many distinct keys (see the module
    /// header).
    pub summary: Option<Arc<Summary>>,
}

/// Earliest and latest `occurred_at` of `batches` (`None` when empty).
pub(crate) fn time_range(batches: &[RecordBatch]) -> Option<(i64, i64)> {
    let mut range: Option<(i64, i64)> = None;
    for b in batches {
        let Some(ts) = b
            .column(col::OCCURRED_AT)
            .as_primitive_opt::<TimestampMicrosecondType>()
        else {
            continue;
        };
        for &v in ts.values().iter() {
            range = Some(range.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))));
        }
    }
    range
}

/// Summarises `batches` (the rows of one segment), or `None` when that
/// takes more than [`MAX_SUMMARY_ROWS`] entries even by the hour.
pub(crate) fn summarise(batches: &[RecordBatch]) -> Option<Summary> {
    for bucket_us in [MINUTE_US, HOUR_US] {
        if let Some(rows) = count(batches, bucket_us) {
            return Some(Summary { bucket_us, rows });
        }
    }
    None
}

fn count(batches: &[RecordBatch], bucket_us: i64) -> Option<Vec<SummaryRow>> {
    let mut acc: HashMap<(i64, &str, &str), u64> = HashMap::new();
    for b in batches {
        let entity = b.column(col::ENTITY_TYPE).as_string_opt::<i32>()?;
        let event = b.column(col::EVENT_TYPE).as_string_opt::<i32>()?;
        let ts = b
            .column(col::OCCURRED_AT)
            .as_primitive_opt::<TimestampMicrosecondType>()?;
        for i in 0..b.num_rows() {
            let start = ts.value(i).div_euclid(bucket_us) * bucket_us;
            *acc.entry((start, entity.value(i), event.value(i)))
                .or_default() += 1;
            if acc.len() > MAX_SUMMARY_ROWS {
                return None;
            }
        }
    }
    let mut names = HashMap::new();
    let mut rows: Vec<SummaryRow> = acc
        .into_iter()
        .map(|((bucket_start_us, entity, event), count)| SummaryRow {
            bucket_start_us,
            entity_type: intern(&mut names, entity),
            event_type: intern(&mut names, event),
            count,
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.bucket_start_us, &a.entity_type, &a.event_type).cmp(&(
            b.bucket_start_us,
            &b.entity_type,
            &b.event_type,
        ))
    });
    Some(rows)
}

/// A summary as stored: `{"bucket_us": 60000000, "rows": [[start,
/// "order", "INSERT", 2], …]}`.
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    bucket_us: i64,
    #[serde(borrow)]
    rows: Vec<(i64, &'a str, &'a str, u64)>,
}

/// One `Arc` per distinct name, shared by its entries.
fn intern<'a>(names: &mut HashMap<&'a str, Arc<str>>, s: &'a str) -> Arc<str> {
    names.entry(s).or_insert_with(|| Arc::from(s)).clone()
}

impl Summary {
    /// The footer metadata value.
    pub(crate) fn encode(&self) -> String {
        let stored = Stored {
            bucket_us: self.bucket_us,
            rows: self
                .rows
                .iter()
                .map(|r| (r.bucket_start_us, &*r.entity_type, &*r.event_type, r.count))
                .collect(),
        };
        // Serialising numbers and strings cannot fail.
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// Reads a footer metadata value; `None` when it does not parse or is
    /// not consistent with the segment's `rows` (then the summary is
    /// computed again from the rows).
    pub(crate) fn decode(text: &str, rows: u64) -> Option<Summary> {
        let stored: Stored<'_> = serde_json::from_str(text).ok()?;
        let valid_width = stored.bucket_us == MINUTE_US || stored.bucket_us == HOUR_US;
        let total = stored
            .rows
            .iter()
            .try_fold(0u64, |t, r| t.checked_add(r.3))?;
        if !valid_width || total != rows || stored.rows.len() > MAX_SUMMARY_ROWS {
            return None;
        }
        let mut names = HashMap::new();
        Some(Summary {
            bucket_us: stored.bucket_us,
            rows: stored
                .rows
                .iter()
                .map(|&(bucket_start_us, entity, event, count)| SummaryRow {
                    bucket_start_us,
                    entity_type: intern(&mut names, entity),
                    event_type: intern(&mut names, event),
                    count,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{NewEvent, build_batch};

    fn batch(events: &[(&str, &str, i64)]) -> RecordBatch {
        let events: Vec<NewEvent> = events
            .iter()
            .enumerate()
            .map(|(i, (entity, kind, at))| NewEvent {
                event_id: None,
                event_type: (*kind).to_owned(),
                entity_type: (*entity).to_owned(),
                entity_id: format!("e-{i}"),
                occurred_at_us: Some(*at),
                data: None,
                changes: None,
                user_id: None,
                trace_id: None,
            })
            .collect();
        let org = honeycell_types::OrgId::new("acme").expect("org");
        build_batch(&org, &events, 0).expect("batch")
    }

    #[test]
    fn counts_by_minute_then_by_hour_then_not_at_all() {
        let b = batch(&[
            ("order", "INSERT", 0),
            ("order", "INSERT", 59_999_999),
            ("order", "UPDATE", 60_000_000),
            ("user", "INSERT", -1),
        ]);
        let s = summarise(std::slice::from_ref(&b)).expect("a summary");
        assert_eq!(s.bucket_us, MINUTE_US);
        let rows: Vec<_> = s
            .rows
            .iter()
            .map(|r| (r.bucket_start_us, &*r.entity_type, &*r.event_type, r.count))
            .collect();
        assert_eq!(
            rows,
            vec![
                (-60_000_000, "user", "INSERT", 1),
                (0, "order", "INSERT", 2),
                (60_000_000, "order", "UPDATE", 1),
            ]
        );
        assert_eq!(time_range(&[b]), Some((-1, 60_000_000)));
        let back = Summary::decode(&s.encode(), 4).expect("round trip");
        assert_eq!(back, s);
        assert!(Summary::decode(&s.encode(), 5).is_none(), "wrong total");

        // One event a minute for longer than the cap: hours.
        let minutes: Vec<(&str, &str, i64)> = (0..MAX_SUMMARY_ROWS as i64 + 1)
            .map(|m| ("order", "INSERT", m * MINUTE_US))
            .collect();
        assert_eq!(
            summarise(&[batch(&minutes)]).map(|s| s.bucket_us),
            Some(HOUR_US)
        );
        // As many entity types as the cap, in one hour: none.
        let names: Vec<String> = (0..=MAX_SUMMARY_ROWS).map(|i| format!("t{i}")).collect();
        let many: Vec<(&str, &str, i64)> =
            names.iter().map(|n| (n.as_str(), "INSERT", 0)).collect();
        assert!(summarise(&[batch(&many)]).is_none());
    }
}
