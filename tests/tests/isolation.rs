//! Tenant isolation: org A never sees org B's events, through any protocol,
//! whatever the ticket, query or SQL says — with every kind of credential:
//! a JWT from the configured issuer, an API key, and an access token the
//! server issued for an API key (`/auth/token`) — and with the control
//! plane in the embedded store and in a throwaway PostgreSQL.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use arrow_flight::{FlightDescriptor, Ticket};
use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::json;

struct Tenants {
    server: TestServer,
    /// The control plane's database, when the server keeps it in PostgreSQL.
    _pg: Option<TestPostgres>,
    a: String,
    b: String,
    token_a: String,
    token_b: String,
    ids_a: BTreeSet<String>,
    ids_b: BTreeSet<String>,
}

/// How the tenants authenticate, and where the control plane lives.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Jwt,
    ApiKey,
    IssuedToken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    Embedded,
    Postgres,
}

/// An admin credential of `org` of the given kind.
async fn credential(server: &TestServer, org: &str, kind: Kind) -> String {
    let jwt = server.token(org, Role::Admin);
    if let Kind::Jwt = kind {
        return jwt;
    }
    let (_, body) = server
        .graphql(
            &jwt,
            "mutation { createApiKey(name: \"iso\", role: ADMIN) { key } }",
            json!({}),
        )
        .await;
    let key = body["data"]["createApiKey"]["key"]
        .as_str()
        .unwrap_or_else(|| panic!("createApiKey: {body}"))
        .to_owned();
    if let Kind::ApiKey = kind {
        return key;
    }
    let resp = server
        .http()
        .post(server.url("/auth/token"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("POST /auth/token");
    let pair: serde_json::Value = resp.json().await.expect("JSON");
    pair["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("/auth/token: {pair}"))
        .to_owned()
}

/// Two orgs, one owned by each cell, each with its own events.
async fn tenants(kind: Kind, store: Store) -> Tenants {
    let pg = (store == Store::Postgres).then(TestPostgres::start);
    let mut builder = TestServer::builder();
    if let Some(pg) = &pg {
        builder = builder.postgres(&pg.database("honeycell"));
    }
    let server = builder.start().await;
    let a = org_owned_by("iso-a", 0, 2);
    let b = org_owned_by("iso-b", 1, 2);
    let token_a = credential(&server, &a, kind).await;
    let token_b = credential(&server, &b, kind).await;
    let ids_a: BTreeSet<String> = server.ingest_n(&token_a, 40, 0).await.into_iter().collect();
    let ids_b: BTreeSet<String> = server.ingest_n(&token_b, 60, 1).await.into_iter().collect();
    assert!(ids_a.is_disjoint(&ids_b));
    Tenants {
        server,
        _pg: pg,
        a,
        b,
        token_a,
        token_b,
        ids_a,
        ids_b,
    }
}

fn only_a(t: &Tenants, rows: &[Row], what: &str) {
    let ids: BTreeSet<String> = rows.iter().map(|r| r.event_id.clone()).collect();
    assert!(ids.is_disjoint(&t.ids_b), "{what}: A sees B's events");
    assert!(
        rows.iter().all(|r| r.org_id == t.a),
        "{what}: a row of another org"
    );
    assert_eq!(ids, t.ids_a, "{what}: A sees exactly its own events");
}

async fn http_and_graphql_only_show_the_callers_org(kind: Kind, store: Store) {
    let t = tenants(kind, store).await;
    let rows: Vec<Row> = t
        .server
        .all_events_http(&t.token_a, "", 1000)
        .await
        .iter()
        .map(Row::from_http)
        .collect();
    only_a(&t, &rows, "HTTP");
    let rows: Vec<Row> = t
        .server
        .all_events_graphql(&t.token_a, json!({}), 100)
        .await
        .iter()
        .map(Row::from_graphql)
        .collect();
    only_a(&t, &rows, "GraphQL");
    let rows = Row::from_batches(&t.server.all_events_arrow(&t.token_a, "", 1000).await);
    only_a(&t, &rows, "Arrow IPC");

    // org_id is no query parameter: the request is refused, not widened.
    let (status, body) = t
        .server
        .get_events(&t.token_a, &format!("org_id={}", t.b))
        .await;
    assert_eq!(status, 400, "{body}");

    // B's cursor used by A pages A's own events only.
    let (_, page) = t.server.get_events(&t.token_b, "limit=5").await;
    let cursor = page["next_cursor"]
        .as_str()
        .expect("B has a next page")
        .to_owned();
    let (status, body) = t
        .server
        .get_events(&t.token_a, &format!("cursor={cursor}&limit=1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    let rows: Vec<Row> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(Row::from_http)
        .collect();
    assert!(
        rows.iter()
            .all(|r| r.org_id == t.a && t.ids_a.contains(&r.event_id))
    );

    // eventCounts sums to A's own count.
    let (_, body) = t
        .server
        .graphql(
            &t.token_a,
            "{ eventCounts(groupBy: ENTITY_TYPE, bucket: DAY) { key bucketStart count } }",
            json!({}),
        )
        .await;
    let total: u64 = body["data"]["eventCounts"]
        .as_array()
        .expect("counts")
        .iter()
        .map(|c| c["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(total, t.ids_a.len() as u64);
}

async fn flight_tickets_cannot_cross_orgs(kind: Kind, store: Store) {
    let t = tenants(kind, store).await;
    // A ticket obtained by B, used with A's token, returns A's data only.
    let mut fb = t.server.flight(&t.token_b).await;
    let info = fb
        .get_flight_info(FlightDescriptor::new_path(vec!["events".into()]))
        .await
        .expect("B's GetFlightInfo");
    let b_ticket = info.endpoint[0].ticket.clone().expect("ticket");
    for port in [
        t.server.ports().flight,
        t.server.cell_port(0),
        t.server.cell_port(1),
    ] {
        let mut fa = t.server.flight_at(port, Some(&t.token_a)).await;
        let batches = do_get_all(&mut fa, b_ticket.clone())
            .await
            .expect("A's DoGet of B's ticket");
        only_a(
            &t,
            &Row::from_batches(&batches),
            &format!("DoGet of B's ticket on port {port}"),
        );
    }

    // A hand-made ticket naming B's org: refused, or A's data only.
    for ticket in [
        json!({"org_id": t.b}),
        json!({"org_id": t.b, "entity_type": "order"}),
        json!({"org": t.b}),
    ] {
        let mut fa = t
            .server
            .flight_at(t.server.cell_port(1), Some(&t.token_a))
            .await;
        match do_get_all(&mut fa, Ticket::new(ticket.to_string())).await {
            Err(status) => assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{ticket}: {status:?}"
            ),
            Ok(batches) => {
                let rows = Row::from_batches(&batches);
                assert!(
                    rows.iter().all(|r| r.org_id == t.a),
                    "{ticket}: returned another org's rows"
                );
            }
        }
        // The same as a GetFlightInfo command.
        let mut fa = t.server.flight(&t.token_a).await;
        if let Ok(info) = fa
            .get_flight_info(FlightDescriptor::new_cmd(ticket.to_string()))
            .await
        {
            let port = location_port(&info.endpoint[0].location[0].uri);
            assert_eq!(port, t.server.cell_port(0), "A's location is A's owner");
            let mut at = t.server.flight_at(port, Some(&t.token_a)).await;
            let ticket = info.endpoint[0].ticket.clone().expect("ticket");
            if let Ok(batches) = do_get_all(&mut at, ticket).await {
                assert!(Row::from_batches(&batches).iter().all(|r| r.org_id == t.a));
            }
        }
    }

    // A's stats count A's events only.
    let mut fa = t.server.flight(&t.token_a).await;
    let stats = action_json(&mut fa, "stats").await;
    assert_eq!(stats["events"], t.ids_a.len() as u64, "{stats}");
    let who = action_json(&mut fa, "whoami").await;
    assert_eq!(who["org"], t.a.as_str());
}

async fn flight_sql_sees_only_the_callers_events(kind: Kind, store: Store) {
    let t = tenants(kind, store).await;
    let rows = Row::from_batches(
        &t.server
            .sql(&t.token_a, "SELECT * FROM events")
            .await
            .expect("select"),
    );
    only_a(&t, &rows, "SQL SELECT *");
    let q = format!("SELECT * FROM events WHERE org_id = '{}'", t.b);
    let rows = Row::from_batches(
        &t.server
            .sql(&t.token_a, &q)
            .await
            .expect("select where org_id = B"),
    );
    assert!(rows.is_empty(), "{q} returned {} rows", rows.len());
    let q = "SELECT COUNT(DISTINCT org_id) AS n FROM events";
    let batches = t.server.sql(&t.token_a, q).await.expect(q);
    let n = arrow::compute::cast(batches[0].column(0), &arrow::datatypes::DataType::Int64)
        .expect("i64");
    let n = n
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .expect("i64");
    assert_eq!(n.value(0), 1);

    // Anything beyond SELECT on `events` is refused.
    for sql in [
        "SELECT * FROM information_schema.tables".to_owned(),
        "SELECT * FROM information_schema.columns".to_owned(),
        "SHOW TABLES".to_owned(),
        format!("SELECT * FROM \"{}\"", t.b),
        format!("SELECT * FROM {}.events", t.b.replace('-', "_")),
        "SELECT * FROM events_b".to_owned(),
        "CREATE TABLE stolen AS SELECT * FROM events".to_owned(),
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'".to_owned(),
        "INSERT INTO events SELECT * FROM events".to_owned(),
        "COPY events TO '/tmp/honeycell-stolen.csv'".to_owned(),
        "DROP TABLE events".to_owned(),
        "SET datafusion.execution.target_partitions = 4".to_owned(),
    ] {
        let status = t
            .server
            .sql_status(&t.token_a, &sql)
            .await
            .expect_err(&format!("{sql} must be refused"));
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{sql}: {status:?}"
        );
    }
    assert!(!std::path::Path::new("/tmp/honeycell-stolen.csv").exists());
    // B still has all its events.
    assert_eq!(t.server.count_http(&t.token_b).await, t.ids_b.len());
}

async fn doput_with_another_orgs_id_is_refused(kind: Kind, store: Store) {
    let t = tenants(kind, store).await;
    let batch = |org: &str| {
        let cols: Vec<(&str, ArrayRef)> = vec![
            (
                "org_id",
                Arc::new(StringArray::from(vec![t.a.as_str(), org])),
            ),
            (
                "event_type",
                Arc::new(StringArray::from(vec!["INSERT", "INSERT"])),
            ),
            (
                "entity_type",
                Arc::new(StringArray::from(vec!["order", "order"])),
            ),
            ("entity_id", Arc::new(StringArray::from(vec!["x", "y"]))),
        ];
        let schema = Schema::new(
            cols.iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect())
            .expect("batch")
    };
    for port in [
        t.server.ports().flight,
        t.server.cell_port(0),
        t.server.cell_port(1),
    ] {
        let mut fa = t.server.flight_at(port, Some(&t.token_a)).await;
        let status = do_put_all(&mut fa, vec![batch(&t.b)])
            .await
            .expect_err("org_id of B");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("org_id"), "{}", status.message());
    }
    assert_eq!(t.server.count_http(&t.token_a).await, t.ids_a.len());
    assert_eq!(t.server.count_http(&t.token_b).await, t.ids_b.len());
    // Over HTTP, org_id in the body is refused too.
    let resp = t
        .server
        .post_events(
            &t.token_a,
            &json!([{"org_id": t.b, "event_type": "INSERT", "entity_type": "o", "entity_id": "1"}]),
        )
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(t.server.count_http(&t.token_b).await, t.ids_b.len());
    // The org's own id is accepted and stored under the caller's org.
    let mut fa = t.server.flight(&t.token_a).await;
    do_put_all(&mut fa, vec![batch(&t.a)])
        .await
        .expect("own org_id");
    assert_eq!(t.server.count_http(&t.token_a).await, t.ids_a.len() + 2);
    assert_eq!(t.server.count_http(&t.token_b).await, t.ids_b.len());
}

/// Role::Viewer is "read-only access to events and aggregates"
/// (auth/src/role.rs): a viewer token must not write through any protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_tokens_cannot_write() {
    let server = TestServer::new().await;
    let org = "rbac-org";
    let operator = server.token(org, Role::Operator);
    let viewer = server.token(org, Role::Viewer);
    server.ingest_n(&operator, 3, 0).await;
    let mut problems = Vec::new();

    let resp = server
        .post_events(&viewer, &serde_json::Value::Array(gen_events(2, 1)))
        .await;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("JSON");
    if status != 403 || body["error"]["code"] != "forbidden" {
        problems.push(format!("POST /v1/events as viewer: {status} {body}"));
    }
    let (status, body) = server
        .graphql(
            &viewer,
            "mutation { ingestEvents(events: [{eventType: INSERT, entityType: \"o\", entityId: \"1\"}]) { accepted } }",
            json!({}),
        )
        .await;
    if body["errors"][0]["extensions"]["code"] != "forbidden" {
        problems.push(format!("GraphQL ingestEvents as viewer: {status} {body}"));
    }
    let batch = one_event_batch("x");
    let mut flight = server.flight(&viewer).await;
    match do_put_all(&mut flight, vec![batch]).await {
        Err(s) if s.code() == tonic::Code::PermissionDenied => {}
        other => problems.push(format!("DoPut as viewer: {other:?}")),
    }
    let stored = server.count_http(&viewer).await;
    if stored != 3 {
        problems.push(format!(
            "a viewer's writes were stored: {stored} events instead of 3"
        ));
    }
    // Reads stay allowed.
    let (status, _) = server.get_events(&viewer, "").await;
    assert_eq!(status, 200);
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Every isolation check above, with every kind of credential, on both
/// control-plane stores.
macro_rules! with_every_credential {
    ($($check:ident),* $(,)?) => {
        with_every_credential!(@store embedded, Embedded, $($check),*);
        with_every_credential!(@store postgres, Postgres, $($check),*);
    };
    (@store $store:ident, $variant:ident, $($check:ident),*) => {
        mod $store {
            mod jwt {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() { super::super::$check(super::super::Kind::Jwt, super::super::Store::$variant).await }
                )*
            }
            mod api_key {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() { super::super::$check(super::super::Kind::ApiKey, super::super::Store::$variant).await }
                )*
            }
            mod issued_token {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() { super::super::$check(super::super::Kind::IssuedToken, super::super::Store::$variant).await }
                )*
            }
        }
    };
}

with_every_credential!(
    http_and_graphql_only_show_the_callers_org,
    flight_tickets_cannot_cross_orgs,
    flight_sql_sees_only_the_callers_events,
    doput_with_another_orgs_id_is_refused,
);
