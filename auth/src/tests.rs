use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use honeycell_types::{ErrorClass, OrgId};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::*;

const SECRET: &str = "test-secret-0123456789-0123456789-abcdef";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture is readable")
}

fn hs256() -> JwtConfig {
    JwtConfig {
        secret: Some(SECRET.to_owned()),
        ..JwtConfig::default()
    }
}

fn rs256() -> JwtConfig {
    JwtConfig {
        algorithm: "RS256".to_owned(),
        public_key_file: Some(fixture("rsa_public.pem")),
        private_key_file: Some(fixture("rsa_private.pem")),
        key_id: Some("rsa-2026".to_owned()),
        ..JwtConfig::default()
    }
}

fn eddsa() -> JwtConfig {
    JwtConfig {
        algorithm: "EdDSA".to_owned(),
        public_key_file: Some(fixture("ed25519_public.pem")),
        private_key_file: Some(fixture("ed25519_private.pem")),
        key_id: Some("ed-2026".to_owned()),
        ..JwtConfig::default()
    }
}

fn verifier(config: &JwtConfig) -> Verifier {
    Verifier::new(config).expect("verifier builds")
}

fn org(id: &str) -> OrgId {
    OrgId::new(id).expect("valid org id")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Claims as our signer writes them, to be altered by each test.
fn claims() -> Value {
    json!({
        "sub": "alice",
        "org": "acme",
        "role": "operator",
        "iat": now(),
        "exp": now() + 600,
        "iss": "honeycell",
        "aud": "honeycell",
        "jti": "t-1",
    })
}

/// Signs arbitrary claims with the HS256 test secret, bypassing `Signer`.
fn hs256_token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("test token encodes")
}

fn assert_invalid_claim(result: Result<TenantContext>, want: &str) {
    match result {
        Err(Error::InvalidClaim { claim, .. }) if claim == want => {}
        other => panic!("expected InvalidClaim {{ claim: {want} }}, got {other:?}"),
    }
}

fn round_trip(config: &JwtConfig) {
    let signer = Signer::new(config).expect("signer builds");
    let token = signer
        .mint(
            &org("acme"),
            "alice",
            Role::Operator,
            Duration::from_secs(900),
        )
        .expect("mints");
    let ctx = verifier(config)
        .verify_bearer(Some(&format!("Bearer {token}")))
        .expect("own token verifies");
    assert_eq!(ctx.org, org("acme"));
    assert_eq!(ctx.subject, "alice");
    assert_eq!(ctx.role, Role::Operator);
    let Credential::Jwt {
        key_id,
        expires_at,
        token_id,
        ..
    } = ctx.credential
    else {
        panic!("a JWT credential, got {:?}", ctx.credential);
    };
    assert_eq!(key_id, config.key_id);
    assert!(expires_at.abs_diff(now() + 900) <= 2, "exp = now + ttl");
    assert!(token_id.is_some_and(|t| t.len() == 32), "random jti");
}

#[test]
fn hs256_round_trip() {
    round_trip(&hs256());
}

#[test]
fn rs256_round_trip() {
    round_trip(&rs256());
}

#[test]
fn eddsa_round_trip() {
    round_trip(&eddsa());
}

#[test]
fn minted_tokens_are_unique_and_carry_kid() {
    let signer = Signer::new(&eddsa()).expect("signer");
    let mint = || {
        signer
            .mint(&org("acme"), "bob", Role::Viewer, Duration::from_secs(60))
            .expect("mints")
    };
    let (a, b) = (mint(), mint());
    assert_ne!(a, b, "jti makes every token unique");
    let header = jsonwebtoken::decode_header(&a).expect("header");
    assert_eq!(header.kid.as_deref(), Some("ed-2026"));
    assert_eq!(header.alg, Algorithm::EdDSA);
}

