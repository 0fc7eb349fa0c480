//! Starting and stopping the cells: one pinned OS thread per cell, each with
//! its own current-thread tokio runtime and `LocalSet`.
//!
//! Start-up has two phases. Every cell opens its storage, recovers its orgs
//! and opens its services (the `serve` callback's first phase: control
//! store, keys, ...); only when every cell has opened does any of them start
//! serving, and [`start`] returns. If one cell fails to open, the others
//! stop and [`start`] returns that cell's error. Once serving, a cell that
//! stops on its own (its thread panicked, its servers or owner task ended)
//! is reported by [`Cells::failed`]; the server then shuts the others down
//! (they drain) and exits non-zero, so a supervisor restarts it rather than
//! keeping a half-alive process.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use honeycell_router::Router;
use honeycell_storage::{StorageConfig, Store};
use honeycell_types::CellId;
use tokio::sync::{mpsc, oneshot, watch};

use crate::bus::{CellHandle, Envelope};
use crate::config::{AdmissionConfig, RateLimitConfig};
use crate::limits::RateLimiter;
use crate::metrics;
use crate::owner::Owner;
use crate::{Error, Result};

/// Stack of each cell thread (and shared-mode worker).
const CELL_STACK_BYTES: usize = 8 * 1024 * 1024;

/// What every cell is started with.
#[derive(Clone, Debug)]
pub struct CellSpec {
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    pub rate_limiting: RateLimitConfig,
    pub admission: AdmissionConfig,
    /// Pin cell `i` to core `i` (modulo the cores available).
    pub pin_cores: bool,
}

/// Resolves when the server is asked to stop.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Handed to the protocol servers of one cell.
#[derive(Clone, Debug)]
pub struct CellContext {
    pub handle: CellHandle,
    pub shutdown: Shutdown,
}

/// What a cell's `serve` callback gives back once its services are open:
/// the future that serves until shutdown.
pub type Serving = LocalBoxFuture<'static, ()>;
/// Why a cell's services could not be opened (the caller's own error, with
/// its chain of causes).
pub type OpenError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// The `serve` callback's first phase: resolves once the cell's services are
/// open, with the future that serves.
pub type Open = LocalBoxFuture<'static, std::result::Result<Serving, OpenError>>;

/// Which cells still serve, and the first that stopped on its own.
struct Liveness {
    /// Cells (threads) that have not yet left serving.
    serving: watch::Sender<usize>,
    /// The first cell that left serving before stop was asked for.
    failed: watch::Sender<Option<CellId>>,
    /// True once every cell has opened: they may serve.
    go: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
}

impl Liveness {
    fn new(n: usize, stop: watch::Receiver<bool>) -> Arc<Liveness> {
        Arc::new(Liveness {
            serving: watch::Sender::new(n),
            failed: watch::Sender::new(None),
            go: watch::Sender::new(false),
            stop,
        })
    }

    /// Whether to serve: true once every cell has opened, false if stop
    /// comes first (another cell failed to open).
    async fn may_serve(&self) -> bool {
        let mut go = self.go.subscribe();
        let mut stop = self.stop.clone();
        tokio::select! {
            r = go.wait_for(|go| *go) => r.is_ok(),
            _ = stop.wait_for(|stop| *stop) => false,
        }
    }

