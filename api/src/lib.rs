//! The HTTP face of Honeycell: REST (`/v1/events`), GraphQL (`/graphql`),
//! and the operations endpoints (`/health`, `/ready`, `/metrics`).
//!
//! Every cell runs this server on the shared HTTP port (SO_REUSEPORT), on its
//! own runtime; a handler authenticates the caller where the request landed
//! and hands the operation to the owning cell through its
//! [`honeycell_cell::CellHandle`]. This crate owns wire formats (JSON in and
//! out, Arrow IPC over HTTP) and the mapping of errors to HTTP answers
//! (`error.rs`); it deliberately holds no tenant state. Read `http.rs` for
//! the REST routes and `graphql.rs` for the schema.

pub mod auth_routes;
pub mod error;
use error::ApiError;
pub mod graphiql;
pub mod graphql;
mod graphql_audit;
mod graphql_edges;
pub mod graphql_guard;
mod graphql_keys;
mod graphql_users;
pub mod http;
pub mod ingest;
pub mod json;
pub mod oauth_routes;
pub mod strict_json;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use honeycell_cell::{CellHandle, Shutdown};
use serde::Deserialize;

/// `[http_limits]` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most events in one ingest batch.
    pub max_batch_events: usize,
    /// Page size when `limit`/`first` is not given.
    pub default_page_size: usize,
    /// Largest page a client may ask for.
    pub max_page_size: usize,
    /// Most rows one GraphQL request may ask for: every `events` (and
    /// `auditLog`) field counts its `first` (default: the default page
    /// size), aliases and fragments add up, each other field counts 1.
    /// Checked before anything runs.
    pub graphql_max_cost: usize,
    /// Deepest nesting of `{`, `[` and `(` in a GraphQL document (selection
    /// sets, arguments, list and object values), checked on the text
    /// before it is parsed.
    pub graphql_max_nesting: usize,
    /// Largest GraphQL answer; a bigger one is refused with
    /// `response_too_large` instead of being sent.
    pub graphql_max_response_bytes: usize,
    /// Slowest a request body may arrive, on average, once
    /// `body_grace_secs` have passed (0: no minimum). A body that falls
    /// behind is refused with 408 `body_too_slow`, so a client trickling
    /// bytes cannot hold a connection and its buffer for ever.
    pub min_body_bytes_per_sec: u64,
    /// Seconds a body may take before its rate is checked.
    pub body_grace_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_batch_events: 10_000,
            default_page_size: 100,
            max_page_size: 10_000,
            graphql_max_cost: 20_000,
            graphql_max_nesting: 32,
            graphql_max_response_bytes: 32 * 1024 * 1024,
            min_body_bytes_per_sec: 1024,
            body_grace_secs: 10,
        }
    }
}

impl HttpConfig {
    /// Checks the values; the error names the key to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes < 1024 {
            return Err("http_limits.max_body_bytes must be at least 1024".into());
        }
        if self.graphql_max_cost < self.max_page_size {
            return Err(format!(
                "http_limits.graphql_max_cost ({}) must be at least http_limits.max_page_size ({}), or a full page could never be asked for",
                self.graphql_max_cost, self.max_page_size
            ));
        }
        if !(8..=256).contains(&self.graphql_max_nesting) {
            return Err("http_limits.graphql_max_nesting must be from 8 to 256".into());
        }
        if self.graphql_max_response_bytes < 64 * 1024 {
            return Err("http_limits.graphql_max_response_bytes must be at least 65536".into());
        }
        if !(1..=3_600).contains(&self.body_grace_secs) {
            return Err("http_limits.body_grace_secs must be from 1 to 3600".into());
        }
        if self.max_batch_events == 0 || self.max_page_size == 0 || self.default_page_size == 0 {
            return Err("http_limits.max_batch_events, http_limits.max_page_size and http_limits.default_page_size must be at least 1".into());
        }
        Ok(())
    }
}

/// Shared, immutable state of the HTTP handlers of one cell.
#[derive(Clone)]
pub struct ApiState {
    pub cells: CellHandle,
    /// Checks JWTs and API keys (this cell's cache).
    pub auth: honeycell_control::Authenticator,
    /// Queues audit entries for the background writer.
    pub audit: honeycell_control::AuditSink,
    pub config: Arc<HttpConfig>,
    pub schema: graphql::HoneycellSchema,
    /// This cell's handle on the control-plane store.
    pub control: honeycell_control::Store,
    /// Sign-in through OAuth2/OIDC providers, when configured.
    pub oauth: Option<honeycell_control::OAuth>,
    /// This cell's Redis connection, when `redis_url` is set.
    pub redis: Option<honeycell_queue::Redis>,
}

impl ApiState {
    pub fn new(
        cells: CellHandle,
        auth: honeycell_control::Authenticator,
        config: Arc<HttpConfig>,
        audit: honeycell_control::AuditSink,
    ) -> Self {
        Self {
            cells,
            control: auth.store().clone(),
            auth,
            audit,
            schema: graphql::schema(&config),
            config,
            oauth: None,
            redis: None,
        }
    }

    /// With this cell's Redis connection.
    pub fn with_redis(mut self, redis: Option<honeycell_queue::Redis>) -> Self {
        self.redis = redis;
        self
    }

    /// With sign-in through OAuth2/OIDC providers.
    pub fn with_oauth(mut self, oauth: Option<honeycell_control::OAuth>) -> Self {
        self.oauth = oauth;
        self
    }
}

