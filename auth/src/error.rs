use honeycell_types::ErrorClass;

use crate::role::Role;

/// Errors of `honeycell-auth`. The messages go to clients as they are (in JSON
/// error bodies), so each says what is wrong and what to do, and none carries
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing Authorization header; send `Authorization: Bearer <token>`")]
    MissingToken,

    /// More than one `Authorization` header (HTTP) or `authorization`
    /// metadata entry (gRPC): which one counts would be a guess, and proxies
    /// and servers guess differently.
    #[error(
        "the request carries {count} Authorization headers; send exactly one `Authorization: Bearer <token>`"
    )]
    MultipleAuthorization { count: usize },

    #[error(
        "the Authorization header does not use the Bearer scheme; send `Authorization: Bearer <token>`"
    )]
    NotBearer,

    #[error("malformed token: {reason}; send the compact JWT exactly as it was issued")]
    Malformed { reason: &'static str },

    #[error(
        "unsigned tokens (`alg: none`) are never accepted; send a token signed by this server's issuer"
    )]
    AlgNone,

    #[error(
        "token is signed with {got} but this server accepts only {expected}; request a token from this server's issuer"
    )]
    AlgorithmNotAllowed { got: String, expected: &'static str },

    #[error(
        "token signature is invalid: it was not signed with this server's key, or it was altered; request a new token"
    )]
    BadSignature,

    #[error("token has expired; request a new token")]
    Expired,

    /// `claim` (`nbf`, or `iat`: issued in the future) is later than now
    /// plus the leeway.
    #[error(
        "token is not valid yet (`{claim}` is in the future, beyond the {leeway_secs} s clock leeway); check the issuer's clock or wait"
    )]
    NotYetValid {
        claim: &'static str,
        leeway_secs: u64,
    },

    /// `exp` is further from now (or from `iat`) than `jwt.max_lifetime`.
    #[error(
        "token lives too long: its `exp` is more than jwt.max_lifetime ({max}) after {from}; request a token with a shorter lifetime"
    )]
    LifetimeTooLong { max: String, from: &'static str },

    #[error("token issuer (`iss`) is not accepted; this server expects \"{expected}\"")]
    WrongIssuer { expected: String },

    #[error("token audience (`aud`) is not accepted; this server expects \"{expected}\"")]
    WrongAudience { expected: String },

    #[error("token claim `{claim}` is invalid: {reason}")]
    InvalidClaim { claim: &'static str, reason: String },

    #[error(
        "unknown role {got:?}; expected one of {allowed} (exactly, in lower case)",
        allowed = Role::ALLOWED
    )]
    UnknownRole { got: String },

    #[error("invalid token lifetime {got:?}: {reason}; use a duration such as 30s, 15m or 1h")]
    InvalidTtl { got: String, reason: String },

    /// A configuration problem; `key` names the setting to fix (`jwt.secret`).
    #[error("{key}: {reason}")]
    Config { key: &'static str, reason: String },

    #[error("could not sign the token: {reason}")]
    Sign { reason: String },

    #[error(
        "unknown scope {got:?}; scopes are <resource>:read or <resource>:write for events, rules, actions, logs, settings, apikeys, users, audit"
    )]
    UnknownScope { got: String },

    #[error(
        "malformed API key: {reason}; send the key exactly as it was shown at creation (hck_<id>_<secret>)"
    )]
    MalformedApiKey { reason: &'static str },

    #[error("unknown or wrong API key; check the key, or create a new one")]
    BadApiKey,

    #[error("this API key was revoked; use its replacement or create a new one")]
    ApiKeyRevoked,

    #[error("this API key has expired; rotate it or create a new one")]
    ApiKeyExpired,

    #[error("unknown or revoked refresh token; sign in again")]
    BadRefreshToken,

    /// An access token whose login (refresh-token family, `sid`) was
    /// revoked: by a logout, or because a used refresh token was presented
    /// again.
    #[error(
        "the login this token belongs to was revoked (logged out, or its refresh token was used twice); sign in again"
    )]
    SessionRevoked,

    #[error("this refresh token has expired; sign in again")]
    RefreshExpired,

    #[error(
        "you are no longer a member of this org; ask one of its admins, or sign in to another org"
    )]
    NoLongerMember,

    #[error(
        "too many failed authentication attempts from this address or for this key; retry after {retry_after_secs} s"
    )]
    TooManyFailures { retry_after_secs: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Who is at fault: a problem with the presented credential is the
    /// client's (401); configuration and signing failures are ours (500).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Config { .. } | Error::Sign { .. } => ErrorClass::Internal,
            // Raised when parsing operator or request input (`--role`,
            // `--ttl`), never while verifying a token.
            Error::UnknownRole { .. } | Error::InvalidTtl { .. } | Error::UnknownScope { .. } => {
                ErrorClass::BadRequest
            }
            Error::MissingToken
            | Error::MultipleAuthorization { .. }
            | Error::NotBearer
            | Error::Malformed { .. }
            | Error::AlgNone
            | Error::AlgorithmNotAllowed { .. }
            | Error::BadSignature
            | Error::Expired
            | Error::NotYetValid { .. }
            | Error::LifetimeTooLong { .. }
            | Error::WrongIssuer { .. }
            | Error::WrongAudience { .. }
            | Error::InvalidClaim { .. }
            | Error::MalformedApiKey { .. }
            | Error::BadApiKey
            | Error::ApiKeyRevoked
            | Error::ApiKeyExpired
            | Error::BadRefreshToken
            | Error::RefreshExpired
            | Error::SessionRevoked
            | Error::NoLongerMember => ErrorClass::Unauthenticated,
            Error::TooManyFailures { retry_after_secs } => ErrorClass::Overloaded {
                retry_after: std::time::Duration::from_secs(*retry_after_secs),
            },
        }
    }

    /// Whether this failure looks like guessing or forging a credential (a
    /// wrong signature or secret, garbage), as opposed to a genuine but
    /// stale one (expired, revoked) or none at all. Only these count
    /// towards brute-force limits, so that clients refreshing expired
    /// tokens are never locked out.
    pub fn suggests_guessing(&self) -> bool {
        matches!(
            self,
            Error::Malformed { .. }
                | Error::AlgNone
                | Error::AlgorithmNotAllowed { .. }
                | Error::BadSignature
                | Error::MalformedApiKey { .. }
                | Error::BadApiKey
                | Error::BadRefreshToken
        )
    }

    /// A stable snake_case code per variant for JSON error bodies; clients
    /// may match on it (e.g. refresh on `token_expired`), so never rename one.
    pub fn code(&self) -> &'static str {
        match self {
            Error::MissingToken => "missing_token",
            Error::MultipleAuthorization { .. } => "multiple_authorization_headers",
            Error::NotBearer => "not_bearer",
            Error::Malformed { .. } => "malformed_token",
            Error::AlgNone => "alg_none",
            Error::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            Error::BadSignature => "bad_signature",
            Error::Expired => "token_expired",
            Error::NotYetValid { .. } => "token_not_yet_valid",
            Error::LifetimeTooLong { .. } => "token_exceeds_max_lifetime",
            Error::WrongIssuer { .. } => "wrong_issuer",
            Error::WrongAudience { .. } => "wrong_audience",
            Error::InvalidClaim { .. } => "invalid_claim",
            Error::UnknownRole { .. } => "unknown_role",
            Error::InvalidTtl { .. } => "invalid_ttl",
            Error::Config { .. } => "auth_config",
            Error::Sign { .. } => "sign_failed",
            Error::UnknownScope { .. } => "unknown_scope",
            Error::MalformedApiKey { .. } => "malformed_api_key",
            Error::BadApiKey => "bad_api_key",
            Error::ApiKeyRevoked => "api_key_revoked",
            Error::ApiKeyExpired => "api_key_expired",
            Error::TooManyFailures { .. } => "too_many_failed_attempts",
            Error::BadRefreshToken => "bad_refresh_token",
            Error::RefreshExpired => "refresh_token_expired",
            Error::SessionRevoked => "session_revoked",
            Error::NoLongerMember => "membership_revoked",
        }
    }
}
