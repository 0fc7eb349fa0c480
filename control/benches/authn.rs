//! What authentication adds per request through the `Authenticator`: an API
//! key on a warm per-cell cache (hash lookup, SHA-256 of the presented
//! secret, constant-time compare — no store I/O), and a JWT through the same
//! entry point. Each iteration includes one `block_on` of a future that
//! completes at once.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use honeycell_auth::{JwtConfig, Role, Signer, Verifier};
use honeycell_control::{
    ApiKey, AuditSink, Authenticator, BruteForce, EmbeddedStore, Store, generate_api_key,
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
    let auth = Authenticator::new(
        verifier,
        None,
        store,
        audit,
        Duration::from_secs(3600),
        BruteForce::default(),
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
    group.finish();
}

criterion_group!(benches, authn);
criterion_main!(benches);
