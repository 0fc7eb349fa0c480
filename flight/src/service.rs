//! The Flight service of one cell: plain Flight (`DoPut` ingest, tickets of
//! the caller's events, admin actions) with Flight SQL commands handed to
//! [`crate::sql::SqlService`].
//!
//! Plain Flight commands and tickets are small JSON documents, so that
//! pyarrow users can write them by hand; Flight SQL's are protobuf `Any`
//! messages. Neither carries an org: the org is taken from the verified
//! bearer token of every call.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::Any;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::{Stream, TryStreamExt};
use honeycell_auth::TenantContext;
use honeycell_cell::query::{Cursor, EventFilter, Scan};
use honeycell_cell::{CellHandle, metrics};
use honeycell_types::{OrgId, now_us};
use prost::Message;
use serde::Deserialize;
use serde_json::json;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::sql::SqlService;

pub type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Immutable state shared by the Flight handlers of one cell.
#[derive(Clone)]
pub struct FlightState {
    pub cells: CellHandle,
    /// Checks JWTs and API keys.
    pub auth: honeycell_control::Authenticator,
    /// Queues audit entries (refusals for permission or quota).
    pub audit: honeycell_control::AuditSink,
    /// The Flight location (`grpc+tcp://host:port`) of every cell, by index.
    pub locations: Arc<[String]>,
    /// Flight SQL's pool, sessions and limits (process-wide).
    pub engine: Arc<crate::QueryEngine>,
    /// Largest batch appended at once; bigger DoPut batches are split.
    pub max_append_rows: usize,
}

impl FlightState {
    /// Authenticates a call from its `authorization` metadata.
    pub async fn tenant<T>(&self, request: &Request<T>) -> Result<TenantContext> {
        // As over HTTP: several credentials are refused, never picked from.
        let count = request.metadata().get_all("authorization").iter().count();
        if count > 1 {
            return Err(Error::Auth(honeycell_auth::Error::MultipleAuthorization {
                count,
            }));
        }
        let header = match request.metadata().get("authorization") {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                Error::Auth(honeycell_auth::Error::Malformed {
                    reason: "the authorization metadata is not visible ASCII",
                })
            })?),
        };
        let peer = request.remote_addr().map(|a| a.ip());
        Ok(self.auth.authenticate(header, peer).await?)
    }

    /// A snapshot of the caller's events, a refusal audited.
    pub async fn snapshot(&self, ctx: &TenantContext) -> Result<honeycell_storage::OrgSnapshot> {
        self.cells
            .snapshot(ctx)
            .await
            .map_err(|e| self.refused(ctx, e))
    }

    /// Audits a refusal for lack of permission or over a quota; passes the
    /// error through (the same entries the HTTP and GraphQL paths write).
    pub fn refused(&self, ctx: &TenantContext, e: honeycell_cell::Error) -> Error {
        let (action, resource, detail) = match &e {
            honeycell_cell::Error::Forbidden { permission, .. }
            | honeycell_cell::Error::ScopeForbidden { permission } => {
                ("permission.denied", (*permission).to_owned(), None)
            }
            honeycell_cell::Error::QuotaExceeded { .. } => {
                ("quota.exceeded", "events".to_owned(), Some(e.to_string()))
            }
            _ => return e.into(),
        };
        self.audit.record(honeycell_control::AuditDraft {
            org: ctx.org.clone(),
            at_us: honeycell_types::now_us(),
            actor: ctx.subject.clone(),
            action: action.to_owned(),
            resource,
            result: "denied".to_owned(),
            trace_id: None,
            detail,
        });
        e.into()
    }

    /// The location of the cell owning `org`: bulk reads go straight there.
    pub fn location_of(&self, org: &OrgId) -> String {
        let owner = self.cells.owner(org);
        self.locations
            .get(owner.index())
            .cloned()
            .unwrap_or_default()
    }
}

