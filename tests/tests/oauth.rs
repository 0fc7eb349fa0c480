//! Sign-in through OAuth2/OIDC against the real binary and an in-test
//! provider that speaks discovery, authorize, token (PKCE checked), JWKS
//! and userinfo, and GitHub's OAuth2 and user API: members sign in and
//! their tokens work on every protocol; forged, replayed and wrongly signed
//! callbacks are refused; unknown users are refused or join the default org.

use std::time::{Duration, Instant};

use honeycell_auth::Role;
use honeycell_tests::oidc::{Knobs, TestProvider, TestUser, finish_callback};
use honeycell_tests::{TestServer, free_port};
use serde_json::{Value, json};

const ADD: &str =
    "mutation($e: String!, $r: Role!) { addMember(email: $e, role: $r) { userId email role } }";
const REMOVE: &str = "mutation($u: String!) { removeMember(userId: $u) }";
const LIST: &str = "{ members { userId email role } }";

fn user(subject: &str, email: Option<&str>, verified: bool) -> TestUser {
    TestUser {
        subject: subject.into(),
        email: email.map(str::to_owned),
        email_verified: verified,
    }
}

/// A server with `providers` (TOML) and its base URL, on a port chosen
/// first so that `[oauth] public_url` can name it.
async fn server_with(providers: &str, postgres: Option<&str>) -> (TestServer, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut builder = TestServer::builder()
        .http_port(port)
        .toml(&format!("[oauth]\npublic_url = \"{base}\"\n{providers}"));
    if let Some(url) = postgres {
        builder = builder.postgres(url);
    }
    (builder.start().await, base)
}

