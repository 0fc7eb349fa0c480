//! The stored event schema, its column positions ([`col`]), and the two ways
//! a batch of it is made: from events the JSON paths parsed (HTTP, GraphQL)
//! and from a client's Arrow batch (Flight DoPut). Both check every event
//! against the same rules (`rules.rs`).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use arrow::compute::cast;
use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use honeycell_types::OrgId;

use crate::error::{Error, Result};
use crate::rules::{self, Fields};

/// The position of each column in [`event_schema`] (a test holds the two
/// together).
pub mod col {
    pub const EVENT_ID: usize = 0;
    pub const ORG_ID: usize = 1;
    pub const EVENT_TYPE: usize = 2;
    pub const ENTITY_TYPE: usize = 3;
    pub const ENTITY_ID: usize = 4;
    pub const OCCURRED_AT: usize = 5;
    pub const DATA: usize = 6;
    pub const CHANGES: usize = 7;
    pub const USER_ID: usize = 8;
    pub const TRACE_ID: usize = 9;
}

/// The schema every stored batch has, in this field order.
pub fn event_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("event_id", DataType::Utf8, false),
                Field::new("org_id", DataType::Utf8, false),
                Field::new("event_type", DataType::Utf8, false),
                Field::new("entity_type", DataType::Utf8, false),
                Field::new("entity_id", DataType::Utf8, false),
                Field::new(
                    "occurred_at",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    false,
                ),
                Field::new("data", DataType::Utf8, true),
                Field::new("changes", DataType::Utf8, true),
                Field::new("user_id", DataType::Utf8, true),
                Field::new("trace_id", DataType::Utf8, true),
            ]))
        })
        .clone()
}

/// Kind of change an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Insert,
    Update,
    Delete,
    Custom,
}

impl EventType {
    pub const ALLOWED: &'static str = "INSERT, UPDATE, DELETE or CUSTOM";

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Insert => "INSERT",
            EventType::Update => "UPDATE",
            EventType::Delete => "DELETE",
            EventType::Custom => "CUSTOM",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`EventType::from_str`]; says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event_type must be one of {allowed} (upper case), got {got:?}", allowed = EventType::ALLOWED)]
pub struct InvalidEventType {
    pub got: String,
}

impl FromStr for EventType {
    type Err = InvalidEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "INSERT" => Ok(EventType::Insert),
            "UPDATE" => Ok(EventType::Update),
            "DELETE" => Ok(EventType::Delete),
            "CUSTOM" => Ok(EventType::Custom),
            _ => Err(InvalidEventType { got: s.to_owned() }),
        }
    }
}

/// One event as the JSON ingest paths (HTTP, GraphQL) hand it over: values
/// as received, checked by [`build_batch`].
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// UUID text; `None`: a UUIDv7 is assigned.
    pub event_id: Option<String>,
    /// `INSERT`, `UPDATE`, `DELETE` or `CUSTOM`.
    pub event_type: String,
    pub entity_type: String,
    pub entity_id: String,
    pub occurred_at_us: Option<i64>,
    /// JSON text.
    pub data: Option<String>,
    /// JSON text of `{field: {old, new}}`.
    pub changes: Option<String>,
    pub user_id: Option<String>,
    pub trace_id: Option<String>,
}

impl NewEvent {
    fn fields(&self) -> Fields<'_> {
        Fields {
            event_id: self.event_id.as_deref(),
            event_type: &self.event_type,
            entity_type: &self.entity_type,
            entity_id: &self.entity_id,
            occurred_at_us: self.occurred_at_us,
            data: self.data.as_deref(),
            changes: self.changes.as_deref(),
            user_id: self.user_id.as_deref(),
            trace_id: self.trace_id.as_deref(),
        }
    }
}

