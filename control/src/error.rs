//! The one error type of `honeycell-control`.

use honeycell_types::ErrorClass;

/// Errors of the control plane store. Messages name the backend and what to
/// check; none carries secrets (API-key hashes, private keys, passwords).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("embedded control store at {path}: {source}")]
    Embedded {
        path: String,
        #[source]
        source: Box<redb::Error>,
    },

    #[error("PostgreSQL control store: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),

    #[error("PostgreSQL control store: no connection available: {0}")]
    Pool(String),

    #[error("PostgreSQL control store: migration {version} ({name}) failed: {}", pg_message(.source))]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error(
        "PostgreSQL control store: the database is at schema version {found}, newer than this binary knows ({known}); run a newer honeycell"
    )]
    SchemaTooNew { found: i32, known: i32 },

    #[error("control store configuration: {0}")]
    Config(String),

    #[error("{what} already exists")]
    Conflict { what: String },

    #[error("control store holds a record it cannot read ({what}): {reason}")]
    Corrupt { what: String, reason: String },

    #[error("control store task failed: {0}")]
    Task(String),

    /// A retired refresh token was presented again: its family is revoked.
    #[error(
        "this refresh token was already used; every token of its login has been revoked, sign in again"
    )]
    RefreshReuse {
        family: String,
        org: honeycell_types::OrgId,
        subject: String,
    },

    /// A sign-in through an OAuth2/OIDC provider was refused; `code` is the
    /// machine-readable reason (`state_mismatch`, `invalid_id_token`, …).
    #[error("{message}")]
    Login {
        class: ErrorClass,
        code: &'static str,
        message: String,
    },

    /// A presented credential was refused.
    #[error(transparent)]
    Auth(#[from] honeycell_auth::Error),
}

/// tokio-postgres displays a server error as just "db error": the server's
/// message, code and hint are what an operator needs.
fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
        if let Some(hint) = db.hint() {
            m.push_str("; hint: ");
            m.push_str(hint);
        }
        return m;
    }
    let mut m = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        m.push_str(": ");
        m.push_str(&s.to_string());
        source = s.source();
    }
    m
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// How a request that hit this error should be answered.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Conflict { .. } => ErrorClass::Conflict,
            Error::Auth(e) => e.class(),
            Error::RefreshReuse { .. } => ErrorClass::Unauthenticated,
            Error::Login { class, .. } => *class,
            Error::Config(_) => ErrorClass::Internal,
            _ => ErrorClass::Unavailable,
        }
    }

    pub(crate) fn embedded(path: &std::path::Path, e: impl Into<redb::Error>) -> Self {
        Error::Embedded {
            path: path.display().to_string(),
            source: Box::new(e.into()),
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
