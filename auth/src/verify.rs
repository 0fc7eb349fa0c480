use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use honeycell_types::OrgId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{JwtConfig, KeyAlg};
use crate::context::{Credential, TenantContext, check_subject};
use crate::error::{Error, Result};
use crate::role::{ActionSet, Role};
use crate::sign::unix_now;

/// Longest token accepted. Ours are a few hundred bytes; the bound keeps the
/// work done on hostile input small before any signature is checked.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Checks bearer tokens and turns them into a [`TenantContext`].
///
/// Immutable after construction and cheap to clone (one `Arc`), so every
/// cell can hold a clone and verify where a request lands, without locks.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    alg: KeyAlg,
    key: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    leeway_secs: u64,
    max_lifetime: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.inner.alg.name())
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .finish_non_exhaustive()
    }
}

/// The JOSE header, read by us before `jsonwebtoken` sees the token:
/// `jsonwebtoken` cannot represent `alg: none`, and we want to name the
/// offending algorithm precisely.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<Value>,
    kid: Option<Value>,
    crit: Option<Value>,
}

/// Claims as they arrive, loosely typed so that each problem gets its own
/// message; `iss` and `aud` are checked by `jsonwebtoken`, the times by
/// [`Verifier::check_times`].
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<Value>,
    org: Option<Value>,
    role: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iat: Option<Value>,
    jti: Option<Value>,
    sid: Option<Value>,
    scope: Option<Value>,
}

impl Verifier {
    /// Loads and checks the key; fails with [`Error::Config`] naming the
    /// setting to fix.
    pub fn new(config: &JwtConfig) -> Result<Self> {
        let alg = config.key_alg()?;
        let key = config.decoding_key(alg)?;
        Ok(Self::with_key(alg, key, config))
    }

    /// A verifier for one server-managed Ed25519 key (SPKI PEM), with the
    /// issuer, audience and leeway of `config`.
    pub fn ed25519(kid: &str, public_pem: &str, config: &JwtConfig) -> Result<Self> {
        let key = DecodingKey::from_ed_pem(public_pem.as_bytes()).map_err(|e| Error::Config {
            key: "signing key",
            reason: format!("key {kid} is not an Ed25519 public key in PEM: {e}"),
        })?;
        Ok(Self::with_key(KeyAlg::EdDsa, key, config))
    }

