use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use honeycell_types::OrgId;
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::role::Role;
use crate::sign::Signer;
use crate::verify::Verifier;

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as
/// long as the hash output (256 bits).
pub(crate) const MIN_SECRET_BYTES: usize = 32;
/// Clock skew beyond this means a broken clock, not skew; it also keeps
/// `now ± leeway` far from integer overflow inside `jsonwebtoken`.
pub(crate) const MAX_LEEWAY_SECS: u64 = 600;
/// The default `jwt.max_lifetime`.
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The most `jwt.max_lifetime` may be: a credential meant to live longer
/// belongs in an API key, which can be revoked.
const MAX_MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);
const MIN_RSA_BITS: usize = 2048;

/// The `[jwt]` section of the server configuration.
///
/// HS256 (one shared secret) is the default because it needs no key files;
/// RS256 and EdDSA let other services verify tokens without being able to
/// mint them: the server then holds only `public_key_file`, and the minting
/// side `private_key_file`.
#[derive(Deserialize, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256` (default), `RS256` or `EdDSA`; tokens with any other `alg` are refused.
    pub algorithm: String,
    /// HS256 secret, at least 32 bytes. The server fills it from `HONEYCELL_JWT_SECRET`.
    pub secret: Option<String>,
    /// HS256 secret read from a file (trailing newline ignored), instead of `secret`.
    pub secret_file: Option<PathBuf>,
    /// PEM public key (`BEGIN PUBLIC KEY`) that verifies RS256 / EdDSA tokens.
    pub public_key_file: Option<PathBuf>,
    /// PEM private key (`BEGIN PRIVATE KEY`) that mints RS256 / EdDSA tokens.
    pub private_key_file: Option<PathBuf>,
    /// `kid` header written into minted tokens and reported in the credential.
    pub key_id: Option<String>,
    /// Expected and minted `iss`.
    pub issuer: String,
    /// Expected and minted `aud`.
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds (at most 600).
    pub leeway_secs: u64,
    /// The longest a token may live (`"24h"` by default, at most a year):
    /// tokens whose `exp` is further than this from now, or from their
    /// `iat`, are refused, and `honeycell token --ttl` mints none longer.
    #[serde(deserialize_with = "duration")]
    pub max_lifetime: Duration,
}

/// A humantime duration (`"24h"`, `"90m"`), read when the config is.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); use one such as 24h or 90m"
        ))
    })
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithm: "HS256".to_owned(),
            secret: None,
            secret_file: None,
            public_key_file: None,
            private_key_file: None,
            key_id: None,
            issuer: "honeycell".to_owned(),
            audience: "honeycell".to_owned(),
            leeway_secs: 30,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }
}

// By hand, so that the secret never reaches a log line.
impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("secret_file", &self.secret_file)
            .field("public_key_file", &self.public_key_file)
            .field("private_key_file", &self.private_key_file)
            .field("key_id", &self.key_id)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field(
                "max_lifetime",
                &humantime::format_duration(self.max_lifetime).to_string(),
            )
            .finish()
    }
}

/// The algorithms Honeycell accepts. Deliberately short: every extra
/// algorithm is extra attack surface (RFC 8725 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyAlg {
    Hs256,
    Rs256,
    EdDsa,
}

impl KeyAlg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyAlg::Hs256 => "HS256",
            KeyAlg::Rs256 => "RS256",
            KeyAlg::EdDsa => "EdDSA",
        }
    }

    pub(crate) fn jwt(self) -> Algorithm {
        match self {
            KeyAlg::Hs256 => Algorithm::HS256,
            KeyAlg::Rs256 => Algorithm::RS256,
            KeyAlg::EdDsa => Algorithm::EdDSA,
        }
    }
}

fn config_err(key: &'static str, reason: impl Into<String>) -> Error {
    Error::Config {
        key,
        reason: reason.into(),
    }
}

impl JwtConfig {
    /// Checks everything `check-config` can know before serving: settings,
    /// key files readable and of the right kind, and, when this config can
    /// also mint (HS256, or a `private_key_file`), that a freshly minted token
    /// verifies, which catches a private key that does not match the public one.
    pub fn validate(&self) -> Result<()> {
        let verifier = Verifier::new(self)?;
        if self.key_alg()? != KeyAlg::Hs256 && self.private_key_file.is_none() {
            return Ok(());
        }
        let signer = Signer::new(self)?;
        let org = OrgId::new("check-config").map_err(|e| Error::Sign {
            reason: e.to_string(),
        })?;
        let token = signer.mint(&org, "check-config", Role::Viewer, Duration::from_secs(60))?;
        match verifier.verify(&token) {
            Ok(_) => Ok(()),
            Err(Error::BadSignature) => Err(config_err(
                "jwt.private_key_file",
                "does not match jwt.public_key_file: tokens it signs would be refused; \
                 export the public key with `openssl pkey -in <private.pem> -pubout`",
            )),
            Err(e) => Err(config_err(
                "jwt",
                format!("a freshly minted token does not verify: {e}"),
            )),
        }
    }

