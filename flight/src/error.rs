//! The one mapping from errors to gRPC statuses, and the flight crate's own
//! error enum.

use honeycell_types::ErrorClass;
use tonic::{Code, Status};

/// Errors of the Flight service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Auth(#[from] honeycell_auth::Error),
    #[error(transparent)]
    Cell(#[from] honeycell_cell::Error),
    #[error(transparent)]
    Storage(#[from] honeycell_storage::Error),
    #[error(transparent)]
    Control(honeycell_control::Error),
    #[error("invalid ticket: {reason}")]
    BadTicket { reason: String },
    #[error("invalid flight descriptor: {reason}")]
    BadDescriptor { reason: String },
    #[error("SQL error: {0}")]
    Sql(String),
    #[error("{what} is not supported: {hint}")]
    Unsupported {
        what: &'static str,
        hint: &'static str,
    },
    #[error("flight: {0}")]
    Flight(#[from] arrow_flight::error::FlightError),
    #[error("unknown action {name:?}; ListActions shows the supported ones")]
    UnknownAction { name: String },
    #[error("the query worker stopped before answering")]
    QueryWorkerGone,
    #[error("malformed Arrow IPC message: {reason}")]
    BadIpc { reason: String },
    /// A Flight SQL limit (memory, concurrency, computing time, text
    /// size); `retry`: when to try again, for limits that pass (what else
    /// runs, a budget that refills), `None` for the query's own size.
    #[error("{message}")]
    QueryLimit {
        message: String,
        retry: Option<std::time::Duration>,
    },
    #[error(
        "the query computed for longer than {limit:?} (flight_sql.query_timeout) and was stopped; filter, aggregate or LIMIT it"
    )]
    QueryTimeout { limit: std::time::Duration },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<honeycell_control::Error> for Error {
    fn from(e: honeycell_control::Error) -> Self {
        match e {
            honeycell_control::Error::Auth(a) => Error::Auth(a),
            e => Error::Control(e),
        }
    }
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Auth(e) => e.class(),
            Error::Cell(e) => e.class(),
            Error::Storage(e) => e.class(),
            Error::Control(e) => e.class(),
            Error::BadTicket { .. }
            | Error::BadDescriptor { .. }
            | Error::Sql(_)
            | Error::BadIpc { .. } => ErrorClass::BadRequest,
            Error::Unsupported { .. } | Error::UnknownAction { .. } => ErrorClass::BadRequest,
            Error::Flight(_) => ErrorClass::BadRequest,
            Error::QueryWorkerGone => ErrorClass::Internal,
            Error::QueryLimit {
                retry: Some(retry_after),
                ..
            } => ErrorClass::Overloaded {
                retry_after: *retry_after,
            },
            Error::QueryLimit { retry: None, .. } => ErrorClass::TooLarge,
            Error::QueryTimeout { .. } => ErrorClass::TimedOut,
        }
    }
}

/// gRPC code for an error class.
pub fn code(class: ErrorClass) -> Code {
    match class {
        ErrorClass::BadRequest | ErrorClass::TooLarge | ErrorClass::UnsupportedMediaType => {
            Code::InvalidArgument
        }
        ErrorClass::Unauthenticated => Code::Unauthenticated,
        ErrorClass::Forbidden => Code::PermissionDenied,
        ErrorClass::NotFound => Code::NotFound,
        ErrorClass::Conflict => Code::AlreadyExists,
        ErrorClass::MethodNotAllowed => Code::Unimplemented,
        ErrorClass::Overloaded { .. } => Code::ResourceExhausted,
        ErrorClass::Unavailable => Code::Unavailable,
        ErrorClass::TimedOut | ErrorClass::RequestTimeout => Code::DeadlineExceeded,
        ErrorClass::Internal => Code::Internal,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let class = e.class();
        if let Error::Unsupported { .. } | Error::UnknownAction { .. } = e {
            return Status::unimplemented(bounded(e.to_string()));
        }
        if let Error::QueryLimit { retry: None, .. } = e {
            return Status::resource_exhausted(bounded(e.to_string()));
        }
        if class == ErrorClass::Internal {
            tracing::error!(error = %e, "internal error in flight service");
        }
        let mut status = Status::new(code(class), bounded(e.to_string()));
        if let ErrorClass::Overloaded { retry_after } = class {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = secs.to_string().parse() {
                status.metadata_mut().insert("retry-after", v);
            }
        }
        status
    }
}

/// Most characters of a status message: it travels in the `grpc-message`
/// header (percent-encoded), and an error that quotes a client's 60 KB of
/// SQL must not become a header the client's HTTP/2 stack refuses.
const MAX_MESSAGE_CHARS: usize = 1024;

fn bounded(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push_str("… (cut)");
    }
    message
}
