//! The cell bus: one bounded inbox per cell, and the handle every protocol
//! handler uses to reach the cell that owns a tenant.
//!
//! A request may land on any cell. Its handler asks the router for the owner
//! and sends the operation to the owner's inbox; if the owner is the cell the
//! request landed on, the message stays on the same thread (no hop). Inboxes
//! are bounded: when one is full the sender gets `Error::BusFull` at once and
//! the client a 429, so a slow cell pushes back instead of growing queues.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use honeycell_auth::{Action, TenantContext};
use honeycell_router::Router;
use honeycell_storage::OrgSnapshot;
use honeycell_types::{CellId, OrgId};
use tokio::sync::{mpsc, oneshot};

use crate::limits::{OpKind, RateLimiter};
use crate::metrics::{self, MetricsSnapshot};
use crate::{Error, Result};

/// Every tenant operation passes here, whatever the protocol, so the role
/// check cannot be forgotten by one of them.
pub fn authorize(ctx: &TenantContext, action: Action) -> Result<()> {
    if !ctx.role.permits(action) {
        return Err(Error::Forbidden {
            role: ctx.role.as_str(),
            permission: action.permission(),
        });
    }
    if !ctx.permits(action) {
        return Err(Error::ScopeForbidden {
            permission: action.permission(),
        });
    }
    Ok(())
}

/// An acknowledged write.
#[derive(Clone, Copy, Debug)]
pub struct IngestAck {
    /// The offset of the first event stored.
    pub first_offset: u64,
    /// Events stored.
    pub rows: u64,
    /// Events of the batch not stored because their `event_id` was stored
    /// within `storage.dedup_window` (idempotent ingest).
    pub duplicates: u64,
    pub cell: CellId,
}

/// What one cell asks of another.
pub(crate) enum Op {
    Ingest {
        ctx: TenantContext,
        batch: RecordBatch,
        reply: oneshot::Sender<Result<IngestAck>>,
    },
    Read {
        ctx: TenantContext,
        reply: oneshot::Sender<Result<OrgSnapshot>>,
    },
    Metrics {
        reply: oneshot::Sender<MetricsSnapshot>,
    },
    Ping {
        reply: oneshot::Sender<CellId>,
    },
}

/// An operation in an inbox, with where it came from.
pub(crate) struct Envelope {
    pub op: Op,
    pub from: CellId,
}

/// Everything a protocol handler needs to reach the cells. Cheap to clone,
/// `Send + Sync`; it holds only senders and the immutable placement table.
#[derive(Clone)]
pub struct CellHandle {
    id: CellId,
    router: Arc<Router>,
    inboxes: Arc<[mpsc::Sender<Envelope>]>,
    /// Only in the `shared` runtime mode: one limiter for the whole process,
    /// behind a mutex, checked by whichever worker thread runs the request.
    shared_limiter: Option<Arc<Mutex<RateLimiter>>>,
}

impl std::fmt::Debug for CellHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellHandle").field("id", &self.id).finish()
    }
}

impl CellHandle {
    pub(crate) fn new(
        id: CellId,
        router: Arc<Router>,
        inboxes: Arc<[mpsc::Sender<Envelope>]>,
        shared_limiter: Option<Arc<Mutex<RateLimiter>>>,
    ) -> Self {
        Self {
            id,
            router,
            inboxes,
            shared_limiter,
        }
    }

    /// The `shared` mode's limit check (cells check in the owner instead).
    fn check_shared_limit(&self, ctx: &TenantContext, kind: OpKind) -> Result<()> {
        let Some(limiter) = &self.shared_limiter else {
            return Ok(());
        };
        let checked = limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(ctx.org.as_str(), &ctx.subject, kind, Instant::now());
        checked.map_err(|limited| {
            metrics::with(|m| *m.rate_limited.entry(limited.scope.as_str()).or_default() += 1);
            Error::RateLimited(limited)
        })
    }

    /// The cell this handle belongs to (where the request landed).
    pub fn id(&self) -> CellId {
        self.id
    }

    /// Number of cells running.
    pub fn cells(&self) -> u32 {
        self.router.cells()
    }

    /// The cell that owns `org`.
    pub fn owner(&self, org: &OrgId) -> CellId {
        self.router.owner(org)
    }

    fn send(&self, to: CellId, op: Op) -> Result<()> {
        let inbox = self
            .inboxes
            .get(to.index())
            .ok_or(Error::CellGone { cell: to })?;
        let envelope = Envelope { op, from: self.id };
        match inbox.try_send(envelope) {
            Ok(()) => {
                if to != self.id {
                    metrics::with(|m| m.bus_hops_out += 1);
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Error::BusFull { cell: to }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::CellGone { cell: to }),
        }
    }

    async fn ask<T>(&self, to: CellId, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(to, op(tx))?;
        rx.await.map_err(|_| Error::CellGone { cell: to })
    }

    /// Appends a normalised event batch to the caller's org, in its owning
    /// cell; resolves once durable. Needs the `events:write` permission.
    pub async fn ingest(&self, ctx: &TenantContext, batch: RecordBatch) -> Result<IngestAck> {
        authorize(ctx, Action::WRITE_EVENTS)?;
        self.check_shared_limit(ctx, OpKind::Write)?;
        let owner = self.owner(&ctx.org);
        let ctx = ctx.clone();
        self.ask(owner, |reply| Op::Ingest { ctx, batch, reply })
            .await?
    }

    /// A consistent, immutable snapshot of the caller's org, after the
    /// owner's read limits and admission checks.
    pub async fn snapshot(&self, ctx: &TenantContext) -> Result<OrgSnapshot> {
        authorize(ctx, Action::READ_EVENTS)?;
        self.check_shared_limit(ctx, OpKind::Read)?;
        let owner = self.owner(&ctx.org);
        let ctx = ctx.clone();
        self.ask(owner, |reply| Op::Read { ctx, reply }).await?
    }

    /// Metrics of every cell, gathered over the bus.
    pub async fn gather_metrics(&self) -> Result<Vec<MetricsSnapshot>> {
        let mut out = Vec::with_capacity(self.inboxes.len());
        for i in 0..self.inboxes.len() {
            let cell = CellId(i as u32);
            out.push(self.ask(cell, |reply| Op::Metrics { reply }).await?);
        }
        Ok(out)
    }

    /// Checks that every cell answers within `timeout` (readiness).
    pub async fn ping_all(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.inboxes.len() {
            let cell = CellId(i as u32);
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::timeout(left, self.ask(cell, |reply| Op::Ping { reply }))
                .await
                .map_err(|_| Error::CellGone { cell })??;
        }
        Ok(())
    }
}
