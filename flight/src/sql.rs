//! Flight SQL over the caller's own `events` table, executed by DataFusion.
//!
//! Isolation does not depend on parsing the SQL: every query runs in a fresh
//! DataFusion session whose catalog holds exactly one table, `events`, read
//! from the caller's org snapshot (`table.rs`). Another org's data is simply not there,
//! whatever the SQL or ticket names. DDL, DML and statements such as `SET`
//! are refused. Queries execute on the query pool, not on the cell's thread,
//! so a heavy query never stalls the cell's other tenants; results flow back
//! through a small bounded channel.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTables, CommandPreparedStatementQuery, CommandStatementQuery,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use arrow_ipc::writer::IpcWriteOptions;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use futures::{StreamExt, TryStreamExt};
use honeycell_auth::TenantContext;
use honeycell_storage::OrgSnapshot;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::QueryEngine;
use crate::error::{Error, Result};
use crate::service::{DoGetStream, FlightState};
use crate::table::EventsTable;

/// The Flight SQL half of the service.
#[derive(Clone)]
pub struct SqlService {
    pub(crate) state: FlightState,
    info: Arc<SqlInfoData>,
}

fn sql_info() -> Result<SqlInfoData> {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Honeycell");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.build().map_err(|e| Error::Sql(e.to_string()))
}

impl SqlService {
    pub fn new(state: FlightState) -> Result<Self> {
        Ok(Self {
            state,
            info: Arc::new(sql_info()?),
        })
    }

    /// Plans `sql` against the caller's snapshot on the query pool and
    /// returns the result schema and a stream of batches. The query holds
    /// its admission (`engine.rs`) until it ends and is charged the CPU time
    /// of its polls as it goes; it is stopped when it has computed for
    /// `flight_sql.query_timeout` or its client went away.
    async fn run(
        &self,
        ctx: &TenantContext,
        snapshot: OrgSnapshot,
        sql: String,
        execute: bool,
    ) -> Result<(
        SchemaRef,
        Option<ReceiverStream<Result<RecordBatch, FlightError>>>,
    )> {
        let engine = self.state.engine.clone();
        engine.check_sql(&sql)?;
        let admission = engine.admit(ctx)?;
        let (schema_tx, schema_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(4);
        let limit = engine.config().query_timeout;
        let ctx = ctx.clone();
        engine.pool().clone().spawn(async move {
            let started = Instant::now();
            let planned =
                match tokio::time::timeout(limit, on_cpu(plan(&engine, snapshot, &sql))).await {
                    Ok((planned, cpu)) => {
                        engine.charge(&ctx, cpu);
                        Ok(planned)
                    }
                    Err(elapsed) => {
                        engine.charge(&ctx, limit);
                        Err(elapsed)
                    }
                };
            // The place is given back before the answer goes out, so that a
            // client's next call (DoGet after GetFlightInfo) finds it free.
            let admission = (execute && matches!(planned, Ok(Ok(_)))).then_some(admission);
            let df = match planned {
                Ok(Ok(df)) => df,
                Ok(Err(e)) => {
                    let _ = schema_tx.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = schema_tx.send(Err(Error::QueryTimeout { limit }));
                    return;
                }
            };
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let _ = schema_tx.send(Ok(schema));
            let Some(_admission) = admission else {
                return;
            };
            // Time spent waiting for the client to read (`tx.send`) is not
            // the query's: only computing counts against the limit.
            let mut left = limit.saturating_sub(started.elapsed());
            let mut stream = match yielding_stream(df).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(query_error(e))).await;
                    return;
                }
            };
            loop {
                let step = Instant::now();
                let item = tokio::select! {
                    // The client went away: dropping the stream stops the plan.
                    () = tx.closed() => {
                        engine.charge(&ctx, step.elapsed());
                        return;
                    }
                    item = tokio::time::timeout(left, on_cpu(stream.next())) => item,
                };
                let spent = step.elapsed();
                left = left.saturating_sub(spent);
                let item = match item {
                    Err(_) => {
                        engine.charge(&ctx, spent);
                        Err(FlightError::Tonic(Box::new(
                            Error::QueryTimeout { limit }.into(),
                        )))
                    }
                    Ok((item, cpu)) => {
                        engine.charge(&ctx, cpu);
                        match item {
                            None => return,
                            Some(item) => item.map_err(query_error),
                        }
                    }
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        let schema = schema_rx.await.map_err(|_| Error::QueryWorkerGone)??;
        Ok((schema, execute.then(|| ReceiverStream::new(rx))))
    }

    async fn flight_info(
        &self,
        request: &Request<FlightDescriptor>,
        sql: String,
        ticket: Ticket,
    ) -> Result<FlightInfo> {
        let ctx = self.state.tenant(request).await?;
        let snapshot = self.state.snapshot(&ctx).await?;
        let (schema, _) = self.run(&ctx, snapshot, sql, false).await?;
        let endpoint = FlightEndpoint::new()
            .with_ticket(ticket)
            .with_location(self.state.location_of(&ctx.org));
        Ok(FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Error::Sql(e.to_string()))?
            .with_endpoint(endpoint)
            .with_descriptor(request.get_ref().clone()))
    }

    async fn stream(&self, request: &Request<Ticket>, sql: String) -> Result<DoGetStream> {
        let ctx = self.state.tenant(request).await?;
        let snapshot = self.state.snapshot(&ctx).await?;
        let (schema, batches) = self.run(&ctx, snapshot, sql, true).await?;
        let batches = batches.ok_or(Error::QueryWorkerGone)?;
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Box::pin(stream))
    }
}

