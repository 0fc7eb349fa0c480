//! GraphQL: `events` as a connection, `eventCounts`, and the `ingestEvents`
//! mutation, over the same cell operations as the REST routes.

use arrow::array::AsArray;
use async_graphql::{
    Context, EmptySubscription, Enum, ErrorExtensions, InputObject, Json, MergedObject, Object,
    Schema, SimpleObject,
};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use honeycell_auth::TenantContext;
use honeycell_cell::query::{self, Bucket, Cursor, GroupBy};
use honeycell_storage::{build_batch, col};
use honeycell_types::ErrorClass;
use serde_json::Value;

use crate::ApiState;
use crate::error::ApiError;
use crate::graphql_audit::AuditQueryRoot;
use crate::graphql_edges::EventEdges;
use crate::graphql_guard;
use crate::graphql_keys::{ApiKeyMutation, ApiKeyQuery};
use crate::graphql_users::{UserMutation, UserQuery};
use crate::http::{Tenant, build_filter, page_size};
use crate::ingest::EventIn;
use crate::json::rfc3339_us;
use honeycell_types::now_us;

pub type HoneycellSchema = Schema<Query, Mutation, EmptySubscription>;

/// Every query field: events (here) and administration (`graphql_keys`,
/// `graphql_audit`, `graphql_users`).
#[derive(MergedObject, Default)]
pub struct Query(QueryRoot, ApiKeyQuery, AuditQueryRoot, UserQuery);

/// Every mutation.
#[derive(MergedObject, Default)]
pub struct Mutation(MutationRoot, ApiKeyMutation, UserMutation);

/// Builds the schema, with its limits against abuse: selection depth, and
/// the cost of a request in rows (`http_limits.graphql_max_cost`; see
/// `graphql_guard` for the checks made before parsing).
pub fn schema(config: &crate::HttpConfig) -> HoneycellSchema {
    DEFAULT_PAGE_COST.store(
        config.default_page_size.min(config.max_page_size),
        std::sync::atomic::Ordering::Relaxed,
    );
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .limit_depth(12)
        .limit_complexity(config.graphql_max_cost)
        .finish()
}

/// The page size of a list field without `first`, for its cost. Cost
/// expressions cannot see the schema's data, so the configured default is
/// kept here when the schema is built (configuration, not state: every
/// cell stores the same value).
static DEFAULT_PAGE_COST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(100);

/// The cost of a page field: the rows it may return plus its selection's.
pub(crate) fn page_cost(first: Option<i32>, child_complexity: usize) -> usize {
    let rows = match first {
        Some(n) => n.max(1) as usize,
        None => DEFAULT_PAGE_COST.load(std::sync::atomic::Ordering::Relaxed),
    };
    rows.saturating_add(child_complexity)
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        let retry = match e.class {
            ErrorClass::Overloaded { retry_after } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => None,
        };
        async_graphql::Error::new(e.message).extend_with(|_, ext| {
            ext.set("code", e.code);
            ext.set("status", e.class.http_status());
            if let Some(i) = e.index {
                ext.set("index", i as u64);
            }
            if let Some(p) = e.permission {
                ext.set("permission", p);
            }
            if let Some(r) = retry {
                ext.set("retryAfterSeconds", r);
            }
        })
    }
}

/// The caller and the API state, if the caller may perform `action` (a
/// refusal is audited by the handler, as every 403 is).
pub(crate) fn authorized<'a>(
    ctx: &'a Context<'_>,
    action: honeycell_auth::Action,
) -> async_graphql::Result<(&'a TenantContext, &'a ApiState)> {
    let tenant = ctx.data::<TenantContext>()?;
    let state = ctx.data::<ApiState>()?;
    honeycell_cell::bus::authorize(tenant, action).map_err(ApiError::from)?;
    Ok((tenant, state))
}

fn caller<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<(&'a TenantContext, &'a ApiState)> {
    Ok((ctx.data::<TenantContext>()?, ctx.data::<ApiState>()?))
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum EventTypeGql {
    Insert,
    Update,
    Delete,
    Custom,
}

impl EventTypeGql {
    fn as_str(self) -> &'static str {
        match self {
            EventTypeGql::Insert => "INSERT",
            EventTypeGql::Update => "UPDATE",
            EventTypeGql::Delete => "DELETE",
            EventTypeGql::Custom => "CUSTOM",
        }
    }
}

