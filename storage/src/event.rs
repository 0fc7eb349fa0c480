//! The stored event schema and the two ways a batch of it is made: from typed
//! events (HTTP JSON ingest) and from a client's Arrow batch (Flight DoPut).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use arrow::compute::cast;
use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use honeycell_types::OrgId;

use crate::error::{Error, Result};

pub(crate) const COL_OCCURRED_AT: usize = 5;

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

/// One event as the JSON ingest path hands it over.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub event_id: Option<uuid::Uuid>,
    pub event_type: EventType,
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

/// Build a full-schema batch; `event_id` defaults to a fresh UUIDv7,
/// `occurred_at` to `now_us`. `data` and `changes` must be valid JSON.
pub fn build_batch(org: &OrgId, events: &[NewEvent], now_us: i64) -> Result<RecordBatch> {
    for (row, e) in events.iter().enumerate() {
        check_json("data", row, e.data.as_deref())?;
        check_json("changes", row, e.changes.as_deref())?;
        if let Some(us) = e.occurred_at_us {
            check_occurred_at(row, us)?;
        }
    }
    if events.iter().any(|e| e.event_id.is_some()) {
        let mut seen = HashMap::with_capacity(events.len());
        for (row, e) in events.iter().enumerate() {
            if let Some(id) = e.event_id
                && let Some(first) = seen.insert(id, row)
            {
                return Err(duplicate_id(row, first, &id.to_string()));
            }
        }
    }
    let mut ids = IdGen::new();
    let mut event_id = StringBuilder::with_capacity(events.len(), events.len() * 36);
    for e in events {
        push_uuid(&mut event_id, e.event_id.unwrap_or_else(|| ids.next_id()));
    }
    let event_id = event_id.finish();
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

/// Normalise a client's ingest batch (Flight DoPut) to [`event_schema`].
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
                    "unknown column; allowed columns are {}",
                    INPUT_COLUMNS.join(", ")
                ),
            ));
        }
    }
    let rows = batch.num_rows();
    let column = |name: &str| batch.column_by_name(name);

    let text = |name: &str| -> Result<Option<StringArray>> {
        let Some(col) = column(name) else {
            return Ok(None);
        };
        let utf8 = match col.data_type() {
            DataType::Utf8 => col.clone(),
            DataType::LargeUtf8 | DataType::Utf8View => cast(col, &DataType::Utf8)?,
            other => {
                return Err(Error::schema(
                    name,
                    None,
                    format!("expected a string column (Utf8), got {other}"),
                ));
            }
        };
        Ok(Some(utf8.as_string::<i32>().clone()))
    };
    let required = |name: &str| -> Result<StringArray> {
        let arr =
            text(name)?.ok_or_else(|| Error::schema(name, None, "required column is missing"))?;
        match first_null(&arr) {
            Some(row) => Err(Error::schema(name, Some(row), "null in a required column")),
            None => Ok(arr),
        }
    };

    let event_type = required("event_type")?;
    for (row, v) in event_type.iter().enumerate() {
        if let Err(e) = v.unwrap_or_default().parse::<EventType>() {
            return Err(Error::schema("event_type", Some(row), e.to_string()));
        }
    }
    let entity_type = required("entity_type")?;
    let entity_id = required("entity_id")?;

    let mut fresh = IdGen::new();
    let mut out = StringBuilder::with_capacity(rows, rows * 36);
    match text("event_id")? {
        None => (0..rows).for_each(|_| push_uuid(&mut out, fresh.next_id())),
        Some(ids) => {
            for (row, v) in ids.iter().enumerate() {
                let id = match v {
                    None => fresh.next_id(),
                    Some(s) => uuid::Uuid::parse_str(s).map_err(|e| {
                        Error::schema("event_id", Some(row), format!("not a UUID ({e}): {s:?}"))
                    })?,
                };
                push_uuid(&mut out, id);
            }
        }
    }
    let event_id: StringArray = out.finish();
    if column("event_id").is_some() {
        let mut seen = HashMap::with_capacity(rows);
        for (row, id) in event_id.iter().enumerate() {
            if let Some(id) = id
                && let Some(first) = seen.insert(id, row)
            {
                return Err(duplicate_id(row, first, id));
            }
        }
    }

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
    let org_id = StringArray::from_iter_values(std::iter::repeat_n(org.as_str(), rows));

    let occurred_at = match column("occurred_at") {
        None => TimestampMicrosecondArray::from_iter_values(std::iter::repeat_n(now_us, rows)),
        Some(col) => {
            let micros: ArrayRef = match col.data_type() {
                DataType::Int64 => col.clone(),
                // Not `cast`: it turns a value that overflows microseconds
                // into a null, which would then read as "now".
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
                            "expected Timestamp (any unit, any time zone) or Int64 microseconds since the Unix epoch, got {other}"
                        ),
                    ));
                }
            };
            let values: Vec<i64> = match micros.data_type() {
                DataType::Int64 => micros
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| v.unwrap_or(now_us))
                    .collect(),
                _ => micros
                    .as_primitive::<TimestampMicrosecondType>()
                    .iter()
                    .map(|v| v.unwrap_or(now_us))
                    .collect(),
            };
            for (row, us) in values.iter().enumerate() {
                check_occurred_at(row, *us)?;
            }
            TimestampMicrosecondArray::from(values)
        }
    }
    .with_timezone("UTC");

    let data = text("data")?;
    let changes = text("changes")?;
    for (name, arr) in [("data", &data), ("changes", &changes)] {
        if let Some(arr) = arr {
            for (row, v) in arr.iter().enumerate() {
                check_json(name, row, v)?;
            }
        }
    }
    let nulls = || -> ArrayRef { Arc::new(StringArray::new_null(rows)) };
    let or_nulls =
        |a: Option<StringArray>| a.map(|a| Arc::new(a) as ArrayRef).unwrap_or_else(nulls);

    let columns: Vec<ArrayRef> = vec![
        Arc::new(event_id),
        Arc::new(org_id),
        Arc::new(event_type),
        Arc::new(entity_type),
        Arc::new(entity_id),
        Arc::new(occurred_at),
        or_nulls(data),
        or_nulls(changes),
        or_nulls(text("user_id")?),
        or_nulls(text("trace_id")?),
    ];
    Ok(RecordBatch::try_new(event_schema(), columns)?)
}