    /// `key` for `alg`, with the claims `config` requires: issuer,
    /// audience and `sub` checked by `jsonwebtoken`; `exp`, `nbf` and `iat`
    /// (with the leeway and `max_lifetime`) by [`Verifier::check_times`],
    /// because `jsonwebtoken` reads them as unsigned integers (`exp: -1`
    /// would be "missing", not expired) and knows no maximum lifetime.
    fn with_key(alg: KeyAlg, key: DecodingKey, config: &JwtConfig) -> Self {
        let mut validation = Validation::new(alg.jwt());
        validation.leeway = config.leeway_secs;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = true;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["iss", "aud", "sub"]);
        Self {
            inner: Arc::new(Inner {
                alg,
                key,
                validation,
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                leeway_secs: config.leeway_secs,
                max_lifetime: config.max_lifetime,
            }),
        }
    }

    /// Verifies the value of an `Authorization` header (`None` if absent).
    /// The scheme is matched case-insensitively, as RFC 9110 §11.1 requires.
    pub fn verify_bearer(&self, authorization: Option<&str>) -> Result<TenantContext> {
        let value = authorization
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(Error::MissingToken)?;
        let (scheme, token) = value
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Error::NotBearer);
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::Malformed {
                reason: "the Bearer credential is empty",
            });
        }
        self.verify(token)
    }

    /// Verifies a compact JWT: algorithm, signature, then claims.
    pub fn verify(&self, token: &str) -> Result<TenantContext> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::Malformed {
                reason: "the token is longer than 8 KiB",
            });
        }
        let key_id = self.check_header(token)?;
        let data =
            jsonwebtoken::decode::<RawClaims>(token, &self.inner.key, &self.inner.validation)
                .map_err(|e| self.map_decode_error(e.into_kind()))?;
        let claims = data.claims;
        let expires_at = self.check_times(&claims, unix_now())?;

        let org = string_claim("org", claims.org)?;
        let org = OrgId::new(org).map_err(|e| Error::InvalidClaim {
            claim: "org",
            reason: e.to_string(),
        })?;
        let subject = string_claim("sub", claims.sub)?;
        check_subject(&subject).map_err(|reason| Error::InvalidClaim {
            claim: "sub",
            reason,
        })?;
        let role = string_claim("role", claims.role)?
            .parse::<Role>()
            .map_err(|e| Error::InvalidClaim {
                claim: "role",
                reason: e.to_string(),
            })?;
        let token_id = optional_string_claim("jti", claims.jti)?;
        let session_id = optional_string_claim("sid", claims.sid)?;

        let scopes = match claims.scope {
            None | Some(Value::Null) => ActionSet::ALL,
            Some(Value::String(s)) => {
                let names: Vec<&str> = s.split_whitespace().collect();
                if names.is_empty() {
                    ActionSet::ALL
                } else {
                    ActionSet::from_scopes(&names).map_err(|e| Error::InvalidClaim {
                        claim: "scope",
                        reason: e.to_string(),
                    })?
                }
            }
            Some(_) => {
                return Err(Error::InvalidClaim {
                    claim: "scope",
                    reason: "must be a space-separated string".to_owned(),
                });
            }
        };

        Ok(TenantContext {
            org,
            subject,
            role,
            credential: Credential::Jwt {
                key_id,
                expires_at,
                token_id,
                session_id,
                scopes,
            },
            quota: crate::context::Quota::default(),
        })
    }

    /// Checks `exp` (required), `nbf` and `iat` (optional) against `now`
    /// (seconds since the Unix epoch): numbers of seconds, possibly negative
    /// or fractional; not expired, not valid only later, not issued in the
    /// future (each with the leeway), and not living longer than
    /// `max_lifetime` from now or from `iat`. Returns `exp`.
    fn check_times(&self, claims: &RawClaims, now: u64) -> Result<u64> {
        let now = now as f64;
        let leeway = self.inner.leeway_secs as f64;
        let max = self.inner.max_lifetime.as_secs_f64();
        let exp = time_claim("exp", claims.exp.as_ref())?.ok_or(Error::InvalidClaim {
            claim: "exp",
            reason: "required claim is missing".to_owned(),
        })?;
        let nbf = time_claim("nbf", claims.nbf.as_ref())?;
        let iat = time_claim("iat", claims.iat.as_ref())?;
        if exp < now - leeway {
            return Err(Error::Expired);
        }
        for (claim, at) in [("nbf", nbf), ("iat", iat)] {
            if at.is_some_and(|at| at > now + leeway) {
                return Err(Error::NotYetValid {
                    claim,
                    leeway_secs: self.inner.leeway_secs,
                });
            }
        }
        let too_long = |from| Error::LifetimeTooLong {
            max: humantime::format_duration(self.inner.max_lifetime).to_string(),
            from,
        };
        if exp > now + max + leeway {
            return Err(too_long("now"));
        }
        if iat.is_some_and(|iat| exp - iat > max + leeway) {
            return Err(too_long("its `iat`"));
        }
        // Not expired, so positive; not too far away, so it fits.
        Ok(exp.round() as u64)
    }

    /// Refuses `alg: none` and any algorithm other than the configured one
    /// before a key is touched (algorithm confusion, RFC 8725 §2.1), and
    /// returns the `kid`.
    fn check_header(&self, token: &str) -> Result<Option<String>> {
        let mut segments = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(Error::Malformed {
                reason: "expected three base64url segments separated by `.`",
            });
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| Error::Malformed {
                reason: "the header segment is not base64url",
            })?;
        let header: RawHeader = serde_json::from_slice(&header).map_err(|_| Error::Malformed {
            reason: "the header is not a JSON object",
        })?;
        let Some(Value::String(alg)) = header.alg else {
            return Err(Error::Malformed {
                reason: "the header has no string `alg`",
            });
        };
        if alg.eq_ignore_ascii_case("none") {
            return Err(Error::AlgNone);
        }
        let expected = self.inner.alg.name();
        if alg != expected {
            return Err(Error::AlgorithmNotAllowed {
                got: alg.chars().take(32).collect(),
                expected,
            });
        }
        if payload.is_empty() || signature.is_empty() {
            return Err(Error::Malformed {
                reason: "the claims or signature segment is empty",
            });
        }
        // RFC 7515 §4.1.11: extensions listed in `crit` must be understood;
        // we understand none.
        if header.crit.is_some() {
            return Err(Error::Malformed {
                reason: "the header lists `crit` extensions, which this server does not support",
            });
        }
        match header.kid {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(kid)) => Ok(Some(kid)),
            Some(_) => Err(Error::Malformed {
                reason: "the header `kid` is not a string",
            }),
        }
    }

    fn map_decode_error(&self, kind: ErrorKind) -> Error {
        match kind {
            ErrorKind::InvalidSignature => Error::BadSignature,
            // `exp` and `nbf` are ours to check (`check_times`); these
            // cannot happen, but map them faithfully should they.
            ErrorKind::ExpiredSignature => Error::Expired,
            ErrorKind::ImmatureSignature => Error::NotYetValid {
                claim: "nbf",
                leeway_secs: self.inner.leeway_secs,
            },
            ErrorKind::InvalidIssuer => Error::WrongIssuer {
                expected: self.inner.issuer.clone(),
            },
            ErrorKind::InvalidAudience => Error::WrongAudience {
                expected: self.inner.audience.clone(),
            },
            ErrorKind::MissingRequiredClaim(claim) => Error::InvalidClaim {
                claim: spec_claim(&claim),
                reason: "required claim is missing or has the wrong type".to_owned(),
            },
            ErrorKind::InvalidClaimFormat(claim) => Error::InvalidClaim {
                claim: spec_claim(&claim),
                reason: "must be a number of seconds since the Unix epoch".to_owned(),
            },
            ErrorKind::InvalidToken => Error::Malformed {
                reason: "expected three base64url segments separated by `.`",
            },
            ErrorKind::Base64(_) => Error::Malformed {
                reason: "a segment is not base64url",
            },
            ErrorKind::Json(_) | ErrorKind::Utf8(_) => Error::Malformed {
                reason: "the header or the claims are not a JSON object of the expected shape",
            },
            _ => Error::Malformed {
                reason: "the token could not be decoded",
            },
        }
    }
}

