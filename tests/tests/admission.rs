//! Admission control, end to end: a cell past `admission.max_queue_depth`,
//! past `admission.max_buffered_mb`, or whose bus inbox is full
//! (`admission.bus_capacity`) answers 429 with `Retry-After` (Flight:
//! RESOURCE_EXHAUSTED with `retry-after`); every write it acknowledged is
//! stored, before and after a restart, and none it refused is.
//!
//! Each limit is set small through the environment and driven by many
//! concurrent writers until it refuses; the writers keep a ledger of what was
//! acknowledged, which is then read back whole.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::Value;

/// How long a flood may take to reach its limit.
const FLOOD_DEADLINE: Duration = Duration::from_secs(60);

/// One refused write.
#[derive(Debug)]
struct Refusal {
    /// `"http"` or `"flight"`.
    via: &'static str,
    retry_after: u64,
    message: String,
}

/// What concurrent writers were told.
#[derive(Default)]
struct Ledger {
    acked: Mutex<BTreeSet<String>>,
    refused: Mutex<Vec<Refusal>>,
    stop: AtomicBool,
}

impl Ledger {
    fn acked(&self) -> BTreeSet<String> {
        self.acked.lock().expect("ledger").clone()
    }

    /// Whether some write was refused naming `key`.
    fn refused_naming(&self, key: &str) -> bool {
        let refused = self.refused.lock().expect("ledger");
        refused.iter().any(|r| r.message.contains(key))
    }

    /// Whether both HTTP and Flight writes were refused naming `key`.
    fn refused_on_both(&self, key: &str) -> bool {
        let refused = self.refused.lock().expect("ledger");
        ["http", "flight"].iter().all(|via| {
            refused
                .iter()
                .any(|r| r.via == *via && r.message.contains(key))
        })
    }

    /// Every refusal names `key` (no other limit was reached).
    fn assert_all_name(&self, key: &str) {
        for r in self.refused.lock().expect("ledger").iter() {
            assert!(r.message.contains(key), "only {key} refuses here: {r:?}");
        }
    }

    fn retry_after(&self) -> u64 {
        let refused = self.refused.lock().expect("ledger");
        refused.iter().map(|r| r.retry_after).max().unwrap_or(1)
    }

    fn summary(&self) -> String {
        let refused = self.refused.lock().expect("ledger");
        format!(
            "{} acknowledged, {} refused, first refusals: {:?}",
            self.acked.lock().expect("ledger").len(),
            refused.len(),
            &refused[..refused.len().min(3)]
        )
    }
}

/// The `Retry-After` of a 429: whole seconds, at least one.
fn retry_after_of(resp: &reqwest::Response) -> u64 {
    let value = resp
        .headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("a 429 without Retry-After: {:?}", resp.headers()));
    let secs: u64 = value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After {value:?} is not whole seconds"));
    assert!(secs >= 1, "Retry-After {secs}");
    secs
}

/// One HTTP writer: batches of `events` events until the ledger stops or
/// the deadline passes. Only 200 and 429 (`overloaded`) are expected.
async fn http_writer(
    server: &TestServer,
    token: &str,
    writer: u64,
    events: usize,
    ledger: &Ledger,
) {
    let deadline = Instant::now() + FLOOD_DEADLINE;
    let mut round = 0;
    while !ledger.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let body = Value::Array(gen_events(events, writer * 100_000 + round));
        round += 1;
        let resp = server.post_events(token, &body).await;
        let status = resp.status().as_u16();
        let retry_after = (status == 429).then(|| retry_after_of(&resp));
        let (status, body) = json_answer("POST /v1/events", resp).await;
        match retry_after {
            None => {
                assert_eq!(
                    status, 200,
                    "a write is accepted or refused with 429: {body}"
                );
                let ids = string_list(&body["event_ids"]);
                assert_eq!(ids.len(), events, "{body}");
                ledger.acked.lock().expect("ledger").extend(ids);
            }
            Some(retry_after) => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                assert_eq!(body["error"]["retry_after_seconds"], retry_after, "{body}");
                let message = body["error"]["message"]
                    .as_str()
                    .expect("message")
                    .to_owned();
                ledger.refused.lock().expect("ledger").push(Refusal {
                    via: "http",
                    retry_after,
                    message,
                });
            }
        }
    }
}

/// One DoPut writer: one batch of `events` events per call, each with its
/// own event_id, until the ledger stops. A refusal is RESOURCE_EXHAUSTED
/// with `retry-after` metadata.
async fn flight_writer(server: &TestServer, token: &str, events: usize, ledger: &Ledger) {
    let deadline = Instant::now() + FLOOD_DEADLINE;
    let mut client = server.flight(token).await;
    while !ledger.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let ids: Vec<String> = (0..events)
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let put = batch(vec![
            ("event_id", utf8(&id_refs)),
            ("event_type", utf8(&vec!["INSERT"; events])),
            ("entity_type", utf8(&vec!["order"; events])),
            ("entity_id", utf8(&vec!["o-1"; events])),
        ]);
        match do_put_all(&mut client, vec![put]).await {
            Ok(results) => {
                assert_eq!(results.len(), 1, "one PutResult per batch");
                assert_eq!(put_metadata(&results[0])["accepted"], events as u64);
                ledger.acked.lock().expect("ledger").extend(ids);
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::ResourceExhausted,
                    "a DoPut is accepted or refused as RESOURCE_EXHAUSTED: {status:?}"
                );
                let retry_after: u64 = status
                    .metadata()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| {
                        panic!("RESOURCE_EXHAUSTED without retry-after: {status:?}")
                    });
                ledger.refused.lock().expect("ledger").push(Refusal {
                    via: "flight",
                    retry_after,
                    message: status.message().to_owned(),
                });
            }
        }
    }
}

