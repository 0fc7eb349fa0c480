//! Reading events sent as JSON (HTTP body or GraphQL input) into storage's
//! `NewEvent`s: the JSON's shape (objects, field names, JSON types, times as
//! RFC 3339 text or integer microseconds). The rules events obey whatever
//! the protocol (id lengths, event types, the shape of `changes`, …) are
//! storage's (`honeycell_storage::build_batch`), shared with Flight DoPut.
//! All-or-nothing per batch: the first bad event is reported with its index
//! and nothing is stored.

use honeycell_storage::NewEvent;
use serde_json::Value;

use crate::error::ApiError;

/// One event as clients send it.
#[derive(Debug, Default)]
pub struct EventIn {
    pub event_id: Option<String>,
    pub event_type: String,
    pub entity_type: String,
    pub entity_id: String,
    /// RFC 3339 text or integer microseconds since the epoch.
    pub occurred_at: Option<Value>,
    pub data: Option<Value>,
    pub changes: Option<Value>,
    pub user_id: Option<String>,
    pub trace_id: Option<String>,
}

/// The JSON type of a value, in words.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const FIELDS: &str =
    "event_id, event_type, entity_type, entity_id, occurred_at, data, changes, user_id, trace_id";

impl EventIn {
    /// Reads one event from a JSON value, naming the field and the expected
    /// type in every error. Unknown fields are refused so that a typo
    /// (`entity_typ`) is an error rather than silently lost data.
    pub fn from_value(index: usize, value: Value) -> Result<Self, ApiError> {
        let Value::Object(map) = value else {
            return Err(bad(
                index,
                format!("an event must be a JSON object, got {}", kind(&value)),
            ));
        };
        let mut ev = EventIn::default();
        let (mut has_type, mut has_entity_type, mut has_entity_id) = (false, false, false);
        for (key, v) in map {
            let text = |v: Value, required: bool| -> Result<Option<String>, ApiError> {
                match v {
                    Value::String(s) => Ok(Some(s)),
                    Value::Null if !required => Ok(None),
                    other => Err(bad(
                        index,
                        format!("{key} must be a string, got {}", kind(&other)),
                    )),
                }
            };
            match key.as_str() {
                "event_id" => ev.event_id = text(v, false)?,
                "event_type" => {
                    ev.event_type = text(v, true)?.unwrap_or_default();
                    has_type = true;
                }
                "entity_type" => {
                    ev.entity_type = text(v, true)?.unwrap_or_default();
                    has_entity_type = true;
                }
                "entity_id" => {
                    ev.entity_id = text(v, true)?.unwrap_or_default();
                    has_entity_id = true;
                }
                "user_id" => ev.user_id = text(v, false)?,
                "trace_id" => ev.trace_id = text(v, false)?,
                "occurred_at" => ev.occurred_at = Some(v),
                "data" => ev.data = Some(v),
                "changes" => ev.changes = Some(v),
                "org_id" => {
                    return Err(bad(
                        index,
                        "org_id is not accepted in the body: the org comes from your credential"
                            .into(),
                    ));
                }
                other => {
                    return Err(bad(
                        index,
                        format!("unknown field {other:?}; the fields are {FIELDS}"),
                    ));
                }
            }
        }
        for (present, field) in [
            (has_type, "event_type"),
            (has_entity_type, "entity_type"),
            (has_entity_id, "entity_id"),
        ] {
            if !present {
                return Err(bad(index, format!("missing required field {field}")));
            }
        }
        Ok(ev)
    }
}

fn bad(index: usize, message: String) -> ApiError {
    ApiError::bad_request("invalid_event", format!("event {index}: {message}")).at(index)
}

/// Parses a timestamp given as RFC 3339 text or integer microseconds.
pub fn parse_time_us(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("{n} is not an integer number of microseconds")),
        Value::String(s) => honeycell_cell::query::parse_time(s),
        other => Err(format!(
            "expected RFC 3339 text or integer microseconds, got {other}"
        )),
    }
}

impl EventIn {
    /// Converts one event; what it holds is checked by storage's rules
    /// when the batch is built.
    pub fn into_new_event(self, index: usize) -> Result<NewEvent, ApiError> {
        let occurred_at_us = match &self.occurred_at {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_time_us(v).map_err(|e| bad(index, format!("occurred_at: {e}")))?),
        };
        let json_text = |v: Option<Value>| match v {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.to_string()),
        };
        Ok(NewEvent {
            event_id: self.event_id,
            event_type: self.event_type,
            entity_type: self.entity_type,
            entity_id: self.entity_id,
            occurred_at_us,
            data: json_text(self.data),
            changes: json_text(self.changes),
            user_id: self.user_id,
            trace_id: self.trace_id,
        })
    }
}

/// Parses a JSON array of events.
pub fn parse_json_array(body: &[u8], max_events: usize) -> Result<Vec<NewEvent>, ApiError> {
    let value: Value = crate::strict_json::parse(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}"))
    })?;
    let Value::Array(values) = value else {
        return Err(ApiError::bad_request(
            "invalid_json",
            format!(
                "body must be a JSON array of events (or NDJSON with Content-Type application/x-ndjson), got {}",
                kind(&value)
            ),
        ));
    };
    check_count(values.len(), max_events)?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| EventIn::from_value(i, v)?.into_new_event(i))
        .collect()
}

/// Parses newline-delimited JSON: one event object per non-empty line.
pub fn parse_ndjson(body: &[u8], max_events: usize) -> Result<Vec<NewEvent>, ApiError> {
    let mut out = Vec::new();
    for (i, line) in body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .enumerate()
    {
        check_count(i + 1, max_events)?;
        let v: Value = crate::strict_json::parse(line).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("line {} (event {i}) is not valid JSON: {e}", i + 1),
            )
            .at(i)
        })?;
        out.push(EventIn::from_value(i, v)?.into_new_event(i)?);
    }
    check_count(out.len(), max_events)?;
    Ok(out)
}

fn check_count(n: usize, max: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::bad_request(
            "empty_batch",
            "the batch holds no events; send at least one",
        ));
    }
    if n > max {
        return Err(ApiError::new(
            honeycell_types::ErrorClass::TooLarge,
            "batch_too_large",
            format!(
                "the batch holds more than {max} events (http_limits.max_batch_events); split it"
            ),
        ));
    }
    Ok(())
}
