//! The control-plane store contract. Every contract test runs twice: against
//! the embedded store (a redb file in a temporary directory) and against a
//! throwaway PostgreSQL cluster (`TestPostgres`), through the same `Store`
//! API. After them: what only PostgreSQL has (migrations, concurrent
//! appenders from separate pools, tampering found by verification, TLS).

// The contract bodies are test code called from the macro-generated
// `#[tokio::test]`s, which clippy's allow-unwrap-in-tests cannot see.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use honeycell_auth::Role;
use honeycell_control::{
    ApiKey, AuditDraft, AuditQuery, EmbeddedStore, Error, OAuthLogin, Org, PgConfig, PgStore,
    RefreshState, RefreshToken, Rotation, SCHEMA_VERSION, SigningKey, Store, User,
};
use honeycell_tests::{TestCa, TestPostgres};
use honeycell_types::OrgId;

fn org(s: &str) -> OrgId {
    OrgId::new(s).unwrap()
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = honeycell_control::Store::Embedded(
                        honeycell_control::EmbeddedStore::open(dir.path().join("control.redb")).unwrap(),
                    );
                    super::$name(&store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let pg = honeycell_tests::TestPostgres::start();
                    let url = pg.database("honeycell");
                    let store = honeycell_control::Store::Postgres(
                        honeycell_control::PgStore::connect(&honeycell_control::PgConfig::new(url))
                            .await
                            .unwrap(),
                    );
                    super::$name(&store).await;
                }
            )*
        }
    };
}

contract!(
    orgs_and_tiers,
    users_memberships_identities,
    api_keys,
    refresh_rotation_and_reuse,
    refresh_family_revocation_is_visible,
    signing_keys,
    audit_chain_and_queries,
    audit_appends_from_concurrent_tasks_never_fork,
    oauth_logins_are_taken_once_and_expire,
);

async fn oauth_logins_are_taken_once_and_expire(s: &Store) {
    let now = honeycell_types::now_us();
    let login = |state: &str, org_id: Option<&str>, expires_at_us: i64| OAuthLogin {
        state_sha256: state.into(),
        provider: "keycloak".into(),
        pkce_verifier: format!("verifier-{state}"),
        nonce: format!("nonce-{state}"),
        org: org_id.map(org),
        expires_at_us,
    };
    let a = login("aaaa", Some("acme"), now + 600_000_000);
    let b = login("bbbb", None, now + 600_000_000);
    s.insert_oauth_login(&a).await.unwrap();
    s.insert_oauth_login(&b).await.unwrap();
    let dup = s.insert_oauth_login(&a).await.unwrap_err();
    assert!(matches!(dup, Error::Conflict { .. }), "{dup:?}");
    // Taken once: the second take finds nothing (a replayed callback).
    assert_eq!(s.take_oauth_login("aaaa", now).await.unwrap(), Some(a));
    assert_eq!(s.take_oauth_login("aaaa", now).await.unwrap(), None);
    assert_eq!(s.take_oauth_login("unknown", now).await.unwrap(), None);
    // Past its expiry a login is gone, even if never taken.
    assert_eq!(
        s.take_oauth_login("bbbb", now + 601_000_000).await.unwrap(),
        None
    );
    assert_eq!(s.take_oauth_login("bbbb", now).await.unwrap(), None);
    // Expired logins are dropped when new ones arrive.
    s.insert_oauth_login(&login("cccc", None, now - 1))
        .await
        .unwrap();
    s.insert_oauth_login(&login("dddd", None, now + 600_000_000))
        .await
        .unwrap();
    assert_eq!(s.take_oauth_login("cccc", now - 2).await.unwrap(), None);
    assert!(s.take_oauth_login("dddd", now).await.unwrap().is_some());
}

