//! Flight SQL over the caller's own `events` table, executed by DataFusion.
//!
//! Isolation does not depend on parsing the SQL: every query runs in a fresh
//! DataFusion session whose catalog holds exactly one table, `events`, built
//! from the caller's org snapshot. Another org's data is simply not there,
//! whatever the SQL or ticket names. DDL, DML and statements such as `SET`
//! are refused. Queries execute on the query pool, not on the cell's thread,
//! so a heavy query never stalls the cell's other tenants; results flow back
//! through a small bounded channel.

use std::sync::Arc;

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
use datafusion::catalog::MemTable;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use honeycell_storage::OrgSnapshot;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::service::{DoGetStream, FlightState};

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
    /// returns the result schema and a stream of batches.
    async fn run(
        &self,
        snapshot: OrgSnapshot,
        sql: String,
        execute: bool,
    ) -> Result<(
        SchemaRef,
        Option<ReceiverStream<Result<RecordBatch, FlightError>>>,
    )> {
        let (schema_tx, schema_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(4);
        self.state.query_pool.spawn(async move {
            let planned = plan(snapshot, &sql).await;
            let df = match planned {
                Ok(df) => df,
                Err(e) => {
                    let _ = schema_tx.send(Err(e));
                    return;
                }
            };
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let _ = schema_tx.send(Ok(schema));
            if !execute {
                return;
            }
            match df.execute_stream().await {
                Ok(mut stream) => {
                    while let Some(item) = stream.next().await {
                        let item = item.map_err(|e| FlightError::ExternalError(Box::new(e)));
                        if tx.send(item).await.is_err() {
                            break; // the client went away
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(FlightError::ExternalError(Box::new(e)))).await;
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
        let (schema, _) = self.run(snapshot, sql, false).await?;
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
        let (schema, batches) = self.run(snapshot, sql, true).await?;
        let batches = batches.ok_or(Error::QueryWorkerGone)?;
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Box::pin(stream))
    }
}

/// A session holding only the caller's `events` table.
async fn plan(snapshot: OrgSnapshot, sql: &str) -> Result<datafusion::dataframe::DataFrame> {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    let batches: Vec<RecordBatch> = snapshot.chunks().iter().map(|c| c.batch.clone()).collect();
    let table = MemTable::try_new(honeycell_storage::event_schema(), vec![batches])
        .map_err(|e| Error::Sql(e.to_string()))?;
    ctx.register_table("events", Arc::new(table))
        .map_err(|e| Error::Sql(e.to_string()))?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(sql, options)
        .await
        .map_err(|e| Error::Sql(e.to_string()))
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
        let (schema, _) = self.run(snapshot, query.query.clone(), false).await?;
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
