//! The connection handling of the HTTP and Arrow Flight listeners: limits,
//! timeouts and TLS.
//!
//! TLS: rustls from PEM certificate and key files, reloaded without a
//! restart, and optional mutual TLS for Flight (clients must present a
//! certificate signed by `client_ca_path`). [`Tls`] holds the current rustls
//! configurations behind a lock that is read once per accepted connection;
//! [`Tls::watch`] re-reads the files every `reload_interval` and swaps in new
//! configurations when they changed. A broken file on reload is logged and
//! the previous certificate stays in use: a bad deploy of a certificate never
//! takes the server down.
//!
//! Connections (`conn.rs`): [`conn::Connections`] is one cell's accept layer,
//! used by every listener, plaintext or TLS. It keeps the cell under
//! `[connections] max_per_cell` (refusing the rest cleanly), backs off on
//! accept errors, runs TLS handshakes in their own tasks (bounded in number,
//! each with a deadline, so a slow or hostile client never holds up the
//! accept loop), and hands out [`conn::Conn`]s that close themselves once
//! no request has been in flight for `idle_timeout`. The HTTP and Flight
//! servers (`api`, `flight`) set hyper's header-read timeout and HTTP/2
//! keep-alive pings from the same configuration. This crate does not parse
//! HTTP: it only counts requests the servers report.

pub mod conn;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;
pub use tokio_rustls::server::TlsStream;

/// Errors of this crate: each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tls.{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tls.{key}: {path}: {message}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("tls: {0}")]
    Invalid(String),
    #[error("tls: {what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("connections.{key}: {message}")]
    Connections { key: &'static str, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `[tls]` of the server configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first). With `key_path`, HTTP and Flight
    /// serve TLS only.
    pub cert_path: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<PathBuf>,
    /// PEM certificates of the CA that signs Flight clients' certificates.
    pub client_ca_path: Option<PathBuf>,
    /// Refuse Flight clients without a certificate from `client_ca_path`
    /// (without it, a certificate is asked for but optional).
    pub require_client_cert: bool,
    /// How often the files are checked for changes, e.g. `"10s"`.
    pub reload_interval: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_path: None,
            key_path: None,
            client_ca_path: None,
            require_client_cert: false,
            reload_interval: "10s".into(),
        }
    }
}

impl TlsConfig {
    /// Whether TLS is configured at all.
    pub fn enabled(&self) -> bool {
        self.cert_path.is_some() || self.key_path.is_some()
    }

    /// Checks the settings fit together (the files are read by [`Tls::load`]).
    pub fn validate(&self) -> Result<()> {
        match (&self.cert_path, &self.key_path) {
            (Some(_), None) => {
                return Err(Error::Invalid(
                    "cert_path is set but key_path is not: set both (or neither, for plaintext)"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::Invalid(
                    "key_path is set but cert_path is not: set both (or neither, for plaintext)"
                        .into(),
                ));
            }
            _ => {}
        }
        if self.client_ca_path.is_some() && !self.enabled() {
            return Err(Error::Invalid(
                "client_ca_path needs TLS: set cert_path and key_path too".into(),
            ));
        }
        if self.require_client_cert && self.client_ca_path.is_none() {
            return Err(Error::Invalid(
                "require_client_cert = true needs client_ca_path (the CA that signs client certificates)".into(),
            ));
        }
        self.reload_interval()?;
        Ok(())
    }

    pub fn reload_interval(&self) -> Result<Duration> {
        let d = humantime::parse_duration(&self.reload_interval).map_err(|e| {
            Error::Invalid(format!(
                "reload_interval {:?}: {e} (use e.g. \"10s\")",
                self.reload_interval
            ))
        })?;
        if d < Duration::from_millis(100) {
            return Err(Error::Invalid(format!(
                "reload_interval {:?} is too short: use at least 100ms",
                self.reload_interval
            )));
        }
        Ok(d)
    }
}

/// Which listener a configuration is for: HTTP never asks for client
/// certificates; Flight does when a client CA is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Http,
    Flight,
}