async fn orgs_and_tiers(s: &Store) {
    s.ping().await.unwrap();
    let acme = Org {
        id: org("acme"),
        name: "Acme Inc.".into(),
        tier: "free".into(),
        created_at_us: 1_000,
    };
    s.create_org(&acme).await.unwrap();
    assert_eq!(s.org(&org("acme")).await.unwrap(), Some(acme.clone()));
    assert_eq!(s.org(&org("nobody")).await.unwrap(), None);
    let dup = s.create_org(&acme).await.unwrap_err();
    assert!(matches!(dup, Error::Conflict { .. }), "{dup:?}");
    assert!(s.set_org_tier(&org("acme"), "pro").await.unwrap());
    assert_eq!(s.org(&org("acme")).await.unwrap().unwrap().tier, "pro");
    assert!(!s.set_org_tier(&org("nobody"), "pro").await.unwrap());
}

async fn users_memberships_identities(s: &Store) {
    let alice = User {
        id: "u-alice".into(),
        email: "Alice@Example.COM".into(),
        created_at_us: 5,
    };
    s.create_user(&alice).await.unwrap();
    let stored = s.user("u-alice").await.unwrap().unwrap();
    assert_eq!(
        stored.email, "alice@example.com",
        "e-mails are stored lower-cased"
    );
    assert_eq!(
        s.user_by_email("ALICE@example.com").await.unwrap(),
        Some(stored.clone())
    );
    let same_email = User {
        id: "u-other".into(),
        email: "alice@example.com".into(),
        created_at_us: 6,
    };
    assert!(matches!(
        s.create_user(&same_email).await.unwrap_err(),
        Error::Conflict { .. }
    ));
    assert_eq!(s.user("u-other").await.unwrap(), None);
    let bob = User {
        id: "u-bob".into(),
        email: "bob@example.com".into(),
        created_at_us: 7,
    };
    s.create_user(&bob).await.unwrap();

    s.set_membership(&org("zeta"), "u-alice", Role::Viewer)
        .await
        .unwrap();
    s.set_membership(&org("acme"), "u-alice", Role::Admin)
        .await
        .unwrap();
    s.set_membership(&org("acme"), "u-bob", Role::Viewer)
        .await
        .unwrap();
    // Setting again replaces the role.
    s.set_membership(&org("acme"), "u-bob", Role::Operator)
        .await
        .unwrap();
    let of_alice = s.memberships_of_user("u-alice").await.unwrap();
    assert_eq!(
        of_alice
            .iter()
            .map(|m| (m.org.as_str(), m.role))
            .collect::<Vec<_>>(),
        [("acme", Role::Admin), ("zeta", Role::Viewer)]
    );
    let of_acme = s.members_of_org(&org("acme")).await.unwrap();
    assert_eq!(
        of_acme
            .iter()
            .map(|m| (m.user_id.as_str(), m.role))
            .collect::<Vec<_>>(),
        [("u-alice", Role::Admin), ("u-bob", Role::Operator)]
    );
    assert!(s.members_of_org(&org("nobody")).await.unwrap().is_empty());
    assert!(s.remove_membership(&org("zeta"), "u-alice").await.unwrap());
    assert!(!s.remove_membership(&org("zeta"), "u-alice").await.unwrap());
    assert_eq!(s.memberships_of_user("u-alice").await.unwrap().len(), 1);

    s.link_identity("github", "12345", "u-bob").await.unwrap();
    assert_eq!(
        s.user_by_identity("github", "12345").await.unwrap(),
        Some(bob)
    );
    assert_eq!(s.user_by_identity("google", "12345").await.unwrap(), None);
    assert_eq!(s.user_by_identity("github", "1234").await.unwrap(), None);
}

fn key(id: &str, org_id: &str, expires_at_us: i64) -> ApiKey {
    ApiKey {
        id: id.into(),
        org: org(org_id),
        name: format!("key {id}"),
        secret_sha256: [id.len() as u8; 32],
        role: Role::Operator,
        scopes: vec!["events:read".into(), "events:write".into()],
        created_by: "u-alice".into(),
        created_at_us: 100,
        expires_at_us,
        revoked_at_us: None,
        last_used_us: None,
    }
}

