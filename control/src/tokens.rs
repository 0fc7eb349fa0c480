//! Token issuance: short-lived access tokens signed with server-managed
//! Ed25519 keys (each with a `kid`, published as JWKs), and opaque refresh
//! tokens with rotation and reuse detection.
//!
//! Keys. The store holds every signing key; the newest key that is not
//! retired signs, and every stored key verifies, so rotation
//! (`honeycell keys rotate`: a new key, the old one retired) needs no
//! downtime: tokens signed before keep verifying until they expire, and a
//! retired key may be deleted once the access lifetime has passed. Each
//! cell's [`TokenService`] caches the key ring and reloads it when a token
//! names a `kid` it does not know (at most once a second), every
//! `control.signing_key_reload` (30 s), and at its next use after the
//! server's [`KeyRingReload`] signal fires (the admin socket fires it after
//! `keys rotate` and `keys prune`, so a running server signs with a new key
//! at once).
//!
//! Refresh tokens are `hcr_<43 base64url>`; the store keeps only the
//! SHA-256 (hex) as the record id. Each refresh returns a new pair and
//! retires the presented token; presenting a retired one again revokes its
//! whole family (the login it descends from) and is audited. Access tokens
//! carry their family's id as `sid`, so revoking the family — reuse, or
//! `/auth/logout` — also refuses the access tokens issued to that login
//! (the `Authenticator` checks it through its per-cell cache, ≤ 1 s). A family
//! started from an API key dies with the key: refreshing checks the key
//! is still live. A family started by a person's sign-in (subject
//! `user:<id>`) dies with their membership and takes its current role.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use honeycell_auth::{Credential, JwtConfig, Signer, TenantContext, Verifier};
use honeycell_types::now_us;
use sha2::{Digest, Sha256};

use crate::Store;
use crate::error::{Error, Result};
use crate::model::{RefreshState, RefreshToken, Rotation, SigningKey};

/// The prefix of managed keys' ids.
pub const KID_PREFIX: &str = "hc-";
/// The prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "hcr_";
const RELOAD_AT_MOST: Duration = Duration::from_secs(1);

/// A pair as returned to the client.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds.
    pub expires_in: u64,
    pub refresh_token: String,
    /// Seconds.
    pub refresh_expires_in: u64,
}

struct Ring {
    signer: Option<Signer>,
    verifiers: HashMap<String, Verifier>,
    jwks: serde_json::Value,
    loaded: Instant,
    /// The [`KeyRingReload`] generation read before the keys were.
    generation: u64,
}

impl Ring {
    /// Whether this ring may still be used as it is.
    fn fresh(&self, reload_every: Duration, signal: &KeyRingReload) -> bool {
        self.loaded.elapsed() < reload_every && self.generation == signal.generation()
    }
}

/// Tells every cell's key ring to re-read the signing keys at its next use.
/// One counter for the whole server, shared by its cells' [`TokenService`]s:
/// a signal, like the shutdown one, that carries no state of its own.
#[derive(Clone, Debug, Default)]
pub struct KeyRingReload(Arc<AtomicU64>);

impl KeyRingReload {
    /// Every ring loaded before this call reloads at its next use.
    pub fn fire(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    fn generation(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Issues and checks tokens for one cell.
#[derive(Clone)]
pub struct TokenService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: JwtConfig,
    access_ttl: Duration,
    refresh_ttl: Duration,
    reload_every: Duration,
    reload_now: KeyRingReload,
    ring: Mutex<Arc<Ring>>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("access_ttl", &self.inner.access_ttl)
            .field("refresh_ttl", &self.inner.refresh_ttl)
            .finish_non_exhaustive()
    }
}

fn hash_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn new_kid() -> String {
    let b: [u8; 8] = rand::random();
    format!("{KID_PREFIX}{}", hex::encode(b))
}

/// Makes sure a signing key exists (the first start makes one).
pub async fn ensure_signing_key(store: &Store) -> Result<()> {
    let keys = store.signing_keys().await?;
    if keys.iter().any(|k| k.retired_at_us.is_none()) {
        return Ok(());
    }
    insert_new_key(store).await.map(|_| ())
}

async fn insert_new_key(store: &Store) -> Result<String> {
    let generated = honeycell_auth::generate_ed25519()?;
    let kid = new_kid();
    store
        .insert_signing_key(&SigningKey {
            kid: kid.clone(),
            alg: "EdDSA".into(),
            private_pem: generated.private_pem,
            public_pem: generated.public_pem,
            created_at_us: now_us(),
            retired_at_us: None,
        })
        .await?;
    Ok(kid)
}

/// A new signing key; every other key is retired (still verifies). Returns
/// the new `kid`.
pub async fn rotate_signing_key(store: &Store) -> Result<String> {
    let kid = insert_new_key(store).await?;
    let now = now_us();
    for k in store.signing_keys().await? {
        if k.kid != kid && k.retired_at_us.is_none() {
            store.retire_signing_key(&k.kid, now).await?;
        }
    }
    Ok(kid)
}

impl TokenService {
    /// Loads the key ring from the store; it is re-read every
    /// `reload_every`, at its next use once `reload_now` fires, and at once
    /// (at most once a second) when a token names an unknown `kid`.
    pub async fn load(
        store: Store,
        config: JwtConfig,
        access_ttl: Duration,
        refresh_ttl: Duration,
        reload_every: Duration,
        reload_now: KeyRingReload,
    ) -> Result<Self> {
        let ring = build_ring(&store, &config, reload_now.generation()).await?;
        Ok(TokenService {
            inner: Arc::new(Inner {
                store,
                config,
                access_ttl,
                refresh_ttl,
                reload_every,
                reload_now,
                ring: Mutex::new(Arc::new(ring)),
            }),
        })
    }

