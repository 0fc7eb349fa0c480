//! End-to-end test harness for Honeycell: starts the real `honeycell` binary
//! and talks to it over HTTP, GraphQL, Arrow Flight and Flight SQL.
//!
//! [`TestServer`] spawns the binary on port 0 with a fresh data directory,
//! reads the bound ports back from `--ports-file`, polls `/ready` with a
//! deadline, and kills the process when dropped (printing the server's log
//! if the test panicked); [`ServerBuilder::start_expecting_exit`] runs one
//! that must refuse to start. Nothing here sleeps before first use or picks
//! a fixed port. Each server gets its own random HS256 secret through
//! `HONEYCELL_JWT_SECRET`, so tokens can be minted in-process with
//! [`honeycell_auth::Signer`] or through `honeycell token` alike.
//!
//! The binary is `$HONEYCELL_BIN`, else `<target>/debug/honeycell`; when that
//! is missing it is built once (under a file lock, so parallel test
//! processes do not race). The harness does not rebuild a stale binary: run
//! `cargo build -p honeycell` before the suite.
//!
//! Deliberately not here: assertions about the server's behaviour (they live
//! in `tests/*.rs`, one file per theme). Read `tests/protocols.rs` first.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt as _};
use arrow_flight::{FlightClient, FlightDescriptor, FlightInfo, PutResult, Ticket};
use futures::TryStreamExt as _;
use honeycell_auth::{JwtConfig, Role, Signer};
use honeycell_router::Router;
use honeycell_types::OrgId;
use prost::Message as _;
use serde_json::{Value, json};
use tonic::transport::Channel;

pub mod oidc;
pub mod pg;
pub mod redis;
pub mod tls;

pub use pg::TestPostgres;
pub use redis::TestRedis;
pub use tls::{TestCa, TlsClient};

/// A port that was free on 127.0.0.1 a moment ago (for services, such as
/// PostgreSQL, that cannot report a port-0 binding back).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// How long a server may take to write its ports file and become ready.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a SIGTERMed server may take to drain and exit.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// The test-only key files of `honeycell-auth`.
pub fn auth_fixture(name: &str) -> PathBuf {
    workspace_root().join("auth/tests/fixtures").join(name)
}

/// The `honeycell` binary, built once if it is missing.
pub fn honeycell_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("HONEYCELL_BIN") {
            return PathBuf::from(p);
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let bin = target.join("debug").join("honeycell");
        if bin.exists() {
            return bin;
        }
        std::fs::create_dir_all(&target).expect("create the target directory");
        let lock = std::fs::File::create(target.join(".honeycell-tests-build.lock"))
            .expect("create the build lock file");
        // SAFETY: flock on a file descriptor we own; released when `lock` drops.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "flock the build lock: {}",
            std::io::Error::last_os_error()
        );
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "honeycell", "--bin", "honeycell"])
                .current_dir(workspace_root())
                .status()
                .expect("run cargo build -p honeycell");
            assert!(
                status.success(),
                "cargo build -p honeycell failed: {status}"
            );
        }
        drop(lock);
        bin
    })
    .clone()
}

/// The decoded header of a JWT (`alg`, `kid`, …).
pub fn jwt_header(token: &str) -> Value {
    use base64::Engine as _;
    let h = token.split('.').next().expect("header");
    let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .expect("base64url");
    serde_json::from_slice(&h).expect("JSON header")
}

/// A `Command` for the binary with no `HONEYCELL_*` variable inherited from
/// the environment of the test run.
pub fn honeycell_command() -> Command {
    let mut cmd = Command::new(honeycell_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HONEYCELL_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// The ports a running server bound, as written to its ports file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports {
    pub http: u16,
    pub flight: u16,
    pub flight_cells: Vec<u16>,
    pub cells: usize,
}

/// How a server verifies tokens.
#[derive(Clone, Debug)]
enum Keys {
    /// HS256 with this secret, passed as `HONEYCELL_JWT_SECRET`.
    Hs256(String),
    /// RS256 with the fixture key pair; the server holds only the public key.
    Rs256,
}

/// Options of a [`TestServer`].
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    cells: usize,
    env: Vec<(String, String)>,
    args: Vec<String>,
    toml: String,
    keys: Keys,
    tls: Option<TlsClient>,
    http_addr: String,
    flight_addr: String,
    data_dir: Option<PathBuf>,
    nofile: Option<u64>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            cells: 2,
            env: Vec::new(),
            args: Vec::new(),
            toml: String::new(),
            keys: Keys::Hs256(random_secret()),
            tls: None,
            http_addr: "127.0.0.1:0".into(),
            flight_addr: "127.0.0.1:0".into(),
            data_dir: None,
            nofile: None,
        }
    }
}