    /// The configured algorithm, after the checks common to verifying and
    /// minting.
    pub(crate) fn key_alg(&self) -> Result<KeyAlg> {
        let alg = [KeyAlg::Hs256, KeyAlg::Rs256, KeyAlg::EdDsa]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(self.algorithm.trim()))
            .ok_or_else(|| {
                config_err(
                    "jwt.algorithm",
                    format!(
                        "unsupported algorithm {:?}; use one of HS256, RS256, EdDSA",
                        self.algorithm
                    ),
                )
            })?;
        if self.issuer.trim().is_empty() {
            return Err(config_err(
                "jwt.issuer",
                "must not be empty (default \"honeycell\")",
            ));
        }
        if self.audience.trim().is_empty() {
            return Err(config_err(
                "jwt.audience",
                "must not be empty (default \"honeycell\")",
            ));
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(config_err(
                "jwt.leeway_secs",
                format!(
                    "{} s is more than the {MAX_LEEWAY_SECS} s allowed; fix the clocks instead (default 30)",
                    self.leeway_secs
                ),
            ));
        }
        if self.max_lifetime < Duration::from_secs(1) || self.max_lifetime > MAX_MAX_LIFETIME {
            return Err(config_err(
                "jwt.max_lifetime",
                format!(
                    "{} is outside 1s..366d; tokens meant to live longer than a year belong in API keys (default 24h)",
                    humantime::format_duration(self.max_lifetime)
                ),
            ));
        }
        if self.key_id.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(config_err(
                "jwt.key_id",
                "must not be empty; remove it or name the key",
            ));
        }
        match alg {
            KeyAlg::Hs256 => {
                if self.public_key_file.is_some() {
                    return Err(config_err(
                        "jwt.public_key_file",
                        "is only used with RS256 or EdDSA; remove it or change jwt.algorithm",
                    ));
                }
                if self.private_key_file.is_some() {
                    return Err(config_err(
                        "jwt.private_key_file",
                        "is only used with RS256 or EdDSA; remove it or change jwt.algorithm",
                    ));
                }
            }
            KeyAlg::Rs256 | KeyAlg::EdDsa => {
                // Refused rather than ignored: a leftover secret suggests the
                // operator believes HS256 is in use.
                if self.secret.is_some() {
                    return Err(config_err(
                        "jwt.secret",
                        format!(
                            "is only used with HS256 but jwt.algorithm is {}; unset HONEYCELL_JWT_SECRET / jwt.secret",
                            alg.name()
                        ),
                    ));
                }
                if self.secret_file.is_some() {
                    return Err(config_err(
                        "jwt.secret_file",
                        format!(
                            "is only used with HS256 but jwt.algorithm is {}; remove it",
                            alg.name()
                        ),
                    ));
                }
            }
        }
        Ok(alg)
    }

    /// The key that checks signatures, fully parsed, so that a bad key fails
    /// here at start-up and not on the first request.
    pub(crate) fn decoding_key(&self, alg: KeyAlg) -> Result<DecodingKey> {
        const KEY: &str = "jwt.public_key_file";
        let not_public = |path: &Path, what: &str| {
            config_err(
                KEY,
                format!(
                    "{} is not {what} public key in PEM (-----BEGIN PUBLIC KEY-----)",
                    path.display()
                ),
            )
        };
        match alg {
            KeyAlg::Hs256 => Ok(DecodingKey::from_secret(&self.hmac_secret()?)),
            KeyAlg::Rs256 => {
                let (path, pem) = read_key_file(KEY, self.public_key_file.as_deref(), alg)?;
                let bad = || not_public(path, "an RSA");
                let key = DecodingKey::from_rsa_pem(&pem).map_err(|_| bad())?;
                let der = key.try_get_as_bytes().map_err(|_| bad())?;
                let (n, _e) = (DEFAULT_PROVIDER
                    .key_utils
                    .rsa_pub_components_from_public_key)(der)
                .map_err(|_| bad())?;
                check_rsa_bits(KEY, path, &n)?;
                Ok(key)
            }
            KeyAlg::EdDsa => {
                let (path, pem) = read_key_file(KEY, self.public_key_file.as_deref(), alg)?;
                let bad = || not_public(path, "an Ed25519");
                let key = DecodingKey::from_ed_pem(&pem).map_err(|_| bad())?;
                // jsonwebtoken slices the first 32 bytes without a length
                // check; make sure that can never panic.
                if key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(32) {
                    return Err(bad());
                }
                // Building the verifier parses the curve point; the dummy
                // signature simply does not verify (`Ok(false)`).
                jsonwebtoken::crypto::verify("AA", b"probe", &key, Algorithm::EdDSA)
                    .map_err(|_| bad())?;
                Ok(key)
            }
        }
    }

    /// The key that signs minted tokens, checked by signing a probe.
    pub(crate) fn encoding_key(&self, alg: KeyAlg) -> Result<EncodingKey> {
        const KEY: &str = "jwt.private_key_file";
        let not_private = |path: &Path, what: &str| {
            config_err(
                KEY,
                format!(
                    "{} is not {what} private key in PEM (-----BEGIN PRIVATE KEY-----)",
                    path.display()
                ),
            )
        };
        let (path, key) = match alg {
            KeyAlg::Hs256 => return Ok(EncodingKey::from_secret(&self.hmac_secret()?)),
            KeyAlg::Rs256 => {
                let (path, pem) = read_key_file(KEY, self.private_key_file.as_deref(), alg)?;
                let bad = || not_private(path, "an RSA");
                let key = EncodingKey::from_rsa_pem(&pem).map_err(|_| bad())?;
                let (n, _e) =
                    (DEFAULT_PROVIDER
                        .key_utils
                        .rsa_pub_components_from_private_key)(key.as_bytes())
                    .map_err(|_| bad())?;
                check_rsa_bits(KEY, path, &n)?;
                (path, key)
            }
            KeyAlg::EdDsa => {
                let (path, pem) = read_key_file(KEY, self.private_key_file.as_deref(), alg)?;
                let key =
                    EncodingKey::from_ed_pem(&pem).map_err(|_| not_private(path, "an Ed25519"))?;
                (path, key)
            }
        };
        jsonwebtoken::crypto::sign(b"probe", &key, alg.jwt())
            .map_err(|_| not_private(path, &format!("a usable {}", alg.name())))?;
        Ok(key)
    }

    fn hmac_secret(&self) -> Result<Vec<u8>> {
        let (key, secret) = match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => {
                return Err(config_err(
                    "jwt.secret_file",
                    "set either jwt.secret (HONEYCELL_JWT_SECRET) or jwt.secret_file, not both",
                ));
            }
            (None, None) => {
                return Err(config_err(
                    "jwt.secret",
                    format!(
                        "HS256 needs a secret of at least {MIN_SECRET_BYTES} bytes; set HONEYCELL_JWT_SECRET (or jwt.secret_file)"
                    ),
                ));
            }
            (Some(secret), None) => ("jwt.secret", secret.as_bytes().to_vec()),
            (None, Some(path)) => {
                let mut bytes = read_file("jwt.secret_file", path)?;
                let kept = bytes.trim_ascii_end().len();
                bytes.truncate(kept);
                ("jwt.secret_file", bytes)
            }
        };
        if secret.starts_with(b"vault://") {
            return Err(config_err(
                key,
                "is a vault:// reference that was not resolved; the server must resolve it before building the verifier",
            ));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(config_err(
                key,
                format!(
                    "HS256 needs a secret of at least {MIN_SECRET_BYTES} bytes, got {}; set HONEYCELL_JWT_SECRET \
                     (e.g. to the output of `openssl rand -base64 48`)",
                    secret.len()
                ),
            ));
        }
        Ok(secret)
    }
}

/// Reads the PEM file an asymmetric algorithm needs, or says which key to set.
fn read_key_file<'a>(
    key: &'static str,
    path: Option<&'a Path>,
    alg: KeyAlg,
) -> Result<(&'a Path, Vec<u8>)> {
    let (what, begin) = if key == "jwt.public_key_file" {
        ("verifying", "PUBLIC")
    } else {
        ("minting", "PRIVATE")
    };
    let path = path.ok_or_else(|| {
        config_err(
            key,
            format!(
                "{what} {} tokens needs a PEM key file (-----BEGIN {begin} KEY-----); set {key}",
                alg.name()
            ),
        )
    })?;
    Ok((path, read_file(key, path)?))
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| config_err(key, format!("cannot read {}: {e}", path.display())))
}

fn check_rsa_bits(key: &'static str, path: &Path, modulus: &[u8]) -> Result<()> {
    let significant = modulus.iter().skip_while(|b| **b == 0).count();
    let bits = significant * 8;
    if bits < MIN_RSA_BITS {
        return Err(config_err(
            key,
            format!(
                "{} holds a {bits}-bit RSA key; use at least {MIN_RSA_BITS} bits",
                path.display()
            ),
        ));
    }
    Ok(())
}
