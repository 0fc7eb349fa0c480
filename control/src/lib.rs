//! Honeycell's control plane store: orgs and their quota tiers, users and
//! their roles per org, OAuth identities, API keys, refresh-token families,
//! token-signing keys and the hash-chained audit log.
//!
//! Two backends stand behind one [`Store`]: [`EmbeddedStore`] (redb, one
//! file under the data directory; the default, needing nothing installed)
//! and [`PgStore`] (PostgreSQL through tokio-postgres, versioned migrations,
//! TLS through rustls). The same contract test suite
//! (`tests/tests/control_store.rs`) runs against both.
//!
//! Cells are shared-nothing, so a PostgreSQL store is opened once *per cell*,
//! inside that cell's runtime: each cell gets its own small connection pool,
//! and no pool or connection is shared between cells. The embedded store is
//! one file (redb allows one open handle per file), shared by reference;
//! its transactions run on the blocking pool, never on a cell's thread.
//! The attempt budgets (failed authentications, sign-in starts;
//! `budget.rs`) are shared by all cells on purpose: one budget per process.
//!
//! Nothing here is on the per-request hot path: callers cache what they need
//! (API keys, signing keys) and write audit entries in the background.

mod audit;
mod audit_sink;
mod authn;
mod budget;
mod config;
mod embedded;
mod error;
mod model;
mod oauth;
mod postgres;
mod tokens;
pub mod trace;

pub use audit::{ChainBreak, ChainVerifier, GENESIS, chain, entry_hash, verify_chain};
pub use audit_sink::AuditSink;
pub use authn::{
    API_KEY_PREFIX, Authenticator, BruteForce, NewApiKey, generate_api_key, parse_api_key,
};
pub use budget::{BruteForceBudgets, Budgets};
pub use config::{ControlConfig, StoreKind, StoreOpener, TierConfig, Tiers};
pub use embedded::EmbeddedStore;
pub use error::{Error, Result};
pub use model::{
    ApiKey, AuditDraft, AuditEntry, AuditQuery, Membership, OAuthLogin, Org, RefreshState,
    RefreshToken, Rotation, SigningKey, User,
};
pub use oauth::{OAuth, OAuthConfig, ProviderConfig, ProviderKind, SignedIn, Started};
pub use postgres::{PgConfig, PgStore, SCHEMA_VERSION};
pub use tokens::{
    KeyRingReload, REFRESH_PREFIX, TokenPair, TokenService, ensure_signing_key, rotate_signing_key,
};

use honeycell_auth::Role;
use honeycell_types::OrgId;

/// The control plane store: one of the two backends. An enum rather than a
/// trait object: two backends, no boxing of every call's future.
#[derive(Clone, Debug)]
pub enum Store {
    Embedded(EmbeddedStore),
    Postgres(PgStore),
}

/// Calls the same method on whichever backend this is.
macro_rules! dispatch {
    ($self:ident . $m:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Embedded(s) => s.$m($($arg),*).await,
            Store::Postgres(s) => s.$m($($arg),*).await,
        }
    };
}

impl Store {
    /// Which backend, for logs and `/ready`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Embedded(_) => "embedded",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Cheap liveness check (`/ready`).
    pub async fn ping(&self) -> Result<()> {
        dispatch!(self.ping())
    }

    // Orgs.

    /// Creates an org; [`Error::Conflict`] if the id is taken.
    pub async fn create_org(&self, org: &Org) -> Result<()> {
        dispatch!(self.create_org(org))
    }

    pub async fn org(&self, id: &OrgId) -> Result<Option<Org>> {
        dispatch!(self.org(id))
    }

    /// Changes an org's tier; false if the org has no record.
    pub async fn set_org_tier(&self, id: &OrgId, tier: &str) -> Result<bool> {
        dispatch!(self.set_org_tier(id, tier))
    }

    // Users, memberships, identities.

    /// Creates a user; [`Error::Conflict`] if the id or e-mail is taken.
    pub async fn create_user(&self, user: &User) -> Result<()> {
        dispatch!(self.create_user(user))
    }

    pub async fn user(&self, id: &str) -> Result<Option<User>> {
        dispatch!(self.user(id))
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        dispatch!(self.user_by_email(email))
    }

    /// Gives `user_id` `role` in `org` (replacing any earlier role).
    pub async fn set_membership(&self, org: &OrgId, user_id: &str, role: Role) -> Result<()> {
        dispatch!(self.set_membership(org, user_id, role))
    }

    /// Removes a membership; false if there was none.
    pub async fn remove_membership(&self, org: &OrgId, user_id: &str) -> Result<bool> {
        dispatch!(self.remove_membership(org, user_id))
    }

    /// The orgs a user belongs to, ordered by org id.
    pub async fn memberships_of_user(&self, user_id: &str) -> Result<Vec<Membership>> {
        dispatch!(self.memberships_of_user(user_id))
    }

    /// An org's members, ordered by user id.
    pub async fn members_of_org(&self, org: &OrgId) -> Result<Vec<Membership>> {
        dispatch!(self.members_of_org(org))
    }

    /// Links an external identity (`provider`, its subject) to a user.
    pub async fn link_identity(&self, provider: &str, subject: &str, user_id: &str) -> Result<()> {
        dispatch!(self.link_identity(provider, subject, user_id))
    }

    pub async fn user_by_identity(&self, provider: &str, subject: &str) -> Result<Option<User>> {
        dispatch!(self.user_by_identity(provider, subject))
    }

    // Logins in progress (OAuth2/OIDC).

    /// Stores a login started at a provider (and drops expired ones).
    pub async fn insert_oauth_login(&self, login: &OAuthLogin) -> Result<()> {
        dispatch!(self.insert_oauth_login(login))
    }