    /// Resolves once no cell serves any more (so none can still send a hop
    /// to another's inbox).
    async fn none_serving(&self) {
        let _ = self.serving.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// One cell thread's place in [`Liveness`]: left when the cell stops
/// serving, by [`Self::leave`] or, whatever ends the thread (an error, a
/// panic unwinding its stack), on drop. Leaving before stop was asked for
/// marks the cell failed.
struct Seat {
    cell: CellId,
    live: Arc<Liveness>,
    left: std::cell::Cell<bool>,
}

impl Seat {
    fn new(cell: CellId, live: Arc<Liveness>) -> Seat {
        Seat {
            cell,
            live,
            left: std::cell::Cell::new(false),
        }
    }

    fn leave(&self) {
        if self.left.replace(true) {
            return;
        }
        if !*self.live.stop.borrow() {
            let cell = self.cell;
            self.live.failed.send_if_modified(|failed| {
                let first = failed.is_none();
                if first {
                    *failed = Some(cell);
                }
                first
            });
        }
        self.live.serving.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.leave();
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// The running cells.
pub struct Cells {
    threads: Vec<(CellId, JoinHandle<Result<()>>)>,
    stop: watch::Sender<bool>,
    handle: CellHandle,
    live: Arc<Liveness>,
}

impl std::fmt::Debug for Cells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cells")
            .field("cells", &self.threads.len())
            .finish()
    }
}

/// Starts one cell per entry of `payloads` (the per-cell listeners, say).
/// On each cell's thread `serve` first opens the cell's services, then
/// serves (see [`Open`]). Returns once every cell has opened its storage,
/// recovered the orgs it owns and opened its services — only then does any
/// cell start serving — or with the first failing cell's error, once the
/// others have stopped.
pub fn start<T, F>(spec: CellSpec, router: Router, payloads: Vec<T>, serve: F) -> Result<Cells>
where
    T: Send + 'static,
    F: Fn(CellContext, T) -> Open + Send + Sync + 'static,
{
    let n = payloads.len();
    if n == 0 || n != router.cells() as usize {
        return Err(Error::CellCount {
            cells: n,
            router: router.cells(),
        });
    }
    let router = Arc::new(router);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| mpsc::channel::<Envelope>(spec.admission.bus_capacity))
        .unzip();
    let inboxes: Arc<[mpsc::Sender<Envelope>]> = senders.into();
    let (stop_tx, stop_rx) = watch::channel(false);
    let live = Liveness::new(n, stop_rx.clone());
    let serve = Arc::new(serve);
    let cores = if spec.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(CellId, Result<usize>)>();

    let mut threads = Vec::with_capacity(n);
    for (i, (inbox, payload)) in receivers.into_iter().zip(payloads).enumerate() {
        let id = CellId(i as u32);
        let handle = CellHandle::new(id, router.clone(), inboxes.clone(), None);
        let ctx = CellContext {
            handle,
            shutdown: Shutdown(stop_rx.clone()),
        };
        let spec = spec.clone();
        let serve = serve.clone();
        let live = live.clone();
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[i % cores.len()])
        };
        let ready = ready_tx.clone();
        let router = router.clone();
        let thread = std::thread::Builder::new()
            .name(format!("cell-{i}"))
            // Room for the bounded recursion of parsers (GraphQL, JSON at
            // serde_json's limit of 128) with a margin; reserved, not used.
            .stack_size(CELL_STACK_BYTES)
            .spawn(move || {
                // Left on every way out of this thread, unwinding included.
                let seat = Seat::new(id, live);
                if let Some(core) = core
                    && !core_affinity::set_for_current(core)
                {
                    tracing::warn!(
                        cell = i,
                        core = core.id,
                        "could not pin cell to its core; running unpinned"
                    );
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name(format!("cell-{i}-blocking"))
                    .build()
                {
                    Ok(rt) => rt,
                    Err(source) => {
                        let _ = ready.send((id, Err(Error::Runtime { cell: id, source })));
                        return Ok(());
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(
                    &rt,
                    cell_main(id, spec, router, inbox, ctx, payload, serve, &seat, ready),
                )
            })
            .map_err(|source| Error::Runtime { cell: id, source })?;
        threads.push((id, thread));
    }
    drop(ready_tx);

    let handle = CellHandle::new(CellId(0), router, inboxes, None);
    let cells = Cells {
        threads,
        stop: stop_tx,
        handle,
        live,
    };
    for _ in 0..n {
        match ready_rx.recv() {
            Ok((id, Ok(orgs))) => tracing::info!(cell = %id, orgs_recovered = orgs, "cell open"),
            Ok((_, Err(e))) => {
                // The cells already open stop without having served.
                let _ = cells.shutdown();
                return Err(e);
            }
            Err(_) => {
                // A cell thread ended without reporting (it panicked while
                // opening): collect its error.
                return match cells.shutdown() {
                    Ok(()) => Err(Error::CellGone { cell: CellId(0) }),
                    Err(e) => Err(e),
                };
            }
        }
    }
    cells.live.go.send_replace(true);
    Ok(cells)
}

/// The conventional design the cells are measured against (`--runtime
/// shared`): one multi-threaded, work-stealing tokio runtime with
/// `workers` threads runs the protocol servers on one listener per port;
/// the rate limiter and the metrics registry are process-wide behind
/// mutexes; tenant data is held by one owner thread (the storage engine of
/// a conventional server). The protocol code is the same as in cell mode,
/// and so are start-up (open everything, then serve) and failure handling.
pub fn start_shared<T, F>(spec: CellSpec, workers: usize, payload: T, serve: F) -> Result<Cells>
where
    T: Send + 'static,
    F: Fn(CellContext, T) -> Open + Send + Sync + 'static,
{
    // One cell: the owner thread and the server thread both answer as it.
    let id = CellId(0);
    let router = Arc::new(Router::new(1, []).map_err(|e| Error::CellStart {
        cell: id,
        reason: e.to_string(),
    })?);
    metrics::use_shared_registry();
    let limiter = Arc::new(std::sync::Mutex::new(RateLimiter::new(
        &spec.rate_limiting,
        1,
        Instant::now(),
    )));
    let (sender, inbox) = mpsc::channel::<Envelope>(spec.admission.bus_capacity);
    let inboxes: Arc<[mpsc::Sender<Envelope>]> = vec![sender].into();
    let handle = CellHandle::new(id, router.clone(), inboxes, Some(limiter));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Two seats: the owner thread and the server thread.
    let live = Liveness::new(2, stop_rx.clone());
    let (owner_ready, owner_open) = std::sync::mpsc::channel::<(CellId, Result<usize>)>();
    let (server_ready, server_open) = std::sync::mpsc::channel::<(CellId, Result<usize>)>();

    // The owner: the same owner task as a cell's, without limits of its own
    // (the shared limiter runs in the handlers) and without servers.
    let owner_spec = CellSpec {
        rate_limiting: RateLimitConfig {
            enabled: false,
            ..spec.rate_limiting.clone()
        },
        ..spec.clone()
    };
    let owner_ctx = CellContext {
        handle: handle.clone(),
        shutdown: Shutdown(stop_rx.clone()),
    };
    let owner_live = live.clone();
    let owner_router = router.clone();
    let owner = std::thread::Builder::new()
        .name("store-owner".into())
        .spawn(move || {
            let seat = Seat::new(id, owner_live);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(source) => {
                    let _ = owner_ready.send((id, Err(Error::Runtime { cell: id, source })));
                    return Ok(());
                }
            };
            let wait = Arc::new(|ctx: CellContext, (): ()| -> Open {
                Box::pin(async move { Ok(Box::pin(ctx.shutdown.wait()) as Serving) })
            });
            tokio::task::LocalSet::new().block_on(
                &rt,
                cell_main(
                    id,
                    owner_spec,
                    owner_router,
                    inbox,
                    owner_ctx,
                    (),
                    wait,
                    &seat,
                    owner_ready,
                ),
            )
        })
        .map_err(|source| Error::Runtime { cell: id, source })?;
    let mut threads = vec![(id, owner)];

    let server_ctx = CellContext {
        handle: handle.clone(),
        shutdown: Shutdown(stop_rx),
    };
    let server_live = live.clone();
    let server = std::thread::Builder::new()
        .name("shared-server".into())
        .spawn(move || {
            let seat = Seat::new(id, server_live);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .thread_stack_size(CELL_STACK_BYTES)
                .worker_threads(workers.max(1))
                .thread_name("shared-worker")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(source) => {
                    let _ = server_ready.send((id, Err(Error::Runtime { cell: id, source })));
                    return Ok(());
                }
            };
            let seat = &seat;
            // The accept loops run here; every connection is a task that
            // the work-stealing scheduler moves between worker threads.
            rt.block_on(async move {
                let serving = match serve(server_ctx, payload).await {
                    Ok(s) => s,
                    Err(source) => {
                        let _ = server_ready.send((id, Err(Error::CellOpen { cell: id, source })));
                        return;
                    }
                };
                let _ = server_ready.send((id, Ok(0)));
                drop(server_ready);
                if seat.live.may_serve().await {
                    serving.await;
                }
                seat.leave();
                seat.live.none_serving().await;
            });
            Ok(())
        })
        .map_err(|source| Error::Runtime { cell: id, source })?;
    threads.push((id, server));

