//! The control-plane store as the running server and its CLI use it:
//! `serve` on PostgreSQL (migrated on start, reported by `/ready`, refusing
//! to start when the database is unreachable), `honeycell migrate`, and
//! `honeycell audit verify` finding a tampered entry.

use std::process::Output;

use honeycell_control::{AuditDraft, EmbeddedStore, PgConfig, PgStore, Store};
use honeycell_tests::{TestPostgres, TestServer, honeycell_command};
use honeycell_types::OrgId;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn drafts(org: &str, n: i64) -> Vec<AuditDraft> {
    (1..=n)
        .map(|i| AuditDraft {
            org: OrgId::new(org).expect("org id"),
            at_us: i,
            actor: "alice".into(),
            action: "apikey.create".into(),
            resource: format!("apikey/k{i}"),
            result: "ok".into(),
            trace_id: None,
            detail: None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_postgres_migrates_and_reports_the_store_in_ready() {
    let pg = TestPostgres::start();
    let url = pg.database("hc");
    let server = TestServer::builder().cells(2).postgres(&url).start().await;
    let ready: serde_json::Value = server
        .http()
        .get(server.url("/ready"))
        .send()
        .await
        .expect("GET /ready")
        .json()
        .await
        .expect("JSON");
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["control_store"], "postgres", "{ready}");
    let store = PgStore::connect_without_migrating(&PgConfig::new(url))
        .await
        .expect("connect");
    assert_eq!(
        store.schema_version().await.expect("version"),
        honeycell_control::SCHEMA_VERSION
    );
    // Two cells, each its own pool: connections from both cells (at least
    // one each) and ours are open to the database.
    let n: i64 = pg
        .psql_value(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'hc' AND application_name = 'honeycell'",
        )
        .parse()
        .expect("a count");
    assert!(
        n >= 3,
        "expected connections from both cells and ours, saw {n}"
    );

    // The database goes away: /ready says which dependency failed.
    drop(store);
    drop(pg);
    let resp = server
        .http()
        .get(server.url("/ready"))
        .send()
        .await
        .expect("GET /ready");
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("control plane store (postgres)"), "{body}");
}

#[test]
fn serve_refuses_to_start_without_its_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = honeycell_tests::free_port();
    let out = honeycell_command()
        .args(["serve", "--http", "127.0.0.1:0", "--flight", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("HONEYCELL_CONTROL__STORE", "postgres")
        .env(
            "HONEYCELL_CONTROL__POSTGRES_URL",
            format!("postgres://postgres@127.0.0.1:{port}/hc?sslmode=disable"),
        )
        .env("HONEYCELL_CONTROL__CONNECT_TIMEOUT", "2s")
        .output()
        .expect("run honeycell serve");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("control plane store"), "{}", text(&out));

    let out = honeycell_command()
        .args(["check-config"])
        .env("HONEYCELL_CONTROL__STORE", "postgres")
        .output()
        .expect("run honeycell check-config");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("HONEYCELL_CONTROL__POSTGRES_URL"),
        "the error says how to fix it: {}",
        text(&out)
    );
}

#[tokio::test]
async fn migrate_and_audit_verify_on_postgres() {
    let pg = TestPostgres::start();
    let url = pg.database("hc");
    let run = |args: &[&str]| {
        honeycell_command()
            .args(args)
            .env("HONEYCELL_CONTROL__STORE", "postgres")
            .env("HONEYCELL_CONTROL__POSTGRES_URL", &url)
            .output()
            .expect("run honeycell")
    };
    let out = run(&["migrate"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "schema version {} (TLS: disable)",
            honeycell_control::SCHEMA_VERSION
        )),
        "{}",
        text(&out)
    );

    let store = Store::Postgres(
        PgStore::connect(&PgConfig::new(url.clone()))
            .await
            .expect("connect"),
    );
    store.append_audit(drafts("acme", 4)).await.expect("append");
    store
        .append_audit(drafts("bravo", 2))
        .await
        .expect("append");
    let out = run(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("acme: 4 entries, hash chain intact"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("bravo: 2 entries, hash chain intact"),
        "{}",
        text(&out)
    );

    pg.psql(
        "hc",
        "UPDATE audit_log SET actor = 'mallory' WHERE org_id = 'acme' AND seq = 2",
    );
    let out = run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("acme: BROKEN at entry 2"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("bravo: 2 entries, hash chain intact"),
        "{}",
        text(&out)
    );
    let out = run(&["audit", "verify", "--org", "bravo"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn migrate_and_audit_verify_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        honeycell_command()
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("run honeycell")
    };
    let out = run(&["migrate"]);
    assert!(out.status.success(), "{}", text(&out));
    let file = dir.path().join("control").join("control.redb");
    assert!(
        text(&out).contains(&file.display().to_string()),
        "{}",
        text(&out)
    );
    let out = run(&["audit", "verify"]);
    assert!(
        text(&out).contains("no audit entries yet"),
        "{}",
        text(&out)
    );
    {
        let store = Store::Embedded(EmbeddedStore::open(&file).expect("open"));
        store.append_audit(drafts("acme", 3)).await.expect("append");
    }
    let out = run(&["audit", "verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("acme: 3 entries, hash chain intact"),
        "{}",
        text(&out)
    );
    let out = run(&["audit", "verify", "--org", "not an org"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--org"), "{}", text(&out));
}
