//! The PostgreSQL control store: tokio-postgres through a small deadpool
//! pool, versioned migrations, TLS through rustls.
//!
//! A [`PgStore`] is opened inside the runtime that will use it: connections
//! are driven by tasks spawned on that runtime, so a cell that opens its own
//! store has its own pool and connections, shared with no other cell.
//!
//! `sslmode` follows libpq: `disable`; `prefer` and `require` encrypt without
//! checking the certificate (`require` refuses plaintext); `verify-ca` checks
//! the chain against `sslrootcert` (else the Mozilla roots), `verify-full`
//! also the host name. tokio-postgres itself knows only disable/prefer/
//! require, so the `sslmode` and `sslrootcert` parameters are taken out of
//! the URL here and turned into a rustls client configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use honeycell_auth::Role;
use honeycell_types::OrgId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres::{NoTls, Row};

use crate::audit::{GENESIS, chain};
use crate::error::{Error, Result};
use crate::model::{
    ApiKey, AuditDraft, AuditEntry, AuditQuery, Membership, OAuthLogin, Org, RefreshState,
    RefreshToken, Rotation, SigningKey, User,
};

/// The migrations, in order; version = position + 1. Applied ones are never
/// edited: a schema change is a new file.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "control_plane",
        include_str!("../migrations/0001_control_plane.sql"),
    ),
    (
        "oauth_logins",
        include_str!("../migrations/0002_oauth_logins.sql"),
    ),
];

/// The schema version this binary migrates PostgreSQL to.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Serialises concurrent migrators (several cells or servers starting at
/// once) through a transaction-scoped advisory lock.
const MIGRATION_LOCK: i64 = 0x686f_6e65_7963_656c; // "honeycel"

/// How to reach PostgreSQL.
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// `postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=/ca.pem`
    pub url: String,
    /// Connections in this store's pool (per cell).
    pub pool_size: usize,
    pub connect_timeout: Duration,
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tls {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Splits `sslmode` and `sslrootcert` out of a URL's query string.
fn split_tls(url: &str) -> Result<(String, Tls, Option<PathBuf>)> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = Tls::Prefer;
    let mut root = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => {
                mode = match v {
                    "disable" => Tls::Disable,
                    "allow" | "prefer" => Tls::Prefer,
                    "require" => Tls::Require,
                    "verify-ca" => Tls::VerifyCa,
                    "verify-full" => Tls::VerifyFull,
                    other => {
                        return Err(Error::Config(format!(
                            "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                        )));
                    }
                }
            }
            Some(("sslrootcert", v)) => root = Some(PathBuf::from(v)),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, mode, root))
}

/// Accepts any server certificate (libpq's `require`), still checking that
/// the handshake is signed by the presented key.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the host name (libpq's `verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn tls_config(mode: Tls, root: Option<&PathBuf>) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    if matches!(mode, Tls::Prefer | Tls::Require) && root.is_none() {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| Error::Config(format!("sslrootcert {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "sslrootcert {} holds no PEM certificate",
                    path.display()
                )));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| Error::Config(format!("sslrootcert {}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let builder = builder.dangerous();
    Ok(if mode == Tls::VerifyFull {
        builder.with_custom_certificate_verifier(webpki)
    } else {
        // libpq: with a root certificate file, `require` behaves as
        // `verify-ca`.
        builder.with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
    }
    .with_no_client_auth())
}

/// The PostgreSQL store. Cheap to clone (the pool is an `Arc`).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    tls: &'static str,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool_size", &self.pool.status().max_size)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

fn org_of(s: String) -> Result<OrgId> {
    OrgId::new(s).map_err(|e| Error::corrupt("org id", e))
}

fn role_of(s: &str) -> Result<Role> {
    s.parse().map_err(|e| Error::corrupt("role", e))
}

fn hash32(what: &str, v: Vec<u8>) -> Result<[u8; 32]> {
    v.try_into()
        .map_err(|v: Vec<u8>| Error::corrupt(what, format!("{} bytes, expected 32", v.len())))
}

const KEY_COLUMNS: &str = "id, org_id, name, secret_sha256, role, scopes, created_by, created_at_us, expires_at_us, revoked_at_us, last_used_us";

fn api_key_of(r: &Row) -> Result<ApiKey> {
    Ok(ApiKey {
        id: r.try_get(0)?,
        org: org_of(r.try_get(1)?)?,
        name: r.try_get(2)?,
        secret_sha256: hash32("API key hash", r.try_get(3)?)?,
        role: role_of(r.try_get(4)?)?,
        scopes: r.try_get(5)?,
        created_by: r.try_get(6)?,
        created_at_us: r.try_get(7)?,
        expires_at_us: r.try_get(8)?,
        revoked_at_us: r.try_get(9)?,
        last_used_us: r.try_get(10)?,
    })
}

const REFRESH_COLUMNS: &str =
    "id, family, org_id, subject, role, issued_at_us, expires_at_us, state";

fn refresh_of(r: &Row) -> Result<RefreshToken> {
    let state: &str = r.try_get(7)?;
    Ok(RefreshToken {
        id: r.try_get(0)?,
        family: r.try_get(1)?,
        org: org_of(r.try_get(2)?)?,
        subject: r.try_get(3)?,
        role: role_of(r.try_get(4)?)?,
        issued_at_us: r.try_get(5)?,
        expires_at_us: r.try_get(6)?,
        state: RefreshState::parse(state)
            .ok_or_else(|| Error::corrupt("refresh token state", state))?,
    })
}

const AUDIT_COLUMNS: &str =
    "org_id, seq, at_us, actor, action, resource, result, trace_id, detail, prev_hash, hash";

fn audit_of(r: &Row) -> Result<AuditEntry> {
    let seq: i64 = r.try_get(1)?;
    Ok(AuditEntry {
        seq: seq as u64,
        draft: AuditDraft {
            org: org_of(r.try_get(0)?)?,
            at_us: r.try_get(2)?,
            actor: r.try_get(3)?,
            action: r.try_get(4)?,
            resource: r.try_get(5)?,
            result: r.try_get(6)?,
            trace_id: r.try_get(7)?,
            detail: r.try_get(8)?,
        },
        prev_hash: hash32("audit prev_hash", r.try_get(9)?)?,
        hash: hash32("audit hash", r.try_get(10)?)?,
    })
}

fn user_of(r: &Row) -> Result<User> {
    Ok(User {
        id: r.try_get(0)?,
        email: r.try_get(1)?,
        created_at_us: r.try_get(2)?,
    })
}

/// A unique-key violation becomes [`Error::Conflict`].
fn conflict(what: String) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            Error::Conflict { what }
        } else {
            Error::Postgres(e)
        }
    }
}

