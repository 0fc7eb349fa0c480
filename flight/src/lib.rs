//! Arrow Flight for Honeycell: `DoPut` ingest, `GetFlightInfo` + `DoGet`
//! bulk reads, `DoAction` admin calls, and Flight SQL over the caller's own
//! `events` table (DataFusion).
//!
//! Every cell serves Flight twice: on the shared port (SO_REUSEPORT, any cell
//! may answer) and on its own per-cell port, which is its Flight *location*.
//! `GetFlightInfo` answers with the location of the cell that owns the
//! caller's org, so the client's `DoGet` lands on the owner and the bulk read
//! never crosses the cell bus. The org of every call comes from its verified
//! bearer token, never from a ticket or command. Read `service.rs` for the
//! plain Flight calls and `sql.rs` for Flight SQL.

mod conn;
pub mod engine;
pub mod error;
pub mod put;
pub mod service;
pub mod sql;
pub mod table;

pub use engine::{QueryEngine, SqlConfig};
pub use error::{Error, Result};
pub use service::{FlightState, HoneycellFlight};

use arrow_flight::flight_service_server::FlightServiceServer;
use futures::StreamExt as _;
use honeycell_cell::Shutdown;
use honeycell_tls::conn::Connections;

/// Largest gRPC message accepted (DoPut batches) and sent.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Serves Flight on every listener of this cell until `shutdown`, then
/// drains the calls in flight. `connections` (the cell's, shared with its
/// HTTP listener) accepts, limits, runs TLS when configured and closes
/// connections idle for `connections.idle_timeout`; idle gRPC connections
/// are also pinged every `http2_keepalive_interval`.
pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
    connections: Connections,
    service: HoneycellFlight,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let limits = connections.config();
    let mut servers = Vec::new();
    for listener in listeners {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let incoming = connections
            .incoming(listener, honeycell_tls::Endpoint::Flight)?
            .into_stream()
            .map(|c| Ok::<_, std::io::Error>(conn::FlightConn(c)));
        let svc = FlightServiceServer::new(service.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let shutdown = shutdown.clone();
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
            .layer(tower::layer::layer_fn(conn::InFlight))
            .layer(tower::layer::layer_fn(Traced))
            .add_service(svc);
        servers.push(async move {
            server
                .serve_with_incoming_shutdown(incoming, shutdown.wait())
                .await
        });
    }
    for result in futures::future::join_all(servers).await {
        result.map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// Runs each gRPC call inside its trace id's scope (from `traceparent`
/// metadata, or new), so audit entries recorded by the call carry it.
#[derive(Clone, Debug)]
struct Traced<S>(S);

impl<S, B> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let id = honeycell_control::trace::trace_id_for(
            request
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok()),
        );
        Box::pin(honeycell_control::trace::TRACE_ID.scope(id, self.0.call(request)))
    }
}
