//! What `POST /graphql` checks before async-graphql runs anything, and how
//! its answers are bounded.
//!
//! In order: the body is read up to `http_limits.max_body_bytes`; it must be
//! one JSON object (batches are refused) without duplicate keys and no
//! deeper than serde_json's recursion limit; the query text may nest `{`,
//! `[` and `(` at most `http_limits.graphql_max_nesting` deep, checked on
//! the text so that the parser's recursion is bounded before it starts; a
//! mutation may call `ingestEvents` once, so that one request's ingest is
//! all or nothing and counts whole against `max_batch_events`. The schema
//! then refuses a cost over `http_limits.graphql_max_cost` (rows, see
//! `graphql::page_cost`) before executing, and the answer is serialised
//! into a buffer capped at `http_limits.graphql_max_response_bytes`.
//!
//! Errors answer in GraphQL's shape, `{"errors": [{"message", "extensions":
//! {"code", "status"}}]}`, with the HTTP status of their class.

use std::collections::HashSet;

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::{Positioned, Variables};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use honeycell_types::ErrorClass;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::{ApiState, HttpConfig};

/// The mutation field that stores events.
const INGEST_FIELD: &str = "ingestEvents";

/// Reads one GraphQL request from a JSON body, checked as the module header
/// says.
pub fn request(config: &HttpConfig, body: &[u8]) -> Result<async_graphql::Request, ApiError> {
    let value = crate::strict_json::parse(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    let mut object = match value {
        Value::Object(o) => o,
        Value::Array(_) => {
            return Err(ApiError::bad_request(
                "batch_not_supported",
                "batched GraphQL requests (a JSON array) are not supported; send one {\"query\": …} object per request",
            ));
        }
        _ => return Err(shape("the body must be a JSON object")),
    };
    let query = match object.remove("query") {
        Some(Value::String(q)) => q,
        None | Some(Value::Null) => return Err(shape("the body has no \"query\"")),
        Some(_) => return Err(shape("\"query\" must be a string")),
    };
    let operation_name = match object.remove("operationName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(shape("\"operationName\" must be a string")),
    };
    let variables = match object.remove("variables") {
        None | Some(Value::Null) => Variables::default(),
        Some(v @ Value::Object(_)) => Variables::from_json(v),
        Some(_) => return Err(shape("\"variables\" must be an object")),
    };
    object.remove("extensions");
    if let Some(key) = object.keys().next() {
        let key: String = key.chars().take(64).collect();
        return Err(shape(&format!("unknown member {key:?}")));
    }
    check_nesting(&query, config.graphql_max_nesting)?;

    let mut request = async_graphql::Request::new(query).variables(variables);
    if let Some(name) = &operation_name {
        request = request.operation_name(name.clone());
    }
    // Parsed here (once: the schema takes the parsed document) so that the
    // ingests of a mutation are counted before anything runs. A document
    // that does not parse is left to the schema, which says where.
    if let Ok(doc) = async_graphql::parser::parse_query(&request.query) {
        let ingests = count_ingests(&doc, operation_name.as_deref());
        if ingests > 1 {
            return Err(ApiError::bad_request(
                "one_ingest_per_request",
                format!(
                    "this mutation calls {INGEST_FIELD} {ingests} times; a request may ingest one batch (all or nothing): send its events in one {INGEST_FIELD} call, at most {} (http_limits.max_batch_events)",
                    config.max_batch_events
                ),
            ));
        }
        request.set_parsed_query(doc);
    }
    Ok(request)
}

fn shape(what: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_request",
        format!(
            "{what}; send {{\"query\": \"…\", \"variables\": {{…}}, \"operationName\": \"…\"}} as application/json"
        ),
    )
}

