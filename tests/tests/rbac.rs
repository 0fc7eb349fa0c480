//! The RBAC matrix, end to end: every role × every operation the server has
//! today × every protocol that offers it. The expected cells are written
//! out here (the spec, roadmap 5.3), not computed from the server's policy,
//! so a change to the policy must change this table too. Allowed means the
//! operation succeeds; refused means 403 (HTTP), a GraphQL error with
//! status 403 and the permission named, or PERMISSION_DENIED (Flight). No
//! identity at all is 401 / UNAUTHENTICATED everywhere.

use arrow_flight::Ticket;
use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Op {
    EventsReadHttp,
    EventsReadGraphql,
    EventsReadFlight,
    EventsReadFlightSql,
    EventsWriteHttp,
    EventsWriteGraphql,
    EventsWriteFlight,
    ApiKeysReadGraphql,
    ApiKeysWriteGraphql,
    AuditReadGraphql,
    UsersReadGraphql,
    UsersWriteGraphql,
}

/// (operation, its permission, admin, operator, viewer)
const MATRIX: [(Op, &str, bool, bool, bool); 12] = [
    (Op::EventsReadHttp, "events:read", true, true, true),
    (Op::EventsReadGraphql, "events:read", true, true, true),
    (Op::EventsReadFlight, "events:read", true, true, true),
    (Op::EventsReadFlightSql, "events:read", true, true, true),
    (Op::EventsWriteHttp, "events:write", true, true, false),
    (Op::EventsWriteGraphql, "events:write", true, true, false),
    (Op::EventsWriteFlight, "events:write", true, true, false),
    (Op::ApiKeysReadGraphql, "apikeys:read", true, false, false),
    (Op::ApiKeysWriteGraphql, "apikeys:write", true, false, false),
    (Op::AuditReadGraphql, "audit:read", true, false, false),
    (Op::UsersReadGraphql, "users:read", true, false, false),
    (Op::UsersWriteGraphql, "users:write", true, false, false),
];

/// What happened: Ok, or the refusal's HTTP-like status and permission.
#[derive(Debug, PartialEq)]
enum Outcome {
    Allowed,
    Refused(u16, Option<String>),
}

fn graphql_outcome(status: u16, body: &Value) -> Outcome {
    match body["errors"].as_array().and_then(|e| e.first()) {
        None if status == 200 => Outcome::Allowed,
        None => Outcome::Refused(status, None),
        Some(e) => Outcome::Refused(
            e["extensions"]["status"].as_u64().unwrap_or(status as u64) as u16,
            e["extensions"]["permission"].as_str().map(str::to_owned),
        ),
    }
}

fn grpc_outcome(r: Result<(), tonic::Status>) -> Outcome {
    match r {
        Ok(()) => Outcome::Allowed,
        Err(s) => Outcome::Refused(
            match s.code() {
                tonic::Code::PermissionDenied => 403,
                tonic::Code::Unauthenticated => 401,
                other => panic!("unexpected {other:?}: {s}"),
            },
            None,
        ),
    }
}

