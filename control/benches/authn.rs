//! What authentication adds per request through the `Authenticator`: an API
//! key on a warm per-cell cache (hash lookup, SHA-256 of the presented
//! secret, constant-time compare — no store I/O), and a JWT through the same
//! entry point: HS256 from the configured issuer, and an Ed25519 access
//! token the server issued itself (`/auth/token`, `/auth/refresh`, OAuth
//! sign-in), both answered from the cell's verified-token cache after their
//! first use; and, separately, the signature check a first use costs. Each
//! `authenticate` iteration includes one `block_on` of a future that
//! completes at once.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use honeycell_auth::{
    ActionSet, Credential, JwtConfig, Quota, Role, Signer, TenantContext, Verifier,
};
use honeycell_control::{
    ApiKey, AuditSink, Authenticator, BruteForce, BruteForceBudgets, EmbeddedStore, Store,
    TokenService, User, ensure_signing_key, generate_api_key,
};
use honeycell_types::OrgId;

fn authn(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::Embedded(EmbeddedStore::open(dir.path().join("c.redb")).expect("store"));
    let config = JwtConfig {
        secret: Some("bench-secret-bench-secret-bench-secret".to_owned()),
        ..JwtConfig::default()
    };
    let verifier = Verifier::new(&config).expect("verifier");
    let org = OrgId::new("bench-org").expect("org");
    let new = generate_api_key();
    let now = honeycell_types::now_us();
    rt.block_on(store.insert_api_key(&ApiKey {
        id: new.id.clone(),
        org: org.clone(),
        name: "bench".into(),
        secret_sha256: new.secret_sha256,
        role: Role::Operator,
        scopes: vec![],
        created_by: "bench".into(),
        created_at_us: now,
        expires_at_us: now + 3_600_000_000,
        revoked_at_us: None,
        last_used_us: None,
    }))
    .expect("insert key");
    // A long TTL keeps the store out of the measurement.
    let (audit, _writer) = rt.block_on(async { AuditSink::spawn(store.clone()) });
    rt.block_on(ensure_signing_key(&store))
        .expect("a signing key");
    // The issued token is a signed-in member's: each use checks (through
    // the cell's membership cache) that they still are one.
    rt.block_on(store.create_user(&User {
        id: "bench".into(),
        email: "bench@example.com".into(),
        created_at_us: now,
    }))
    .expect("user");
    rt.block_on(store.set_membership(&org, "bench", Role::Operator))
        .expect("membership");
    let tokens = rt
        .block_on(TokenService::load(
            store.clone(),
            config.clone(),
            Duration::from_secs(900),
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            honeycell_control::KeyRingReload::default(),
        ))
        .expect("token service");
    let issued = rt
        .block_on(tokens.issue(&TenantContext {
            org: org.clone(),
            subject: "user:bench".into(),
            role: Role::Operator,
            credential: Credential::Jwt {
                key_id: None,
                expires_at: 0,
                token_id: None,
                session_id: None,
                scopes: ActionSet::ALL,
            },
            quota: Quota::default(),
        }))
        .expect("an issued pair");
    let issued_kid = honeycell_auth::peek_kid(&issued.access_token).expect("a kid");
    let issued_verifier = rt
        .block_on(tokens.verifier_for(&issued_kid))
        .expect("key ring")
        .expect("the issuing key");
    let hs256 = verifier.clone();
    let auth = Authenticator::new(
        verifier,
        Some(tokens),
        store,
        audit,
        Duration::from_secs(3600),
        std::sync::Arc::new(BruteForceBudgets::new(BruteForce::default())),
        Default::default(),
    );
    let key_header = format!("Bearer {}", new.plaintext);
    rt.block_on(auth.authenticate(Some(&key_header), None))
        .expect("warm the cache");
    let token = Signer::new(&config)
        .expect("signer")
        .mint(
            &org,
            "bench-user",
            Role::Operator,
            Duration::from_secs(3600),
        )
        .expect("token");
    let jwt_header = format!("Bearer {token}");
    let issued_header = format!("Bearer {}", issued.access_token);
    rt.block_on(auth.authenticate(Some(&issued_header), None))
        .expect("the issued token verifies");

    let mut group = c.benchmark_group("authenticate");
    group.bench_function("api_key_cached", |b| {
        b.iter(|| {
            rt.block_on(auth.authenticate(Some(black_box(&key_header)), None))
                .expect("valid key")
        })
    });
    group.bench_function("jwt_hs256", |b| {
        b.iter(|| {
            rt.block_on(auth.authenticate(Some(black_box(&jwt_header)), None))
                .expect("valid token")
        })
    });
    group.bench_function("jwt_eddsa_issued", |b| {
        b.iter(|| {
            rt.block_on(auth.authenticate(Some(black_box(&issued_header)), None))
                .expect("valid issued token")
        })
    });
    group.finish();
    // What a token's first use costs (after that, the cell's cache answers).
    let mut group = c.benchmark_group("verify_signature");
    group.bench_function("hs256", |b| {
        b.iter(|| hs256.verify(black_box(&token)).expect("valid token"))
    });
    group.bench_function("eddsa_issued", |b| {
        b.iter(|| {
            issued_verifier
                .verify(black_box(&issued.access_token))
                .expect("valid issued token")
        })
    });
    group.finish();
}

criterion_group!(benches, authn);
criterion_main!(benches);