/// Refuses a document whose `{`, `[` and `(` nest deeper than `max`,
/// skipping strings, block strings and comments. Linear, no recursion.
pub(crate) fn check_nesting(query: &str, max: usize) -> Result<(), ApiError> {
    let b = query.as_bytes();
    let (mut i, mut depth, mut line) = (0usize, 0usize, 1usize);
    while i < b.len() {
        match b[i] {
            b'\n' => line += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' && b[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            b'"' if b[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < b.len() {
                    if b[i..].starts_with(b"\\\"\"\"") {
                        i += 4;
                    } else if b[i..].starts_with(b"\"\"\"") {
                        i += 3;
                        break;
                    } else {
                        line += usize::from(b[i] == b'\n');
                        i += 1;
                    }
                }
                continue;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max {
                    return Err(ApiError::bad_request(
                        "query_too_deep",
                        format!(
                            "the query nests braces, brackets or parentheses more than {max} deep (line {line}; http_limits.graphql_max_nesting); flatten the query or its values"
                        ),
                    ));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// How many times the mutation that would run selects `ingestEvents` at its
/// root, through fragments too.
fn count_ingests(doc: &ExecutableDocument, operation: Option<&str>) -> usize {
    let mutations: Vec<&SelectionSet> = match &doc.operations {
        DocumentOperations::Single(op) => vec![&op.node],
        DocumentOperations::Multiple(ops) => ops
            .iter()
            .filter(|(name, _)| operation.is_none_or(|o| name.as_str() == o))
            .map(|(_, op)| &op.node)
            .collect(),
    }
    .into_iter()
    .filter(|op| op.ty == OperationType::Mutation)
    .map(|op| &op.selection_set.node)
    .collect();
    let mut seen = HashSet::new();
    mutations
        .into_iter()
        .map(|set| count_in(doc, set, &mut seen))
        .max()
        .unwrap_or(0)
}

fn count_in<'a>(
    doc: &'a ExecutableDocument,
    set: &'a SelectionSet,
    seen: &mut HashSet<&'a str>,
) -> usize {
    // Iterative over the root's fragments: a hostile document may chain
    // many of them (cycles are a validation error; `seen` stops them here).
    let mut stack: Vec<&Positioned<Selection>> = set.items.iter().collect();
    let mut n = 0;
    while let Some(sel) = stack.pop() {
        match &sel.node {
            Selection::Field(f) => n += usize::from(f.node.name.node == INGEST_FIELD),
            Selection::InlineFragment(f) => stack.extend(f.node.selection_set.node.items.iter()),
            Selection::FragmentSpread(s) => {
                let name = s.node.fragment_name.node.as_str();
                if seen.insert(name)
                    && let Some(f) = doc.fragments.get(&s.node.fragment_name.node)
                {
                    stack.extend(f.node.selection_set.node.items.iter());
                }
            }
        }
    }
    n
}

/// An error in GraphQL's shape, with its HTTP status (and `Retry-After`).
pub(crate) fn error_response(e: ApiError) -> Response {
    let status =
        StatusCode::from_u16(e.class.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({ "errors": [{
        "message": e.message,
        "extensions": { "code": e.code, "status": status.as_u16() },
    }]});
    let mut resp = (status, axum::Json(body)).into_response();
    if let ErrorClass::Overloaded { retry_after } = e.class {
        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The refusal of a request over a schema limit, if `resp` is one.
pub(crate) fn limit_refusal(resp: &async_graphql::Response, state: &ApiState) -> Option<ApiError> {
    if resp.data != async_graphql::Value::Null {
        return None;
    }
    let message = resp.errors.first().map(|e| e.message.as_str())?;
    match message {
        "Query is too complex." => Some(ApiError::bad_request(
            "query_too_costly",
            format!(
                "this query may return more than {} rows (http_limits.graphql_max_cost): each events field counts its `first` (default {}), aliases and fragments add up; ask for fewer or smaller pages",
                state.config.graphql_max_cost,
                state
                    .config
                    .default_page_size
                    .min(state.config.max_page_size)
            ),
        )),
        "Query is nested too deep." => Some(ApiError::bad_request(
            "query_too_deep",
            "the query's selections nest more than 12 deep; flatten it",
        )),
        _ => None,
    }
}

/// Serialises `resp`, or refuses it when it is larger than `max` bytes
/// (found while writing: no more than `max` bytes are ever buffered).
pub(crate) fn encode(resp: &async_graphql::Response, max: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Capped {
        buf: Vec::with_capacity(4096),
        max,
        full: false,
    };
    match serde_json::to_writer(&mut out, resp) {
        Ok(()) => Ok(out.buf),
        Err(_) if out.full => Err(ApiError::new(
            ErrorClass::TooLarge,
            "response_too_large",
            format!(
                "the answer is larger than {max} bytes (http_limits.graphql_max_response_bytes); ask for fewer rows or fields, and page"
            ),
        )),
        Err(e) => Err(ApiError::new(
            ErrorClass::Internal,
            "internal",
            format!("cannot encode the answer: {e}"),
        )),
    }
}

struct Capped {
    buf: Vec<u8>,
    max: usize,
    full: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.max {
            self.full = true;
            return Err(std::io::Error::other("response cap reached"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_values_and_selections() {
        assert!(check_nesting("{ events { edges { cursor } } }", 3).is_ok());
        assert!(check_nesting("{ events { edges { cursor } } }", 2).is_err());
        let deep = format!(
            "{{ events(filter:{{entityType:{}{}}}) {{ x }} }}",
            "[".repeat(2000),
            "]".repeat(2000)
        );
        let e = check_nesting(&deep, 32).expect_err("2000 deep");
        assert_eq!(e.code, "query_too_deep");
    }

    #[test]
    fn nesting_skips_strings_and_comments() {
        let q = "{ a(x: \"[[[[{{{{\\\"((((\") # [[[[[[[[\n b(y: \"\"\"[[[[ \\\"\"\" {{{{\"\"\") }";
        assert!(check_nesting(q, 2).is_ok());
    }

    #[test]
    fn ingests_are_counted_through_aliases_and_fragments() {
        let count = |q: &str| {
            let doc = async_graphql::parser::parse_query(q).expect("parses");
            count_ingests(&doc, None)
        };
        assert_eq!(
            count("mutation { ingestEvents(events: []) { accepted } }"),
            1
        );
        assert_eq!(
            count(
                "mutation { a: ingestEvents(events: []) { accepted } b: ingestEvents(events: []) { accepted } }"
            ),
            2
        );
        assert_eq!(
            count(
                "mutation { ...F ... on Mutation { ingestEvents(events: []) { accepted } } } fragment F on Mutation { ingestEvents(events: []) { accepted } }"
            ),
            2
        );
        assert_eq!(count("{ ingestEvents }"), 0);
    }
}
