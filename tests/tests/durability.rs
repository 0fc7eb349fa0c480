//! Durability: an acknowledged event survives `kill -9` and SIGTERM, exactly
//! once and intact; a clean stop exits 0.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Schema};
use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

/// What the load generator sent and what the server acknowledged.
#[derive(Default)]
struct Ledger {
    /// Every event sent (acknowledged or not), by its client-chosen id.
    sent: Mutex<BTreeMap<String, (String, Value)>>,
    acked: Mutex<BTreeSet<String>>,
    errors: Mutex<Vec<String>>,
}

fn event(org_tag: &str, task: usize, seq: u64, i: usize) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "event_type": EVENT_TYPES[i % 4],
        "entity_type": ENTITY_TYPES[i % 3],
        "entity_id": format!("{org_tag}-{task}-{seq}-{i}"),
        "occurred_at": BASE_US + (seq as i64) * 1000 + i as i64,
        "data": {"task": task, "seq": seq, "i": i, "pad": "x".repeat(64 + i % 50)},
        "changes": {"n": {"old": i, "new": i + 1}},
        "user_id": format!("u-{task}"),
        "trace_id": format!("t-{seq}-{i}"),
    })
}

/// One HTTP load task.
struct HttpWriter {
    client: reqwest::Client,
    url: String,
    token: String,
    org: String,
    task: usize,
    batch: usize,
    ndjson: bool,
}

/// Posts batches of `batch` events until `stop` is set or the server goes
/// away; records every event sent and every acknowledged id.
async fn http_writer(w: HttpWriter, stop: Arc<AtomicBool>, ledger: Arc<Ledger>) {
    let HttpWriter {
        client,
        url,
        token,
        org,
        task,
        batch,
        ndjson,
    } = w;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let events: Vec<Value> = (0..batch).map(|i| event(&org, task, seq, i)).collect();
        {
            let mut sent = ledger.sent.lock().expect("ledger");
            for e in &events {
                sent.insert(
                    e["event_id"].as_str().expect("id").to_owned(),
                    (org.clone(), e.clone()),
                );
            }
        }
        let req = client.post(&url).bearer_auth(&token);
        let req = if ndjson {
            let body: String = events.iter().map(|e| format!("{e}\n")).collect();
            req.header("content-type", "application/x-ndjson")
                .body(body)
        } else {
            req.json(&events)
        };
        match req.send().await {
            Ok(resp) if resp.status() == 200 => {
                let Ok(body) = resp.json::<Value>().await else {
                    break;
                };
                let ids = string_list(&body["event_ids"]);
                let want: Vec<&str> = events
                    .iter()
                    .map(|e| e["event_id"].as_str().expect("id"))
                    .collect();
                assert_eq!(ids, want, "the server acknowledges the ids it was given");
                ledger.acked.lock().expect("ledger").extend(ids);
            }
            Ok(resp) if resp.status() == 429 || resp.status() == 503 => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(resp) => {
                let s = resp.status();
                let text = resp.text().await.unwrap_or_default();
                ledger
                    .errors
                    .lock()
                    .expect("ledger")
                    .push(format!("{s}: {text}"));
                break;
            }
            Err(_) => break, // the server went away
        }
    }
}

