//! One cell's Redis connection: a `redis` ConnectionManager (multiplexed,
//! reconnecting with backoff), made lazily so that a Redis that is down at
//! start only degrades the server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use crate::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where Redis is and how to trust it.
#[derive(Clone, Debug, Default)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port[/db]` or `rediss://…` (TLS).
    pub url: String,
    /// PEM CA certificates to trust for `rediss://` instead of the system's.
    pub ca_path: Option<PathBuf>,
}

impl RedisConfig {
    /// Checks the URL's scheme and that a CA goes with TLS.
    pub fn validate(&self) -> Result<()> {
        let tls = if self.url.starts_with("rediss://") {
            true
        } else if self.url.starts_with("redis://") {
            false
        } else {
            return Err(Error::Config(format!(
                "{:?} is not a Redis URL: use redis://host:6379 or rediss://host:6380 (TLS)",
                redact(&self.url)
            )));
        };
        if self.ca_path.is_some() && !tls {
            return Err(Error::Config(
                "redis_ca_path is set but redis_url is redis://; use rediss:// for TLS".into(),
            ));
        }
        redis::Client::open(self.url.as_str())
            .map_err(|e| Error::Config(format!("{}: {e}", redact(&self.url))))?;
        Ok(())
    }

    fn client(&self) -> Result<redis::Client> {
        let client = match &self.ca_path {
            None => redis::Client::open(self.url.as_str()),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| Error::Ca {
                    path: path.display().to_string(),
                    source,
                })?;
                redis::Client::build_with_tls(
                    self.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
        };
        client.map_err(|e| Error::Config(format!("{}: {e}", redact(&self.url))))
    }
}

/// The URL without its password, for messages and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// A cell's Redis connection. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    url: Arc<str>,
    conn: Arc<Mutex<Option<ConnectionManager>>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Prepares the connection (reading the CA file); connects on first use.
    pub fn new(config: &RedisConfig) -> Result<Redis> {
        config.validate()?;
        Ok(Redis {
            client: config.client()?,
            url: redact(&config.url).into(),
            conn: Arc::new(Mutex::new(None)),
        })
    }

    /// Whether it is `rediss://`.
    pub fn tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    fn unavailable(&self, e: &redis::RedisError) -> Error {
        Error::Unavailable {
            url: self.url.to_string(),
            message: e.to_string(),
        }
    }

    /// The connection, connecting now if there is none yet.
    pub async fn connection(&self) -> Result<ConnectionManager> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let c = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(|e| self.unavailable(&e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// `PING`: what `/ready` reports.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.connection().await?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut c)
            .await
            .map_err(|e| self.unavailable(&e))?;
        if pong != "PONG" {
            return Err(Error::Unavailable {
                url: self.url.to_string(),
                message: format!("PING answered {pong:?}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        let bad = RedisConfig {
            url: "http://user:hunter2@host:6379".into(),
            ca_path: None,
        };
        let e = bad
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("rediss://") && !e.contains("hunter2"), "{e}");
        let ca_without_tls = RedisConfig {
            url: "redis://host:6379".into(),
            ca_path: Some("/tmp/ca.pem".into()),
        };
        assert!(ca_without_tls.validate().is_err());
        assert_eq!(redact("rediss://u:p@h:6380/0"), "rediss://***@h:6380/0");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