/// 64 random hex characters.
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl ServerBuilder {
    /// Number of cells (default 2).
    pub fn cells(mut self, n: usize) -> Self {
        self.cells = n;
        self
    }

    /// An extra environment variable, e.g. `HONEYCELL_RATE_LIMITING__ORG_MAX_QPS`.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// An extra flag of `honeycell serve`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Extra TOML appended to the generated config file.
    pub fn toml(mut self, text: &str) -> Self {
        self.toml.push_str(text);
        self.toml.push('\n');
        self
    }

    /// Verify RS256 tokens with the fixture public key (no HS256 secret).
    pub fn rs256(mut self) -> Self {
        self.keys = Keys::Rs256;
        self
    }

    /// Keep the control plane in PostgreSQL at `url` (instead of the
    /// embedded store).
    pub fn postgres(self, url: &str) -> Self {
        self.env("HONEYCELL_CONTROL__STORE", "postgres")
            .env("HONEYCELL_CONTROL__POSTGRES_URL", url)
    }

    /// Serve HTTP on this port (default: any free one), for settings that
    /// must name the server's URL before it starts (OAuth redirect URIs).
    pub fn http_port(mut self, port: u16) -> Self {
        self.http_addr = format!("127.0.0.1:{port}");
        self
    }

    /// Serve Flight on this port (default: any free one).
    pub fn flight_port(mut self, port: u16) -> Self {
        self.flight_addr = format!("127.0.0.1:{port}");
        self
    }

    /// Use this data directory (default: `data` in the server's own
    /// temporary directory), e.g. another server's.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// The server speaks TLS (its `[tls]` is in the TOML): the harness's
    /// HTTP and Flight clients use `client`.
    /// Start the server with this descriptor limit (RLIMIT_NOFILE, soft
    /// and hard), as a host with few descriptors would.
    pub fn nofile_limit(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    pub fn tls_client(mut self, client: TlsClient) -> Self {
        self.tls = Some(client);
        self
    }

    pub async fn start(self) -> TestServer {
        TestServer::start(self).await
    }

    /// Starts `honeycell serve` expecting it to refuse to start: waits (up
    /// to [`START_DEADLINE`]) for it to exit and returns how it exited with
    /// its log. Panics if it writes its ports file (it started) instead.
    pub async fn start_expecting_exit(self) -> Exited {
        let mut server = TestServer::new_stopped(self);
        server.launch();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = server.try_exit() {
                return Exited {
                    status,
                    log: server.log(),
                };
            }
            assert!(
                !server.ports_file().exists(),
                "honeycell started where it should have refused to; log:\n{}",
                server.log()
            );
            assert!(
                Instant::now() < deadline,
                "honeycell neither started nor exited within {START_DEADLINE:?}; log:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How a server that ended by itself exited.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    /// Its stdout and stderr.
    pub log: String,
}

/// A running `honeycell serve`, killed on drop.
pub struct TestServer {
    builder: ServerBuilder,
    dir: tempfile::TempDir,
    child: Option<Child>,
    ports: Ports,
    http: reqwest::Client,
    signer: Signer,
    starts: u32,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("dir", &self.dir.path())
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl TestServer {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// A server with default options (2 cells).
    pub async fn new() -> TestServer {
        ServerBuilder::default().start().await
    }

    async fn start(builder: ServerBuilder) -> TestServer {
        let mut server = TestServer::new_stopped(builder);
        server.spawn().await;
        server
    }

    fn new_stopped(builder: ServerBuilder) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("honeycell-e2e-")
            .tempdir()
            .expect("create a temp dir");
        let jwt = match &builder.keys {
            Keys::Hs256(secret) => JwtConfig {
                secret: Some(secret.clone()),
                ..JwtConfig::default()
            },
            Keys::Rs256 => JwtConfig {
                algorithm: "RS256".into(),
                private_key_file: Some(auth_fixture("rsa_private.pem")),
                ..JwtConfig::default()
            },
        };
        let signer = Signer::new(&jwt).expect("test signer");
        let http = match &builder.tls {
            Some(tls) => tls.reqwest(),
            None => reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("reqwest client"),
        };
        TestServer {
            builder,
            dir,
            child: None,
            ports: Ports {
                http: 0,
                flight: 0,
                flight_cells: Vec::new(),
                cells: 0,
            },
            http,
            signer,
            starts: 0,
        }
    }

    /// The directory holding the data dir, config, ports file and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.builder
            .data_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    fn ports_file(&self) -> PathBuf {
        self.dir.path().join("ports.json")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn config_file(&self) -> PathBuf {
        self.dir.path().join("honeycell.toml")
    }

    /// The server's stdout and stderr so far (all starts).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.log_file()) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    async fn spawn(&mut self) {
        self.launch();
        self.ports = self.wait_for_ports().await;
        self.wait_ready().await;
    }

    /// The server's environment: its JWT key and the builder's variables.
    fn server_env(&self, cmd: &mut Command) {
        match &self.builder.keys {
            Keys::Hs256(secret) => {
                cmd.env("HONEYCELL_JWT_SECRET", secret);
            }
            Keys::Rs256 => {
                cmd.env("HONEYCELL_JWT__ALGORITHM", "RS256");
                cmd.env(
                    "HONEYCELL_JWT__PUBLIC_KEY_FILE",
                    auth_fixture("rsa_public.pem"),
                );
            }
        }
        for (k, v) in &self.builder.env {
            cmd.env(k, v);
        }
    }

    /// `honeycell <args>` with this server's configuration file, data dir
    /// and environment, as an operator on its host runs it (whether the
    /// server runs or not; the config file is written at its first start).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = honeycell_command();
        cmd.args(args)
            .arg("--config")
            .arg(self.config_file())
            .arg("--data-dir")
            .arg(self.data_dir())
            .stdin(Stdio::null());
        self.server_env(&mut cmd);
        cmd.output().expect("run honeycell")
    }

    /// Starts the process, without waiting for anything.
    fn launch(&mut self) {
        assert!(self.child.is_none(), "spawn: the server is already running");
        let _ = std::fs::remove_file(self.ports_file());
        // pin_cores is off: many test servers share two cores.
        let config = format!("pin_cores = false\n{}", self.builder.toml);
        std::fs::write(self.config_file(), config).expect("write the config file");
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("open the server log");
        writeln!(log, "===== honeycell start #{} =====", self.starts)
            .expect("write the server log");
        let mut cmd = honeycell_command();
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_file())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--http", &self.builder.http_addr])
            .args(["--flight", &self.builder.flight_addr])
            .arg("--ports-file")
            .arg(self.ports_file())
            .arg("--cells")
            .arg(self.builder.cells.to_string())
            .args(&self.builder.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        self.server_env(&mut cmd);
        // If the test process dies without running Drop (a nextest timeout
        // kills it), the server dies with it instead of leaking.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt as _;
            let nofile = self.builder.nofile;
            // SAFETY: prctl and setrlimit are async-signal-safe; nothing
            // else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if let Some(n) = nofile {
                        let limit = libc::rlimit {
                            rlim_cur: n,
                            rlim_max: n,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        self.child = Some(cmd.spawn().expect("spawn honeycell serve"));
    }

    /// The exit status if the process has ended by itself (reaped).
    fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self
            .child
            .as_mut()?
            .try_wait()
            .expect("wait for honeycell")?;
        self.child = None;
        Some(status)
    }

    /// Waits, up to `deadline`, for the server to exit by itself (not
    /// asked to); its exit status. Panics if it is still running then.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(self.child.is_some(), "wait_exit: the server is not running");
            assert!(
                Instant::now() < until,
                "honeycell still running after {deadline:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_alive(&mut self, what: &str) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            panic!(
                "honeycell exited ({status}) while {what}; its log:\n{}",
                self.log()
            );
        }
    }

    async fn wait_for_ports(&mut self) -> Ports {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(text) = std::fs::read_to_string(self.ports_file())
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                let port = |k: &str| {
                    v[k].as_u64()
                        .map(|p| p as u16)
                        .expect("port in the ports file")
                };
                let flight_cells = v["flight_cells"]
                    .as_array()
                    .expect("flight_cells in the ports file")
                    .iter()
                    .map(|p| p.as_u64().expect("a port") as u16)
                    .collect();
                return Ports {
                    http: port("http"),
                    flight: port("flight"),
                    flight_cells,
                    cells: v["cells"].as_u64().expect("cells in the ports file") as usize,
                };
            }
            self.check_alive("waiting for its ports file");
            assert!(
                Instant::now() < deadline,
                "no ports file after {START_DEADLINE:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        let url = self.url("/ready");
        loop {
            if let Ok(r) = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                && r.status() == reqwest::StatusCode::OK
            {
                return;
            }
            self.check_alive("waiting for /ready");
            assert!(
                Instant::now() < deadline,
                "/ready not 200 after {START_DEADLINE:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("kill9: the server is not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits (with a deadline) for the process to exit.
    pub async fn sigterm(&mut self) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .expect("sigterm: the server is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own child's pid, which is not yet reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for honeycell") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "honeycell did not exit within {STOP_DEADLINE:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Changes the number of cells used by the next [`Self::restart`].
    pub fn set_cells(&mut self, n: usize) {
        self.builder.cells = n;
    }

    /// Starts the server again on the same data directory (killing it first
    /// if it still runs). Ports change.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        self.spawn().await;
    }

    // ---- tokens ----

    /// A token minted in-process with the server's key.
    pub fn token(&self, org: &str, role: Role) -> String {
        self.token_for(org, "e2e", role)
    }

    /// A token for a given subject.
    pub fn token_for(&self, org: &str, subject: &str, role: Role) -> String {
        let org = OrgId::new(org).expect("valid org id");
        self.signer
            .mint(&org, subject, role, Duration::from_secs(900))
            .expect("mint a token")
    }

    /// A token with a given lifetime.
    pub fn token_ttl(&self, org: &str, role: Role, ttl: Duration) -> String {
        let org = OrgId::new(org).expect("valid org id");
        self.signer
            .mint(&org, "e2e", role, ttl)
            .expect("mint a token")
    }

    /// The HS256 secret of this server (None for RS256 servers).
    pub fn secret(&self) -> Option<&str> {
        match &self.builder.keys {
            Keys::Hs256(s) => Some(s),
            Keys::Rs256 => None,
        }
    }

    /// A token printed by `honeycell token` with the server's key.
    pub fn cli_token(&self, org: &str, role: &str) -> std::process::Output {
        let mut cmd = honeycell_command();
        cmd.args(["token", "--org", org, "--role", role, "--ttl", "15m"])
            .arg("--data-dir")
            .arg(self.data_dir());
        if let Some(s) = self.secret() {
            cmd.env("HONEYCELL_JWT_SECRET", s);
        }
        cmd.output().expect("run honeycell token")
    }

    // ---- HTTP ----

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.builder.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}{path}", self.ports.http)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `POST /v1/events` with a JSON body.
    pub async fn post_events(&self, token: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/events"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST /v1/events")
    }

    /// Ingests `events` over HTTP, asserting success; returns the event ids.
    pub async fn ingest(&self, token: &str, events: &[Value]) -> Vec<String> {
        let resp = self
            .post_events(token, &Value::Array(events.to_vec()))
            .await;
        let status = resp.status();
        let body: Value = resp.json().await.expect("JSON answer to POST /v1/events");
        assert_eq!(status, 200, "POST /v1/events: {body}");
        assert_eq!(body["accepted"], events.len() as u64, "{body}");
        let ids = string_list(&body["event_ids"]);
        assert_eq!(ids.len(), events.len(), "{body}");
        ids
    }

    /// Ingests `n` generated events (see [`gen_events`]).
    pub async fn ingest_n(&self, token: &str, n: usize, seed: u64) -> Vec<String> {
        self.ingest(token, &gen_events(n, seed)).await
    }

    /// `GET /v1/events?<query>` as (status, JSON body).
    pub async fn get_events(&self, token: &str, query: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(&format!("/v1/events?{query}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /v1/events");
        json_answer("GET /v1/events", resp).await
    }

    /// Every event matching `query` over HTTP JSON, following `next_cursor`
    /// with pages of `page` events.
    pub async fn all_events_http(&self, token: &str, query: &str, page: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100_000 {
            let mut q = format!("limit={page}");
            if !query.is_empty() {
                q.push('&');
                q.push_str(query);
            }
            if let Some(c) = &cursor {
                q.push_str("&cursor=");
                q.push_str(c);
            }
            let (status, body) = self.get_events(token, &q).await;
            assert_eq!(status, 200, "GET /v1/events?{q}: {body}");
            let events = body["events"].as_array().expect("events array");
            assert!(events.len() <= page, "page larger than limit {page}");
            out.extend(events.iter().cloned());
            match &body["next_cursor"] {
                Value::Null => return out,
                Value::String(c) => {
                    assert_eq!(events.len(), page, "a page with a next_cursor must be full");
                    cursor = Some(c.clone());
                }
                other => panic!("next_cursor is {other}"),
            }
        }
        panic!("paging did not end");
    }

    /// Number of the caller's events, over HTTP.
    pub async fn count_http(&self, token: &str) -> usize {
        self.all_events_http(token, "", 10_000).await.len()
    }

    /// `POST /graphql` as (status, JSON body).
    pub async fn graphql(&self, token: &str, query: &str, variables: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url("/graphql"))
            .bearer_auth(token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("POST /graphql");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body of POST /graphql");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("/graphql answered non-JSON ({e}): {text}"));
        (status, body)
    }

    /// Every event matching `filter` through GraphQL `events`, paging with
    /// `first`/`after`.
    pub async fn all_events_graphql(&self, token: &str, filter: Value, first: usize) -> Vec<Value> {
        const Q: &str = "query($f: EventFilterInput, $first: Int, $after: String) {
            events(filter: $f, first: $first, after: $after) {
                edges { cursor node { eventId orgId eventType entityType entityId occurredAt data changes userId traceId } }
                pageInfo { hasNextPage endCursor }
            }
        }";
        let mut out = Vec::new();
        let mut after = Value::Null;
        for _ in 0..100_000 {
            let (status, body) = self
                .graphql(
                    token,
                    Q,
                    json!({ "f": filter, "first": first, "after": after }),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            assert!(body.get("errors").is_none(), "GraphQL errors: {body}");
            let conn = &body["data"]["events"];
            let edges = conn["edges"].as_array().expect("edges");
            out.extend(edges.iter().map(|e| e["node"].clone()));
            if conn["pageInfo"]["hasNextPage"] != json!(true) {
                return out;
            }
            assert_eq!(edges.len(), first);
            let end = conn["pageInfo"]["endCursor"].clone();
            assert_eq!(
                end,
                edges.last().expect("an edge")["cursor"],
                "endCursor is the last edge's cursor"
            );
            after = end;
        }
        panic!("GraphQL paging did not end");
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        let resp = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), 200);
        resp.text().await.expect("metrics text")
    }

    /// How many `route` requests answered `status` each cell counted
    /// (index = cell), from `/metrics`: which cells connections landed on.
    pub async fn requests_per_cell(&self, route: &str, status: u16) -> Vec<u64> {
        let m = self.metrics().await;
        let (route, status) = (format!("route=\"{route}\""), format!("status=\"{status}\""));
        (0..self.ports.cells)
            .map(|cell| {
                let cell = format!("cell=\"{cell}\"");
                metric_sum(&m, "honeycell_requests_total", &[&cell, &route, &status]) as u64
            })
            .collect()
    }

    // ---- Flight ----

    /// `org`'s audit entries (newest first, at most 100; of `action` only
    /// when given), read as its admin once `done` holds for them: the log is
    /// written in the background. Panics after 10 s.
    pub async fn audit_until(
        &self,
        org: &str,
        action: Option<&str>,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let admin = self.token(org, honeycell_auth::Role::Admin);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = self
                .graphql(
                    &admin,
                    "query($a: String) { auditLog(action: $a, first: 100) {
                        entries { seq actor action resource result traceId detail } } }",
                    json!({ "a": action }),
                )
                .await;
            let entries = body["data"]["auditLog"]["entries"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if done(&entries) {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "the audit log of {org} never got what was expected: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A channel to this server's Flight `port`: over TLS when the server
    /// speaks it, else plaintext.
    pub async fn channel_to(&self, port: u16) -> Channel {
        match &self.builder.tls {
            Some(tls) => tls
                .channel(port)
                .await
                .unwrap_or_else(|e| panic!("connect to Flight over TLS at {port}: {e:?}")),
            None => channel(port).await,
        }
    }

    /// A Flight client to `port` with the bearer token (None: no header).
    pub async fn flight_at(&self, port: u16, token: Option<&str>) -> FlightClient {
        with_bearer(FlightClient::new(self.channel_to(port).await), token)
    }

    /// A Flight client on the shared Flight port.
    pub async fn flight(&self, token: &str) -> FlightClient {
        self.flight_at(self.ports.flight, Some(token)).await
    }

    /// A Flight SQL client on the shared Flight port.
    pub async fn flight_sql(&self, token: &str) -> FlightSqlServiceClient<Channel> {
        self.flight_sql_at(self.ports.flight, token).await
    }

    /// A Flight SQL client on `port`.
    pub async fn flight_sql_at(&self, port: u16, token: &str) -> FlightSqlServiceClient<Channel> {
        let mut client = FlightSqlServiceClient::new(self.channel_to(port).await);
        client.set_header("authorization", format!("Bearer {token}"));
        client
    }

    /// The per-cell Flight port of `cell`.
    pub fn cell_port(&self, cell: usize) -> u16 {
        self.ports.flight_cells[cell]
    }

    /// The Flight location the server advertises for `cell`.
    pub fn cell_location(&self, cell: usize) -> String {
        let scheme = if self.builder.tls.is_some() {
            "grpc+tls"
        } else {
            "grpc+tcp"
        };
        format!("{scheme}://127.0.0.1:{}", self.cell_port(cell))
    }

    /// Runs `sql` with Flight SQL (execute, then DoGet of every endpoint at
    /// its location) and returns the batches.
    pub async fn sql(&self, token: &str, sql: &str) -> Result<Vec<RecordBatch>, FlightError> {
        let mut client = self.flight_sql(token).await;
        let info = client.execute(sql.to_owned(), None).await?;
        let mut out = Vec::new();
        for ep in info.endpoint {
            let ticket = ep.ticket.expect("an endpoint with a ticket");
            let mut at = match ep.location.first() {
                Some(loc) => self.flight_sql_at(location_port(&loc.uri), token).await,
                None => client.clone(),
            };
            let batches: Vec<RecordBatch> = at.do_get(ticket).await?.try_collect().await?;
            out.extend(batches);
        }
        Ok(out)
    }

    /// GetFlightInfo on the shared Flight port (descriptor: the JSON command
    /// `cmd`, or the path `["events"]`), then DoGet of its one endpoint at
    /// the endpoint's location. Returns the location and the batches.
    pub async fn flight_query(
        &self,
        token: &str,
        cmd: Option<Value>,
    ) -> (String, Vec<RecordBatch>) {
        let mut client = self.flight(token).await;
        let descriptor = match cmd {
            Some(c) => FlightDescriptor::new_cmd(c.to_string()),
            None => FlightDescriptor::new_path(vec!["events".into()]),
        };
        let info = client
            .get_flight_info(descriptor)
            .await
            .unwrap_or_else(|e| panic!("GetFlightInfo: {e}"));
        assert_eq!(info.endpoint.len(), 1, "one endpoint: {info:?}");
        let ep = &info.endpoint[0];
        assert_eq!(ep.location.len(), 1, "one location: {info:?}");
        let location = ep.location[0].uri.clone();
        let ticket = ep.ticket.clone().expect("a ticket");
        let mut at = self.flight_at(location_port(&location), Some(token)).await;
        let batches = do_get_all(&mut at, ticket)
            .await
            .unwrap_or_else(|e| panic!("DoGet at {location}: {e}"));
        (location, batches)
    }

    /// Every event matching `query` as Arrow IPC over HTTP, following the
    /// `x-next-cursor` header.
    pub async fn all_events_arrow(
        &self,
        token: &str,
        query: &str,
        page: usize,
    ) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100_000 {
            let mut q = format!("limit={page}");
            if !query.is_empty() {
                q.push('&');
                q.push_str(query);
            }
            if let Some(c) = &cursor {
                q.push_str("&cursor=");
                q.push_str(c);
            }
            let resp = self
                .http
                .get(self.url(&format!("/v1/events?{q}")))
                .bearer_auth(token)
                .header("accept", "application/vnd.apache.arrow.stream")
                .send()
                .await
                .expect("GET /v1/events (Arrow)");
            assert_eq!(resp.status(), 200);
            assert_eq!(
                resp.headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some("application/vnd.apache.arrow.stream")
            );
            let next = resp
                .headers()
                .get("x-next-cursor")
                .map(|v| v.to_str().expect("ASCII cursor").to_owned());
            let bytes = resp.bytes().await.expect("Arrow body");
            let reader = arrow::ipc::reader::StreamReader::try_new(
                std::io::Cursor::new(bytes.to_vec()),
                None,
            )
            .expect("an Arrow IPC stream");
            let mut rows = 0;
            for b in reader {
                let b = b.expect("an IPC batch");
                rows += b.num_rows();
                out.push(b);
            }
            assert!(rows <= page);
            match next {
                None => return out,
                Some(c) => {
                    assert_eq!(rows, page, "a page with a next cursor must be full");
                    cursor = Some(c);
                }
            }
        }
        panic!("Arrow paging did not end");
    }

    /// The gRPC status of `GetFlightInfo` for a Flight SQL statement (for
    /// queries that must be refused).
    pub async fn sql_status(&self, token: &str, sql: &str) -> Result<FlightInfo, tonic::Status> {
        let mut client = self.flight(token).await;
        let cmd = CommandStatementQuery {
            query: sql.to_owned(),
            transaction_id: None,
        };
        let descriptor = FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec());
        client
            .get_flight_info(descriptor)
            .await
            .map_err(flight_status)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- honeycell log ({}) -----\n{}\n----- end of honeycell log -----",
                self.log_file().display(),
                self.log()
            );
        }
    }
}

