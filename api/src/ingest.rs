//! Parsing and validating events sent as JSON (HTTP body or GraphQL input)
//! into storage's `NewEvent`s. Validation is all-or-nothing per batch: the
//! first bad event is reported with its index and nothing is stored.

use honeycell_storage::{EventType, NewEvent};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// One event as clients send it. Unknown fields are refused so that a typo
/// (`entity_typ`) is an error rather than silently lost data.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    #[serde(default)]
    pub event_id: Option<String>,
    pub event_type: String,
    pub entity_type: String,
    pub entity_id: String,
    /// RFC 3339 text or integer microseconds since the epoch.
    #[serde(default)]
    pub occurred_at: Option<Value>,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub changes: Option<Value>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
}

const MAX_ID_LEN: usize = 256;

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

fn check_id(index: usize, field: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > MAX_ID_LEN {
        return Err(bad(
            index,
            format!("{field} must be 1 to {MAX_ID_LEN} bytes long"),
        ));
    }
    Ok(())
}

fn check_changes(index: usize, v: &Value) -> Result<(), ApiError> {
    let Value::Object(fields) = v else {
        return Err(bad(
            index,
            "changes must be an object of {\"field\": {\"old\": …, \"new\": …}}".into(),
        ));
    };
    for (field, change) in fields {
        let ok = matches!(change, Value::Object(c) if !c.is_empty() && c.keys().all(|k| k == "old" || k == "new"));
        if !ok {
            return Err(bad(
                index,
                format!("changes.{field} must be an object with \"old\" and/or \"new\""),
            ));
        }
    }
    Ok(())
}

impl EventIn {
    /// Validates and converts one event.
    pub fn into_new_event(self, index: usize) -> Result<NewEvent, ApiError> {
        let event_type: EventType = self
            .event_type
            .parse()
            .map_err(|e| bad(index, format!("event_type: {e}")))?;
        check_id(index, "entity_type", &self.entity_type)?;
        check_id(index, "entity_id", &self.entity_id)?;
        let event_id = match self.event_id {
            Some(s) => Some(uuid::Uuid::parse_str(&s).map_err(|e| {
                bad(index, format!("event_id {s:?} is not a UUID ({e}); omit it to have a UUIDv7 assigned"))
            })?),
            None => None,
        };
        let occurred_at_us = match &self.occurred_at {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_time_us(v).map_err(|e| bad(index, format!("occurred_at: {e}")))?),
        };
        if let Some(c) = &self.changes {
            check_changes(index, c)?;
        }
        for (field, v) in [("user_id", &self.user_id), ("trace_id", &self.trace_id)] {
            if let Some(v) = v {
                check_id(index, field, v)?;
            }
        }
        let json_text = |v: Option<Value>| match v {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.to_string()),
        };
        Ok(NewEvent {
            event_id,
            event_type,
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

/// Explains a serde error on one event in words a client can act on.
fn explain(index: usize, e: &serde_json::Error) -> ApiError {
    let msg = e.to_string();
    if msg.contains("unknown field `org_id`") {
        return bad(
            index,
            "org_id is not accepted in the body: the org comes from your credential".into(),
        );
    }
    bad(index, msg)
}

/// Parses a JSON array of events.
pub fn parse_json_array(body: &[u8], max_events: usize) -> Result<Vec<NewEvent>, ApiError> {
    let values: Vec<Box<serde_json::value::RawValue>> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("body is not a JSON array of events: {e}"),
        )
    })?;
    check_count(values.len(), max_events)?;
    values
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            serde_json::from_str::<EventIn>(raw.get())
                .map_err(|e| explain(i, &e))?
                .into_new_event(i)
        })
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
        let ev: EventIn = serde_json::from_slice(line).map_err(|e| explain(i, &e))?;
        out.push(ev.into_new_event(i)?);
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
            format!("the batch holds more than {max} events (http.max_batch_events); split it"),
        ));
    }
    Ok(())
}
