//! Authentication for Honeycell: turns the bearer credential of a request
//! into a [`TenantContext`] (org, subject, role) and mints the tokens it
//! accepts.
//!
//! Every API call carries `Authorization: Bearer <JWT>`. [`Verifier`] checks
//! the algorithm against the one configured (refusing `alg: none` and
//! algorithm confusion before any key is used), the signature, `iss` and
//! `aud`, then `exp`/`nbf`/`iat` with a small leeway and no more than
//! `jwt.max_lifetime` ahead; the tenant, subject and role (exact, lower-case
//! names) then come only from the verified claims. Verification is stateless and the
//! `Verifier` is an immutable `Arc`, so each cell verifies where a request
//! lands. [`Signer`] mints tokens for `honeycell token` and for tests.
//! Errors carry a client-facing message, a stable [`Error::code`] and an
//! [`Error::class`] that protocols map to their status codes.
//!
//! Deliberately not here: HTTP or gRPC plumbing (the `api` and `flight`
//! crates extract the header and call [`Verifier::verify_bearer`]), storage
//! of users, API keys or refresh-token families (the control plane), and
//! fetching secrets from Vault (the server resolves `vault://` references
//! before building a [`JwtConfig`]). New credential kinds become variants of
//! [`Credential`]; resource-level RBAC extends [`Role::permits`].
//!
//! Read next: `verify.rs` for the order of checks, `config.rs` for what
//! `check-config` validates, `types` for `OrgId` and `ErrorClass`.

mod config;
mod context;
mod error;
mod managed;
mod role;
mod sign;
mod verify;

pub use config::JwtConfig;
pub use context::{Credential, Quota, TenantContext};
pub use error::{Error, Result};
pub use managed::{GeneratedKey, ed25519_jwk, generate_ed25519};
pub use role::{Action, ActionSet, Op, Resource, Role};
pub use sign::{Signer, parse_ttl};
pub use verify::{Verifier, peek_kid};

#[cfg(test)]
mod tests;
