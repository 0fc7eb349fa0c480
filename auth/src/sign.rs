use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use honeycell_types::OrgId;
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

use crate::config::{JwtConfig, KeyAlg};
use crate::context::check_subject;
use crate::error::{Error, Result};
use crate::role::Role;

/// Mints tokens that [`crate::Verifier`] accepts: for the `honeycell token`
/// command and for tests. The server itself never needs one unless it holds
/// the private key.
#[derive(Clone)]
pub struct Signer {
    inner: Arc<Inner>,
}

struct Inner {
    alg: KeyAlg,
    key: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
    /// `jwt.max_lifetime`: no token minted here lives longer.
    max_lifetime: Duration,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.inner.alg.name())
            .field("key_id", &self.inner.header.kid)
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .finish_non_exhaustive()
    }
}

/// The claims we write: this struct is the token's wire format.
#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    org: &'a str,
    role: &'static str,
    iat: u64,
    exp: u64,
    iss: &'a str,
    aud: &'a str,
    jti: String,
    /// The login (refresh-token family) an access token was issued for, as
    /// OIDC's session id: revoking the login refuses the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<&'a str>,
    /// Space-separated permissions that narrow `role` (RFC 8693 `scope`);
    /// absent: everything the role permits.
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

impl Signer {
    /// Loads the signing key (the HS256 secret, or `jwt.private_key_file`).
    pub fn new(config: &JwtConfig) -> Result<Self> {
        let alg = config.key_alg()?;
        let key = config.encoding_key(alg)?;
        let mut header = Header::new(alg.jwt());
        header.kid = config.key_id.clone();
        Ok(Self {
            inner: Arc::new(Inner {
                alg,
                key,
                header,
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                max_lifetime: config.max_lifetime,
            }),
        })
    }

    /// A signer for a server-managed Ed25519 key (PKCS#8 PEM) whose tokens
    /// carry `kid` in their header.
    pub fn ed25519(kid: &str, private_pem: &str, config: &JwtConfig) -> Result<Self> {
        let key = EncodingKey::from_ed_pem(private_pem.as_bytes()).map_err(|e| Error::Config {
            key: "signing key",
            reason: format!("key {kid} is not an Ed25519 private key in PEM: {e}"),
        })?;
        let mut header = Header::new(KeyAlg::EdDsa.jwt());
        header.kid = Some(kid.to_owned());
        Ok(Self {
            inner: Arc::new(Inner {
                alg: KeyAlg::EdDsa,
                key,
                header,
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                max_lifetime: config.max_lifetime,
            }),
        })
    }

    /// The `kid` this signer writes, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.inner.header.kid.as_deref()
    }

    /// A token for `subject` in `org` with `role`, valid from now for `ttl`
    /// (whole seconds, at least one, at most `jwt.max_lifetime`).
    pub fn mint(&self, org: &OrgId, subject: &str, role: Role, ttl: Duration) -> Result<String> {
        self.mint_scoped(org, subject, role, &[], None, ttl)
    }

    /// Like [`Signer::mint`], with `scope` narrowing the role (an empty list
    /// writes no `scope` claim) and `session` written as `sid` (the login
    /// the token belongs to, for the server's own access tokens).
    pub fn mint_scoped(
        &self,
        org: &OrgId,
        subject: &str,
        role: Role,
        scopes: &[String],
        session: Option<&str>,
        ttl: Duration,
    ) -> Result<String> {
        check_subject(subject).map_err(|reason| Error::InvalidClaim {
            claim: "sub",
            reason,
        })?;
        let ttl_secs = ttl.as_secs();
        if ttl_secs == 0 {
            return Err(Error::InvalidTtl {
                got: humantime::format_duration(ttl).to_string(),
                reason: "must be at least 1s".to_owned(),
            });
        }
        if ttl > self.inner.max_lifetime {
            return Err(Error::InvalidTtl {
                got: humantime::format_duration(ttl).to_string(),
                reason: format!(
                    "is longer than jwt.max_lifetime ({}), so the token would be refused; \
                     use a shorter lifetime (an API key for a long-lived credential) or raise jwt.max_lifetime",
                    humantime::format_duration(self.inner.max_lifetime)
                ),
            });
        }
        let now = unix_now();
        let exp = now.checked_add(ttl_secs).ok_or_else(|| Error::InvalidTtl {
            got: humantime::format_duration(ttl).to_string(),
            reason: "is too long".to_owned(),
        })?;
        let claims = MintedClaims {
            sub: subject,
            org: org.as_str(),
            role: role.as_str(),
            iat: now,
            exp,
            iss: &self.inner.issuer,
            aud: &self.inner.audience,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            sid: session,
            scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
        };
        jsonwebtoken::encode(&self.inner.header, &claims, &self.inner.key).map_err(|e| {
            Error::Sign {
                reason: e.to_string(),
            }
        })
    }
}

/// Parses a token lifetime such as `30s`, `15m`, `1h` or `7days` (humantime
/// syntax); at least one second.
pub fn parse_ttl(s: &str) -> Result<Duration> {
    let ttl = humantime::parse_duration(s.trim()).map_err(|e| Error::InvalidTtl {
        got: s.to_owned(),
        reason: e.to_string(),
    })?;
    if ttl.as_secs() == 0 {
        return Err(Error::InvalidTtl {
            got: s.to_owned(),
            reason: "must be at least 1s".to_owned(),
        });
    }
    Ok(ttl)
}

pub(crate) fn unix_now() -> u64 {
    // A clock before 1970 is broken; the token then simply expires early.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
