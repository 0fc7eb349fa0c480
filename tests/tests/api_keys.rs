//! API keys end to end against the real binary: created, listed, rotated and
//! revoked through GraphQL by admins; used as `Authorization: Bearer
//! hck_…` over HTTP, GraphQL, Flight and Flight SQL; narrowed by role and
//! scopes; refused on every cell within a second of revocation; expired;
//! isolated between orgs; last use written in batches; stored only as a
//! hash; every change audited.

use std::time::{Duration, Instant};

use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

const CREATE: &str = "mutation($name: String!, $role: Role!, $scopes: [String!]!, $exp: String) {
  createApiKey(name: $name, role: $role, scopes: $scopes, expiresIn: $exp) {
    key apiKey { id name role scopes createdBy expiresAt revokedAt lastUsedAt }
  }
}";
const LIST: &str = "{ apiKeys { id name role scopes revokedAt lastUsedAt } }";

/// Creates a key as `admin`; returns (key text, id).
async fn create(
    server: &TestServer,
    admin: &str,
    role: &str,
    scopes: Value,
    exp: Option<&str>,
) -> (String, String) {
    let (status, body) = server
        .graphql(
            admin,
            CREATE,
            json!({"name": format!("{role} key"), "role": role, "scopes": scopes, "exp": exp}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let created = &body["data"]["createApiKey"];
    let key = created["key"].as_str().expect("key text").to_owned();
    let id = created["apiKey"]["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with(&format!("hck_{id}_")), "{key}");
    (key, id)
}

/// A GET over a connection of its own (new connections spread over the
/// cells by SO_REUSEPORT), as (status, body).
async fn fresh_get(server: &TestServer, token: &str) -> (u16, Value) {
    let client = reqwest::Client::new();
    let resp = client
        .get(server.url("/v1/events?limit=1"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /v1/events");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_work_on_every_protocol_within_role_and_scopes() {
    let server = TestServer::builder().cells(2).start().await;
    let admin = server.token("acme", Role::Admin);
    let (rw, rw_id) = create(
        &server,
        &admin,
        "OPERATOR",
        json!(["events:read", "events:write"]),
        None,
    )
    .await;

    // HTTP ingest and read, GraphQL, Flight DoGet and Flight SQL, with the key.
    let ids = server.ingest_n(&rw, 5, 1).await;
    let (status, body) = server.get_events(&rw, "limit=10").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(5), "{body}");
    assert!(
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["org_id"] == "acme")
    );
    let gql = server.all_events_graphql(&rw, json!({}), 10).await;
    assert_eq!(gql.len(), 5);
    let (_, batches) = server.flight_query(&rw, None).await;
    assert_eq!(Row::from_batches(&batches).len(), 5);
    let counted = server
        .sql(&rw, "SELECT COUNT(*) AS n FROM events")
        .await
        .expect("Flight SQL with an API key");
    assert_eq!(counted[0].num_rows(), 1);
    assert_eq!(ids.len(), 5);

    // Scopes narrow the role: a read-only key cannot write, and says why.
    let (ro, _) = create(&server, &admin, "OPERATOR", json!(["events:read"]), None).await;
    let resp = server
        .post_events(&ro, &Value::Array(gen_events(1, 9)))
        .await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["permission"], "events:write", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("scopes"),
        "{body}"
    );
    let mut flight = server.flight(&ro).await;
    let put = flight_put_one(&mut flight).await;
    assert_eq!(put.code(), tonic::Code::PermissionDenied, "{put}");

    // The role caps the key: a viewer key cannot write whatever its scopes.
    let (viewer, _) = create(&server, &admin, "VIEWER", json!([]), None).await;
    let resp = server
        .post_events(&viewer, &Value::Array(gen_events(1, 9)))
        .await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["permission"], "events:write", "{body}");
    assert_eq!(fresh_get(&server, &viewer).await.0, 200);

    // Keys cannot administer keys unless their role and scopes allow it.
    let (status, body) = server.graphql(&rw, LIST, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["extensions"]["permission"], "apikeys:read",
        "{body}"
    );
    let operator = server.token("acme", Role::Operator);
    let (_, body) = server
        .graphql(
            &operator,
            CREATE,
            json!({"name": "x", "role": "ADMIN", "scopes": []}),
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["status"], 403, "{body}");

    // Listing shows every key, never a secret.
    let (_, body) = server.graphql(&admin, LIST, json!({})).await;
    let keys = body["data"]["apiKeys"].as_array().expect("apiKeys").clone();
    assert_eq!(keys.len(), 3, "{body}");
    assert!(keys.iter().any(|k| k["id"] == rw_id.as_str()));
    // The secret is all after `hck_<id>_` (base64url may hold `_` itself).
    let (_, secret) = honeycell_control::parse_api_key(&rw).expect("a well-formed key");
    assert!(
        !body.to_string().contains(secret),
        "the secret is never listed"
    );

    // Bad keys get 401 with a precise code.
    for (bad, code) in [
        ("hck_zz_nope", "malformed_api_key"),
        (
            "hck_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "bad_api_key",
        ),
    ] {
        let (status, body) = fresh_get(&server, bad).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    let wrong_secret = format!("hck_{rw_id}_{}", "B".repeat(43));
    let (status, body) = fresh_get(&server, &wrong_secret).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("bad_api_key"))
    );
}

