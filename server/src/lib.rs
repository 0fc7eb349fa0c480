//! The `honeycell` server: configuration, listeners and the wiring of cells
//! to their protocol servers. `main.rs` only parses the command line and
//! calls [`run`]; tests and benches start the real binary.
//!
//! Start-up order: lock the data directory (one server per data dir, see
//! `lock.rs`), prepare the control-plane store and open the admin socket
//! (`admin_socket.rs`: `honeycell keys|orgs|audit` against this server,
//! without stopping it), bind every listener on the main thread (so that port 0
//! resolves once and every cell shares the same port through SO_REUSEPORT;
//! a port another process serves is refused), start the query pool, start
//! the cells (each opens its storage, recovers the orgs it owns and opens
//! its services; none serves until all have), write the ports file, then
//! wait for SIGTERM/SIGINT — or for a cell to fail.
//! Shutdown: every cell stops accepting, drains its connections, answers the
//! hops still in flight, flushes and fsyncs its WAL, and the process exits 0
//! (1 when it stopped because a cell failed while serving, [`CellFailed`]).

pub mod admin;
mod admin_socket;
pub mod config;
mod fault;
mod listeners;
pub mod lock;

use std::sync::Arc;

use anyhow::Context as _;
use honeycell_api::ApiState;
use honeycell_auth::Verifier;
use honeycell_cell::{CellContext, CellSpec};
use honeycell_control::{AuditSink, Authenticator, KeyRingReload, OAuth, TokenService};
use honeycell_flight::{FlightState, HoneycellFlight};
use honeycell_router::Router;
use honeycell_types::{CellId, OrgId};

pub use config::Config;
use listeners::CellListeners;

/// Sets up `tracing` from `[log]` (RUST_LOG wins). Colours only on a
/// terminal: a file or the journal gets plain lines (and so does a terminal
/// when `NO_COLOR` is set).
pub fn init_logging(config: &config::LogConfig) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.level));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_thread_names(true)
        .with_writer(std::io::stderr);
    let _ = if config.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    quiet_caught_decode_panics();
}

/// Seconds between two log lines about caught decoder panics.
const DECODE_PANIC_LOG_SECS: u64 = 10;

/// Installs a panic hook that reports a panic inside a guarded decode of
/// outside bytes (a client's Arrow IPC, a damaged segment at recovery:
/// caught, answered as a refusal or a corrupt file) as one warning per
/// `DECODE_PANIC_LOG_SECS` with a count of the ones not logged, instead of
/// the default hook's message on stderr for each — which a client could
/// otherwise repeat at will. Every other panic goes to the default hook,
/// message and all.
fn quiet_caught_decode_panics() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_LOGGED: AtomicU64 = AtomicU64::new(0);
    static NOT_LOGGED: AtomicU64 = AtomicU64::new(0);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !honeycell_storage::decoding_untrusted() {
            default(info);
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = LAST_LOGGED.load(Ordering::Relaxed);
        if now < last.saturating_add(DECODE_PANIC_LOG_SECS)
            || LAST_LOGGED
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            NOT_LOGGED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::warn!(
            panic = %message.chars().take(200).collect::<String>(),
            at = %info.location().map(|l| l.to_string()).unwrap_or_default(),
            not_logged_since_last = NOT_LOGGED.swap(0, Ordering::Relaxed),
            "arrow panicked decoding malformed input; caught, and answered as a refusal or a corrupt file"
        );
    }));
}

/// The error of a server that stopped because a cell failed while serving
/// (after the other cells drained); the binary exits with status 1 for it,
/// 2 for a server that could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "{cell} failed while serving; the other cells drained and the server stopped (a supervisor should restart it)"
)]
pub struct CellFailed {
    pub cell: CellId,
}

