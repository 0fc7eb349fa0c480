//! The rules every event obeys, whatever protocol brought it. HTTP JSON and
//! NDJSON, GraphQL and Flight DoPut all end in [`crate::build_batch`] or
//! [`crate::normalize_batch`], and both check each event here, so a rule is
//! written once and every protocol refuses the same events with the same
//! words. A refusal names the event (its row in the batch, counted from 0),
//! the field, and what to send instead.
//!
//! Not here: how a protocol reads its values (JSON types, Arrow column
//! types, RFC 3339 text); those errors are the protocol's own.

use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::EventType;

/// The longest `entity_type`, `entity_id`, `user_id` and `trace_id`, in
/// bytes (they are also never empty).
pub(crate) const MAX_ID_LEN: usize = 256;

/// The earliest `occurred_at` accepted: 0001-01-01T00:00:00Z.
pub(crate) const MIN_OCCURRED_AT_US: i64 = -62_135_596_800_000_000;
/// The latest `occurred_at` accepted: 9999-12-31T23:59:59.999999Z (the
/// range RFC 3339 can write, so every stored time reads back as text and
/// can be used as a `since`).
pub(crate) const MAX_OCCURRED_AT_US: i64 = 253_402_300_799_999_999;

/// One event's values as received, before the rules are applied. `None` is
/// a value left out (or null).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Fields<'a> {
    pub event_id: Option<&'a str>,
    pub event_type: &'a str,
    pub entity_type: &'a str,
    pub entity_id: &'a str,
    pub occurred_at_us: Option<i64>,
    pub data: Option<&'a str>,
    pub changes: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
}

/// Checks event `row` of a batch against every rule that concerns it
/// alone; its `event_id`, parsed, when it has one.
pub(crate) fn check(row: usize, f: &Fields<'_>) -> Result<Option<Uuid>> {
    let event_id = f.event_id.map(|s| parse_event_id(row, s)).transpose()?;
    if let Err(e) = f.event_type.parse::<EventType>() {
        return Err(Error::schema(
            "event_type",
            Some(row),
            format!(
                "must be one of {} (upper case), got {:?}",
                EventType::ALLOWED,
                e.got
            ),
        ));
    }
    check_id(row, "entity_type", f.entity_type)?;
    check_id(row, "entity_id", f.entity_id)?;
    if let Some(us) = f.occurred_at_us {
        check_occurred_at(row, us)?;
    }
    if let Some(data) = f.data {
        json::<serde::de::IgnoredAny>(row, "data", data)?;
    }
    if let Some(changes) = f.changes {
        check_changes(row, changes)?;
    }
    for (field, value) in [("user_id", f.user_id), ("trace_id", f.trace_id)] {
        if let Some(v) = value {
            check_id(row, field, v)?;
        }
    }
    Ok(event_id)
}

/// No two events of one batch share an `event_id` (ids compared as UUIDs,
/// so case and the braced or simple forms do not hide a repeat).
pub(crate) fn check_unique(ids: &[Option<Uuid>]) -> Result<()> {
    if ids.iter().all(Option::is_none) {
        return Ok(());
    }
    let mut seen = HashMap::with_capacity(ids.len());
    for (row, id) in ids.iter().enumerate() {
        if let Some(id) = id
            && let Some(first) = seen.insert(*id, row)
        {
            return Err(Error::schema(
                "event_id",
                Some(row),
                format!(
                    "\"{id}\" is also the event_id of event {first} in this batch; each event needs its own id"
                ),
            ));
        }
    }
    Ok(())
}

fn parse_event_id(row: usize, s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| {
        Error::schema(
            "event_id",
            Some(row),
            format!("is not a UUID ({e}): {s:?}; leave it out to have a UUIDv7 assigned"),
        )
    })
}

fn check_id(row: usize, field: &str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        format!("is empty; send 1 to {MAX_ID_LEN} bytes")
    } else if value.len() > MAX_ID_LEN {
        format!(
            "is {} bytes long; send 1 to {MAX_ID_LEN} bytes",
            value.len()
        )
    } else {
        return Ok(());
    };
    Err(Error::schema(field, Some(row), reason))
}

fn check_occurred_at(row: usize, us: i64) -> Result<()> {
    if (MIN_OCCURRED_AT_US..=MAX_OCCURRED_AT_US).contains(&us) {
        return Ok(());
    }
    Err(Error::schema(
        "occurred_at",
        Some(row),
        format!(
            "is {us} µs since the Unix epoch, outside years 1 to 9999; send microseconds (not nanoseconds) or RFC 3339 text"
        ),
    ))
}

/// `text` parsed as JSON, or why not.
fn json<T: serde::de::DeserializeOwned>(row: usize, field: &str, text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| Error::schema(field, Some(row), format!("is not valid JSON text: {e}")))
}

