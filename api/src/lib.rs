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
pub mod graphql;
mod graphql_audit;
mod graphql_edges;
mod graphql_keys;
mod graphql_users;
pub mod http;
pub mod ingest;
pub mod json;
pub mod oauth_routes;

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
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_batch_events: 10_000,
            default_page_size: 100,
            max_page_size: 10_000,
        }
    }
}

impl HttpConfig {
    /// Checks the values; the error names the key to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes < 1024 {
            return Err("http_limits.max_body_bytes must be at least 1024".into());
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
            config,
            schema: graphql::schema(),
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
            get(graphql::graphiql).post(graphql::graphql_handler),
        )
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
        // The body limit is enforced by the handlers with a JSON error; the
        // default axum limit would answer plain text first.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(http::trace_scope))
        .layer(axum::middleware::from_fn(http::record_metrics))
        .with_state(state)
}

/// Serves HTTP on `listener` until `shutdown`, then drains open requests.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Option<std::sync::Arc<honeycell_tls::Tls>>,
    state: ApiState,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.wait())
                .await
        }
        Some(tls) => {
            use axum::serve::ListenerExt as _;
            let incoming = honeycell_tls::incoming(listener, tls, honeycell_tls::Endpoint::Http)?;
            // `tap_io` only to get axum's `ConnectInfo<SocketAddr>` for a
            // listener of our own (the peer address feeds brute-force limits).
            axum::serve(TlsListener(incoming).tap_io(|_| {}), app)
                .with_graceful_shutdown(shutdown.wait())
                .await
        }
    }
}

/// Finished TLS connections as an axum listener.
struct TlsListener(honeycell_tls::Incoming);

impl axum::serve::Listener for TlsListener {
    type Io = honeycell_tls::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.next().await {
            Some(conn) => conn,
            // The accept loop ended (only when this listener is dropped);
            // axum stops on its shutdown signal, not here.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.0.local_addr())
    }
}
