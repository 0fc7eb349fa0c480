//! Cells: the thread-per-core, shared-nothing heart of Honeycell.
//!
//! A cell is one OS thread (`cell-{i}`), pinned to core `i`, running a tokio
//! current-thread runtime with a `LocalSet`. It owns a shard of tenants and
//! every piece of mutable state for them — event logs (through its own
//! `storage::Store` and I/O thread), rate-limit buckets, admission budget,
//! metrics — so that state needs no locks. Protocol servers (HTTP, GraphQL,
//! Flight) run on every cell's runtime and reach the owning cell of a tenant
//! through a [`CellHandle`]: locally, or after one hop over the bounded cell
//! bus.
//!
//! Why current-thread tokio per core (the full decision is in
//! `docs/adr/0001-runtime.md`): tonic (Arrow Flight), hyper/axum,
//! tokio-postgres and redis all need tokio; glommio is unmaintained since
//! 2024 and monoio cannot run tonic. A work-stealing pool would move tenant
//! state between threads and force it behind locks; pinning one runtime per
//! core keeps each tenant's state on one core's caches. The bench
//! `cells-vs-shared` (issue 3) measures the claim.
//!
//! This crate deliberately knows nothing of HTTP, gRPC or JSON: it takes
//! already-authenticated [`honeycell_auth::TenantContext`]s and Arrow batches.
//! Read `bus.rs` for how requests reach owners, `owner.rs` for what an owner
//! does, `runtime.rs` for start and shutdown, then `api` and `flight`.

pub mod bus;
pub mod config;
pub mod limits;
pub mod metrics;
mod owner;
pub mod query;
pub mod runtime;

use std::time::Duration;

use honeycell_types::{CellId, ErrorClass};

pub use bus::{CellHandle, IngestAck};
pub use config::{AdmissionConfig, RateLimitConfig};
pub use runtime::{
    CellContext, CellSpec, Cells, Open, OpenError, Serving, Shutdown, start, start_shared,
};

/// Errors of the cells.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] honeycell_storage::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("rate limit exceeded: the {scope} {kind} limit allows no more requests now; retry after {ms} ms", scope = .0.scope.as_str(), kind = .0.kind.as_str(), ms = .0.retry_after.as_millis().max(1))]
    RateLimited(limits::Limited),
    #[error("server busy: {reason}; retry shortly")]
    Admission { cell: CellId, reason: String },
    #[error("server busy: the inbox of {cell} is full (admission.bus_capacity); retry shortly")]
    BusFull { cell: CellId },
    #[error(
        "the batch holds {bytes} bytes in memory, more than a cell may buffer (admission.max_buffered_mb = {max_buffered_mb}); send smaller batches"
    )]
    BatchOverBuffer { bytes: u64, max_buffered_mb: u64 },
    #[error("{cell} is not running (shutting down?)")]
    CellGone { cell: CellId },
    #[error("{cell} panicked: {message}")]
    CellPanicked { cell: CellId, message: String },
    #[error("{cell} failed to start: {reason}")]
    CellStart { cell: CellId, reason: String },
    /// A cell could not open its storage or its services (the source says
    /// which and why).
    #[error("{cell} failed to open")]
    CellOpen {
        cell: CellId,
        #[source]
        source: runtime::OpenError,
    },
    /// A cell's servers or owner task ended while the server was running.
    #[error("{cell} stopped serving on its own (its servers or owner task ended)")]
    CellStopped { cell: CellId },
    #[error("could not start the runtime of {cell}: {source}")]
    Runtime {
        cell: CellId,
        source: std::io::Error,
    },
    #[error("cells: {cells} cell payloads but the router places over {router} cells")]
    CellCount { cells: usize, router: u32 },
    #[error("forbidden: role {role} lacks the permission {permission}")]
    Forbidden {
        role: &'static str,
        permission: &'static str,
    },
    #[error(
        "the org already has {limit} requests in flight (its tier's max_concurrent_requests); retry when one has finished"
    )]
    TooManyConcurrent { limit: u32 },
    #[error("quota exceeded: {quota}: {detail}")]
    QuotaExceeded { quota: &'static str, detail: String },
    #[error(
        "forbidden: this credential's scopes do not include the permission {permission}; use a key or token with that scope"
    )]
    ScopeForbidden { permission: &'static str },
    #[error("invalid filter {field}: {reason}")]
    BadFilter { field: &'static str, reason: String },
    #[error("invalid cursor {cursor:?}: pass back the next_cursor of a previous page unchanged")]
    BadCursor { cursor: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Who is at fault and whether to retry.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Storage(e) => e.class(),
            Error::TooManyConcurrent { .. } => ErrorClass::Overloaded {
                retry_after: std::time::Duration::from_secs(1),
            },
            Error::RateLimited(l) => ErrorClass::Overloaded {
                retry_after: l.retry_after,
            },
            Error::Admission { .. } | Error::BusFull { .. } => ErrorClass::Overloaded {
                retry_after: Duration::from_secs(1),
            },
            Error::CellGone { .. } => ErrorClass::Unavailable,
            Error::Forbidden { .. }
            | Error::ScopeForbidden { .. }
            | Error::QuotaExceeded { .. } => ErrorClass::Forbidden,
            Error::BatchOverBuffer { .. } => ErrorClass::TooLarge,
            Error::BadCursor { .. } | Error::BadFilter { .. } => ErrorClass::BadRequest,
            Error::Arrow(_)
            | Error::CellPanicked { .. }
            | Error::CellStart { .. }
            | Error::CellOpen { .. }
            | Error::CellStopped { .. }
            | Error::Runtime { .. }
            | Error::CellCount { .. } => ErrorClass::Internal,
        }
    }
}