/// An answer as (status, JSON body); a body that is not JSON fails the test.
pub async fn json_answer(what: &str, resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("body of {what}: {e}"));
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what} answered non-JSON ({e}) with {status}: {text}"));
    (status, body)
}

// ---- Flight helpers ----

/// A Flight client to `127.0.0.1:port`, with `authorization: Bearer <token>`.
pub async fn flight_client(port: u16, token: Option<&str>) -> FlightClient {
    with_bearer(FlightClient::new(channel(port).await), token)
}

/// `client` sending `authorization: Bearer <token>` (None: no header).
fn with_bearer(mut client: FlightClient, token: Option<&str>) -> FlightClient {
    if let Some(t) = token {
        client
            .add_header("authorization", &format!("Bearer {t}"))
            .expect("authorization metadata");
    }
    client
}

/// A string column.
pub fn utf8(values: &[&str]) -> arrow::array::ArrayRef {
    std::sync::Arc::new(arrow::array::StringArray::from(values.to_vec()))
}

/// A record batch of named, nullable columns (as a DoPut client sends).
pub fn batch(columns: Vec<(&str, arrow::array::ArrayRef)>) -> RecordBatch {
    let fields: Vec<arrow::datatypes::Field> = columns
        .iter()
        .map(|(n, a)| arrow::datatypes::Field::new(*n, a.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .expect("a valid batch")
}

/// One INSERT event for entity `entity_id`, as a DoPut batch.
pub fn one_event_batch(entity_id: &str) -> RecordBatch {
    batch(vec![
        ("event_type", utf8(&["INSERT"])),
        ("entity_type", utf8(&["order"])),
        ("entity_id", utf8(&[entity_id])),
    ])
}

/// Runs `honeycell check-config` on `toml` (written into `dir`, with a data
/// dir there): whether it passed, and its stdout and stderr.
pub fn check_config(dir: &Path, toml: &str) -> (bool, String) {
    let config = dir.join("honeycell.toml");
    std::fs::write(&config, toml).expect("write the config file");
    let out = honeycell_command()
        .args(["check-config", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .expect("run honeycell check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

/// A plaintext Flight client that connects on first use (so that a server
/// speaking TLS fails the call, not the set-up).
pub fn flight_client_lazy(port: u16, token: &str) -> FlightClient {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    with_bearer(FlightClient::new(channel), Some(token))
}

/// A Flight client sending `authorization: <raw>` verbatim.
pub async fn flight_client_raw_auth(port: u16, raw: &str) -> FlightClient {
    let mut client = FlightClient::new(channel(port).await);
    client
        .add_header("authorization", raw)
        .expect("authorization metadata");
    client
}

/// A Flight SQL client to `127.0.0.1:port` with the bearer header.
pub async fn flight_sql_client(port: u16, token: &str) -> FlightSqlServiceClient<Channel> {
    let mut client = FlightSqlServiceClient::new(channel(port).await);
    client.set_header("authorization", format!("Bearer {token}"));
    client
}

async fn channel(port: u16) -> Channel {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to Flight at 127.0.0.1:{port}: {e}"))
}

/// The port of a `grpc+tcp://host:port` location.
pub fn location_port(uri: &str) -> u16 {
    uri.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in location {uri:?}"))
}

/// The tonic status inside a Flight error (panics for other errors).
pub fn flight_status(e: FlightError) -> tonic::Status {
    match e {
        FlightError::Tonic(s) => *s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// All batches of a DoGet.
pub async fn do_get_all(
    client: &mut FlightClient,
    ticket: Ticket,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    let stream = client.do_get(ticket).await.map_err(flight_status)?;
    stream.try_collect().await.map_err(flight_status)
}

/// DoPut of `batches` (one schema); the PutResults, or the first error.
pub async fn do_put_all(
    client: &mut FlightClient,
    batches: Vec<RecordBatch>,
) -> Result<Vec<PutResult>, tonic::Status> {
    let data =
        FlightDataEncoderBuilder::new().build(futures::stream::iter(batches.into_iter().map(Ok)));
    let results = client.do_put(data).await.map_err(flight_status)?;
    results.try_collect().await.map_err(flight_status)
}

/// The app_metadata JSON of a PutResult.
pub fn put_metadata(r: &PutResult) -> Value {
    serde_json::from_slice(&r.app_metadata).expect("PutResult app_metadata is JSON")
}

/// Runs a DoAction and parses its one JSON result.
pub async fn action_json(client: &mut FlightClient, action: &str) -> Value {
    let results: Vec<_> = client
        .do_action(arrow_flight::Action::new(action, ""))
        .await
        .unwrap_or_else(|e| panic!("DoAction {action}: {e}"))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("DoAction {action}: {e}"));
    assert_eq!(results.len(), 1, "{action} answers one result");
    serde_json::from_slice(&results[0]).expect("action result is JSON")
}

// ---- placement ----

/// The cell that owns `org` on a server with `cells` cells.
pub fn owner_of(org: &str, cells: usize) -> usize {
    let router = Router::new(cells as u32, []).expect("router");
    router
        .owner(&OrgId::new(org).expect("valid org id"))
        .index()
}

/// The first org named `<prefix>-<i>` that `cell` owns.
pub fn org_owned_by(prefix: &str, cell: usize, cells: usize) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|o| owner_of(o, cells) == cell)
        .expect("some org lands on every cell")
}

// ---- generated events ----

/// 2026-03-01T10:00:00Z in µs.
pub const BASE_US: i64 = 1_772_359_200_000_000;
pub const ENTITY_TYPES: [&str; 3] = ["order", "user", "invoice"];
pub const EVENT_TYPES: [&str; 4] = ["INSERT", "UPDATE", "DELETE", "CUSTOM"];

/// `n` deterministic, varied events. Event `i` of batch `seed` occurs at
/// `BASE_US`, plus `seed` hours, plus `i` times 7 minutes and `i` µs, so
/// events spread over minutes, hours and days. Some carry their own
/// event_id, changes, user_id and trace_id; some give occurred_at as
/// integer microseconds.
pub fn gen_events(n: usize, seed: u64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let k = i as u64 + seed * 7919;
            let event_type = EVENT_TYPES[(k % 4) as usize];
            let entity_type = ENTITY_TYPES[(k % 3) as usize];
            let at = BASE_US + seed as i64 * 3_600_000_000 + i as i64 * 420_000_000 + i as i64;
            let mut e = json!({
                "event_type": event_type,
                "entity_type": entity_type,
                "entity_id": format!("{entity_type}-{}", k % 11),
                "occurred_at": if i % 5 == 0 { json!(at) } else { json!(rfc3339_us(at)) },
                "data": {"n": k, "name": format!("item \"{k}\" ü"), "tags": ["a", k.is_multiple_of(2)], "nested": {"x": 1.5}},
            });
            if event_type == "UPDATE" {
                e["changes"] = json!({"status": {"old": "new", "new": "paid"}, "qty": {"new": k}});
            }
            if k.is_multiple_of(3) {
                e["user_id"] = json!(format!("user-{}", k % 5));
            }
            if k % 4 == 1 {
                e["trace_id"] = json!(format!("trace-{k}"));
            }
            if k % 6 == 2 {
                e["event_id"] = json!(uuid::Uuid::new_v4().to_string());
            }
            e
        })
        .collect()
}

/// RFC 3339 with microseconds, UTC.
pub fn rfc3339_us(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .expect("a representable time")
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Microseconds of an RFC 3339 time.
pub fn parse_rfc3339_us(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
        .timestamp_micros()
}

/// A list of JSON strings.
pub fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

// ---- rows: one comparable shape for every protocol ----

/// One event, as every protocol returns it, normalised for comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub event_id: String,
    pub org_id: String,
    pub event_type: String,
    pub entity_type: String,
    pub entity_id: String,
    pub occurred_at_us: i64,
    pub data: Option<Value>,
    pub changes: Option<Value>,
    pub user_id: Option<String>,
    pub trace_id: Option<String>,
}

fn opt_json(v: &Value) -> Option<Value> {
    (!v.is_null()).then(|| v.clone())
}

fn opt_str(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("expected a string or null, got {other}"),
    }
}

fn req_str(v: &Value, field: &str) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("{field} is not a string: {v}"))
        .to_owned()
}