/// DoPut of one batch per call, with client-chosen ids.
async fn flight_writer(
    port: u16,
    token: String,
    org: String,
    task: usize,
    stop: Arc<AtomicBool>,
    ledger: Arc<Ledger>,
) {
    let mut client = flight_client(port, Some(&token)).await;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let events: Vec<Value> = (0..40).map(|i| event(&org, task, seq, i)).collect();
        let col = |k: &str| -> ArrayRef {
            Arc::new(StringArray::from(
                events
                    .iter()
                    .map(|e| e[k].as_str().map(str::to_owned))
                    .collect::<Vec<_>>(),
            ))
        };
        let json_col = |k: &str| -> ArrayRef {
            Arc::new(StringArray::from(
                events.iter().map(|e| e[k].to_string()).collect::<Vec<_>>(),
            ))
        };
        let cols: Vec<(&str, ArrayRef)> = vec![
            ("event_id", col("event_id")),
            ("event_type", col("event_type")),
            ("entity_type", col("entity_type")),
            ("entity_id", col("entity_id")),
            (
                "occurred_at",
                Arc::new(
                    TimestampMicrosecondArray::from(
                        events
                            .iter()
                            .map(|e| e["occurred_at"].as_i64().expect("µs"))
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
            ),
            ("data", json_col("data")),
            ("changes", json_col("changes")),
            ("user_id", col("user_id")),
            ("trace_id", col("trace_id")),
        ];
        let schema = Schema::new(
            cols.iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        let batch =
            RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect())
                .expect("batch");
        {
            let mut sent = ledger.sent.lock().expect("ledger");
            for e in &events {
                sent.insert(
                    e["event_id"].as_str().expect("id").to_owned(),
                    (org.clone(), e.clone()),
                );
            }
        }
        match do_put_all(&mut client, vec![batch]).await {
            Ok(res) if res.len() == 1 && put_metadata(&res[0])["accepted"] == 40 => {
                let mut acked = ledger.acked.lock().expect("ledger");
                acked.extend(
                    events
                        .iter()
                        .map(|e| e["event_id"].as_str().expect("id").to_owned()),
                );
            }
            Ok(res) => panic!("unexpected DoPut answer {res:?}"),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => break,
        }
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    ledger: Arc<Ledger>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts 3 HTTP writers (one NDJSON) and 1 Flight writer per org.
async fn start_load(server: &TestServer, orgs: &[String]) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Ledger::default());
    let mut tasks = Vec::new();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    for org in orgs {
        let token = server.token(org, Role::Operator);
        for task in 0..3 {
            let w = HttpWriter {
                client: client.clone(),
                url: server.url("/v1/events"),
                token: token.clone(),
                org: org.clone(),
                task,
                batch: 25 + task * 10,
                ndjson: task == 2,
            };
            tasks.push(tokio::spawn(http_writer(w, stop.clone(), ledger.clone())));
        }
        tasks.push(tokio::spawn(flight_writer(
            server.ports().flight,
            token.clone(),
            org.clone(),
            9,
            stop.clone(),
            ledger.clone(),
        )));
    }
    Load {
        stop,
        ledger,
        tasks,
    }
}

impl Load {
    async fn join(self) -> Arc<Ledger> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a writer did not stop")
                .expect("a writer panicked");
        }
        let errors = self.ledger.errors.lock().expect("ledger").clone();
        assert!(errors.is_empty(), "unexpected answers: {errors:?}");
        self.ledger
    }
}

