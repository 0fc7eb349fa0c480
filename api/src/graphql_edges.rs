//! The `events` connection's edges, resolved straight from the Arrow columns.
//!
//! async-graphql's derived objects resolve every field of every object as its
//! own boxed future, collected through a `FuturesUnordered` into an
//! `IndexMap`; for a 10,000-row page of 10-field events that machinery (and
//! the allocator under it) was most of the GraphQL path's time
//! (bench/README.md). [`EventEdges`] is registered in the schema exactly as
//! `[EventEdge!]!` — the derived [`EventEdge`] and [`Event`] types still
//! describe it, so validation, introspection and complexity limits are
//! unchanged — but it resolves by turning the selection set into a plan once
//! and then building each row's value in a plain loop.
//!
//! `@skip`/`@include` were already applied by the executor before resolution
//! (it removes skipped selections); fragments and inline fragments are
//! followed, aliases are kept, and repeated selections of `node` are merged as
//! the GraphQL specification requires.

use std::borrow::Cow;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::TimestampMicrosecondType;
use async_graphql::indexmap::IndexMap;
use async_graphql::parser::types::{Field, Selection, SelectionSet};
use async_graphql::registry::Registry;
use async_graphql::{
    ContextSelectionSet, Json, Name, OutputType, Positioned, ServerResult, SimpleObject, Value,
};
use honeycell_cell::query::Cursor;
use honeycell_storage::col;

use crate::json::rfc3339_us;

/// One event, as the schema describes it (resolved by [`EventEdges`]).
#[derive(SimpleObject)]
pub struct Event {
    event_id: String,
    org_id: String,
    event_type: String,
    entity_type: String,
    entity_id: String,
    /// RFC 3339, microsecond precision, UTC.
    occurred_at: String,
    data: Option<Json<serde_json::Value>>,
    changes: Option<Json<serde_json::Value>>,
    user_id: Option<String>,
    trace_id: Option<String>,
}

/// One edge of the `events` connection, as the schema describes it.
#[derive(SimpleObject)]
pub struct EventEdge {
    cursor: String,
    node: Event,
}

/// A page of events: the batches and each row's absolute offset (its cursor).
pub struct EventEdges {
    pub batches: Vec<RecordBatch>,
    pub offsets: Vec<u64>,
}

impl EventEdges {
    /// The cursor of the last row, if any.
    pub fn end_cursor(&self) -> Option<String> {
        self.offsets.last().map(|&o| Cursor(o).encode())
    }
}

/// What one selected field of `Event` reads.
#[derive(Clone, Copy)]
enum NodeField {
    Text(usize),
    OptText(usize),
    OptJson(usize),
    OccurredAt,
    Typename,
}

enum EdgeField {
    Cursor,
    Typename,
    Node(Vec<(Name, NodeField)>),
}

/// The fields of `set`, following fragment spreads and inline fragments
/// (every fragment here applies: `EventEdge` and `Event` are object types).
fn collect<'a>(
    ctx: &ContextSelectionSet<'a>,
    set: &'a SelectionSet,
    out: &mut Vec<&'a Positioned<Field>>,
) {
    for selection in &set.items {
        match &selection.node {
            Selection::Field(f) => out.push(f),
            Selection::FragmentSpread(spread) => {
                if let Some(fragment) = ctx.query_env.fragments.get(&spread.node.fragment_name.node)
                {
                    collect(ctx, &fragment.node.selection_set.node, out);
                }
            }
            Selection::InlineFragment(inline) => {
                collect(ctx, &inline.node.selection_set.node, out);
            }
        }
    }
}

fn node_field(name: &str) -> Option<NodeField> {
    Some(match name {
        "eventId" => NodeField::Text(col::EVENT_ID),
        "orgId" => NodeField::Text(col::ORG_ID),
        "eventType" => NodeField::Text(col::EVENT_TYPE),
        "entityType" => NodeField::Text(col::ENTITY_TYPE),
        "entityId" => NodeField::Text(col::ENTITY_ID),
        "occurredAt" => NodeField::OccurredAt,
        "data" => NodeField::OptJson(col::DATA),
        "changes" => NodeField::OptJson(col::CHANGES),
        "userId" => NodeField::OptText(col::USER_ID),
        "traceId" => NodeField::OptText(col::TRACE_ID),
        "__typename" => NodeField::Typename,
        _ => return None,
    })
}

