//! Hostile and stale credentials, end to end: a revoked login (refresh
//! token presented twice, or logged out) takes its access tokens with it
//! within a second on HTTP and on every cell's Flight port, and no other
//! login; tokens whose times are hostile (`exp: -1`, a century ahead, `iat`
//! in the future) or whose role is not spelled exactly are refused with a
//! code that says why; `jwt.max_lifetime` bounds both what the server
//! accepts and what `honeycell token` mints; a request carrying two
//! `Authorization` headers (or two `authorization` metadata entries) is
//! refused rather than guessed at.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_flight::FlightClient;
use futures::TryStreamExt as _;
use honeycell_auth::Role;
use honeycell_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// How soon a revoked login's access tokens must be refused everywhere: the
/// per-cell session cache (`control.api_key_cache_ttl`, 1 s) plus slack.
const WITHIN: Duration = Duration::from_millis(1500);

const CREATE_KEY: &str = "mutation {
  createApiKey(name: \"svc\", role: OPERATOR, scopes: []) { key }
}";

async fn api_key(server: &TestServer, admin: &str) -> String {
    let (_, body) = server.graphql(admin, CREATE_KEY, json!({})).await;
    body["data"]["createApiKey"]["key"]
        .as_str()
        .unwrap_or_else(|| panic!("an API key: {body}"))
        .to_owned()
}

