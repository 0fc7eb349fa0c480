//! Authentication of every request, whatever the protocol: a JWT (checked by
//! `honeycell_auth::Verifier`, no I/O) or an API key `hck_<id>_<secret>`
//! (looked up in the control plane through a short-lived per-cell cache).
//!
//! JWTs. A token whose signature verified is remembered per cell (the
//! whole token text is the key) for at most a minute, so the signature
//! check — ≈3 µs for HS256, ≈30 µs for the server's Ed25519 tokens — is
//! paid once per token and minute rather than on every request; its `exp`
//! is still checked on every use. A signing key deleted from the ring stops
//! verifying cached tokens within that minute. A token the server issued is
//! refused as soon as its login (`sid`, the refresh-token family) is revoked
//! — a logout, or a refresh token presented twice —, one issued for an API
//! key as soon as the key is, and a signed-in person's as soon as their
//! membership ends (it follows their current role), through per-cell caches
//! of at most `cache_ttl`.
//!
//! API keys. The secret is 32 random bytes (43 base64url characters); only
//! its SHA-256 is stored, and the presented secret's hash is compared in
//! constant time. A cell caches each key record (or its absence) for at most
//! `cache_ttl` (≤ 1 s by default), so a revocation or expiry recorded in the
//! store — by this server or another one sharing the PostgreSQL store —
//! takes effect on every cell within that time, and a flood of unknown keys
//! costs one store read per key id and second per cell. Uses are recorded in
//! memory and written as one `touch_api_keys` batch by
//! [`Authenticator::flush_last_used`] (the server calls it every few
//! seconds), never per request. A key's caller gets the subject
//! `apikey:<id>`, so each key has its own client rate-limit bucket.
//!
//! Brute force. Failed attempts that look like guessing (wrong secret or
//! signature, garbage — not expired or revoked credentials) are counted per
//! source address and per API key id in token buckets (`max_failures` per
//! `window`), one per process whatever cell a connection lands on
//! (`budget.rs`); while a bucket is empty, attempts from that address or
//! for that key are refused with 429 and `Retry-After` before any key is
//! looked up or any signature checked. A failure against a real key (its
//! org is known) is audited.
//!
//! One [`Authenticator`] per cell: its caches' locks are only ever taken by
//! that cell's thread (or, in `--runtime shared`, by the shared pool); the
//! brute-force budgets are the process's, shared by every cell.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use honeycell_auth::{ActionSet, Credential, TenantContext, Verifier};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Store;
use crate::audit_sink::AuditSink;
use crate::budget::BruteForceBudgets;
use crate::error::{Error, Result};
use crate::model::{ApiKey, AuditDraft};

/// The prefix that tells an API key from a JWT.
pub const API_KEY_PREFIX: &str = "hck_";
const ID_HEX: usize = 16;
const SECRET_B64: usize = 43;
/// How long a cell trusts a cached org tier (a tier change takes effect
/// within this).
const TIER_TTL: Duration = Duration::from_secs(5);
/// Cache entries beyond this are dropped wholesale (a flood of random ids).
const MAX_CACHED: usize = 100_000;
/// Verified JWTs kept per cell, and for how long at most: a signature check
/// (≈3 µs HS256, ≈30 µs Ed25519) is paid once per token per minute, not per
/// request; `exp` is checked on every use.
const MAX_JWTS_CACHED: usize = 10_000;
const JWT_CACHE_TTL: Duration = Duration::from_secs(60);

/// A freshly made key: the text shown once, and what is stored.
pub struct NewApiKey {
    /// `hck_<id>_<secret>`: give this to the client; it is never stored.
    pub plaintext: String,
    pub id: String,
    pub secret_sha256: [u8; 32],
}

/// Makes a new random key.
pub fn generate_api_key() -> NewApiKey {
    let id_bytes: [u8; ID_HEX / 2] = rand::random();
    let secret: [u8; 32] = rand::random();
    let id = hex::encode(id_bytes);
    let secret_text = URL_SAFE_NO_PAD.encode(secret);
    NewApiKey {
        plaintext: format!("{API_KEY_PREFIX}{id}_{secret_text}"),
        secret_sha256: Sha256::digest(secret_text.as_bytes()).into(),
        id,
    }
}

/// Splits `hck_<id>_<secret>` into id and secret, checking their shape
/// before anything is looked up.
pub fn parse_api_key(text: &str) -> std::result::Result<(&str, &str), honeycell_auth::Error> {
    let malformed = |reason| honeycell_auth::Error::MalformedApiKey { reason };
    let rest = text
        .strip_prefix(API_KEY_PREFIX)
        .ok_or(malformed("it does not start with hck_"))?;
    let (id, secret) = rest
        .split_once('_')
        .ok_or(malformed("the id and the secret are not separated by _"))?;
    if id.len() != ID_HEX
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(malformed("the id is not 16 lower-case hex digits"));
    }
    if secret.len() != SECRET_B64
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(malformed("the secret is not 43 base64url characters"));
    }
    Ok((id, secret))
}