async fn api_keys(s: &Store) {
    let a1 = key("k-a1", "acme", 10_000);
    let a2 = key("k-a2", "acme", 10_000);
    let b1 = key("k-b1", "bravo", 10_000);
    for k in [&a2, &a1, &b1] {
        s.insert_api_key(k).await.unwrap();
    }
    assert_eq!(s.api_key("k-a1").await.unwrap(), Some(a1.clone()));
    assert_eq!(s.api_key("k-none").await.unwrap(), None);
    assert!(matches!(
        s.insert_api_key(&a1).await.unwrap_err(),
        Error::Conflict { .. }
    ));
    assert_eq!(
        s.api_keys_of_org(&org("acme")).await.unwrap(),
        [a1.clone(), a2.clone()],
        "an org's keys, ordered by id"
    );
    assert_eq!(s.api_keys_of_org(&org("bravo")).await.unwrap(), [b1]);

    // Another org cannot revoke a key it does not own.
    assert!(!s.revoke_api_key(&org("bravo"), "k-a1", 500).await.unwrap());
    assert!(s.api_key("k-a1").await.unwrap().unwrap().is_live(600));
    assert!(s.revoke_api_key(&org("acme"), "k-a1", 500).await.unwrap());
    assert!(!s.revoke_api_key(&org("acme"), "k-a1", 700).await.unwrap());
    let revoked = s.api_key("k-a1").await.unwrap().unwrap();
    assert_eq!(
        revoked.revoked_at_us,
        Some(500),
        "the first revocation time stays"
    );
    assert!(!revoked.is_live(600));
    assert_eq!(
        s.api_keys_revoked_since(500).await.unwrap(),
        [("k-a1".to_owned(), 500)]
    );
    assert!(s.api_keys_revoked_since(501).await.unwrap().is_empty());

    s.touch_api_keys(&[
        ("k-a2".into(), 2_000),
        ("k-a2".into(), 3_000),
        ("k-b1".into(), 2_500),
        ("k-unknown".into(), 9_999),
    ])
    .await
    .unwrap();
    s.touch_api_keys(&[("k-a2".into(), 1_000)]).await.unwrap();
    assert_eq!(
        s.api_key("k-a2").await.unwrap().unwrap().last_used_us,
        Some(3_000),
        "the latest use wins, whatever the order of batches"
    );
    assert_eq!(
        s.api_key("k-b1").await.unwrap().unwrap().last_used_us,
        Some(2_500)
    );
    assert!(
        !key("k-x", "acme", 10_000).is_live(10_000),
        "expired at expires_at"
    );
}

fn refresh(id: &str, family: &str, expires_at_us: i64) -> RefreshToken {
    RefreshToken {
        id: id.into(),
        family: family.into(),
        org: org("acme"),
        subject: "u-alice".into(),
        role: Role::Admin,
        issued_at_us: 1_000,
        expires_at_us,
        state: RefreshState::Active,
    }
}

