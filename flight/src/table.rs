//! Flight SQL's `events` table: a DataFusion [`TableProvider`] over one org
//! snapshot, read in place.
//!
//! Sealed segments' batches (already [`SEGMENT_BATCH_ROWS`] rows each, views
//! of the mapped files) are handed on without copying. The unsealed tail is
//! whatever shape the appends had — a thousand small HTTP batches, say — and
//! is coalesced as it is read, one batch of at most [`SEGMENT_BATCH_ROWS`]
//! rows at a time, on the query pool (the copy is charged to the query's
//! memory pool while it is the batch in hand). No batch served holds more
//! rows than a segment's.
//!
//! What the scan is told:
//! - its projection, so only the asked-for columns are sliced and copied;
//! - its filters: comparisons of `occurred_at` with a timestamp skip whole
//!   segments outside the range (their min/max time), and `entity_type` /
//!   `event_type` equality or `IN` skips segments whose summary shows none
//!   of those types. All are reported `Inexact`: DataFusion still applies
//!   every filter to the rows served;
//! - a limit, when no filter stands between it and the scan.
//!
//! Its statistics hold the exact number of rows it serves, so
//! `SELECT count(*) FROM events` is answered from them without a scan.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, ScalarValue, Statistics};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream, StatisticsArgs,
};
use honeycell_storage::{Chunk, OrgSnapshot, SEGMENT_BATCH_ROWS, SegmentStats, event_schema};

/// The `events` table of one org snapshot.
#[derive(Debug)]
pub struct EventsTable {
    snapshot: OrgSnapshot,
}

impl EventsTable {
    pub fn new(snapshot: OrgSnapshot) -> Self {
        Self { snapshot }
    }
}