    fn ring(&self) -> Arc<Ring> {
        match self.inner.ring.lock() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    async fn reload(&self) -> Result<Arc<Ring>> {
        // The generation is read before the keys: a signal fired while they
        // are read makes the next use read them again.
        let generation = self.inner.reload_now.generation();
        let ring = Arc::new(build_ring(&self.inner.store, &self.inner.config, generation).await?);
        if let Ok(mut r) = self.inner.ring.lock() {
            *r = ring.clone();
        }
        Ok(ring)
    }

    fn fresh(&self, ring: &Ring) -> bool {
        ring.fresh(self.inner.reload_every, &self.inner.reload_now)
    }

    /// The verifier for `kid`, reloading the ring when the kid is unknown
    /// (or the ring is old).
    pub async fn verifier_for(&self, kid: &str) -> Result<Option<Verifier>> {
        let ring = self.ring();
        let fresh = self.fresh(&ring);
        if let Some(v) = ring.verifiers.get(kid)
            && fresh
        {
            return Ok(Some(v.clone()));
        }
        // A fired signal reloads at once; an unknown kid at most once a
        // second (anyone can send one).
        if fresh && ring.loaded.elapsed() < RELOAD_AT_MOST {
            return Ok(ring.verifiers.get(kid).cloned());
        }
        Ok(self.reload().await?.verifiers.get(kid).cloned())
    }

    /// The public keys, as a JWK set.
    pub async fn jwks(&self) -> Result<serde_json::Value> {
        let ring = self.ring();
        if !self.fresh(&ring) {
            return Ok(self.reload().await?.jwks.clone());
        }
        Ok(ring.jwks.clone())
    }

    pub fn access_ttl(&self) -> Duration {
        self.inner.access_ttl
    }

    /// A new pair for `ctx`: a new refresh family (a login), whose id the
    /// access token carries as `sid`.
    pub async fn issue(&self, ctx: &TenantContext) -> Result<TokenPair> {
        let signer = self.signer().await?;
        let family = hash_hex(&random_text());
        let access = signer.mint_scoped(
            &ctx.org,
            &ctx.subject,
            ctx.role,
            &scope_names(ctx),
            Some(&family),
            self.inner.access_ttl,
        )?;
        let (text, record) = self.new_refresh(ctx, &family);
        self.inner.store.insert_refresh(&record).await?;
        Ok(self.pair_of(access, text))
    }

    async fn signer(&self) -> Result<Signer> {
        let ring = self.ring();
        if let Some(s) = &ring.signer
            && self.fresh(&ring)
        {
            return Ok(s.clone());
        }
        self.reload()
            .await?
            .signer
            .clone()
            .ok_or_else(|| Error::Config("no signing key: run honeycell keys rotate".into()))
    }

    /// A refresh token's text and record, in `family`.
    fn new_refresh(&self, ctx: &TenantContext, family: &str) -> (String, RefreshToken) {
        let text = format!("{REFRESH_PREFIX}{}", random_text());
        let now = now_us();
        let record = RefreshToken {
            id: hash_hex(&text),
            family: family.to_owned(),
            org: ctx.org.clone(),
            subject: ctx.subject.clone(),
            role: ctx.role,
            issued_at_us: now,
            expires_at_us: now.saturating_add(self.inner.refresh_ttl.as_micros() as i64),
            state: RefreshState::Active,
        };
        (text, record)
    }

    fn pair_of(&self, access_token: String, refresh_token: String) -> TokenPair {
        TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in: self.inner.access_ttl.as_secs(),
            refresh_token,
            refresh_expires_in: self.inner.refresh_ttl.as_secs(),
        }
    }