/// The checks and the planning a statement's text goes through, over an
/// empty `events` table, without running it: for the fuzz targets.
#[doc(hidden)]
pub async fn check_and_plan(engine: &QueryEngine, sql: &str) -> Result<()> {
    engine.check_sql(sql)?;
    let df = plan(engine, OrgSnapshot::default(), sql).await?;
    df.create_physical_plan()
        .await
        .map(|_| ())
        .map_err(|e| sql_error(&e))
}

/// CPU time the calling thread has used.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given, and
    // CLOCK_THREAD_CPUTIME_ID is a valid clock on every platform we build.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Runs `fut` and says how much CPU its polls took. Each poll runs wholly on
/// one thread, so this is the query's own computing, not time it waited
/// for a core (the query workers run at the lowest priority, and a busy
/// machine must not make an org's queries cost it more of its budget).
async fn on_cpu<F: std::future::Future>(fut: F) -> (F::Output, std::time::Duration) {
    let mut fut = std::pin::pin!(fut);
    let mut spent = std::time::Duration::ZERO;
    let out = std::future::poll_fn(|cx| {
        let before = thread_cpu();
        let poll = fut.as_mut().poll(cx);
        spent += thread_cpu().saturating_sub(before);
        poll
    })
    .await;
    (out, spent)
}

/// A session holding only the caller's `events` table.
pub(crate) async fn plan(
    engine: &QueryEngine,
    snapshot: OrgSnapshot,
    sql: &str,
) -> Result<datafusion::dataframe::DataFrame> {
    let ctx = engine.session()?;
    ctx.register_table("events", Arc::new(EventsTable::new(snapshot)))
        .map_err(|e| Error::Sql(e.to_string()))?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(sql, options)
        .await
        .map_err(|e| sql_error(&e))
}

/// Executes `df` with every operator's output counted against tokio's
/// cooperative budget, not only the leaves' (DataFusion's own rule): a join
/// that turns one input batch into millions of rows then still returns to
/// the scheduler every few batches, so the time limit and a client's
/// departure are noticed and the query pool's other queries get their turn.
async fn yielding_stream(
    df: datafusion::dataframe::DataFrame,
) -> datafusion::error::Result<datafusion::execution::SendableRecordBatchStream> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion::physical_plan::coop::CooperativeExec;

    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    let plan = plan
        .transform_up(|node| {
            if node.is::<CooperativeExec>() {
                return Ok(Transformed::no(node));
            }
            let wrapped: Arc<dyn ExecutionPlan> = Arc::new(CooperativeExec::new(node));
            Ok(Transformed::yes(wrapped))
        })?
        .data;
    datafusion::physical_plan::execute_stream(plan, task)
}