async fn add_member(server: &TestServer, org: &str, email: &str, role: &str) -> String {
    let admin = server.token(org, Role::Admin);
    let (status, body) = server
        .graphql(&admin, ADD, json!({"e": email, "r": role}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["addMember"]["userId"]
        .as_str()
        .unwrap_or_else(|| panic!("addMember: {body}"))
        .to_owned()
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

async fn sign_in_end_to_end(postgres: Option<&str>) {
    let idp = TestProvider::start().await;
    let (server, base) =
        server_with(&idp.provider_toml("keycloak", "keycloak", ""), postgres).await;
    let ada_id = add_member(&server, "acme", "ada@example.com", "VIEWER").await;
    idp.login_as(user("kc-ada", Some("Ada@Example.com"), true));

    let (status, body) = idp.sign_in(&base, "keycloak", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["org"], "acme", "{body}");
    assert_eq!(body["role"], "viewer");
    assert_eq!(body["provider"], "keycloak");
    assert_eq!(body["user"]["id"], ada_id.as_str());
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let verifier = idp
        .last_code_verifier()
        .expect("the code exchange sent a PKCE verifier");
    assert!(
        verifier.len() >= 43,
        "a PKCE verifier of {} chars",
        verifier.len()
    );
    let access = body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let refresh = body["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();

    // The access token works on HTTP, GraphQL and Flight, as a viewer.
    let (status, _) = server.get_events(&access, "").await;
    assert_eq!(status, 200);
    let (status, body) = server
        .graphql(&access, "{ eventCounts { total } }", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut flight = server.flight(&access).await;
    flight
        .get_flight_info(arrow_flight::FlightDescriptor::new_path(vec![
            "events".into(),
        ]))
        .await
        .expect("GetFlightInfo with a signed-in viewer's token");
    let resp = server
        .post_events(
            &access,
            &json!([{"event_type": "INSERT", "entity_type": "o", "entity_id": "1", "data": {}}]),
        )
        .await;
    assert_eq!(resp.status(), 403);
    let denied: Value = resp.json().await.expect("JSON");
    assert_eq!(denied["error"]["permission"], "events:write", "{denied}");

    // The refresh token rotates.
    let resp = server
        .http()
        .post(server.url("/auth/refresh"))
        .json(&json!({ "refresh_token": refresh }))
        .send()
        .await
        .expect("POST /auth/refresh");
    assert_eq!(resp.status(), 200);
    let pair: Value = resp.json().await.expect("JSON");
    let refresh = pair["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();

    // The identity is linked: a changed address at the provider is still Ada.
    idp.login_as(user("kc-ada", Some("ada@elsewhere.example"), true));
    let (status, body) = idp.sign_in(&base, "keycloak", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], ada_id.as_str());

    // Sign-ins are audited in the org.
    let actor = format!("user:{ada_id}");
    server
        .audit_until("acme", Some("auth.login"), |entries| {
            entries
                .iter()
                .filter(|e| e["resource"] == "oauth/keycloak" && e["actor"] == actor.as_str())
                .count()
                == 2
        })
        .await;
    let admin = server.token("acme", Role::Admin);

    // Promoted: the token she holds follows her role within a second or so.
    let (status, body) = server
        .graphql(
            &admin,
            "mutation($u: String!) { setMemberRole(userId: $u, role: OPERATOR) { role } }",
            json!({"u": ada_id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let one = json!([{"event_type": "INSERT", "entity_type": "o", "entity_id": "1", "data": {}}]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.post_events(&access, &one).await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "the promotion never reached her token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Removed from the org: her access token stops within a second or so,
    // refreshing fails and signing in is refused.
    let (status, body) = server.graphql(&admin, REMOVE, json!({"u": ada_id})).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = server.get_events(&access, "").await;
        if status == 401 {
            assert_eq!(body["error"]["code"], "membership_revoked", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a removed member's token still works: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = server
        .http()
        .post(server.url("/auth/refresh"))
        .json(&json!({ "refresh_token": refresh }))
        .send()
        .await
        .expect("POST /auth/refresh");
    assert_eq!(resp.status(), 401, "a former member's refresh token");
    let (status, body) = idp.sign_in(&base, "keycloak", None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(code(&body), "not_a_member", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_sign_in_with_oidc_and_their_tokens_work_everywhere() {
    sign_in_end_to_end(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_sign_in_with_oidc_on_postgres() {
    let pg = honeycell_tests::TestPostgres::start();
    let url = pg.database("honeycell");
    sign_in_end_to_end(Some(&url)).await;
}

/// Replaces the `state` query parameter of a callback URL.
fn with_state(callback: &str, state: &str) -> String {
    let (base, query) = callback.split_once('?').expect("a query");
    let query: Vec<String> = query
        .split('&')
        .map(|kv| {
            if kv.starts_with("state=") {
                format!("state={state}")
            } else {
                kv.to_owned()
            }
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_badly_signed_callbacks_are_refused() {
    let idp = TestProvider::start().await;
    let (server, base) = server_with(&idp.provider_toml("corp", "oidc", ""), None).await;
    add_member(&server, "acme", "ada@example.com", "OPERATOR").await;
    idp.login_as(user("ada", Some("ada@example.com"), true));

    // A state that is not this browser's (login CSRF): refused before the
    // code is exchanged, with or without a cookie.
    let (callback, cookie) = idp.begin(&base, "corp", None).await;
    let forged = with_state(&callback, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (status, body) = finish_callback(&forged, cookie.as_deref()).await;
    assert_eq!((status, code(&body)), (400, "state_mismatch"), "{body}");
    let (status, body) = finish_callback(&callback, None).await;
    assert_eq!((status, code(&body)), (400, "state_mismatch"), "{body}");
    // The genuine one still works, once; replaying it is refused.
    let (status, body) = finish_callback(&callback, cookie.as_deref()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = finish_callback(&callback, cookie.as_deref()).await;
    assert_eq!((status, code(&body)), (400, "unknown_state"), "{body}");

    // ID tokens with the wrong nonce, expired, or signed by a key not in
    // the provider's JWKS.
    for (knobs, what) in [
        (
            Knobs {
                nonce: Some("someone-elses-nonce".into()),
                ..Knobs::default()
            },
            "nonce",
        ),
        (
            Knobs {
                expired: true,
                ..Knobs::default()
            },
            "expired",
        ),
        (
            Knobs {
                wrong_key: true,
                ..Knobs::default()
            },
            "signature",
        ),
    ] {
        idp.set_knobs(knobs);
        let (status, body) = idp.sign_in(&base, "corp", None).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(code(&body), "invalid_id_token", "{what}: {body}");
        assert!(
            body["access_token"].is_null(),
            "{what}: no tokens on refusal"
        );
    }
    idp.set_knobs(Knobs::default());

    // The provider rotates its signing key: the server reads the new JWKS
    // and sign-in goes on working.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reads = idp.discovery_reads();
    idp.rotate_key();
    let (status, body) = idp.sign_in(&base, "corp", None).await;
    assert_eq!(status, 200, "after key rotation at the provider: {body}");
    assert!(idp.discovery_reads() > reads, "the JWKS was read again");

    // The provider's own refusal is passed on.
    let (callback, cookie) = idp.begin(&base, "corp", None).await;
    let state = callback
        .split("state=")
        .nth(1)
        .expect("a state")
        .split('&')
        .next()
        .unwrap_or_default()
        .to_owned();
    let denied = format!(
        "{base}/auth/oauth/corp/callback?error=access_denied&error_description=user+cancelled&state={state}"
    );
    let (status, body) = finish_callback(&denied, cookie.as_deref()).await;
    assert_eq!((status, code(&body)), (401, "provider_refused"), "{body}");

    // Unknown providers, and a start for an org name that is not one.
    let resp = reqwest::get(format!("{base}/auth/oauth/nope/start"))
        .await
        .expect("GET");
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("JSON");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("corp"),
        "{body}"
    );
    let resp = reqwest::get(format!("{base}/auth/oauth/corp/start?org=not%20an%20org"))
        .await
        .expect("GET");
    assert_eq!(resp.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_are_refused_or_join_the_default_org() {
    let idp = TestProvider::start().await;
    let providers = format!(
        "{}{}",
        idp.provider_toml("strict", "oidc", ""),
        idp.provider_toml(
            "open",
            "oidc",
            "default_org = \"newco\"\ndefault_role = \"viewer\""
        )
    );
    let (server, base) = server_with(&providers, None).await;
    let bob_id = add_member(&server, "acme", "bob@example.com", "OPERATOR").await;

    // Nobody by that identity or address: refused, and told what to do.
    idp.login_as(user("stranger", Some("stranger@example.com"), true));
    let (status, body) = idp.sign_in(&base, "strict", None).await;
    assert_eq!((status, code(&body)), (403, "unknown_user"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("addMember"),
        "{body}"
    );

    // An address the provider does not vouch for is not linked to Bob.
    idp.login_as(user("not-bob", Some("bob@example.com"), false));
    let (status, body) = idp.sign_in(&base, "strict", None).await;
    assert_eq!((status, code(&body)), (403, "unknown_user"), "{body}");

    // With a default org, a stranger joins it with the default role.
    idp.login_as(user("stranger", Some("stranger@example.com"), true));
    let (status, body) = idp.sign_in(&base, "open", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["org"].as_str(), body["role"].as_str()),
        (Some("newco"), Some("viewer"))
    );
    let newco_admin = server.token("newco", Role::Admin);
    let (_, members) = server.graphql(&newco_admin, LIST, json!({})).await;
    assert_eq!(
        members["data"]["members"][0]["email"], "stranger@example.com",
        "{members}"
    );
    assert_eq!(members["data"]["members"][0]["role"], "viewer");

    // A member of two orgs must say which; a third org is refused.
    add_member(&server, "globex", "bob@example.com", "ADMIN").await;
    idp.login_as(user("bob", Some("bob@example.com"), true));
    let (status, body) = idp.sign_in(&base, "strict", None).await;
    assert_eq!((status, code(&body)), (400, "org_required"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("acme") && message.contains("globex"),
        "{body}"
    );
    let (status, body) = idp.sign_in(&base, "strict", Some("globex")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["org"].as_str(), body["role"].as_str()),
        (Some("globex"), Some("admin"))
    );
    assert_eq!(body["user"]["id"], bob_id.as_str());
    let (status, body) = idp.sign_in(&base, "strict", Some("initech")).await;
    assert_eq!((status, code(&body)), (403, "not_a_member"), "{body}");

    // The address only in userinfo (as some providers do): still linked.
    let carol_id = add_member(&server, "acme", "carol@example.com", "VIEWER").await;
    idp.set_knobs(Knobs {
        email_only_in_userinfo: true,
        ..Knobs::default()
    });
    idp.login_as(user("carol", Some("carol@example.com"), true));
    let (status, body) = idp.sign_in(&base, "strict", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], carol_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_sign_in_uses_the_verified_primary_address() {
    let idp = TestProvider::start().await;
    let (server, base) = server_with(&idp.provider_toml("github", "github", ""), None).await;
    let dana_id = add_member(&server, "acme", "dana@example.com", "OPERATOR").await;
    idp.login_as(user("4242", Some("dana@example.com"), true));
    let (status, body) = idp.sign_in(&base, "github", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], dana_id.as_str());
    assert_eq!(body["role"], "operator");
    assert!(idp.last_code_verifier().is_some(), "PKCE on GitHub too");
    let access = body["access_token"].as_str().expect("access_token");
    let ids = server
        .ingest(
            access,
            &[json!({"event_type": "INSERT", "entity_type": "o", "entity_id": "1", "data": {}})],
        )
        .await;
    assert_eq!(ids.len(), 1);
    // An unverified GitHub address links to no one.
    idp.login_as(user("777", Some("dana@example.com"), false));
    let (status, body) = idp.sign_in(&base, "github", None).await;
    assert_eq!((status, code(&body)), (403, "unknown_user"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_starts_are_limited_per_address_across_cells() {
    const STARTS: usize = 12;
    let idp = TestProvider::start().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = TestServer::builder()
        .cells(4)
        .http_port(port)
        .toml(&format!(
            "[oauth]\npublic_url = \"{base}\"\nmax_starts_per_minute = {STARTS}\n{}",
            idp.provider_toml("corp", "oidc", "")
        ))
        .start()
        .await;
    // A fresh connection for every start: they land on all the cells,
    // which together allow STARTS, not four times as many.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let start = format!("{base}/auth/oauth/corp/start");
    for i in 0..STARTS {
        let r = browser.get(&start).send().await.expect("GET start");
        assert_eq!(r.status(), 302, "start {i}");
    }
    let route = "GET /auth/oauth/{provider}/start";
    let landed = server.requests_per_cell(route, 302).await;
    assert!(
        landed.iter().filter(|&&n| n > 0).count() >= 2,
        "the starts landed on one cell only: {landed:?}"
    );
    for _ in 0..8 {
        let r = browser.get(&start).send().await.expect("GET start");
        assert_eq!(r.status(), 429);
        let wait: u64 = r
            .headers()
            .get("retry-after")
            .expect("Retry-After")
            .to_str()
            .expect("ASCII")
            .parse()
            .expect("seconds");
        assert!((1..=60).contains(&wait), "{wait}");
        let body: Value = r.json().await.expect("JSON");
        assert_eq!(code(&body), "too_many_sign_ins", "{body}");
    }
    let refused = server.requests_per_cell(route, 429).await;
    assert_eq!(refused.iter().sum::<u64>(), 8, "{refused:?}");
    drop(server);
}

#[test]
fn provider_settings_that_do_not_fit_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let check = |toml: &str| honeycell_tests::check_config(dir.path(), toml);
    let base = "[oauth]\npublic_url = \"https://hc.example.com\"\n";
    for (provider, expect) in [
        ("kind = \"azure\"\nclient_id = \"x\"", "tenant"),
        ("kind = \"keycloak\"\nclient_id = \"x\"", "realms"),
        ("kind = \"oidc\"\nclient_id = \"x\"", "issuer is required"),
        ("kind = \"github\"\nclient_id = \"x\"", "client_secret"),
        (
            "kind = \"google\"\nclient_id = \"x\"\ndefault_org = \"acme\"",
            "default_role",
        ),
        (
            "kind = \"google\"\nclient_id = \"x\"\nclient_secret_env = \"HC_TEST_UNSET_SECRET\"",
            "HC_TEST_UNSET_SECRET",
        ),
        ("kind = \"okta\"\nclient_id = \"x\"", "kind"),
    ] {
        let (ok, err) = check(&format!("{base}[oauth.providers.p]\n{provider}\n"));
        assert!(!ok && err.contains(expect), "{provider}: {err}");
    }
    let (ok, err) = check("[oauth.providers.g]\nkind = \"google\"\nclient_id = \"x\"\n");
    assert!(!ok && err.contains("public_url"), "{err}");
    for good in [
        "kind = \"google\"\nclient_id = \"x\"\nclient_secret = \"s\"",
        "kind = \"azure\"\nclient_id = \"x\"\ntenant = \"contoso.onmicrosoft.com\"",
        "kind = \"keycloak\"\nclient_id = \"x\"\nissuer = \"https://kc.example.com/realms/acme\"",
        "kind = \"github\"\nclient_id = \"x\"\nclient_secret = \"s\"",
    ] {
        let (ok, err) = check(&format!("{base}[oauth.providers.p]\n{good}\n"));
        assert!(ok, "{good}: {err}");
    }
}