async fn refresh_rotation_and_reuse(s: &Store) {
    let t1 = refresh("t1", "fam", 100_000);
    s.insert_refresh(&t1).await.unwrap();
    assert_eq!(s.refresh("t1").await.unwrap(), Some(t1.clone()));

    // Rotation keeps the family, whatever the caller put in `next`.
    let out = s
        .rotate_refresh("t1", 2_000, &refresh("t2", "ignored", 100_000))
        .await
        .unwrap();
    assert_eq!(out, Rotation::Rotated(t1.clone()));
    assert_eq!(
        s.refresh("t1").await.unwrap().unwrap().state,
        RefreshState::Rotated
    );
    let t2 = s.refresh("t2").await.unwrap().unwrap();
    assert_eq!(
        (t2.family.as_str(), t2.state),
        ("fam", RefreshState::Active)
    );
    let out = s
        .rotate_refresh("t2", 3_000, &refresh("t3", "fam", 100_000))
        .await
        .unwrap();
    assert!(matches!(out, Rotation::Rotated(_)), "{out:?}");

    // t1 again: reuse of a rotated token revokes the whole family.
    let out = s
        .rotate_refresh("t1", 4_000, &refresh("t4", "fam", 100_000))
        .await
        .unwrap();
    assert!(
        matches!(out, Rotation::ReuseDetected(ref old) if old.id == "t1"),
        "{out:?}"
    );
    assert_eq!(
        s.refresh("t4").await.unwrap(),
        None,
        "nothing issued on reuse"
    );
    for id in ["t1", "t2", "t3"] {
        assert_eq!(
            s.refresh(id).await.unwrap().unwrap().state,
            RefreshState::Revoked,
            "{id}"
        );
    }
    let out = s
        .rotate_refresh("t3", 5_000, &refresh("t5", "fam", 100_000))
        .await
        .unwrap();
    assert!(matches!(out, Rotation::Revoked(_)), "{out:?}");
    assert_eq!(
        s.rotate_refresh("nope", 5_000, &refresh("t6", "x", 100_000))
            .await
            .unwrap(),
        Rotation::Unknown
    );

    let old = refresh("e1", "fam2", 1_500);
    s.insert_refresh(&old).await.unwrap();
    let out = s
        .rotate_refresh("e1", 1_500, &refresh("e2", "fam2", 100_000))
        .await
        .unwrap();
    assert_eq!(out, Rotation::Expired(old));
    assert_eq!(s.refresh("e2").await.unwrap(), None);

    // Logout: revoking a family reports how many tokens were still active.
    s.insert_refresh(&refresh("l1", "fam3", 100_000))
        .await
        .unwrap();
    assert_eq!(s.revoke_refresh_family("fam3").await.unwrap(), 1);
    assert_eq!(s.revoke_refresh_family("fam3").await.unwrap(), 0);
    assert!(matches!(
        s.insert_refresh(&refresh("l1", "fam3", 100_000))
            .await
            .unwrap_err(),
        Error::Conflict { .. }
    ));
}

/// What the authenticator asks of every access token the server issued:
/// has its login (refresh family, the token's `sid`) been revoked?
async fn refresh_family_revocation_is_visible(s: &Store) {
    assert!(!s.refresh_family_revoked("unknown").await.unwrap());

    // A live login, rotated a few times, is not revoked; neither is one
    // that merely expired.
    s.insert_refresh(&refresh("a1", "live", 100_000))
        .await
        .unwrap();
    s.rotate_refresh("a1", 2_000, &refresh("a2", "live", 100_000))
        .await
        .unwrap();
    s.rotate_refresh("a2", 3_000, &refresh("a3", "live", 100_000))
        .await
        .unwrap();
    assert!(!s.refresh_family_revoked("live").await.unwrap());
    s.insert_refresh(&refresh("x1", "expired", 1_500))
        .await
        .unwrap();
    assert_eq!(
        s.rotate_refresh("x1", 2_000, &refresh("x2", "expired", 100_000))
            .await
            .unwrap(),
        Rotation::Expired(refresh("x1", "expired", 1_500))
    );
    assert!(!s.refresh_family_revoked("expired").await.unwrap());

    // Reuse of a rotated token revokes the login.
    s.insert_refresh(&refresh("r1", "reused", 100_000))
        .await
        .unwrap();
    s.rotate_refresh("r1", 2_000, &refresh("r2", "reused", 100_000))
        .await
        .unwrap();
    assert!(!s.refresh_family_revoked("reused").await.unwrap());
    let out = s
        .rotate_refresh("r1", 3_000, &refresh("r3", "reused", 100_000))
        .await
        .unwrap();
    assert!(matches!(out, Rotation::ReuseDetected(_)), "{out:?}");
    assert!(s.refresh_family_revoked("reused").await.unwrap());

    // So does a logout.
    s.insert_refresh(&refresh("o1", "out", 100_000))
        .await
        .unwrap();
    s.revoke_refresh_family("out").await.unwrap();
    assert!(s.refresh_family_revoked("out").await.unwrap());

    // Families are told apart exactly, not by prefix.
    s.insert_refresh(&refresh("p1", "reused-not", 100_000))
        .await
        .unwrap();
    assert!(!s.refresh_family_revoked("reused-not").await.unwrap());
    assert!(!s.refresh_family_revoked("reuse").await.unwrap());
    assert!(!s.refresh_family_revoked("live").await.unwrap());
}