/// Build a full-schema batch after checking every event against the rules
/// (`rules.rs`); `event_id` defaults to a fresh UUIDv7, `occurred_at` to
/// `now_us`.
pub fn build_batch(org: &OrgId, events: &[NewEvent], now_us: i64) -> Result<RecordBatch> {
    let ids = events
        .iter()
        .enumerate()
        .map(|(row, e)| rules::check(row, &e.fields()))
        .collect::<Result<Vec<_>>>()?;
    rules::check_unique(&ids)?;
    let event_id = id_column(&ids);
    let org_id = StringArray::from_iter_values(std::iter::repeat_n(org.as_str(), events.len()));
    let event_type = StringArray::from_iter_values(events.iter().map(|e| e.event_type.as_str()));
    let entity_type = StringArray::from_iter_values(events.iter().map(|e| e.entity_type.as_str()));
    let entity_id = StringArray::from_iter_values(events.iter().map(|e| e.entity_id.as_str()));
    let occurred_at = TimestampMicrosecondArray::from_iter_values(
        events.iter().map(|e| e.occurred_at_us.unwrap_or(now_us)),
    )
    .with_timezone("UTC");
    let opt = |f: fn(&NewEvent) -> Option<&str>| -> ArrayRef {
        Arc::new(events.iter().map(f).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(event_id),
        Arc::new(org_id),
        Arc::new(event_type),
        Arc::new(entity_type),
        Arc::new(entity_id),
        Arc::new(occurred_at),
        opt(|e| e.data.as_deref()),
        opt(|e| e.changes.as_deref()),
        opt(|e| e.user_id.as_deref()),
        opt(|e| e.trace_id.as_deref()),
    ];
    Ok(RecordBatch::try_new(event_schema(), columns)?)
}

const INPUT_COLUMNS: [&str; 10] = [
    "event_id",
    "org_id",
    "event_type",
    "entity_type",
    "entity_id",
    "occurred_at",
    "data",
    "changes",
    "user_id",
    "trace_id",
];

/// Normalise a client's ingest batch (Flight DoPut) to [`event_schema`],
/// checking every event against the rules (`rules.rs`) the JSON paths obey.
///
/// Columns are matched by name, in any order. Required: `event_type`,
/// `entity_type`, `entity_id`. Optional: `event_id` (UUID text; null or absent
/// gives a new UUIDv7), `occurred_at` (a Timestamp of any unit and time zone,
/// or Int64 microseconds since the epoch; null or absent gives `now_us`),
/// `data`, `changes` (JSON text), `user_id`, `trace_id`, and `org_id`, whose
/// non-null values must all equal `org` (the org comes from the credential,
/// never from the data). Text columns may be Utf8, LargeUtf8 or Utf8View.
pub fn normalize_batch(org: &OrgId, batch: &RecordBatch, now_us: i64) -> Result<RecordBatch> {
    let schema = batch.schema();
    for field in schema.fields() {
        if !INPUT_COLUMNS.contains(&field.name().as_str()) {
            return Err(Error::schema(
                field.name(),
                None,
                format!(
                    "is not a column of events; the columns are {} (an unknown column is refused rather than dropped)",
                    INPUT_COLUMNS.join(", ")
                ),
            ));
        }
    }
    let rows = batch.num_rows();
    let text = |name: &str| text_column(batch, name);
    let required = |name: &str| -> Result<StringArray> {
        let arr = text(name)?
            .ok_or_else(|| Error::schema(name, None, "is required and missing from the batch"))?;
        match first_null(&arr) {
            Some(row) => Err(Error::schema(
                name,
                Some(row),
                "is null; it is required (a non-null value in every row)",
            )),
            None => Ok(arr),
        }
    };
    let event_type = required("event_type")?;
    let entity_type = required("entity_type")?;
    let entity_id = required("entity_id")?;
    let event_id = text("event_id")?;
    let data = text("data")?;
    let changes = text("changes")?;
    let user_id = text("user_id")?;
    let trace_id = text("trace_id")?;
    let occurred_at = occurred_at_us(batch.column_by_name("occurred_at"))?;

    if let Some(ids) = text("org_id")? {
        for (row, v) in ids.iter().enumerate() {
            if let Some(v) = v
                && v != org.as_str()
            {
                return Err(Error::schema(
                    "org_id",
                    Some(row),
                    format!(
                        "must equal the org of the credential ({org}) or be left out, got {v:?}"
                    ),
                ));
            }
        }
    }

    let mut ids = Vec::with_capacity(rows);
    let mut occurred = Vec::with_capacity(rows);
    for row in 0..rows {
        let at = occurred_at
            .as_ref()
            .filter(|a| a.is_valid(row))
            .map(|a| a.value(row));
        ids.push(rules::check(
            row,
            &Fields {
                event_id: value(&event_id, row),
                event_type: event_type.value(row),
                entity_type: entity_type.value(row),
                entity_id: entity_id.value(row),
                occurred_at_us: at,
                data: value(&data, row),
                changes: value(&changes, row),
                user_id: value(&user_id, row),
                trace_id: value(&trace_id, row),
            },
        )?);
        occurred.push(at.unwrap_or(now_us));
    }
    rules::check_unique(&ids)?;

    let org_id = StringArray::from_iter_values(std::iter::repeat_n(org.as_str(), rows));
    let or_nulls = |a: Option<StringArray>| -> ArrayRef {
        match a {
            Some(a) => Arc::new(a),
            None => Arc::new(StringArray::new_null(rows)),
        }
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id_column(&ids)),
        Arc::new(org_id),
        Arc::new(event_type),
        Arc::new(entity_type),
        Arc::new(entity_id),
        Arc::new(TimestampMicrosecondArray::from(occurred).with_timezone("UTC")),
        or_nulls(data),
        or_nulls(changes),
        or_nulls(user_id),
        or_nulls(trace_id),
    ];
    Ok(RecordBatch::try_new(event_schema(), columns)?)
}