#[tonic::async_trait]
impl TableProvider for EventsTable {
    fn schema(&self) -> SchemaRef {
        event_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                let mut prune = Prune::default();
                if prune.add(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    fn statistics(&self) -> Option<Statistics> {
        Some(
            Statistics::new_unknown(&event_schema())
                .with_num_rows(Precision::Exact(self.snapshot.num_rows())),
        )
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut prune = Prune::default();
        for f in filters {
            prune.add(f);
        }
        Ok(Arc::new(EventsScan::new(
            &self.snapshot,
            projection.cloned(),
            &prune,
            limit,
        )?))
    }
}

/// What the pushed filters let the scan skip.
#[derive(Debug, Default, Clone, PartialEq)]
struct Prune {
    /// Rows outside `[since, until]` (µs, both inclusive) cannot match.
    since_us: Option<i64>,
    until_us: Option<i64>,
    /// Rows of other types cannot match (None: any).
    entity_types: Option<Vec<String>>,
    event_types: Option<Vec<String>>,
}

impl Prune {
    /// Narrows by `filter` if it is a form the scan understands; whether it
    /// was.
    fn add(&mut self, filter: &Expr) -> bool {
        match filter {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                // Either side alone is a valid narrowing of a conjunction.
                let l = self.add(left);
                let r = self.add(right);
                l || r
            }
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Or,
                right,
            }) => {
                // Small `IN` lists arrive as chains of `OR`: a segment is
                // skipped if neither side can match in it.
                let (mut l, mut r) = (Prune::default(), Prune::default());
                let understood = l.add(left) & r.add(right);
                self.intersect(l.union(r));
                understood
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if let (Some(c), Some(v)) = (column(left), literal(right)) {
                    self.compare(c, *op, v)
                } else if let (Some(v), Some(c)) = (literal(left), column(right)) {
                    match op.swap() {
                        Some(op) => self.compare(c, op, v),
                        None => false,
                    }
                } else {
                    false
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => match (column(expr), literal(low), literal(high)) {
                (Some(c), Some(lo), Some(hi)) => {
                    let a = self.compare(c, Operator::GtEq, lo);
                    let b = self.compare(c, Operator::LtEq, hi);
                    a && b
                }
                _ => false,
            },
            Expr::InList(list) if !list.negated => {
                let Some(c) = column(&list.expr) else {
                    return false;
                };
                let values: Option<Vec<String>> = list
                    .list
                    .iter()
                    .map(|e| literal(e).and_then(string))
                    .collect();
                match values {
                    Some(values) => self.types(c, values),
                    None => false,
                }
            }
            _ => false,
        }
    }

    fn compare(&mut self, column: &Column, op: Operator, value: &ScalarValue) -> bool {
        match column.name.as_str() {
            "occurred_at" => {
                let Some(us) = micros(value) else {
                    return false;
                };
                match op {
                    Operator::Eq => {
                        self.since(us);
                        self.until(us);
                    }
                    Operator::Gt | Operator::GtEq => self.since(us),
                    Operator::Lt | Operator::LtEq => self.until(us),
                    _ => return false,
                }
                true
            }
            _ if op == Operator::Eq => match string(value) {
                Some(s) => self.types(column, vec![s]),
                None => false,
            },
            _ => false,
        }
    }

    /// What either `self` or `other` allows.
    fn union(self, other: Prune) -> Prune {
        fn both<T>(a: Option<T>, b: Option<T>, f: impl FnOnce(T, T) -> T) -> Option<T> {
            Some(f(a?, b?))
        }
        let merge = |mut a: Vec<String>, b: Vec<String>| {
            a.extend(b);
            a
        };
        Prune {
            since_us: both(self.since_us, other.since_us, i64::min),
            until_us: both(self.until_us, other.until_us, i64::max),
            entity_types: both(self.entity_types, other.entity_types, merge),
            event_types: both(self.event_types, other.event_types, merge),
        }
    }

    /// Narrows by `other` as well.
    fn intersect(&mut self, other: Prune) {
        if let Some(us) = other.since_us {
            self.since(us);
        }
        if let Some(us) = other.until_us {
            self.until(us);
        }
        if let Some(v) = other.entity_types {
            self.types_of("entity_type", v);
        }
        if let Some(v) = other.event_types {
            self.types_of("event_type", v);
        }
    }

    fn since(&mut self, us: i64) {
        self.since_us = Some(self.since_us.map_or(us, |s| s.max(us)));
    }

    fn until(&mut self, us: i64) {
        self.until_us = Some(self.until_us.map_or(us, |u| u.min(us)));
    }

    fn types(&mut self, column: &Column, values: Vec<String>) -> bool {
        self.types_of(&column.name, values)
    }

    fn types_of(&mut self, column: &str, values: Vec<String>) -> bool {
        let slot = match column {
            "entity_type" => &mut self.entity_types,
            "event_type" => &mut self.event_types,
            _ => return false,
        };
        *slot = Some(match slot.take() {
            // Both must hold: what is in both lists.
            Some(old) => old.into_iter().filter(|v| values.contains(v)).collect(),
            None => values,
        });
        true
    }

    /// Whether a sealed segment may hold a matching row.
    fn keeps(&self, seg: &SegmentStats) -> bool {
        if self.since_us.is_some_and(|s| seg.max_occurred_at_us < s)
            || self.until_us.is_some_and(|u| seg.min_occurred_at_us > u)
        {
            return false;
        }
        let Some(summary) = &seg.summary else {
            return true;
        };
        let wanted = |set: &Option<Vec<String>>, v: &str| {
            set.as_ref().is_none_or(|s| s.iter().any(|w| w == v))
        };
        summary.rows.iter().any(|r| {
            wanted(&self.entity_types, &r.entity_type) && wanted(&self.event_types, &r.event_type)
        })
    }
}

fn column(e: &Expr) -> Option<&Column> {
    match e {
        Expr::Column(c) => Some(c),
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

fn string(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

/// A timestamp literal in µs since the epoch, the stored unit. A finer
/// unit is floored, which keeps every stored value the comparison admits
/// inside the bounds (they only skip segments; the filter itself is still
/// applied).
fn micros(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampMicrosecond(Some(us), _) => Some(*us),
        ScalarValue::TimestampNanosecond(Some(ns), _) => Some(ns.div_euclid(1_000)),
        ScalarValue::TimestampMillisecond(Some(ms), _) => ms.checked_mul(1_000),
        ScalarValue::TimestampSecond(Some(s), _) => s.checked_mul(1_000_000),
        _ => None,
    }
}

/// One run of rows to serve, and whether it comes from a sealed segment
/// (served as it is) or the unsealed tail (coalesced).
#[derive(Debug, Clone)]
struct Piece {
    batch: RecordBatch,
    sealed: bool,
}

/// The scan of an [`EventsTable`]: one partition, rows in offset order.
#[derive(Debug)]
pub struct EventsScan {
    pieces: Arc<[Piece]>,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    limit: Option<usize>,
    rows: usize,
    segments: (usize, usize),
    properties: Arc<PlanProperties>,
}

impl EventsScan {
    fn new(
        snapshot: &OrgSnapshot,
        projection: Option<Vec<usize>>,
        prune: &Prune,
        limit: Option<usize>,
    ) -> Result<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(event_schema().project(p)?),
            None => event_schema(),
        };
        let segments = snapshot.segments();
        let sealed_end = segments.last().map_or(0, |s| s.end);
        let mut kept_segments = 0;
        let mut seg = segments.iter().peekable();
        let mut keep_current = false;
        let mut pieces = Vec::new();
        for Chunk {
            first_offset,
            batch,
        } in snapshot.chunks()
        {
            let sealed = *first_offset < sealed_end;
            if sealed {
                // Chunks of a segment lie wholly inside it, in order.
                while seg.next_if(|s| s.end <= *first_offset).is_some() {}
                if let Some(s) = seg.peek()
                    && s.first == *first_offset
                {
                    keep_current = prune.keeps(s);
                    kept_segments += usize::from(keep_current);
                }
                if !keep_current {
                    continue;
                }
            }
            pieces.push(Piece {
                batch: batch.clone(),
                sealed,
            });
        }
        let total: usize = pieces.iter().map(|p| p.batch.num_rows()).sum();
        let rows = limit.map_or(total, |l| l.min(total));
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            pieces: pieces.into(),
            projection,
            schema,
            limit,
            rows,
            segments: (kept_segments, segments.len()),
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for EventsScan {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                write!(
                    f,
                    "EventsScan: rows={}, segments={}/{}",
                    self.rows, self.segments.0, self.segments.1
                )?;
                if let Some(limit) = self.limit {
                    write!(f, ", limit={limit}")?;
                }
                if self.projection.is_some() {
                    let names: Vec<&str> = self
                        .schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect();
                    write!(f, ", projection=[{}]", names.join(", "))?;
                }
                Ok(())
            }
            DisplayFormatType::TreeRender => write!(f, "rows={}", self.rows),
        }
    }
}