/// Every acknowledged event is stored exactly once; every stored event is
/// one that was sent, field for field (no torn or mixed record).
async fn verify(server: &TestServer, orgs: &[String], ledger: &Ledger) -> usize {
    let sent = ledger.sent.lock().expect("ledger").clone();
    let acked = ledger.acked.lock().expect("ledger").clone();
    let mut stored_total = 0;
    for org in orgs {
        let token = server.token(org, Role::Viewer);
        let http: Vec<Row> = server
            .all_events_http(&token, "", 10_000)
            .await
            .iter()
            .map(Row::from_http)
            .collect();
        let n = http.len();
        let stored = by_id(http); // panics on a duplicate
        assert_eq!(stored.len(), n);
        for (id, row) in &stored {
            let (sent_org, e) = sent
                .get(id)
                .unwrap_or_else(|| panic!("stored event {id} was never sent"));
            assert_eq!(sent_org, org, "event {id} stored under the wrong org");
            assert_eq!(&row.org_id, org);
            assert_eq!(row.event_type, e["event_type"], "{id}");
            assert_eq!(row.entity_type, e["entity_type"], "{id}");
            assert_eq!(row.entity_id, e["entity_id"], "{id}");
            assert_eq!(
                row.occurred_at_us,
                e["occurred_at"].as_i64().expect("µs"),
                "{id}"
            );
            assert_eq!(row.data.as_ref(), Some(&e["data"]), "{id}");
            assert_eq!(row.changes.as_ref(), Some(&e["changes"]), "{id}");
            assert_eq!(row.user_id.as_deref(), e["user_id"].as_str(), "{id}");
            assert_eq!(row.trace_id.as_deref(), e["trace_id"].as_str(), "{id}");
        }
        let mine: BTreeSet<&String> = acked
            .iter()
            .filter(|id| sent.get(*id).is_some_and(|(o, _)| o == org))
            .collect();
        let missing: Vec<&&String> = mine
            .iter()
            .filter(|id| !stored.contains_key(**id))
            .collect();
        assert!(
            missing.is_empty(),
            "{org}: {} of {} acknowledged events are missing, e.g. {:?}",
            missing.len(),
            mine.len(),
            missing.iter().take(3).collect::<Vec<_>>()
        );
        // The columnar path reads the same log (WAL replay and segments).
        let sql = Row::from_batches(
            &server
                .sql(&token, "SELECT * FROM events")
                .await
                .expect("SQL after restart"),
        );
        assert_eq!(
            by_id(sql),
            stored,
            "{org}: Flight SQL and HTTP disagree after restart"
        );
        stored_total += stored.len();
    }
    stored_total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_during_concurrent_ingest_loses_no_acknowledged_event() {
    let mut server = TestServer::builder()
        .cells(2)
        .env("HONEYCELL_STORAGE__DURABILITY", "fsync")
        // Small segments, so that sealing runs during the load.
        .env("HONEYCELL_STORAGE__SEGMENT_MAX_ROWS", 2000)
        .start()
        .await;
    let orgs = vec![org_owned_by("dur", 0, 2), org_owned_by("dur", 1, 2)];
    let load = start_load(&server, &orgs).await;
    // Let the load run, then kill the server under it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked_before_kill = load.ledger.acked.lock().expect("ledger").len();
    server.kill9();
    let ledger = load.join().await;
    let acked = ledger.acked.lock().expect("ledger").len();
    assert!(
        acked_before_kill >= 500,
        "the load was too light to mean anything: {acked_before_kill} acked"
    );
    let sent = ledger.sent.lock().expect("ledger").len();
    assert!(
        sent > acked,
        "some requests were in flight at the kill ({sent} sent, {acked} acked)"
    );

    server.restart().await;
    let stored = verify(&server, &orgs, &ledger).await;
    eprintln!("kill -9: {sent} sent, {acked} acknowledged, {stored} stored after restart");
    assert!(stored >= acked, "{stored} stored < {acked} acked");

    // The recovered log keeps accepting writes after the recovered tail.
    let token = server.token(&orgs[0], Role::Operator);
    let before = server.count_http(&token).await;
    server.ingest_n(&token, 10, 0).await;
    assert_eq!(server.count_http(&token).await, before + 10);
    server.kill9();
    server.restart().await;
    assert_eq!(
        server.count_http(&token).await,
        before + 10,
        "a second crash loses nothing either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_exits_zero_and_restart_serves_everything() {
    let mut server = TestServer::builder()
        .cells(2)
        .env("HONEYCELL_STORAGE__SEGMENT_MAX_ROWS", 500)
        .start()
        .await;
    let orgs = vec![org_owned_by("term", 0, 2), org_owned_by("term", 1, 2)];
    let load = start_load(&server, &orgs).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SIGTERM under load: requests in flight are answered, then exit 0.
    let status = server.sigterm().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}\n{}",
        server.log()
    );
    let ledger = load.join().await;
    assert!(ledger.acked.lock().expect("ledger").len() >= 300);
    let log = server.log();
    assert!(
        log.contains("stopped cleanly"),
        "the server logs its clean stop:\n{log}"
    );

    server.restart().await;
    let stored = verify(&server, &orgs, &ledger).await;
    // A clean stop answers or refuses every request: nothing half-done is
    // stored beyond what was acknowledged.
    let acked = ledger.acked.lock().expect("ledger").len();
    eprintln!("SIGTERM: {acked} acknowledged, {stored} stored after restart");
    assert_eq!(
        stored, acked,
        "after a clean stop the stored events are exactly the acknowledged ones"
    );

    // Rows are identical across a second clean restart (no duplicate replay
    // of WAL entries that were already sealed into segments).
    let token = server.token(&orgs[1], Role::Viewer);
    let before = by_id(
        server
            .all_events_http(&token, "", 10_000)
            .await
            .iter()
            .map(Row::from_http),
    );
    let status = server.sigterm().await;
    assert!(status.success(), "{status}");
    server.restart().await;
    let after = by_id(
        server
            .all_events_http(&token, "", 10_000)
            .await
            .iter()
            .map(Row::from_http),
    );
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_another_cell_count_keeps_every_org() {
    let mut server = TestServer::builder().cells(2).start().await;
    let orgs: Vec<String> = (0..6).map(|i| format!("recell-{i}")).collect();
    let mut before = Vec::new();
    for (i, org) in orgs.iter().enumerate() {
        let token = server.token(org, Role::Operator);
        server.ingest_n(&token, 20 + i, i as u64).await;
        before.push(by_id(
            server
                .all_events_http(&token, "", 1000)
                .await
                .iter()
                .map(Row::from_http),
        ));
    }
    let moved = orgs
        .iter()
        .filter(|o| owner_of(o, 2) != owner_of(o, 3))
        .count();
    assert!(moved > 0, "some org changes cell between 2 and 3 cells");
    let status = server.sigterm().await;
    assert!(status.success(), "{status}");
    server.set_cells(3);
    server.restart().await;
    assert_eq!(server.ports().cells, 3);
    for (org, rows) in orgs.iter().zip(&before) {
        let token = server.token(org, Role::Viewer);
        let after = by_id(
            server
                .all_events_http(&token, "", 1000)
                .await
                .iter()
                .map(Row::from_http),
        );
        assert_eq!(&after, rows, "{org} after going from 2 to 3 cells");
        let mut flight = server.flight(&token).await;
        let who = action_json(&mut flight, "whoami").await;
        assert_eq!(who["owner_cell"], owner_of(org, 3) as u64);
    }
    // And back to 1 cell after a crash.
    server.kill9();
    server.set_cells(1);
    server.restart().await;
    for (org, rows) in orgs.iter().zip(&before) {
        let token = server.token(org, Role::Viewer);
        let after = by_id(
            server
                .all_events_http(&token, "", 1000)
                .await
                .iter()
                .map(Row::from_http),
        );
        assert_eq!(&after, rows, "{org} after going to 1 cell");
    }
}
