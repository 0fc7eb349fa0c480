//! `[control]`: which control-plane store the server uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::{EmbeddedStore, PgConfig, PgStore, Store};

fn duration(key: &str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text).map_err(|e| {
        Error::Config(format!(
            "control.{key} {text:?}: {e}; use a duration such as 1s or 500ms"
        ))
    })
}

/// Which backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A redb file under the data directory; nothing to install.
    #[default]
    Embedded,
    Postgres,
}

/// `[control]`. The PostgreSQL URL usually carries a password, so it is
/// best set through `HONEYCELL_CONTROL__POSTGRES_URL`; it is never logged.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    pub store: StoreKind,
    /// The embedded store's file; default `<data_dir>/control/control.redb`.
    pub embedded_path: Option<PathBuf>,
    /// `postgres://user:password@host:5432/db?sslmode=verify-full&sslrootcert=/ca.pem`
    pub postgres_url: Option<String>,
    /// Connections in each cell's own pool.
    pub pool_size_per_cell: usize,
    /// e.g. `"5s"`.
    pub connect_timeout: String,
    /// How long a cell trusts a cached API-key record, membership or
    /// login (refresh family): the longest a revocation — of a key, a
    /// membership, or a login by logout or refresh reuse — takes to reach
    /// every cell (at most `"1s"`).
    pub api_key_cache_ttl: String,
    /// How often each cell writes API keys' last-use times (in one batch).
    pub last_used_flush: String,
    /// Failed authentications allowed per source address, and per API key
    /// id, in `brute_force_window` (one budget per process, whichever cell
    /// the attempts land on); then 429 until the window refills.
    pub brute_force_max_failures: u32,
    pub brute_force_window: String,
    /// Lifetime of access tokens issued by `/auth/token` and `/auth/refresh`.
    pub access_token_ttl: String,
    /// Lifetime of refresh tokens.
    pub refresh_token_ttl: String,
    /// How often each cell re-reads the signing keys (to pick up a
    /// `honeycell keys rotate`); unknown `kid`s trigger a re-read at once.
    pub signing_key_reload: String,
    /// The tier of orgs without one (and of orgs not registered at all).
    pub default_tier: String,
    /// Quota tiers by name (`[control.tiers.<name>]`); none: no quotas.
    pub tiers: BTreeMap<String, TierConfig>,
}

/// `[control.tiers.<name>]`: one quota tier. Absent keys: no limit.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TierConfig {
    /// Stored events (segments and WAL), in GB (10^9 bytes).
    pub max_storage_gb: Option<f64>,
    /// Requests per second for the org (replaces rate_limiting.org_max_qps).
    pub max_qps: Option<u32>,
    /// Operations of the org in flight at once on its owning cell; beyond,
    /// 429 `too_many_concurrent_requests`. (Per request rather than per TCP
    /// connection: with HTTP/2 and gRPC one connection carries many
    /// requests, and a connection's org is known only once it authenticates.)
    pub max_concurrent_requests: Option<u32>,
    /// Flight SQL queries of the org running at once (in the whole
    /// process); beyond, RESOURCE_EXHAUSTED. Absent: `flight_sql.max_queries_per_org`.
    pub max_concurrent_queries: Option<u32>,
    /// Seconds of computing the org's Flight SQL queries may use per
    /// minute (1 to 3600); beyond, RESOURCE_EXHAUSTED with `retry-after`.
    /// Absent: `flight_sql.org_query_seconds_per_minute`.
    pub query_seconds_per_minute: Option<u32>,
}

/// The tiers, resolved for lookups.
#[derive(Debug, Default)]
pub struct Tiers {
    default_tier: String,
    tiers: BTreeMap<String, TierConfig>,
}

impl Tiers {
    /// True when no tier limits anything (lookups are skipped).
    pub fn is_unlimited(&self) -> bool {
        self.tiers.values().all(|t| {
            t.max_storage_gb.is_none()
                && t.max_qps.is_none()
                && t.max_concurrent_requests.is_none()
                && t.max_concurrent_queries.is_none()
                && t.query_seconds_per_minute.is_none()
        })
    }