async fn signing_keys(s: &Store) {
    let k = |kid: &str, at: i64| SigningKey {
        kid: kid.into(),
        alg: "EdDSA".into(),
        private_pem: format!("private {kid}"),
        public_pem: format!("public {kid}"),
        created_at_us: at,
        retired_at_us: None,
    };
    s.insert_signing_key(&k("k2", 20)).await.unwrap();
    s.insert_signing_key(&k("k1", 10)).await.unwrap();
    assert!(matches!(
        s.insert_signing_key(&k("k1", 30)).await.unwrap_err(),
        Error::Conflict { .. }
    ));
    assert_eq!(s.signing_keys().await.unwrap(), [k("k1", 10), k("k2", 20)]);
    assert!(s.retire_signing_key("k1", 50).await.unwrap());
    assert!(s.retire_signing_key("k1", 60).await.unwrap());
    assert_eq!(
        s.signing_keys().await.unwrap()[0].retired_at_us,
        Some(50),
        "the first retirement time stays"
    );
    assert!(!s.retire_signing_key("k9", 50).await.unwrap());
    assert!(s.delete_signing_key("k1").await.unwrap());
    assert!(!s.delete_signing_key("k1").await.unwrap());
    assert_eq!(s.signing_keys().await.unwrap(), [k("k2", 20)]);
}

fn draft(org_id: &str, at_us: i64, actor: &str, action: &str) -> AuditDraft {
    AuditDraft {
        org: org(org_id),
        at_us,
        actor: actor.into(),
        action: action.into(),
        resource: format!("thing/{at_us}"),
        result: "ok".into(),
        trace_id: (at_us % 2 == 0).then(|| format!("trace-{at_us}")),
        detail: None,
    }
}

async fn audit_chain_and_queries(s: &Store) {
    let first = s
        .append_audit(vec![
            draft("acme", 10, "alice", "apikey.create"),
            draft("bravo", 11, "bob", "auth.login"),
            draft("acme", 12, "alice", "auth.login"),
            draft("acme", 13, "carol", "apikey.revoke"),
            draft("bravo", 14, "bob", "auth.refresh"),
        ])
        .await
        .unwrap();
    let seqs: Vec<(&str, u64)> = first
        .iter()
        .map(|e| (e.draft.org.as_str(), e.seq))
        .collect();
    assert_eq!(
        seqs,
        [
            ("acme", 1),
            ("acme", 2),
            ("acme", 3),
            ("bravo", 1),
            ("bravo", 2)
        ],
        "numbered per org, in input order within an org"
    );
    let more = s
        .append_audit(vec![
            draft("acme", 20, "alice", "auth.login"),
            draft("acme", 21, "dave", "auth.denied"),
        ])
        .await
        .unwrap();
    assert_eq!(more[0].seq, 4);
    assert_eq!(more[0].prev_hash, first[2].hash, "chained after the head");
    assert_eq!(s.verify_audit(&org("acme")).await.unwrap(), Ok(5));
    assert_eq!(s.verify_audit(&org("bravo")).await.unwrap(), Ok(2));
    assert_eq!(s.verify_audit(&org("nobody")).await.unwrap(), Ok(0));

    let page = |q: AuditQuery| async move {
        s.audit_page(&q)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    };
    let mut q = AuditQuery::new(org("acme"), 2);
    assert_eq!(page(q.clone()).await, [5, 4], "newest first");
    q.before_seq = Some(4);
    assert_eq!(page(q.clone()).await, [3, 2]);
    q.before_seq = Some(2);
    assert_eq!(page(q.clone()).await, [1]);
    let mut q = AuditQuery::new(org("acme"), 10);
    q.action = Some("auth.login".into());
    assert_eq!(page(q.clone()).await, [4, 2]);
    q.action = None;
    q.actor = Some("alice".into());
    assert_eq!(page(q.clone()).await, [4, 2, 1]);
    q.actor = None;
    q.since_us = Some(12);
    q.until_us = Some(21);
    assert_eq!(page(q.clone()).await, [4, 3, 2]);
    let bravo = s
        .audit_page(&AuditQuery::new(org("bravo"), 10))
        .await
        .unwrap();
    assert!(bravo.iter().all(|e| e.draft.org.as_str() == "bravo"));
    assert_eq!(bravo.len(), 2);
    let stored = s.audit_range(&org("acme"), 3, 10).await.unwrap();
    assert_eq!(stored, more, "entries read back exactly as appended");
    assert_eq!(s.audit_orgs().await.unwrap(), [org("acme"), org("bravo")]);
}

