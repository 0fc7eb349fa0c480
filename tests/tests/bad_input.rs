//! Bad input gets the right status, a stable code and a message that names
//! what to fix, and a bad batch stores nothing; bad credentials are refused
//! with the right code over HTTP and Flight.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_flight::{FlightDescriptor, Ticket};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use honeycell_auth::Role;
use honeycell_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn ok_event() -> Value {
    json!({"event_type": "INSERT", "entity_type": "order", "entity_id": "o-1"})
}

fn with(field: &str, value: Value) -> Value {
    let mut e = ok_event();
    e[field] = value;
    e
}

fn without(field: &str) -> Value {
    let mut e = ok_event();
    e.as_object_mut().expect("object").remove(field);
    e
}

/// Sends a body with a content type and returns (status, body JSON).
async fn send(
    server: &TestServer,
    token: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let resp = server
        .http()
        .post(server.url("/v1/events"))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /v1/events");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("non-JSON error body ({e}): {text}"));
    (status, body)
}

/// Checks an error answer; returns what is wrong with it, if anything.
fn error_problems(
    what: &str,
    got: (u16, &Value),
    status: u16,
    code: &str,
    mentions: &[&str],
) -> Vec<String> {
    let (s, body) = got;
    let mut out = Vec::new();
    if s != status {
        out.push(format!(
            "{what}: status {s}, expected {status}; body {body}"
        ));
    }
    let err = &body["error"];
    if err["code"] != code {
        out.push(format!(
            "{what}: code {}, expected {code:?}; body {body}",
            err["code"]
        ));
    }
    match err["message"].as_str() {
        None => out.push(format!("{what}: no message in {body}")),
        Some(msg) => {
            for m in mentions {
                if !msg.contains(m) {
                    out.push(format!("{what}: the message should mention {m:?}: {msg}"));
                }
            }
        }
    }
    out
}

