//! Binding the shared ports with SO_REUSEPORT, and the per-cell Flight ports.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;

/// The listeners one cell serves.
pub struct CellListeners {
    pub http: TcpListener,
    pub flight_shared: TcpListener,
    pub flight_cell: TcpListener,
}

/// Everything bound, with the ports actually in use.
pub struct Bound {
    pub per_cell: Vec<CellListeners>,
    pub http_port: u16,
    pub flight_port: u16,
    pub flight_cell_ports: Vec<u16>,
}

fn listen(key: &str, addr: SocketAddr, reuse_port: bool) -> anyhow::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .with_context(|| format!("{key}: cannot create a socket"))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket
            .set_reuse_port(true)
            .with_context(|| format!("{key}: SO_REUSEPORT is not available"))?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into()).with_context(|| {
        format!("{key}: cannot bind {addr} (in use? set {key} to a free address)")
    })?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Binds `n` listeners on one address sharing the port; port 0 is resolved
/// by the first bind so that all cells share the same port.
fn shared(key: &str, addr: SocketAddr, n: usize) -> anyhow::Result<(Vec<TcpListener>, u16)> {
    let first = listen(key, addr, true)?;
    let port = first.local_addr()?.port();
    let mut out = vec![first];
    for _ in 1..n {
        out.push(listen(key, SocketAddr::new(addr.ip(), port), true)?);
    }
    Ok((out, port))
}

pub fn bind(config: &Config, cells: usize) -> anyhow::Result<Bound> {
    let http_addr = Config::addr("http", &config.http)?;
    let flight_addr = Config::addr("flight", &config.flight)?;
    let (http, http_port) = shared("http", http_addr, cells)?;
    let (flight, flight_port) = shared("flight", flight_addr, cells)?;
    let mut per_cell = Vec::with_capacity(cells);
    let mut flight_cell_ports = Vec::with_capacity(cells);
    for (i, (http, flight_shared)) in http.into_iter().zip(flight).enumerate() {
        let port = match (config.flight_cell_base_port, flight_port) {
            (Some(base), _) => base + i as u16,
            (None, _) if flight_addr.port() == 0 => 0,
            (None, p) => p + 1 + i as u16,
        };
        let flight_cell = listen(
            "flight_cell_base_port",
            SocketAddr::new(flight_addr.ip(), port),
            false,
        )?;
        flight_cell_ports.push(flight_cell.local_addr()?.port());
        per_cell.push(CellListeners {
            http,
            flight_shared,
            flight_cell,
        });
    }
    Ok(Bound {
        per_cell,
        http_port,
        flight_port,
        flight_cell_ports,
    })
}

/// Raises the soft limit on open descriptors to the hard limit (client
/// connections are descriptors; the default soft limit, often 1024, is far
/// below what a server needs). Returns the limit in force.
#[cfg(unix)]
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot read the descriptor limit (RLIMIT_NOFILE); assuming 1024");
        return 1024;
    }
    let old = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, soft = old, hard = limit.rlim_max, "cannot raise the descriptor limit (RLIMIT_NOFILE) to the hard limit");
        }
    }
    let now: u64 = limit.rlim_cur;
    tracing::info!(
        old = old,
        new = now,
        hard = limit.rlim_max,
        "descriptor limit (RLIMIT_NOFILE)"
    );
    now
}

#[cfg(not(unix))]
pub fn raise_descriptor_limit() -> u64 {
    8192
}

/// Descriptors kept out of the connections' budget for everything else:
/// WAL and segment files, the control-plane store, PostgreSQL and Redis
/// connections, the runtime's own.
fn descriptor_reserve(limit: u64) -> u64 {
    (limit / 4).clamp(128, 65_536)
}

/// `connections.max_per_cell`, lowered when needed so that `cells` cells'
/// connections (and what each holds beyond them) stay below the descriptor
/// `limit` minus a reserve: the server refuses connections cleanly rather
/// than running out of descriptors (`accept: Too many open files`).
pub fn connections_per_cell(configured: usize, limit: u64, cells: usize) -> anyhow::Result<usize> {
    let cells = cells.max(1) as u64;
    let reserve = descriptor_reserve(limit);
    let per_cell = limit.saturating_sub(reserve) / cells;
    let fits = per_cell.saturating_sub(honeycell_tls::conn::DESCRIPTORS_BEYOND_LIMIT as u64);
    if fits == 0 {
        anyhow::bail!(
            "connections.max_per_cell: the descriptor limit ({limit}, RLIMIT_NOFILE) leaves no room for client connections with {cells} cells; raise the hard limit (ulimit -Hn, LimitNOFILE=) or run fewer cells"
        );
    }
    let chosen = usize::try_from(fits).unwrap_or(usize::MAX).min(configured);
    if chosen < configured {
        tracing::warn!(
            configured,
            chosen,
            descriptors = limit,
            reserve,
            cells,
            "connections.max_per_cell lowered to fit the descriptor limit"
        );
    } else {
        tracing::info!(
            max_per_cell = chosen,
            descriptors = limit,
            cells,
            "connection limit per cell"
        );
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_fit_below_the_descriptor_limit() {
        // Plenty of descriptors: the configured value stands.
        assert_eq!(
            connections_per_cell(10_000, 1 << 20, 8).expect("fits"),
            10_000
        );
        // 1024 descriptors, 2 cells: (1024 - 256) / 2 - what a cell holds beyond.
        let beyond = honeycell_tls::conn::DESCRIPTORS_BEYOND_LIMIT;
        assert_eq!(
            connections_per_cell(10_000, 1024, 2).expect("fits"),
            384 - beyond
        );
        assert!(connections_per_cell(10_000, 130, 4).is_err());
    }
}