#[derive(InputObject, Default)]
pub struct EventFilterInput {
    entity_type: Option<String>,
    event_type: Option<EventTypeGql>,
    entity_id: Option<String>,
    /// RFC 3339 time or integer microseconds; inclusive.
    since: Option<String>,
    /// RFC 3339 time or integer microseconds; exclusive.
    until: Option<String>,
}

impl EventFilterInput {
    fn to_filter(&self) -> Result<query::EventFilter, ApiError> {
        build_filter(
            self.entity_type.clone(),
            self.event_type.map(EventTypeGql::as_str),
            self.entity_id.clone(),
            self.since.as_deref(),
            self.until.as_deref(),
        )
    }
}

#[derive(SimpleObject)]
pub struct PageInfo {
    has_next_page: bool,
    end_cursor: Option<String>,
}

#[derive(SimpleObject)]
pub struct EventConnection {
    edges: EventEdges,
    page_info: PageInfo,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum GroupByGql {
    EntityType,
    EventType,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum TimeBucket {
    Minute,
    Hour,
    Day,
}

#[derive(SimpleObject)]
pub struct EventCount {
    key: String,
    /// Start of the bucket, RFC 3339.
    bucket_start: String,
    count: u64,
}

#[derive(Default)]
pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// The caller's events, oldest first, as a Relay-style connection.
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        filter: Option<EventFilterInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<EventConnection> {
        let (tenant, state) = caller(ctx)?;
        let filter = filter.unwrap_or_default().to_filter()?;
        let first = match first {
            Some(n) if n < 1 => {
                return Err(
                    ApiError::bad_request("invalid_limit", "first must be at least 1").into(),
                );
            }
            Some(n) => Some(n as usize),
            None => None,
        };
        let limit = page_size(state, first)?;
        let after = after
            .as_deref()
            .map(Cursor::decode)
            .transpose()
            .map_err(ApiError::from)?;
        let snapshot = state.cells.snapshot(tenant).await.map_err(ApiError::from)?;
        let page = query::page(&snapshot, &filter, after, limit).map_err(ApiError::from)?;
        let has_next_page = page.next_cursor.is_some();
        let edges = EventEdges {
            batches: page.batches,
            offsets: page.offsets,
        };
        let end_cursor = edges.end_cursor();
        Ok(EventConnection {
            edges,
            page_info: PageInfo {
                has_next_page,
                end_cursor,
            },
        })
    }

    /// Counts of the caller's events by key and time bucket.
    async fn event_counts(
        &self,
        ctx: &Context<'_>,
        group_by: GroupByGql,
        bucket: TimeBucket,
        filter: Option<EventFilterInput>,
    ) -> async_graphql::Result<Vec<EventCount>> {
        let (tenant, state) = caller(ctx)?;
        let filter = filter.unwrap_or_default().to_filter()?;
        let snapshot = state.cells.snapshot(tenant).await.map_err(ApiError::from)?;
        let group_by = match group_by {
            GroupByGql::EntityType => GroupBy::EntityType,
            GroupByGql::EventType => GroupBy::EventType,
        };
        let bucket = match bucket {
            TimeBucket::Minute => Bucket::Minute,
            TimeBucket::Hour => Bucket::Hour,
            TimeBucket::Day => Bucket::Day,
        };
        let counts = query::counts(&snapshot, &filter, group_by, bucket).map_err(ApiError::from)?;
        Ok(counts
            .into_iter()
            .map(|c| EventCount {
                key: c.key,
                bucket_start: rfc3339_us(c.bucket_start_us),
                count: c.count,
            })
            .collect())
    }
}

#[derive(InputObject)]
pub struct EventInput {
    /// A UUID; omitted: a UUIDv7 is assigned.
    event_id: Option<String>,
    event_type: EventTypeGql,
    entity_type: String,
    entity_id: String,
    /// RFC 3339 time or integer microseconds; omitted: now.
    occurred_at: Option<String>,
    data: Option<Json<Value>>,
    changes: Option<Json<Value>>,
    user_id: Option<String>,
    trace_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct IngestResult {
    /// Events stored by this request.
    accepted: u64,
    /// Events not stored because an event with the same `eventId` was
    /// stored within the server's dedup window (a retry); they count as
    /// stored once, by the earlier request.
    duplicates: u64,
    /// The id of every event of the request, in order (a duplicate's is
    /// the id it was stored under).
    event_ids: Vec<String>,
}

#[derive(Default)]
pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Appends events to the caller's org; all or nothing, durable when answered.
    async fn ingest_events(
        &self,
        ctx: &Context<'_>,
        events: Vec<EventInput>,
    ) -> async_graphql::Result<IngestResult> {
        let (tenant, state) = caller(ctx)?;
        if events.is_empty() {
            return Err(ApiError::bad_request(
                "empty_batch",
                "events holds no events; send at least one",
            )
            .into());
        }
        let max = state.config.max_batch_events;
        if events.len() > max {
            return Err(ApiError::new(
                ErrorClass::TooLarge,
                "batch_too_large",
                format!(
                    "events holds {} events, over http_limits.max_batch_events {max}; split it",
                    events.len()
                ),
            )
            .into());
        }
        let mut parsed = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let input = EventIn {
                event_id: e.event_id,
                event_type: e.event_type.as_str().to_owned(),
                entity_type: e.entity_type,
                entity_id: e.entity_id,
                occurred_at: e.occurred_at.map(Value::String),
                data: e.data.map(|j| j.0),
                changes: e.changes.map(|j| j.0),
                user_id: e.user_id,
                trace_id: e.trace_id,
            };
            parsed.push(input.into_new_event(i)?);
        }
        let batch = build_batch(&tenant.org, &parsed, now_us()).map_err(ApiError::from)?;
        let ids: Vec<String> = batch
            .column(col::EVENT_ID)
            .as_string::<i32>()
            .iter()
            .flatten()
            .map(str::to_owned)
            .collect();
        let ack = state
            .cells
            .ingest(tenant, batch)
            .await
            .map_err(ApiError::from)?;
        Ok(IngestResult {
            accepted: ack.rows,
            duplicates: ack.duplicates,
            event_ids: ids,
        })
    }
}