impl PgStore {
    /// Opens a pool (connecting once to check the settings) and applies any
    /// pending migrations.
    pub async fn connect(config: &PgConfig) -> Result<Self> {
        let store = Self::connect_without_migrating(config).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens a pool without touching the schema (`honeycell migrate` and
    /// tests use [`PgStore::migrate`] explicitly).
    pub async fn connect_without_migrating(config: &PgConfig) -> Result<Self> {
        let (url, mode, root) = split_tls(&config.url)?;
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("PostgreSQL URL: {e}")))?;
        pg.connect_timeout(config.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("honeycell");
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match mode {
            Tls::Disable => {
                pg.ssl_mode(SslMode::Disable);
                Manager::from_config(pg, NoTls, manager_config)
            }
            _ => {
                pg.ssl_mode(if mode == Tls::Prefer {
                    SslMode::Prefer
                } else {
                    SslMode::Require
                });
                let tls =
                    tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(mode, root.as_ref())?);
                Manager::from_config(pg, tls, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Config(format!("PostgreSQL pool: {e}")))?;
        let store = PgStore {
            pool,
            tls: match mode {
                Tls::Disable => "disable",
                Tls::Prefer => "prefer",
                Tls::Require => "require",
                Tls::VerifyCa => "verify-ca",
                Tls::VerifyFull => "verify-full",
            },
        };
        store.ping().await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => Error::Postgres(e),
            other => Error::Pool(other.to_string()),
        })
    }

