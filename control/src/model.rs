//! The records the control plane keeps. Times are microseconds since the
//! Unix epoch (as everywhere in Honeycell); ids are opaque strings.

use honeycell_auth::Role;
use honeycell_types::OrgId;
use serde::{Deserialize, Serialize};

/// A tenant. Orgs that send events before anyone registered them exist
/// implicitly, on the default tier; a record is needed only to name a tier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    /// The quota tier's name (tiers are defined in the server configuration).
    pub tier: String,
    pub created_at_us: i64,
}

/// A person (or a service account) who can belong to several orgs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    /// Unique, compared case-insensitively (stored lower-cased).
    pub email: String,
    pub created_at_us: i64,
}

impl User {
    /// A new user with a fresh random id (`u-<32 hex>`).
    pub fn new(email: &str) -> User {
        let id: [u8; 16] = rand::random();
        User {
            id: format!("u-{}", hex::encode(id)),
            email: email.to_lowercase(),
            created_at_us: honeycell_types::now_us(),
        }
    }
}

/// A user's role in one org.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub org: OrgId,
    pub user_id: String,
    pub role: Role,
}

/// An API key. The secret itself is never stored: only its SHA-256 (keys
/// carry 256 random bits, so a fast hash is the right tool, as for GitHub's
/// and Stripe's keys), compared in constant time by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public id, the part of the key before the secret (`hck_<id>_<secret>`).
    pub id: String,
    pub org: OrgId,
    pub name: String,
    #[serde(with = "hex::serde")]
    pub secret_sha256: [u8; 32],
    /// The most the key may do; `scopes` may narrow it further.
    pub role: Role,
    /// `resource:action` pairs (e.g. `events:read`); empty means everything
    /// the role permits.
    pub scopes: Vec<String>,
    pub created_by: String,
    pub created_at_us: i64,
    pub expires_at_us: i64,
    pub revoked_at_us: Option<i64>,
    pub last_used_us: Option<i64>,
}

impl ApiKey {
    /// Usable at `now_us`: neither revoked nor expired.
    pub fn is_live(&self, now_us: i64) -> bool {
        self.revoked_at_us.is_none() && now_us < self.expires_at_us
    }
}

/// Where a refresh token is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefreshState {
    /// May be exchanged (once) for a new pair.
    Active,
    /// Exchanged already: presenting it again is reuse.
    Rotated,
    /// Logged out, or its family was revoked.
    Revoked,
}

impl RefreshState {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshState::Active => "active",
            RefreshState::Rotated => "rotated",
            RefreshState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => RefreshState::Active,
            "rotated" => RefreshState::Rotated,
            "revoked" => RefreshState::Revoked,
            _ => return None,
        })
    }
}

/// One refresh token. Every rotation issues a new token in the same family,
/// so reuse of a rotated token can revoke everything descended from the
/// original login.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    pub id: String,
    pub family: String,
    pub org: OrgId,
    pub subject: String,
    pub role: Role,
    pub issued_at_us: i64,
    pub expires_at_us: i64,
    pub state: RefreshState,
}

/// What presenting a refresh token for rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The old token is retired; the new one is stored. Carries the old one.
    Rotated(RefreshToken),
    /// The token had been rotated already: its whole family is now revoked.
    ReuseDetected(RefreshToken),
    /// Revoked (logout or an earlier reuse).
    Revoked(RefreshToken),
    Expired(RefreshToken),
    Unknown,
}

/// A token-signing key. `retired_at_us` set: no longer signs, still verifies
/// until the tokens it signed have expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub kid: String,
    /// `EdDSA` or `RS256`.
    pub alg: String,
    pub private_pem: String,
    pub public_pem: String,
    pub created_at_us: i64,
    pub retired_at_us: Option<i64>,
}

/// An audit event before it is chained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDraft {
    pub org: OrgId,
    pub at_us: i64,
    /// Who: a subject, an API key id, or a source address for failed logins.
    pub actor: String,
    /// What, e.g. `auth.login`, `apikey.create`, `auth.refresh_reuse`.
    pub action: String,
    /// On what, e.g. `apikey/k_123`.
    pub resource: String,
    /// `ok`, `denied`, `failed`, …
    pub result: String,
    pub trace_id: Option<String>,
    /// Free-form detail (never secrets).
    pub detail: Option<String>,
}

/// An audit entry as stored: numbered per org and hash-chained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1, 2, 3, … per org, without gaps.
    pub seq: u64,
    pub draft: AuditDraft,
    #[serde(with = "hex::serde")]
    pub prev_hash: [u8; 32],
    #[serde(with = "hex::serde")]
    pub hash: [u8; 32],
}

/// Which audit entries to list, newest first.
#[derive(Clone, Debug)]
pub struct AuditQuery {
    pub org: OrgId,
    pub action: Option<String>,
    pub actor: Option<String>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    /// Entries with a smaller `seq` than this (paging backwards).
    pub before_seq: Option<u64>,
    pub limit: usize,
}

impl AuditQuery {
    pub fn new(org: OrgId, limit: usize) -> Self {
        AuditQuery {
            org,
            action: None,
            actor: None,
            since_us: None,
            until_us: None,
            before_seq: None,
            limit,
        }
    }

    pub(crate) fn matches(&self, e: &AuditEntry) -> bool {
        self.action.as_ref().is_none_or(|a| *a == e.draft.action)
            && self.actor.as_ref().is_none_or(|a| *a == e.draft.actor)
            && self.since_us.is_none_or(|t| e.draft.at_us >= t)
            && self.until_us.is_none_or(|t| e.draft.at_us < t)
            && self.before_seq.is_none_or(|s| e.seq < s)
    }
}

/// A login in progress through an OAuth2/OIDC provider: made when the user
/// is sent to the provider, taken (once) when the provider sends them back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthLogin {
    /// SHA-256 (hex) of the `state` parameter; the state itself is not kept.
    pub state_sha256: String,
    /// The provider's name in the configuration.
    pub provider: String,
    /// The PKCE code verifier sent with the code exchange.
    pub pkce_verifier: String,
    /// The nonce the ID token must carry (empty for plain OAuth2).
    pub nonce: String,
    /// The org the user asked to sign in to, if any.
    pub org: Option<OrgId>,
    pub expires_at_us: i64,
}
