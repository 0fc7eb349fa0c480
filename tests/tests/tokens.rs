//! Tokens issued by the server, end to end: `POST /auth/token` exchanges an
//! API key for an access token (EdDSA, `kid`, 15 min) and a refresh token;
//! `/.well-known/jwks.json` publishes the key that verifies it (checked
//! here with jsonwebtoken, independently of the server); `/auth/refresh`
//! rotates, and presenting a used refresh token revokes the whole login;
//! `/auth/logout`; a revoked API key ends its refresh family; signing-key
//! rotation with `honeycell keys rotate` needs no downtime.

use std::time::{Duration, Instant};

use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

const CREATE: &str = "mutation($scopes: [String!]!) {
  createApiKey(name: \"svc\", role: OPERATOR, scopes: $scopes) { key apiKey { id } }
}";

async fn api_key(server: &TestServer, admin: &str, scopes: Value) -> (String, String) {
    let (_, body) = server
        .graphql(admin, CREATE, json!({"scopes": scopes}))
        .await;
    let c = &body["data"]["createApiKey"];
    (
        c["key"].as_str().expect("key").to_owned(),
        c["apiKey"]["id"].as_str().expect("id").to_owned(),
    )
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

fn header_kid(token: &str) -> String {
    let v = jwt_header(token);
    assert_eq!(v["alg"], "EdDSA", "{v}");
    v["kid"].as_str().expect("kid").to_owned()
}

async fn audit_actions(server: &TestServer, admin: &str) -> Vec<String> {
    let (_, body) = server
        .graphql(
            admin,
            "{ auditLog(first: 100) { entries { action result } } }",
            json!({}),
        )
        .await;
    body["data"]["auditLog"]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["action"].as_str().unwrap_or(""),
                e["result"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_exchange_refresh_rotation_reuse_detection_and_logout() {
    let server = TestServer::builder().cells(2).start().await;
    let admin = server.token("acme", Role::Admin);
    let (key, key_id) = api_key(&server, &admin, json!(["events:read", "events:write"])).await;

    let (status, pair) = post(&server, "/auth/token", Some(&key), json!({})).await;
    assert_eq!(status, 200, "{pair}");
    assert_eq!(pair["token_type"], "Bearer");
    assert_eq!(pair["expires_in"], 900, "15 minutes by default");
    assert_eq!(
        pair["refresh_expires_in"],
        7 * 24 * 3600,
        "7 days by default"
    );
    let access = pair["access_token"].as_str().expect("access").to_owned();
    let r1 = pair["refresh_token"].as_str().expect("refresh").to_owned();
    assert!(r1.starts_with("hcr_"), "{r1}");
    let kid = header_kid(&access);
    assert!(kid.starts_with("hc-"), "{kid}");

    // The access token works on every protocol, within the key's scopes.
    server.ingest_n(&access, 3, 1).await;
    assert_eq!(server.count_http(&access).await, 3);
    assert_eq!(
        server
            .all_events_graphql(&access, json!({}), 10)
            .await
            .len(),
        3
    );
    let (_, batches) = server.flight_query(&access, None).await;
    assert_eq!(Row::from_batches(&batches).len(), 3);
    let (_, body) = server
        .graphql(&access, "{ apiKeys { id } }", json!({}))
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["permission"], "apikeys:read",
        "{body}"
    );

    // JWKS verifies it, independently of the server.
    let jwks: Value = server
        .http()
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("GET jwks")
        .json()
        .await
        .expect("JSON");
    let jwk = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the token's kid is published")
        .clone();
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).expect("a JWK");
    let dk = jsonwebtoken::DecodingKey::from_jwk(&parsed).expect("decoding key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["honeycell"]);
    v.set_issuer(&["honeycell"]);
    let claims = jsonwebtoken::decode::<Value>(&access, &dk, &v).expect("verifies with the JWK");
    assert_eq!(claims.claims["org"], "acme");
    assert_eq!(claims.claims["sub"], format!("apikey:{key_id}"));
    assert_eq!(claims.claims["scope"], "events:read events:write");

    // Only API keys are exchanged here.
    let (status, body) = post(&server, "/auth/token", Some(&admin), json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("api_key_required")),
        "{body}"
    );

    // Refresh: a new pair; the old refresh token is retired.
    let (status, pair2) = post(&server, "/auth/refresh", None, json!({"refresh_token": r1})).await;
    assert_eq!(status, 200, "{pair2}");
    let r2 = pair2["refresh_token"].as_str().expect("refresh").to_owned();
    let a2 = pair2["access_token"].as_str().expect("access").to_owned();
    assert_ne!(r2, r1);
    assert_eq!(server.count_http(&a2).await, 3);
    // Reuse of r1: refused, and the whole login (r2 too) is revoked.
    let (status, body) = post(&server, "/auth/refresh", None, json!({"refresh_token": r1})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("refresh_token_reused")),
        "{body}"
    );
    let (status, body) = post(&server, "/auth/refresh", None, json!({"refresh_token": r2})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("bad_refresh_token")),
        "{body}"
    );

    // Logout revokes a login.
    let (_, pair3) = post(&server, "/auth/token", Some(&key), json!({})).await;
    let r3 = pair3["refresh_token"].as_str().expect("refresh").to_owned();
    let (status, _) = post(&server, "/auth/logout", None, json!({"refresh_token": r3})).await;
    assert_eq!(status, 204);
    let (status, _) = post(&server, "/auth/refresh", None, json!({"refresh_token": r3})).await;
    assert_eq!(status, 401);

    // Revoking the API key ends its logins: their access tokens within the
    // key cache's second, their refresh tokens at once.
    let (_, pair4) = post(&server, "/auth/token", Some(&key), json!({})).await;
    let r4 = pair4["refresh_token"].as_str().expect("refresh").to_owned();
    let a4 = pair4["access_token"].as_str().expect("access").to_owned();
    let (status, _) = server.get_events(&a4, "").await;
    assert_eq!(
        status, 200,
        "the key's access token works before revocation"
    );
    let (_, body) = server
        .graphql(
            &admin,
            "mutation($id: String!) { revokeApiKey(id: $id) { id } }",
            json!({"id": key_id}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let (status, body) = post(&server, "/auth/refresh", None, json!({"refresh_token": r4})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("api_key_revoked")),
        "{body}"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = server.get_events(&a4, "").await;
        if status == 401 {
            // Revoking the key also ends its logins: whichever per-cell
            // cache notices first names the refusal.
            let code = &body["error"]["code"];
            assert!(
                code == "api_key_revoked" || code == "session_revoked",
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked key's access token still works after 3 s: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Bad input.
    let (status, body) = post(&server, "/auth/refresh", None, json!({"token": "x"})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("invalid_body")),
        "{body}"
    );
    let (status, body) = post(
        &server,
        "/auth/refresh",
        None,
        json!({"refresh_token": "hcr_nope"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("bad_refresh_token")),
        "{body}"
    );

    // The audit log tells the story.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let actions = audit_actions(&server, &admin).await;
        let has = |a: &str| actions.iter().any(|x| x == a);
        if has("auth.login:ok")
            && has("auth.refresh:ok")
            && has("auth.refresh_reuse:denied")
            && has("auth.logout:ok")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{actions:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_rotate_without_downtime() {
    // PostgreSQL, so that `honeycell keys rotate` runs beside the server.
    let pg = TestPostgres::start();
    let url = pg.database("hc");
    let server = TestServer::builder()
        .cells(2)
        .postgres(&url)
        .env("HONEYCELL_CONTROL__SIGNING_KEY_RELOAD", "500ms")
        .start()
        .await;
    let admin = server.token("acme", Role::Admin);
    let (key, _) = api_key(&server, &admin, json!([])).await;
    let (_, pair) = post(&server, "/auth/token", Some(&key), json!({})).await;
    let old_access = pair["access_token"].as_str().expect("access").to_owned();
    let old_kid = header_kid(&old_access);

    let cli = |args: &[&str]| {
        honeycell_command()
            .args(args)
            .env("HONEYCELL_CONTROL__STORE", "postgres")
            .env("HONEYCELL_CONTROL__POSTGRES_URL", &url)
            .output()
            .expect("honeycell")
    };
    let out = cli(&["keys", "rotate"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_kid = text
        .split_whitespace()
        .nth(3)
        .map(|s| s.trim_end_matches(';').to_owned())
        .expect("the new kid");
    assert_ne!(new_kid, old_kid);

    // Within the reload interval every cell signs with the new key, and
    // tokens of the old one keep working.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, pair) = post(&server, "/auth/token", Some(&key), json!({})).await;
        let access = pair["access_token"].as_str().expect("access").to_owned();
        if header_kid(&access) == new_kid {
            assert_eq!(server.count_http(&access).await, 0);
            break;
        }
        assert!(Instant::now() < deadline, "cells never picked up {new_kid}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..8 {
        let (status, _) = server.get_events(&old_access, "limit=1").await;
        assert_eq!(status, 200, "a token of the retired key still verifies");
    }
    let jwks: Value = server
        .http()
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("JSON");
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );

    let out = cli(&["keys", "list"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&format!("{new_kid} EdDSA")) && text.contains("signing"),
        "{text}"
    );
    assert!(text.contains("retired"), "{text}");
    let out = cli(&["keys", "prune"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("no retired key is old enough"),
        "tokens of {old_kid} may still be valid: {text}"
    );

    // A token naming an unknown managed kid is refused.
    let forged = {
        let mut parts: Vec<String> = old_access.split('.').map(str::to_owned).collect();
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        parts[0] = e.encode(br#"{"alg":"EdDSA","typ":"JWT","kid":"hc-0000000000000000"}"#);
        parts.join(".")
    };
    let (status, body) = server.get_events(&forged, "limit=1").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("bad_signature")),
        "{body}"
    );
}
