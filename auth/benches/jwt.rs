//! Cost of verifying one token, the work every API request pays before it
//! reaches its cell: HS256 (the default) and EdDSA.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use honeycell_auth::{JwtConfig, Role, Signer, Verifier};
use honeycell_types::OrgId;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn pair(config: &JwtConfig) -> (Verifier, String) {
    let signer = Signer::new(config).expect("bench signer");
    let verifier = Verifier::new(config).expect("bench verifier");
    let org = OrgId::new("bench-org").expect("bench org");
    let token = signer
        .mint(
            &org,
            "bench-user",
            Role::Operator,
            Duration::from_secs(3600),
        )
        .expect("bench token");
    (verifier, token)
}

fn verify(c: &mut Criterion) {
    let hs256 = JwtConfig {
        secret: Some("bench-secret-bench-secret-bench-secret".to_owned()),
        ..JwtConfig::default()
    };
    let eddsa = JwtConfig {
        algorithm: "EdDSA".to_owned(),
        public_key_file: Some(fixture("ed25519_public.pem")),
        private_key_file: Some(fixture("ed25519_private.pem")),
        ..JwtConfig::default()
    };
    let mut group = c.benchmark_group("verify");
    for (name, config) in [("hs256", hs256), ("eddsa", eddsa)] {
        let (verifier, token) = pair(&config);
        group.bench_function(name, |b| {
            b.iter(|| verifier.verify(black_box(&token)).expect("valid token"))
        });
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
