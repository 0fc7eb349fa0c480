//! HTTP routes: events, operations endpoints, and the request metrics layer.

use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::ipc::writer::StreamWriter;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use honeycell_auth::TenantContext;
use honeycell_cell::metrics;
use honeycell_cell::query::{self, Cursor, EventFilter};
use honeycell_storage::{build_batch, col};
use serde::Deserialize;
use serde_json::json;

use crate::ApiState;
use crate::error::ApiError;
use crate::ingest::{parse_json_array, parse_ndjson};
use crate::json::write_events;
use honeycell_types::now_us;

/// The verified caller. Extracting it is authentication: the org, subject
/// and role come only from the verified credential.
pub struct Tenant(pub TenantContext);

impl FromRequestParts<ApiState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        // Which of several credentials counts would be a guess (proxies
        // and frameworks pick differently): refuse rather than pick.
        let count = parts.headers.get_all(header::AUTHORIZATION).iter().count();
        if count > 1 {
            return Err(honeycell_auth::Error::MultipleAuthorization { count }.into());
        }
        let header = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::from(honeycell_auth::Error::Malformed {
                    reason: "the Authorization header is not visible ASCII",
                })
            })?),
        };
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Tenant(state.auth.authenticate(header, peer).await?))
    }
}

/// Fixed route labels for metrics (never the raw path: unbounded cardinality).
fn route_label(method: &Method, path: Option<&str>) -> &'static str {
    match (method.as_str(), path.unwrap_or("")) {
        ("POST", "/v1/events") => "POST /v1/events",
        ("GET", "/v1/events") => "GET /v1/events",
        ("POST", "/graphql") => "POST /graphql",
        ("GET", "/graphql") => "GET /graphql",
        ("GET", "/health") => "GET /health",
        ("GET", "/ready") => "GET /ready",
        ("GET", "/metrics") => "GET /metrics",
        ("POST", "/auth/token") => "POST /auth/token",
        ("POST", "/auth/refresh") => "POST /auth/refresh",
        ("POST", "/auth/logout") => "POST /auth/logout",
        ("GET", "/.well-known/jwks.json") => "GET /.well-known/jwks.json",
        ("GET", "/auth/oauth/{provider}/start") => "GET /auth/oauth/{provider}/start",
        ("GET", "/auth/oauth/{provider}/callback") => "GET /auth/oauth/{provider}/callback",
        _ => "other",
    }
}

/// Runs the request inside its trace id's scope (from `traceparent`, or
/// new), so audit entries carry it, and answers it as `x-trace-id`.
pub async fn trace_scope(request: Request, next: Next) -> Response {
    let id = honeycell_control::trace::trace_id_for(
        request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let mut response = honeycell_control::trace::TRACE_ID
        .scope(id.clone(), next.run(request))
        .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-trace-id", v);
    }
    response
}

/// Records count, status and latency of every request in the landing cell.
pub async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_label(
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let response = next.run(request).await;
    metrics::record_request(route, response.status().as_u16(), started.elapsed());
    response
}

/// `POST /v1/events`: a JSON array, or NDJSON with
/// `Content-Type: application/x-ndjson`.
pub async fn post_events(
    State(state): State<ApiState>,
    Tenant(ctx): Tenant,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&state, body).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let max = state.config.max_batch_events;
    let events = if content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/jsonl")
    {
        parse_ndjson(&bytes, max)?
    } else if content_type.starts_with("application/json") {
        parse_json_array(&bytes, max)?
    } else {
        return Err(ApiError::new(
            honeycell_types::ErrorClass::UnsupportedMediaType,
            "unsupported_media_type",
            format!(
                "Content-Type {content_type:?} is not accepted; use application/json (an array) or application/x-ndjson"
            ),
        ));
    };
    let batch = build_batch(&ctx.org, &events, now_us())?;
    let ids = batch.column(col::EVENT_ID).clone();
    let ack = state
        .cells
        .ingest(&ctx, batch)
        .await
        .map_err(|e| state.denied(&ctx, e.into()))?;
    let ids: Vec<&str> = arrow::array::AsArray::as_string::<i32>(ids.as_ref())
        .iter()
        .flatten()
        .collect();
    Ok((
        StatusCode::OK,
        axum::Json(json!({
            "accepted": ack.rows,
            "duplicates": ack.duplicates,
            "event_ids": ids,
        })),
    )
        .into_response())
}