/// A query's error: memory refusals as our limits, by name (an operator
/// such as a sort may replace our message with its own), else DataFusion's
/// text.
fn sql_error(e: &DataFusionError) -> Error {
    let DataFusionError::ResourcesExhausted(message) = e.find_root() else {
        return Error::Sql(e.to_string());
    };
    if message.contains(crate::engine::SERVER_MEMORY) {
        return Error::QueryLimit {
            message: message.clone(),
            retry: Some(std::time::Duration::from_secs(1)),
        };
    }
    let message = if message.contains(crate::engine::QUERY_MEMORY) {
        message.clone()
    } else {
        format!(
            "the query needs more memory than {} allows ({message}); aggregate, filter or LIMIT it",
            crate::engine::QUERY_MEMORY
        )
    };
    Error::QueryLimit {
        message,
        retry: None,
    }
}

/// An execution error, as the stream's error (a limit keeps its status).
fn query_error(e: DataFusionError) -> FlightError {
    FlightError::Tonic(Box::new(tonic::Status::from(sql_error(&e))))
}

fn utf8(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::BadTicket {
        reason: format!("the {what} is not UTF-8 SQL text"),
    })
}

#[tonic::async_trait]
impl FlightSqlService for SqlService {
    type FlightService = SqlService;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = TicketStatementQuery {
            statement_handle: query.query.clone().into(),
        };
        let ticket = Ticket::new(ticket.as_any().encode_to_vec());
        Ok(Response::new(
            self.flight_info(&request, query.query, ticket).await?,
        ))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let sql = utf8(&ticket.statement_handle, "statement handle")?;
        Ok(Response::new(self.stream(&request, sql).await?))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let ctx = self.state.tenant(&request).await?;
        let snapshot = self.state.snapshot(&ctx).await?;
        let (schema, _) = self.run(&ctx, snapshot, query.query.clone(), false).await?;
        let IpcMessage(schema_bytes) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Error::Sql(e.to_string()))?;
        // The handle is the SQL itself: the server keeps no per-client state,
        // and any cell can execute it for the caller's own org.
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into(),
            dataset_schema: schema_bytes,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        self.state.tenant(&request).await?;
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let sql = utf8(&cmd.prepared_statement_handle, "prepared statement handle")?;
        let ticket = Ticket::new(cmd.as_any().encode_to_vec());
        Ok(Response::new(
            self.flight_info(&request, sql, ticket).await?,
        ))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let sql = utf8(&cmd.prepared_statement_handle, "prepared statement handle")?;
        Ok(Response::new(self.stream(&request, sql).await?))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.state.tenant(&request).await?;
        let schema = query.clone().into_builder(&self.info).schema();
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(query.as_any().encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Error::Sql(e.to_string()))?
            .with_endpoint(endpoint)
            .with_descriptor(request.into_inner());
        Ok(Response::new(info))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.state.tenant(&request).await?;
        let batch = query
            .into_builder(&self.info)
            .build()
            .map_err(|e| Error::Sql(e.to_string()))?;
        Ok(Response::new(one_batch(batch)))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.state.tenant(&request).await?;
        let schema = query.into_builder().schema();
        metadata_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.state.tenant(&request).await?;
        let mut b = query.into_builder();
        b.append(CATALOG);
        Ok(Response::new(one_batch(
            b.build().map_err(|e| Error::Sql(e.to_string()))?,
        )))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.state.tenant(&request).await?;
        let schema = query.clone().into_builder().schema();
        metadata_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.state.tenant(&request).await?;
        let mut b = query.into_builder();
        b.append(CATALOG, SCHEMA);
        Ok(Response::new(one_batch(
            b.build().map_err(|e| Error::Sql(e.to_string()))?,
        )))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.state.tenant(&request).await?;
        let schema = query.clone().into_builder().schema();
        metadata_info(&schema, query.as_any(), request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.state.tenant(&request).await?;
        let mut b = query.into_builder();
        b.append(
            CATALOG,
            SCHEMA,
            "events",
            "TABLE",
            &honeycell_storage::event_schema(),
        )
        .map_err(|e| Error::Sql(e.to_string()))?;
        Ok(Response::new(one_batch(
            b.build().map_err(|e| Error::Sql(e.to_string()))?,
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// The single catalog and schema names Honeycell reports to SQL clients.
const CATALOG: &str = "honeycell";
const SCHEMA: &str = "public";

fn metadata_info(
    schema: &SchemaRef,
    cmd: Any,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(cmd.encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Error::Sql(e.to_string()))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn one_batch(batch: RecordBatch) -> DoGetStream {
    let stream = FlightDataEncoderBuilder::new()
        .build(futures::stream::iter([Ok(batch)]))
        .map_err(Status::from);
    Box::pin(stream)
}