impl Row {
    /// From an event of `GET /v1/events` (snake_case keys).
    pub fn from_http(e: &Value) -> Row {
        let keys: Vec<&String> = e.as_object().expect("event object").keys().collect();
        assert_eq!(
            keys.len(),
            10,
            "an HTTP event has exactly the 10 fields: {e}"
        );
        Row {
            event_id: req_str(&e["event_id"], "event_id"),
            org_id: req_str(&e["org_id"], "org_id"),
            event_type: req_str(&e["event_type"], "event_type"),
            entity_type: req_str(&e["entity_type"], "entity_type"),
            entity_id: req_str(&e["entity_id"], "entity_id"),
            occurred_at_us: parse_rfc3339_us(e["occurred_at"].as_str().expect("occurred_at")),
            data: opt_json(&e["data"]),
            changes: opt_json(&e["changes"]),
            user_id: opt_str(&e["user_id"]),
            trace_id: opt_str(&e["trace_id"]),
        }
    }

    /// From a GraphQL `Event` node (camelCase keys).
    pub fn from_graphql(e: &Value) -> Row {
        Row {
            event_id: req_str(&e["eventId"], "eventId"),
            org_id: req_str(&e["orgId"], "orgId"),
            event_type: req_str(&e["eventType"], "eventType"),
            entity_type: req_str(&e["entityType"], "entityType"),
            entity_id: req_str(&e["entityId"], "entityId"),
            occurred_at_us: parse_rfc3339_us(e["occurredAt"].as_str().expect("occurredAt")),
            data: opt_json(&e["data"]),
            changes: opt_json(&e["changes"]),
            user_id: opt_str(&e["userId"]),
            trace_id: opt_str(&e["traceId"]),
        }
    }

