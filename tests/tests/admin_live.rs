//! Administration without downtime on the embedded store (the default):
//! `honeycell keys rotate|list`, `orgs set-tier` and `audit verify` reach a
//! running server through `<data_dir>/admin.sock` (mode 0600) instead of
//! failing on the store file it holds. A rotated key signs at once and its
//! tokens verify on every cell; a new tier applies within the tier cache's
//! 5 s; each change is in the audit log with the local user as its actor.
//! With the server stopped — cleanly, or by kill -9, which leaves the
//! socket file behind — the same commands open the store file themselves.
//! On PostgreSQL the socket serves the same commands.

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::process::Output;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

const TIERS: &str = r#"
[control]
default_tier = "standard"

[control.tiers.standard]
max_qps = 100000

[control.tiers.tiny]
max_storage_gb = 0.000001   # 1 kB
"#;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `args`, which must succeed; its stdout.
fn ok(server: &TestServer, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(out.status.success(), "honeycell {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The kid in `keys rotate`'s answer: `new signing key <kid>; …`.
fn rotated_kid(stdout: &str) -> String {
    stdout
        .strip_prefix("new signing key ")
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no kid in {stdout:?}"))
        .to_owned()
}

fn uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// A new operator API key of `org`, through GraphQL.
async fn api_key(server: &TestServer, org: &str) -> String {
    let admin = server.token(org, Role::Admin);
    let (_, body) = server
        .graphql(
            &admin,
            "mutation { createApiKey(name: \"svc\", role: OPERATOR) { key } }",
            json!({}),
        )
        .await;
    body["data"]["createApiKey"]["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no key: {body}"))
        .to_owned()
}

/// An access token for `key`, over a new connection (so any cell may
/// issue it).
async fn login(server: &TestServer, key: &str) -> String {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let resp = client
        .post(server.url("/auth/token"))
        .bearer_auth(key)
        .json(&json!({}))
        .send()
        .await
        .expect("POST /auth/token");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().expect("access").to_owned()
}

fn header_kid(token: &str) -> String {
    jwt_header(token)["kid"].as_str().expect("kid").to_owned()
}

/// `keys rotate` through the running server, after which every token it
/// issues is signed with the new key and verifies on every cell at once
/// (control.signing_key_reload is 30 s: only the server's own signal
/// explains that). Returns an access token signed before, and both kids.
async fn rotate_live(server: &TestServer, key: &str, cells: usize) -> (String, String, String) {
    let old_access = login(server, key).await;
    let old_kid = header_kid(&old_access);
    let out = ok(server, &["keys", "rotate"]);
    assert!(
        out.contains("this server signs with it from now on"),
        "{out}"
    );
    let new_kid = rotated_kid(&out);
    assert_ne!(new_kid, old_kid);
    for _ in 0..6 {
        let access = login(server, key).await;
        assert_eq!(header_kid(&access), new_kid, "signed with the new key");
        for cell in 0..cells {
            verifies_on(server, cell, &access).await;
        }
    }
    (old_access, old_kid, new_kid)
}

/// `token` is accepted over Flight by cell `cell`'s own port.
async fn verifies_on(server: &TestServer, cell: usize, token: &str) {
    let mut client = server.flight_at(server.cell_port(cell), Some(token)).await;
    let stream = client
        .do_action(arrow_flight::Action::new("whoami", ""))
        .await
        .unwrap_or_else(|e| panic!("cell {cell} refused the token: {e:?}"));
    let _: Vec<_> = stream
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("cell {cell} refused the token: {e:?}"));
}

