use std::path::PathBuf;

use arrow_schema::ArrowError;
use honeycell_types::{ErrorClass, OrgId};

/// Errors of the storage crate. Variants carry the path, org or field at
/// fault so that a log line alone says where to look.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("corrupt file {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("{}", schema_message(.field, .row, .reason))]
    Schema {
        field: String,
        row: Option<usize>,
        reason: String,
    },

    #[error("invalid storage config `{key}`: {reason}")]
    Config { key: &'static str, reason: String },

    #[error(transparent)]
    Arrow(#[from] ArrowError),

    /// An earlier write or fsync of this org's WAL failed. Later offsets can
    /// no longer be made durable in order, so the org refuses writes until
    /// the process reopens it (after an fsync failure the page cache cannot
    /// be trusted either).
    #[error("event log of org {org} failed earlier and refuses writes until restart: {reason}")]
    OrgFailed { org: OrgId, reason: String },

    #[error("could not start storage I/O thread {thread}: {source}")]
    Spawn {
        thread: String,
        #[source]
        source: std::io::Error,
    },

    /// The store is shut down or its I/O thread is gone.
    #[error("storage is closed")]
    Closed,
}

/// "event 3: entity_id is empty; send 1 to 256 bytes" (the event's row in
/// its batch, from 0), or "column colour is not a column of events; …" for
/// what concerns a whole column of a client's batch.
fn schema_message(field: &str, row: &Option<usize>, reason: &str) -> String {
    match row {
        Some(row) => format!("event {row}: {field} {reason}"),
        None => format!("column {field} {reason}"),
    }
}

impl Error {
    /// Who is at fault, for the protocol layers' status codes.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Schema { .. } => ErrorClass::BadRequest,
            Error::Closed => ErrorClass::Unavailable,
            _ => ErrorClass::Internal,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn schema(field: &str, row: Option<usize>, reason: impl Into<String>) -> Self {
        Error::Schema {
            field: field.to_owned(),
            row,
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
