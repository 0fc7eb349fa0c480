//! The job queue's connection to Redis. DESIGN.md's queue runs on Redis
//! (one stream per org) when `redis_url` is set and on an embedded durable
//! queue otherwise; the queue itself arrives with the observer rules. What
//! is here already is each cell's own Redis connection, over TLS
//! (`rediss://`, optionally with a private CA) or plaintext, reconnecting on
//! its own, and the readiness probe `/ready` reports.
//!
//! Redis being unreachable is a degraded state, not a failure: the server
//! keeps serving (the queue will spill to its embedded store) and `/ready`
//! says so.

mod redis_conn;

pub use redis_conn::{Redis, RedisConfig};

/// Errors of this crate; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis_url: {0}")]
    Config(String),
    #[error("redis_ca_path: cannot read {path}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    #[error("Redis at {url}: {message}")]
    Unavailable { url: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