fn check_error(what: &str, got: (u16, &Value), status: u16, code: &str, mentions: &[&str]) {
    let problems = error_problems(what, got, status, code, mentions);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_event_bodies_are_refused_with_the_field_named() {
    let server = TestServer::builder()
        .env("HONEYCELL_HTTP_LIMITS__MAX_BATCH_EVENTS", 10)
        .env("HONEYCELL_HTTP_LIMITS__MAX_BODY_BYTES", 4096)
        .start()
        .await;
    let token = server.token("bad-org", Role::Operator);
    server.ingest(&token, &[ok_event(), ok_event()]).await;

    let json_cases: Vec<(&str, String, u16, &str, Vec<&str>)> = vec![
        (
            "malformed JSON",
            r#"[{"event_type": "INSERT","#.into(),
            400,
            "invalid_json",
            vec![],
        ),
        (
            "not an array",
            ok_event().to_string(),
            400,
            "invalid_json",
            vec!["array"],
        ),
        ("empty batch", "[]".into(), 400, "empty_batch", vec![]),
        (
            "entity_id is a number",
            json!([with("entity_id", json!(5))]).to_string(),
            400,
            "invalid_event",
            vec!["entity_id"],
        ),
        (
            "data_type wrong: event_type is a number",
            json!([with("event_type", json!(1))]).to_string(),
            400,
            "invalid_event",
            vec!["event_type"],
        ),
        (
            "missing entity_id",
            json!([without("entity_id")]).to_string(),
            400,
            "invalid_event",
            vec!["entity_id"],
        ),
        (
            "missing event_type",
            json!([without("event_type")]).to_string(),
            400,
            "invalid_event",
            vec!["event_type"],
        ),
        (
            "bad event_type",
            json!([with("event_type", json!("CREATE"))]).to_string(),
            400,
            "invalid_event",
            vec!["event_type", "CREATE"],
        ),
        (
            "changes not an object",
            json!([with("changes", json!([1, 2]))]).to_string(),
            400,
            "invalid_event",
            vec!["changes"],
        ),
        (
            "a change without old/new",
            json!([with("changes", json!({"status": "paid"}))]).to_string(),
            400,
            "invalid_event",
            vec!["changes.status"],
        ),
        (
            "a change with another key",
            json!([with("changes", json!({"status": {"old": 1, "newer": 2}}))]).to_string(),
            400,
            "invalid_event",
            vec!["changes.status"],
        ),
        (
            "bad event_id",
            json!([with("event_id", json!("not-a-uuid"))]).to_string(),
            400,
            "invalid_event",
            vec!["event_id", "not-a-uuid"],
        ),
        (
            "bad occurred_at",
            json!([with("occurred_at", json!("yesterday"))]).to_string(),
            400,
            "invalid_event",
            vec!["occurred_at"],
        ),
        (
            "occurred_at of the wrong type",
            json!([with("occurred_at", json!(true))]).to_string(),
            400,
            "invalid_event",
            vec!["occurred_at"],
        ),
        (
            "unknown field",
            json!([with("entity_typ", json!("order"))]).to_string(),
            400,
            "invalid_event",
            vec!["entity_typ"],
        ),
        (
            "org_id in the body",
            json!([with("org_id", json!("other-org"))]).to_string(),
            400,
            "invalid_event",
            vec!["org_id"],
        ),
        (
            "empty entity_type",
            json!([with("entity_type", json!(""))]).to_string(),
            400,
            "invalid_event",
            vec!["entity_type"],
        ),
        (
            "entity_id too long",
            json!([with("entity_id", json!("x".repeat(300)))]).to_string(),
            400,
            "invalid_event",
            vec!["entity_id"],
        ),
        (
            "user_id of the wrong type",
            json!([with("user_id", json!({"id": 1}))]).to_string(),
            400,
            "invalid_event",
            vec!["user_id"],
        ),
        (
            "too many events",
            Value::Array(vec![ok_event(); 11]).to_string(),
            413,
            "batch_too_large",
            vec!["max_batch_events"],
        ),
        (
            "oversized body",
            json!([with("data", json!("x".repeat(5000)))]).to_string(),
            413,
            "body_too_large",
            vec!["max_body_bytes"],
        ),
    ];
    let mut problems = Vec::new();
    for (what, body, status, code, mentions) in json_cases {
        let got = send(&server, &token, "application/json", body).await;
        problems.extend(error_problems(
            what,
            (got.0, &got.1),
            status,
            code,
            &mentions,
        ));
        assert_eq!(server.count_http(&token).await, 2, "{what}: nothing stored");
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // The bad event is reported by index and nothing of its batch is stored.
    let batch = json!([
        ok_event(),
        ok_event(),
        ok_event(),
        with("event_type", json!("NOPE")),
        ok_event()
    ]);
    let got = send(&server, &token, "application/json", batch.to_string()).await;
    check_error(
        "bad 4th event",
        (got.0, &got.1),
        400,
        "invalid_event",
        &["event 3", "event_type"],
    );
    assert_eq!(got.1["error"]["index"], 3);
    assert_eq!(
        server.count_http(&token).await,
        2,
        "nothing of a bad batch is stored"
    );

    // NDJSON: good lines and a bad line.
    let nd = format!("{}\n\n{}\n", ok_event(), ok_event());
    let (s, body) = send(&server, &token, "application/x-ndjson", nd).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["accepted"], 2);
    let nd = format!("{}\n{}\n{{oops\n", ok_event(), ok_event());
    let got = send(&server, &token, "application/x-ndjson", nd).await;
    check_error(
        "bad NDJSON line",
        (got.0, &got.1),
        400,
        "invalid_json",
        &["event 2"],
    );
    assert_eq!(got.1["error"]["index"], 2);
    let nd = format!("{}\n", ok_event()).repeat(11);
    let got = send(&server, &token, "application/x-ndjson", nd).await;
    check_error(
        "NDJSON too many",
        (got.0, &got.1),
        413,
        "batch_too_large",
        &[],
    );
    assert_eq!(server.count_http(&token).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_content_type_is_415() {
    let server = TestServer::new().await;
    let token = server.token("ct-org", Role::Operator);
    let got = send(
        &server,
        &token,
        "text/plain",
        json!([ok_event()]).to_string(),
    )
    .await;
    // RFC 9110 §15.5.16: a payload in an unsupported format is 415.
    check_error(
        "text/plain",
        (got.0, &got.1),
        415,
        "unsupported_media_type",
        &["Content-Type"],
    );
    assert_eq!(server.count_http(&token).await, 0);
}

/// Events that break one of the rules every protocol applies (storage's
/// `rules.rs`): what, the batch (its event 1 is the bad one), the field the
/// refusal names, and whether GraphQL can carry it (its `EventType` enum
/// refuses a bad event_type before any rule runs).
fn rule_cases() -> Vec<(&'static str, [Value; 2], &'static str, bool)> {
    let bad = |field: &str, value: Value| [ok_event(), with(field, value)];
    let id = uuid::Uuid::now_v7().to_string();
    vec![
        (
            "empty entity_id",
            bad("entity_id", json!("")),
            "entity_id",
            true,
        ),
        (
            "entity_type too long",
            bad("entity_type", json!("t".repeat(300))),
            "entity_type",
            true,
        ),
        ("empty user_id", bad("user_id", json!("")), "user_id", true),
        (
            "trace_id too long",
            bad("trace_id", json!("t".repeat(257))),
            "trace_id",
            true,
        ),
        (
            "lower-case event_type",
            bad("event_type", json!("insert")),
            "event_type",
            false,
        ),
        (
            "event_id not a UUID",
            bad("event_id", json!("not-a-uuid")),
            "event_id",
            true,
        ),
        (
            "occurred_at after year 9999",
            bad("occurred_at", json!(253_402_300_800_000_000i64)),
            "occurred_at",
            true,
        ),
        (
            "changes not an object",
            bad("changes", json!([1, 2])),
            "changes",
            true,
        ),
        (
            "a change that is not an object",
            bad("changes", json!({"status": "paid"})),
            "changes.status",
            true,
        ),
        (
            "an empty change",
            bad("changes", json!({"status": {}})),
            "changes.status",
            true,
        ),
        (
            "a change with another key",
            bad("changes", json!({"status": {"old": 1, "newer": 2}})),
            "changes.status",
            true,
        ),
        (
            "a repeated event_id",
            [with("event_id", json!(id)), with("event_id", json!(id))],
            "event_id",
            true,
        ),
    ]
}

/// `events` as a DoPut batch: a column for each field any of them has,
/// nulls where one lacks it; `occurred_at` as Int64 microseconds, `data`
/// and `changes` as JSON text.
fn doput_batch(events: &[Value]) -> arrow::array::RecordBatch {
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use std::sync::Arc;
    let mut fields: Vec<&str> = Vec::new();
    for e in events {
        for name in e.as_object().expect("an event object").keys() {
            if !fields.contains(&name.as_str()) {
                fields.push(name);
            }
        }
    }
    let columns = fields
        .into_iter()
        .map(|f| {
            let column: ArrayRef = match f {
                "occurred_at" => {
                    Arc::new(Int64Array::from_iter(events.iter().map(|e| e[f].as_i64())))
                }
                "data" | "changes" => Arc::new(StringArray::from_iter(
                    events.iter().map(|e| e.get(f).map(Value::to_string)),
                )),
                _ => Arc::new(StringArray::from_iter(events.iter().map(|e| e[f].as_str()))),
            };
            (f, column)
        })
        .collect();
    batch(columns)
}

/// `events` as GraphQL `EventInput`s (camelCase names, times as text).
fn graphql_events(events: &[Value]) -> Value {
    let input = |e: &Value| {
        let mut out = serde_json::Map::new();
        for (k, v) in e.as_object().expect("an event object") {
            let name = match k.as_str() {
                "event_id" => "eventId",
                "event_type" => "eventType",
                "entity_type" => "entityType",
                "entity_id" => "entityId",
                "occurred_at" => "occurredAt",
                "user_id" => "userId",
                "trace_id" => "traceId",
                other => other,
            };
            let v = match (name, v) {
                ("occurredAt", Value::Number(n)) => json!(n.to_string()),
                _ => v.clone(),
            };
            out.insert(name.to_owned(), v);
        }
        Value::Object(out)
    };
    Value::Array(events.iter().map(input).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_refuses_the_same_bad_events_with_the_same_words() {
    let server = TestServer::new().await;
    let token = server.token("rules-org", Role::Operator);
    server.ingest(&token, &[ok_event()]).await;
    let mut flight = server.flight(&token).await;
    let mut problems = Vec::new();
    for (what, events, field, graphql) in rule_cases() {
        let mut answers: Vec<(&str, String)> = Vec::new();

        for (via, content_type, body) in [
            (
                "HTTP JSON",
                "application/json",
                Value::Array(events.to_vec()).to_string(),
            ),
            (
                "NDJSON",
                "application/x-ndjson",
                events.iter().map(|e| format!("{e}\n")).collect(),
            ),
        ] {
            let (status, body) = send(&server, &token, content_type, body).await;
            problems.extend(error_problems(
                &format!("{what} over {via}"),
                (status, &body),
                400,
                "invalid_event",
                &["event 1", field],
            ));
            if body["error"]["index"] != 1 {
                problems.push(format!("{what} over {via}: index is not 1: {body}"));
            }
            answers.push((
                via,
                body["error"]["message"].as_str().unwrap_or("").to_owned(),
            ));
        }

        if graphql {
            let (status, body) = server
                .graphql(
                    &token,
                    "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { accepted } }",
                    json!({ "e": graphql_events(&events) }),
                )
                .await;
            let err = &body["errors"][0];
            if status != 200
                || err["extensions"]["code"] != "invalid_event"
                || err["extensions"]["index"] != 1
            {
                problems.push(format!("{what} over GraphQL: {status} {body}"));
            }
            answers.push(("GraphQL", err["message"].as_str().unwrap_or("").to_owned()));
        }

        match do_put_all(&mut flight, vec![doput_batch(&events)]).await {
            Ok(results) => problems.push(format!("{what} over DoPut: accepted {results:?}")),
            Err(status) => {
                if status.code() != tonic::Code::InvalidArgument {
                    problems.push(format!("{what} over DoPut: {status:?}"));
                }
                answers.push(("DoPut", status.message().to_owned()));
            }
        }

        // One rulebook: the same words whatever the protocol, naming the
        // event and the field.
        let (first_via, first) = &answers[0];
        if !first.contains("event 1") || !first.contains(field) {
            problems.push(format!("{what}: {first_via} says {first:?}"));
        }
        for (via, message) in &answers[1..] {
            if message != first {
                problems.push(format!(
                    "{what}: {via} says {message:?} where {first_via} says {first:?}"
                ));
            }
        }
        assert_eq!(
            server.count_http(&token).await,
            1,
            "{what}: nothing of a refused batch is stored"
        );
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_refused() {
    let server = TestServer::new().await;
    let token = server.token("q-org", Role::Viewer);
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("limit=0", "invalid_limit", vec!["limit"]),
        ("limit=10001", "invalid_limit", vec!["limit", "10000"]),
        ("limit=-1", "invalid_limit", vec!["limit", "whole number"]),
        ("limit=ten", "invalid_limit", vec!["limit", "whole number"]),
        ("cursor=garbage!", "invalid_cursor", vec!["garbage"]),
        // base64 of "hc1:x": the right shape, a wrong offset.
        ("cursor=aGMxOng", "invalid_cursor", vec![]),
        ("since=yesterday", "invalid_filter", vec!["since"]),
        (
            "until=2026-13-01T00:00:00Z",
            "invalid_filter",
            vec!["until"],
        ),
        ("event_type=CREATE", "invalid_filter", vec!["event_type"]),
        ("colour=red", "invalid_query", vec!["colour"]),
        ("org_id=other", "invalid_query", vec!["org_id"]),
    ];
    let mut problems = Vec::new();
    for (q, code, mentions) in cases {
        let (status, body) = server.get_events(&token, q).await;
        problems.extend(error_problems(q, (status, &body), 400, code, &mentions));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // Unknown routes answer JSON too.
    let resp = server
        .http()
        .get(server.url("/v2/nothing"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.expect("JSON 404");
    assert_eq!(body["error"]["code"], "not_found");

    // GraphQL: bad arguments are errors with codes, not silent empty pages.
    let (status, body) = server
        .graphql(
            &token,
            "{ events(first: 0) { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "invalid_limit",
        "{body}"
    );
    let (_, body) = server
        .graphql(
            &token,
            r#"{ events(after: "nope") { edges { cursor } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "invalid_cursor",
        "{body}"
    );
    let (_, body) = server
        .graphql(
            &token,
            r#"{ events(filter: {since: "soon"}) { edges { cursor } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "invalid_filter",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .expect("message")
            .contains("since"),
        "{body}"
    );

    // Flight tickets and descriptors.
    let mut flight = server.flight(&token).await;
    for ticket in [
        r#"{"entity_typ":"order"}"#,
        r#"{"since":"soon"}"#,
        r#"{"after":"nope"}"#,
        "{not json",
    ] {
        let status = do_get_all(&mut flight, Ticket::new(ticket))
            .await
            .expect_err(ticket);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{ticket}: {status:?}"
        );
    }
    let status = flight
        .get_flight_info(FlightDescriptor::new_path(vec!["users".into()]))
        .await
        .map_err(flight_status)
        .expect_err("unknown path");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("users"), "{}", status.message());
    let status = flight
        .get_flight_info(FlightDescriptor::new_cmd(r#"{"entity_typ":"order"}"#))
        .await
        .map_err(flight_status)
        .expect_err("unknown key");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("entity_typ"),
        "{}",
        status.message()
    );
}

// ---- credentials ----

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(exp: u64) -> Value {
    json!({"sub": "mallory", "org": "jwt-org", "role": "admin", "iat": now() - 3600,
           "exp": exp, "iss": "honeycell", "aud": "honeycell"})
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("encode")
}

fn alg_none(claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{h}.{c}.")
}

/// (what, Authorization value or None, code, words of the message).
fn bad_credentials(
    server: &TestServer,
) -> Vec<(&'static str, Option<String>, &'static str, &'static str)> {
    let secret = server.secret().expect("an HS256 server");
    let valid = server.token("jwt-org", Role::Admin);
    let mut tampered = valid.clone();
    // Flip a character of the claims segment.
    let dot = tampered.find('.').expect("a dot") + 5;
    let c = tampered.as_bytes()[dot];
    tampered.replace_range(dot..dot + 1, if c == b'A' { "B" } else { "A" });
    vec![
        ("missing", None, "missing_token", "missing"),
        (
            "not bearer",
            Some(format!("Basic {valid}")),
            "not_bearer",
            "Bearer",
        ),
        (
            "empty bearer",
            Some("Bearer ".into()),
            "malformed_token",
            "malformed",
        ),
        (
            "garbage",
            Some("Bearer not-a-jwt".into()),
            "malformed_token",
            "malformed",
        ),
        (
            "garbage segments",
            Some("Bearer a.b.c".into()),
            "malformed_token",
            "malformed",
        ),
        (
            "wrong signature",
            Some(format!(
                "Bearer {}",
                hs256(&[7u8; 48], &claims(now() + 600))
            )),
            "bad_signature",
            "signature",
        ),
        (
            "tampered claims",
            Some(format!("Bearer {tampered}")),
            "bad_signature",
            "signature",
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                hs256(secret.as_bytes(), &claims(now() - 300))
            )),
            "token_expired",
            "expired",
        ),
        (
            "alg none",
            Some(format!("Bearer {}", alg_none(&claims(now() + 600)))),
            "alg_none",
            "none",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_over_http_and_flight() {
    // Dozens of forged tokens from one address: lift the brute-force limit,
    // which has its own test (api_keys.rs), to see every error's mapping.
    let server = TestServer::builder()
        .env("HONEYCELL_CONTROL__BRUTE_FORCE_MAX_FAILURES", 1_000_000)
        .start()
        .await;
    let valid = server.token("jwt-org", Role::Admin);
    server.ingest_n(&valid, 3, 0).await;
    let cases = bad_credentials(&server);
    for (what, auth, code, words) in cases {
        for route in ["/v1/events", "/graphql"] {
            let mut req = if route == "/graphql" {
                server
                    .http()
                    .post(server.url(route))
                    .json(&json!({"query": "{ events { edges { cursor } } }"}))
            } else {
                server.http().get(server.url(route))
            };
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let resp = req.send().await.expect("request");
            assert_eq!(resp.status(), 401, "{what} on {route}");
            assert!(
                resp.headers().contains_key("www-authenticate"),
                "{what}: WWW-Authenticate"
            );
            let body: Value = resp.json().await.expect("JSON 401");
            assert_eq!(body["error"]["code"], code, "{what} on {route}: {body}");
        }
        // A bad token never writes.
        let mut req = server
            .http()
            .post(server.url("/v1/events"))
            .json(&json!([ok_event()]));
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        assert_eq!(
            req.send().await.expect("POST").status(),
            401,
            "{what}: POST"
        );

        // Flight: every call is UNAUTHENTICATED with a message that says why.
        for port in [server.ports().flight, server.cell_port(0)] {
            let mut client = match &auth {
                None => flight_client(port, None).await,
                Some(a) => flight_client_raw_auth(port, a).await,
            };
            let s = client
                .get_flight_info(FlightDescriptor::new_path(vec!["events".into()]))
                .await
                .map_err(flight_status)
                .expect_err(what);
            assert_eq!(
                s.code(),
                tonic::Code::Unauthenticated,
                "{what}: GetFlightInfo {s:?}"
            );
            assert!(
                s.message().to_lowercase().contains(&words.to_lowercase()),
                "{what}: {}",
                s.message()
            );
            let s = do_get_all(&mut client, Ticket::new("{}"))
                .await
                .expect_err(what);
            assert_eq!(
                s.code(),
                tonic::Code::Unauthenticated,
                "{what}: DoGet {s:?}"
            );
            let s = match client
                .do_action(arrow_flight::Action::new("whoami", ""))
                .await
            {
                Ok(_) => panic!("{what}: DoAction accepted"),
                Err(e) => flight_status(e),
            };
            assert_eq!(
                s.code(),
                tonic::Code::Unauthenticated,
                "{what}: DoAction {s:?}"
            );
            let s = do_put_all(&mut client, vec![]).await;
            if let Err(s) = s {
                assert_eq!(
                    s.code(),
                    tonic::Code::Unauthenticated,
                    "{what}: DoPut {s:?}"
                );
            } else {
                panic!("{what}: DoPut accepted");
            }
        }
        // Flight SQL too.
        let mut sql = match &auth {
            None => arrow_flight::sql::client::FlightSqlServiceClient::new(
                tonic::transport::Channel::from_shared(format!(
                    "http://127.0.0.1:{}",
                    server.ports().flight
                ))
                .expect("uri")
                .connect()
                .await
                .expect("connect"),
            ),
            Some(a) => {
                let mut c = flight_sql_client(server.ports().flight, "x").await;
                c.set_header("authorization", a.clone());
                c
            }
        };
        let err = sql
            .execute("SELECT * FROM events".into(), None)
            .await
            .expect_err(what);
        let s = flight_status(err);
        assert_eq!(
            s.code(),
            tonic::Code::Unauthenticated,
            "{what}: Flight SQL {s:?}"
        );
    }
    assert_eq!(server.count_http(&valid).await, 3);
    // A token with 1 s to live is accepted now.
    let short = server.token_ttl("jwt-org", Role::Viewer, Duration::from_secs(1));
    let (status, _) = server.get_events(&short, "").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_seen_before_is_still_refused_once_it_expires() {
    // Verified tokens are remembered per cell; expiry must still apply.
    let server = TestServer::builder()
        .env("HONEYCELL_JWT__LEEWAY_SECS", 0)
        .start()
        .await;
    let short = server.token_ttl("jwt-org", Role::Viewer, Duration::from_secs(2));
    for _ in 0..3 {
        let (status, _) = server.get_events(&short, "").await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (status, body) = server.get_events(&short, "").await;
    assert_eq!(status, 401, "an expired token, verified before: {body}");
    assert_eq!(body["error"]["code"], "token_expired", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_token_is_refused_by_an_rs256_server() {
    let server = TestServer::builder().rs256().start().await;
    // A genuine RS256 token works.
    let good = server.token("rsa-org", Role::Operator);
    server.ingest_n(&good, 2, 0).await;
    // HS256 signed with the server's public key as the HMAC secret
    // (algorithm confusion) is refused before the key is used.
    let public = std::fs::read(auth_fixture("rsa_public.pem")).expect("public key");
    let mut c = claims(now() + 600);
    c["org"] = json!("rsa-org");
    let forged = hs256(&public, &c);
    let (status, body) = server.get_events(&forged, "").await;
    check_error(
        "HS256 on RS256",
        (status, &body),
        401,
        "algorithm_not_allowed",
        &["RS256"],
    );
    let resp = server.post_events(&forged, &json!([ok_event()])).await;
    assert_eq!(resp.status(), 401);
    let mut client = server.flight_at(server.ports().flight, Some(&forged)).await;
    let s = do_get_all(&mut client, Ticket::new("{}"))
        .await
        .expect_err("forged");
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
    assert!(s.message().contains("RS256"), "{}", s.message());
    // alg none is refused here too, and nothing was written.
    let (status, body) = server.get_events(&alg_none(&c), "").await;
    check_error("alg none on RS256", (status, &body), 401, "alg_none", &[]);
    assert_eq!(server.count_http(&good).await, 2);
}
