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

/// A socket bound to `addr`, not yet listening. A port another process
/// holds is refused with the address (and that process's pid when it can be
/// found) in the message.
fn bind_socket(key: &str, addr: SocketAddr, reuse_port: bool) -> anyhow::Result<Socket> {
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
    if let Err(e) = socket.bind(&addr.into()) {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::bail!(
                "{key}: {addr} is already in use{}; stop that server or set {key} to a free address",
                holder_text(addr)
            );
        }
        return Err(e).with_context(|| format!("{key}: cannot bind {addr}"));
    }
    Ok(socket)
}

fn listen(key: &str, socket: Socket) -> anyhow::Result<TcpListener> {
    socket
        .listen(1024)
        .with_context(|| format!("{key}: cannot listen"))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Binds `n` listeners on one address sharing the port (SO_REUSEPORT); port
/// 0 is resolved by the first bind so that all cells share the same port.
///
/// SO_REUSEPORT would also let another process of the same user join the
/// port and silently take a share of its connections, so the server makes
/// sure it is alone on the port, race-free, in two checks against the
/// kernel's table of listening sockets (`/proc/net/tcp{,6}`, sockets of this
/// process excluded):
///
/// 1. after the first socket is bound and before anything listens: a server
///    already running is found here, and this one exits without ever having
///    been handed one of its connections (a bound socket joins the port's
///    group only when it listens);
/// 2. after every socket listens ([`bind`] calls [`refuse_if_shared`]): of
///    two servers starting at once, each listens before it checks, so the
///    one that checks second sees the first and exits. At worst both exit;
///    never do two serve one port.
///
/// Port 0 cannot be shared: the kernel never picks a port that has
/// listeners.
fn shared(key: &str, addr: SocketAddr, n: usize) -> anyhow::Result<(Vec<TcpListener>, u16)> {
    let first = bind_socket(key, addr, true)?;
    let port = first
        .local_addr()?
        .as_socket()
        .with_context(|| format!("{key}: bound to a non-IP address"))?
        .port();
    let addr = SocketAddr::new(addr.ip(), port);
    refuse_if_shared(key, addr)?;
    let mut out = vec![listen(key, first)?];
    for _ in 1..n {
        out.push(listen(key, bind_socket(key, addr, true)?)?);
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
        // Without SO_REUSEPORT: no other process can bind it while we do.
        let flight_cell = listen(
            "flight_cell_base_port",
            bind_socket(
                "flight_cell_base_port",
                SocketAddr::new(flight_addr.ip(), port),
                false,
            )?,
        )?;
        flight_cell_ports.push(flight_cell.local_addr()?.port());
        per_cell.push(CellListeners {
            http,
            flight_shared,
            flight_cell,
        });
    }
    // The second check of `shared`, now that every socket listens.
    refuse_if_shared("http", SocketAddr::new(http_addr.ip(), http_port))?;
    refuse_if_shared("flight", SocketAddr::new(flight_addr.ip(), flight_port))?;
    Ok(Bound {
        per_cell,
        http_port,
        flight_port,
        flight_cell_ports,
    })
}

/// Fails when a process other than this one listens on `addr` (an
/// overlapping address on the same port).
fn refuse_if_shared(key: &str, addr: SocketAddr) -> anyhow::Result<()> {
    match ports::other_listener(addr) {
        Ok(None) => Ok(()),
        Ok(Some(pid)) => anyhow::bail!(
            "{key}: {addr} is already served by another process{}; with SO_REUSEPORT both would take its connections, so this one refuses to start: stop the other server or set {key} to a free address",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot check whether another process serves {key}; not checked");
            Ok(())
        }
    }
}

/// " by pid N" (or " by this server") for the message of a port in use,
/// when the listening process can be found.
fn holder_text(addr: SocketAddr) -> String {
    match ports::any_listener(addr) {
        Some(Some(pid)) if pid == std::process::id() => " by this server (two keys name it)".into(),
        Some(Some(pid)) => format!(" by pid {pid}"),
        _ => String::new(),
    }
}

/// Who listens on a TCP port: Linux's `/proc/net/tcp{,6}` and `/proc/*/fd`.
#[cfg(target_os = "linux")]
mod ports {
    use std::collections::HashSet;
    use std::io;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    /// A listening socket from `/proc/net/tcp{,6}`.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Listener {
        pub addr: SocketAddr,
        pub inode: u64,
    }

    /// A listener of another process on an address overlapping `addr`:
    /// `Some(pid)`, the pid when it can be found.
    pub(super) fn other_listener(addr: SocketAddr) -> io::Result<Option<Option<u32>>> {
        let own = own_sockets()?;
        Ok(listeners()?
            .into_iter()
            .find(|l| overlaps(l.addr, addr) && !own.contains(&l.inode))
            .map(|l| pid_of(l.inode)))
    }

    /// Any listener on an address overlapping `addr`, ours included.
    pub(super) fn any_listener(addr: SocketAddr) -> Option<Option<u32>> {
        listeners()
            .ok()?
            .into_iter()
            .find(|l| overlaps(l.addr, addr))
            .map(|l| pid_of(l.inode))
    }

    /// Whether a listener on `a` takes connections meant for `b`: the same
    /// port, and the same address or either one a wildcard.
    pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
        let ip = |a: SocketAddr| match a.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let (x, y) = (ip(a), ip(b));
        a.port() == b.port() && (x == y || x.is_unspecified() || y.is_unspecified())
    }

    fn listeners() -> io::Result<Vec<Listener>> {
        let mut out = parse(&std::fs::read_to_string("/proc/net/tcp")?);
        // No IPv6 in this kernel: no tcp6 table.
        if let Ok(text) = std::fs::read_to_string("/proc/net/tcp6") {
            out.extend(parse(&text));
        }
        Ok(out)
    }

    /// The LISTEN (state 0A) rows of a `/proc/net/tcp` or `tcp6` table:
    /// `sl local_address rem_address st ... uid timeout inode ...`, the
    /// address as hex words of the kernel's native byte order, the port in
    /// hex.
    pub(super) fn parse(text: &str) -> Vec<Listener> {
        text.lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.get(3) != Some(&"0A") {
                    return None;
                }
                let (ip, port) = fields.get(1)?.split_once(':')?;
                let port = u16::from_str_radix(port, 16).ok()?;
                let inode = fields.get(9)?.parse().ok()?;
                let mut bytes = Vec::with_capacity(16);
                for word in ip.as_bytes().chunks(8) {
                    let word = std::str::from_utf8(word).ok()?;
                    bytes.extend(u32::from_str_radix(word, 16).ok()?.to_ne_bytes());
                }
                let ip = match bytes.len() {
                    4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
                    16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
                    _ => return None,
                };
                Some(Listener {
                    addr: SocketAddr::new(ip, port),
                    inode,
                })
            })
            .collect()
    }

    /// The inode of a `socket:[N]` descriptor link.
    fn socket_inode(link: &std::path::Path) -> Option<u64> {
        let link = std::fs::read_link(link).ok()?;
        link.to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    }

    /// The inodes of this process's sockets.
    fn own_sockets() -> io::Result<HashSet<u64>> {
        Ok(std::fs::read_dir("/proc/self/fd")?
            .filter_map(|e| socket_inode(&e.ok()?.path()))
            .collect())
    }

    /// The process holding socket `inode`, among those we may look into.
    fn pid_of(inode: u64) -> Option<u32> {
        std::fs::read_dir("/proc").ok()?.find_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            std::fs::read_dir(entry.path().join("fd"))
                .ok()?
                .filter_map(Result::ok)
                .any(|fd| socket_inode(&fd.path()) == Some(inode))
                .then_some(pid)
        })
    }
}