    /// The limits of `tier` (`None`, or a tier no longer configured: the
    /// default tier).
    pub fn quota(&self, tier: Option<&str>) -> honeycell_auth::Quota {
        let t = tier
            .and_then(|t| self.tiers.get(t))
            .or_else(|| self.tiers.get(&self.default_tier));
        match t {
            None => honeycell_auth::Quota::default(),
            Some(t) => honeycell_auth::Quota {
                max_stored_bytes: t.max_storage_gb.map(|gb| (gb * 1e9) as u64),
                max_qps: t.max_qps,
                max_concurrent: t.max_concurrent_requests,
                max_queries: t.max_concurrent_queries,
                query_seconds_per_minute: t.query_seconds_per_minute,
            },
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tiers.keys().map(String::as_str)
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            store: StoreKind::Embedded,
            embedded_path: None,
            postgres_url: None,
            pool_size_per_cell: 2,
            connect_timeout: "5s".into(),
            api_key_cache_ttl: "1s".into(),
            last_used_flush: "5s".into(),
            brute_force_max_failures: 10,
            brute_force_window: "1m".into(),
            access_token_ttl: "15m".into(),
            refresh_token_ttl: "7d".into(),
            signing_key_reload: "30s".into(),
            default_tier: "default".into(),
            tiers: BTreeMap::new(),
        }
    }
}

impl std::fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlConfig")
            .field("store", &self.store)
            .field("embedded_path", &self.embedded_path)
            .field(
                "postgres_url",
                &self.postgres_url.as_ref().map(|_| "<redacted>"),
            )
            .field("pool_size_per_cell", &self.pool_size_per_cell)
            .field("connect_timeout", &self.connect_timeout)
            .field("api_key_cache_ttl", &self.api_key_cache_ttl)
            .field("last_used_flush", &self.last_used_flush)
            .field("brute_force_max_failures", &self.brute_force_max_failures)
            .field("brute_force_window", &self.brute_force_window)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("refresh_token_ttl", &self.refresh_token_ttl)
            .field("signing_key_reload", &self.signing_key_reload)
            .field("default_tier", &self.default_tier)
            .field("tiers", &self.tiers)
            .finish()
    }
}

/// How each cell opens its store: the embedded store is one handle shared
/// by reference; PostgreSQL is a configuration each cell connects with,
/// inside its own runtime, so that it gets its own pool.
#[derive(Clone, Debug)]
pub enum StoreOpener {
    Embedded(EmbeddedStore),
    Postgres(PgConfig),
}

impl StoreOpener {
    /// Opens this cell's store (no migrations: [`ControlConfig::prepare`]
    /// applied them once at start).
    pub async fn open(&self) -> Result<Store> {
        Ok(match self {
            StoreOpener::Embedded(s) => Store::Embedded(s.clone()),
            StoreOpener::Postgres(cfg) => {
                Store::Postgres(PgStore::connect_without_migrating(cfg).await?)
            }
        })
    }

    pub fn backend(&self) -> &'static str {
        match self {
            StoreOpener::Embedded(_) => "embedded",
            StoreOpener::Postgres(_) => "postgres",
        }
    }
}