    let cells = Cells {
        threads,
        stop: stop_tx,
        handle,
        live,
    };
    for (what, open) in [("owner", owner_open), ("servers", server_open)] {
        match open.recv() {
            Ok((_, Ok(orgs))) => tracing::info!(orgs_recovered = orgs, "shared-mode {what} open"),
            Ok((_, Err(e))) => {
                let _ = cells.shutdown();
                return Err(e);
            }
            Err(_) => {
                return match cells.shutdown() {
                    Ok(()) => Err(Error::CellGone { cell: id }),
                    Err(e) => Err(e),
                };
            }
        }
    }
    cells.live.go.send_replace(true);
    Ok(cells)
}

/// The error of an owner-side task (the owner or its housekeeping) that
/// ended while the cell was serving: they only end at shutdown.
fn task_ended(cell: CellId, result: std::result::Result<(), tokio::task::JoinError>) -> Error {
    match result {
        Err(e) if e.is_panic() => Error::CellPanicked {
            cell,
            message: panic_message(&*e.into_panic()),
        },
        _ => Error::CellStopped { cell },
    }
}

#[allow(clippy::too_many_arguments)]
async fn cell_main<T, F>(
    id: CellId,
    spec: CellSpec,
    router: Arc<Router>,
    inbox: mpsc::Receiver<Envelope>,
    ctx: CellContext,
    payload: T,
    serve: Arc<F>,
    seat: &Seat,
    ready: std::sync::mpsc::Sender<(CellId, Result<usize>)>,
) -> Result<()>
where
    F: Fn(CellContext, T) -> Open,
{
    // A failure to open is reported to `start`, which returns it; the
    // thread itself then ends quietly.
    let report = |source: OpenError| {
        let _ = ready.send((id, Err(Error::CellOpen { cell: id, source })));
        Ok(())
    };
    let store = match Store::open(
        &spec.data_dir,
        spec.storage.clone(),
        format!("cell-{}-io", id.0),
    ) {
        Ok(s) => s,
        Err(e) => return report(Box::new(e)),
    };
    let limiter = RateLimiter::new(&spec.rate_limiting, router.cells(), Instant::now());
    let owner = Rc::new(Owner::new(id, store, limiter, spec.admission.clone()));
    let (stop_tx, stop_rx) = oneshot::channel();
    let mut actor = tokio::task::spawn_local(owner.clone().run(inbox, stop_rx));
    let mut housekeeping =
        tokio::task::spawn_local(owner.clone().housekeeping(Duration::from_secs(1)));

    let orgs = match owner.open_owned(|org| router.owner(org) == id).await {
        Ok(n) => n,
        Err(e) => return report(Box::new(e)),
    };
    // The servers' services (control store, keys, ...), opened on this
    // cell's runtime.
    let serving = match serve(ctx, payload).await {
        Ok(s) => s,
        Err(source) => return report(source),
    };
    let _ = ready.send((id, Ok(orgs)));
    drop(ready);

    // Serve once every cell has opened, until shutdown; the servers drain
    // their connections on the way out. The owner's tasks end only after
    // serving: one ending before is this cell failing.
    if seat.live.may_serve().await {
        tokio::select! {
            () = serving => {}
            r = &mut actor => return Err(task_ended(id, r)),
            r = &mut housekeeping => return Err(task_ended(id, r)),
        }
    } else {
        drop(serving);
    }
    // Other cells may still be finishing requests that hop to this one: keep
    // the inbox running until no cell serves any more.
    seat.leave();
    seat.live.none_serving().await;
    let _ = stop_tx.send(());
    let _ = actor.await;
    housekeeping.abort();
    let _ = housekeeping.await;
    owner.flush_all().await;
    let owner = Rc::try_unwrap(owner).map_err(|_| Error::CellStart {
        cell: id,
        reason: "cell state still referenced at shutdown".into(),
    })?;
    owner.store.shutdown().await?;
    tracing::info!(cell = %id, "cell stopped; WAL flushed");
    Ok(())
}

impl Cells {
    /// A handle for use outside the cells (readiness checks, tests).
    pub fn handle(&self) -> &CellHandle {
        &self.handle
    }

    /// Resolves with the first cell that stopped serving before
    /// [`Self::shutdown`] was called: its thread panicked, its runtime or
    /// owner task ended, or its servers returned.
    pub async fn failed(&self) -> CellId {
        let mut failed = self.live.failed.subscribe();
        if let Ok(cell) = failed.wait_for(Option::is_some).await
            && let Some(cell) = *cell
        {
            return cell;
        }
        // Unreachable while `self` holds the sender.
        std::future::pending().await
    }

    /// Asks every cell to stop serving, drain and flush, and waits for them.
    pub fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        let mut first_err = None;
        for (id, t) in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(cell = %id, error = %e, "cell failed");
                    first_err.get_or_insert(e);
                }
                Err(payload) => {
                    first_err.get_or_insert(Error::CellPanicked {
                        cell: id,
                        message: panic_message(&*payload),
                    });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