/// A one-row DoPut; returns its status (expected to fail).
async fn flight_put_one(client: &mut arrow_flight::FlightClient) -> tonic::Status {
    let batch = one_event_batch("o-1");
    do_put_all(client, vec![batch])
        .await
        .expect_err("DoPut with a read-only key must fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_rotated_and_expired_keys_are_refused_on_every_cell() {
    let server = TestServer::builder().cells(2).start().await;
    let admin = server.token("acme", Role::Admin);
    let (key, id) = create(&server, &admin, "OPERATOR", json!([]), None).await;
    // Warm both cells' caches.
    for _ in 0..16 {
        assert_eq!(fresh_get(&server, &key).await.0, 200);
    }
    let (_, body) = server
        .graphql(
            &admin,
            "mutation($id: String!) { revokeApiKey(id: $id) { id revokedAt } }",
            json!({"id": id}),
        )
        .await;
    assert!(
        body["data"]["revokeApiKey"]["revokedAt"].is_string(),
        "{body}"
    );
    let revoked_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..16 {
        let (status, body) = fresh_get(&server, &key).await;
        assert_eq!(
            status,
            401,
            "{:?} after revocation: {body}",
            revoked_at.elapsed()
        );
        assert_eq!(body["error"]["code"], "api_key_revoked", "{body}");
    }
    let flight = server
        .sql(&key, "SELECT 1")
        .await
        .expect_err("revoked key over Flight SQL");
    assert!(flight.to_string().contains("revoked"), "{flight}");
    // Revoking again, or another org's key, is "not found".
    let (_, body) = server
        .graphql(
            &admin,
            "mutation($id: String!) { revokeApiKey(id: $id) { id } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["status"], 404, "{body}");

    // Rotation: the new key works, the old one stops.
    let (old, old_id) = create(
        &server,
        &admin,
        "VIEWER",
        json!(["events:read"]),
        Some("30d"),
    )
    .await;
    assert_eq!(fresh_get(&server, &old).await.0, 200);
    let (_, body) = server
        .graphql(
            &admin,
            "mutation($id: String!) { rotateApiKey(id: $id) { key apiKey { id role scopes } } }",
            json!({"id": old_id}),
        )
        .await;
    let new = body["data"]["rotateApiKey"]["key"]
        .as_str()
        .expect("new key")
        .to_owned();
    assert_eq!(
        body["data"]["rotateApiKey"]["apiKey"]["role"], "viewer",
        "{body}"
    );
    assert_eq!(
        body["data"]["rotateApiKey"]["apiKey"]["scopes"],
        json!(["events:read"])
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(fresh_get(&server, &new).await.0, 200);
    assert_eq!(fresh_get(&server, &old).await.0, 401);

    // Expiry.
    let (short, _) = create(&server, &admin, "VIEWER", json!([]), Some("2s")).await;
    assert_eq!(fresh_get(&server, &short).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let (status, body) = fresh_get(&server, &short).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("api_key_expired")),
        "{body}"
    );
    let (_, body) = server
        .graphql(
            &admin,
            CREATE,
            json!({"name": "x", "role": "VIEWER", "scopes": ["events:fly"]}),
        )
        .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("events:fly"),
        "{body}"
    );
    let (_, body) = server
        .graphql(
            &admin,
            CREATE,
            json!({"name": "x", "role": "VIEWER", "scopes": [], "exp": "soon"}),
        )
        .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expiresIn"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_isolated_between_orgs() {
    let server = TestServer::builder().cells(2).start().await;
    let acme = server.token("acme", Role::Admin);
    let bravo = server.token("bravo", Role::Admin);
    let (acme_key, acme_id) = create(&server, &acme, "OPERATOR", json!([]), None).await;
    server.ingest_n(&acme_key, 3, 1).await;
    server.ingest_n(&bravo, 4, 2).await;

    let (_, body) = server.graphql(&bravo, LIST, json!({})).await;
    assert_eq!(
        body["data"]["apiKeys"],
        json!([]),
        "bravo sees none of acme's keys"
    );
    for m in [
        "revokeApiKey(id: $id) { id }",
        "rotateApiKey(id: $id) { key }",
    ] {
        let (_, body) = server
            .graphql(
                &bravo,
                &format!("mutation($id: String!) {{ {m} }}"),
                json!({"id": acme_id}),
            )
            .await;
        assert_eq!(
            body["errors"][0]["extensions"]["status"], 404,
            "{m}: {body}"
        );
    }
    assert_eq!(fresh_get(&server, &acme_key).await.0, 200, "still live");
    // The key's org comes from its record: it sees acme's events only.
    assert_eq!(server.count_http(&acme_key).await, 3);
    let rows = server.all_events_graphql(&acme_key, json!({}), 10).await;
    assert!(rows.iter().all(|e| e["orgId"] == "acme"), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_use_is_batched_secrets_are_hashed_and_changes_are_audited() {
    let mut server = TestServer::builder()
        .cells(2)
        .env("HONEYCELL_CONTROL__LAST_USED_FLUSH", "200ms")
        .start()
        .await;
    let admin = server.token("acme", Role::Admin);
    let (key, id) = create(&server, &admin, "OPERATOR", json!([]), None).await;
    let (_, body) = server.graphql(&admin, LIST, json!({})).await;
    assert_eq!(body["data"]["apiKeys"][0]["lastUsedAt"], Value::Null);
    assert_eq!(fresh_get(&server, &key).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = server.graphql(&admin, LIST, json!({})).await;
        if body["data"]["apiKeys"][0]["lastUsedAt"].is_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lastUsedAt never written: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A refused attempt is audited too.
    let operator = server.token("acme", Role::Operator);
    server.graphql(&operator, LIST, json!({})).await;

    let status = server.sigterm().await;
    assert!(status.success(), "{status}");
    let file = server.data_dir().join("control").join("control.redb");
    let bytes = std::fs::read(&file).expect("control store file");
    let (_, secret) = honeycell_control::parse_api_key(&key).expect("a well-formed key");
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(id.as_bytes()),
        "the key record is in {}",
        file.display()
    );
    assert!(
        !contains(secret.as_bytes()),
        "the secret must never be stored"
    );

    let out = honeycell_command()
        .args(["audit", "verify", "--org", "acme"])
        .arg("--data-dir")
        .arg(server.data_dir())
        .output()
        .expect("honeycell audit verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // apikey.create, then apikey.list refused for the operator.
    assert!(
        text.contains("acme: 2 entries, hash chain intact"),
        "{text}"
    );
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address
/// reaches the server's 127.0.0.1 listener on Linux).
/// A client from `ip` that opens a fresh connection for every request, so
/// that its requests land on every cell (SO_REUSEPORT hashes the ports).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

const AUDIT: &str = "query($action: String, $before: Int, $first: Int) {
  auditLog(action: $action, before: $before, first: $first) {
    entries { seq at actor action resource result hash } nextBefore
  }
}";

/// Failures allowed per address and per key in the brute-force test: one
/// budget for the whole server, whatever cell each connection lands on.
const BUDGET: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_rate_limited_per_address_and_key_across_cells_and_audited() {
    let server = TestServer::builder()
        .cells(4)
        .env("HONEYCELL_CONTROL__BRUTE_FORCE_MAX_FAILURES", BUDGET)
        .env("HONEYCELL_CONTROL__BRUTE_FORCE_WINDOW", "1m")
        .start()
        .await;
    let admin = server.token("acme", Role::Admin);
    let (key, id) = create(&server, &admin, "OPERATOR", json!([]), None).await;
    let wrong = format!("hck_{id}_{}", "C".repeat(43));
    let get = |client: reqwest::Client, token: String| {
        let url = server.url("/v1/events?limit=1");
        async move {
            let r = client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("GET");
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        }
    };
    // Every attempt on a new connection: they spread over the four cells,
    // which together allow BUDGET failures, not four times as many.
    let attacker = client_from([127, 0, 0, 1]);
    for _ in 0..BUDGET {
        let (status, _, body) = get(attacker.clone(), wrong.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (401, json!("bad_api_key"))
        );
    }
    let landed = server.requests_per_cell("GET /v1/events", 401).await;
    assert_eq!(landed.iter().sum::<u64>(), BUDGET as u64, "{landed:?}");
    assert!(
        landed.iter().filter(|&&n| n > 0).count() >= 2,
        "the failures landed on one cell only: {landed:?}"
    );
    // The address has used its failures: even valid credentials wait.
    let (status, retry, body) = get(attacker.clone(), key.clone()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_failed_attempts", "{body}");
    let secs: u64 = retry
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    // On whichever cell: eight more connections, all refused.
    for _ in 0..8 {
        let (status, _, _) = get(attacker.clone(), admin.clone()).await;
        assert_eq!(status, 429, "per address, whatever the credential");
    }
    let refused = server.requests_per_cell("GET /v1/events", 429).await;
    assert_eq!(refused.iter().sum::<u64>(), 9, "{refused:?}");

    // From another address: the key itself is locked, on every cell; JWTs
    // work.
    let other = client_from([127, 0, 0, 2]);
    for _ in 0..8 {
        let (status, _, body) = get(other.clone(), key.clone()).await;
        assert_eq!(status, 429, "per key id: {body}");
    }
    let (status, _, _) = get(other.clone(), admin.clone()).await;
    assert_eq!(status, 200);

    // The failures against the real key are in acme's audit log.
    let gql = |token: String, vars: Value| {
        let client = other.clone();
        let url = server.url("/graphql");
        async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"query": AUDIT, "variables": vars}))
                .send()
                .await
                .expect("POST /graphql");
            r.json::<Value>().await.expect("JSON")
        }
    };
    // (Written in the background: poll briefly.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let entries = loop {
        let body = gql(admin.clone(), json!({"action": "auth.failed"})).await;
        let entries = body["data"]["auditLog"]["entries"]
            .as_array()
            .expect("entries")
            .clone();
        if entries.len() >= BUDGET || Instant::now() > deadline {
            assert_eq!(entries.len(), BUDGET, "{body}");
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for e in &entries {
        assert_eq!(e["actor"], "ip:127.0.0.1");
        assert_eq!(e["resource"], format!("apikey/{id}"));
        assert_eq!(e["result"], "denied");
    }
    // Paging backwards by sequence number, newest first.
    let body = gql(admin.clone(), json!({"first": 2})).await;
    let page = &body["data"]["auditLog"];
    let seqs: Vec<u64> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 2, "{body}");
    assert!(seqs[0] > seqs[1], "{seqs:?}");
    let body = gql(
        admin.clone(),
        json!({"first": 2, "before": page["nextBefore"]}),
    )
    .await;
    let next: Vec<u64> = body["data"]["auditLog"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(next, [seqs[1] - 1, seqs[1] - 2], "{body}");

    // Another org sees none of it; a viewer may not read it, and that
    // refusal is audited too.
    let bravo = server.token("bravo", Role::Admin);
    let body = gql(bravo, json!({})).await;
    assert_eq!(body["data"]["auditLog"]["entries"], json!([]), "{body}");
    let viewer = server.token_for("acme", "vera", Role::Viewer);
    let body = gql(viewer, json!({})).await;
    assert_eq!(
        body["errors"][0]["extensions"]["permission"], "audit:read",
        "{body}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = gql(admin.clone(), json!({"action": "permission.denied"})).await;
        let entries = body["data"]["auditLog"]["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if entries
            .iter()
            .any(|e| e["actor"] == "vera" && e["resource"] == "audit:read")
        {
            break;
        }
        assert!(Instant::now() < deadline, "denial never audited: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