/// Runs `op` with `token` (`None`: no Authorization at all).
async fn run(server: &TestServer, op: Op, token: Option<&str>) -> Outcome {
    let tok = token.unwrap_or("");
    let http = |req: reqwest::RequestBuilder| async {
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    };
    let gql = |query: &'static str, vars: Value| {
        http(
            server
                .http()
                .post(server.url("/graphql"))
                .json(&json!({"query": query, "variables": vars})),
        )
    };
    match op {
        Op::EventsReadHttp => {
            let (status, body) = http(server.http().get(server.url("/v1/events?limit=1"))).await;
            if status == 200 {
                Outcome::Allowed
            } else {
                Outcome::Refused(
                    status,
                    body["error"]["permission"].as_str().map(str::to_owned),
                )
            }
        }
        Op::EventsWriteHttp => {
            let (status, body) = http(
                server
                    .http()
                    .post(server.url("/v1/events"))
                    .json(&Value::Array(gen_events(1, 5))),
            )
            .await;
            if status == 200 {
                Outcome::Allowed
            } else {
                Outcome::Refused(
                    status,
                    body["error"]["permission"].as_str().map(str::to_owned),
                )
            }
        }
        Op::EventsReadGraphql => {
            let (s, b) = gql("{ events(first: 1) { edges { cursor } } }", json!({})).await;
            graphql_outcome(s, &b)
        }
        Op::EventsWriteGraphql => {
            let (s, b) = gql(
                "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { accepted } }",
                json!({"e": [{"eventType": "INSERT", "entityType": "order", "entityId": "o-1"}]}),
            )
            .await;
            graphql_outcome(s, &b)
        }
        Op::ApiKeysReadGraphql => {
            let (s, b) = gql("{ apiKeys { id } }", json!({})).await;
            graphql_outcome(s, &b)
        }
        Op::ApiKeysWriteGraphql => {
            let (s, b) = gql(
                "mutation { createApiKey(name: \"m\", role: VIEWER) { key } }",
                json!({}),
            )
            .await;
            graphql_outcome(s, &b)
        }
        Op::UsersReadGraphql => {
            let (s, b) = gql("{ members { userId } }", json!({})).await;
            graphql_outcome(s, &b)
        }
        Op::UsersWriteGraphql => {
            let (s, b) = gql(
                "mutation { addMember(email: \"m@example.com\", role: VIEWER) { userId } }",
                json!({}),
            )
            .await;
            graphql_outcome(s, &b)
        }
        Op::AuditReadGraphql => {
            let (s, b) = gql("{ auditLog(first: 1) { entries { seq } } }", json!({})).await;
            graphql_outcome(s, &b)
        }
        Op::EventsReadFlight => {
            let mut c = server.flight_at(server.ports().flight, token).await;
            grpc_outcome(do_get_all(&mut c, Ticket::new("{}")).await.map(|_| ()))
        }
        Op::EventsReadFlightSql => {
            // (Anonymous: an empty Bearer credential, the closest a Flight
            // SQL client gets to none.)
            grpc_outcome(
                server
                    .sql_status(tok, "SELECT COUNT(*) FROM events")
                    .await
                    .map(|_| ()),
            )
        }
        Op::EventsWriteFlight => {
            let mut c = server.flight_at(server.ports().flight, token).await;
            grpc_outcome(
                do_put_all(&mut c, vec![one_event_batch("o-1")])
                    .await
                    .map(|_| ()),
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_every_operation_every_protocol() {
    let server = TestServer::builder().cells(2).start().await;
    matrix(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_every_operation_every_protocol_on_postgres() {
    let pg = TestPostgres::start();
    let server = TestServer::builder()
        .cells(2)
        .postgres(&pg.database("honeycell"))
        .start()
        .await;
    matrix(&server).await;
}

async fn matrix(server: &TestServer) {
    let mut failures = Vec::new();
    for (i, (role, name)) in [
        (Role::Admin, "admin"),
        (Role::Operator, "operator"),
        (Role::Viewer, "viewer"),
    ]
    .into_iter()
    .enumerate()
    {
        let token = server.token("matrix", role);
        for (op, permission, admin, operator, viewer) in MATRIX {
            let allowed = [admin, operator, viewer][i];
            let got = run(server, op, Some(&token)).await;
            let ok = match (&got, allowed) {
                (Outcome::Allowed, true) => true,
                (Outcome::Refused(403, p), false) => p.as_deref().is_none_or(|p| p == permission),
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{name} {op:?}: expected {}, got {got:?}",
                    if allowed {
                        "allowed".to_owned()
                    } else {
                        format!("403 {permission}")
                    }
                ));
            }
        }
    }
    // No identity: 401 on every operation.
    for (op, ..) in MATRIX {
        let got = run(server, op, None).await;
        if got != Outcome::Refused(401, None) {
            failures.push(format!("anonymous {op:?}: expected 401, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "RBAC matrix mismatches:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_over_flight_are_audited_like_http_ones() {
    let server = TestServer::builder().cells(2).start().await;
    let viewer = server.token_for("audited", "vic", Role::Viewer);
    let mut c = server.flight_at(server.ports().flight, Some(&viewer)).await;
    let refused = do_put_all(&mut c, vec![one_event_batch("o-1")])
        .await
        .expect_err("viewer DoPut");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    server
        .audit_until("audited", Some("permission.denied"), |entries| {
            entries
                .iter()
                .any(|e| e["actor"] == "vic" && e["resource"] == "events:write")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_entries_carry_the_request_trace_id() {
    let server = TestServer::builder().cells(2).start().await;
    let viewer = server.token_for("traced", "vic", Role::Viewer);
    let http_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let flight_trace = "0af7651916cd43dd8448eb211c80319c";

    // HTTP with a W3C traceparent: the answer names the same trace.
    let resp = server
        .http()
        .post(server.url("/v1/events"))
        .bearer_auth(&viewer)
        .header(
            "traceparent",
            format!("00-{http_trace}-00f067aa0ba902b7-01"),
        )
        .json(&json!([{"event_type": "INSERT", "entity_type": "o", "entity_id": "1", "data": {}}]))
        .send()
        .await
        .expect("POST /v1/events");
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-trace-id"], http_trace);
    // Without one (or with a malformed one): a fresh trace id, answered too.
    let resp = server
        .http()
        .get(server.url("/v1/events"))
        .header("traceparent", "00-not-a-trace-01")
        .send()
        .await
        .expect("GET /v1/events");
    let fresh = resp.headers()["x-trace-id"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    assert_eq!(fresh.len(), 32, "{fresh}");
    assert_ne!(fresh, http_trace);

    // Flight, with traceparent in the call's metadata.
    let mut c = server.flight_at(server.ports().flight, Some(&viewer)).await;
    c.add_header(
        "traceparent",
        &format!("00-{flight_trace}-b7ad6b7169203331-01"),
    )
    .expect("metadata");
    do_put_all(&mut c, vec![one_event_batch("o-1")])
        .await
        .expect_err("viewer DoPut");
    // GraphQL: a mutation without traceparent still gets a trace id.
    let admin = server.token("traced", Role::Admin);
    let (status, body) = server
        .graphql(
            &admin,
            "mutation { createApiKey(name: \"traced\", role: VIEWER) { key } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let denied = server
        .audit_until("traced", Some("permission.denied"), |e| e.len() >= 2)
        .await;
    let traces: Vec<&str> = denied
        .iter()
        .filter_map(|e| e["traceId"].as_str())
        .collect();
    assert!(traces.contains(&http_trace), "{denied:?}");
    assert!(traces.contains(&flight_trace), "{denied:?}");
    let created = server
        .audit_until("traced", Some("apikey.create"), |e| !e.is_empty())
        .await;
    let id = created[0]["traceId"].as_str().unwrap_or_default();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{created:?}"
    );
}
