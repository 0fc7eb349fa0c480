//! Starting the real server (or pointing at a running one) and reading its
//! resource use from `/proc`.
//!
//! A launched server gets a fresh temporary data directory, port 0 for every
//! listener (the bound ports come back through `--ports-file`), its own
//! HS256 secret through `HONEYCELL_JWT_SECRET`, and no `HONEYCELL_*`
//! variable inherited from the bench's environment except those a scenario
//! passes. It is killed when dropped. With `--target` the bench drives a
//! server someone else started; it then cannot change its configuration or
//! read its memory, and the report says so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use honeycell_auth::{JwtConfig, Role, Signer};
use honeycell_types::OrgId;
use serde_json::Value;

/// The HS256 secret of servers the bench starts.
const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123456789";
/// How long a server may take to write its ports file and become ready.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The workspace root.
pub fn workspace() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// Where the bench gets its server from.
#[derive(Clone, Debug)]
pub enum Launcher {
    /// Start this binary for every server a scenario needs, with these
    /// extra `HONEYCELL_*` variables (`--server-env`, applied last).
    Binary {
        bin: PathBuf,
        extra: Vec<(String, String)>,
    },
    /// Use a running server: HTTP and Flight base URLs, and the HS256 secret
    /// it verifies tokens with.
    Target {
        http: String,
        flight: String,
        secret: String,
    },
}

impl Launcher {
    /// `--target http://127.0.0.1:8000,http://127.0.0.1:8815` (HTTP URL, then
    /// Flight URL; the secret comes from `HONEYCELL_JWT_SECRET`), else the
    /// binary (built with `cargo build --release` when missing and not given).
    pub fn new(
        target: Option<&str>,
        bin: Option<&Path>,
        extra: Vec<(String, String)>,
    ) -> anyhow::Result<Launcher> {
        if let Some(t) = target {
            let (http, flight) = t
                .split_once(',')
                .context("--target takes two URLs: HTTP,FLIGHT")?;
            for url in [http, flight] {
                let host = url
                    .trim_start_matches("http://")
                    .split(':')
                    .next()
                    .unwrap_or_default();
                if !matches!(host, "127.0.0.1" | "localhost" | "[") {
                    bail!("--target {url}: the bench only sends traffic to 127.0.0.1/localhost");
                }
            }
            let secret = std::env::var("HONEYCELL_JWT_SECRET").context(
                "--target needs HONEYCELL_JWT_SECRET (the server's HS256 secret) to mint tokens",
            )?;
            return Ok(Launcher::Target {
                http: http.trim_end_matches('/').to_owned(),
                flight: flight.trim_end_matches('/').to_owned(),
                secret,
            });
        }
        if let Some(b) = bin {
            return Ok(Launcher::Binary {
                bin: b.to_path_buf(),
                extra,
            });
        }
        let bin = workspace().join("target/release/honeycell");
        if !bin.exists() {
            eprintln!("building the release server (cargo build --release -p honeycell) …");
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "build",
                    "--release",
                    "-p",
                    "honeycell",
                    "--bin",
                    "honeycell",
                ])
                .current_dir(workspace())
                .status()
                .context("running cargo build")?;
            if !status.success() {
                bail!("building the release server failed");
            }
        }
        if let Some(newer) = newer_source_than(&bin) {
            eprintln!(
                "warning: {} is older than {}; rebuild it (cargo build --release -p honeycell) to bench the current code",
                bin.display(),
                newer.display()
            );
        }
        Ok(Launcher::Binary { bin, extra })
    }

    /// Where the server came from, for the report: the binary, its build
    /// time and the git commit of the work tree.
    pub fn provenance(&self) -> String {
        match self {
            Launcher::Target { http, .. } => format!("running server at {http} (`--target`)"),
            Launcher::Binary { bin, extra } => {
                let built = std::fs::metadata(bin)
                    .and_then(|m| m.modified())
                    .map(|t| {
                        chrono::DateTime::<chrono::Utc>::from(t)
                            .format("%Y-%m-%d %H:%M UTC")
                            .to_string()
                    })
                    .unwrap_or_else(|_| "unknown".into());
                let head = Command::new("git")
                    .args(["rev-parse", "--short", "HEAD"])
                    .current_dir(workspace())
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_default();
                let stale = newer_source_than(bin)
                    .map(|p| format!(" — **older than {}**", p.display()))
                    .unwrap_or_default();
                let env = if extra.is_empty() {
                    String::new()
                } else {
                    let kv: Vec<String> = extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("; extra server env: `{}`", kv.join(" "))
                };
                format!(
                    "`{}` built {built}{stale}; work tree at commit {head}{env}",
                    bin.display()
                )
            }
        }
    }

    pub fn is_target(&self) -> bool {
        matches!(self, Launcher::Target { .. })
    }

    /// A server with `cells` cells and extra `HONEYCELL_*` variables. Against
    /// a target, both are ignored (the caller notes it in the report).
    pub async fn start(&self, cells: usize, env: &[(&str, String)]) -> anyhow::Result<Server> {
        match self {
            Launcher::Target {
                http,
                flight,
                secret,
            } => {
                let jwt = JwtConfig {
                    secret: Some(secret.clone()),
                    ..JwtConfig::default()
                };
                Ok(Server {
                    child: None,
                    _dir: None,
                    http: http.clone(),
                    flight: flight.clone(),
                    signer: Signer::new(&jwt)?,
                })
            }
            Launcher::Binary { bin, extra } => {
                let mut all: Vec<(&str, String)> = env.to_vec();
                all.extend(extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
                spawn(bin, cells, &all, None).await
            }
        }
    }

    /// Starts a server that serves TLS (its `HONEYCELL_TLS__*` in `env`)
    /// with a certificate from the CA `ca_pem`; `--target` is refused.
    pub async fn start_tls(
        &self,
        cells: usize,
        env: &[(&str, String)],
        ca_pem: &str,
    ) -> anyhow::Result<Server> {
        match self {
            Launcher::Target { .. } => {
                bail!("this scenario configures TLS itself and cannot run against --target")
            }
            Launcher::Binary { bin, extra } => {
                let mut all: Vec<(&str, String)> = env.to_vec();
                all.extend(extra.iter().map(|(k, v)| (k.as_str(), v.clone())));
                spawn(bin, cells, &all, Some(ca_pem)).await
            }
        }
    }
}