/// Runs the server until `stop` resolves (the binary passes a future of
/// SIGTERM/SIGINT) or a cell fails ([`CellFailed`]).
pub fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data_dir: cannot create {}", config.data_dir.display()))?;
    // Held until this function returns: nothing else may open the data dir.
    let _lock = lock::DataDirLock::acquire(&config.data_dir)?;
    let fault = fault::from_env()?;
    let cells = config.cell_count();
    let (jwt, dev_key) = config.jwt_effective()?;
    if dev_key {
        tracing::warn!(
            "no JWT key configured: using the development secret in {}; set HONEYCELL_JWT_SECRET or [jwt] in production",
            config.data_dir.join("jwt-dev-secret").display()
        );
    }
    let verifier = Verifier::new(&jwt).context("jwt")?;
    let tls = honeycell_tls::Tls::load(&config.tls)?;

    // The main thread's runtime: it prepares the control-plane store (and
    // applies migrations) before any cell starts, then waits for `stop`.
    let waiter = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the main runtime")?;
    let opener = waiter
        .block_on(async {
            let (opener, store) = config.control.prepare(&config.data_dir).await?;
            drop(store);
            Ok::<_, honeycell_control::Error>(opener)
        })
        .context("control plane store")?;
    tracing::info!(backend = opener.backend(), "control plane store ready");
    let key_ttl = config.control.api_key_cache_ttl()?;
    let flush_every = config.control.last_used_flush()?;
    // One budget per process for failed authentications and sign-in
    // starts, whichever cell a connection lands on: made here, shared by
    // every cell (see control/src/budget.rs for why not per cell).
    let brute_force = Arc::new(honeycell_control::BruteForceBudgets::new(
        config.control.brute_force()?,
    ));
    let oauth_starts = Arc::new(config.oauth.start_budgets());
    let (access_ttl, refresh_ttl) = config.control.token_ttls()?;
    let key_reload = config.control.signing_key_reload()?;
    // Fired by the admin socket when the signing keys change.
    let key_ring_reload = KeyRingReload::default();
    let tiers = Arc::new(config.control.tiers());
    // Before any thread that may create files starts: it binds under a
    // umask of its own.
    let admin = admin_socket::AdminSocket::start(
        &config.data_dir,
        opener.clone(),
        admin::Settings::of(&config, Some(key_ring_reload.clone()))?,
    );
    let oauth_config = Arc::new(config.oauth.clone());
    let redis_config = config.redis();
    if let Some(r) = &redis_config {
        // Reads the CA file now, so a bad path stops the start.
        honeycell_queue::Redis::new(r).context("redis")?;
    }

    let shared = config.runtime == config::RuntimeMode::Shared;
    // Shared mode: one listener per port, served by the work-stealing pool.
    let bound = listeners::bind(&config, if shared { 1 } else { cells })?;
    // Client connections are descriptors: the soft limit goes up to the hard
    // one, and each cell's connection limit down to what fits below it.
    let descriptors = listeners::raise_descriptor_limit();
    let max_connections = listeners::connections_per_cell(
        config.connections.max_per_cell,
        descriptors,
        bound.per_cell.len(),
    )?;
    let connections_config = config.connections.clone();
    let host = config.advertised_host()?;
    let locations: Arc<[String]> = bound
        .flight_cell_ports
        .iter()
        .map(|p| {
            let scheme = if tls.is_some() {
                "grpc+tls"
            } else {
                "grpc+tcp"
            };
            format!("{scheme}://{host}:{p}")
        })
        .collect();

    let query_pool = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.query_workers)
        .thread_name("query-worker")
        // DataFusion grows its stack where it recurses (recursive_protection);
        // the rest of a plan's depth is bounded by the SQL text's size.
        .thread_stack_size(32 * 1024 * 1024)
        // Queries yield to the cells for the CPU: a heavy query may take the
        // cores the cells leave idle, never the time their requests need.
        .on_thread_start(lower_priority)
        .enable_all()
        .build()
        .context("cannot start the query pool")?;

    let overrides = config
        .router
        .overrides
        .iter()
        .map(|(o, c)| Ok((OrgId::new(o.clone())?, *c)))
        .collect::<Result<Vec<_>, honeycell_types::Error>>()
        .context("router.overrides")?;
    let router = Router::new(cells as u32, overrides).context("router")?;
    let spec = CellSpec {
        data_dir: config.data_dir.clone(),
        storage: config.storage.clone(),
        rate_limiting: config.rate_limiting.clone(),
        admission: config.admission.clone(),
        pin_cores: config.pin_cores,
    };
    let http_config = Arc::new(config.http_limits.clone());
    let query_engine =
        honeycell_flight::QueryEngine::new(config.flight_sql.clone(), query_pool.handle().clone());
    let max_append_rows = config.http_limits.max_batch_events.max(65_536);
    let cell_tls = tls.clone();
    let data_dir = config.data_dir.clone();

    let serve = move |ctx: CellContext, listeners: CellListeners| -> honeycell_cell::Open {
        let verifier = verifier.clone();
        let opener = opener.clone();
        let jwt = jwt.clone();
        let tiers = tiers.clone();
        let http_config = http_config.clone();
        let locations = locations.clone();
        let engine = query_engine.clone();
        let tls = cell_tls.clone();
        let connections_config = connections_config.clone();
        let oauth_config = oauth_config.clone();
        let oauth_starts = oauth_starts.clone();
        let brute_force = brute_force.clone();
        let redis_config = redis_config.clone();
        let data_dir = data_dir.clone();
        let key_ring_reload = key_ring_reload.clone();
        let open = async move {
            let cell = ctx.handle.id();
            // Opening: any failure here stops the whole start (the error
            // names the cell and the service).
            fault::check_open(fault, cell)?;
            // Each cell its own store handle: with PostgreSQL, its own pool,
            // connected from (and driven by) this cell's runtime.
            let control = opener
                .open()
                .await
                .context("cannot open the control plane store")?;
            let (audit, audit_writer) = AuditSink::spawn(control.clone());
            let tokens = TokenService::load(
                control.clone(),
                jwt.clone(),
                access_ttl,
                refresh_ttl,
                key_reload,
                key_ring_reload,
            )
            .await
            .context("cannot load the signing keys")?;
            let oauth = if oauth_config.providers.is_empty() {
                None
            } else {
                Some(
                    OAuth::new(
                        &oauth_config,
                        control.clone(),
                        tokens.clone(),
                        audit.clone(),
                        oauth_starts,
                    )
                    .context("cannot set up OAuth sign-in")?,
                )
            };
            // Each cell its own Redis connection (made on first use).
            let redis = redis_config
                .as_ref()
                .map(honeycell_queue::Redis::new)
                .transpose()
                .context("cannot set up Redis")?;
            let auth = Authenticator::new(
                verifier,
                Some(tokens),
                control,
                audit.clone(),
                key_ttl,
                brute_force,
                tiers.clone(),
            );
            let api = ApiState::new(ctx.handle.clone(), auth.clone(), http_config, audit)
                .with_oauth(oauth)
                .with_redis(redis);
            let flight_state = FlightState {
                cells: ctx.handle.clone(),
                auth: auth.clone(),
                audit: api.audit.clone(),
                locations,
                engine,
                max_append_rows,
            };
            let flight =
                HoneycellFlight::new(flight_state).context("cannot build the Flight service")?;
            let serving: honeycell_cell::Serving = Box::pin(async move {
                // The cell's three listeners share one accept layer, and so
                // its connection limit; its counts go to the cell's metrics.
                let connections = honeycell_tls::conn::Connections::new(
                    connections_config,
                    max_connections,
                    tls,
                    Some(Box::new(|counts: honeycell_tls::conn::Counts| {
                        honeycell_cell::metrics::with(|m| {
                            m.connections_open = counts.open as u64;
                            m.connections_refused = counts.refused;
                        });
                    })),
                );
                let http = honeycell_api::serve(
                    listeners.http,
                    connections.clone(),
                    api,
                    ctx.shutdown.clone(),
                );
                let flight = honeycell_flight::serve(
                    vec![listeners.flight_shared, listeners.flight_cell],
                    connections,
                    flight,
                    ctx.shutdown.clone(),
                );
                // API keys' last-use times, written in one batch per interval.
                let flusher = {
                    let auth = auth.clone();
                    let stop = ctx.shutdown.clone().wait();
                    async move {
                        tokio::pin!(stop);
                        let mut tick = tokio::time::interval(flush_every);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tokio::select! {
                                _ = tick.tick() => {}
                                () = &mut stop => break,
                            }
                            if let Err(e) = auth.flush_last_used().await {
                                tracing::warn!(%cell, error = %e, "cannot record API key use");
                            }
                        }
                        let _ = auth.flush_last_used().await;
                    }
                };
                let servers = async { futures::join!(http, flight, flusher) };
                let (h, f, ()) = tokio::select! {
                    r = servers => r,
                    never = fault::panic_when_triggered(fault, cell, data_dir) => match never {},
                };
                drop(auth);
                // The sinks went with the servers: the writer ends once it has
                // written what was queued.
                if let Err(e) = audit_writer.await {
                    tracing::error!(%cell, error = %e, "audit writer failed");
                }
                if let Err(e) = h {
                    tracing::error!(%cell, error = %e, "HTTP server failed");
                }
                if let Err(e) = f {
                    tracing::error!(%cell, error = %e, "Flight server failed");
                }
            });
            anyhow::Ok(serving)
        };
        Box::pin(async move { open.await.map_err(honeycell_cell::OpenError::from) })
    };

    let running = if shared {
        let listeners = bound
            .per_cell
            .into_iter()
            .next()
            .context("no listeners bound")?;
        honeycell_cell::start_shared(spec, cells, listeners, serve)
    } else {
        honeycell_cell::start(spec, router, bound.per_cell, serve)
    }
    .context("cannot start the cells")?;
    if let Some(path) = &config.ports_file {
        let ports = serde_json::json!({
            "http": bound.http_port,
            "flight": bound.flight_port,
            "flight_cells": bound.flight_cell_ports,
            "cells": cells,
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ports.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("ports_file: cannot write {}", path.display()))?;
    }
    tracing::info!(
        cells,
        runtime = ?config.runtime,
        http = bound.http_port,
        flight = bound.flight_port,
        tls = tls.is_some(),
        flight_client_certs = tls.as_ref().is_some_and(|t| t.flight_client_auth()),
        flight_cells = ?bound.flight_cell_ports,
        data_dir = %config.data_dir.display(),
        "honeycell serving"
    );

    // Wait for the stop signal on this (main) thread, which meanwhile
    // reloads the TLS files when they change, or for a cell to stop on its
    // own: then the others stop too, rather than leave a process that
    // answers with some cells dead.
    let failed = waiter.block_on(async {
        let reload = async {
            match tls.clone() {
                Some(tls) => tls.watch().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop => None,
            () = reload => None,
            cell = running.failed() => Some(cell),
        }
    });
    match failed {
        None => tracing::info!("stopping: draining connections and flushing the WAL"),
        Some(cell) => tracing::error!(
            %cell,
            "a cell stopped serving: stopping the others (draining connections, flushing the WAL), then exiting with status 1"
        ),
    }
    // Admin commands stop first: none runs against a draining server.
    drop(admin);
    let result = running.shutdown();
    query_pool.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Some(cell) = failed {
        let cause = match result {
            Err(e) => anyhow::Error::new(e),
            Ok(()) => anyhow::Error::new(honeycell_cell::Error::CellStopped { cell }),
        };
        return Err(cause.context(CellFailed { cell }));
    }
    result?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Gives the calling thread the lowest scheduling priority short of idle
/// (nice 10 above the process's), so that query workers run when cells do
/// not need the CPU. On Linux the nice value is per thread.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SCHED_IDLE: the thread runs only on a core no normal thread wants,
        // and a cell thread that wakes preempts it at once (nice levels only
        // share the CPU by weight, so a heavy query still delayed the cells'
        // requests by milliseconds). Any thread may lower itself to it.
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain system calls on the calling thread (pid 0 = the
        // caller); `param` outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc == 0 {
            return;
        }
        let idle_error = std::io::Error::last_os_error();
        // SAFETY: as above.
        let rc = unsafe {
            libc::setpriority(
                libc::PRIO_PROCESS,
                libc::gettid() as libc::id_t,
                libc::getpriority(libc::PRIO_PROCESS, 0) + 10,
            )
        };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), %idle_error, "cannot lower a query worker's priority");
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