/// Elsewhere the kernel's socket table is not read: no check.
#[cfg(not(target_os = "linux"))]
mod ports {
    use std::net::SocketAddr;

    pub(super) fn other_listener(_: SocketAddr) -> std::io::Result<Option<Option<u32>>> {
        Ok(None)
    }

    pub(super) fn any_listener(_: SocketAddr) -> Option<Option<u32>> {
        None
    }
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

    #[cfg(target_os = "linux")]
    #[test]
    fn listening_sockets_are_read_from_proc_net_tcp() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5119 1 0000000083acfe2c 100 0 0 10 0\n   1: 0100007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000083acfe2c 100 0 0 10 0\n";
        let got = ports::parse(v4);
        assert_eq!(
            got,
            vec![ports::Listener {
                addr: "127.0.0.1:8000".parse().expect("addr"),
                inode: 5119
            }],
            "the LISTEN row only"
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000001000000:22B8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 42 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(
            ports::parse(v6)[0].addr,
            "[::1]:8888".parse::<SocketAddr>().expect("addr")
        );
        let at = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(ports::overlaps(at("0.0.0.0:80"), at("127.0.0.1:80")));
        assert!(ports::overlaps(at("[::]:80"), at("127.0.0.1:80")));
        assert!(ports::overlaps(
            at("[::ffff:127.0.0.1]:80"),
            at("127.0.0.1:80")
        ));
        assert!(!ports::overlaps(at("127.0.0.1:80"), at("127.0.0.2:80")));
        assert!(!ports::overlaps(at("127.0.0.1:80"), at("127.0.0.1:81")));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_second_listener_on_a_shared_port_is_found() {
        // The end-to-end tests start a second process; here, our own
        // listeners must not count as another's.
        let (listeners, port) =
            shared("http", "127.0.0.1:0".parse().expect("addr"), 2).expect("bind port 0");
        assert_eq!(listeners.len(), 2);
        let addr = SocketAddr::new([127, 0, 0, 1].into(), port);
        assert_eq!(
            ports::other_listener(addr).expect("read /proc"),
            None,
            "our own sockets are not another process's"
        );
        assert_eq!(
            ports::any_listener(addr),
            Some(Some(std::process::id())),
            "but they are listeners, found with our pid"
        );
    }

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