/// Ingests small batches as `org`'s operator until one is refused with
/// `quota_exceeded`; panics if none is within 10 s.
async fn until_quota_refuses(server: &TestServer, org: &str) {
    let token = server.token(org, Role::Operator);
    let deadline = Instant::now() + Duration::from_secs(10);
    for seed in 100.. {
        let resp = server
            .post_events(&token, &Value::Array(gen_events(5, seed)))
            .await;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("JSON");
        if status == 403 {
            assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
            return;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "the new tier was not enforced within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_reach_the_running_server_and_are_audited() {
    let server = TestServer::builder().cells(2).toml(TIERS).start().await;
    let socket = server.data_dir().join("admin.sock");
    let meta = std::fs::symlink_metadata(&socket).expect("admin.sock while serving");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "owner only");

    // Key rotation; a token of the retired key still verifies.
    let key = api_key(&server, "acme").await;
    let (old_access, old_kid, new_kid) = rotate_live(&server, &key, 2).await;
    for cell in 0..2 {
        verifies_on(&server, cell, &old_access).await;
    }
    let out = ok(&server, &["keys", "list"]);
    assert!(
        out.contains(&format!("{new_kid} EdDSA")) && out.contains("signing"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&old_kid) && l.contains("retired")),
        "{out}"
    );

    // A tier change is enforced by the running server.
    let operator = server.token("acme", Role::Operator);
    server.ingest_n(&operator, 50, 1).await;
    let out = ok(&server, &["orgs", "set-tier", "acme", "tiny"]);
    assert!(out.contains("acme is on tier tiny"), "{out}");
    until_quota_refuses(&server, "acme").await;
    // The server's configuration decides which tiers exist.
    let out = server.cli(&["orgs", "set-tier", "acme", "gold"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("unknown tier \"gold\""),
        "{}",
        text(&out)
    );

    // Both changes are audited, with the socket's peer as the actor.
    let actor = format!("admin-socket:uid={}", uid());
    let entries = server
        .audit_until("acme", Some("org.set_tier"), |e| !e.is_empty())
        .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert!(
        e["actor"].as_str().unwrap_or_default().starts_with(&actor),
        "{e}"
    );
    assert_eq!(e["resource"], "org/acme", "{e}");
    assert_eq!(e["result"], "ok", "{e}");
    let detail = e["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("tier tiny") && detail.contains("through the admin socket"),
        "{e}"
    );
    let entries = server
        .audit_until("_system", Some("signing_key.rotate"), |e| !e.is_empty())
        .await;
    let e = &entries[0];
    assert!(
        e["actor"].as_str().unwrap_or_default().starts_with(&actor),
        "{e}"
    );
    assert_eq!(e["resource"], format!("signing_key/{new_kid}"), "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("retired {old_kid}")),
        "{e}"
    );

    // audit verify reads the live store.
    let out = ok(&server, &["audit", "verify"]);
    assert!(
        out.contains("_system: 1 entries, hash chain intact"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("acme: ") && l.ends_with("hash chain intact")),
        "{out}"
    );
    let out = ok(&server, &["audit", "verify", "--org", "acme"]);
    assert!(!out.contains("_system"), "{out}");

    // What is not a command gets a refusal, not a crash or a hang.
    for (request, refusal) in [
        (b"{\"command\":\"rm_rf\"}\n".to_vec(), "not a command"),
        (vec![b'x'; 70 * 1024], "at most"),
        (b"{\"command\":\"keys_list\"}".to_vec(), "newline"),
    ] {
        let answer = raw_request(&socket, &request);
        assert!(
            answer.starts_with("{\"failed\":") && answer.contains(refusal),
            "{answer}"
        );
    }
    ok(&server, &["keys", "list"]);
}

/// Writes `request` to the admin socket (then closes the writing half) and
/// reads the answer.
fn raw_request(socket: &std::path::Path, request: &[u8]) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // A refusal may come before the whole request is read.
    let _ = stream.write_all(request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_socket_serves_the_same_commands() {
    let pg = TestPostgres::start();
    let url = pg.database("hc");
    let server = TestServer::builder()
        .cells(2)
        .toml(TIERS)
        .postgres(&url)
        .start()
        .await;
    let key = api_key(&server, "acme").await;
    rotate_live(&server, &key, 2).await;
    ok(&server, &["orgs", "set-tier", "acme", "tiny"]);
    until_quota_refuses(&server, "acme").await;
    let entries = server
        .audit_until("_system", Some("signing_key.rotate"), |e| !e.is_empty())
        .await;
    assert!(
        entries[0]["actor"]
            .as_str()
            .unwrap_or_default()
            .starts_with("admin-socket:"),
        "{entries:?}"
    );
    let out = ok(&server, &["audit", "verify"]);
    assert!(
        out.contains("_system: 1 entries, hash chain intact"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_server_the_commands_use_the_store_file() {
    let mut server = TestServer::builder().cells(1).toml(TIERS).start().await;
    let socket = server.data_dir().join("admin.sock");
    let status = server.sigterm().await;
    assert!(status.success(), "{}", server.log());
    assert!(!socket.exists(), "a clean stop removes the socket");

    let new_kid = rotated_kid(&ok(&server, &["keys", "rotate"]));
    ok(&server, &["orgs", "set-tier", "acme", "tiny"]);
    let out = ok(&server, &["audit", "verify"]);
    assert!(
        out.contains("_system: 1 entries, hash chain intact")
            && out.contains("acme: 1 entries, hash chain intact"),
        "{out}"
    );

    // The next start signs with the key rotated offline, and the offline
    // changes are in the audit log under the CLI's actor.
    server.restart().await;
    let key = api_key(&server, "acme").await;
    assert_eq!(header_kid(&login(&server, &key).await), new_kid);
    let actor = format!("cli:uid={}", uid());
    for (org, action) in [("_system", "signing_key.rotate"), ("acme", "org.set_tier")] {
        let entries = server
            .audit_until(org, Some(action), |e| !e.is_empty())
            .await;
        let e = &entries[0];
        assert!(
            e["actor"].as_str().unwrap_or_default().starts_with(&actor),
            "{e}"
        );
        assert!(
            e["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("directly on the store"),
            "{e}"
        );
    }
    until_quota_refuses(&server, "acme").await;

    // kill -9 leaves the socket file: nobody listens on it, so the CLI
    // opens the store file.
    server.kill9();
    assert!(socket.exists(), "left behind by kill -9");
    let out = ok(&server, &["keys", "list"]);
    assert!(out.contains(&format!("{new_kid} EdDSA")), "{out}");
    ok(&server, &["orgs", "set-tier", "acme", "standard"]);

    // The next server replaces the stale socket and answers on it.
    server.restart().await;
    ok(&server, &["orgs", "set-tier", "acme", "tiny"]);
    let entries = server
        .audit_until("acme", Some("org.set_tier"), |e| e.len() == 3)
        .await;
    let actors: Vec<&str> = entries
        .iter()
        .map(|e| e["actor"].as_str().unwrap_or_default())
        .collect();
    assert!(actors[0].starts_with("admin-socket:"), "{actors:?}");
    assert!(
        actors[1].starts_with("cli:") && actors[2].starts_with("cli:"),
        "{actors:?}"
    );
}
