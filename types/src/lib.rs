//! Small shared vocabulary of Honeycell: tenant and cell identifiers and the
//! classification of errors for callers.
//!
//! This crate exists so that `router` (a pure placement function) and the
//! protocol crates can agree on names without depending on `storage` or on
//! each other. It deliberately holds no logic beyond validation; read
//! `router` next for placement and `cell` for who owns what.

use std::fmt;
use std::time::Duration;

/// Errors of this crate: only validation of identifiers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("org id must be 1 to {max} characters of [A-Za-z0-9_.-], got {got:?}", max = OrgId::MAX_LEN)]
    InvalidOrgId { got: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A tenant (organisation) identifier. It only ever comes from a verified
/// credential; it is also used as a directory name on disk, hence the strict
/// character set. Deserialising validates like [`OrgId::new`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OrgId(String);

impl TryFrom<String> for OrgId {
    type Error = Error;

    fn try_from(raw: String) -> Result<Self> {
        OrgId::new(raw)
    }
}

impl From<OrgId> for String {
    fn from(org: OrgId) -> String {
        org.0
    }
}

impl OrgId {
    pub const MAX_LEN: usize = 64;

    pub fn new(raw: impl Into<String>) -> Result<Self> {
        let raw = raw.into();
        let ok = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw != "."
            && raw != ".."
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self(raw))
        } else {
            Err(Error::InvalidOrgId { got: raw })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrgId({})", self.0)
    }
}

/// Microseconds since the Unix epoch, the unit of `occurred_at`
/// (0 if the clock is before 1970).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Index of a cell: cell `i` runs on thread `cell-{i}`, pinned to core `i`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct CellId(pub u32);

impl CellId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cell-{}", self.0)
    }
}

/// Who is at fault for an error and whether the caller may retry: the one
/// classification every protocol maps to its own status codes (HTTP status,
/// gRPC code), in the manner of pingora's `ErrorType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is wrong; retrying it unchanged fails again (400).
    BadRequest,
    /// No valid identity (401).
    Unauthenticated,
    /// A valid identity without the permission (403).
    Forbidden,
    /// The thing asked for does not exist for this tenant (404).
    NotFound,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// The thing to create exists already (409).
    Conflict,
    /// The body or batch is larger than allowed (413).
    TooLarge,
    /// The body is in a format the route does not accept (415).
    UnsupportedMediaType,
    /// A limit was hit; retry after the given time (429).
    Overloaded { retry_after: Duration },
    /// The server cannot serve this now (shutting down, storage failed); retry later (503).
    Unavailable,
    /// The request ran past its time limit and was stopped; retrying it
    /// unchanged will likely time out again (504; gRPC DEADLINE_EXCEEDED).
    TimedOut,
    /// The client sent its request too slowly (408): a body arriving under
    /// the server's minimum rate.
    RequestTimeout,
    /// A bug or an unexpected failure on our side (500).
    Internal,
}

impl ErrorClass {
    /// The HTTP status code for this class.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::BadRequest => 400,
            ErrorClass::Unauthenticated => 401,
            ErrorClass::Forbidden => 403,
            ErrorClass::NotFound => 404,
            ErrorClass::MethodNotAllowed => 405,
            ErrorClass::Conflict => 409,
            ErrorClass::TooLarge => 413,
            ErrorClass::UnsupportedMediaType => 415,
            ErrorClass::Overloaded { .. } => 429,
            ErrorClass::Unavailable => 503,
            ErrorClass::TimedOut => 504,
            ErrorClass::RequestTimeout => 408,
            ErrorClass::Internal => 500,
        }
    }

    /// A short machine-readable code used in JSON error bodies.
    pub fn code(self) -> &'static str {
        match self {
            ErrorClass::BadRequest => "bad_request",
            ErrorClass::Unauthenticated => "unauthenticated",
            ErrorClass::Forbidden => "forbidden",
            ErrorClass::NotFound => "not_found",
            ErrorClass::MethodNotAllowed => "method_not_allowed",
            ErrorClass::Conflict => "conflict",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::UnsupportedMediaType => "unsupported_media_type",
            ErrorClass::Overloaded { .. } => "rate_limited",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::TimedOut => "timed_out",
            ErrorClass::RequestTimeout => "request_timeout",
            ErrorClass::Internal => "internal",
        }
    }

    /// Whether a client may retry the same request later.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Overloaded { .. } | ErrorClass::Unavailable
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids_are_validated() {
        assert!(OrgId::new("acme-01_x.y").is_ok());
        for bad in ["", "..", ".", "a/b", "a b", &"x".repeat(65), "ümlaut"] {
            assert!(OrgId::new(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
