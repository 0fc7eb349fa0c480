//! Rate limits: a tenant over its budget gets 429 with Retry-After over HTTP
//! and GraphQL and RESOURCE_EXHAUSTED over Flight; other tenants are
//! unaffected and nothing accepted before is lost.

use std::collections::BTreeSet;
use std::time::Duration;

use arrow_flight::Ticket;
use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_over_its_rate_gets_429_and_resource_exhausted() {
    let server = TestServer::builder()
        .cells(2)
        .env("HONEYCELL_RATE_LIMITING__ORG_MAX_QPS", 2)
        .env("HONEYCELL_RATE_LIMITING__BURST_SECONDS", 1)
        .start()
        .await;
    let a = org_owned_by("lim-a", 0, 2);
    let same_cell = org_owned_by("lim-c", 0, 2);
    let other_cell = org_owned_by("lim-b", 1, 2);
    let ta = server.token(&a, Role::Operator);

    // Writes of A until refused.
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut refused = None;
    for i in 0..20 {
        let resp = server
            .post_events(&ta, &Value::Array(gen_events(2, i)))
            .await;
        if resp.status() == 429 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.expect("JSON");
        acked.extend(string_list(&body["event_ids"]));
    }
    let resp = refused.expect("20 quick writes at 2/s must hit the org limit");
    assert!(
        !acked.is_empty() && acked.len() <= 10,
        "the burst admits a few writes first: {}",
        acked.len()
    );
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value = resp.json().await.expect("JSON 429 body");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["retry_after_seconds"], retry, "{body}");
    let msg = body["error"]["message"].as_str().expect("message");
    assert!(msg.contains("org"), "the message names the limit: {msg}");

    // Other orgs, on the same and on the other cell, are unaffected.
    for org in [&same_cell, &other_cell] {
        let t = server.token(org, Role::Operator);
        server.ingest_n(&t, 2, 0).await;
        let (status, _) = server.get_events(&t, "").await;
        assert_eq!(status, 200, "{org} reads");
    }

    // Reads have their own bucket: A can still read, and sees all it was acknowledged.
    let (status, body) = server.get_events(&ta, "limit=1000").await;
    assert_eq!(status, 200, "{body}");
    let got: BTreeSet<String> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(
        got, acked,
        "nothing acknowledged before the 429 is lost, nothing refused is stored"
    );

    // Flight reads of A until RESOURCE_EXHAUSTED, with retry-after metadata.
    let mut flight = server.flight(&ta).await;
    let mut exhausted = None;
    for _ in 0..20 {
        match do_get_all(&mut flight, Ticket::new("{}")).await {
            Ok(batches) => assert_eq!(Row::from_batches(&batches).len(), acked.len()),
            Err(s) => {
                exhausted = Some(s);
                break;
            }
        }
    }
    let s = exhausted.expect("20 quick DoGets at 2/s must hit the org limit");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    let ra = s
        .metadata()
        .get("retry-after")
        .expect("retry-after metadata");
    let ra: u64 = ra.to_str().expect("ASCII").parse().expect("seconds");
    assert!(ra >= 1);

    // GraphQL reads while A is limited: 429 with Retry-After as well.
    let resp = server
        .http()
        .post(server.url("/graphql"))
        .bearer_auth(&ta)
        .json(&json!({"query": "{ events { edges { cursor } } }"}))
        .send()
        .await
        .expect("POST /graphql");
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "rate_limited",
        "{body}"
    );

    // HTTP writes of A are refused again once its bucket is empty.
    let mut exhausted = None;
    for i in 0..20 {
        let events = gen_events(1, i);
        let resp = server.post_events(&ta, &Value::Array(events)).await;
        if resp.status() == 429 {
            exhausted = Some(());
            break;
        }
        let body: Value = resp.json().await.expect("JSON");
        acked.extend(string_list(&body["event_ids"]));
    }
    assert!(exhausted.is_some());
    let m = server.metrics().await;
    assert!(
        metric_sum(&m, "honeycell_rate_limited_total", &["limit=\"org\""]) >= 3.0,
        "{m}"
    );
    let limited_requests = metric_sum(&m, "honeycell_requests_total", &["status=\"429\""]);
    assert!(limited_requests >= 2.0, "429s are counted per route:\n{m}");

    // After Retry-After, A writes again and everything acknowledged is there.
    tokio::time::sleep(Duration::from_secs(retry.max(ra))).await;
    let more = server.ingest_n(&ta, 1, 99).await;
    acked.extend(more);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = server.get_events(&ta, "limit=1000").await;
    assert_eq!(status, 200, "{body}");
    let got: BTreeSet<String> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(got, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_doput_over_the_limit_is_resource_exhausted() {
    let server = TestServer::builder()
        .cells(1)
        .env("HONEYCELL_RATE_LIMITING__ORG_MAX_QPS", 1)
        .env("HONEYCELL_RATE_LIMITING__BURST_SECONDS", 1)
        .start()
        .await;
    let t = server.token("lim-put", Role::Operator);
    let mut flight = server.flight(&t).await;
    let batch = || {
        use std::sync::Arc;
        let cols: Vec<(&str, arrow::array::ArrayRef)> = vec![
            (
                "event_type",
                Arc::new(arrow::array::StringArray::from(vec!["INSERT"])),
            ),
            (
                "entity_type",
                Arc::new(arrow::array::StringArray::from(vec!["order"])),
            ),
            (
                "entity_id",
                Arc::new(arrow::array::StringArray::from(vec!["o"])),
            ),
        ];
        let schema = arrow::datatypes::Schema::new(
            cols.iter()
                .map(|(n, a)| arrow::datatypes::Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        arrow::array::RecordBatch::try_new(
            Arc::new(schema),
            cols.into_iter().map(|(_, a)| a).collect(),
        )
        .expect("batch")
    };
    let mut accepted = 0;
    let mut status = None;
    for _ in 0..20 {
        match do_put_all(&mut flight, vec![batch()]).await {
            Ok(r) => accepted += put_metadata(&r[0])["accepted"].as_u64().expect("accepted"),
            Err(s) => {
                status = Some(s);
                break;
            }
        }
    }
    let s = status.expect("DoPut over the org limit");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.metadata().get("retry-after").is_some());
    assert!(accepted >= 1);
    assert_eq!(
        server.count_http(&t).await as u64,
        accepted,
        "a refused DoPut stores nothing"
    );
}