/// Filter and position of a plain `DoGet`, as JSON. The same document is
/// accepted as a descriptor command in `GetFlightInfo`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsTicket {
    entity_type: Option<String>,
    event_type: Option<String>,
    entity_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// A `next_cursor` from the HTTP API: continue after it.
    after: Option<String>,
}

impl EventsTicket {
    fn parse(bytes: &[u8], what: &str) -> Result<Self> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(bytes).map_err(|e| Error::BadTicket {
            reason: format!("the {what} is not a Honeycell events query ({e}); expected JSON such as {{\"entity_type\": \"order\", \"since\": \"2026-11-01T00:00:00Z\"}}"),
        })
    }

    fn filter(&self) -> Result<(EventFilter, Option<Cursor>)> {
        let filter = EventFilter::from_params(
            self.entity_type.clone(),
            self.event_type.as_deref(),
            self.entity_id.clone(),
            self.since.as_deref(),
            self.until.as_deref(),
        )?;
        let after = self.after.as_deref().map(Cursor::decode).transpose()?;
        Ok((filter, after))
    }
}

/// Parses a DoGet ticket or GetFlightInfo descriptor command of the events
/// API as the service does, up to its filter and cursor: for the fuzz
/// targets.
#[doc(hidden)]
pub fn check_events_ticket(bytes: &[u8]) -> Result<()> {
    EventsTicket::parse(bytes, "ticket")?.filter().map(|_| ())
}

/// True for Flight SQL commands (protobuf `Any` of the Flight SQL package).
fn is_flight_sql(bytes: &[u8]) -> bool {
    Any::decode(bytes).is_ok_and(|a| {
        a.type_url
            .starts_with("type.googleapis.com/arrow.flight.protocol.sql.")
    })
}

/// The Flight service of one cell.
#[derive(Clone)]
pub struct HoneycellFlight {
    state: FlightState,
    sql: SqlService,
}

impl HoneycellFlight {
    pub fn new(state: FlightState) -> Result<Self> {
        Ok(Self {
            sql: SqlService::new(state.clone())?,
            state,
        })
    }

    /// The JSON query of a plain descriptor: its command, or none for the
    /// path `["events"]`.
    fn descriptor_query(descriptor: &FlightDescriptor) -> Result<Vec<u8>> {
        if !descriptor.cmd.is_empty() {
            EventsTicket::parse(&descriptor.cmd, "descriptor command")?;
            return Ok(descriptor.cmd.to_vec());
        }
        match descriptor.path.as_slice() {
            [] => Ok(b"{}".to_vec()),
            [p] if p == "events" => Ok(b"{}".to_vec()),
            other => Err(Error::BadDescriptor {
                reason: format!(
                    "unknown path {other:?}; use the path [\"events\"] or a JSON command"
                ),
            }),
        }
    }

    async fn plain_do_get(&self, request: Request<Ticket>) -> Result<DoGetStream> {
        let ctx = self.state.tenant(&request).await?;
        let query = EventsTicket::parse(&request.get_ref().ticket, "ticket")?;
        let (filter, after) = query.filter()?;
        let snapshot = self.state.snapshot(&ctx).await?;
        // Batches go from the snapshot (zero-copy views of sealed segments)
        // straight into the Flight encoder: no rows, no JSON.
        let batches = Scan::new(&snapshot, &filter, after).map(|item| {
            item.map(|sb| sb.batch)
                .map_err(|e| FlightError::ExternalError(Box::new(e)))
        });
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(honeycell_storage::event_schema())
            .build(futures::stream::iter(batches))
            .map_err(Status::from);
        Ok(Box::pin(stream))
    }