/// Runs `writers` HTTP writers (and `flight_writers` DoPut writers) at once
/// until `done` holds of the ledger; fails at [`FLOOD_DEADLINE`].
async fn flood(
    server: &TestServer,
    token: &str,
    writers: u64,
    flight_writers: usize,
    events: usize,
    done: impl Fn(&Ledger) -> bool,
) -> Ledger {
    let ledger = Ledger::default();
    let watch = async {
        let deadline = Instant::now() + FLOOD_DEADLINE;
        while !done(&ledger) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ledger.stop.store(true, Ordering::Relaxed);
    };
    let http = futures::future::join_all(
        (0..writers).map(|w| http_writer(server, token, w, events, &ledger)),
    );
    let flight = futures::future::join_all(
        (0..flight_writers).map(|_| flight_writer(server, token, events, &ledger)),
    );
    tokio::join!(watch, http, flight);
    assert!(
        done(&ledger),
        "the limit was not reached: {}",
        ledger.summary()
    );
    eprintln!("flood: {}", ledger.summary());
    ledger
}

/// Every acknowledged event is stored and nothing else is, now and after a
/// restart.
async fn assert_all_stored(server: &mut TestServer, token: &str, acked: &BTreeSet<String>) {
    for when in ["before restart", "after restart"] {
        if when == "after restart" {
            server.restart().await;
        }
        let stored: BTreeSet<String> = server
            .all_events_http(token, "", 10_000)
            .await
            .iter()
            .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
            .collect();
        assert_eq!(stored.len(), acked.len(), "{when}: stored vs acknowledged");
        assert!(
            stored == *acked,
            "{when}: the stored events are exactly the acknowledged ones"
        );
    }
}

/// A server with `cells` cells, no rate limits, and `admission.<key>` (upper
/// case) set to `value`.
async fn server_with(cells: usize, key: &str, value: u64) -> TestServer {
    TestServer::builder()
        .cells(cells)
        .env("HONEYCELL_RATE_LIMITING__ENABLED", false)
        .env(&format!("HONEYCELL_ADMISSION__{key}"), value)
        .start()
        .await
}

async fn admission_rejections(server: &TestServer) -> f64 {
    metric_sum(
        &server.metrics().await,
        "honeycell_admission_rejected_total",
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_depth_limit_answers_429_and_loses_nothing_acknowledged() {
    let mut server = server_with(1, "MAX_QUEUE_DEPTH", 2).await;
    let token = server.token("adm-depth", Role::Operator);

    let ledger = flood(&server, &token, 16, 4, 50, |l| {
        let acked = l.acked.lock().expect("ledger").len();
        acked >= 1_000 && l.refused_on_both("admission.max_queue_depth")
    })
    .await;
    let refused = ledger.refused.lock().expect("ledger").len();
    ledger.assert_all_name("admission.max_queue_depth");
    assert!(
        admission_rejections(&server).await >= refused as f64,
        "refusals are counted in honeycell_admission_rejected_total"
    );
    assert_all_stored(&mut server, &token, &ledger.acked()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffered_bytes_limit_answers_429_drains_and_loses_nothing_acknowledged() {
    let mut server = server_with(1, "MAX_BUFFERED_MB", 1).await;
    let token = server.token("adm-bytes", Role::Operator);

    // Far below the memtable's own seal thresholds (64 MiB, 131,072 rows):
    // only admission stops these writes.
    let ledger = flood(&server, &token, 4, 0, 500, |l| {
        l.refused_naming("admission.max_buffered_mb")
    })
    .await;
    ledger.assert_all_name("admission.max_buffered_mb");
    let mut acked = ledger.acked();
    assert!(!acked.is_empty(), "writes were accepted before the limit");

    // The refusal is honest: after Retry-After the buffers have drained and
    // the same write is accepted (the cell seals what it holds instead of
    // refusing every write from then on).
    let retry_after = ledger.retry_after();
    let events = gen_events(500, 9_999_999);
    let mut accepted = None;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(retry_after)).await;
        let resp = server
            .post_events(&token, &Value::Array(events.clone()))
            .await;
        let (status, body) = json_answer("POST /v1/events", resp).await;
        if status == 200 {
            accepted = Some(body);
            break;
        }
        assert_eq!(status, 429, "{body}");
    }
    let body = accepted.expect("a write is accepted again once the refused cell drains");
    acked.extend(string_list(&body["event_ids"]));

    // A batch that alone is larger than the limit can never be admitted:
    // 413 naming the key, not a 429 that invites endless retries.
    let resp = server
        .post_events(&token, &Value::Array(gen_events(10_000, 1)))
        .await;
    let (status, body) = json_answer("POST /v1/events", resp).await;
    assert_eq!(status, 413, "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("admission.max_buffered_mb"), "{message}");

    assert_all_stored(&mut server, &token, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_bus_inbox_answers_429_and_loses_nothing_acknowledged() {
    let mut server = server_with(2, "BUS_CAPACITY", 1).await;
    // Requests land on both cells; those on cell 1 hop to cell 0's inbox.
    let org = org_owned_by("adm-bus", 0, 2);
    let token = server.token(&org, Role::Operator);

    let ledger = flood(&server, &token, 32, 4, 5, |l| {
        l.refused_on_both("admission.bus_capacity")
    })
    .await;
    ledger.assert_all_name("admission.bus_capacity");
    assert!(!ledger.acked().is_empty(), "writes were accepted too");
    assert_all_stored(&mut server, &token, &ledger.acked()).await;
}
