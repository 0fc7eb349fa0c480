//! Server-managed signing keys: Ed25519 key pairs made by the server (for
//! the tokens it issues at `/auth/token` and `/auth/refresh`), as PEM text
//! for the control-plane store, and their public halves as JWKs for
//! `/.well-known/jwks.json`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// DER prefix of a PKCS#8 v1 Ed25519 private key; the 32-byte seed follows.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32-byte key follows.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A new key pair, as PEM.
pub struct GeneratedKey {
    /// PKCS#8 (`BEGIN PRIVATE KEY`).
    pub private_pem: String,
    /// SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`).
    pub public_pem: String,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Makes an Ed25519 key pair from 32 random bytes.
pub fn generate_ed25519() -> Result<GeneratedKey> {
    let seed: [u8; 32] = rand_seed();
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| Error::Sign {
        reason: format!("Ed25519 key generation failed: {e}"),
    })?;
    let mut private = PKCS8_PREFIX.to_vec();
    private.extend_from_slice(&seed);
    let mut public = SPKI_PREFIX.to_vec();
    public.extend_from_slice(pair.public_key().as_ref());
    Ok(GeneratedKey {
        private_pem: pem("PRIVATE KEY", &private),
        public_pem: pem("PUBLIC KEY", &public),
    })
}

fn rand_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    // ring's system random source (getrandom).
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
    seed
}

/// The JWK (RFC 8037, `OKP` / `Ed25519`) of a public key in SPKI PEM.
pub fn ed25519_jwk(kid: &str, public_pem: &str) -> Result<Value> {
    let b64: String = public_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(b64.trim()).map_err(|_| Error::Config {
        key: "signing key",
        reason: format!("key {kid}: the public key is not base64 PEM"),
    })?;
    if der.len() != SPKI_PREFIX.len() + 32 || der[..SPKI_PREFIX.len()] != SPKI_PREFIX {
        return Err(Error::Config {
            key: "signing key",
            reason: format!("key {kid}: not an Ed25519 public key"),
        });
    }
    Ok(json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&der[SPKI_PREFIX.len()..]),
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use honeycell_types::OrgId;

    use super::*;
    use crate::{JwtConfig, Role, Signer, Verifier, peek_kid};

    #[test]
    fn generated_keys_sign_and_verify_and_publish_a_jwk() {
        let k = generate_ed25519().unwrap();
        let config = JwtConfig::default();
        let signer = Signer::ed25519("k1", &k.private_pem, &config).unwrap();
        let verifier = Verifier::ed25519("k1", &k.public_pem, &config).unwrap();
        let org = OrgId::new("acme").unwrap();
        let token = signer
            .mint_scoped(
                &org,
                "alice",
                Role::Operator,
                &["events:read".into()],
                Some("login-1"),
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(peek_kid(&token).as_deref(), Some("k1"));
        let ctx = verifier.verify(&token).unwrap();
        assert_eq!(ctx.org, org);
        assert!(
            matches!(&ctx.credential, crate::Credential::Jwt { session_id: Some(s), .. } if s == "login-1"),
            "the session id travels as `sid`: {:?}",
            ctx.credential
        );
        assert!(ctx.permits(crate::Action::READ_EVENTS));
        assert!(
            !ctx.permits(crate::Action::WRITE_EVENTS),
            "scope narrows the role"
        );
        let other = generate_ed25519().unwrap();
        let wrong = Verifier::ed25519("k1", &other.public_pem, &config).unwrap();
        assert!(matches!(wrong.verify(&token), Err(Error::BadSignature)));
        let jwk = ed25519_jwk("k1", &k.public_pem).unwrap();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43);
        let from_jwk = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap());
        assert!(from_jwk.is_ok());
    }
}
