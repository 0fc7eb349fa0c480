//! The owner side of a cell: the task that holds every piece of mutable state
//! for the cell's tenants and executes the operations sent to its inbox.
//!
//! State lives in `Rc`/`RefCell` because it never leaves the cell's thread;
//! each operation runs as its own local task so that many appends wait on the
//! storage I/O thread together (group commit) while the cell keeps serving.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use honeycell_auth::TenantContext;
use honeycell_storage::{OrgLog, OrgSnapshot, Store};
use honeycell_types::{CellId, OrgId, now_us};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::bus::{Envelope, IngestAck, Op};
use crate::config::AdmissionConfig;
use crate::limits::{OpKind, RateLimiter};
use crate::metrics;
use crate::{Error, Result};

pub(crate) struct Owner {
    pub id: CellId,
    pub store: Store,
    orgs: RefCell<HashMap<OrgId, OrgLog>>,
    maintaining: RefCell<HashSet<OrgId>>,
    limiter: RefCell<RateLimiter>,
    admission: AdmissionConfig,
    in_flight: Cell<usize>,
    /// Operations in flight per org (for the tier's
    /// `max_concurrent_requests`); entries leave at zero.
    org_in_flight: RefCell<HashMap<OrgId, u32>>,
    idle: Notify,
}

/// One in-flight operation of an org; released on drop.
struct OrgSlot {
    owner: Rc<Owner>,
    org: OrgId,
}

impl Drop for OrgSlot {
    fn drop(&mut self) {
        let mut map = self.owner.org_in_flight.borrow_mut();
        if let Some(n) = map.get_mut(&self.org) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.org);
            }
        }
    }
}

fn concurrency_error(ctx: &TenantContext) -> Error {
    Error::TooManyConcurrent {
        limit: ctx.quota.max_concurrent.unwrap_or_default(),
    }
}

impl Owner {
    pub fn new(id: CellId, store: Store, limiter: RateLimiter, admission: AdmissionConfig) -> Self {
        Self {
            id,
            store,
            orgs: RefCell::new(HashMap::new()),
            maintaining: RefCell::new(HashSet::new()),
            limiter: RefCell::new(limiter),
            admission,
            in_flight: Cell::new(0),
            org_in_flight: RefCell::new(HashMap::new()),
            idle: Notify::new(),
        }
    }

    /// Runs the inbox until `stop` fires, then waits for in-flight operations.
    pub async fn run(
        self: Rc<Self>,
        mut inbox: mpsc::Receiver<Envelope>,
        mut stop: oneshot::Receiver<()>,
    ) {
        loop {
            tokio::select! {
                biased;
                envelope = inbox.recv() => match envelope {
                    Some(e) => self.clone().dispatch(e, inbox.len()),
                    None => break,
                },
                _ = &mut stop => break,
            }
        }
        inbox.close();
        while let Ok(e) = inbox.try_recv() {
            self.clone().dispatch(e, 0);
        }
        while self.in_flight.get() > 0 {
            self.idle.notified().await;
        }
    }

    fn dispatch(self: Rc<Self>, envelope: Envelope, queued: usize) {
        if envelope.from != self.id {
            metrics::with(|m| m.bus_hops_in += 1);
        }
        match envelope.op {
            Op::Ping { reply } => {
                let _ = reply.send(self.id);
            }
            Op::Metrics { reply } => {
                let _ = reply.send(self.metrics_snapshot(queued));
            }
            Op::Ingest { ctx, batch, reply } => {
                let admitted =
                    self.admit(&ctx, OpKind::Write, queued, batch.get_array_memory_size());
                if let Err(e) = admitted {
                    let _ = reply.send(Err(e));
                    return;
                }
                let Some(slot) = self.org_slot(&ctx) else {
                    let _ = reply.send(Err(concurrency_error(&ctx)));
                    return;
                };
                let this = self.clone();
                self.track(async move {
                    let _ = reply.send(this.ingest(&ctx, batch).await);
                    drop(slot);
                });
            }
            Op::Read { ctx, reply } => {
                if let Err(e) = self.admit(&ctx, OpKind::Read, queued, 0) {
                    let _ = reply.send(Err(e));
                    return;
                }
                let Some(slot) = self.org_slot(&ctx) else {
                    let _ = reply.send(Err(concurrency_error(&ctx)));
                    return;
                };
                let this = self.clone();
                self.track(async move {
                    let _ = reply.send(this.read(&ctx.org).await);
                    drop(slot);
                });
            }
        }
    }