    /// Takes the login whose state hashes to `state_sha256`: it is deleted,
    /// so a state works once. `None` if unknown, taken or expired at `now_us`.
    pub async fn take_oauth_login(
        &self,
        state_sha256: &str,
        now_us: i64,
    ) -> Result<Option<OAuthLogin>> {
        dispatch!(self.take_oauth_login(state_sha256, now_us))
    }

    // API keys.

    /// Stores a new key; [`Error::Conflict`] if the id is taken.
    pub async fn insert_api_key(&self, key: &ApiKey) -> Result<()> {
        dispatch!(self.insert_api_key(key))
    }

    /// A key by its public id, whatever its org (the id comes from the
    /// presented key; the record says which org it belongs to).
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        dispatch!(self.api_key(id))
    }

    /// An org's keys (live, expired and revoked), ordered by id.
    pub async fn api_keys_of_org(&self, org: &OrgId) -> Result<Vec<ApiKey>> {
        dispatch!(self.api_keys_of_org(org))
    }

    /// Revokes `org`'s key `id` at `at_us`; false if `org` has no such live
    /// key (another org's key id is "not found", never revoked).
    pub async fn revoke_api_key(&self, org: &OrgId, id: &str, at_us: i64) -> Result<bool> {
        dispatch!(self.revoke_api_key(org, id, at_us))
    }

    /// Ids of keys revoked at or after `since_us` (for caches to evict).
    pub async fn api_keys_revoked_since(&self, since_us: i64) -> Result<Vec<(String, i64)>> {
        dispatch!(self.api_keys_revoked_since(since_us))
    }

    /// Records last use, in one batch: `(key id, time)`; a later time wins.
    pub async fn touch_api_keys(&self, uses: &[(String, i64)]) -> Result<()> {
        dispatch!(self.touch_api_keys(uses))
    }

    // Refresh tokens.

    pub async fn insert_refresh(&self, token: &RefreshToken) -> Result<()> {
        dispatch!(self.insert_refresh(token))
    }

    pub async fn refresh(&self, id: &str) -> Result<Option<RefreshToken>> {
        dispatch!(self.refresh(id))
    }

    /// Exchanges refresh token `id` for `next` (same family), atomically:
    /// only an active, unexpired token rotates; a rotated one revokes its
    /// whole family ([`Rotation::ReuseDetected`]).
    pub async fn rotate_refresh(
        &self,
        id: &str,
        now_us: i64,
        next: &RefreshToken,
    ) -> Result<Rotation> {
        dispatch!(self.rotate_refresh(id, now_us, next))
    }

    /// Revokes every token of a family; returns how many were active.
    pub async fn revoke_refresh_family(&self, family: &str) -> Result<u64> {
        dispatch!(self.revoke_refresh_family(family))
    }

    /// Whether a family (a login) was revoked — logged out, reused, or
    /// ended with its API key or membership — that is, whether any of its
    /// tokens is revoked (revocation marks them all, and a revoked family
    /// never rotates again). False for a family with no tokens.
    pub async fn refresh_family_revoked(&self, family: &str) -> Result<bool> {
        dispatch!(self.refresh_family_revoked(family))
    }

    // Signing keys.

    pub async fn insert_signing_key(&self, key: &SigningKey) -> Result<()> {
        dispatch!(self.insert_signing_key(key))
    }

    /// Every signing key, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        dispatch!(self.signing_keys())
    }

    /// Stops key `kid` from signing (it still verifies); false if unknown.
    pub async fn retire_signing_key(&self, kid: &str, at_us: i64) -> Result<bool> {
        dispatch!(self.retire_signing_key(kid, at_us))
    }

    /// Deletes a key (once no token it signed can still be valid).
    pub async fn delete_signing_key(&self, kid: &str) -> Result<bool> {
        dispatch!(self.delete_signing_key(kid))
    }

    // Audit log.

    /// Appends entries, chaining each org's after its current head, in one
    /// transaction; returns the stored entries in input order per org.
    pub async fn append_audit(&self, drafts: Vec<AuditDraft>) -> Result<Vec<AuditEntry>> {
        dispatch!(self.append_audit(drafts))
    }

    /// Entries matching `q`, newest first, at most `q.limit`.
    pub async fn audit_page(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        dispatch!(self.audit_page(q))
    }

    /// `org`'s entries with `seq > after_seq`, oldest first, at most
    /// `limit` (for verification and export).
    pub async fn audit_range(
        &self,
        org: &OrgId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        dispatch!(self.audit_range(org, after_seq, limit))
    }

    /// Every org that has audit entries.
    pub async fn audit_orgs(&self) -> Result<Vec<OrgId>> {
        dispatch!(self.audit_orgs())
    }

    /// Verifies `org`'s whole chain; the number of entries or the break.
    pub async fn verify_audit(&self, org: &OrgId) -> Result<Result<u64, ChainBreak>> {
        let mut v = ChainVerifier::default();
        loop {
            let page = self.audit_range(org, v.verified(), 10_000).await?;
            if page.is_empty() {
                return Ok(Ok(v.verified()));
            }
            for e in &page {
                if let Err(b) = v.push(e) {
                    return Ok(Err(b));
                }
            }
        }
    }
}

/// Groups drafts by org, keeping their order within each org; orgs sorted
/// (a fixed lock order for the PostgreSQL backend).
pub(crate) fn by_org(drafts: Vec<AuditDraft>) -> Vec<(OrgId, Vec<AuditDraft>)> {
    let mut groups: std::collections::BTreeMap<OrgId, Vec<AuditDraft>> = Default::default();
    for d in drafts {
        groups.entry(d.org.clone()).or_default().push(d);
    }
    groups.into_iter().collect()
}
