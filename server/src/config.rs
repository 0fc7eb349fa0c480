//! The server's configuration: one TOML file, overridden by `HONEYCELL_*`
//! environment variables, overridden by CLI flags.
//!
//! Top-level keys have a flag and an environment twin (`--data-dir`,
//! `HONEYCELL_DATA_DIR`). Any nested key can be set from the environment as
//! `HONEYCELL_<SECTION>__<KEY>` (two underscores), e.g.
//! `HONEYCELL_STORAGE__DURABILITY=interval`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use honeycell_api::HttpConfig;
use honeycell_auth::JwtConfig;
use honeycell_cell::{AdmissionConfig, RateLimitConfig};
use honeycell_control::{ControlConfig, OAuthConfig};
use honeycell_storage::StorageConfig;
use honeycell_tls::TlsConfig;
use honeycell_tls::conn::ConnectionsConfig;
use serde::Deserialize;

/// The whole configuration.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where event logs (and the development JWT secret) live.
    pub data_dir: PathBuf,
    /// HTTP/GraphQL address shared by all cells.
    pub http: String,
    /// Arrow Flight address shared by all cells.
    pub flight: String,
    /// First per-cell Flight port (cell i listens on base + i). Absent: the
    /// shared Flight port + 1 + i, or ephemeral ports when that port is 0.
    pub flight_cell_base_port: Option<u16>,
    /// Host put in Flight locations. Required when `flight` binds 0.0.0.0/::.
    pub advertise_host: Option<String>,
    /// Number of cells (with `runtime = "shared"`: worker threads); 0 means
    /// one per available core.
    pub cells: usize,
    /// `"cells"` (thread-per-core, the design) or `"shared"` (one
    /// work-stealing runtime with shared state: the conventional baseline
    /// that benchmarks compare against).
    pub runtime: RuntimeMode,
    /// Pin cell i to core i.
    pub pin_cores: bool,
    /// Threads of the query pool that runs Flight SQL (DataFusion).
    pub query_workers: usize,
    /// Write the bound addresses as JSON here once serving (for tests and tools).
    pub ports_file: Option<PathBuf>,
    /// Redis for the job queue: `redis://host:6379` or `rediss://host:6380`
    /// (TLS). Each cell opens its own connection.
    pub redis_url: Option<String>,
    /// PEM CA certificates to trust for `rediss://` (default: the system's).
    pub redis_ca_path: Option<PathBuf>,
    pub log: LogConfig,
    pub jwt: JwtConfig,
    pub storage: StorageConfig,
    pub rate_limiting: RateLimitConfig,
    pub admission: AdmissionConfig,
    #[serde(rename = "http_limits")]
    pub http_limits: HttpConfig,
    pub router: RouterConfig,
    pub control: ControlConfig,
    pub tls: TlsConfig,
    /// Limits and timeouts of the HTTP and Flight connections.
    pub connections: ConnectionsConfig,
    pub oauth: OAuthConfig,
    /// What one Flight SQL query may cost (time, memory, concurrency).
    pub flight_sql: honeycell_flight::SqlConfig,
}

/// How the server runs its threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeMode {
    #[default]
    Cells,
    Shared,
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `"text"` or `"json"`.
    pub format: String,
    /// A `tracing` filter such as `info` or `honeycell_cell=debug,info`;
    /// `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// `[router]`: tenants pinned to a cell.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    pub overrides: BTreeMap<String, u32>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("honeycell-data"),
            http: "127.0.0.1:8000".into(),
            flight: "127.0.0.1:8815".into(),
            flight_cell_base_port: None,
            advertise_host: None,
            cells: 0,
            runtime: RuntimeMode::Cells,
            pin_cores: true,
            query_workers: 1,
            ports_file: None,
            redis_url: None,
            redis_ca_path: None,
            log: LogConfig::default(),
            jwt: JwtConfig::default(),
            storage: StorageConfig::default(),
            rate_limiting: RateLimitConfig::default(),
            admission: AdmissionConfig::default(),
            http_limits: HttpConfig::default(),
            router: RouterConfig::default(),
            control: ControlConfig::default(),
            tls: TlsConfig::default(),
            connections: ConnectionsConfig::default(),
            oauth: OAuthConfig::default(),
            flight_sql: honeycell_flight::SqlConfig::default(),
        }
    }
}

/// Sets `path` (e.g. `["storage", "durability"]`) in a TOML table.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let Some(next) = entry.as_table_mut() else {
            return;
        };
        t = next;
    }
    t.insert(last.clone(), value);
}