    async fn plain_do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<BoxStream<PutResult>> {
        let ctx = self.state.tenant(&request).await?;
        // Refused before a byte of the stream is read: a viewer's forged
        // batch is never decoded.
        honeycell_cell::bus::authorize(
            &ctx,
            honeycell_auth::Action::write(honeycell_auth::Resource::Events),
        )
        .map_err(|e| self.state.refused(&ctx, e))?;
        let state = self.state.clone();
        // Every message is checked against the bytes that arrived before
        // arrow reads it (`put.rs`).
        let mut decoder = crate::put::PutDecoder::default();
        let input = request
            .into_inner()
            .map_err(|s| Error::Flight(FlightError::from(s)))
            .try_filter_map(move |data| futures::future::ready(decoder.decode(&data)));
        // Each client batch is validated whole, then appended (split into
        // pieces of at most max_append_rows) and acknowledged with one
        // PutResult once durable (`accepted` new events, `duplicates`
        // whose event_id the org stored within storage.dedup_window). A bad
        // batch ends the stream with INVALID_ARGUMENT; batches acknowledged
        // before it stay stored.
        // The batches are handled as the response streams, outside the
        // call's trace scope: carry its trace id along for audit entries.
        let trace = honeycell_control::trace::current().unwrap_or_default();
        let out = input
            .and_then(move |batch: RecordBatch| {
                let state = state.clone();
                let ctx = ctx.clone();
                honeycell_control::trace::TRACE_ID.scope(trace.clone(), async move {
                    let normalized =
                        honeycell_storage::normalize_batch(&ctx.org, &batch, now_us())?;
                    let (mut accepted, mut duplicates) = (0u64, 0u64);
                    let mut first_offset = None;
                    let mut start = 0;
                    while start < normalized.num_rows() {
                        let len = state.max_append_rows.min(normalized.num_rows() - start);
                        let ack = state
                            .cells
                            .ingest(&ctx, normalized.slice(start, len))
                            .await
                            .map_err(|e| state.refused(&ctx, e))?;
                        first_offset.get_or_insert(ack.first_offset);
                        accepted += ack.rows;
                        duplicates += ack.duplicates;
                        start += len;
                    }
                    let meta = json!({
                        "accepted": accepted,
                        "duplicates": duplicates,
                        "first_offset": first_offset,
                    });
                    Ok(PutResult {
                        app_metadata: meta.to_string().into(),
                    })
                })
            })
            .map_err(Status::from);
        Ok(Box::pin(out))
    }

    async fn admin_action(
        &self,
        request: Request<Action>,
    ) -> Result<BoxStream<arrow_flight::Result>> {
        let ctx = self.state.tenant(&request).await?;
        let action = request.into_inner();
        let body = match action.r#type.as_str() {
            "whoami" => json!({
                "org": ctx.org.as_str(),
                "subject": ctx.subject,
                "role": ctx.role.as_str(),
                "owner_cell": self.state.cells.owner(&ctx.org).0,
                "location": self.state.location_of(&ctx.org),
            }),
            "stats" => {
                let snapshot = self.state.snapshot(&ctx).await?;
                json!({
                    "events": snapshot.num_rows(),
                    "first_offset": snapshot.first_offset(),
                    "end_offset": snapshot.end_offset(),
                })
            }
            other => {
                return Err(Error::UnknownAction {
                    name: other.to_owned(),
                });
            }
        };
        let result = arrow_flight::Result {
            body: body.to_string().into(),
        };
        Ok(Box::pin(futures::stream::iter([Ok(result)])))
    }
}

/// Records a Flight call in the landing cell's metrics.
fn record<T>(route: &'static str, started: Instant, result: &Result<T, Status>) {
    let status = match result {
        Ok(_) => 200,
        Err(s) => match s.code() {
            tonic::Code::InvalidArgument => 400,
            tonic::Code::Unauthenticated => 401,
            tonic::Code::PermissionDenied => 403,
            tonic::Code::NotFound => 404,
            tonic::Code::ResourceExhausted => 429,
            tonic::Code::Unavailable => 503,
            tonic::Code::Unimplemented => 501,
            _ => 500,
        },
    };
    metrics::record_request(route, status, started.elapsed());
}

