//! Starting and stopping the cells: one pinned OS thread per cell, each with
//! its own current-thread tokio runtime and `LocalSet`.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use honeycell_router::Router;
use honeycell_storage::{StorageConfig, Store};
use honeycell_types::CellId;
use tokio::sync::{Barrier, mpsc, oneshot, watch};

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

/// The running cells.
pub struct Cells {
    threads: Vec<(CellId, JoinHandle<Result<()>>)>,
    stop: watch::Sender<bool>,
    handle: CellHandle,
}

impl std::fmt::Debug for Cells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cells")
            .field("cells", &self.threads.len())
            .finish()
    }
}

/// Starts one cell per entry of `payloads` (the per-cell listeners, say) and
/// runs `serve` on each cell's thread. Returns once every cell has opened its
/// storage and recovered the orgs it owns, or with the first cell's error.
pub fn start<T, F>(spec: CellSpec, router: Router, payloads: Vec<T>, serve: F) -> Result<Cells>
where
    T: Send + 'static,
    F: Fn(CellContext, T) -> LocalBoxFuture<'static, ()> + Send + Sync + 'static,
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
    let barrier = Arc::new(Barrier::new(n));
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
        let barrier = barrier.clone();
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
                if let Some(core) = core
                    && !core_affinity::set_for_current(core)
                {
                    tracing::warn!(
                        cell = i,
                        core = core.id,
                        "could not pin cell to its core; running unpinned"
                    );
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name(format!("cell-{i}-blocking"))
                    .build()
                    .map_err(|source| Error::Runtime { cell: id, source })?;
                let local = tokio::task::LocalSet::new();
                local.block_on(
                    &rt,
                    cell_main(id, spec, router, inbox, ctx, payload, serve, barrier, ready),
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
    };
    for _ in 0..n {
        match ready_rx.recv() {
            Ok((id, Ok(orgs))) => tracing::info!(cell = %id, orgs_recovered = orgs, "cell ready"),
            Ok((_, Err(e))) => {
                let _ = cells.shutdown();
                return Err(e);
            }
            Err(_) => {
                // A cell thread ended without reporting: collect its error.
                return match cells.shutdown() {
                    Ok(()) => Err(Error::CellGone { cell: CellId(0) }),
                    Err(e) => Err(e),
                };
            }
        }
    }
    Ok(cells)
}

/// The conventional design the cells are measured against (`--runtime
/// shared`): one multi-threaded, work-stealing tokio runtime with
/// `workers` threads runs the protocol servers on one listener per port;
/// the rate limiter and the metrics registry are process-wide behind
/// mutexes; tenant data is held by one owner thread (the storage engine of
/// a conventional server). The protocol code is the same as in cell mode.
pub fn start_shared<T, F>(spec: CellSpec, workers: usize, payload: T, serve: F) -> Result<Cells>
where
    T: Send + 'static,
    F: Fn(CellContext, T) -> LocalBoxFuture<'static, ()> + Send + Sync + 'static,
{
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
    // The owner thread and the server thread meet here before the owner stops.
    let barrier = Arc::new(Barrier::new(2));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(CellId, Result<usize>)>();

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
    let owner_barrier = barrier.clone();
    let owner_router = router.clone();
    let owner = std::thread::Builder::new()
        .name("store-owner".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| Error::Runtime { cell: id, source })?;
            let wait = Arc::new(|ctx: CellContext, (): ()| -> LocalBoxFuture<'static, ()> {
                Box::pin(ctx.shutdown.wait())
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
                    owner_barrier,
                    ready_tx,
                ),
            )
        })
        .map_err(|source| Error::Runtime { cell: id, source })?;
    match ready_rx.recv() {
        Ok((_, Ok(orgs))) => tracing::info!(orgs_recovered = orgs, "shared-mode owner ready"),
        Ok((_, Err(e))) => {
            let _ = stop_tx.send(true);
            let _ = owner.join();
            return Err(e);
        }
        Err(_) => {
            return Err(match owner.join() {
                Ok(Err(e)) => e,
                _ => Error::CellGone { cell: id },
            });
        }
    }

    let server_ctx = CellContext {
        handle: handle.clone(),
        shutdown: Shutdown(stop_rx),
    };
    let server = std::thread::Builder::new()
        .name("shared-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .thread_stack_size(CELL_STACK_BYTES)
                .worker_threads(workers.max(1))
                .thread_name("shared-worker")
                .enable_all()
                .build()
                .map_err(|source| Error::Runtime { cell: id, source })?;
            // The accept loops run here; every connection is a task that
            // the work-stealing scheduler moves between worker threads.
            rt.block_on(async move {
                serve(server_ctx, payload).await;
                barrier.wait().await;
            });
            Ok(())
        })
        .map_err(|source| Error::Runtime { cell: id, source })?;
    Ok(Cells {
        threads: vec![(id, owner), (CellId(1), server)],
        stop: stop_tx,
        handle,
    })
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
    barrier: Arc<Barrier>,
    ready: std::sync::mpsc::Sender<(CellId, Result<usize>)>,
) -> Result<()>
where
    F: Fn(CellContext, T) -> LocalBoxFuture<'static, ()>,
{
    let store = match Store::open(
        &spec.data_dir,
        spec.storage.clone(),
        format!("cell-{}-io", id.0),
    ) {
        Ok(s) => s,
        Err(e) => {
            let e = Error::from(e);
            let _ = ready.send((
                id,
                Err(Error::CellStart {
                    cell: id,
                    reason: e.to_string(),
                }),
            ));
            return Err(e);
        }
    };
    let limiter = RateLimiter::new(&spec.rate_limiting, router.cells(), Instant::now());
    let owner = Rc::new(Owner::new(id, store, limiter, spec.admission.clone()));
    let (stop_tx, stop_rx) = oneshot::channel();
    let actor = tokio::task::spawn_local(owner.clone().run(inbox, stop_rx));
    let housekeeping = tokio::task::spawn_local(owner.clone().housekeeping(Duration::from_secs(1)));

    match owner.open_owned(|org| router.owner(org) == id).await {
        Ok(n) => {
            let _ = ready.send((id, Ok(n)));
        }
        Err(e) => {
            let _ = ready.send((
                id,
                Err(Error::CellStart {
                    cell: id,
                    reason: e.to_string(),
                }),
            ));
            return Err(e);
        }
    }

    // Serve until shutdown; the servers drain their connections on the way out.
    serve(ctx, payload).await;
    // Other cells may still be finishing requests that hop to this one: keep
    // the inbox running until every cell has stopped serving.
    barrier.wait().await;
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
                Err(_) => {
                    first_err.get_or_insert(Error::CellPanicked { cell: id });
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// True when a cell thread has ended (it should only end at shutdown).
    pub fn any_finished(&self) -> bool {
        self.threads.iter().any(|(_, t)| t.is_finished())
    }
}