#[test]
fn missing_header() {
    let v = verifier(&hs256());
    assert!(matches!(v.verify_bearer(None), Err(Error::MissingToken)));
    assert!(matches!(
        v.verify_bearer(Some("  ")),
        Err(Error::MissingToken)
    ));
    let msg = Error::MissingToken.to_string();
    assert!(msg.contains("Authorization: Bearer <token>"), "{msg}");
}

#[test]
fn not_bearer() {
    let v = verifier(&hs256());
    for header in ["Basic YWxpY2U6cHc=", "Token abc", "Bearerabc.def.ghi"] {
        assert!(
            matches!(v.verify_bearer(Some(header)), Err(Error::NotBearer)),
            "{header}"
        );
    }
    assert!(matches!(
        v.verify_bearer(Some("Bearer")),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let config = hs256();
    let token = Signer::new(&config)
        .expect("signer")
        .mint(&org("acme"), "alice", Role::Admin, Duration::from_secs(60))
        .expect("mints");
    let v = verifier(&config);
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let ctx = v
            .verify_bearer(Some(&format!("{scheme}  {token} ")))
            .expect("verifies");
        assert_eq!(ctx.role, Role::Admin);
    }
}

#[test]
fn garbage_tokens_are_malformed() {
    let v = verifier(&hs256());
    let long = "a".repeat(10_000);
    for token in [
        "garbage",
        "a.b",
        "a.b.c.d",
        "...",
        "a.b.c",
        "é.ü.ß",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJhbGciOiJIUzI1NiJ9..",
        "W10.e30.sig", // header `[]`
        long.as_str(),
    ] {
        let result = v.verify(token);
        assert!(
            matches!(result, Err(Error::Malformed { .. })),
            "{token:.40}: {result:?}"
        );
        if let Err(e) = result {
            assert_eq!(e.class(), ErrorClass::Unauthenticated);
        }
    }
}

#[test]
fn every_single_character_change_is_refused() {
    let config = hs256();
    let token = Signer::new(&config)
        .expect("signer")
        .mint(&org("acme"), "alice", Role::Viewer, Duration::from_secs(60))
        .expect("mints");
    let v = verifier(&config);
    let bytes = token.as_bytes();
    for i in 0..bytes.len() {
        // The last character of a segment may carry only padding bits; a
        // change there can decode to the same bytes, so skip those.
        if bytes.get(i + 1).is_none_or(|b| *b == b'.') || bytes[i] == b'.' {
            continue;
        }
        let mut mutated = bytes.to_vec();
        mutated[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let mutated = String::from_utf8(mutated).expect("ascii");
        assert!(v.verify(&mutated).is_err(), "change at {i} accepted");
    }
}

#[test]
fn alg_none_is_refused() {
    let v = verifier(&hs256());
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    for alg in ["none", "None", "NONE"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        for signature in ["", "c2ln"] {
            let token = format!("{header}.{payload}.{signature}");
            let result = v.verify(&token);
            assert!(matches!(result, Err(Error::AlgNone)), "{alg}: {result:?}");
        }
    }
    assert_eq!(Error::AlgNone.code(), "alg_none");
}

#[test]
fn hs256_token_against_rs256_config_is_refused() {
    let token = hs256_token(&claims());
    let result = verifier(&rs256()).verify(&token);
    match result {
        Err(Error::AlgorithmNotAllowed { got, expected }) => {
            assert_eq!((got.as_str(), expected), ("HS256", "RS256"));
        }
        other => panic!("expected AlgorithmNotAllowed, got {other:?}"),
    }
}

#[test]
fn rs256_public_key_as_hmac_secret_is_refused() {
    // The classic confusion attack: the public key is public, so an attacker
    // can HMAC-sign with its bytes and hope the server verifies with them.
    for (config, public) in [(rs256(), "rsa_public.pem"), (eddsa(), "ed25519_public.pem")] {
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(&read_fixture(public)),
        )
        .expect("forged token encodes");
        let result = verifier(&config).verify(&forged);
        assert!(
            matches!(result, Err(Error::AlgorithmNotAllowed { .. })),
            "{public}: {result:?}"
        );
    }
}

#[test]
fn other_asymmetric_algorithm_is_refused() {
    let token = Signer::new(&eddsa())
        .expect("signer")
        .mint(&org("acme"), "alice", Role::Admin, Duration::from_secs(60))
        .expect("mints");
    assert!(matches!(
        verifier(&rs256()).verify(&token),
        Err(Error::AlgorithmNotAllowed { .. })
    ));
}

#[test]
fn wrong_secret_is_bad_signature() {
    let other = JwtConfig {
        secret: Some("another-secret-0123456789-0123456789".to_owned()),
        ..JwtConfig::default()
    };
    let token = Signer::new(&other)
        .expect("signer")
        .mint(&org("acme"), "alice", Role::Admin, Duration::from_secs(60))
        .expect("mints");
    assert!(matches!(
        verifier(&hs256()).verify(&token),
        Err(Error::BadSignature)
    ));
}

#[test]
fn wrong_asymmetric_key_is_bad_signature() {
    let config = JwtConfig {
        private_key_file: Some(fixture("ed25519_other_private.pem")),
        ..eddsa()
    };
    let token = Signer::new(&config)
        .expect("signer")
        .mint(&org("acme"), "alice", Role::Admin, Duration::from_secs(60))
        .expect("mints");
    assert!(matches!(
        verifier(&eddsa()).verify(&token),
        Err(Error::BadSignature)
    ));
}

#[test]
fn tampered_claims_are_bad_signature() {
    let token = hs256_token(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut escalated = claims();
    escalated["role"] = json!("admin");
    let payload = URL_SAFE_NO_PAD.encode(escalated.to_string());
    parts[1] = &payload;
    assert!(matches!(
        verifier(&hs256()).verify(&parts.join(".")),
        Err(Error::BadSignature)
    ));
}

#[test]
fn expired() {
    let v = verifier(&hs256());
    let mut c = claims();
    c["exp"] = json!(now() - 3600);
    let result = v.verify(&hs256_token(&c));
    assert!(matches!(result, Err(Error::Expired)), "{result:?}");
    assert_eq!(Error::Expired.code(), "token_expired");
    // Inside the 30 s leeway: accepted.
    c["exp"] = json!(now() - 5);
    v.verify(&hs256_token(&c)).expect("within leeway");
}

#[test]
fn not_yet_valid() {
    let mut c = claims();
    c["nbf"] = json!(now() + 3600);
    let result = verifier(&hs256()).verify(&hs256_token(&c));
    assert!(
        matches!(result, Err(Error::NotYetValid { claim: "nbf", .. })),
        "{result:?}"
    );
}

#[test]
fn negative_and_fractional_exp() {
    let v = verifier(&hs256());
    for exp in [json!(-1), json!(-1e12), json!(0), json!(0.5)] {
        let mut c = claims();
        c["exp"] = exp.clone();
        let result = v.verify(&hs256_token(&c));
        assert!(
            matches!(result, Err(Error::Expired)),
            "exp {exp}: {result:?}"
        );
    }
    // RFC 7519 NumericDate may be fractional.
    let mut c = claims();
    c["exp"] = json!(now() as f64 + 600.25);
    let ctx = v.verify(&hs256_token(&c)).expect("fractional exp");
    let Credential::Jwt { expires_at, .. } = ctx.credential else {
        panic!("a JWT credential");
    };
    assert!(expires_at.abs_diff(now() + 600) <= 2);
    for (claim, bad) in [
        ("exp", json!("1999999999")),
        ("exp", json!(true)),
        ("nbf", json!("soon")),
        ("iat", json!([1])),
    ] {
        let mut c = claims();
        c[claim] = bad;
        assert_invalid_claim(v.verify(&hs256_token(&c)), claim);
    }
}

#[test]
fn issued_in_the_future_is_refused_beyond_the_leeway() {
    let v = verifier(&hs256());
    let mut c = claims();
    c["iat"] = json!(now() + 3600);
    c["exp"] = json!(now() + 7200);
    match v.verify(&hs256_token(&c)) {
        Err(e @ Error::NotYetValid { claim: "iat", .. }) => {
            assert_eq!(e.code(), "token_not_yet_valid");
            assert!(e.to_string().contains("`iat`"), "{e}");
        }
        other => panic!("expected NotYetValid iat, got {other:?}"),
    }
    // A clock a few seconds ahead is skew, inside the 30 s leeway.
    c["iat"] = json!(now() + 10);
    c["exp"] = json!(now() + 600);
    v.verify(&hs256_token(&c)).expect("iat within the leeway");
}

#[test]
fn tokens_living_longer_than_max_lifetime_are_refused() {
    let v = verifier(&hs256());
    let year = 365 * 24 * 3600;
    // A hundred years ahead (with or without `iat`).
    for with_iat in [true, false] {
        let mut c = claims();
        c["exp"] = json!(now() + 100 * year);
        if !with_iat {
            c.as_object_mut().expect("object").remove("iat");
        }
        match v.verify(&hs256_token(&c)) {
            Err(e @ Error::LifetimeTooLong { .. }) => {
                assert_eq!(e.code(), "token_exceeds_max_lifetime");
                assert_eq!(e.class(), ErrorClass::Unauthenticated);
                let text = e.to_string();
                assert!(text.contains("jwt.max_lifetime (1day)"), "{text}");
            }
            other => panic!("expected LifetimeTooLong, got {other:?}"),
        }
    }
    // Astronomically far: still a clean refusal.
    let mut c = claims();
    c["exp"] = json!(1e300);
    assert!(matches!(
        v.verify(&hs256_token(&c)),
        Err(Error::LifetimeTooLong { .. })
    ));
    // Ending within the day, but issued 25 h before it ends.
    let mut c = claims();
    c["iat"] = json!(now() - 2 * 3600);
    c["exp"] = json!(now() + 23 * 3600);
    match v.verify(&hs256_token(&c)) {
        Err(e @ Error::LifetimeTooLong { .. }) => assert!(e.to_string().contains("`iat`"), "{e}"),
        other => panic!("expected LifetimeTooLong from iat, got {other:?}"),
    }
    // Exactly the maximum is fine, as is a longer maximum.
    let mut c = claims();
    c["exp"] = json!(now() + 24 * 3600);
    v.verify(&hs256_token(&c))
        .expect("24 h is the default maximum");
    c["exp"] = json!(now() + 48 * 3600);
    let longer = JwtConfig {
        max_lifetime: Duration::from_secs(48 * 3600),
        ..hs256()
    };
    verifier(&longer)
        .verify(&hs256_token(&c))
        .expect("48 h under a 48 h maximum");
}

#[test]
fn signer_refuses_lifetimes_beyond_max_lifetime() {
    let signer = Signer::new(&hs256()).expect("signer");
    let err = signer
        .mint(
            &org("acme"),
            "alice",
            Role::Viewer,
            Duration::from_secs(25 * 3600),
        )
        .expect_err("25 h > 24 h");
    assert!(matches!(err, Error::InvalidTtl { .. }), "{err:?}");
    assert!(err.to_string().contains("jwt.max_lifetime (1day)"), "{err}");
    let token = signer
        .mint(
            &org("acme"),
            "alice",
            Role::Viewer,
            Duration::from_secs(24 * 3600),
        )
        .expect("exactly the maximum");
    verifier(&hs256()).verify(&token).expect("verifies");
}

#[test]
fn session_id_claim() {
    let signer = Signer::new(&hs256()).expect("signer");
    let v = verifier(&hs256());
    let token = signer
        .mint_scoped(
            &org("acme"),
            "alice",
            Role::Viewer,
            &[],
            Some("family-1"),
            Duration::from_secs(60),
        )
        .expect("mints");
    let Credential::Jwt { session_id, .. } = v.verify(&token).expect("verifies").credential else {
        panic!("a JWT credential");
    };
    assert_eq!(session_id.as_deref(), Some("family-1"));
    let plain = signer
        .mint(&org("acme"), "alice", Role::Viewer, Duration::from_secs(60))
        .expect("mints");
    let Credential::Jwt { session_id, .. } = v.verify(&plain).expect("verifies").credential else {
        panic!("a JWT credential");
    };
    assert_eq!(session_id, None, "no sid unless asked for");
    let mut c = claims();
    c["sid"] = json!(42);
    assert_invalid_claim(v.verify(&hs256_token(&c)), "sid");
}

#[test]
fn wrong_issuer_and_audience() {
    let v = verifier(&hs256());
    let mut c = claims();
    c["iss"] = json!("someone-else");
    match v.verify(&hs256_token(&c)) {
        Err(e @ Error::WrongIssuer { .. }) => assert!(e.to_string().contains("\"honeycell\"")),
        other => panic!("expected WrongIssuer, got {other:?}"),
    }
    let mut c = claims();
    c["aud"] = json!(["other-service"]);
    assert!(matches!(
        v.verify(&hs256_token(&c)),
        Err(Error::WrongAudience { .. })
    ));
    // An audience list that includes us is fine (RFC 7519 §4.1.3).
    c["aud"] = json!(["other-service", "honeycell"]);
    v.verify(&hs256_token(&c)).expect("audience list with us");
}

#[test]
fn required_claims() {
    let v = verifier(&hs256());
    for claim in ["sub", "org", "role", "exp", "iss", "aud"] {
        let mut c = claims();
        c.as_object_mut().expect("object").remove(claim);
        assert_invalid_claim(v.verify(&hs256_token(&c)), claim);
    }
}

#[test]
fn invalid_org_claim() {
    let v = verifier(&hs256());
    for bad in [json!("../etc"), json!(""), json!("a/b"), json!(42)] {
        let mut c = claims();
        c["org"] = bad;
        assert_invalid_claim(v.verify(&hs256_token(&c)), "org");
    }
}

#[test]
fn unknown_role() {
    let v = verifier(&hs256());
    let mut c = claims();
    c["role"] = json!("superuser");
    match v.verify(&hs256_token(&c)) {
        Err(e @ Error::InvalidClaim { claim: "role", .. }) => {
            assert!(e.to_string().contains("admin, operator, viewer"), "{e}");
        }
        other => panic!("expected InvalidClaim role, got {other:?}"),
    }
    // Roles are exact: no other spelling of `admin` is `admin`.
    for spelling in ["ADMIN", "Admin", " admin", "admin "] {
        c["role"] = json!(spelling);
        match v.verify(&hs256_token(&c)) {
            Err(e @ Error::InvalidClaim { claim: "role", .. }) => {
                assert!(e.to_string().contains(&format!("{spelling:?}")), "{e}");
                assert!(e.to_string().contains("lower case"), "{e}");
            }
            other => panic!("{spelling:?}: expected InvalidClaim role, got {other:?}"),
        }
    }
    c["role"] = json!("viewer");
    assert_eq!(
        v.verify(&hs256_token(&c)).expect("viewer").role,
        Role::Viewer
    );
}

#[test]
fn invalid_subject() {
    let v = verifier(&hs256());
    for bad in [json!(""), json!("a\nb"), json!("x".repeat(300)), json!(7)] {
        let mut c = claims();
        c["sub"] = bad;
        assert_invalid_claim(v.verify(&hs256_token(&c)), "sub");
    }
    let signer = Signer::new(&hs256()).expect("signer");
    assert!(
        signer
            .mint(&org("acme"), " ", Role::Viewer, Duration::from_secs(60))
            .is_err()
    );
}

#[test]
fn crit_header_is_refused() {
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp-ext".to_owned()]);
    let token = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encodes");
    assert!(matches!(
        verifier(&hs256()).verify(&token),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn role_parsing_and_permissions() {
    for role in Role::ALL {
        assert_eq!(role.as_str().parse::<Role>().expect("parses"), role);
        assert_eq!(role.to_string(), role.as_str());
        assert!(role.permits(Action::READ_EVENTS));
    }
    for other in ["Operator", "OPERATOR", "operator\n", ""] {
        assert!(other.parse::<Role>().is_err(), "{other:?} is not a role");
    }
    let err = "root".parse::<Role>().expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "unknown role \"root\"; expected one of admin, operator, viewer (exactly, in lower case)"
    );
    assert_eq!(
        Role::ALLOWED,
        Role::ALL.map(Role::as_str).join(", "),
        "message lists every role"
    );
    // The policy table (roadmap 5.3), cell by cell.
    let table = [
        // resource, admin, operator, viewer: (read, write)
        (Resource::Events, (true, true), (true, true), (true, false)),
        (Resource::Rules, (true, true), (true, true), (true, false)),
        (Resource::Actions, (true, true), (true, true), (true, false)),
        (Resource::Logs, (true, true), (true, false), (true, false)),
        (
            Resource::Settings,
            (true, true),
            (true, false),
            (false, false),
        ),
        (
            Resource::ApiKeys,
            (true, true),
            (false, false),
            (false, false),
        ),
        (
            Resource::Users,
            (true, true),
            (false, false),
            (false, false),
        ),
        (
            Resource::Audit,
            (true, true),
            (false, false),
            (false, false),
        ),
    ];
    for (resource, admin, operator, viewer) in table {
        for (role, (r, w)) in [
            (Role::Admin, admin),
            (Role::Operator, operator),
            (Role::Viewer, viewer),
        ] {
            assert_eq!(
                role.permits(Action::read(resource)),
                r,
                "{role} {resource:?} read"
            );
            assert_eq!(
                role.permits(Action::write(resource)),
                w,
                "{role} {resource:?} write"
            );
        }
    }
    // Permission names round-trip and are distinct.
    let names: std::collections::BTreeSet<&str> = Action::all().map(Action::permission).collect();
    assert_eq!(names.len(), 16);
    for a in Action::all() {
        assert_eq!(Action::from_permission(a.permission()), Some(a));
    }
    let scopes = crate::ActionSet::from_scopes(&["events:read", "audit:read"]).expect("scopes");
    assert!(scopes.contains(Action::READ_EVENTS) && scopes.contains(Action::read(Resource::Audit)));
    assert!(!scopes.contains(Action::WRITE_EVENTS));
    assert!(crate::ActionSet::from_scopes(&["rules:manage"]).is_err());
}

#[test]
fn ttl_parsing() {
    assert_eq!(parse_ttl("15m").expect("15m"), Duration::from_secs(900));
    assert_eq!(parse_ttl("1h").expect("1h"), Duration::from_secs(3600));
    assert_eq!(parse_ttl(" 30s ").expect("30s"), Duration::from_secs(30));
    for bad in ["", "abc", "0s", "500ms", "-1h"] {
        let err = parse_ttl(bad).expect_err(bad);
        assert!(matches!(err, Error::InvalidTtl { .. }), "{bad}");
        assert_eq!(err.class(), ErrorClass::BadRequest);
    }
}

fn config_error_key(config: &JwtConfig) -> &'static str {
    match config.validate() {
        Err(Error::Config { key, .. }) => key,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn config_defaults_and_valid_configs() {
    let d = JwtConfig::default();
    assert_eq!(
        (
            d.algorithm.as_str(),
            d.issuer.as_str(),
            d.audience.as_str(),
            d.leeway_secs,
            d.max_lifetime
        ),
        (
            "HS256",
            "honeycell",
            "honeycell",
            30,
            Duration::from_secs(24 * 3600)
        )
    );
    for config in [hs256(), rs256(), eddsa()] {
        config.validate().expect("valid config");
    }
    // A verify-only server holds just the public key.
    let verify_only = JwtConfig {
        private_key_file: None,
        ..eddsa()
    };
    verify_only.validate().expect("verify-only config");
    assert!(matches!(
        Signer::new(&verify_only),
        Err(Error::Config {
            key: "jwt.private_key_file",
            ..
        })
    ));
}

#[test]
fn config_deserializes_with_defaults_and_refuses_typos() {
    let config: JwtConfig =
        serde_json::from_value(json!({"algorithm": "EdDSA", "leeway_secs": 5})).expect("parses");
    assert_eq!(config.algorithm, "EdDSA");
    assert_eq!(config.issuer, "honeycell");
    assert_eq!(config.leeway_secs, 5);
    assert!(serde_json::from_value::<JwtConfig>(json!({"secert": "x"})).is_err());
    let config: JwtConfig = serde_json::from_value(json!({"max_lifetime": "90m"})).expect("parses");
    assert_eq!(config.max_lifetime, Duration::from_secs(90 * 60));
    let err = serde_json::from_value::<JwtConfig>(json!({"max_lifetime": "forever"}))
        .expect_err("not a duration");
    assert!(err.to_string().contains("24h"), "{err}");
}

#[test]
fn config_secret_problems_name_the_key() {
    let missing = JwtConfig::default();
    let Err(err) = missing.validate() else {
        panic!("a secret is required")
    };
    assert_eq!(
        err.to_string(),
        "jwt.secret: HS256 needs a secret of at least 32 bytes; set HONEYCELL_JWT_SECRET (or jwt.secret_file)"
    );
    assert_eq!(err.class(), ErrorClass::Internal);

    let short = JwtConfig {
        secret: Some("too-short".to_owned()),
        ..JwtConfig::default()
    };
    assert_eq!(config_error_key(&short), "jwt.secret");
    assert!(Verifier::new(&short).is_err());
    assert!(Signer::new(&short).is_err());

    let vault = JwtConfig {
        secret: Some("vault://secret/honeycell#jwt-0123456789abcdef".to_owned()),
        ..JwtConfig::default()
    };
    assert_eq!(config_error_key(&vault), "jwt.secret");

    let both = JwtConfig {
        secret_file: Some(fixture("README.md")),
        ..hs256()
    };
    assert_eq!(config_error_key(&both), "jwt.secret_file");

    let secret_with_rs256 = JwtConfig {
        secret: Some(SECRET.to_owned()),
        ..rs256()
    };
    assert_eq!(config_error_key(&secret_with_rs256), "jwt.secret");
}

#[test]
fn config_secret_file() {
    let dir = std::env::temp_dir().join(format!("honeycell-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("jwt-secret");
    std::fs::write(&path, format!("{SECRET}\n")).expect("write secret");
    let from_file = JwtConfig {
        secret_file: Some(path.clone()),
        ..JwtConfig::default()
    };
    from_file.validate().expect("secret file is valid");
    // The trailing newline is not part of the secret: tokens interoperate
    // with a config holding the same secret inline.
    let token = Signer::new(&from_file)
        .expect("signer")
        .mint(&org("acme"), "alice", Role::Viewer, Duration::from_secs(60))
        .expect("mints");
    verifier(&hs256()).verify(&token).expect("same secret");
    std::fs::remove_dir_all(&dir).expect("cleanup");

    let missing = JwtConfig {
        secret_file: Some(dir.join("nope")),
        ..JwtConfig::default()
    };
    assert_eq!(config_error_key(&missing), "jwt.secret_file");
}

#[test]
fn config_key_file_problems_name_the_key() {
    let cases = [
        (
            JwtConfig {
                algorithm: "HS512".to_owned(),
                ..hs256()
            },
            "jwt.algorithm",
        ),
        (
            JwtConfig {
                public_key_file: None,
                ..rs256()
            },
            "jwt.public_key_file",
        ),
        (
            JwtConfig {
                public_key_file: Some(fixture("does-not-exist.pem")),
                ..rs256()
            },
            "jwt.public_key_file",
        ),
        // A private key where the public one belongs.
        (
            JwtConfig {
                public_key_file: Some(fixture("rsa_private.pem")),
                ..rs256()
            },
            "jwt.public_key_file",
        ),
        // An Ed25519 key for RS256.
        (
            JwtConfig {
                public_key_file: Some(fixture("ed25519_public.pem")),
                ..rs256()
            },
            "jwt.public_key_file",
        ),
        (
            JwtConfig {
                private_key_file: Some(fixture("rsa_private.pem")),
                ..eddsa()
            },
            "jwt.private_key_file",
        ),
        // A private key that does not match the public key.
        (
            JwtConfig {
                private_key_file: Some(fixture("ed25519_other_private.pem")),
                ..eddsa()
            },
            "jwt.private_key_file",
        ),
        (
            JwtConfig {
                public_key_file: Some(fixture("rsa_public.pem")),
                ..hs256()
            },
            "jwt.public_key_file",
        ),
        (
            JwtConfig {
                leeway_secs: u64::MAX,
                ..hs256()
            },
            "jwt.leeway_secs",
        ),
        (
            JwtConfig {
                max_lifetime: Duration::ZERO,
                ..hs256()
            },
            "jwt.max_lifetime",
        ),
        (
            JwtConfig {
                max_lifetime: Duration::from_secs(400 * 24 * 3600),
                ..hs256()
            },
            "jwt.max_lifetime",
        ),
        (
            JwtConfig {
                issuer: String::new(),
                ..hs256()
            },
            "jwt.issuer",
        ),
        (
            JwtConfig {
                audience: " ".to_owned(),
                ..hs256()
            },
            "jwt.audience",
        ),
    ];
    for (config, key) in cases {
        assert_eq!(config_error_key(&config), key, "{config:?}");
    }
}

#[test]
fn config_debug_redacts_the_secret() {
    let shown = format!("{:?}", hs256());
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("[redacted]"));
}

#[test]
fn error_codes_are_stable_and_classified() {
    let errors = [
        Error::MissingToken,
        Error::MultipleAuthorization { count: 2 },
        Error::NotBearer,
        Error::Malformed { reason: "x" },
        Error::AlgNone,
        Error::AlgorithmNotAllowed {
            got: "HS256".to_owned(),
            expected: "RS256",
        },
        Error::BadSignature,
        Error::Expired,
        Error::NotYetValid {
            claim: "iat",
            leeway_secs: 30,
        },
        Error::LifetimeTooLong {
            max: "1day".to_owned(),
            from: "now",
        },
        Error::SessionRevoked,
        Error::WrongIssuer {
            expected: "honeycell".to_owned(),
        },
        Error::WrongAudience {
            expected: "honeycell".to_owned(),
        },
        Error::InvalidClaim {
            claim: "org",
            reason: "x".to_owned(),
        },
        Error::UnknownRole {
            got: "x".to_owned(),
        },
        Error::InvalidTtl {
            got: "x".to_owned(),
            reason: "x".to_owned(),
        },
        Error::Config {
            key: "jwt.secret",
            reason: "x".to_owned(),
        },
        Error::Sign {
            reason: "x".to_owned(),
        },
    ];
    let codes: HashSet<&str> = errors.iter().map(Error::code).collect();
    assert_eq!(codes.len(), errors.len(), "codes are unique");
    for e in &errors {
        assert!(
            e.code()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{}",
            e.code()
        );
        let expected = match e {
            Error::Config { .. } | Error::Sign { .. } => ErrorClass::Internal,
            Error::UnknownRole { .. } | Error::InvalidTtl { .. } => ErrorClass::BadRequest,
            _ => ErrorClass::Unauthenticated,
        };
        assert_eq!(e.class(), expected, "{e:?}");
    }
}

#[test]
fn verifier_is_shareable_across_threads() {
    fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
    assert_shareable::<Verifier>();
    assert_shareable::<Signer>();

    let config = eddsa();
    let v = verifier(&config);
    let token = Signer::new(&config)
        .expect("signer")
        .mint(&org("acme"), "alice", Role::Viewer, Duration::from_secs(60))
        .expect("mints");
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (v, token) = (v.clone(), &token);
            s.spawn(move || v.verify(token).expect("verifies on another thread"));
        }
    });
}