impl ControlConfig {
    /// Checks the section; the error names the key to fix.
    pub fn validate(&self) -> Result<()> {
        self.timeout()?;
        self.last_used_flush()?;
        self.brute_force()?;
        self.token_ttls()?;
        self.signing_key_reload()?;
        for (name, t) in &self.tiers {
            if t.max_storage_gb.is_some_and(|g| g.is_nan() || g <= 0.0)
                || t.max_qps == Some(0)
                || t.max_concurrent_requests == Some(0)
                || t.max_concurrent_queries == Some(0)
            {
                return Err(Error::Config(format!(
                    "control.tiers.{name}: max_storage_gb, max_qps, max_concurrent_requests and max_concurrent_queries must be above 0"
                )));
            }
            if t.query_seconds_per_minute
                .is_some_and(|s| !(1..=3_600).contains(&s))
            {
                return Err(Error::Config(format!(
                    "control.tiers.{name}.query_seconds_per_minute must be from 1 to 3600 (60 is one query worker's whole time)"
                )));
            }
        }
        if !self.tiers.is_empty() && !self.tiers.contains_key(&self.default_tier) {
            return Err(Error::Config(format!(
                "control.default_tier {:?} is not one of the configured tiers ({})",
                self.default_tier,
                self.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if self.api_key_cache_ttl()? > Duration::from_secs(1) {
            return Err(Error::Config(format!(
                "control.api_key_cache_ttl {:?} is over 1s: revocations must reach every cell within a second",
                self.api_key_cache_ttl
            )));
        }
        if self.pool_size_per_cell == 0 {
            return Err(Error::Config(
                "control.pool_size_per_cell must be at least 1".into(),
            ));
        }
        if self.store == StoreKind::Postgres && self.postgres_url.is_none() {
            return Err(Error::Config(
                "control.store = \"postgres\" needs control.postgres_url (or HONEYCELL_CONTROL__POSTGRES_URL)".into(),
            ));
        }
        Ok(())
    }

    fn timeout(&self) -> Result<Duration> {
        duration("connect_timeout", &self.connect_timeout)
    }

    pub fn api_key_cache_ttl(&self) -> Result<Duration> {
        duration("api_key_cache_ttl", &self.api_key_cache_ttl)
    }

    pub fn brute_force(&self) -> Result<crate::BruteForce> {
        let window = duration("brute_force_window", &self.brute_force_window)?;
        if self.brute_force_max_failures == 0 || window.is_zero() {
            return Err(Error::Config(
                "control.brute_force_max_failures and control.brute_force_window must be above 0"
                    .into(),
            ));
        }
        Ok(crate::BruteForce {
            max_failures: self.brute_force_max_failures,
            window,
        })
    }

    /// (access, refresh) token lifetimes.
    pub fn token_ttls(&self) -> Result<(Duration, Duration)> {
        let access = duration("access_token_ttl", &self.access_token_ttl)?;
        let refresh = duration("refresh_token_ttl", &self.refresh_token_ttl)?;
        if access < Duration::from_secs(1) || refresh <= access {
            return Err(Error::Config(
                "control.access_token_ttl must be at least 1s and control.refresh_token_ttl longer than it".into(),
            ));
        }
        Ok((access, refresh))
    }

    /// The tiers for lookups.
    pub fn tiers(&self) -> Tiers {
        Tiers {
            default_tier: self.default_tier.clone(),
            tiers: self.tiers.clone(),
        }
    }

    pub fn signing_key_reload(&self) -> Result<Duration> {
        duration("signing_key_reload", &self.signing_key_reload)
    }

    pub fn last_used_flush(&self) -> Result<Duration> {
        let d = duration("last_used_flush", &self.last_used_flush)?;
        if d.is_zero() {
            return Err(Error::Config(
                "control.last_used_flush must be above 0".into(),
            ));
        }
        Ok(d)
    }

    /// The embedded store's file under `data_dir`.
    pub fn embedded_file(&self, data_dir: &Path) -> PathBuf {
        self.embedded_path
            .clone()
            .unwrap_or_else(|| data_dir.join("control").join("control.redb"))
    }

    /// The PostgreSQL settings of one cell's pool.
    pub fn pg_config(&self) -> Result<PgConfig> {
        let url = self
            .postgres_url
            .clone()
            .ok_or_else(|| Error::Config("control.postgres_url is not set".into()))?;
        Ok(PgConfig {
            url,
            pool_size: self.pool_size_per_cell,
            connect_timeout: self.timeout()?,
        })
    }

    /// Once, at start (or by `honeycell migrate`): opens the embedded store,
    /// or connects to PostgreSQL and applies pending migrations. Returns
    /// what each cell opens its own store from, and a store for the caller.
    pub async fn prepare(&self, data_dir: &Path) -> Result<(StoreOpener, Store)> {
        self.validate()?;
        let (opener, store) = self.open_store(data_dir).await?;
        crate::ensure_signing_key(&store).await?;
        Ok((opener, store))
    }

    async fn open_store(&self, data_dir: &Path) -> Result<(StoreOpener, Store)> {
        match self.store {
            StoreKind::Embedded => {
                let file = self.embedded_file(data_dir);
                let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(file))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))??;
                Ok((StoreOpener::Embedded(store.clone()), Store::Embedded(store)))
            }
            StoreKind::Postgres => {
                let cfg = self.pg_config()?;
                let store = PgStore::connect(&cfg).await?;
                Ok((StoreOpener::Postgres(cfg), Store::Postgres(store)))
            }
        }
    }
}