/// The earliest `occurred_at` accepted: 0001-01-01T00:00:00Z.
pub const MIN_OCCURRED_AT_US: i64 = -62_135_596_800_000_000;
/// The latest `occurred_at` accepted: 9999-12-31T23:59:59.999999Z (the
/// range RFC 3339 can write, so every stored time reads back as text and
/// can be used as a `since`).
pub const MAX_OCCURRED_AT_US: i64 = 253_402_300_799_999_999;

fn check_occurred_at(row: usize, us: i64) -> Result<()> {
    if (MIN_OCCURRED_AT_US..=MAX_OCCURRED_AT_US).contains(&us) {
        return Ok(());
    }
    Err(Error::schema(
        "occurred_at",
        Some(row),
        format!(
            "{us} µs since the Unix epoch is outside years 1 to 9999; send microseconds (not nanoseconds) or RFC 3339 text"
        ),
    ))
}

fn duplicate_id(row: usize, first: usize, id: &str) -> Error {
    Error::schema(
        "event_id",
        Some(row),
        format!(
            "{id:?} is also the event_id of event {first} in this batch; each event needs its own id"
        ),
    )
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

fn check_json(field: &str, row: usize, value: Option<&str>) -> Result<()> {
    if let Some(v) = value
        && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(v)
    {
        return Err(Error::schema(
            field,
            Some(row),
            format!("not valid JSON text: {e}"),
        ));
    }
    Ok(())
}

/// Cheap check that a batch handed to `append` is in the stored schema.
pub(crate) fn check_stored_schema(batch: &RecordBatch) -> Result<()> {
    let expected = event_schema();
    if batch.schema().fields() != expected.fields() {
        return Err(Error::schema(
            "<batch>",
            None,
            "batch is not in the stored event schema; build it with build_batch or normalize_batch",
        ));
    }
    Ok(())
}
