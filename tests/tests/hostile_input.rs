//! Hostile input, as an attacker holding an ordinary (often viewer) token
//! would send it, against the real binary: no request may crash the server,
//! hold a core or memory without bound, slip past a limit, or loop a client
//! forever. Every test also checks that the server still serves afterwards.
//! (Connection-level attacks are in `hostile_connections.rs`, credential
//! attacks in `hostile_credentials.rs`.)

use std::time::{Duration, Instant};

use arrow::array::AsArray as _;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightData, Ticket};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{StreamExt as _, TryStreamExt as _};
use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

/// The server answers and is the same process.
async fn still_serving(server: &TestServer, token: &str) {
    let resp = server
        .http()
        .get(server.url("/health"))
        .send()
        .await
        .expect("GET /health after the attack");
    assert_eq!(resp.status(), 200);
    let (status, _) = server.get_events(token, "limit=1").await;
    assert_eq!(status, 200, "GET /v1/events after the attack");
    let log = server.log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    assert!(
        !log.contains("overflowed its stack"),
        "stack overflow:\n{log}"
    );
}

fn code_of(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .or_else(|| body["error"]["code"].as_str())
        .unwrap_or("")
}

/// `POST /graphql` with a raw body, as (status, JSON body).
async fn graphql_raw(
    server: &TestServer,
    token: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let resp = server
        .http()
        .post(server.url("/graphql"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /graphql");
    json_answer("POST /graphql", resp).await
}

// ---- 1. Recursion: nothing nests deeper than the stack can hold ----

#[tokio::test]
async fn a_deeply_nested_graphql_literal_is_refused_not_a_crash() {
    let server = TestServer::new().await;
    let viewer = server.token("acme", Role::Viewer);
    for depth in [2_000, 100_000] {
        let query = format!(
            "{{ events(filter:{{entityType:{}{}}}) {{ edges {{ cursor }} }} }}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let (status, body) =
            graphql_raw(&server, &viewer, json!({ "query": query }).to_string()).await;
        assert_eq!(status, 400, "depth {depth}: {body}");
        assert_eq!(code_of(&body), "query_too_deep", "{body}");
        assert!(
            body.to_string().contains("graphql_max_nesting"),
            "names the setting: {body}"
        );
    }
    still_serving(&server, &viewer).await;
}

#[tokio::test]
async fn deeply_nested_json_variables_and_event_data_are_refused() {
    let server = TestServer::new().await;
    let admin = server.token("acme", Role::Admin);
    let deep = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
    // GraphQL variables.
    let body = format!(
        r#"{{"query":"query($f: EventFilterInput) {{ events(filter: $f) {{ edges {{ cursor }} }} }}","variables":{{"f":{deep}}}}}"#
    );
    let (status, body) = graphql_raw(&server, &admin, body).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code_of(&body), "invalid_json", "{body}");
    // Event data over HTTP, as an array and as NDJSON.
    let event =
        format!(r#"{{"event_type":"INSERT","entity_type":"t","entity_id":"1","data":{deep}}}"#);
    for (ct, body) in [
        ("application/json", format!("[{event}]")),
        ("application/x-ndjson", event.clone()),
    ] {
        let resp = server
            .http()
            .post(server.url("/v1/events"))
            .bearer_auth(&admin)
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .expect("POST /v1/events");
        assert_eq!(resp.status(), 400, "{ct}");
        let body: Value = resp.json().await.expect("JSON error");
        assert_eq!(body["error"]["code"], "invalid_json", "{body}");
        assert!(body.to_string().contains("recursion limit"), "{body}");
    }
    assert_eq!(server.count_http(&admin).await, 0, "nothing stored");
    still_serving(&server, &admin).await;
}

#[tokio::test]
async fn deeply_nested_sql_is_an_error_not_a_crash() {
    let server = TestServer::new().await;
    let viewer = server.token("acme", Role::Viewer);
    let parens = format!("SELECT {}1{}", "(".repeat(20_000), ")".repeat(20_000));
    let sums = format!("SELECT 1{}", "+1".repeat(20_000));
    for sql in [parens, sums] {
        let status = server
            .sql_status(&viewer, &sql)
            .await
            .expect_err("refused (too long or too deep)");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    }
    // Every chain past the operator budget is refused before parsing, and
    // one within it plans and runs.
    let sql = format!("SELECT 1{}", "+1".repeat(499));
    let batches = server.sql(&viewer, &sql).await.expect("499 operators");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    for sql in [
        format!("SELECT 1{}", "::int".repeat(3_000)),
        format!(
            "SELECT * FROM events WHERE {}",
            vec!["entity_id = 'x'"; 3_000].join(" OR ")
        ),
    ] {
        let status = server
            .sql_status(&viewer, &sql)
            .await
            .expect_err("over the budget");
        assert!(status.message().contains("max_sql_operators"), "{status}");
    }
    still_serving(&server, &viewer).await;
}

// ---- 2. Flight SQL: time, memory, generators, fairness, cancellation ----

/// `n` events with `data` of about `pad` bytes each.
async fn ingest_padded(server: &TestServer, token: &str, n: usize, pad: usize) {
    let filler = "x".repeat(pad);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"event_type": "INSERT", "entity_type": "t", "entity_id": format!("e-{i}"),
                       "data": {"i": i, "pad": filler}})
            })
            .collect();
        server.ingest(token, &events).await;
    }
}