    /// Spawns `fut` as a local task counted in the cell's queue depth.
    fn track(self: &Rc<Self>, fut: impl std::future::Future<Output = ()> + 'static) {
        self.in_flight.set(self.in_flight.get() + 1);
        let this = self.clone();
        tokio::task::spawn_local(async move {
            fut.await;
            this.in_flight.set(this.in_flight.get() - 1);
            if this.in_flight.get() == 0 {
                this.idle.notify_waiters();
            }
        });
    }

    /// Takes one of the org's concurrent-operation slots (its tier's
    /// `max_concurrent_requests`), or `None` when all are in use.
    fn org_slot(self: &Rc<Self>, ctx: &TenantContext) -> Option<OrgSlot> {
        let mut map = self.org_in_flight.borrow_mut();
        let n = map.entry(ctx.org.clone()).or_insert(0);
        if ctx.quota.max_concurrent.is_some_and(|max| *n >= max) {
            metrics::with(|m| m.quota_rejected += 1);
            return None;
        }
        *n += 1;
        Some(OrgSlot {
            owner: self.clone(),
            org: ctx.org.clone(),
        })
    }

    /// Rate limits, then admission control: queue depth and buffered memory.
    fn admit(
        self: &Rc<Self>,
        ctx: &TenantContext,
        kind: OpKind,
        queued: usize,
        bytes: usize,
    ) -> Result<()> {
        let buffer_limit = self.admission.max_buffered_mb * 1024 * 1024;
        // A batch the whole cell could not buffer is never admitted:
        // refused as too large, not with a 429 that invites retries.
        if bytes as u64 > buffer_limit {
            return Err(Error::BatchOverBuffer {
                bytes: bytes as u64,
                max_buffered_mb: self.admission.max_buffered_mb,
            });
        }
        let now = Instant::now();
        if let Err(limited) = self.limiter.borrow_mut().check_with(
            ctx.org.as_str(),
            &ctx.subject,
            kind,
            now,
            ctx.quota.max_qps.map(f64::from),
        ) {
            metrics::with(|m| *m.rate_limited.entry(limited.scope.as_str()).or_default() += 1);
            return Err(Error::RateLimited(limited));
        }
        let depth = self.in_flight.get() + queued;
        if depth >= self.admission.max_queue_depth {
            metrics::with(|m| m.admission_rejected += 1);
            return Err(Error::Admission {
                cell: self.id,
                reason: format!(
                    "cell queue depth {depth} reached admission.max_queue_depth {}",
                    self.admission.max_queue_depth
                ),
            });
        }
        if kind == OpKind::Write {
            let held = self.store.buffered_bytes() + bytes as u64;
            if held > buffer_limit {
                metrics::with(|m| m.admission_rejected += 1);
                self.relieve_buffers(buffer_limit / 2);
                return Err(Error::Admission {
                    cell: self.id,
                    reason: format!(
                        "cell write buffers hold {held} bytes, over admission.max_buffered_mb {}",
                        self.admission.max_buffered_mb
                    ),
                });
            }
        }
        Ok(())
    }

    /// Seals the largest memtables of the cell's orgs (in the background)
    /// until what stays buffered is at most `target` bytes. Memtables seal
    /// on their own only past `storage.segment_max_*`, per org; without this
    /// a cell whose orgs together hold `admission.max_buffered_mb` below
    /// those thresholds would refuse every write from then on.
    fn relieve_buffers(self: &Rc<Self>, target: u64) {
        let mut held: Vec<(u64, OrgId, OrgLog)> = self
            .orgs
            .borrow()
            .iter()
            .map(|(org, log)| (log.memtable_bytes(), org.clone(), log.clone()))
            .filter(|(bytes, ..)| *bytes > 0)
            .collect();
        held.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let mut left = self.store.buffered_bytes();
        for (bytes, org, log) in held {
            if left <= target {
                break;
            }
            left = left.saturating_sub(bytes);
            self.maintain(org, log, true);
        }
    }