/// A server source file newer than `bin`, if any (the crates the binary is
/// built from).
fn newer_source_than(bin: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let root = workspace();
    let mut stack: Vec<PathBuf> = [
        "types", "router", "storage", "auth", "control", "tls", "queue", "cell", "api", "flight",
        "server",
    ]
    .iter()
    .map(|c| root.join(c).join("src"))
    .collect();
    // Bounded walk: these trees hold tens of files.
    for _ in 0..10_000 {
        let dir = stack.pop()?;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
            {
                return Some(p);
            }
        }
    }
    None
}

/// A running server (killed on drop when the bench started it).
pub struct Server {
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    pub http: String,
    pub flight: String,
    signer: Signer,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn spawn(
    bin: &Path,
    cells: usize,
    env: &[(&str, String)],
    tls_ca: Option<&str>,
) -> anyhow::Result<Server> {
    let dir = tempfile::Builder::new()
        .prefix("honeycell-bench-")
        .tempdir()?;
    let ports = dir.path().join("ports.json");
    let log = std::fs::File::create(dir.path().join("server.log"))?;
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HONEYCELL_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["serve", "--http", "127.0.0.1:0", "--flight", "127.0.0.1:0"])
        .arg("--cells")
        .arg(cells.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--ports-file")
        .arg(&ports)
        .env("HONEYCELL_JWT_SECRET", SECRET)
        .env("HONEYCELL_RATE_LIMITING__ENABLED", "false")
        .env("HONEYCELL_LOG__LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let jwt = JwtConfig {
        secret: Some(SECRET.into()),
        ..JwtConfig::default()
    };
    let mut server = Server {
        child: Some(child),
        _dir: None,
        http: String::new(),
        flight: String::new(),
        signer: Signer::new(&jwt)?,
    };
    let deadline = Instant::now() + START_DEADLINE;
    let p: Value = loop {
        if let Ok(t) = std::fs::read_to_string(&ports)
            && let Ok(v) = serde_json::from_str(&t)
        {
            break v;
        }
        if let Some(c) = server.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            bail!("the server exited ({status}) before writing its ports; log:\n{log}");
        }
        if Instant::now() > deadline {
            bail!("the server did not write its ports file within {START_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let scheme = if tls_ca.is_some() { "https" } else { "http" };
    server.http = format!("{scheme}://127.0.0.1:{}", p["http"]);
    server.flight = format!("{scheme}://127.0.0.1:{}", p["flight"]);
    server._dir = Some(dir);
    let mut client = reqwest::Client::builder();
    if let Some(ca) = tls_ca {
        client = client.add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?);
    }
    let client = client.build()?;
    loop {
        if let Ok(r) = client
            .get(format!("{}/ready", server.http))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!("the server was not ready within {START_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Server {
    /// A token for `org` (admin role), valid for two hours.
    pub fn token(&self, org: &str) -> anyhow::Result<String> {
        self.token_for(org, "bench")
    }

    /// A token for `org` with subject `sub`.
    pub fn token_for(&self, org: &str, sub: &str) -> anyhow::Result<String> {
        self.token_as(org, sub, Role::Admin)
    }

    /// A token for `org` with subject `sub` and `role`, valid for two hours.
    pub fn token_as(&self, org: &str, sub: &str, role: Role) -> anyhow::Result<String> {
        Ok(self
            .signer
            .mint(&OrgId::new(org)?, sub, role, Duration::from_secs(7200))?)
    }

    /// The server's log so far (`HONEYCELL_LOG__LEVEL=warn`), when the bench
    /// started it.
    pub fn log(&self) -> Option<String> {
        let dir = self._dir.as_ref()?;
        std::fs::read_to_string(dir.path().join("server.log")).ok()
    }

    /// Whether the process the bench started is still running (not exited,
    /// not a zombie); None against `--target`.
    pub fn running(&self) -> Option<bool> {
        let pid = self.pid()?;
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return Some(false);
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        Some(!matches!(state, "Z" | "X" | "x"))
    }

    /// The server's process id, when the bench started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Peak resident memory (VmHWM) in bytes since start or the last
    /// [`Self::reset_peak`].
    pub fn peak_rss(&self) -> Option<u64> {
        self.pid().and_then(peak_rss_of)
    }

    /// Resets the kernel's peak-RSS mark to the current RSS, so the next
    /// [`Self::peak_rss`] is the peak of what follows.
    pub fn reset_peak(&self) {
        if let Some(pid) = self.pid() {
            reset_peak_of(pid);
        }
    }

    /// User + system CPU seconds the server has used.
    pub fn cpu_secs(&self) -> Option<f64> {
        self.pid().and_then(cpu_secs_of)
    }
}

/// VmHWM of a process, in bytes.
pub fn peak_rss_of(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM:").map(|kb| kb * 1024)
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Writing 5 to clear_refs resets VmHWM to the current RSS (Linux ≥ 4.0).
pub fn reset_peak_of(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// utime + stime of a process from /proc/<pid>/stat, in seconds.
pub fn cpu_secs_of(pid: u32) -> Option<f64> {
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

/// CPU seconds of each thread of a process, by thread name (`cell-0`, …).
pub fn thread_cpu_of(pid: u32) -> Vec<(String, f64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let p = e.path();
        let name = std::fs::read_to_string(p.join("comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if let Some(cpu) = stat_cpu_secs(&p.join("stat").to_string_lossy()) {
            out.push((name, cpu));
        }
    }
    out
}

fn stat_cpu_secs(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds (user + system) of the bench process itself (getrusage).
pub fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Resource use of a server over a phase: CPU seconds and peak RSS.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub wall: f64,
    pub server_cpu: Option<f64>,
    pub bench_cpu: f64,
    pub server_peak_rss: Option<u64>,
    /// Cores used by each server thread over the phase, busiest first.
    pub threads: Vec<(String, f64)>,
}

impl Usage {
    pub fn server_cores(&self) -> Option<f64> {
        self.server_cpu.map(|c| c / self.wall.max(1e-9))
    }
    pub fn bench_cores(&self) -> f64 {
        self.bench_cpu / self.wall.max(1e-9)
    }

    /// The busiest server threads, as "name 0.93, …".
    pub fn threads_note(&self, n: usize) -> String {
        if self.threads.is_empty() {
            return "n/a".into();
        }
        self.threads
            .iter()
            .take(n)
            .map(|(name, c)| format!("{name} {c:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The busiest `cell-N` thread (not its io thread) and its cores.
    pub fn busiest_cell(&self) -> Option<(String, f64)> {
        self.threads
            .iter()
            .filter(|(n, _)| n.starts_with("cell-") && !n.ends_with("-io"))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .cloned()
    }
}

/// Measures CPU and peak memory of the server and the bench over a phase.
pub struct Meter<'a> {
    server: &'a Server,
    started: Instant,
    server_cpu: Option<f64>,
    bench_cpu: f64,
    threads: Vec<(String, f64)>,
}

impl<'a> Meter<'a> {
    pub fn start(server: &'a Server) -> Self {
        server.reset_peak();
        Self {
            server,
            started: Instant::now(),
            server_cpu: server.cpu_secs(),
            bench_cpu: self_cpu_secs(),
            threads: server.pid().map(thread_cpu_of).unwrap_or_default(),
        }
    }

    pub fn stop(self) -> Usage {
        let wall = self.started.elapsed().as_secs_f64();
        let mut threads: Vec<(String, f64)> = self
            .server
            .pid()
            .map(thread_cpu_of)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, now)| {
                let before = self
                    .threads
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(0.0, |(_, c)| *c);
                (name, (now - before) / wall.max(1e-9))
            })
            .collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        Usage {
            wall,
            threads,
            server_cpu: match (self.server.cpu_secs(), self.server_cpu) {
                (Some(b), Some(a)) => Some(b - a),
                _ => None,
            },
            bench_cpu: self_cpu_secs() - self.bench_cpu,
            server_peak_rss: self.server.peak_rss(),
        }
    }
}

/// Megabytes, or "n/a".
pub fn mb(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".into(), |b| format!("{:.0}", b as f64 / 1e6))
}