impl ApiState {
    /// Audits a refusal for lack of permission or over a quota; passes `e`
    /// through.
    pub fn denied(&self, ctx: &honeycell_auth::TenantContext, e: ApiError) -> ApiError {
        if let Some(permission) = e.permission {
            self.audit_denied(ctx, permission);
        } else if e.code == "quota_exceeded" {
            self.audit_quota(ctx, &e.message);
        }
        e
    }

    pub(crate) fn audit_denied(&self, ctx: &honeycell_auth::TenantContext, permission: &str) {
        self.audit_refusal(ctx, "permission.denied", permission, None);
    }

    pub(crate) fn audit_quota(&self, ctx: &honeycell_auth::TenantContext, message: &str) {
        self.audit_refusal(ctx, "quota.exceeded", "events", Some(message));
    }

    fn audit_refusal(
        &self,
        ctx: &honeycell_auth::TenantContext,
        action: &str,
        resource: &str,
        detail: Option<&str>,
    ) {
        self.record(&ctx.org, &ctx.subject, action, resource, "denied", detail);
    }

    /// Queues one audit entry (the one place the API layer builds them).
    pub(crate) fn record(
        &self,
        org: &honeycell_types::OrgId,
        actor: &str,
        action: &str,
        resource: &str,
        result: &str,
        detail: Option<&str>,
    ) {
        self.audit.record(honeycell_control::AuditDraft {
            org: org.clone(),
            at_us: honeycell_types::now_us(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            result: result.to_owned(),
            trace_id: None,
            detail: detail.map(str::to_owned),
        });
    }
}

/// All routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/events", get(http::get_events).post(http::post_events))
        .route(
            "/graphql",
            get(graphiql::page).post(graphql::graphql_handler),
        )
        .route("/graphql/assets/{name}", get(graphiql::asset))
        .route("/health", get(http::health))
        .route("/ready", get(http::ready))
        .route("/auth/token", axum::routing::post(auth_routes::token))
        .route("/auth/refresh", axum::routing::post(auth_routes::refresh))
        .route("/auth/logout", axum::routing::post(auth_routes::logout))
        .route("/.well-known/jwks.json", get(auth_routes::jwks))
        .route("/auth/oauth/{provider}/start", get(oauth_routes::start))
        .route(
            "/auth/oauth/{provider}/callback",
            get(oauth_routes::callback),
        )
        .route("/metrics", get(http::metrics_text))
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        // Handlers read bodies through `http::read_body`, which answers a
        // JSON error at `max_body_bytes`; axum's own limit (plain text) is
        // set to the same size as a net for any extractor that reads one.
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn(http::trace_scope))
        .layer(axum::middleware::from_fn(http::record_metrics))
        .with_state(state)
}

/// Serves HTTP (HTTP/1.1 and HTTP/2, over TLS when configured) on
/// `listener` until `shutdown`, then stops accepting and drains open
/// requests. `connections` (the cell's, shared with its Flight listeners)
/// accepts, limits and closes connections idle for
/// `connections.idle_timeout`; hyper enforces `header_read_timeout` on
/// HTTP/1 and pings HTTP/2 clients every `http2_keepalive_interval`.
pub async fn serve(
    listener: std::net::TcpListener,
    connections: honeycell_tls::conn::Connections,
    state: ApiState,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut incoming = connections.incoming(listener, honeycell_tls::Endpoint::Http)?;
    let limits = connections.config();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    let app = router(state);
    // Each connection holds a receiver; `true` asks it to finish its
    // requests and close, and the sender sees when all have.
    let (draining, drain) = tokio::sync::watch::channel(false);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let conn = tokio::select! {
            () = &mut stop => break,
            conn = incoming.next() => match conn {
                Some(conn) => conn,
                // The accept loop ended (only when `incoming` is dropped):
                // stop on the shutdown signal, not here.
                None => {
                    (&mut stop).await;
                    break;
                }
            },
        };
        tokio::spawn(serve_connection(
            conn,
            builder.clone(),
            app.clone(),
            drain.clone(),
        ));
    }
    // Closes the listener; then every open connection drains.
    drop(incoming);
    drop(drain);
    let _ = draining.send(true);
    draining.closed().await;
    Ok(())
}

/// Serves one connection until it closes, or until `drain` says to finish
/// its requests. Each request counts as in flight (for the idle timeout)
/// until its response body is sent, and carries axum's
/// `ConnectInfo<SocketAddr>` (the peer address feeds brute-force limits).
async fn serve_connection(
    conn: honeycell_tls::conn::Conn,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    app: Router,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let peer = conn.peer_addr();
    let activity = conn.activity().clone();
    let service =
        hyper::service::service_fn(move |mut request: ::http::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let in_flight = Some(activity.request());
            let app = app.clone();
            let http1 = request.version() < ::http::Version::HTTP_2;
            async move {
                let mut response = tower::ServiceExt::oneshot(app, request).await?;
                // A body refused as too large or too slow is left unread,
                // so the connection cannot carry another request: say so,
                // or a client may reuse it and lose its next request to
                // the lingering close.
                if http1
                    && matches!(
                        response.status(),
                        ::http::StatusCode::PAYLOAD_TOO_LARGE | ::http::StatusCode::REQUEST_TIMEOUT
                    )
                {
                    response.headers_mut().insert(
                        ::http::header::CONNECTION,
                        ::http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| honeycell_tls::conn::Tracked::new(body, in_flight)),
                )
            }
        });
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
    tokio::pin!(connection);
    let draining = async move {
        let _ = drain.wait_for(|d| *d).await;
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = draining => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}