const CROSS: &str =
    "SELECT count(*) FROM events a, events b, events c WHERE a.entity_id < b.entity_id";

#[tokio::test]
async fn row_generators_are_not_available() {
    let server = TestServer::new().await;
    let viewer = server.token("acme", Role::Viewer);
    for sql in [
        "SELECT sum(a.value*b.value) FROM generate_series(1,100000) a CROSS JOIN generate_series(1,100000) b",
        "SELECT count(*) FROM range(1, 100000000)",
        "SELECT repeat('x', 2000000000)",
        "SELECT lpad('x', 2000000000)",
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
    ] {
        let status = server.sql_status(&viewer, sql).await.expect_err(sql);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{sql}: {status}"
        );
    }
    still_serving(&server, &viewer).await;
}

#[tokio::test]
async fn a_query_over_its_time_limit_is_stopped_and_says_so() {
    let server = TestServer::builder()
        .toml("[flight_sql]\nquery_timeout = \"2s\"")
        .start()
        .await;
    let admin = server.token("acme", Role::Admin);
    ingest_padded(&server, &admin, 2_000, 0).await;
    let started = Instant::now();
    let e = server.sql(&admin, CROSS).await.expect_err("stopped");
    let status = flight_status(e);
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
    assert!(
        status.message().contains("flight_sql.query_timeout"),
        "{status}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    still_serving(&server, &admin).await;
}

#[tokio::test]
async fn an_org_running_heavy_queries_back_to_back_gets_its_share_of_computing_time() {
    // Queries may compute for 2 s each, and an org for 1 s per minute: the
    // bucket (2 s) is spent by the queries stopped at their limit, and the
    // org must then wait, told for how long.
    let server = TestServer::builder()
        .toml("[flight_sql]\nquery_timeout = \"2s\"\norg_query_seconds_per_minute = 1")
        .start()
        .await;
    let admin = server.token("acme", Role::Admin);
    let other = server.token("other", Role::Admin);
    ingest_padded(&server, &admin, 2_000, 0).await;
    ingest_padded(&server, &other, 10, 0).await;
    // Each query stopped at 2 s is charged the CPU its polls took: up to
    // 2 s, less when a busy machine gave the (lowest-priority) query
    // workers less, so how many run before the refusal varies.
    let mut stopped = 0;
    let started = Instant::now();
    let refused = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{stopped} heavy queries ran, none refused"
        );
        match server.sql(&admin, CROSS).await.map_err(flight_status) {
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => stopped += 1,
            Err(s) => break s,
            Ok(_) => panic!("the cross join finished within 2 s"),
        }
    };
    assert!(stopped >= 1);
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused
            .message()
            .contains("flight_sql.org_query_seconds_per_minute"),
        "{refused}"
    );
    // In debt by up to 2 s at 1 s per minute: up to 2 minutes.
    let retry: u64 = refused
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a retry-after: {refused:?}"));
    assert!((1..=130).contains(&retry), "retry-after {retry}");
    // Cheap queries of the org wait too; another org's do not.
    let e = server
        .sql_status(&admin, "SELECT 1")
        .await
        .expect_err("spent");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    server
        .sql(&other, "SELECT count(*) FROM events")
        .await
        .expect("another org's budget is its own");
    still_serving(&server, &admin).await;
}