/// The whole body, up to `http_limits.max_body_bytes`, arriving at
/// `http_limits.min_body_bytes_per_sec` on average after the first
/// `body_grace_secs` (every route that reads a body reads it through here).
pub(crate) async fn read_body(state: &ApiState, body: Body) -> Result<Bytes, ApiError> {
    use axum::body::HttpBody as _;
    use futures::StreamExt as _;
    let limit = state.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            honeycell_types::ErrorClass::TooLarge,
            "body_too_large",
            format!(
                "the body is larger than {limit} bytes (http_limits.max_body_bytes); send less per request"
            ),
        )
    };
    // A declared length over the limit (`Content-Length`, or an HTTP/2
    // stream's) is refused before a byte of it is read or buffered.
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let rate = state.config.min_body_bytes_per_sec;
    let grace = std::time::Duration::from_secs(state.config.body_grace_secs);
    let started = tokio::time::Instant::now();
    let mut buf = bytes::BytesMut::new();
    let mut data = body.into_data_stream();
    loop {
        // The body must keep up with the minimum rate: by now it may have
        // taken the grace plus what its bytes so far are worth.
        let next = if rate == 0 {
            data.next().await
        } else {
            let earned = std::time::Duration::from_secs_f64(buf.len() as f64 / rate as f64);
            match tokio::time::timeout_at(started + grace + earned, data.next()).await {
                Ok(next) => next,
                Err(_) => {
                    return Err(ApiError::new(
                        honeycell_types::ErrorClass::RequestTimeout,
                        "body_too_slow",
                        format!(
                            "the body arrived slower than {rate} bytes/s after {} s ({} bytes in {:.0} s; http_limits.min_body_bytes_per_sec); send it faster or in smaller requests",
                            grace.as_secs(),
                            buf.len(),
                            started.elapsed().as_secs_f64()
                        ),
                    ));
                }
            }
        };
        match next {
            None => return Ok(buf.freeze()),
            Some(Ok(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Some(Err(e)) => {
                return Err(ApiError::new(
                    honeycell_types::ErrorClass::BadRequest,
                    "bad_body",
                    format!("the body could not be read: {e}"),
                ));
            }
        }
    }
}

/// Query string of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    entity_type: Option<String>,
    event_type: Option<String>,
    entity_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Text, so that a bad value gets our message rather than serde's.
    limit: Option<String>,
    cursor: Option<String>,
}

/// Builds the shared filter from textual parameters (HTTP and GraphQL).
pub fn build_filter(
    entity_type: Option<String>,
    event_type: Option<&str>,
    entity_id: Option<String>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<EventFilter, ApiError> {
    Ok(EventFilter::from_params(
        entity_type,
        event_type,
        entity_id,
        since,
        until,
    )?)
}

/// The page size asked for, checked against the configured bounds.
pub fn page_size(state: &ApiState, asked: Option<usize>) -> Result<usize, ApiError> {
    let max = state.config.max_page_size;
    match asked {
        None => Ok(state.config.default_page_size.min(max)),
        Some(0) => Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be at least 1",
        )),
        Some(n) if n > max => Err(ApiError::bad_request(
            "invalid_limit",
            format!(
                "limit {n} is over the maximum page size {max} (http_limits.max_page_size); page with the cursor"
            ),
        )),
        Some(n) => Ok(n),
    }
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// `GET /v1/events`: one page of the caller's events, as JSON or, with
/// `Accept: application/vnd.apache.arrow.stream`, as an Arrow IPC stream.
pub async fn get_events(
    State(state): State<ApiState>,
    Tenant(ctx): Tenant,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let filter = build_filter(
        q.entity_type,
        q.event_type.as_deref(),
        q.entity_id,
        q.since.as_deref(),
        q.until.as_deref(),
    )?;
    let asked = match q.limit.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<usize>().map_err(|_| {
            ApiError::bad_request(
                "invalid_limit",
                format!(
                    "limit {:?} is not a whole number; use 1 to {} (http_limits.max_page_size)",
                    text.chars().take(32).collect::<String>(),
                    state.config.max_page_size
                ),
            )
        })?),
    };
    let limit = page_size(&state, asked)?;
    let after = q.cursor.as_deref().map(Cursor::decode).transpose()?;
    let snapshot = state
        .cells
        .snapshot(&ctx)
        .await
        .map_err(|e| state.denied(&ctx, e.into()))?;
    let page = query::page(&snapshot, &filter, after, limit)?;
    let next = page.next_cursor.map(Cursor::encode);

    let wants_arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(ARROW_STREAM));
    // The page's batches are views of the snapshot (no copy); they are
    // encoded slice by slice as the client reads, so the server never holds
    // the whole encoded answer. Arrow messages carry a fixed cost each, so
    // they take bigger slices than JSON chunks.
    let rows = if wants_arrow { ARROW_ROWS } else { JSON_ROWS };
    let slices: Vec<RecordBatch> = page
        .batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows())
                .step_by(rows)
                .map(move |start| b.slice(start, rows.min(b.num_rows() - start)))
        })
        .collect();
    let mut resp = if wants_arrow {
        let schema = honeycell_storage::event_schema();
        let writer =
            StreamWriter::try_new(Vec::new(), &schema).map_err(honeycell_cell::Error::from)?;
        let body = Body::from_stream(arrow_stream(writer, slices));
        (StatusCode::OK, [(header::CONTENT_TYPE, ARROW_STREAM)], body).into_response()
    } else {
        let body = Body::from_stream(json_stream(slices, next.clone()));
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    if let Some(c) = next
        && let Ok(v) = c.parse()
    {
        resp.headers_mut().insert("x-next-cursor", v);
    }
    Ok(resp)
}