impl ExecutionPlan for EventsScan {
    fn name(&self) -> &'static str {
        "EventsScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "EventsScan has one partition, not {partition}"
            )));
        }
        let reservation = MemoryConsumer::new("EventsScan").register(context.memory_pool());
        let batches = Batches {
            pieces: self.pieces.iter().cloned().collect(),
            projection: self.projection.clone(),
            schema: self.schema.clone(),
            left: self.rows,
            reservation,
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches),
        )))
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        Ok(Arc::new(
            Statistics::new_unknown(&self.schema).with_num_rows(Precision::Exact(self.rows)),
        ))
    }
}

/// The scan's batches, made as they are asked for.
struct Batches {
    pieces: VecDeque<Piece>,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    /// Rows still to serve (the limit).
    left: usize,
    /// The memory of the coalesced batch last handed out.
    reservation: MemoryReservation,
}

fn project(batch: &RecordBatch, projection: Option<&[usize]>) -> Result<RecordBatch> {
    Ok(match projection {
        Some(p) => batch.project(p)?,
        None => batch.clone(),
    })
}

impl Batches {
    /// The next batch: a sealed piece's next rows as they are, or the
    /// tail's next pieces up to a segment batch's size, concatenated.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let mut parts: Vec<RecordBatch> = Vec::new();
        let mut rows = 0;
        let want = SEGMENT_BATCH_ROWS.min(self.left);
        while rows < want {
            let Some(piece) = self.pieces.front_mut() else {
                break;
            };
            if piece.sealed && !parts.is_empty() {
                break;
            }
            let n = piece.batch.num_rows();
            let take = (want - rows).min(n);
            parts.push(project(
                &piece.batch.slice(0, take),
                self.projection.as_deref(),
            )?);
            rows += take;
            let sealed = piece.sealed;
            if take == n {
                self.pieces.pop_front();
            } else {
                piece.batch = piece.batch.slice(take, n - take);
            }
            if sealed {
                break;
            }
        }
        self.left -= rows;
        let batch = match parts.len() {
            0 => {
                self.reservation.free();
                return Ok(None);
            }
            1 => {
                // A view of stored memory, no copy to account for.
                self.reservation.free();
                parts.swap_remove(0)
            }
            _ => {
                let batch = arrow::compute::concat_batches(&self.schema, &parts)?;
                self.reservation.try_resize(batch.get_array_memory_size())?;
                batch
            }
        };
        Ok(Some(batch))
    }
}