async fn audit_appends_from_concurrent_tasks_never_fork(s: &Store) {
    let mut tasks = Vec::new();
    for t in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let batch = (0..5)
                    .map(|j| draft("acme", t * 1000 + i * 10 + j, &format!("task{t}"), "x"))
                    .collect();
                s.append_audit(batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.verify_audit(&org("acme")).await.unwrap(), Ok(200));
}

// What only PostgreSQL has.

#[tokio::test]
async fn postgres_migrations_are_versioned_and_race_free() {
    let pg = TestPostgres::start();
    let url = pg.database("hc");
    let bare = PgStore::connect_without_migrating(&PgConfig::new(url.clone()))
        .await
        .unwrap();
    assert_eq!(bare.schema_version().await.unwrap(), 0);
    // Several cells starting at once each migrate through their own pool.
    let mut starts = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        starts.push(tokio::spawn(async move {
            PgStore::connect(&PgConfig::new(url)).await.map(|_| ())
        }));
    }
    for s in starts {
        s.await.unwrap().unwrap();
    }
    assert_eq!(bare.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert_eq!(
        bare.migrate().await.unwrap(),
        SCHEMA_VERSION,
        "migrating again is a no-op"
    );

    // A database migrated by a newer binary is refused, not mangled.
    pg.psql(
        "hc",
        "INSERT INTO honeycell_migrations (version, name) VALUES (99, 'future')",
    );
    let err = PgStore::connect(&PgConfig::new(url)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::SchemaTooNew {
                found: 99,
                known: SCHEMA_VERSION
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("run a newer honeycell"), "{err}");
}

#[test]
fn postgres_pools_per_cell_runtime_share_one_audit_chain() {
    // Two single-threaded runtimes, as two cells: each opens its own store
    // (its own pool and connections) and appends to the same org.
    let pg = TestPostgres::start();
    let url = pg.database("hc");
    let threads: Vec<_> = (0..2)
        .map(|cell| {
            let url = url.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let mut cfg = PgConfig::new(url);
                    cfg.pool_size = 2;
                    let store = Store::Postgres(PgStore::connect(&cfg).await.unwrap());
                    for i in 0..25 {
                        let batch = (0..4)
                            .map(|j| {
                                draft(
                                    "acme",
                                    cell * 1000 + i * 10 + j,
                                    &format!("cell{cell}"),
                                    "x",
                                )
                            })
                            .collect();
                        store.append_audit(batch).await.unwrap();
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::Postgres(PgStore::connect(&PgConfig::new(url)).await.unwrap());
        assert_eq!(store.verify_audit(&org("acme")).await.unwrap(), Ok(200));
    });
}

#[tokio::test]
async fn postgres_tampering_with_the_audit_log_is_found() {
    let pg = TestPostgres::start();
    let url = pg.database("hc");
    let s = Store::Postgres(PgStore::connect(&PgConfig::new(url)).await.unwrap());
    s.append_audit((1..=6).map(|i| draft("acme", i, "alice", "x")).collect())
        .await
        .unwrap();
    assert_eq!(s.verify_audit(&org("acme")).await.unwrap(), Ok(6));

    pg.psql(
        "hc",
        "UPDATE audit_log SET result = 'denied' WHERE org_id = 'acme' AND seq = 3",
    );
    let broken = s.verify_audit(&org("acme")).await.unwrap().unwrap_err();
    assert_eq!(broken.seq, 3, "{broken:?}");
    assert!(broken.reason.contains("altered"), "{broken:?}");

    pg.psql(
        "hc",
        "UPDATE audit_log SET result = 'ok' WHERE org_id = 'acme' AND seq = 3",
    );
    assert_eq!(s.verify_audit(&org("acme")).await.unwrap(), Ok(6));
    pg.psql(
        "hc",
        "DELETE FROM audit_log WHERE org_id = 'acme' AND seq = 5",
    );
    let broken = s.verify_audit(&org("acme")).await.unwrap().unwrap_err();
    assert_eq!(broken.seq, 6, "{broken:?}");
    assert!(broken.reason.contains("removed"), "{broken:?}");
}

#[tokio::test]
async fn postgres_tls_modes_follow_libpq() {
    let pg = TestPostgres::start();
    pg.database("hc");
    let ca = TestCa::new("honeycell test CA");
    let (cert, key) = ca.leaf(&["127.0.0.1", "localhost"]);
    pg.enable_tls(&cert, &key);
    // Only TLS connections over TCP from now on.
    pg.require_tls();

    let ca_file = pg.dir().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let other = TestCa::new("some other CA");
    let other_file = pg.dir().join("other-ca.pem");
    std::fs::write(&other_file, &other.cert_pem).unwrap();

    let base = format!("postgres://postgres@127.0.0.1:{}/hc", pg.port);
    let connect = |query: String| {
        let mut cfg = PgConfig::new(format!("{base}?{query}"));
        cfg.connect_timeout = Duration::from_secs(10);
        async move { PgStore::connect(&cfg).await }
    };

    let plain = connect("sslmode=disable".into()).await.unwrap_err();
    assert!(
        plain.to_string().contains("pg_hba.conf") || plain.to_string().contains("SSL off"),
        "plaintext must be refused by the server: {plain}"
    );
    let s = connect("sslmode=require".into()).await.unwrap();
    assert_eq!(s.tls_mode(), "require");
    let s = connect(format!(
        "sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    ))
    .await
    .unwrap();
    assert_eq!(s.tls_mode(), "verify-full");
    Store::Postgres(s).ping().await.unwrap();

    let wrong_ca = connect(format!(
        "sslmode=verify-full&sslrootcert={}",
        other_file.display()
    ))
    .await
    .unwrap_err();
    assert!(
        wrong_ca.to_string().to_lowercase().contains("certificate")
            || wrong_ca.to_string().contains("UnknownIssuer"),
        "a server certificate from another CA must be refused: {wrong_ca}"
    );
    let bad_mode = connect("sslmode=sometimes".into()).await.unwrap_err();
    assert!(
        bad_mode.to_string().contains("sslmode=sometimes"),
        "{bad_mode}"
    );
}

#[tokio::test]
async fn embedded_store_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.redb");
    {
        let s = Store::Embedded(EmbeddedStore::open(&path).unwrap());
        s.append_audit(vec![draft("acme", 1, "alice", "x")])
            .await
            .unwrap();
        s.insert_api_key(&key("k1", "acme", 99)).await.unwrap();
    }
    let s = Store::Embedded(EmbeddedStore::open(&path).unwrap());
    assert_eq!(s.verify_audit(&org("acme")).await.unwrap(), Ok(1));
    assert_eq!(s.api_key("k1").await.unwrap(), Some(key("k1", "acme", 99)));
    assert_eq!(s.backend(), "embedded");
}