/// `POST /graphql`. Authentication happens before the body is read; the
/// checks of `graphql_guard` before anything executes; a request that was
/// refused by a limit answers 429 with `Retry-After`, as REST does.
pub async fn graphql_handler(
    State(state): State<ApiState>,
    Tenant(tenant): Tenant,
    body: axum::body::Body,
) -> Response {
    let req = match crate::http::read_body(&state, body)
        .await
        .and_then(|bytes| graphql_guard::request(&state.config, &bytes))
    {
        Ok(req) => req,
        Err(e) => return graphql_guard::error_response(e),
    };
    let req = req.data(tenant.clone()).data(state.clone());
    let resp = state.schema.execute(req).await;
    if let Some(e) = graphql_guard::limit_refusal(&resp, &state) {
        return graphql_guard::error_response(e);
    }
    // Every refusal for lack of permission is audited, once per field.
    for e in &resp.errors {
        let ext = e.extensions.as_ref();
        if let Some(async_graphql::Value::String(p)) = ext.and_then(|x| x.get("permission")) {
            state.audit_denied(&tenant, p);
        } else if matches!(ext.and_then(|x| x.get("code")), Some(async_graphql::Value::String(c)) if c == "quota_exceeded")
        {
            state.audit_quota(&tenant, &e.message);
        }
    }
    let retry = resp.errors.iter().find_map(|e| {
        e.extensions
            .as_ref()
            .and_then(|x| x.get("retryAfterSeconds"))
            .and_then(|v| match v {
                async_graphql::Value::Number(n) => n.as_u64(),
                _ => None,
            })
    });
    let body = match graphql_guard::encode(&resp, state.config.graphql_max_response_bytes) {
        Ok(body) => body,
        Err(e) => return graphql_guard::error_response(e),
    };
    let mut out = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Some(secs) = retry {
        *out.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        out.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    out
}