impl Iterator for Batches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use datafusion::physical_plan::displayable;
    use honeycell_storage::{NewEvent, StorageConfig, Store, build_batch, col};
    use honeycell_types::OrgId;

    use crate::{QueryEngine, SqlConfig};

    const T0: i64 = 1_700_000_000_000_000;
    const MINUTE: i64 = 60_000_000;

    fn events(n: usize, start: i64, entity_type: &str) -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent {
                event_id: None,
                event_type: "INSERT".into(),
                entity_type: entity_type.into(),
                entity_id: format!("e-{i}"),
                occurred_at_us: Some(start + i as i64 * MINUTE),
                data: Some(r#"{"n":1}"#.into()),
                changes: None,
                user_id: None,
                trace_id: None,
            })
            .collect()
    }

    /// An org with two sealed segments — 1,000 `order` events from T0, then
    /// 1,000 `user` events from T0 + 10,000 minutes — and an unsealed tail of
    /// 3,000 `invoice` events from T0 + 20,000 minutes appended 7 at a time.
    async fn org(dir: &std::path::Path) -> (Store, OrgSnapshot) {
        let config = StorageConfig {
            compact_below_rows: 1,
            ..StorageConfig::default()
        };
        let store = Store::open(dir, config, "io".into()).expect("store");
        let org = OrgId::new("acme").expect("org");
        let log = store.org(&org).await.expect("log");
        for (i, kind) in ["order", "user"].into_iter().enumerate() {
            let start = T0 + i as i64 * 10_000 * MINUTE;
            let batch = build_batch(&org, &events(1_000, start, kind), T0).expect("batch");
            log.append(batch).await.expect("append");
            log.maintain(T0, true).await.expect("seal");
        }
        let tail = events(3_000, T0 + 20_000 * MINUTE, "invoice");
        for part in tail.chunks(7) {
            let batch = build_batch(&org, part, T0).expect("batch");
            log.append(batch).await.expect("append");
        }
        let snapshot = log.snapshot();
        assert_eq!(snapshot.segments().len(), 2);
        assert_eq!(snapshot.num_rows(), 5_000);
        assert!(snapshot.chunks().len() > 10, "the tail is many chunks");
        (store, snapshot)
    }

    fn engine() -> Arc<QueryEngine> {
        QueryEngine::new(SqlConfig::default(), tokio::runtime::Handle::current())
    }

    /// The physical plan's text and the query's batches.
    async fn run(snapshot: &OrgSnapshot, sql: &str) -> (String, Vec<RecordBatch>) {
        let df = crate::sql::plan(&engine(), snapshot.clone(), sql)
            .await
            .expect("plan");
        let plan = df.clone().create_physical_plan().await.expect("physical");
        let text = displayable(plan.as_ref()).indent(true).to_string();
        (text, df.collect().await.expect("collect"))
    }

    fn rows(batches: &[RecordBatch]) -> usize {
        batches.iter().map(RecordBatch::num_rows).sum()
    }

    #[tokio::test]
    async fn select_star_serves_segments_as_they_are_and_the_tail_coalesced() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, s) = org(dir.path()).await;
        let (plan, batches) = run(&s, "SELECT * FROM events").await;
        assert!(
            plan.contains("EventsScan: rows=5000, segments=2/2"),
            "{plan}"
        );
        assert_eq!(rows(&batches), 5_000);
        // One batch per segment and one for the whole tail.
        assert_eq!(
            batches.len(),
            3,
            "{:?}",
            batches
                .iter()
                .map(RecordBatch::num_rows)
                .collect::<Vec<_>>()
        );
        assert_eq!(batches[2].num_rows(), 3_000);
        // In offset order: the event ids are those of the snapshot.
        let ids = |bs: &[RecordBatch]| -> Vec<String> {
            bs.iter()
                .flat_map(|b| {
                    let a = b.column(col::EVENT_ID).as_string::<i32>();
                    (0..a.len())
                        .map(|i| a.value(i).to_owned())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let stored: Vec<RecordBatch> = s.chunks().iter().map(|c| c.batch.clone()).collect();
        assert_eq!(ids(&batches), ids(&stored));
        store.shutdown().await.expect("shutdown");
    }

    #[test]
    fn no_batch_holds_more_rows_than_a_segment_batch() {
        let schema = event_schema();
        let org = OrgId::new("acme").expect("org");
        let small = build_batch(&org, &events(1_000, T0, "order"), T0).expect("batch");
        let n = SEGMENT_BATCH_ROWS * 2 / 1_000 + 3;
        let mut pieces: VecDeque<Piece> = (0..n)
            .map(|_| Piece {
                batch: small.clone(),
                sealed: false,
            })
            .collect();
        // A sealed batch in the middle is served alone, uncopied.
        pieces.insert(
            70,
            Piece {
                batch: small.slice(0, 10),
                sealed: true,
            },
        );
        let pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool> =
            Arc::new(datafusion::execution::memory_pool::UnboundedMemoryPool::default());
        let batches = Batches {
            pieces,
            projection: None,
            schema,
            left: usize::MAX,
            reservation: MemoryConsumer::new("t").register(&pool),
        };
        let sizes: Vec<usize> = batches.map(|b| b.expect("batch").num_rows()).collect();
        assert_eq!(sizes, [65_536, 4_464, 10, 64_000]);
        assert_eq!(sizes.iter().sum::<usize>(), n * 1_000 + 10);
    }

    #[tokio::test]
    async fn count_star_is_answered_from_statistics_without_a_scan() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, s) = org(dir.path()).await;
        let (plan, batches) = run(&s, "SELECT count(*) FROM events").await;
        assert!(!plan.contains("EventsScan"), "{plan}");
        let n = batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(n.value(0), 5_000);
        // A filtered count does scan, and counts right.
        let (plan, batches) = run(
            &s,
            "SELECT count(*) FROM events WHERE entity_type = 'invoice'",
        )
        .await;
        assert!(plan.contains("EventsScan"), "{plan}");
        let n = batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(n.value(0), 3_000);
        store.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn time_and_type_filters_skip_segments_and_still_filter_rows() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, s) = org(dir.path()).await;
        let at = |minutes: i64| {
            let secs = (T0 + minutes * MINUTE) / 1_000_000;
            format!("to_timestamp({secs})")
        };
        // The second segment's last 100 minutes.
        let sql = format!(
            "SELECT entity_type FROM events WHERE occurred_at >= {} AND occurred_at < {}",
            at(10_900),
            at(11_000)
        );
        let (plan, batches) = run(&s, &sql).await;
        assert!(plan.contains("segments=1/2"), "{plan}");
        assert_eq!(rows(&batches), 100);
        let sql = format!(
            "SELECT count(*) FROM events WHERE occurred_at BETWEEN {} AND {}",
            at(0),
            at(99)
        );
        let (plan, batches) = run(&s, &sql).await;
        assert!(plan.contains("segments=1/2"), "{plan}");
        let n = batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(n.value(0), 100);
        // Text literals are coerced to timestamps before they reach the
        // scan: T0 is 2023-11-14T22:13:20Z; its first 100 minutes.
        let (plan, batches) = run(
            &s,
            "SELECT * FROM events WHERE occurred_at >= '2023-11-14T22:13:20Z' AND occurred_at < '2023-11-14T23:53:20Z'",
        )
        .await;
        assert!(plan.contains("segments=1/2"), "{plan}");
        assert_eq!(rows(&batches), 100);
        // Types: the summaries show which segment holds `user` events.
        let (plan, batches) = run(&s, "SELECT * FROM events WHERE entity_type = 'user'").await;
        assert!(plan.contains("segments=1/2"), "{plan}");
        assert_eq!(rows(&batches), 1_000);
        let (plan, batches) = run(
            &s,
            "SELECT * FROM events WHERE entity_type IN ('invoice', 'nothing') AND event_type = 'INSERT'",
        )
        .await;
        assert!(plan.contains("segments=0/2"), "{plan}");
        assert_eq!(rows(&batches), 3_000);
        // What the scan does not understand is applied all the same.
        let (plan, batches) = run(
            &s,
            "SELECT * FROM events WHERE entity_type = 'user' OR entity_id = 'e-1'",
        )
        .await;
        assert!(plan.contains("segments=2/2"), "{plan}");
        assert_eq!(rows(&batches), 1_000 + 2);
        store.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn only_the_projected_columns_are_read_and_a_limit_stops_early() {
        let dir = tempfile::tempdir().expect("dir");
        let (store, s) = org(dir.path()).await;
        let (plan, batches) = run(&s, "SELECT entity_id, occurred_at FROM events").await;
        assert!(
            plan.contains("projection=[entity_id, occurred_at]"),
            "{plan}"
        );
        assert_eq!(batches[0].num_columns(), 2);
        assert_eq!(rows(&batches), 5_000);
        let (plan, batches) = run(&s, "SELECT event_id FROM events LIMIT 1500").await;
        assert!(plan.contains("limit=1500"), "{plan}");
        assert_eq!(rows(&batches), 1_500);
        store.shutdown().await.expect("shutdown");
    }
}