/// A per-cell map of values read from the store, each trusted for `ttl`
/// after it was read; the one cache type behind API keys, memberships,
/// logins and tiers. Past `MAX_CACHED` entries it starts over, so a flood
/// of random keys costs bounded memory.
struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value for `k`: cached when read less than `ttl` ago, else from
    /// `load` (and remembered). A hit allocates nothing.
    async fn get_or_load<Q>(
        &self,
        k: &Q,
        load: impl std::future::Future<Output = Result<V>>,
    ) -> Result<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Ok(entries) = self.entries.lock()
            && let Some((at, v)) = entries.get(k)
            && at.elapsed() < self.ttl
        {
            return Ok(v.clone());
        }
        let v = load.await?;
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
            entries.insert(k.to_owned(), (Instant::now(), v.clone()));
        }
        Ok(v)
    }

    fn remove<Q>(&self, k: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(k);
        }
    }
}

/// Limits on failed authentication (`control.brute_force_*`), one budget
/// per process: see [`crate::BruteForceBudgets`].
#[derive(Clone, Copy, Debug)]
pub struct BruteForce {
    /// Failures allowed per source address, and per API key id, in `window`.
    pub max_failures: u32,
    pub window: Duration,
}

impl Default for BruteForce {
    fn default() -> Self {
        BruteForce {
            max_failures: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// Authenticates requests for one cell.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: Verifier,
    /// Server-managed keys (`kid` `hc-…`), when the server issues tokens.
    tokens: Option<crate::TokenService>,
    store: Store,
    audit: AuditSink,
    /// Shared by every cell's authenticator.
    brute_force: Arc<BruteForceBudgets>,
    cache_ttl: Duration,
    /// Key id → its record (`None`: no such key).
    keys: TtlCache<String, Option<Arc<ApiKey>>>,
    tiers: Arc<crate::Tiers>,
    tier_cache: TtlCache<honeycell_types::OrgId, honeycell_auth::Quota>,
    /// Key id → latest use (µs), waiting for the next flush.
    uses: Mutex<HashMap<String, i64>>,
    /// Verified JWT → (when verified, its context).
    jwts: Mutex<HashMap<Box<str>, (Instant, TenantContext)>>,
    /// (user id, org) → the user's role there, if a member.
    members: TtlCache<(String, honeycell_types::OrgId), Option<honeycell_auth::Role>>,
    /// Refresh family (`sid`) → whether that login was revoked.
    sessions: TtlCache<String, bool>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("store", &self.inner.store.backend())
            .field("cache_ttl", &self.inner.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `tokens`: the server's managed signing keys, when it issues tokens
    /// (their JWTs carry a `kid` starting `hc-`); other JWTs go to
    /// `verifier`.
    pub fn new(
        verifier: Verifier,
        tokens: Option<crate::TokenService>,
        store: Store,
        audit: AuditSink,
        cache_ttl: Duration,
        brute_force: Arc<BruteForceBudgets>,
        tiers: Arc<crate::Tiers>,
    ) -> Self {
        Authenticator {
            inner: Arc::new(Inner {
                verifier,
                tokens,
                store,
                audit,
                brute_force,
                cache_ttl,
                keys: TtlCache::new(cache_ttl),
                tiers,
                tier_cache: TtlCache::new(TIER_TTL),
                uses: Mutex::new(HashMap::new()),
                jwts: Mutex::new(HashMap::new()),
                members: TtlCache::new(cache_ttl),
                sessions: TtlCache::new(cache_ttl),
            }),
        }
    }

    pub fn tokens(&self) -> Option<&crate::TokenService> {
        self.inner.tokens.as_ref()
    }

    /// `Some(seconds)` while `peer` may not try again (for endpoints that
    /// check credentials of their own, such as `/auth/refresh`).
    pub fn blocked(&self, peer: Option<IpAddr>) -> Option<u64> {
        self.inner.brute_force.by_addr.blocked(&peer?)
    }

    /// Counts a failed attempt from `peer`.
    pub fn failed(&self, peer: Option<IpAddr>) {
        if let Some(ip) = peer {
            self.inner.brute_force.by_addr.spend(ip);
        }
    }

    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Authenticates an `Authorization` header value (`Bearer <jwt>` or
    /// `Bearer hck_…`).
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<TenantContext> {
        // On every request: one hash and one atomic load, no lock, unless
        // this address's shard may hold an exhausted budget.
        if let Some(wait) = self.blocked(peer) {
            return Err(Error::Auth(honeycell_auth::Error::TooManyFailures {
                retry_after_secs: wait,
            }));
        }
        let raw = authorization.ok_or(honeycell_auth::Error::MissingToken)?;
        let token = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .map(str::trim);
        let result = match token {
            Some(t) if t.starts_with(API_KEY_PREFIX) => self.api_key(t, peer).await,
            Some(t) => self.jwt(t, raw).await,
            None => self
                .inner
                .verifier
                .verify_bearer(Some(raw))
                .map_err(Error::from),
        };
        if let Err(Error::Auth(e)) = &result
            && e.suggests_guessing()
        {
            self.failed(peer);
        }
        let mut ctx = result?;
        self.check_principal_behind_token(&mut ctx).await?;
        ctx.quota = self.quota_of(&ctx.org).await?;
        Ok(ctx)
    }

    /// The limits of `org`'s tier: its record's tier (cached per cell for
    /// at most `TIER_TTL`), else the default tier.
    async fn quota_of(&self, org: &honeycell_types::OrgId) -> Result<honeycell_auth::Quota> {
        if self.inner.tiers.is_unlimited() {
            return Ok(honeycell_auth::Quota::default());
        }
        self.inner
            .tier_cache
            .get_or_load(org, async {
                let record = self.inner.store.org(org).await?;
                Ok(self
                    .inner
                    .tiers
                    .quota(record.as_ref().map(|o| o.tier.as_str())))
            })
            .await
    }

    /// A JWT: by a managed key when its `kid` is one of ours (`hc-…`), else
    /// by the configured key.
    async fn jwt(&self, token: &str, raw: &str) -> Result<TenantContext> {
        let now_secs = honeycell_types::now_us().max(0) as u64 / 1_000_000;
        if let Ok(cache) = self.inner.jwts.lock()
            && let Some((at, ctx)) = cache.get(token)
            && at.elapsed() < JWT_CACHE_TTL
            && matches!(ctx.credential, Credential::Jwt { expires_at, .. } if expires_at > now_secs)
        {
            return Ok(ctx.clone());
        }
        let ctx = if let Some(tokens) = &self.inner.tokens
            && let Some(kid) = honeycell_auth::peek_kid(token)
            && kid.starts_with(crate::tokens::KID_PREFIX)
        {
            match tokens.verifier_for(&kid).await? {
                Some(v) => v.verify(token)?,
                None => return Err(honeycell_auth::Error::BadSignature.into()),
            }
        } else {
            self.inner.verifier.verify_bearer(Some(raw))?
        };
        if let Ok(mut cache) = self.inner.jwts.lock() {
            if cache.len() >= MAX_JWTS_CACHED {
                cache.retain(|_, (at, _)| at.elapsed() < JWT_CACHE_TTL);
                if cache.len() >= MAX_JWTS_CACHED {
                    cache.clear();
                }
            }
            cache.insert(token.into(), (Instant::now(), ctx.clone()));
        }
        Ok(ctx)
    }

    async fn api_key(&self, text: &str, peer: Option<IpAddr>) -> Result<TenantContext> {
        let (id, secret) = parse_api_key(text)?;
        if let Some(wait) = self.inner.brute_force.by_key.blocked(id) {
            return Err(Error::Auth(honeycell_auth::Error::TooManyFailures {
                retry_after_secs: wait,
            }));
        }
        let key = self
            .lookup(id)
            .await?
            .ok_or(honeycell_auth::Error::BadApiKey)?;
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if !bool::from(presented.ct_eq(&key.secret_sha256)) {
            self.inner.brute_force.by_key.spend(id.to_owned());
            self.inner.audit.record(AuditDraft {
                org: key.org.clone(),
                at_us: honeycell_types::now_us(),
                actor: peer.map_or_else(|| "unknown".to_owned(), |ip| format!("ip:{ip}")),
                action: "auth.failed".to_owned(),
                resource: format!("apikey/{}", key.id),
                result: "denied".to_owned(),
                trace_id: None,
                detail: Some("wrong secret".to_owned()),
            });
            return Err(honeycell_auth::Error::BadApiKey.into());
        }
        let now = honeycell_types::now_us();
        if key.revoked_at_us.is_some() {
            return Err(honeycell_auth::Error::ApiKeyRevoked.into());
        }
        if now >= key.expires_at_us {
            return Err(honeycell_auth::Error::ApiKeyExpired.into());
        }
        let scopes = ActionSet::from_scopes(&key.scopes)?;
        if let Ok(mut uses) = self.inner.uses.lock() {
            uses.insert(key.id.clone(), now);
        }
        Ok(TenantContext {
            org: key.org.clone(),
            subject: format!("apikey:{}", key.id),
            role: key.role,
            credential: Credential::ApiKey {
                key_id: key.id.clone(),
                scopes,
            },
            quota: honeycell_auth::Quota::default(),
        })
    }

    /// An access token this server issued lives no longer than what it was
    /// issued for, and a person's takes their current role: its login
    /// (`sid`, the refresh family) must not be revoked (logout, refresh
    /// reuse); for an API key (subject `apikey:<id>`), the key's revocation
    /// or expiry; for a signed-in person (`user:<id>`), their membership of
    /// the org. All are read through per-cell caches of `cache_ttl` (≤ 1 s),
    /// so a change reaches every cell's requests within that time, not when
    /// the token expires. Tokens of other issuers (`honeycell token`, the
    /// configured key) carry no such link and are not checked here.
    async fn check_principal_behind_token(&self, ctx: &mut TenantContext) -> Result<()> {
        let Credential::Jwt {
            key_id: Some(kid),
            session_id,
            ..
        } = &ctx.credential
        else {
            return Ok(());
        };
        if !kid.starts_with(crate::tokens::KID_PREFIX) {
            return Ok(());
        }
        // The principal first: a dead key or membership also revokes the
        // login (at its next refresh), and is the more useful reason.
        if let Some(id) = ctx.subject.strip_prefix("apikey:") {
            match self.lookup(id).await? {
                Some(k) if k.org == ctx.org && k.is_live(honeycell_types::now_us()) => {}
                Some(k) if k.revoked_at_us.is_none() && k.org == ctx.org => {
                    return Err(honeycell_auth::Error::ApiKeyExpired.into());
                }
                _ => return Err(honeycell_auth::Error::ApiKeyRevoked.into()),
            }
        } else if let Some(user) = ctx.subject.strip_prefix("user:") {
            match self.member_role(user, &ctx.org).await? {
                Some(role) => ctx.role = role,
                None => return Err(honeycell_auth::Error::NoLongerMember.into()),
            }
        }
        if let Some(family) = session_id
            && self.session_revoked(family).await?
        {
            return Err(honeycell_auth::Error::SessionRevoked.into());
        }
        Ok(())
    }

    /// `user`'s role in `org`, from the cache when fresh, else the store.
    async fn member_role(
        &self,
        user: &str,
        org: &honeycell_types::OrgId,
    ) -> Result<Option<honeycell_auth::Role>> {
        self.inner
            .members
            .get_or_load(&(user.to_owned(), org.clone()), async {
                Ok(self
                    .inner
                    .store
                    .memberships_of_user(user)
                    .await?
                    .into_iter()
                    .find(|m| &m.org == org)
                    .map(|m| m.role))
            })
            .await
    }

    /// Whether the login `family` was revoked, from the cache when fresh,
    /// else the store.
    async fn session_revoked(&self, family: &str) -> Result<bool> {
        self.inner
            .sessions
            .get_or_load(family, self.inner.store.refresh_family_revoked(family))
            .await
    }

    /// The key record, from the cache when fresh, else from the store.
    async fn lookup(&self, id: &str) -> Result<Option<Arc<ApiKey>>> {
        self.inner
            .keys
            .get_or_load(id, async {
                Ok(self.inner.store.api_key(id).await?.map(Arc::new))
            })
            .await
    }

    /// Forgets a cached key at once (this cell revoked or rotated it).
    pub fn evict(&self, id: &str) {
        self.inner.keys.remove(id);
    }

    /// Forgets a cached login at once (this cell revoked it: a logout or a
    /// refresh reuse), so that its access tokens are refused here without
    /// waiting for `cache_ttl`; other cells follow within it.
    pub fn evict_session(&self, family: &str) {
        self.inner.sessions.remove(family);
    }

    /// Writes the uses recorded since the last flush in one batch.
    pub async fn flush_last_used(&self) -> Result<usize> {
        let uses: Vec<(String, i64)> = match self.inner.uses.lock() {
            Ok(mut u) => u.drain().collect(),
            Err(_) => return Err(Error::Task("API key use map poisoned".into())),
        };
        if uses.is_empty() {
            return Ok(0);
        }
        self.inner.store.touch_api_keys(&uses).await?;
        Ok(uses.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_their_secret() {
        let k = generate_api_key();
        let (id, secret) = parse_api_key(&k.plaintext).unwrap();
        assert_eq!(id, k.id);
        let h: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        assert_eq!(h, k.secret_sha256);
        assert_ne!(generate_api_key().plaintext, k.plaintext);
    }

    #[test]
    fn malformed_keys_are_named() {
        for (bad, why) in [
            ("hk_0123456789abcdef_x", "start with hck_"),
            ("hck_0123456789abcdef", "separated"),
            (
                "hck_0123456789ABCDEF_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "hex",
            ),
            ("hck_0123456789abcdef_short", "43 base64url"),
            (
                "hck_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!a",
                "43 base64url",
            ),
        ] {
            let e = parse_api_key(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
