//! The same events through every protocol: HTTP JSON, GraphQL, Flight DoGet,
//! Flight SQL and Arrow IPC over HTTP; filters and counts agree; DoPut
//! ingest shows up everywhere and a bad DoPut batch stores nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::DataType;
use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

/// Ingests three generated batches (and a GraphQL mutation) and returns the
/// sent events by their acknowledged id.
async fn seed(server: &TestServer, token: &str) -> BTreeMap<String, Value> {
    let mut sent = BTreeMap::new();
    for seed in 0..3 {
        let events = gen_events(120, seed);
        let ids = server.ingest(token, &events).await;
        for (id, e) in ids.into_iter().zip(events) {
            assert!(
                sent.insert(id, e).is_none(),
                "duplicate event id acknowledged"
            );
        }
    }
    sent
}

fn ids<'a>(rows: impl IntoIterator<Item = &'a Row>) -> BTreeSet<String> {
    rows.into_iter().map(|r| r.event_id.clone()).collect()
}

/// What the server must have stored for a sent event.
fn check_against_sent(row: &Row, sent: &Value, org: &str) {
    assert_eq!(row.org_id, org);
    assert_eq!(row.event_type, sent["event_type"]);
    assert_eq!(row.entity_type, sent["entity_type"]);
    assert_eq!(row.entity_id, sent["entity_id"]);
    let at = match &sent["occurred_at"] {
        Value::Number(n) => n.as_i64().expect("µs"),
        Value::String(s) => parse_rfc3339_us(s),
        other => panic!("occurred_at {other}"),
    };
    assert_eq!(row.occurred_at_us, at, "occurred_at of {}", row.event_id);
    assert_eq!(
        row.data.as_ref(),
        sent.get("data"),
        "data of {}",
        row.event_id
    );
    assert_eq!(
        row.changes.as_ref(),
        sent.get("changes"),
        "changes of {}",
        row.event_id
    );
    assert_eq!(
        row.user_id.as_deref(),
        sent.get("user_id").and_then(Value::as_str)
    );
    assert_eq!(
        row.trace_id.as_deref(),
        sent.get("trace_id").and_then(Value::as_str)
    );
    if let Some(id) = sent.get("event_id") {
        assert_eq!(
            row.event_id,
            id.as_str().expect("id"),
            "a client event_id is kept"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_rows_through_every_protocol() {
    let server = TestServer::new().await;
    let org = "proto-org";
    let token = server.token(org, Role::Operator);
    let sent = seed(&server, &token).await;
    assert_eq!(sent.len(), 360);

    // HTTP JSON, paging with a limit that does not divide the total.
    let http: Vec<Row> = server
        .all_events_http(&token, "", 37)
        .await
        .iter()
        .map(Row::from_http)
        .collect();
    // GraphQL `events`, paging with first/after.
    let gql: Vec<Row> = server
        .all_events_graphql(&token, json!({}), 50)
        .await
        .iter()
        .map(Row::from_graphql)
        .collect();
    // Flight: GetFlightInfo -> endpoint location -> DoGet.
    let (location, batches) = server.flight_query(&token, None).await;
    let owner = owner_of(org, 2);
    assert_eq!(location, server.cell_location(owner));
    let flight = Row::from_batches(&batches);
    // Flight SQL.
    let sql_batches = server
        .sql(&token, "SELECT * FROM events")
        .await
        .expect("SELECT * FROM events");
    let sql = Row::from_batches(&sql_batches);
    // Arrow IPC over HTTP, paging with x-next-cursor.
    let arrow = Row::from_batches(&server.all_events_arrow(&token, "", 100).await);

    let expected: BTreeSet<String> = sent.keys().cloned().collect();
    for (name, rows) in [
        ("http", &http),
        ("graphql", &gql),
        ("doget", &flight),
        ("sql", &sql),
        ("arrow", &arrow),
    ] {
        assert_eq!(rows.len(), sent.len(), "{name}: row count");
        assert_eq!(ids(rows.iter()), expected, "{name}: event ids");
    }
    let reference = by_id(http.clone());
    for row in reference.values() {
        check_against_sent(row, &sent[&row.event_id], org);
    }
    let sum = checksum(&reference);
    for (name, rows) in [
        ("graphql", &gql),
        ("doget", &flight),
        ("sql", &sql),
        ("arrow", &arrow),
    ] {
        let m = by_id(rows.iter().cloned());
        assert_eq!(
            checksum(&m),
            sum,
            "{name}: checksum of all fields differs from HTTP"
        );
        assert_eq!(m, reference, "{name}: rows differ from HTTP");
    }
    // The native paths all return events in append order.
    let order = |rows: &[Row]| rows.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>();
    assert_eq!(order(&gql), order(&http), "GraphQL order");
    assert_eq!(order(&flight), order(&http), "DoGet order");
    assert_eq!(order(&arrow), order(&http), "Arrow IPC order");
}

/// The event ids of `sent` that `keep` selects.
fn expect_ids(
    sent: &BTreeMap<String, Value>,
    keep: impl Fn(&Value, i64) -> bool,
) -> BTreeSet<String> {
    sent.iter()
        .filter(|(_, e)| {
            let at = match &e["occurred_at"] {
                Value::Number(n) => n.as_i64().expect("µs"),
                Value::String(s) => parse_rfc3339_us(s),
                other => panic!("{other}"),
            };
            keep(e, at)
        })
        .map(|(id, _)| id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_agree_across_protocols() {
    let server = TestServer::new().await;
    let token = server.token("filter-org", Role::Viewer);
    let writer = server.token("filter-org", Role::Operator);
    let sent = seed(&server, &writer).await;

    let since = BASE_US + 3_600_000_000; // one hour in: cuts seed 0 in the middle
    let until = BASE_US + 2 * 3_600_000_000 + 1_800_000_000;
    struct Case {
        http: String,
        gql: Value,
        ticket: Value,
        sql: String,
        expected: BTreeSet<String>,
    }
    let cases = vec![
        Case {
            http: "entity_type=order".into(),
            gql: json!({"entityType": "order"}),
            ticket: json!({"entity_type": "order"}),
            sql: "entity_type = 'order'".into(),
            expected: expect_ids(&sent, |e, _| e["entity_type"] == "order"),
        },
        Case {
            http: "event_type=UPDATE".into(),
            gql: json!({"eventType": "UPDATE"}),
            ticket: json!({"event_type": "UPDATE"}),
            sql: "event_type = 'UPDATE'".into(),
            expected: expect_ids(&sent, |e, _| e["event_type"] == "UPDATE"),
        },
        Case {
            http: format!("since={}&until={}", rfc3339_us(since), rfc3339_us(until)),
            gql: json!({"since": rfc3339_us(since), "until": rfc3339_us(until)}),
            ticket: json!({"since": rfc3339_us(since), "until": rfc3339_us(until)}),
            sql: format!(
                "CAST(occurred_at AS BIGINT) >= {since} AND CAST(occurred_at AS BIGINT) < {until}"
            ),
            expected: expect_ids(&sent, |_, at| at >= since && at < until),
        },
        Case {
            // since as integer microseconds, combined with two other filters.
            http: format!("entity_type=user&event_type=INSERT&since={since}"),
            gql: json!({"entityType": "user", "eventType": "INSERT", "since": since.to_string()}),
            ticket: json!({"entity_type": "user", "event_type": "INSERT", "since": since.to_string()}),
            sql: format!(
                "entity_type = 'user' AND event_type = 'INSERT' AND CAST(occurred_at AS BIGINT) >= {since}"
            ),
            expected: expect_ids(&sent, |e, at| {
                e["entity_type"] == "user" && e["event_type"] == "INSERT" && at >= since
            }),
        },
        Case {
            http: "entity_id=order-3".into(),
            gql: json!({"entityId": "order-3"}),
            ticket: json!({"entity_id": "order-3"}),
            sql: "entity_id = 'order-3'".into(),
            expected: expect_ids(&sent, |e, _| e["entity_id"] == "order-3"),
        },
    ];
    for case in cases {
        assert!(
            !case.expected.is_empty(),
            "{}: the case selects something",
            case.http
        );
        assert!(
            case.expected.len() < sent.len(),
            "{}: the case filters something out",
            case.http
        );
        let http = server.all_events_http(&token, &case.http, 25).await;
        let http: Vec<Row> = http.iter().map(Row::from_http).collect();
        assert_eq!(ids(&http), case.expected, "HTTP {}", case.http);
        let gql: Vec<Row> = server
            .all_events_graphql(&token, case.gql.clone(), 30)
            .await
            .iter()
            .map(Row::from_graphql)
            .collect();
        assert_eq!(ids(&gql), case.expected, "GraphQL {}", case.gql);
        let (_, batches) = server.flight_query(&token, Some(case.ticket.clone())).await;
        assert_eq!(
            ids(&Row::from_batches(&batches)),
            case.expected,
            "DoGet {}",
            case.ticket
        );
        let q = format!("SELECT * FROM events WHERE {}", case.sql);
        let rows = Row::from_batches(
            &server
                .sql(&token, &q)
                .await
                .unwrap_or_else(|e| panic!("{q}: {e}")),
        );
        assert_eq!(ids(&rows), case.expected, "SQL {q}");
        let arrow = Row::from_batches(&server.all_events_arrow(&token, &case.http, 40).await);
        assert_eq!(ids(&arrow), case.expected, "Arrow IPC {}", case.http);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_counts_match_sql_group_by() {
    // Segments of 100 rows, kept apart: most events are counted from the
    // sealed segments' summaries, the rest from the unsealed tail.
    let server = TestServer::builder()
        .env("HONEYCELL_STORAGE__SEGMENT_MAX_ROWS", 100)
        .env("HONEYCELL_STORAGE__COMPACT_BELOW_ROWS", 1)
        .start()
        .await;
    let token = server.token("count-org", Role::Operator);
    let sent = seed(&server, &token).await;

    const Q: &str = "query($g: GroupByGql!, $b: TimeBucket!, $f: EventFilterInput) {
        eventCounts(groupBy: $g, bucket: $b, filter: $f) { key bucketStart count }
    }";
    let cases = [
        (
            "ENTITY_TYPE",
            "HOUR",
            "entity_type",
            3_600_000_000i64,
            json!(null),
            "",
        ),
        (
            "EVENT_TYPE",
            "DAY",
            "event_type",
            86_400_000_000,
            json!(null),
            "",
        ),
        (
            "EVENT_TYPE",
            "MINUTE",
            "event_type",
            60_000_000,
            json!({"entityType": "invoice"}),
            "WHERE entity_type = 'invoice'",
        ),
    ];
    for (group, bucket, column, width, filter, where_) in cases {
        let (status, body) = server
            .graphql(&token, Q, json!({"g": group, "b": bucket, "f": filter}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("errors").is_none(), "{body}");
        let gql: BTreeMap<(String, i64), u64> = body["data"]["eventCounts"]
            .as_array()
            .expect("eventCounts list")
            .iter()
            .map(|c| {
                (
                    (
                        c["key"].as_str().expect("key").to_owned(),
                        parse_rfc3339_us(c["bucketStart"].as_str().expect("bucketStart")),
                    ),
                    c["count"].as_u64().expect("count"),
                )
            })
            .collect();
        let q = format!(
            "SELECT {column} AS k, (CAST(occurred_at AS BIGINT) / {width}) * {width} AS b, COUNT(*) AS n \
             FROM events {where_} GROUP BY {column}, (CAST(occurred_at AS BIGINT) / {width}) * {width}"
        );
        let batches = server
            .sql(&token, &q)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        let mut sql = BTreeMap::new();
        for b in &batches {
            let k = arrow::compute::cast(b.column(0), &DataType::Utf8).expect("utf8");
            let k = k.as_any().downcast_ref::<StringArray>().expect("strings");
            let bs = arrow::compute::cast(b.column(1), &DataType::Int64).expect("i64");
            let bs = bs.as_any().downcast_ref::<Int64Array>().expect("i64");
            let n = arrow::compute::cast(b.column(2), &DataType::Int64).expect("i64");
            let n = n.as_any().downcast_ref::<Int64Array>().expect("i64");
            for i in 0..b.num_rows() {
                sql.insert((k.value(i).to_owned(), bs.value(i)), n.value(i) as u64);
            }
        }
        // And from what was sent.
        let mut mine: BTreeMap<(String, i64), u64> = BTreeMap::new();
        for e in sent.values() {
            if where_.contains("invoice") && e["entity_type"] != "invoice" {
                continue;
            }
            let at = match &e["occurred_at"] {
                Value::Number(n) => n.as_i64().expect("µs"),
                Value::String(s) => parse_rfc3339_us(s),
                other => panic!("{other}"),
            };
            let key = e[column].as_str().expect("key").to_owned();
            *mine.entry((key, at.div_euclid(width) * width)).or_default() += 1;
        }
        assert!(gql.len() > 1, "{group}/{bucket}: several groups");
        assert_eq!(gql, sql, "{group}/{bucket}: eventCounts vs SQL GROUP BY");
        assert_eq!(
            gql, mine,
            "{group}/{bucket}: eventCounts vs the sent events"
        );
        let total: u64 = gql.values().sum();
        let expected_total = if where_.is_empty() {
            sent.len() as u64
        } else {
            mine.values().sum()
        };
        assert_eq!(total, expected_total);
    }
}

/// The `events` edges are resolved from the Arrow columns by our own code
/// (api/src/graphql_edges.rs), not by async-graphql's derived resolvers: it
/// must still honour aliases, fragments, inline fragments, `__typename`,
/// `@include`/`@skip`, repeated selections and per-edge cursors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_event_selections_follow_the_spec() {
    let server = TestServer::new().await;
    let token = server.token("gql-sel", Role::Operator);
    let ids = server.ingest_n(&token, 3, 7).await;
    const Q: &str = r#"
        query($withData: Boolean!, $after: String) {
          events(first: 2, after: $after) {
            __typename
            edges {
              kind: __typename
              cursor
              node { id: eventId ...Where __typename }
              node { eventType data @include(if: $withData) traceId @skip(if: true) }
              ... on EventEdge { again: cursor }
            }
            pageInfo { hasNextPage endCursor }
          }
        }
        fragment Where on Event { orgId occurredAt }
    "#;
    let (status, body) = server
        .graphql(&token, Q, json!({"withData": false, "after": null}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let conn = &body["data"]["events"];
    assert_eq!(conn["__typename"], "EventConnection");
    let edges = conn["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 2);
    for (edge, id) in edges.iter().zip(&ids) {
        // (serde_json's map sorts keys: sets are compared, not order.)
        let keys: BTreeSet<&str> = edge
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["kind", "cursor", "node", "again"]),
            "{edge}"
        );
        assert_eq!(edge["kind"], "EventEdge");
        assert_eq!(edge["cursor"], edge["again"]);
        let node = edge["node"].as_object().unwrap();
        let keys: BTreeSet<&str> = node.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["id", "orgId", "occurredAt", "__typename", "eventType"]),
            "both node selections merged, skipped fields absent: {edge}"
        );
        assert_eq!(node["id"], id.as_str());
        assert_eq!(node["orgId"], "gql-sel");
        assert_eq!(node["__typename"], "Event");
    }
    assert_eq!(conn["pageInfo"]["hasNextPage"], true);
    assert_eq!(conn["pageInfo"]["endCursor"], edges[1]["cursor"]);

    // The second page, from the end cursor, with `data` included.
    let (_, body) = server
        .graphql(
            &token,
            Q,
            json!({"withData": true, "after": conn["pageInfo"]["endCursor"]}),
        )
        .await;
    let conn = &body["data"]["events"];
    let edges = conn["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 1, "{body}");
    assert_eq!(edges[0]["node"]["id"], ids[2].as_str());
    assert!(edges[0]["node"].get("data").is_some(), "{body}");
    assert_eq!(conn["pageInfo"]["hasNextPage"], false);

    // Unknown fields are still refused by validation, with the field named.
    let (_, body) = server
        .graphql(
            &token,
            "{ events { edges { node { secret } } } }",
            json!({}),
        )
        .await;
    let msg = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("secret"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_mutation_and_prepared_statement() {
    let server = TestServer::new().await;
    let token = server.token("gql-org", Role::Operator);
    const M: &str =
        "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { accepted eventIds } }";
    let id = uuid::Uuid::new_v4().to_string();
    let events = json!([
        {"eventId": id, "eventType": "INSERT", "entityType": "order", "entityId": "o-1",
         "occurredAt": "2026-03-01T10:00:00.000001Z", "data": {"total": 12.5}, "userId": "u-1"},
        {"eventType": "UPDATE", "entityType": "order", "entityId": "o-1",
         "changes": {"total": {"old": 12.5, "new": 13}}, "traceId": "t-1"},
    ]);
    let (status, body) = server.graphql(&token, M, json!({"e": events})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    assert_eq!(body["data"]["ingestEvents"]["accepted"], 2);
    let ids = string_list(&body["data"]["ingestEvents"]["eventIds"]);
    assert_eq!(ids[0], id);

    let http = server.all_events_http(&token, "", 10).await;
    let rows: Vec<Row> = http.iter().map(Row::from_http).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].event_id, id);
    assert_eq!(rows[0].occurred_at_us, BASE_US + 1);
    assert_eq!(rows[0].data, Some(json!({"total": 12.5})));
    assert_eq!(rows[0].user_id.as_deref(), Some("u-1"));
    assert_eq!(rows[1].event_id, ids[1]);
    assert_eq!(
        rows[1].changes,
        Some(json!({"total": {"old": 12.5, "new": 13}}))
    );
    assert_eq!(rows[1].trace_id.as_deref(), Some("t-1"));

    // A prepared statement over the same table.
    let mut sql = server.flight_sql(&token).await;
    let mut stmt = sql
        .prepare(
            "SELECT event_type, COUNT(*) AS n FROM events GROUP BY event_type ORDER BY event_type"
                .into(),
            None,
        )
        .await
        .expect("prepare");
    let schema = stmt.dataset_schema().expect("dataset schema").clone();
    assert_eq!(schema.field(0).name(), "event_type");
    let info = stmt.execute().await.expect("execute prepared");
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let batches: Vec<RecordBatch> =
        futures::TryStreamExt::try_collect(sql.do_get(ticket).await.expect("do_get"))
            .await
            .expect("batches");
    let mut got = Vec::new();
    for b in &batches {
        let t = arrow::compute::cast(b.column(0), &DataType::Utf8).expect("utf8");
        let t = t.as_any().downcast_ref::<StringArray>().expect("strings");
        let n = b
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("count is Int64");
        for i in 0..b.num_rows() {
            got.push((t.value(i).to_owned(), n.value(i)));
        }
    }
    assert_eq!(
        got,
        vec![("INSERT".to_owned(), 1), ("UPDATE".to_owned(), 1)]
    );
    stmt.close().await.expect("close prepared statement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doget_continues_after_an_http_cursor() {
    let server = TestServer::new().await;
    let token = server.token("cursor-org", Role::Operator);
    let mut ids = server.ingest_n(&token, 50, 0).await;
    ids.extend(server.ingest_n(&token, 80, 1).await);
    // Without a limit, a page holds http_limits.default_page_size (100) events.
    let (status, body) = server.get_events(&token, "").await;
    assert_eq!(status, 200);
    assert_eq!(body["events"].as_array().expect("events").len(), 100);
    assert!(body["next_cursor"].is_string());
    let (status, body) = server.get_events(&token, "limit=20").await;
    assert_eq!(status, 200);
    let cursor = body["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let (_, batches) = server
        .flight_query(&token, Some(json!({"after": cursor})))
        .await;
    let rows = Row::from_batches(&batches);
    let got: Vec<String> = rows.into_iter().map(|r| r.event_id).collect();
    assert_eq!(got, ids[20..].to_vec());
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doput_ingest_shows_up_over_http() {
    let server = TestServer::new().await;
    let org = "put-org";
    let token = server.token(org, Role::Operator);
    let mut flight = server.flight(&token).await;

    // 1. Required columns only: ids and times are assigned.
    let before = now_us();
    let minimal = batch(vec![
        ("event_type", utf8(&["INSERT", "DELETE", "CUSTOM"])),
        ("entity_type", utf8(&["order", "order", "user"])),
        ("entity_id", utf8(&["o-1", "o-2", "u-1"])),
    ]);
    let results = do_put_all(&mut flight, vec![minimal])
        .await
        .expect("DoPut minimal");
    let after = now_us();
    assert_eq!(results.len(), 1);
    let meta = put_metadata(&results[0]);
    assert_eq!(meta["accepted"], 3, "{meta}");
    assert_eq!(meta["first_offset"], 0, "{meta}");

    // 2. Every column, two batches in one stream; occurred_at as Timestamp µs UTC.
    let id1 = uuid::Uuid::new_v4().to_string();
    let id2 = uuid::Uuid::new_v4().to_string();
    let full = |ids: [&str; 2], at: [i64; 2]| {
        batch(vec![
            ("event_id", utf8(&ids)),
            ("org_id", utf8(&[org, org])),
            ("event_type", utf8(&["UPDATE", "INSERT"])),
            ("entity_type", utf8(&["order", "invoice"])),
            ("entity_id", utf8(&["o-1", "i-9"])),
            (
                "occurred_at",
                Arc::new(TimestampMicrosecondArray::from(at.to_vec()).with_timezone("UTC")),
            ),
            ("data", utf8(&[r#"{"a":1}"#, r#"[1,"x",null]"#])),
            (
                "changes",
                utf8(&[r#"{"status":{"old":"new","new":"paid"}}"#, "{}"]),
            ),
            ("user_id", utf8(&["u-1", "u-2"])),
            ("trace_id", utf8(&["t-1", "t-2"])),
        ])
    };
    let id3 = uuid::Uuid::new_v4().to_string();
    let id4 = uuid::Uuid::new_v4().to_string();
    let results = do_put_all(
        &mut flight,
        vec![
            full([&id1, &id2], [BASE_US, BASE_US + 5]),
            full([&id3, &id4], [BASE_US + 7, BASE_US + 9]),
        ],
    )
    .await
    .expect("DoPut full");
    assert_eq!(results.len(), 2, "one PutResult per batch");
    assert_eq!(put_metadata(&results[0])["accepted"], 2);
    assert_eq!(put_metadata(&results[0])["first_offset"], 3);
    assert_eq!(put_metadata(&results[1])["first_offset"], 5);

    // 3. occurred_at in milliseconds at +02:00, and as Int64 µs.
    let tz = batch(vec![
        ("event_type", utf8(&["CUSTOM"])),
        ("entity_type", utf8(&["clock"])),
        ("entity_id", utf8(&["tz"])),
        (
            "occurred_at",
            Arc::new(
                TimestampMillisecondArray::from(vec![BASE_US / 1000 + 42]).with_timezone("+02:00"),
            ),
        ),
    ]);
    do_put_all(&mut flight, vec![tz])
        .await
        .expect("DoPut with +02:00 ms");
    let int = batch(vec![
        ("event_type", utf8(&["CUSTOM"])),
        ("entity_type", utf8(&["clock"])),
        ("entity_id", utf8(&["int"])),
        (
            "occurred_at",
            Arc::new(Int64Array::from(vec![BASE_US + 123])),
        ),
    ]);
    do_put_all(&mut flight, vec![int])
        .await
        .expect("DoPut with Int64 µs");

    let http: Vec<Row> = server
        .all_events_http(&token, "", 100)
        .await
        .iter()
        .map(Row::from_http)
        .collect();
    assert_eq!(http.len(), 9);
    for r in &http[..3] {
        let id = uuid::Uuid::parse_str(&r.event_id).expect("a UUID");
        assert_eq!(id.get_version_num(), 7, "an assigned id is a UUIDv7");
        assert!(
            r.occurred_at_us >= before && r.occurred_at_us <= after,
            "occurred_at defaults to now: {} not in [{before}, {after}]",
            r.occurred_at_us
        );
        assert_eq!(r.org_id, org);
        assert_eq!(r.data, None);
    }
    assert_eq!(http[0].entity_id, "o-1");
    assert_eq!(http[2].event_type, "CUSTOM");
    assert_eq!(http[3].event_id, id1);
    assert_eq!(http[3].occurred_at_us, BASE_US);
    assert_eq!(http[3].data, Some(json!({"a": 1})));
    assert_eq!(
        http[3].changes,
        Some(json!({"status": {"old": "new", "new": "paid"}}))
    );
    assert_eq!(http[3].user_id.as_deref(), Some("u-1"));
    assert_eq!(http[4].event_id, id2);
    assert_eq!(http[4].data, Some(json!([1, "x", null])));
    assert_eq!(http[4].trace_id.as_deref(), Some("t-2"));
    assert_eq!(http[6].event_id, id4);
    assert_eq!(
        http[7].occurred_at_us,
        BASE_US + 42_000,
        "+02:00 ms timestamp keeps its instant"
    );
    assert_eq!(http[8].occurred_at_us, BASE_US + 123);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doput_schema_mismatch_is_invalid_argument_and_stores_nothing() {
    let server = TestServer::new().await;
    let token = server.token("badput-org", Role::Operator);
    server.ingest_n(&token, 5, 0).await;
    let base = || {
        vec![
            ("event_type", utf8(&["INSERT", "UPDATE"])),
            ("entity_type", utf8(&["order", "order"])),
            ("entity_id", utf8(&["o-1", "o-2"])),
        ]
    };
    let mut cases: Vec<(&str, RecordBatch)> = Vec::new();
    // Missing entity_id.
    cases.push((
        "entity_id",
        batch(
            base()
                .into_iter()
                .filter(|(n, _)| *n != "entity_id")
                .collect(),
        ),
    ));
    // occurred_at of the wrong type.
    let mut c = base();
    c.push(("occurred_at", utf8(&["2026-03-01T10:00:00Z", "yesterday"])));
    cases.push(("occurred_at", batch(c)));
    // An unknown column.
    let mut c = base();
    c.push(("colour", utf8(&["red", "blue"])));
    cases.push(("colour", batch(c)));
    // entity_type of the wrong type.
    let c = vec![
        ("event_type", utf8(&["INSERT", "UPDATE"])),
        (
            "entity_type",
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
        ),
        ("entity_id", utf8(&["o-1", "o-2"])),
    ];
    cases.push(("entity_type", batch(c)));
    // A bad event_type value in the second row.
    let c = vec![
        ("event_type", utf8(&["INSERT", "CREATE"])),
        ("entity_type", utf8(&["order", "order"])),
        ("entity_id", utf8(&["o-1", "o-2"])),
    ];
    cases.push(("event_type", batch(c)));
    // data that is not JSON text.
    let mut c = base();
    c.push(("data", utf8(&["{}", "{not json"])));
    cases.push(("data", batch(c)));
    // A bad event_id.
    let mut c = base();
    c.push((
        "event_id",
        utf8(&[&uuid::Uuid::new_v4().to_string(), "nope"]),
    ));
    cases.push(("event_id", batch(c)));

    for (field, bad) in cases {
        let mut flight = server.flight(&token).await;
        let status = do_put_all(&mut flight, vec![bad])
            .await
            .expect_err(&format!("DoPut with a bad {field} must fail"));
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().contains(field),
            "{field}: the message names the field: {}",
            status.message()
        );
        assert_eq!(
            server.count_http(&token).await,
            5,
            "{field}: nothing of the bad batch is stored"
        );
    }

    // A good batch, then a bad one (a null entity_id) in the same stream:
    // the good one is acknowledged and stays, the bad one stores nothing.
    let good = batch(base());
    let bad = batch(vec![
        ("event_type", utf8(&["INSERT", "UPDATE"])),
        ("entity_type", utf8(&["order", "order"])),
        (
            "entity_id",
            Arc::new(StringArray::from(vec![Some("o-1"), None])) as ArrayRef,
        ),
    ]);
    let mut flight = server.flight(&token).await;
    let status = do_put_all(&mut flight, vec![good, bad])
        .await
        .expect_err("the second batch is bad");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("entity_id"),
        "{}",
        status.message()
    );
    assert_eq!(server.count_http(&token).await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doput_of_a_batch_larger_than_one_append() {
    let server = TestServer::new().await;
    let token = server.token("bulk-org", Role::Operator);
    // More rows than the largest single append (65 536): split, one PutResult.
    let n = 70_000;
    let ids: Vec<String> = (0..n).map(|i| format!("e-{i}")).collect();
    let big = batch(vec![
        (
            "event_type",
            Arc::new(StringArray::from(vec!["INSERT"; n])) as ArrayRef,
        ),
        ("entity_type", Arc::new(StringArray::from(vec!["bulk"; n]))),
        ("entity_id", Arc::new(StringArray::from(ids))),
    ]);
    let mut flight = server.flight(&token).await;
    // One message (the encoder would otherwise split it at 2 MiB), so the
    // server receives one batch and splits it into appends itself.
    let data = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_max_flight_data_size(32 * 1024 * 1024)
        .build(futures::stream::iter(vec![Ok(big)]));
    let results: Vec<arrow_flight::PutResult> =
        futures::TryStreamExt::try_collect(flight.do_put(data).await.expect("DoPut 70k rows"))
            .await
            .expect("DoPut 70k rows");
    assert_eq!(results.len(), 1, "one PutResult for one client batch");
    let meta = put_metadata(&results[0]);
    assert_eq!(meta["accepted"], n as u64, "{meta}");
    assert_eq!(meta["first_offset"], 0, "{meta}");
    let mut stats_client = server.flight(&token).await;
    let stats = action_json(&mut stats_client, "stats").await;
    assert_eq!(stats["events"], n as u64, "{stats}");
    let (_, batches) = server.flight_query(&token, None).await;
    let rows = Row::from_batches(&batches);
    assert_eq!(rows.len(), n);
    assert_eq!(rows[0].entity_id, "e-0");
    assert_eq!(rows[n - 1].entity_id, format!("e-{}", n - 1));
    assert_eq!(server.count_http(&token).await, n);
}

/// Events as the README ingests them — many small HTTP batches — read back
/// through Flight SQL in a few large batches, each exactly once; counts,
/// time ranges and type filters right; `count(*)` without a scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_many_small_http_batches_serves_few_large_batches() {
    let server = TestServer::new().await;
    let token = server.token("small-batches", Role::Operator);
    let mut sent: BTreeMap<String, Value> = BTreeMap::new();
    for seed in 0..200 {
        let events = gen_events(20, seed);
        for (id, e) in server.ingest(&token, &events).await.into_iter().zip(events) {
            assert!(sent.insert(id, e).is_none(), "duplicate event id");
        }
    }
    assert_eq!(sent.len(), 4_000);
    let at = |e: &Value| match &e["occurred_at"] {
        Value::Number(n) => n.as_i64().expect("µs"),
        Value::String(s) => parse_rfc3339_us(s),
        other => panic!("occurred_at {other}"),
    };

    let batches = server
        .sql(&token, "SELECT * FROM events")
        .await
        .expect("SELECT *");
    let rows = Row::from_batches(&batches);
    assert_eq!(rows.len(), 4_000, "every event once");
    assert_eq!(
        ids(rows.iter()),
        sent.keys().cloned().collect::<BTreeSet<_>>()
    );
    // 200 appends of 20 rows; read back in one coalesced batch (the Flight
    // encoder may split it at its message size). A table of the stored
    // chunks served ≈20 here.
    assert!(
        batches.len() <= 4,
        "{} batches: {:?}",
        batches.len(),
        batches
            .iter()
            .map(RecordBatch::num_rows)
            .collect::<Vec<_>>()
    );

    let count = |batches: &[RecordBatch]| {
        let c = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("a count");
        c.value(0)
    };
    let all = server
        .sql(&token, "SELECT count(*) FROM events")
        .await
        .expect("count");
    assert_eq!(count(&all), 4_000);

    // A time range: seeds 50 to 99 (an hour each, from BASE_US), half open.
    let (since, until) = (BASE_US + 50 * 3_600_000_000, BASE_US + 100 * 3_600_000_000);
    let q = format!(
        "SELECT event_id FROM events WHERE occurred_at >= '{}' AND occurred_at < '{}'",
        rfc3339_us(since),
        rfc3339_us(until)
    );
    let got = event_ids(&server.sql(&token, &q).await.expect("time range"));
    let want: BTreeSet<String> = sent
        .iter()
        .filter(|(_, e)| (since..until).contains(&at(e)))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want, "{q}");

    let got = event_ids(
        &server
            .sql(
                &token,
                "SELECT event_id FROM events WHERE entity_type = 'invoice'",
            )
            .await
            .expect("entity type"),
    );
    let want: BTreeSet<String> = sent
        .iter()
        .filter(|(_, e)| e["entity_type"] == "invoice")
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(got, want);

    // count(*) comes from the table's statistics: no scan in the plan.
    let plan = server
        .sql(&token, "EXPLAIN SELECT count(*) FROM events")
        .await
        .expect("EXPLAIN");
    let text = plan_text(&plan);
    assert!(text.contains("physical_plan"), "{text}");
    assert!(!text.contains("EventsScan"), "{text}");
    let plan = server
        .sql(
            &token,
            "EXPLAIN SELECT count(*) FROM events WHERE entity_type = 'user'",
        )
        .await
        .expect("EXPLAIN");
    assert!(
        plan_text(&plan).contains("EventsScan"),
        "{}",
        plan_text(&plan)
    );
}

/// The first column's strings: the ids a `SELECT event_id` returned.
fn event_ids(batches: &[RecordBatch]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for b in batches {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("event ids");
        for id in ids.iter().flatten() {
            assert!(out.insert(id.to_owned()), "{id} twice");
        }
    }
    out
}

/// The text of an EXPLAIN's rows.
fn plan_text(batches: &[RecordBatch]) -> String {
    let mut out = String::new();
    for b in batches {
        for c in b.columns() {
            let s = c
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("EXPLAIN's text columns");
            for v in s.iter().flatten() {
                out.push_str(v);
                out.push('\n');
            }
        }
    }
    out
}