async fn post(server: &TestServer, path: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = server.http().post(server.url(path)).json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.expect("POST");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A new login for `key`: (access token, refresh token).
async fn login(server: &TestServer, key: &str) -> (String, String) {
    let (status, pair) = post(server, "/auth/token", Some(key), json!({})).await;
    assert_eq!(status, 200, "{pair}");
    (
        pair["access_token"].as_str().expect("access").to_owned(),
        pair["refresh_token"].as_str().expect("refresh").to_owned(),
    )
}

/// `whoami` over Flight at `port`.
async fn whoami(server: &TestServer, port: u16, token: &str) -> Result<(), tonic::Status> {
    let mut client = server.flight_at(port, Some(token)).await;
    whoami_with(&mut client).await
}

async fn whoami_with(client: &mut FlightClient) -> Result<(), tonic::Status> {
    let stream = client
        .do_action(arrow_flight::Action::new("whoami", ""))
        .await
        .map_err(flight_status)?;
    let _: Vec<_> = stream.try_collect().await.map_err(flight_status)?;
    Ok(())
}

/// `token` works on HTTP and on every cell's Flight port (which also warms
/// each cell's caches).
async fn works_everywhere(server: &TestServer, cells: usize, token: &str, what: &str) {
    let (status, body) = server.get_events(token, "limit=1").await;
    assert_eq!(status, 200, "{what} over HTTP: {body}");
    for cell in 0..cells {
        whoami(server, server.cell_port(cell), token)
            .await
            .unwrap_or_else(|s| panic!("{what} over Flight on cell {cell}: {s:?}"));
    }
}

/// Polls `token` on HTTP and on every cell's Flight port until each refuses
/// it as a revoked login. A request sent after `deadline` that is still
/// answered fails the test.
async fn refused_everywhere_by(
    server: &TestServer,
    cells: usize,
    token: &str,
    deadline: Instant,
    what: &str,
) {
    loop {
        let sent = Instant::now();
        let (status, body) = server.get_events(token, "limit=1").await;
        if status == 401 {
            assert_eq!(body["error"]["code"], "session_revoked", "{what}: {body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("revoked") && message.contains("sign in again"),
                "{what}: {message}"
            );
            break;
        }
        assert!(
            sent < deadline,
            "{what}: HTTP still answers {status} {WITHIN:?} after the login was revoked: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for cell in 0..cells {
        loop {
            let sent = Instant::now();
            match whoami(server, server.cell_port(cell), token).await {
                Err(s) => {
                    assert_eq!(
                        s.code(),
                        tonic::Code::Unauthenticated,
                        "{what} on cell {cell}: {s:?}"
                    );
                    assert!(
                        s.message().contains("revoked"),
                        "{what} on cell {cell}: {}",
                        s.message()
                    );
                    break;
                }
                Ok(()) => assert!(
                    sent < deadline,
                    "{what}: Flight on cell {cell} still answers {WITHIN:?} after the login was revoked"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_refresh_token_revokes_the_logins_access_tokens() {
    let cells = 2;
    let server = TestServer::builder().cells(cells).start().await;
    let admin = server.token("acme", Role::Admin);
    let key = api_key(&server, &admin).await;
    let (a1, r1) = login(&server, &key).await;
    let (other, other_refresh) = login(&server, &key).await;

    let (status, pair) = post(
        &server,
        "/auth/refresh",
        None,
        json!({"refresh_token": r1.clone()}),
    )
    .await;
    assert_eq!(status, 200, "{pair}");
    let a2 = pair["access_token"].as_str().expect("access").to_owned();
    for (token, what) in [(&a1, "first access token"), (&a2, "refreshed access token")] {
        works_everywhere(&server, cells, token, what).await;
    }
    works_everywhere(&server, cells, &other, "another login's token").await;

    // r1 again: the login is revoked, and with it every access token it got.
    let (status, body) = post(&server, "/auth/refresh", None, json!({"refresh_token": r1})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("refresh_token_reused")),
        "{body}"
    );
    let deadline = Instant::now() + WITHIN;
    refused_everywhere_by(&server, cells, &a1, deadline, "first access token").await;
    refused_everywhere_by(&server, cells, &a2, deadline, "refreshed access token").await;

    // Another login of the same key, and tokens of other issuers, are
    // untouched.
    works_everywhere(&server, cells, &other, "another login's token").await;
    let (status, body) = post(
        &server,
        "/auth/refresh",
        None,
        json!({"refresh_token": other_refresh}),
    )
    .await;
    assert_eq!(status, 200, "another login still refreshes: {body}");
    works_everywhere(&server, cells, &admin, "a token without a login").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_logins_access_tokens() {
    let cells = 2;
    let server = TestServer::builder().cells(cells).start().await;
    let admin = server.token("acme", Role::Admin);
    let key = api_key(&server, &admin).await;
    let (access, refresh) = login(&server, &key).await;
    let (other, _) = login(&server, &key).await;
    works_everywhere(&server, cells, &access, "the access token").await;
    works_everywhere(&server, cells, &other, "another login's token").await;

    let (status, body) = post(
        &server,
        "/auth/logout",
        None,
        json!({"refresh_token": refresh}),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    refused_everywhere_by(
        &server,
        cells,
        &access,
        Instant::now() + WITHIN,
        "a logged-out access token",
    )
    .await;
    works_everywhere(&server, cells, &other, "another login's token").await;
}

// ---- hostile claims ----

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Valid claims for `org`, altered by each test.
fn claims() -> Value {
    json!({"sub": "mallory", "org": "hostile", "role": "admin", "iat": now(),
           "exp": now() + 600, "iss": "honeycell", "aud": "honeycell"})
}

/// `claims` signed with the server's own HS256 secret: only the claims are
/// hostile, the signature is genuine.
fn signed(server: &TestServer, claims: &Value) -> String {
    let secret = server.secret().expect("an HS256 server");
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

/// `token` is refused with 401 `code` over HTTP, and UNAUTHENTICATED over
/// Flight, both with a message containing each of `mentions`.
async fn refused(server: &TestServer, token: &str, code: &str, mentions: &[&str]) {
    let (status, body) = server.get_events(token, "limit=1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some(code)),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for m in mentions {
        assert!(
            message.contains(m),
            "the message should mention {m:?}: {message}"
        );
    }
    let s = whoami(server, server.ports().flight, token)
        .await
        .expect_err("refused over Flight");
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    for m in mentions {
        assert!(
            s.message().contains(m),
            "Flight should mention {m:?}: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_exp_is_an_expired_token() {
    let server = TestServer::builder().cells(1).start().await;
    for exp in [json!(-1), json!(-1.5), json!(0)] {
        let mut c = claims();
        c["exp"] = exp;
        refused(&server, &signed(&server, &c), "token_expired", &["expired"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_century_long_token_is_refused_naming_max_lifetime() {
    let server = TestServer::builder().cells(1).start().await;
    let mut c = claims();
    c["exp"] = json!(now() + 100 * 365 * 24 * 3600);
    refused(
        &server,
        &signed(&server, &c),
        "token_exceeds_max_lifetime",
        &["jwt.max_lifetime"],
    )
    .await;
    // Without `iat` too.
    c.as_object_mut().expect("object").remove("iat");
    refused(
        &server,
        &signed(&server, &c),
        "token_exceeds_max_lifetime",
        &["jwt.max_lifetime"],
    )
    .await;
    // A day is the default maximum, and is accepted.
    c["exp"] = json!(now() + 24 * 3600 - 60);
    let (status, body) = server.get_events(&signed(&server, &c), "limit=1").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_in_the_future_is_refused() {
    let server = TestServer::builder().cells(1).start().await;
    let mut c = claims();
    c["iat"] = json!(now() + 3600);
    c["exp"] = json!(now() + 7200);
    refused(
        &server,
        &signed(&server, &c),
        "token_not_yet_valid",
        &["`iat`", "future"],
    )
    .await;
    // A few seconds of clock skew is within the leeway.
    c["iat"] = json!(now() + 5);
    c["exp"] = json!(now() + 600);
    let (status, body) = server.get_events(&signed(&server, &c), "limit=1").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_exact() {
    let server = TestServer::builder().cells(1).start().await;
    for spelling in ["ADMIN", "Admin"] {
        let mut c = claims();
        c["role"] = json!(spelling);
        refused(
            &server,
            &signed(&server, &c),
            "invalid_claim",
            &[
                "`role`",
                &format!("{spelling:?}"),
                "admin, operator, viewer",
            ],
        )
        .await;
    }
    let mut c = claims();
    c["role"] = json!("admin");
    let (status, body) = server.get_events(&signed(&server, &c), "limit=1").await;
    assert_eq!(status, 200, "{body}");

    // `honeycell token --role` is exact too.
    let out = server.cli_token("hostile", "ADMIN");
    assert!(!out.status.success(), "--role ADMIN was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ADMIN") && err.contains("lower case"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_is_configurable_and_bounds_the_token_command() {
    let server = TestServer::builder()
        .cells(1)
        .env("HONEYCELL_JWT__MAX_LIFETIME", "1h")
        .start()
        .await;
    // The harness mints with the default (24 h) maximum; this server
    // accepts at most an hour.
    let two_hours = server.token_ttl("hostile", Role::Viewer, Duration::from_secs(7200));
    refused(
        &server,
        &two_hours,
        "token_exceeds_max_lifetime",
        &["jwt.max_lifetime (1h)"],
    )
    .await;
    let half_hour = server.token_ttl("hostile", Role::Viewer, Duration::from_secs(1800));
    let (status, body) = server.get_events(&half_hour, "limit=1").await;
    assert_eq!(status, 200, "{body}");

    // `honeycell token --ttl` mints nothing the server would refuse.
    let cli = |ttl: &str, max: Option<&str>| {
        let mut cmd = honeycell_command();
        cmd.args(["token", "--org", "hostile", "--ttl", ttl])
            .arg("--data-dir")
            .arg(server.data_dir())
            .env("HONEYCELL_JWT_SECRET", server.secret().expect("secret"));
        if let Some(max) = max {
            cmd.env("HONEYCELL_JWT__MAX_LIFETIME", max);
        }
        cmd.output().expect("run honeycell token")
    };
    for (ttl, max) in [("25h", None), ("2h", Some("1h"))] {
        let out = cli(ttl, max);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "--ttl {ttl} (max {max:?}) was minted"
        );
        assert!(err.contains("jwt.max_lifetime"), "{err}");
    }
    let out = cli("24h", None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The server's own access tokens must fit, and the setting must parse.
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = random_secret();
    let (ok, text) = check_config(
        dir.path(),
        &format!("[jwt]\nsecret = \"{secret}\"\nmax_lifetime = \"10m\"\n"),
    );
    assert!(!ok, "an access_token_ttl of 15m over a 10m maximum: {text}");
    assert!(
        text.contains("control.access_token_ttl") && text.contains("jwt.max_lifetime"),
        "{text}"
    );
    for bad in ["forever", "0s", "400d"] {
        let (ok, text) = check_config(
            dir.path(),
            &format!("[jwt]\nsecret = \"{secret}\"\nmax_lifetime = \"{bad}\"\n"),
        );
        assert!(!ok, "max_lifetime = {bad:?} was accepted");
        assert!(text.contains("jwt.max_lifetime"), "{bad}: {text}");
    }
}

// ---- two credentials ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_are_refused() {
    let server = TestServer::builder().cells(1).start().await;
    let viewer = server.token("one-org", Role::Viewer);
    let admin = server.token("other-org", Role::Admin);

    for route in ["/v1/events", "/graphql"] {
        let req = if route == "/graphql" {
            server
                .http()
                .post(server.url(route))
                .json(&json!({"query": "{ events { edges { cursor } } }"}))
        } else {
            server.http().get(server.url(route))
        };
        // reqwest appends: the request carries both headers.
        let resp = req
            .header("authorization", format!("Bearer {viewer}"))
            .header("authorization", format!("Bearer {admin}"))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("multiple_authorization_headers")),
            "{route}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("exactly one") && message.contains("Authorization"),
            "{message}"
        );
    }
    // One header is fine.
    let (status, body) = server.get_events(&viewer, "limit=1").await;
    assert_eq!(status, 200, "{body}");

    // Flight: two `authorization` metadata entries.
    for port in [server.ports().flight, server.cell_port(0)] {
        let mut client = server.flight_at(port, None).await;
        for token in [&viewer, &admin] {
            client.metadata_mut().append(
                "authorization",
                format!("Bearer {token}").parse().expect("metadata value"),
            );
        }
        let s = whoami_with(&mut client).await.expect_err("two credentials");
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains("exactly one"), "{}", s.message());
    }
}