fn plan(ctx: &ContextSelectionSet<'_>) -> ServerResult<Vec<(Name, EdgeField)>> {
    let mut fields = Vec::new();
    collect(ctx, &ctx.item.node, &mut fields);
    let mut plan: Vec<(Name, EdgeField)> = Vec::with_capacity(fields.len());
    for f in fields {
        let key = f.node.response_key().node.clone();
        let field = match f.node.name.node.as_str() {
            "cursor" => EdgeField::Cursor,
            "__typename" => EdgeField::Typename,
            "node" => {
                let mut inner = Vec::new();
                collect(ctx, &f.node.selection_set.node, &mut inner);
                let mut node = Vec::with_capacity(inner.len());
                for g in inner {
                    let Some(nf) = node_field(g.node.name.node.as_str()) else {
                        return Err(unknown(g, "Event"));
                    };
                    node.push((g.node.response_key().node.clone(), nf));
                }
                // A repeated `node` selection merges into the first one.
                if let Some((_, EdgeField::Node(prev))) = plan.iter_mut().find(|(k, _)| *k == key) {
                    prev.extend(node);
                    continue;
                }
                EdgeField::Node(node)
            }
            _ => return Err(unknown(f, "EventEdge")),
        };
        if !plan.iter().any(|(k, _)| *k == key) {
            plan.push((key, field));
        }
    }
    Ok(plan)
}

/// Validation rejects unknown fields before execution; this is the guard for
/// a schema change that forgets this module.
fn unknown(f: &Positioned<Field>, ty: &str) -> async_graphql::ServerError {
    async_graphql::ServerError::new(
        format!(
            r#"Cannot query field "{}" on type "{ty}"."#,
            f.node.name.node
        ),
        Some(f.pos),
    )
}

fn node_value(batch: &RecordBatch, i: usize, field: NodeField) -> Value {
    let text = |c: usize| -> &StringArray { batch.column(c).as_string::<i32>() };
    match field {
        NodeField::Text(c) => Value::String(text(c).value(i).to_owned()),
        NodeField::OptText(c) => {
            let a = text(c);
            if a.is_null(i) {
                Value::Null
            } else {
                Value::String(a.value(i).to_owned())
            }
        }
        NodeField::OptJson(c) => {
            let a = text(c);
            if a.is_null(i) {
                Value::Null
            } else {
                // Validated JSON text at ingest, parsed straight into the
                // response value.
                serde_json::from_str(a.value(i)).unwrap_or(Value::Null)
            }
        }
        NodeField::OccurredAt => {
            let ts = batch
                .column(col::OCCURRED_AT)
                .as_primitive::<TimestampMicrosecondType>();
            Value::String(rfc3339_us(ts.value(i)))
        }
        NodeField::Typename => Value::String("Event".to_owned()),
    }
}

impl OutputType for EventEdges {
    fn type_name() -> Cow<'static, str> {
        <Vec<EventEdge> as OutputType>::type_name()
    }

    fn qualified_type_name() -> String {
        <Vec<EventEdge> as OutputType>::qualified_type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        <Vec<EventEdge> as OutputType>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &ContextSelectionSet<'_>,
        _field: &Positioned<Field>,
    ) -> ServerResult<Value> {
        let plan = plan(ctx)?;
        let mut rows = Vec::with_capacity(self.offsets.len());
        let mut offsets = self.offsets.iter();
        for batch in &self.batches {
            for i in 0..batch.num_rows() {
                let offset = offsets.next().copied().unwrap_or_default();
                let mut edge = IndexMap::with_capacity(plan.len());
                for (key, field) in &plan {
                    let value = match field {
                        EdgeField::Cursor => Value::String(Cursor(offset).encode()),
                        EdgeField::Typename => Value::String("EventEdge".to_owned()),
                        EdgeField::Node(fields) => {
                            let mut node = IndexMap::with_capacity(fields.len());
                            for (k, f) in fields {
                                node.insert(k.clone(), node_value(batch, i, *f));
                            }
                            Value::Object(node)
                        }
                    };
                    edge.insert(key.clone(), value);
                }
                rows.push(Value::Object(edge));
            }
        }
        Ok(Value::List(rows))
    }
}