/// An environment value as TOML: numbers and booleans keep their type.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = raw.parse::<f64>() {
        return toml::Value::Float(f);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_owned()),
    }
}

/// Environment variables that are flags of the CLI (handled by clap) or
/// secrets handled separately; they are not nested config keys.
const FLAG_VARS: [&str; 8] = [
    "HONEYCELL_RUNTIME",
    "HONEYCELL_CONFIG",
    "HONEYCELL_DATA_DIR",
    "HONEYCELL_HTTP",
    "HONEYCELL_FLIGHT",
    "HONEYCELL_CELLS",
    "HONEYCELL_PORTS_FILE",
    "HONEYCELL_JWT_SECRET",
];

impl Config {
    /// Reads the TOML file (if any) and applies `HONEYCELL_<SECTION>__<KEY>`
    /// variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the config file {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("{} is not valid TOML", path.display()))?
            }
            None => toml::Table::new(),
        };
        let mut secret = None;
        for (key, value) in env {
            if key == "HONEYCELL_JWT_SECRET" {
                secret = Some(value);
                continue;
            }
            let Some(rest) = key.strip_prefix("HONEYCELL_") else {
                continue;
            };
            if FLAG_VARS.contains(&key.as_str()) || !rest.contains("__") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut table, &path, env_value(&value));
        }
        // serde_path_to_error keeps the path of the failing key
        // (`storage.durability`), which a plain `try_into` loses.
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let source = match file {
                    Some(p) => format!("{} or HONEYCELL_* variables", p.display()),
                    None => "HONEYCELL_* variables".to_owned(),
                };
                anyhow::anyhow!(
                    "invalid configuration key {}: {} (in {source})",
                    e.path(),
                    e.inner().message().trim()
                )
            })?;
        if let Some(secret) = secret {
            config.jwt.secret = Some(secret);
        }
        Ok(config)
    }

    /// The number of cells to run.
    pub fn cell_count(&self) -> usize {
        if self.cells > 0 {
            self.cells
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }

    /// Resolves an address key to one socket address.
    pub fn addr(key: &str, value: &str) -> anyhow::Result<SocketAddr> {
        value
            .to_socket_addrs()
            .with_context(|| format!("{key}: {value:?} is not host:port"))?
            .next()
            .with_context(|| format!("{key}: {value:?} resolves to no address"))
    }

    /// The host written into Flight locations.
    pub fn advertised_host(&self) -> anyhow::Result<String> {
        if let Some(h) = &self.advertise_host {
            return Ok(h.clone());
        }
        let addr = Self::addr("flight", &self.flight)?;
        if addr.ip().is_unspecified() {
            bail!(
                "advertise_host: flight binds {} (all interfaces); set advertise_host (HONEYCELL_ADVERTISE_HOST) to a host clients can reach",
                self.flight
            );
        }
        Ok(match addr {
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
            SocketAddr::V4(a) => a.ip().to_string(),
        })
    }

    /// The JWT settings with the development secret filled in when no key
    /// is configured: a random secret kept in the data directory, so that a
    /// fresh `serve` and `token` work together out of the box.
    pub fn jwt_effective(&self) -> anyhow::Result<(JwtConfig, bool)> {
        let mut jwt = self.jwt.clone();
        let has_key = jwt.secret.is_some()
            || jwt.secret_file.is_some()
            || jwt.public_key_file.is_some()
            || jwt.private_key_file.is_some();
        if has_key || !jwt.algorithm.eq_ignore_ascii_case("HS256") {
            return Ok((jwt, false));
        }
        let path = self.data_dir.join("jwt-dev-secret");
        if !path.exists() {
            std::fs::create_dir_all(&self.data_dir)
                .with_context(|| format!("data_dir: cannot create {}", self.data_dir.display()))?;
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            write_private(&path, &secret)?;
        }
        jwt.secret_file = Some(path);
        Ok((jwt, true))
    }

    /// Checks every section; the error names the key to fix.
    /// The Redis settings, when `redis_url` is set.
    pub fn redis(&self) -> Option<honeycell_queue::RedisConfig> {
        self.redis_url
            .as_ref()
            .map(|url| honeycell_queue::RedisConfig {
                url: url.clone(),
                ca_path: self.redis_ca_path.clone(),
            })
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        Self::addr("http", &self.http)?;
        Self::addr("flight", &self.flight)?;
        self.advertised_host()?;
        if self.query_workers == 0 {
            bail!("query_workers must be at least 1");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!(
                "log.format must be \"text\" or \"json\", got {:?}",
                self.log.format
            );
        }
        let cells = self.cell_count();
        if let Some(base) = self.flight_cell_base_port
            && usize::from(base) + cells > 65_536
        {
            bail!("flight_cell_base_port: {base} + {cells} cells runs past port 65535");
        }
        self.storage
            .validate()
            .map_err(|e| anyhow::anyhow!("storage: {e}"))?;
        self.rate_limiting.validate().map_err(anyhow::Error::msg)?;
        self.admission.validate().map_err(anyhow::Error::msg)?;
        self.http_limits.validate().map_err(anyhow::Error::msg)?;
        self.flight_sql.validate().map_err(anyhow::Error::msg)?;
        self.control.validate()?;
        // The server's own access tokens must pass its own verifier.
        let (access_ttl, _) = self.control.token_ttls()?;
        if access_ttl > self.jwt.max_lifetime {
            bail!(
                "control.access_token_ttl ({}) is longer than jwt.max_lifetime ({}): the access tokens the server issues would be refused; shorten the one or raise the other",
                self.control.access_token_ttl,
                humantime::format_duration(self.jwt.max_lifetime)
            );
        }
        self.tls.validate()?;
        self.connections.validate()?;
        if let Some(redis) = self.redis() {
            redis.validate()?;
        } else if self.redis_ca_path.is_some() {
            bail!("redis_ca_path is set but redis_url is not");
        }
        self.oauth.validate()?;
        for (org, cell) in &self.router.overrides {
            honeycell_types::OrgId::new(org.clone())
                .map_err(|e| anyhow::anyhow!("router.overrides: {e}"))?;
            if *cell as usize >= cells {
                bail!(
                    "router.overrides: {org} is pinned to cell {cell}, but only {cells} cells run"
                );
            }
        }
        // Without any key, HS256 falls back to the development secret that
        // `serve` creates; every other combination must stand on its own.
        let dev_fallback = self.jwt.algorithm.eq_ignore_ascii_case("HS256")
            && self.jwt.secret.is_none()
            && self.jwt.secret_file.is_none()
            && self.jwt.public_key_file.is_none()
            && self.jwt.private_key_file.is_none();
        if !dev_fallback {
            self.jwt.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_nested_keys_and_reads_the_secret() {
        let env = [
            ("HONEYCELL_STORAGE__DURABILITY", "interval"),
            ("HONEYCELL_RATE_LIMITING__ORG_MAX_QPS", "7"),
            ("HONEYCELL_JWT_SECRET", "s3cret"),
            ("HONEYCELL_DATA_DIR", "/ignored/here"),
            ("OTHER", "x"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Config::load(None, env.into_iter()).expect("config");
        assert_eq!(
            c.storage.durability,
            honeycell_storage::DurabilityConfig::Interval
        );
        assert_eq!(c.rate_limiting.org_max_qps, 7);
        assert_eq!(c.jwt.secret.as_deref(), Some("s3cret"));
        assert_eq!(c.data_dir, PathBuf::from("honeycell-data"));
    }

    #[test]
    fn connection_timeouts_are_durations_from_toml_or_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[connections]\nheader_read_timeout = \"2s\"\nidle_timeout = 90\n",
        )
        .expect("write");
        let env = [("HONEYCELL_CONNECTIONS__MAX_PER_CELL", "8")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Config::load(Some(&path), env.into_iter()).expect("config");
        let d = std::time::Duration::from_secs;
        assert_eq!(c.connections.header_read_timeout, d(2));
        assert_eq!(c.connections.idle_timeout, d(90));
        assert_eq!(c.connections.max_per_cell, 8);
        std::fs::write(&path, "[connections]\nidle_timeout = \"soon\"\n").expect("write");
        let err = Config::load(Some(&path), std::iter::empty())
            .err()
            .expect("must fail");
        assert!(
            format!("{err:#}").contains("connections.idle_timeout"),
            "{err:#}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[storage]\ndurabilty = \"fsync\"\n").expect("write");
        let err = Config::load(Some(&path), std::iter::empty())
            .err()
            .expect("must fail");
        assert!(format!("{err:#}").contains("durabilty"), "{err:#}");
    }

    #[test]
    fn unspecified_flight_bind_needs_an_advertised_host() {
        let c = Config {
            flight: "0.0.0.0:8815".into(),
            ..Config::default()
        };
        let err = c.validate().expect_err("must fail");
        assert!(err.to_string().contains("advertise_host"), "{err}");
        let c = Config {
            advertise_host: Some("db.example".into()),
            ..c
        };
        assert_eq!(c.advertised_host().expect("host"), "db.example");
    }
}