    async fn log(&self, org: &OrgId) -> Result<OrgLog> {
        if let Some(log) = self.orgs.borrow().get(org) {
            return Ok(log.clone());
        }
        let log = self.store.org(org).await?;
        self.orgs.borrow_mut().insert(org.clone(), log.clone());
        Ok(log)
    }

    async fn ingest(self: &Rc<Self>, ctx: &TenantContext, batch: RecordBatch) -> Result<IngestAck> {
        let org = &ctx.org;
        let bytes = batch.get_array_memory_size() as u64;
        let log = self.log(org).await?;
        // The tier's storage quota, on the storage layer's own byte count
        // (segments + WAL): nothing is appended once it is reached.
        if let Some(max) = ctx.quota.max_stored_bytes {
            let used = log.stored_bytes();
            if used >= max {
                metrics::with(|m| m.quota_rejected += 1);
                return Err(Error::QuotaExceeded {
                    quota: "max_storage_gb",
                    detail: format!(
                        "the org stores {used} bytes, its tier allows {max}; delete data (retention) or move to a larger tier"
                    ),
                });
            }
        }
        let ack = log.append(batch).await?;
        metrics::with(|m| {
            m.events_ingested += ack.rows as u64;
            m.events_duplicate += ack.duplicates as u64;
            m.bytes_ingested += bytes;
        });
        if log.needs_maintenance(now_us()) {
            self.maintain(org.clone(), log, false);
        }
        Ok(IngestAck {
            first_offset: ack.first_offset,
            rows: ack.rows as u64,
            duplicates: ack.duplicates as u64,
            cell: self.id,
        })
    }

    async fn read(&self, org: &OrgId) -> Result<OrgSnapshot> {
        Ok(self.log(org).await?.snapshot())
    }

    /// Seals, compacts and applies retention for one org in the background;
    /// at most one maintenance per org at a time.
    fn maintain(self: &Rc<Self>, org: OrgId, log: OrgLog, force: bool) {
        if !self.maintaining.borrow_mut().insert(org.clone()) {
            return;
        }
        let this = self.clone();
        self.track(async move {
            if let Err(e) = log.maintain(now_us(), force).await {
                tracing::warn!(cell = %this.id, org = %org, error = %e, "maintenance failed");
            }
            this.maintaining.borrow_mut().remove(&org);
        });
    }

    /// Periodic work: maintenance of every open org and eviction of idle buckets.
    pub async fn housekeeping(self: Rc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = now_us();
            let due: Vec<(OrgId, OrgLog)> = self
                .orgs
                .borrow()
                .iter()
                .filter(|(_, log)| log.needs_maintenance(now))
                .map(|(o, l)| (o.clone(), l.clone()))
                .collect();
            for (org, log) in due {
                self.maintain(org, log, false);
            }
            self.limiter.borrow_mut().evict_idle(Instant::now());
        }
    }

    fn metrics_snapshot(&self, queued: usize) -> metrics::MetricsSnapshot {
        let mut snap = metrics::with(|m| m.snapshot(self.id.0));
        snap.buffered_bytes = self.store.buffered_bytes();
        snap.queue_depth = (self.in_flight.get() + queued) as u64;
        let orgs = self.orgs.borrow();
        snap.orgs_open = orgs.len() as u64;
        snap.stored_bytes = orgs.values().map(OrgLog::stored_bytes).sum();
        snap.dedup_evicted = self.store.dedup_evicted();
        snap
    }

    /// Opens every org this cell owns that has data on disk, so that
    /// recovery happens at start rather than on the first request.
    pub async fn open_owned(&self, owns: impl Fn(&OrgId) -> bool) -> Result<usize> {
        let mut n = 0;
        for org in self.store.orgs_on_disk()? {
            if owns(&org) {
                self.log(&org).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Seals every open org's buffered events into segments (clean shutdown).
    pub async fn flush_all(&self) {
        let logs: Vec<(OrgId, OrgLog)> = self
            .orgs
            .borrow()
            .iter()
            .map(|(o, l)| (o.clone(), l.clone()))
            .collect();
        for (org, log) in logs {
            if let Err(e) = log.maintain(now_us(), true).await {
                tracing::warn!(cell = %self.id, org = %org, error = %e, "final seal failed; the WAL still holds the events");
            }
        }
    }
}
