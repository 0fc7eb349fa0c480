//! Idempotent ingest: an event sent again with the same `event_id` within
//! `storage.dedup_window` is stored once, on every path (HTTP JSON and
//! NDJSON, GraphQL, Flight DoPut), per org, across a restart; the answer
//! counts the duplicates and gives every event's id.

use std::time::Duration;

use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Path {
    Json,
    Ndjson,
    Graphql,
    DoPut,
}

const PATHS: [Path; 4] = [Path::Json, Path::Ndjson, Path::Graphql, Path::DoPut];

/// A client event id; the same `n` gives the same id.
fn id(n: u32) -> String {
    format!("018f0000-0000-7000-8000-{n:012}")
}

/// What an ingest answered: stored, duplicates, and the ids it gave (none
/// for DoPut, whose client already holds the ids it sent).
#[derive(Debug, PartialEq)]
struct Answer {
    accepted: u64,
    duplicates: u64,
    event_ids: Vec<String>,
}

fn answer(accepted: u64, duplicates: u64, ids: &[Option<u32>]) -> Answer {
    Answer {
        accepted,
        duplicates,
        event_ids: ids.iter().flatten().map(|n| id(*n)).collect(),
    }
}

/// Sends one batch of INSERT events (with the given ids, `None` for none)
/// on `path`; asserts success.
async fn send(server: &TestServer, token: &str, path: Path, ids: &[Option<u32>]) -> Answer {
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut e = json!({"event_type": "INSERT", "entity_type": "order", "entity_id": format!("o-{i}")});
            if let Some(n) = n {
                e["event_id"] = json!(id(*n));
            }
            e
        })
        .collect();
    let http = |content_type: &str, body: String| {
        server
            .http()
            .post(server.url("/v1/events"))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let body = match path {
        Path::Json => {
            let resp = http("application/json", Value::Array(events).to_string())
                .await
                .expect("POST /v1/events");
            let (status, body) = json_answer("POST /v1/events", resp).await;
            assert_eq!(status, 200, "{body}");
            body
        }
        Path::Ndjson => {
            let lines: Vec<String> = events.iter().map(Value::to_string).collect();
            let resp = http("application/x-ndjson", lines.join("\n"))
                .await
                .expect("POST /v1/events");
            let (status, body) = json_answer("POST /v1/events", resp).await;
            assert_eq!(status, 200, "{body}");
            body
        }
        Path::Graphql => {
            let input: Vec<Value> = events
                .iter()
                .map(|e| {
                    json!({"eventType": e["event_type"], "entityType": e["entity_type"],
                           "entityId": e["entity_id"], "eventId": e["event_id"]})
                })
                .collect();
            let (status, body) = server
                .graphql(
                    token,
                    "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { accepted duplicates eventIds } }",
                    json!({ "e": input }),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            assert!(body["errors"].is_null(), "{body}");
            let r = &body["data"]["ingestEvents"];
            json!({"accepted": r["accepted"], "duplicates": r["duplicates"], "event_ids": r["eventIds"]})
        }
        Path::DoPut => {
            let n = ids.len();
            let texts: Vec<Option<String>> = ids.iter().map(|n| n.map(id)).collect();
            let entity: Vec<String> = (0..n).map(|i| format!("o-{i}")).collect();
            let put = batch(vec![
                (
                    "event_id",
                    std::sync::Arc::new(arrow::array::StringArray::from(texts)),
                ),
                ("event_type", utf8(&vec!["INSERT"; n])),
                ("entity_type", utf8(&vec!["order"; n])),
                (
                    "entity_id",
                    utf8(&entity.iter().map(String::as_str).collect::<Vec<_>>()),
                ),
            ]);
            let mut client = server.flight(token).await;
            let results = do_put_all(&mut client, vec![put])
                .await
                .unwrap_or_else(|e| panic!("DoPut: {e}"));
            assert_eq!(results.len(), 1);
            let meta = put_metadata(&results[0]);
            json!({"accepted": meta["accepted"], "duplicates": meta["duplicates"], "event_ids": []})
        }
    };
    let event_ids = string_list(&body["event_ids"]);
    if !matches!(path, Path::DoPut) {
        assert_eq!(event_ids.len(), ids.len(), "an id for every event: {body}");
    }
    Answer {
        accepted: body["accepted"].as_u64().expect("accepted"),
        duplicates: body["duplicates"].as_u64().expect("duplicates"),
        // Server-assigned ids are fresh: compare only the client's.
        event_ids: event_ids
            .into_iter()
            .zip(ids)
            .filter(|(_, n)| n.is_some())
            .map(|(s, _)| s)
            .collect(),
    }
}

/// DoPut answers no ids: the expectation without them.
fn expect(path: Path, mut a: Answer) -> Answer {
    if matches!(path, Path::DoPut) {
        a.event_ids.clear();
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_stores_a_resent_event_once() {
    let server = TestServer::builder().cells(2).start().await;
    for path in PATHS {
        let org = format!("idem-{path:?}").to_lowercase();
        let token = server.token(&org, Role::Operator);
        let abc = [Some(1), Some(2), Some(3)];
        assert_eq!(
            send(&server, &token, path, &abc).await,
            expect(path, answer(3, 0, &abc)),
            "{path:?}: first send"
        );
        assert_eq!(
            send(&server, &token, path, &abc).await,
            expect(path, answer(0, 3, &abc)),
            "{path:?}: a resend is all duplicates, with the original ids"
        );
        let bcd = [Some(2), Some(4), Some(3)];
        assert_eq!(
            send(&server, &token, path, &bcd).await,
            expect(path, answer(1, 2, &bcd)),
            "{path:?}: a partly resent batch stores only the new event"
        );
        let loose = [None, Some(5), None];
        assert_eq!(
            send(&server, &token, path, &loose).await,
            expect(path, answer(3, 0, &loose)),
            "{path:?}"
        );
        assert_eq!(
            send(&server, &token, path, &loose).await,
            expect(path, answer(2, 1, &loose)),
            "{path:?}: events without an id are never duplicates"
        );
        assert_eq!(
            server.count_http(&token).await,
            4 + 3 + 2,
            "{path:?}: each id stored once"
        );
        // Per org: the same ids in another org are new there.
        let other = server.token(&format!("{org}-other"), Role::Operator);
        assert_eq!(
            send(&server, &other, path, &abc).await,
            expect(path, answer(3, 0, &abc)),
            "{path:?}: another org"
        );
    }
    let metrics = server.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "honeycell_events_duplicate_total", &[]),
        4.0 * (3.0 + 2.0 + 1.0),
        "{metrics}"
    );
}

/// Sends ids 1 and 2 (shifted per path, so that each path has its own) on
/// every path; asserts what each answers.
async fn send_on_every_path(server: &TestServer, token: &str, accepted: u64, when: &str) {
    for path in PATHS {
        let ids = [Some(1 + path as u32 * 10), Some(2 + path as u32 * 10)];
        assert_eq!(
            send(server, token, path, &ids).await,
            expect(path, answer(accepted, 2 - accepted, &ids)),
            "{path:?} {when}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_a_restart_is_still_recognised() {
    let mut server = TestServer::builder().cells(2).start().await;
    let token = server.token("idem-restart", Role::Operator);
    send_on_every_path(&server, &token, 2, "first").await;
    // The ids are in the WAL only: recovered after kill -9.
    server.restart().await;
    send_on_every_path(&server, &token, 0, "after kill -9").await;
    // A clean stop seals them into segments: read back from those.
    assert!(server.sigterm().await.success());
    server.restart().await;
    send_on_every_path(&server, &token, 0, "after a clean restart").await;
    assert_eq!(server.count_http(&token).await, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_window_an_id_is_stored_again() {
    let server = TestServer::builder()
        .env("HONEYCELL_STORAGE__DEDUP_WINDOW", "2s")
        .start()
        .await;
    let token = server.token("idem-window", Role::Operator);
    let ids = [Some(1)];
    assert_eq!(send(&server, &token, Path::Json, &ids).await.accepted, 1);
    assert_eq!(send(&server, &token, Path::Json, &ids).await.duplicates, 1);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        send(&server, &token, Path::Json, &ids).await,
        answer(1, 0, &ids),
        "past the window"
    );
    assert_eq!(server.count_http(&token).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_turns_deduplication_off() {
    let server = TestServer::builder()
        .env("HONEYCELL_STORAGE__DEDUP_WINDOW", "0")
        .start()
        .await;
    let token = server.token("idem-off", Role::Operator);
    let ids = [Some(1), Some(2)];
    for path in [Path::Json, Path::DoPut] {
        assert_eq!(
            send(&server, &token, path, &ids).await,
            expect(path, answer(2, 0, &ids)),
            "{path:?}"
        );
    }
    assert_eq!(server.count_http(&token).await, 4);
}