    /// From Arrow batches in the event schema (Flight, Flight SQL, Arrow IPC).
    pub fn from_batches(batches: &[RecordBatch]) -> Vec<Row> {
        let mut out = Vec::new();
        for b in batches {
            let text = |name: &str| -> Vec<Option<String>> {
                let col = b
                    .column_by_name(name)
                    .unwrap_or_else(|| panic!("no column {name} in {:?}", b.schema()));
                let col = if col.data_type() == &DataType::Utf8 {
                    col.clone()
                } else {
                    arrow::compute::cast(col, &DataType::Utf8).expect("cast to Utf8")
                };
                col.as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::to_owned))
                    .collect()
            };
            let ts = b.column_by_name("occurred_at").expect("occurred_at column");
            assert_eq!(
                ts.data_type(),
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                "occurred_at type"
            );
            let ts = ts.as_primitive::<TimestampMicrosecondType>();
            assert_eq!(ts.null_count(), 0, "occurred_at has no nulls");
            let cols: Vec<Vec<Option<String>>> = [
                "event_id",
                "org_id",
                "event_type",
                "entity_type",
                "entity_id",
                "data",
                "changes",
                "user_id",
                "trace_id",
            ]
            .iter()
            .map(|n| text(n))
            .collect();
            #[allow(clippy::needless_range_loop, reason = "row i of every column")]
            for i in 0..b.num_rows() {
                let req = |c: usize| cols[c][i].clone().expect("a required column is null");
                let json = |c: usize| {
                    cols[c][i]
                        .as_deref()
                        .map(|t| serde_json::from_str::<Value>(t).expect("stored JSON text parses"))
                };
                out.push(Row {
                    event_id: req(0),
                    org_id: req(1),
                    event_type: req(2),
                    entity_type: req(3),
                    entity_id: req(4),
                    occurred_at_us: ts.value(i),
                    data: json(5),
                    changes: json(6),
                    user_id: cols[7][i].clone(),
                    trace_id: cols[8][i].clone(),
                });
            }
        }
        out
    }
}

/// Rows keyed by event_id; panics on a duplicate id.
pub fn by_id(rows: impl IntoIterator<Item = Row>) -> BTreeMap<String, Row> {
    let mut out = BTreeMap::new();
    for r in rows {
        let id = r.event_id.clone();
        if let Some(prev) = out.insert(id.clone(), r) {
            panic!("event {id} appears twice (first {prev:?})");
        }
    }
    out
}

/// A checksum of every field of every row, independent of order.
pub fn checksum(rows: &BTreeMap<String, Row>) -> u64 {
    // FNV-1a over a canonical text of each row, in id order.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for r in rows.values() {
        let text = format!("{r:?}");
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Sum of the samples of a metric family whose labels contain all `labels`
/// (e.g. `&["cell=\"0\""]`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|lab| rest.contains(lab)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