/// `changes` is `{"<field>": {"old": …, "new": …}, …}`: each change has
/// `old`, `new` or both, and nothing else.
fn check_changes(row: usize, text: &str) -> Result<()> {
    const SHAPE: &str = r#"{"<field>": {"old": …, "new": …}}"#;
    let changes: Value = json(row, "changes", text)?;
    let Value::Object(fields) = changes else {
        return Err(Error::schema(
            "changes",
            Some(row),
            format!("must be a JSON object of {SHAPE}"),
        ));
    };
    for (name, change) in &fields {
        let ok = matches!(change, Value::Object(c)
            if !c.is_empty() && c.keys().all(|k| k == "old" || k == "new"));
        if !ok {
            return Err(Error::schema(
                &format!("changes.{name}"),
                Some(row),
                format!(
                    "must be an object with \"old\", \"new\" or both, and nothing else (changes is {SHAPE})"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Fields<'static> {
        Fields {
            event_type: "INSERT",
            entity_type: "order",
            entity_id: "o-1",
            ..Fields::default()
        }
    }

    /// The field and message of the refusal of `f` as row 2.
    fn refusal(f: Fields<'_>) -> (String, String) {
        match check(2, &f) {
            Err(e @ Error::Schema { .. }) => {
                let msg = e.to_string();
                let Error::Schema { field, row, .. } = e else {
                    unreachable!()
                };
                assert_eq!(row, Some(2), "{msg}");
                assert!(msg.starts_with("event 2: "), "{msg}");
                (field, msg)
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_good_event_passes_and_its_id_is_parsed() {
        assert_eq!(check(0, &ok()).ok(), Some(None));
        let id = "0190a0a0-0000-7000-8000-000000000001";
        let f = Fields {
            event_id: Some(id),
            changes: Some(r#"{"status": {"old": null, "new": "paid"}, "qty": {"new": 2}}"#),
            data: Some("5"),
            user_id: Some(&"u".repeat(MAX_ID_LEN)),
            ..ok()
        };
        assert_eq!(check(0, &f).ok(), Some(Uuid::parse_str(id).ok()));
    }

    #[test]
    fn each_rule_names_its_field_and_what_to_send() {
        let long = "x".repeat(MAX_ID_LEN + 1);
        let cases: Vec<(Fields<'_>, &str, &str)> = vec![
            (
                Fields {
                    event_type: "insert",
                    ..ok()
                },
                "event_type",
                "INSERT, UPDATE",
            ),
            (
                Fields {
                    entity_type: "",
                    ..ok()
                },
                "entity_type",
                "is empty",
            ),
            (
                Fields {
                    entity_id: "",
                    ..ok()
                },
                "entity_id",
                "1 to 256 bytes",
            ),
            (
                Fields {
                    entity_id: &long,
                    ..ok()
                },
                "entity_id",
                "257 bytes",
            ),
            (
                Fields {
                    user_id: Some(""),
                    ..ok()
                },
                "user_id",
                "is empty",
            ),
            (
                Fields {
                    trace_id: Some(&long),
                    ..ok()
                },
                "trace_id",
                "257 bytes",
            ),
            (
                Fields {
                    event_id: Some("nope"),
                    ..ok()
                },
                "event_id",
                "not a UUID",
            ),
            (
                Fields {
                    occurred_at_us: Some(MAX_OCCURRED_AT_US + 1),
                    ..ok()
                },
                "occurred_at",
                "years 1 to 9999",
            ),
            (
                Fields {
                    data: Some("{oops"),
                    ..ok()
                },
                "data",
                "not valid JSON",
            ),
            (
                Fields {
                    changes: Some("[1]"),
                    ..ok()
                },
                "changes",
                "JSON object of",
            ),
            (
                Fields {
                    changes: Some(r#"{"s": "paid"}"#),
                    ..ok()
                },
                "changes.s",
                "or both",
            ),
            (
                Fields {
                    changes: Some(r#"{"s": {}}"#),
                    ..ok()
                },
                "changes.s",
                "nothing else",
            ),
            (
                Fields {
                    changes: Some(r#"{"s": {"old": 1, "newer": 2}}"#),
                    ..ok()
                },
                "changes.s",
                "\"old\", \"new\" or both",
            ),
        ];
        for (f, field, hint) in cases {
            let (got, msg) = refusal(f);
            assert_eq!(got, field, "{msg}");
            assert!(
                msg.contains(field) && msg.contains(hint),
                "{msg} lacks {hint:?}"
            );
        }
    }

    #[test]
    fn repeated_ids_are_refused_whatever_their_spelling() {
        let a = Uuid::parse_str("0190a0a0-0000-7000-8000-00000000000a").ok();
        let upper = Uuid::parse_str("0190A0A0-0000-7000-8000-00000000000A").ok();
        assert!(check_unique(&[a, None]).is_ok());
        let err = check_unique(&[a, None, upper]).expect_err("a repeat");
        let msg = err.to_string();
        assert!(
            msg.starts_with("event 2: event_id") && msg.contains("event 0"),
            "{msg}"
        );
    }
}