/// The bytes of the configured files, as last loaded.
#[derive(Clone, PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// The live TLS configuration of the server, shared by every cell.
pub struct Tls {
    config: TlsConfig,
    http: RwLock<Arc<ServerConfig>>,
    flight: RwLock<Arc<ServerConfig>>,
    files: Mutex<Files>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_path", &self.config.cert_path)
            .field("client_ca_path", &self.config.client_ca_path)
            .field("require_client_cert", &self.config.require_client_cert)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the files; `None` when TLS is not configured.
    pub fn load(config: &TlsConfig) -> Result<Option<Arc<Tls>>> {
        config.validate()?;
        if !config.enabled() {
            return Ok(None);
        }
        let files = read_files(config)?;
        let (http, flight) = build(config, &files)?;
        Ok(Some(Arc::new(Tls {
            config: config.clone(),
            http: RwLock::new(Arc::new(http)),
            flight: RwLock::new(Arc::new(flight)),
            files: Mutex::new(files),
        })))
    }

    /// Whether Flight asks clients for a certificate.
    pub fn flight_client_auth(&self) -> bool {
        self.config.client_ca_path.is_some()
    }

    /// An acceptor with the current configuration of `endpoint`.
    pub fn acceptor(&self, endpoint: Endpoint) -> TlsAcceptor {
        let lock = match endpoint {
            Endpoint::Http => &self.http,
            Endpoint::Flight => &self.flight,
        };
        let config = lock.read().unwrap_or_else(|p| p.into_inner()).clone();
        TlsAcceptor::from(config)
    }

    /// Re-reads the files and, when they changed, swaps in the new
    /// configuration. `Ok(true)` when it did; on error the old one stays.
    pub fn reload(&self) -> Result<bool> {
        let files = read_files(&self.config)?;
        let mut last = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if *last == files {
            return Ok(false);
        }
        let (http, flight) = build(&self.config, &files)?;
        *self.http.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(http);
        *self.flight.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(flight);
        *last = files;
        Ok(true)
    }

    /// Reloads every `reload_interval`, forever (run it beside the server
    /// and drop it at shutdown). New connections get the new certificate;
    /// open ones keep theirs.
    pub async fn watch(self: Arc<Self>) {
        let every = self
            .config
            .reload_interval()
            .unwrap_or(Duration::from_secs(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(true) => tracing::info!(
                    cert = %self.config.cert_path.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
                    "TLS certificate reloaded"
                ),
                Ok(false) => {}
                Err(e) => tracing::error!(
                    error = %e,
                    "TLS reload failed; still serving the previous certificate"
                ),
            }
        }
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn read_files(config: &TlsConfig) -> Result<Files> {
    let (Some(cert), Some(key)) = (&config.cert_path, &config.key_path) else {
        return Err(Error::Invalid(
            "cert_path and key_path must both be set".into(),
        ));
    };
    Ok(Files {
        cert: read("cert_path", cert)?,
        key: read("key_path", key)?,
        client_ca: config
            .client_ca_path
            .as_deref()
            .map(|p| read("client_ca_path", p))
            .transpose()?,
    })
}

fn certificates(
    key: &'static str,
    path: Option<&Path>,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>> {
    let path = path.map(Path::to_owned).unwrap_or_default();
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            key,
            path: path.clone(),
            message: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            key,
            path,
            message: "no CERTIFICATE block found (expected PEM)".into(),
        });
    }
    Ok(certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The HTTP and Flight configurations for `files`.
fn build(config: &TlsConfig, files: &Files) -> Result<(ServerConfig, ServerConfig)> {
    let chain = certificates("cert_path", config.cert_path.as_deref(), &files.cert)?;
    let key_path = config.key_path.clone().unwrap_or_default();
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| Error::Pem {
        key: "key_path",
        path: key_path,
        message: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    let builder = || {
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| Error::Rustls {
                what: "protocol versions",
                source,
            })
    };

    let mut http = builder()?
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|source| Error::Rustls {
            what: "cert_path and key_path do not make a usable pair",
            source,
        })?;
    http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let flight = builder()?;
    let flight = match &files.client_ca {
        None => flight.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("client_ca_path", config.client_ca_path.as_deref(), pem)? {
                roots.add(cert).map_err(|source| Error::Rustls {
                    what: "client_ca_path holds a certificate that is not a usable CA",
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if config.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| Error::Invalid(format!("client_ca_path: {e}")))?;
            flight.with_client_cert_verifier(verifier)
        }
    };
    let mut flight = flight
        .with_single_cert(chain, key)
        .map_err(|source| Error::Rustls {
            what: "cert_path and key_path do not make a usable pair",
            source,
        })?;
    flight.alpn_protocols = vec![b"h2".to_vec()];
    Ok((http, flight))
}
