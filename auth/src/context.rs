use honeycell_types::OrgId;

use crate::role::{Action, ActionSet, Role};

/// Who is calling, for which tenant, with which rights. Built only from a
/// verified credential; every field is trustworthy.
///
/// Deliberately not `Serialize`: it is an in-process value, not a wire format.
#[derive(Clone, Debug)]
pub struct TenantContext {
    /// The tenant; all data access is scoped to it.
    pub org: OrgId,
    /// The user or service the credential was issued to (`sub`).
    pub subject: String,
    pub role: Role,
    /// How the caller proved its identity, for audit logs and expiry checks.
    pub credential: Credential,
    /// The org's quota tier's limits (resolved with the credential).
    pub quota: Quota,
}

/// Limits of an org's quota tier that the cells enforce. `None`: no limit
/// beyond the server-wide ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Bytes the org may keep stored (segments and WAL); ingest past it is
    /// refused with 403 `quota_exceeded`.
    pub max_stored_bytes: Option<u64>,
    /// The org's request rate (replaces `rate_limiting.org_max_qps`).
    pub max_qps: Option<u32>,
    /// Operations of the org in flight at once, per cell (429 beyond).
    pub max_concurrent: Option<u32>,
    /// Flight SQL queries of the org running at once (RESOURCE_EXHAUSTED
    /// beyond); `None`: the server's default per org.
    pub max_queries: Option<u32>,
    /// Seconds of computing the org's Flight SQL queries may use per
    /// minute; `None`: the server's default.
    pub query_seconds_per_minute: Option<u32>,
}

/// The kind of credential a request presented. API keys and OAuth-issued
/// tokens will be further variants; code that needs the details matches on
/// it, everything else uses only [`TenantContext`]'s other fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A JWT verified by [`crate::Verifier`].
    Jwt {
        /// The `kid` header, if the issuer set one.
        key_id: Option<String>,
        /// The `exp` claim, in seconds since the Unix epoch.
        expires_at: u64,
        /// The `jti` claim, for revocation lists and audit.
        token_id: Option<String>,
        /// The `sid` claim: the login (refresh-token family) a token the
        /// server issued belongs to; revoking the login refuses the token.
        session_id: Option<String>,
        /// The `scope` claim (all actions when absent).
        scopes: ActionSet,
    },
    /// An API key (`hck_<id>_<secret>`), checked against the control plane.
    ApiKey {
        key_id: String,
        /// What the key may do, on top of its role.
        scopes: ActionSet,
    },
}

impl TenantContext {
    /// Whether this caller may perform `action`: its role permits it and,
    /// for an API key, its scopes include it.
    pub fn permits(&self, action: Action) -> bool {
        self.role.permits(action)
            && match &self.credential {
                Credential::Jwt { scopes, .. } | Credential::ApiKey { scopes, .. } => {
                    scopes.contains(action)
                }
            }
    }
}

/// Subjects end up in audit logs and metrics labels, so they are bounded and
/// printable.
pub(crate) const MAX_SUBJECT_BYTES: usize = 256;

pub(crate) fn check_subject(subject: &str) -> Result<(), String> {
    if subject.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(format!(
            "must be at most {MAX_SUBJECT_BYTES} bytes, got {}",
            subject.len()
        ));
    }
    if subject.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}