    /// Applies pending migrations; returns the schema version afterwards.
    pub async fn migrate(&self) -> Result<i32> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Everything under the lock, the bookkeeping table's creation too:
        // concurrent CREATE TABLE IF NOT EXISTS can still collide on the
        // catalog ("type already exists").
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS honeycell_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let current: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM honeycell_migrations",
                &[],
            )
            .await?
            .try_get(0)?;
        let known = SCHEMA_VERSION;
        if current > known {
            return Err(Error::SchemaTooNew {
                found: current,
                known,
            });
        }
        for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i as i32 + 1;
            let fail = |source| Error::Migration {
                version,
                name,
                source,
            };
            tx.batch_execute(sql).await.map_err(fail)?;
            tx.execute(
                "INSERT INTO honeycell_migrations (version, name) VALUES ($1, $2)",
                &[&version, name],
            )
            .await
            .map_err(fail)?;
            tracing::info!(version, name, "applied control-plane migration");
        }
        tx.commit().await?;
        Ok(known)
    }

    /// The applied schema version (0: none).
    pub async fn schema_version(&self) -> Result<i32> {
        let client = self.client().await?;
        let exists: bool = client
            .query_one(
                "SELECT to_regclass('honeycell_migrations') IS NOT NULL",
                &[],
            )
            .await?
            .try_get(0)?;
        if !exists {
            return Ok(0);
        }
        let row = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM honeycell_migrations",
                &[],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// The TLS mode in use (`disable`, `require`, `verify-full`, …).
    pub fn tls_mode(&self) -> &'static str {
        self.tls
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    pub(crate) async fn create_org(&self, org: &Org) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO orgs (id, name, tier, created_at_us) VALUES ($1, $2, $3, $4)",
                &[&org.id.as_str(), &org.name, &org.tier, &org.created_at_us],
            )
            .await
            .map_err(conflict(format!("org {}", org.id)))?;
        Ok(())
    }

    pub(crate) async fn org(&self, id: &OrgId) -> Result<Option<Org>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id, name, tier, created_at_us FROM orgs WHERE id = $1",
                &[&id.as_str()],
            )
            .await?;
        row.map(|r| {
            Ok(Org {
                id: org_of(r.try_get(0)?)?,
                name: r.try_get(1)?,
                tier: r.try_get(2)?,
                created_at_us: r.try_get(3)?,
            })
        })
        .transpose()
    }

    pub(crate) async fn set_org_tier(&self, id: &OrgId, tier: &str) -> Result<bool> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE orgs SET tier = $2 WHERE id = $1",
                &[&id.as_str(), &tier],
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn create_user(&self, user: &User) -> Result<()> {
        let email = user.email.to_lowercase();
        self.client()
            .await?
            .execute(
                "INSERT INTO users (id, email, created_at_us) VALUES ($1, $2, $3)",
                &[&user.id, &email, &user.created_at_us],
            )
            .await
            .map_err(conflict(format!("user {} or e-mail {email}", user.id)))?;
        Ok(())
    }

    pub(crate) async fn user(&self, id: &str) -> Result<Option<User>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id, email, created_at_us FROM users WHERE id = $1",
                &[&id],
            )
            .await?;
        row.as_ref().map(user_of).transpose()
    }

    pub(crate) async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT id, email, created_at_us FROM users WHERE email = $1",
                &[&email.to_lowercase()],
            )
            .await?;
        row.as_ref().map(user_of).transpose()
    }

    pub(crate) async fn set_membership(
        &self,
        org: &OrgId,
        user_id: &str,
        role: Role,
    ) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3)
                 ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
                &[&org.as_str(), &user_id, &role.as_str()],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn remove_membership(&self, org: &OrgId, user_id: &str) -> Result<bool> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM memberships WHERE org_id = $1 AND user_id = $2",
                &[&org.as_str(), &user_id],
            )
            .await?;
        Ok(n == 1)
    }

    async fn memberships(&self, sql: &str, key: &str) -> Result<Vec<Membership>> {
        let rows = self.client().await?.query(sql, &[&key]).await?;
        rows.iter()
            .map(|r| {
                Ok(Membership {
                    org: org_of(r.try_get(0)?)?,
                    user_id: r.try_get(1)?,
                    role: role_of(r.try_get(2)?)?,
                })
            })
            .collect()
    }

    pub(crate) async fn memberships_of_user(&self, user_id: &str) -> Result<Vec<Membership>> {
        self.memberships(
            "SELECT org_id, user_id, role FROM memberships WHERE user_id = $1 ORDER BY org_id",
            user_id,
        )
        .await
    }

    pub(crate) async fn members_of_org(&self, org: &OrgId) -> Result<Vec<Membership>> {
        self.memberships(
            "SELECT org_id, user_id, role FROM memberships WHERE org_id = $1 ORDER BY user_id",
            org.as_str(),
        )
        .await
    }

    pub(crate) async fn link_identity(
        &self,
        provider: &str,
        subject: &str,
        user_id: &str,
    ) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO identities (provider, subject, user_id) VALUES ($1, $2, $3)
                 ON CONFLICT (provider, subject) DO UPDATE SET user_id = excluded.user_id",
                &[&provider, &subject, &user_id],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn user_by_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<User>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT u.id, u.email, u.created_at_us FROM identities i
                 JOIN users u ON u.id = i.user_id
                 WHERE i.provider = $1 AND i.subject = $2",
                &[&provider, &subject],
            )
            .await?;
        row.as_ref().map(user_of).transpose()
    }

    pub(crate) async fn insert_oauth_login(&self, l: &OAuthLogin) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM oauth_logins WHERE expires_at_us < $1",
                &[&honeycell_types::now_us()],
            )
            .await?;
        client
            .execute(
                "INSERT INTO oauth_logins (state_sha256, provider, pkce_verifier, nonce, org_id, expires_at_us)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &l.state_sha256,
                    &l.provider,
                    &l.pkce_verifier,
                    &l.nonce,
                    &l.org.as_ref().map(OrgId::as_str),
                    &l.expires_at_us,
                ],
            )
            .await
            .map_err(conflict("oauth login state".into()))?;
        Ok(())
    }

    pub(crate) async fn take_oauth_login(
        &self,
        state_sha256: &str,
        now_us: i64,
    ) -> Result<Option<OAuthLogin>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "DELETE FROM oauth_logins WHERE state_sha256 = $1
                 RETURNING state_sha256, provider, pkce_verifier, nonce, org_id, expires_at_us",
                &[&state_sha256],
            )
            .await?;
        let Some(r) = row else { return Ok(None) };
        let org: Option<String> = r.try_get(4)?;
        let login = OAuthLogin {
            state_sha256: r.try_get(0)?,
            provider: r.try_get(1)?,
            pkce_verifier: r.try_get(2)?,
            nonce: r.try_get(3)?,
            org: org
                .map(OrgId::new)
                .transpose()
                .map_err(|e| Error::corrupt("oauth login", e))?,
            expires_at_us: r.try_get(5)?,
        };
        Ok((login.expires_at_us >= now_us).then_some(login))
    }

    pub(crate) async fn insert_api_key(&self, k: &ApiKey) -> Result<()> {
        self.client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                ),
                &[
                    &k.id,
                    &k.org.as_str(),
                    &k.name,
                    &k.secret_sha256.as_slice(),
                    &k.role.as_str(),
                    &k.scopes,
                    &k.created_by,
                    &k.created_at_us,
                    &k.expires_at_us,
                    &k.revoked_at_us,
                    &k.last_used_us,
                ],
            )
            .await
            .map_err(conflict(format!("API key {}", k.id)))?;
        Ok(())
    }

    pub(crate) async fn api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"),
                &[&id],
            )
            .await?;
        row.as_ref().map(api_key_of).transpose()
    }

    pub(crate) async fn api_keys_of_org(&self, org: &OrgId) -> Result<Vec<ApiKey>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE org_id = $1 ORDER BY id"),
                &[&org.as_str()],
            )
            .await?;
        rows.iter().map(api_key_of).collect()
    }

    pub(crate) async fn revoke_api_key(&self, org: &OrgId, id: &str, at_us: i64) -> Result<bool> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE api_keys SET revoked_at_us = $3
                 WHERE id = $1 AND org_id = $2 AND revoked_at_us IS NULL",
                &[&id, &org.as_str(), &at_us],
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn api_keys_revoked_since(&self, since_us: i64) -> Result<Vec<(String, i64)>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, revoked_at_us FROM api_keys WHERE revoked_at_us >= $1",
                &[&since_us],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub(crate) async fn touch_api_keys(&self, uses: &[(String, i64)]) -> Result<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let (ids, times): (Vec<&str>, Vec<i64>) =
            uses.iter().map(|(id, at)| (id.as_str(), *at)).unzip();
        self.client()
            .await?
            .execute(
                "UPDATE api_keys k
                 SET last_used_us = greatest(coalesce(k.last_used_us, u.at), u.at)
                 FROM (SELECT id, max(at) AS at FROM unnest($1::text[], $2::bigint[]) AS t(id, at)
                       GROUP BY id) u
                 WHERE k.id = u.id",
                &[&ids, &times],
            )
            .await?;
        Ok(())
    }

    async fn put_refresh(c: &impl GenericClient, t: &RefreshToken) -> Result<()> {
        c.execute(
            &format!(
                "INSERT INTO refresh_tokens ({REFRESH_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            &[
                &t.id,
                &t.family,
                &t.org.as_str(),
                &t.subject,
                &t.role.as_str(),
                &t.issued_at_us,
                &t.expires_at_us,
                &t.state.as_str(),
            ],
        )
        .await
        .map_err(conflict(format!("refresh token {}", t.id)))?;
        Ok(())
    }

    pub(crate) async fn insert_refresh(&self, token: &RefreshToken) -> Result<()> {
        Self::put_refresh(&self.client().await?, token).await
    }

    pub(crate) async fn refresh(&self, id: &str) -> Result<Option<RefreshToken>> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE id = $1"),
                &[&id],
            )
            .await?;
        row.as_ref().map(refresh_of).transpose()
    }

    async fn revoke_family_in(c: &impl GenericClient, family: &str) -> Result<u64> {
        let n = c
            .execute(
                "UPDATE refresh_tokens SET state = 'revoked' WHERE family = $1 AND state = 'active'",
                &[&family],
            )
            .await?;
        c.execute(
            "UPDATE refresh_tokens SET state = 'revoked' WHERE family = $1 AND state <> 'revoked'",
            &[&family],
        )
        .await?;
        Ok(n)
    }

    pub(crate) async fn rotate_refresh(
        &self,
        id: &str,
        now_us: i64,
        next: &RefreshToken,
    ) -> Result<Rotation> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE id = $1 FOR UPDATE"),
                &[&id],
            )
            .await?;
        let outcome = match row.as_ref().map(refresh_of).transpose()? {
            None => Rotation::Unknown,
            Some(old) => match old.state {
                RefreshState::Revoked => Rotation::Revoked(old),
                RefreshState::Rotated => {
                    Self::revoke_family_in(&tx, &old.family).await?;
                    Rotation::ReuseDetected(old)
                }
                RefreshState::Active if now_us >= old.expires_at_us => Rotation::Expired(old),
                RefreshState::Active => {
                    tx.execute(
                        "UPDATE refresh_tokens SET state = 'rotated' WHERE id = $1",
                        &[&id],
                    )
                    .await?;
                    let mut next = next.clone();
                    next.family = old.family.clone();
                    Self::put_refresh(&tx, &next).await?;
                    Rotation::Rotated(old)
                }
            },
        };
        tx.commit().await?;
        Ok(outcome)
    }

    pub(crate) async fn revoke_refresh_family(&self, family: &str) -> Result<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let n = Self::revoke_family_in(&tx, family).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub(crate) async fn refresh_family_revoked(&self, family: &str) -> Result<bool> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM refresh_tokens WHERE family = $1 AND state = 'revoked')",
                &[&family],
            )
            .await?;
        Ok(row.get(0))
    }

    pub(crate) async fn insert_signing_key(&self, k: &SigningKey) -> Result<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO signing_keys (kid, alg, private_pem, public_pem, created_at_us, retired_at_us)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &k.kid,
                    &k.alg,
                    &k.private_pem,
                    &k.public_pem,
                    &k.created_at_us,
                    &k.retired_at_us,
                ],
            )
            .await
            .map_err(conflict(format!("signing key {}", k.kid)))?;
        Ok(())
    }

    pub(crate) async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT kid, alg, private_pem, public_pem, created_at_us, retired_at_us
                 FROM signing_keys ORDER BY created_at_us, kid",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SigningKey {
                    kid: r.try_get(0)?,
                    alg: r.try_get(1)?,
                    private_pem: r.try_get(2)?,
                    public_pem: r.try_get(3)?,
                    created_at_us: r.try_get(4)?,
                    retired_at_us: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub(crate) async fn retire_signing_key(&self, kid: &str, at_us: i64) -> Result<bool> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE signing_keys SET retired_at_us = coalesce(retired_at_us, $2) WHERE kid = $1",
                &[&kid, &at_us],
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn delete_signing_key(&self, kid: &str) -> Result<bool> {
        let n = self
            .client()
            .await?
            .execute("DELETE FROM signing_keys WHERE kid = $1", &[&kid])
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn append_audit(&self, drafts: Vec<AuditDraft>) -> Result<Vec<AuditEntry>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let insert = tx
            .prepare(&format!(
                "INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))
            .await?;
        let mut out = Vec::with_capacity(drafts.len());
        // Orgs in sorted order: concurrent appenders lock heads in the same
        // order and cannot deadlock.
        for (org, drafts) in crate::by_org(drafts) {
            tx.execute(
                "INSERT INTO audit_heads (org_id, seq, hash) VALUES ($1, 0, $2)
                 ON CONFLICT (org_id) DO NOTHING",
                &[&org.as_str(), &GENESIS.as_slice()],
            )
            .await?;
            let head = tx
                .query_one(
                    "SELECT seq, hash FROM audit_heads WHERE org_id = $1 FOR UPDATE",
                    &[&org.as_str()],
                )
                .await?;
            let seq: i64 = head.try_get(0)?;
            let hash = hash32("audit head", head.try_get(1)?)?;
            let (entries, (seq, hash)) = chain((seq as u64, hash), drafts);
            for e in &entries {
                let d = &e.draft;
                tx.execute(
                    &insert,
                    &[
                        &org.as_str(),
                        &(e.seq as i64),
                        &d.at_us,
                        &d.actor,
                        &d.action,
                        &d.resource,
                        &d.result,
                        &d.trace_id,
                        &d.detail,
                        &e.prev_hash.as_slice(),
                        &e.hash.as_slice(),
                    ],
                )
                .await?;
            }
            tx.execute(
                "UPDATE audit_heads SET seq = $2, hash = $3 WHERE org_id = $1",
                &[&org.as_str(), &(seq as i64), &hash.as_slice()],
            )
            .await?;
            out.extend(entries);
        }
        tx.commit().await?;
        Ok(out)
    }

    pub(crate) async fn audit_page(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let before = q.before_seq.map(|s| s as i64);
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log
                     WHERE org_id = $1
                       AND ($2::text IS NULL OR action = $2)
                       AND ($3::text IS NULL OR actor = $3)
                       AND ($4::bigint IS NULL OR at_us >= $4)
                       AND ($5::bigint IS NULL OR at_us < $5)
                       AND ($6::bigint IS NULL OR seq < $6)
                     ORDER BY seq DESC LIMIT $7"
                ),
                &[
                    &q.org.as_str(),
                    &q.action,
                    &q.actor,
                    &q.since_us,
                    &q.until_us,
                    &before,
                    &(q.limit as i64),
                ],
            )
            .await?;
        rows.iter().map(audit_of).collect()
    }

    pub(crate) async fn audit_range(
        &self,
        org: &OrgId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE org_id = $1 AND seq > $2
                     ORDER BY seq LIMIT $3"
                ),
                &[&org.as_str(), &(after_seq as i64), &(limit as i64)],
            )
            .await?;
        rows.iter().map(audit_of).collect()
    }

    pub(crate) async fn audit_orgs(&self) -> Result<Vec<OrgId>> {
        let rows = self
            .client()
            .await?
            .query("SELECT org_id FROM audit_heads ORDER BY org_id", &[])
            .await?;
        rows.iter().map(|r| org_of(r.try_get(0)?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let (url, mode, root) = split_tls(
            "postgres://u:p@db:5432/hc?application_name=x&sslmode=verify-full&sslrootcert=/ca.pem",
        )
        .unwrap();
        assert_eq!(url, "postgres://u:p@db:5432/hc?application_name=x");
        assert_eq!(mode, Tls::VerifyFull);
        assert_eq!(root, Some(PathBuf::from("/ca.pem")));
        let (url, mode, _) = split_tls("postgres://db/hc").unwrap();
        assert_eq!((url.as_str(), mode), ("postgres://db/hc", Tls::Prefer));
        let err = split_tls("postgres://db/hc?sslmode=bogus").unwrap_err();
        assert!(err.to_string().contains("sslmode=bogus"), "{err}");
    }
}