const SQL_ACTIONS: [&str; 2] = ["CreatePreparedStatement", "ClosePreparedStatement"];

#[tonic::async_trait]
impl FlightService for HoneycellFlight {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = DoGetStream;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    /// Bearer tokens are sent on every call; the handshake only checks the
    /// token so that clients that insist on handshaking get a clear answer.
    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.state.tenant(&request).await?;
        let reply = HandshakeResponse::default();
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(reply)]))))
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let ctx = self.state.tenant(&request).await?;
        let descriptor = FlightDescriptor::new_path(vec!["events".into()]);
        let info = FlightInfo::new()
            .try_with_schema(&honeycell_storage::event_schema())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_descriptor(descriptor)
            .with_endpoint(
                FlightEndpoint::new()
                    .with_ticket(Ticket::new("{}"))
                    .with_location(self.state.location_of(&ctx.org)),
            );
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(info)]))))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let started = Instant::now();
        let result = if is_flight_sql(&request.get_ref().cmd) {
            FlightService::get_flight_info(&self.sql, request).await
        } else {
            let answer = async || -> Result<FlightInfo> {
                let ctx = self.state.tenant(&request).await?;
                let ticket = Self::descriptor_query(request.get_ref())?;
                let endpoint = FlightEndpoint::new()
                    .with_ticket(Ticket::new(ticket))
                    .with_location(self.state.location_of(&ctx.org));
                Ok(FlightInfo::new()
                    .try_with_schema(&honeycell_storage::event_schema())
                    .map_err(|e| Error::Sql(e.to_string()))?
                    .with_endpoint(endpoint)
                    .with_descriptor(request.get_ref().clone()))
            };
            answer().await.map(Response::new).map_err(Status::from)
        };
        record("flight.GetFlightInfo", started, &result);
        result
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "PollFlightInfo is not supported: queries answer GetFlightInfo at once",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        if is_flight_sql(&request.get_ref().cmd) {
            return FlightService::get_schema(&self.sql, request).await;
        }
        self.state.tenant(&request).await?;
        Self::descriptor_query(request.get_ref())?;
        let options = arrow_ipc::writer::IpcWriteOptions::default();
        let result: SchemaResult = SchemaAsIpc::new(&honeycell_storage::event_schema(), &options)
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let started = Instant::now();
        let ticket = &request.get_ref().ticket;
        let result = if ticket.first() == Some(&b'{') || ticket.is_empty() {
            self.plain_do_get(request)
                .await
                .map(Response::new)
                .map_err(Status::from)
        } else {
            FlightService::do_get(&self.sql, request).await
        };
        record("flight.DoGet", started, &result);
        result
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let started = Instant::now();
        let result = self
            .plain_do_put(request)
            .await
            .map(Response::new)
            .map_err(Status::from);
        record("flight.DoPut", started, &result);
        result
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let started = Instant::now();
        let result = if SQL_ACTIONS.contains(&request.get_ref().r#type.as_str()) {
            FlightService::do_action(&self.sql, request).await
        } else {
            self.admin_action(request)
                .await
                .map(Response::new)
                .map_err(Status::from)
        };
        record("flight.DoAction", started, &result);
        result
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            (
                "whoami",
                "The caller's org, subject, role and owning cell's location (JSON).",
            ),
            (
                "stats",
                "Event count and offsets of the caller's org (JSON).",
            ),
            (
                "CreatePreparedStatement",
                "Flight SQL: prepare a query over the caller's events table.",
            ),
            (
                "ClosePreparedStatement",
                "Flight SQL: close a prepared statement.",
            ),
        ]
        .map(|(t, d)| {
            Ok(ActionType {
                r#type: t.into(),
                description: d.into(),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(actions))))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Error::Unsupported {
            what: "DoExchange",
            hint: "use DoPut to ingest and DoGet to read",
        }
        .into())
    }
}