    /// Exchanges a refresh token for a new pair. `Err(Auth)` for unknown,
    /// expired, revoked or reused tokens; reuse revokes the family first.
    pub async fn refresh(&self, refresh_token: &str) -> Result<(TokenPair, RefreshToken)> {
        let old_id = parse_refresh(refresh_token)?;
        let signer = self.signer().await?;
        let now = now_us();
        let Some(current) = self.inner.store.refresh(&old_id).await? else {
            return Err(honeycell_auth::Error::BadRefreshToken.into());
        };
        // A family started from an API key ends with the key, and keeps its
        // scopes.
        let mut scopes = honeycell_auth::ActionSet::ALL;
        if let Some(key_id) = current.subject.strip_prefix("apikey:") {
            match self.inner.store.api_key(key_id).await? {
                Some(k) if k.is_live(now) => {
                    scopes = honeycell_auth::ActionSet::from_scopes(&k.scopes)?
                }
                _ => {
                    self.inner
                        .store
                        .revoke_refresh_family(&current.family)
                        .await?;
                    return Err(honeycell_auth::Error::ApiKeyRevoked.into());
                }
            }
        }
        // A family started by a person's sign-in lives only as long as
        // their membership, and follows its current role.
        let mut role = current.role;
        if let Some(user_id) = current.subject.strip_prefix("user:") {
            let membership = self
                .inner
                .store
                .memberships_of_user(user_id)
                .await?
                .into_iter()
                .find(|m| m.org == current.org);
            match membership {
                Some(m) => role = m.role,
                None => {
                    self.inner
                        .store
                        .revoke_refresh_family(&current.family)
                        .await?;
                    return Err(honeycell_auth::Error::NoLongerMember.into());
                }
            }
        }
        let ctx = TenantContext {
            org: current.org.clone(),
            subject: current.subject.clone(),
            role,
            credential: Credential::Jwt {
                key_id: None,
                expires_at: 0,
                token_id: None,
                session_id: None,
                scopes,
            },
            quota: honeycell_auth::Quota::default(),
        };
        let (next_text, next) = self.new_refresh(&ctx, &current.family);
        let old = match self.inner.store.rotate_refresh(&old_id, now, &next).await? {
            Rotation::Rotated(old) => old,
            Rotation::ReuseDetected(old) => {
                return Err(Error::RefreshReuse {
                    family: old.family,
                    org: old.org,
                    subject: old.subject,
                });
            }
            Rotation::Revoked(_) | Rotation::Unknown => {
                return Err(honeycell_auth::Error::BadRefreshToken.into());
            }
            Rotation::Expired(_) => return Err(honeycell_auth::Error::RefreshExpired.into()),
        };
        let access = signer.mint_scoped(
            &ctx.org,
            &ctx.subject,
            ctx.role,
            &scope_names(&ctx),
            Some(&old.family),
            self.inner.access_ttl,
        )?;
        Ok((self.pair_of(access, next_text), old))
    }

    /// Revokes the family of a refresh token (logout); the token's record,
    /// or `None` if unknown.
    pub async fn logout(&self, refresh_token: &str) -> Result<Option<RefreshToken>> {
        let id = parse_refresh(refresh_token)?;
        let Some(t) = self.inner.store.refresh(&id).await? else {
            return Ok(None);
        };
        self.inner.store.revoke_refresh_family(&t.family).await?;
        Ok(Some(t))
    }
}

/// 32 random bytes as base64url (43 characters).
fn random_text() -> String {
    let b: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(b)
}

/// The scope names a credential carries (empty: the whole role).
fn scope_names(ctx: &TenantContext) -> Vec<String> {
    let scopes = match &ctx.credential {
        Credential::Jwt { scopes, .. } | Credential::ApiKey { scopes, .. } => *scopes,
    };
    if scopes == honeycell_auth::ActionSet::ALL {
        return Vec::new();
    }
    honeycell_auth::Action::all()
        .filter(|a| scopes.contains(*a))
        .map(|a| a.permission().to_owned())
        .collect()
}

/// The store id of a refresh token's text, after a shape check.
fn parse_refresh(text: &str) -> Result<String> {
    text.strip_prefix(REFRESH_PREFIX)
        .filter(|s| {
            s.len() == 43
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or(honeycell_auth::Error::BadRefreshToken)?;
    Ok(hash_hex(text))
}

async fn build_ring(store: &Store, config: &JwtConfig, generation: u64) -> Result<Ring> {
    let keys = store.signing_keys().await?;
    let mut verifiers = HashMap::new();
    let mut jwks = Vec::new();
    let mut signer = None;
    for k in &keys {
        verifiers.insert(
            k.kid.clone(),
            Verifier::ed25519(&k.kid, &k.public_pem, config)?,
        );
        jwks.push(honeycell_auth::ed25519_jwk(&k.kid, &k.public_pem)?);
    }
    // The newest live key signs.
    if let Some(k) = keys.iter().rev().find(|k| k.retired_at_us.is_none()) {
        signer = Some(Signer::ed25519(&k.kid, &k.private_pem, config)?);
    }
    Ok(Ring {
        signer,
        verifiers,
        jwks: serde_json::json!({ "keys": jwks }),
        loaded: Instant::now(),
        generation,
    })
}