#[tokio::test]
async fn a_query_over_its_memory_limit_is_refused_and_names_it() {
    let server = TestServer::builder()
        .toml("[flight_sql]\nmax_query_memory = 4194304")
        .start()
        .await;
    let admin = server.token("acme", Role::Admin);
    ingest_padded(&server, &admin, 10_000, 400).await;
    let e = server
        .sql(&admin, "SELECT * FROM events ORDER BY data DESC")
        .await
        .expect_err("over 4 MiB");
    let status = flight_status(e);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(
        status.message().contains("flight_sql.max_query_memory"),
        "{status}"
    );
    // A query within its budget still runs.
    let batches = server
        .sql(&admin, "SELECT count(*) FROM events")
        .await
        .expect("count");
    assert_eq!(
        batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        10_000
    );
    still_serving(&server, &admin).await;
}

#[tokio::test]
async fn one_orgs_heavy_query_does_not_hold_up_anothers() {
    let server = TestServer::builder()
        .toml("[flight_sql]\nquery_timeout = \"30s\"\nmax_queries_per_org = 1")
        .start()
        .await;
    let heavy = server.token("heavy", Role::Viewer);
    let heavy_admin = server.token("heavy", Role::Admin);
    let light = server.token("light", Role::Admin);
    ingest_padded(&server, &heavy_admin, 2_000, 0).await;
    ingest_padded(&server, &light, 100, 0).await;

    let started = Instant::now();
    let hog = {
        let server_sql = server.flight_sql(&heavy).await;
        let cell_port = server.cell_port(owner_of("heavy", 2));
        let token = heavy.clone();
        tokio::spawn(async move {
            // Planning and executing each take the org's one place, which
            // the probe below may hold a moment: retry until it runs.
            loop {
                let mut c = server_sql.clone();
                let Ok(info) = c.execute(CROSS.to_owned(), None).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
                let mut at = flight_sql_client(cell_port, &token).await;
                match at.do_get(ticket).await {
                    Ok(stream) => return stream.try_collect::<Vec<_>>().await.map(|_| ()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };
    // The heavy query runs once its org's one place stays taken (planning
    // takes it for milliseconds; running, for seconds).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused_in_a_row = 0;
    while refused_in_a_row < 5 {
        assert!(Instant::now() < deadline, "the heavy query never started");
        match server.sql_status(&heavy, "SELECT 1").await {
            Ok(_) => refused_in_a_row = 0,
            Err(_) => refused_in_a_row += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let batches = server
        .sql(&light, "SELECT count(*) FROM events")
        .await
        .unwrap_or_else(|e| panic!("the other org's count: {e}"));
    assert_eq!(
        batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        100
    );
    assert!(
        !hog.is_finished(),
        "the light query must finish while the heavy one still runs (after {:?})",
        started.elapsed()
    );
    hog.abort();
    still_serving(&server, &light).await;
}

#[tokio::test]
async fn an_orgs_queries_are_limited_and_a_dropped_query_frees_its_place() {
    let server = TestServer::builder()
        .toml("[flight_sql]\nquery_timeout = \"60s\"\nmax_queries_per_org = 1")
        .start()
        .await;
    let admin = server.token("acme", Role::Admin);
    ingest_padded(&server, &admin, 2_000, 0).await;
    let other = server.token("other", Role::Viewer);

    // A heavy query, read by a client that then goes away.
    let mut client = server.flight_sql(&admin).await;
    let info = client
        .execute(CROSS.to_owned(), None)
        .await
        .expect("planned");
    let ep = info.endpoint.first().expect("an endpoint").clone();
    let port = location_port(&ep.location[0].uri);
    let mut at = flight_sql_client(port, &admin).await;
    let reading = tokio::spawn(async move {
        let ticket = ep.ticket.expect("ticket");
        // The probe below may hold the org's one place a moment: retry.
        loop {
            match at.do_get(ticket.clone()).await {
                Ok(mut s) => {
                    while s.next().await.is_some() {}
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });

    // Once it runs, the org's second query is refused, with Retry-After;
    // another org's is not.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match server.sql_status(&admin, "SELECT 1").await {
            Err(status) => break status,
            Ok(_) => {
                assert!(Instant::now() < deadline, "the heavy query never started");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("max_queries_per_org"), "{status}");
    assert!(status.metadata().get("retry-after").is_some(), "{status:?}");
    server.sql(&other, "SELECT 1").await.expect("another org");

    // The client goes away: the query stops and its place is free again
    // long before its 60 s limit.
    reading.abort();
    let _ = reading.await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match server.sql(&admin, "SELECT 1").await {
            Ok(_) => break,
            Err(e) => {
                let status = flight_status(e);
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
                assert!(
                    Instant::now() < deadline,
                    "the dropped query still holds its place"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    still_serving(&server, &admin).await;
}

#[tokio::test]
async fn sql_text_is_bounded() {
    let server = TestServer::new().await;
    let viewer = server.token("acme", Role::Viewer);
    let sql = format!("SELECT 1 -- {}", "x".repeat(100_000));
    let status = server
        .sql_status(&viewer, &sql)
        .await
        .expect_err("too long");
    assert!(
        status.message().contains("flight_sql.max_sql_bytes"),
        "{status}"
    );
}

// ---- 3 and 4. GraphQL: cost, answer size, body limit, one ingest ----

#[tokio::test]
async fn graphql_cost_counts_aliases_and_page_sizes() {
    let server = TestServer::new().await;
    let viewer = server.token("acme", Role::Viewer);
    let aliases: String = (0..100)
        .map(|i| format!("a{i}: events(first: 10000) {{ edges {{ cursor }} }} "))
        .collect();
    let started = Instant::now();
    let (status, body) = server
        .graphql(&viewer, &format!("{{ {aliases} }}"), json!({}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code_of(&body), "query_too_costly", "{body}");
    assert!(body.to_string().contains("graphql_max_cost"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Through a fragment and a variable too.
    let q = "query($n: Int) { ...F b: events(first: $n) { edges { cursor } } } fragment F on Query { a: events(first: $n) { edges { cursor } } }";
    let (status, body) = server.graphql(&viewer, q, json!({"n": 10_000})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code_of(&body), "query_too_costly", "{body}");
    // One full page is within the budget.
    let (status, body) = server
        .graphql(
            &viewer,
            "{ events(first: 10000) { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    still_serving(&server, &viewer).await;
}

#[tokio::test]
async fn a_graphql_answer_over_its_size_limit_is_refused() {
    let server = TestServer::builder()
        .toml("[http_limits]\ngraphql_max_response_bytes = 65536")
        .start()
        .await;
    let admin = server.token("acme", Role::Admin);
    ingest_padded(&server, &admin, 1_000, 200).await;
    let (status, body) = server
        .graphql(
            &admin,
            "{ events(first: 1000) { edges { node { eventId data } } } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(code_of(&body), "response_too_large", "{body}");
    assert!(
        body.to_string().contains("graphql_max_response_bytes"),
        "{body}"
    );
    let (status, _) = server
        .graphql(
            &admin,
            "{ events(first: 10) { edges { node { eventId } } } }",
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn graphql_bodies_are_limited_like_every_route() {
    // Bodies a little over a small limit, so that the client has written
    // all of it before the server answers (a client still sending when the
    // server closes may miss the 413).
    let server = TestServer::builder()
        .toml("[http_limits]\nmax_body_bytes = 65536")
        .start()
        .await;
    let viewer = server.token("acme", Role::Viewer);
    let big = json!({"query": "query($x: String) { events { edges { cursor } } }",
                     "variables": {"x": "y".repeat(100_000)}})
    .to_string();
    let (status, body) = graphql_raw(&server, &viewer, big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(code_of(&body), "body_too_large", "{body}");
    for route in ["/auth/refresh", "/auth/logout"] {
        let resp = server
            .http()
            .post(server.url(route))
            .header("content-type", "application/json")
            .body(vec![b' '; 100_000])
            .send()
            .await
            .expect(route);
        assert_eq!(resp.status(), 413, "{route}");
        let body: Value = resp.json().await.expect("JSON error");
        assert_eq!(body["error"]["code"], "body_too_large", "{route}: {body}");
    }
    still_serving(&server, &viewer).await;
}

#[tokio::test]
async fn one_request_ingests_one_batch_all_or_nothing() {
    let server = TestServer::new().await;
    let admin = server.token("acme", Role::Admin);
    let events: Vec<Value> = (0..100)
        .map(|i| json!({"eventType": "INSERT", "entityType": "t", "entityId": format!("e{i}")}))
        .collect();
    let mutation: String = (0..50)
        .map(|i| format!("a{i}: ingestEvents(events: $e) {{ accepted }} "))
        .collect();
    let q = format!("mutation($e: [EventInput!]!) {{ {mutation} }}");
    let (status, body) = server.graphql(&admin, &q, json!({"e": events})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code_of(&body), "one_ingest_per_request", "{body}");
    // Also through fragments, with one bad alias: nothing is stored.
    let q = "mutation($e: [EventInput!]!, $bad: [EventInput!]!) { ...F b: ingestEvents(events: $bad) { accepted } } fragment F on Mutation { a: ingestEvents(events: $e) { accepted } }";
    let bad = json!([{"eventType": "INSERT", "entityType": "", "entityId": "x"}]);
    let (status, body) = server
        .graphql(&admin, q, json!({"e": events, "bad": bad}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(server.count_http(&admin).await, 0, "nothing stored");
    // One ingest is fine.
    let (status, body) = server
        .graphql(
            &admin,
            "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { accepted } }",
            json!({"e": events}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["ingestEvents"]["accepted"], 100);
}

#[tokio::test]
async fn graphql_refusals_are_json() {
    let server = TestServer::new().await;
    let viewer = server.token("acme", Role::Viewer);
    for (body, code) in [
        (
            r#"[{"query":"{ events { edges { cursor } } }"}]"#,
            "batch_not_supported",
        ),
        ("not json", "invalid_json"),
        (r#"{"query": 5}"#, "invalid_request"),
        (r#"{"query":"{ a }","query":"{ b }"}"#, "invalid_json"),
    ] {
        let (status, got) = graphql_raw(&server, &viewer, body).await;
        assert_eq!(status, 400, "{body}: {got}");
        assert_eq!(code_of(&got), code, "{body}: {got}");
    }
    // A known route with another method.
    let resp = server
        .http()
        .delete(server.url("/v1/events"))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.expect("a JSON 405");
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
}

// ---- 6. DoPut: permission first, every IPC message checked ----

/// The messages of a DoPut of one small, valid batch.
async fn put_messages() -> Vec<FlightData> {
    let batch = one_event_batch("e-1");
    FlightDataEncoderBuilder::new()
        .build(futures::stream::iter([Ok(batch)]))
        .try_collect()
        .await
        .expect("encode")
}

/// A header with the 8-byte little-endian `old` replaced by `new` where
/// that makes `check` hold of the parsed message.
fn patch_i64(
    header: &[u8],
    old: i64,
    new: i64,
    check: impl Fn(&arrow_ipc::Message<'_>) -> bool,
) -> Vec<u8> {
    for (at, _) in header
        .windows(8)
        .enumerate()
        .filter(|(_, w)| *w == old.to_le_bytes())
    {
        let mut out = header.to_vec();
        out[at..at + 8].copy_from_slice(&new.to_le_bytes());
        if let Ok(m) = arrow_ipc::root_as_message(&out)
            && check(&m)
        {
            return out;
        }
    }
    panic!("no place in the header holds {old} as the field to forge");
}

/// The index and length of the longest buffer of a record batch message.
fn longest_buffer(data: &FlightData) -> (usize, i64) {
    let m = arrow_ipc::root_as_message(&data.data_header).expect("message");
    let b = m.header_as_record_batch().expect("batch");
    let bufs = b.buffers().expect("buffers");
    (0..bufs.len())
        .map(|i| (i, bufs.get(i).length()))
        .max_by_key(|(_, l)| *l)
        .expect("a buffer")
}

fn buffer_length(m: &arrow_ipc::Message<'_>, i: usize) -> Option<i64> {
    Some(m.header_as_record_batch()?.buffers()?.get(i).length())
}

async fn put_raw(
    server: &TestServer,
    token: &str,
    msgs: Vec<FlightData>,
) -> Result<Vec<arrow_flight::PutResult>, tonic::Status> {
    let mut client = server.flight(token).await;
    let stream = futures::stream::iter(msgs.into_iter().map(Ok));
    match client.do_put(stream).await {
        Ok(results) => results.try_collect().await.map_err(flight_status),
        Err(e) => Err(flight_status(e)),
    }
}

#[tokio::test]
async fn forged_ipc_messages_are_invalid_argument_never_a_panic() {
    let server = TestServer::new().await;
    let admin = server.token("acme", Role::Admin);
    let viewer = server.token("acme", Role::Viewer);
    let good = put_messages().await;
    let batch_msg = good.len() - 1;
    let (buffer, length) = longest_buffer(&good[batch_msg]);
    let body_len = good[batch_msg].data_body.len() as i64;

    // A buffer that claims 1 GiB of a small body (the panic in arrow-buffer).
    let mut forged = good.clone();
    forged[batch_msg].data_header = patch_i64(&good[batch_msg].data_header, length, 1 << 30, |m| {
        buffer_length(m, buffer) == Some(1 << 30)
    })
    .into();
    let status = put_raw(&server, &admin, forged.clone())
        .await
        .expect_err("forged buffer");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("buffer"), "{status}");

    // The same from a viewer: refused for permission before it is decoded.
    let status = put_raw(&server, &viewer, forged).await.expect_err("viewer");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");

    // A forged bodyLength: 1 GiB, 2^62 and -1.
    for claimed in [1i64 << 30, 1 << 62, -1] {
        let mut forged = good.clone();
        forged[batch_msg].data_header =
            patch_i64(&good[batch_msg].data_header, body_len, claimed, |m| {
                m.bodyLength() == claimed
            })
            .into();
        let status = put_raw(&server, &admin, forged)
            .await
            .expect_err("forged bodyLength");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{claimed}: {status}"
        );
        assert!(status.message().contains("bodyLength"), "{status}");
    }
    assert_eq!(server.count_http(&admin).await, 0, "nothing stored");
    // The untouched stream is accepted.
    put_raw(&server, &admin, good).await.expect("valid DoPut");
    assert_eq!(server.count_http(&admin).await, 1);
    still_serving(&server, &admin).await;
}

// ---- 8. Cursors never wrap ----

#[tokio::test]
async fn out_of_range_cursors_are_refused_on_every_path() {
    let server = TestServer::new().await;
    let admin = server.token("acme", Role::Admin);
    server.ingest(&admin, &gen_events(3, 1)).await;
    for raw in ["hc1:18446744073709551615", "hc1:9223372036854775808"] {
        let cursor = URL_SAFE_NO_PAD.encode(raw);
        let (status, body) = server.get_events(&admin, &format!("cursor={cursor}")).await;
        assert_eq!(status, 400, "{raw}: {body}");
        assert_eq!(body["error"]["code"], "invalid_cursor", "{body}");
        let (_, body) = server
            .graphql(
                &admin,
                "query($a: String) { events(after: $a) { edges { cursor } } }",
                json!({"a": cursor}),
            )
            .await;
        assert_eq!(code_of(&body), "invalid_cursor", "{body}");
        let mut flight = server.flight(&admin).await;
        let ticket = Ticket::new(json!({"after": cursor}).to_string());
        let status = do_get_all(&mut flight, ticket)
            .await
            .expect_err("bad ticket cursor");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    }
    // The last real cursor ends the paging.
    let (status, body) = server.get_events(&admin, "limit=3").await;
    assert_eq!(status, 200);
    assert!(body["next_cursor"].is_null(), "{body}");
}

// ---- 9. Smaller defects ----

#[tokio::test]
async fn bad_values_get_messages_that_say_what_to_fix() {
    let server = TestServer::new().await;
    let admin = server.token("acme", Role::Admin);
    let (status, body) = server.get_events(&admin, "limit=-1").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_limit");
    assert!(!body.to_string().contains("invalid digit"), "{body}");

    // occurred_at past year 9999 (i64::MAX µs), and nanoseconds by mistake.
    for at in [
        json!(i64::MAX),
        json!(i64::MIN),
        json!(1_764_000_000_000_000_000i64),
    ] {
        let resp = server
            .post_events(&admin, &json!([{"event_type": "INSERT", "entity_type": "t", "entity_id": "1", "occurred_at": at}]))
            .await;
        assert_eq!(resp.status(), 400, "{at}");
        let body: Value = resp.json().await.expect("JSON");
        assert!(body.to_string().contains("9999"), "{at}: {body}");
    }
    // Two events with one id, and one key twice in an object.
    let id = "0190b6d4-5a3c-7def-8abc-0123456789ab";
    let resp = server
        .post_events(
            &admin,
            &json!([
            {"event_id": id, "event_type": "INSERT", "entity_type": "t", "entity_id": "1"},
            {"event_id": id, "event_type": "INSERT", "entity_type": "t", "entity_id": "2"}]),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("JSON");
    assert!(body.to_string().contains("event_id"), "{body}");
    let resp = server
        .http()
        .post(server.url("/v1/events"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(r#"[{"event_type":"INSERT","entity_type":"t","entity_id":"1","entity_id":"2"}]"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("JSON");
    assert!(body.to_string().contains("duplicate key"), "{body}");
    assert_eq!(server.count_http(&admin).await, 0, "nothing stored");
}