/// The `kid` of a compact JWT's header, without verifying anything (to pick
/// the key that will).
pub fn peek_kid(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    if header.len() > 1024 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    match serde_json::from_slice::<RawHeader>(&bytes).ok()?.kid {
        Some(Value::String(kid)) => Some(kid),
        _ => None,
    }
}

/// A NumericDate claim (RFC 7519 §2: seconds since the epoch, possibly
/// fractional): `None` when absent or null.
fn time_claim(claim: &'static str, value: Option<&Value>) -> Result<Option<f64>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(Error::InvalidClaim {
            claim,
            reason: "must be a number of seconds since the Unix epoch".to_owned(),
        }),
        Some(_) => Err(Error::InvalidClaim {
            claim,
            reason: "must be a number of seconds since the Unix epoch".to_owned(),
        }),
    }
}

fn optional_string_claim(claim: &'static str, value: Option<Value>) -> Result<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::InvalidClaim {
            claim,
            reason: "must be a string".to_owned(),
        }),
    }
}

fn string_claim(claim: &'static str, value: Option<Value>) -> Result<String> {
    match value {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(Error::InvalidClaim {
            claim,
            reason: "required claim is missing".to_owned(),
        }),
        Some(_) => Err(Error::InvalidClaim {
            claim,
            reason: "must be a string".to_owned(),
        }),
    }
}

/// `jsonwebtoken` names claims with a `String`; ours are `&'static str`.
fn spec_claim(name: &str) -> &'static str {
    match name {
        "exp" => "exp",
        "nbf" => "nbf",
        "iss" => "iss",
        "aud" => "aud",
        "sub" => "sub",
        _ => "unknown",
    }
}