/// Row `row` of an optional column; `None` when the column is absent or
/// the value null.
fn value(a: &Option<StringArray>, row: usize) -> Option<&str> {
    a.as_ref().filter(|a| a.is_valid(row)).map(|a| a.value(row))
}

/// Column `name` of a client batch as Utf8, if present.
fn text_column(batch: &RecordBatch, name: &str) -> Result<Option<StringArray>> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let utf8 = match col.data_type() {
        DataType::Utf8 => col.clone(),
        DataType::LargeUtf8 | DataType::Utf8View => cast(col, &DataType::Utf8)?,
        other => {
            return Err(Error::schema(
                name,
                None,
                format!("must be a string column (Utf8, LargeUtf8 or Utf8View), got {other}"),
            ));
        }
    };
    Ok(Some(utf8.as_string::<i32>().clone()))
}

/// A client's `occurred_at` column as microseconds since the epoch (nulls
/// kept), if present.
fn occurred_at_us(col: Option<&ArrayRef>) -> Result<Option<Int64Array>> {
    let Some(col) = col else {
        return Ok(None);
    };
    let micros = match col.data_type() {
        DataType::Int64 => return Ok(Some(col.as_primitive::<Int64Type>().clone())),
        // Not `cast`: it turns a value that overflows microseconds into a
        // null, which would then read as "now".
        DataType::Timestamp(_, _) => arrow::compute::cast_with_options(
            col,
            &DataType::Timestamp(TimeUnit::Microsecond, None),
            &arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            },
        )
        .map_err(|e| {
            Error::schema(
                "occurred_at",
                None,
                format!("does not fit in microseconds since the Unix epoch ({e})"),
            )
        })?,
        other => {
            return Err(Error::schema(
                "occurred_at",
                None,
                format!(
                    "must be a Timestamp column (any unit, any time zone) or Int64 microseconds since the Unix epoch, got {other}"
                ),
            ));
        }
    };
    let micros = micros.as_primitive::<TimestampMicrosecondType>();
    Ok(Some(Int64Array::new(
        micros.values().clone(),
        micros.nulls().cloned(),
    )))
}

/// The stored `event_id` column: each given id in canonical form, a fresh
/// UUIDv7 where none was given.
fn id_column(ids: &[Option<uuid::Uuid>]) -> StringArray {
    let mut fresh = IdGen::new();
    let mut out = StringBuilder::with_capacity(ids.len(), ids.len() * 36);
    for id in ids {
        push_uuid(&mut out, id.unwrap_or_else(|| fresh.next_id()));
    }
    out.finish()
}

fn first_null(arr: &dyn Array) -> Option<usize> {
    arr.logical_nulls()
        .and_then(|n| (0..arr.len()).find(|&i| n.is_null(i)))
}

/// Fresh UUIDv7s for one batch: one clock read and one random draw, then a
/// counter in the random bits, so the ids stay unique and time-ordered
/// without a clock read and a random draw per event.
struct IdGen {
    base: u128,
    next: u128,
}

impl IdGen {
    /// The low 62 bits of a UUIDv7 are random (above them: variant, the
    /// other 12 random bits, version and the millisecond timestamp).
    const RANDOM_LOW: u128 = (1 << 62) - 1;

    fn new() -> Self {
        Self {
            base: uuid::Uuid::now_v7().as_u128(),
            next: 0,
        }
    }

    fn next_id(&mut self) -> uuid::Uuid {
        let low = ((self.base & Self::RANDOM_LOW) + self.next) & Self::RANDOM_LOW;
        self.next += 1;
        uuid::Uuid::from_u128((self.base & !Self::RANDOM_LOW) | low)
    }
}

fn push_uuid(out: &mut StringBuilder, id: uuid::Uuid) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.append_value(id.hyphenated().encode_lower(&mut buf));
}

/// Cheap check that a batch handed to `append` is in the stored schema.
pub(crate) fn check_stored_schema(batch: &RecordBatch) -> Result<()> {
    let expected = event_schema();
    let schema = batch.schema();
    if schema.fields() == expected.fields() {
        return Ok(());
    }
    let differs = expected
        .fields()
        .iter()
        .zip(schema.fields().iter())
        .find(|(e, g)| e != g)
        .map_or("(the number of columns)", |(e, _)| e.name().as_str());
    Err(Error::schema(
        differs,
        None,
        "is not as the stored event schema has it; build batches with build_batch or normalize_batch",
    ))
}
