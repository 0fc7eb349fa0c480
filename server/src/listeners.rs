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