/// Rows encoded per body chunk: JSON (≈300 KB) and Arrow IPC messages.
const JSON_ROWS: usize = 1024;
const ARROW_ROWS: usize = 16_384;

/// `{"events":[…],"next_cursor":…}`, one chunk per slice, encoded lazily.
fn json_stream(
    slices: Vec<RecordBatch>,
    next: Option<String>,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    let head = futures::stream::once(async { Ok(Bytes::from_static(b"{\"events\":[")) });
    let rows = futures::stream::iter(slices.into_iter().enumerate()).map(|(i, b)| {
        let mut out = Vec::with_capacity(b.num_rows() * 320);
        write_events(&mut out, &b, i == 0);
        Ok(Bytes::from(out))
    });
    let tail = futures::stream::once(async move {
        let mut out = b"],\"next_cursor\":".to_vec();
        match next {
            Some(c) => {
                let _ = serde_json::to_writer(&mut out, &c);
            }
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
        Ok(Bytes::from(out))
    });
    head.chain(rows).chain(tail)
}

/// An Arrow IPC stream (schema, then one message per slice), encoded lazily.
fn arrow_stream(
    writer: StreamWriter<Vec<u8>>,
    slices: Vec<RecordBatch>,
) -> impl futures::Stream<Item = Result<Bytes, arrow::error::ArrowError>> + Send + 'static {
    futures::stream::unfold(Some((writer, slices.into_iter())), |state| async move {
        let (mut w, mut slices) = state?;
        let (step, finished) = match slices.next() {
            Some(b) => (w.write(&b), false),
            None => (w.finish(), true),
        };
        let chunk = Bytes::from(std::mem::take(w.get_mut()));
        let next = (step.is_ok() && !finished).then_some((w, slices));
        Some((step.map(|()| chunk), next))
    })
}

/// `GET /health`: the process is up.
pub async fn health() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// `GET /ready`: every cell answers over the bus (so its runtime, inbox and
/// storage are running) and this cell reaches the control-plane store.
pub async fn ready(State(state): State<ApiState>) -> Response {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not_ready", "reason": reason })),
        )
            .into_response()
    };
    if let Err(e) = state
        .cells
        .ping_all(std::time::Duration::from_secs(2))
        .await
    {
        return not_ready(e.to_string());
    }
    let backend = state.control.backend();
    match tokio::time::timeout(std::time::Duration::from_secs(2), state.control.ping()).await {
        Ok(Ok(())) => {
            let mut body = json!({
                "status": "ready",
                "cells": state.cells.cells(),
                "control_store": backend,
            });
            // Redis down is reported as a degraded state, not as unready:
            // everything else keeps serving (the job queue is meant to spill
            // to its embedded store meanwhile).
            if let Some(redis) = &state.redis {
                body["redis"] = match redis.ping().await {
                    Ok(()) => json!({ "status": "ok", "tls": redis.tls() }),
                    Err(e) => {
                        body["degraded"] = json!(true);
                        json!({ "status": "unavailable", "tls": redis.tls(), "error": e.to_string() })
                    }
                };
            }
            axum::Json(body).into_response()
        }
        Ok(Err(e)) => not_ready(format!("control plane store ({backend}): {e}")),
        Err(_) => not_ready(format!(
            "control plane store ({backend}) did not answer within 2 s"
        )),
    }
}

/// `GET /metrics`: Prometheus text gathered from every cell.
pub async fn metrics_text(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let cells = state.cells.gather_metrics().await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&cells),
    )
        .into_response())
}

/// Unknown routes answer JSON too.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        honeycell_types::ErrorClass::NotFound,
        "not_found",
        format!("no route for {}; see the README for the API", uri.path()),
    )
}

/// A known route with another method answers JSON too.
pub async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        honeycell_types::ErrorClass::MethodNotAllowed,
        "method_not_allowed",
        format!(
            "{} does not take {method}; see the README for the API",
            uri.path()
        ),
    )
}
