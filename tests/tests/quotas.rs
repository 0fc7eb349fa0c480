//! Quota tiers end to end on PostgreSQL (so that `honeycell orgs set-tier`
//! runs beside the server): the storage quota refuses ingest with 403
//! `quota_exceeded` once an org's stored bytes reach it, keeps what was
//! accepted, touches no other org, is audited, and lifts when the org moves
//! to a larger tier; a tier's `max_qps` replaces the server-wide org rate.

use std::time::{Duration, Instant};

use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

const TIERS: &str = r#"
[control]
default_tier = "free"
signing_key_reload = "1s"

[control.tiers.free]
max_storage_gb = 0.00003   # 30 kB
max_qps = 1000

[control.tiers.pro]
max_storage_gb = 10.0

[control.tiers.slow]
max_qps = 2
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_quota_and_tier_rates_are_enforced() {
    let pg = TestPostgres::start();
    let url = pg.database("hc");
    let server = TestServer::builder()
        .cells(2)
        .toml(TIERS)
        .postgres(&url)
        .start()
        .await;
    let set_tier = |org: &str, tier: &str| {
        let out = honeycell_command()
            .args(["orgs", "set-tier", org, tier])
            .arg("--config")
            .arg(server.dir().join("honeycell.toml"))
            .env("HONEYCELL_CONTROL__STORE", "postgres")
            .env("HONEYCELL_CONTROL__POSTGRES_URL", &url)
            .output()
            .expect("honeycell orgs set-tier");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };

    // Ingest 50-event batches until the free tier's 30 kB are used up.
    let small = server.token("small-co", Role::Operator);
    let mut accepted = 0usize;
    let refusal = loop {
        let resp = server
            .post_events(&small, &Value::Array(gen_events(50, accepted as u64)))
            .await;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("JSON");
        match status {
            200 => accepted += 50,
            403 => break body,
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(accepted < 10_000, "the quota never applied");
    };
    assert!(accepted > 0, "some batches fit under 30 kB");
    assert_eq!(refusal["error"]["code"], "quota_exceeded", "{refusal}");
    let msg = refusal["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("max_storage_gb") && msg.contains("larger tier"),
        "{msg}"
    );
    assert_eq!(
        server.count_http(&small).await,
        accepted,
        "nothing accepted is lost"
    );
    // GraphQL ingest is refused the same way; reads go on.
    let (_, body) = server
        .graphql(
            &small,
            "mutation { ingestEvents(events: [{eventType: INSERT, entityType: \"o\", entityId: \"1\"}]) { accepted } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "quota_exceeded",
        "{body}"
    );
    let (status, _) = server.get_events(&small, "limit=1").await;
    assert_eq!(status, 200);

    // Another org on the same tier has its own quota.
    let other = server.token("other-co", Role::Operator);
    server.ingest_n(&other, 50, 9).await;

    // The refusal is in the org's audit log.
    let entries = server
        .audit_until("small-co", Some("quota.exceeded"), |e| !e.is_empty())
        .await;
    assert!(
        entries[0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("max_storage_gb"),
        "{entries:?}"
    );
    assert!(
        server
            .metrics()
            .await
            .contains("honeycell_quota_rejected_total")
    );

    // A larger tier lifts the limit (cells re-read tiers within 5 s).
    let (ok, text) = set_tier("small-co", "pro");
    assert!(ok, "{text}");
    assert!(text.contains("small-co is on tier pro"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = server
            .post_events(&small, &Value::Array(gen_events(5, 77)))
            .await;
        if resp.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the new tier never applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, text) = set_tier("small-co", "platinum");
    assert!(!ok && text.contains("unknown tier \"platinum\""), "{text}");

    // A tier's max_qps replaces the server-wide org rate.
    let (ok, text) = set_tier("slowpoke", "slow");
    assert!(ok, "{text}");
    let slow = server.token("slowpoke", Role::Viewer);
    let mut limited = 0;
    let mut retry_after = false;
    for _ in 0..20 {
        let resp = server
            .http()
            .get(server.url("/v1/events?limit=1"))
            .bearer_auth(&slow)
            .send()
            .await
            .expect("GET");
        if resp.status() == 429 {
            limited += 1;
            retry_after |= resp.headers().contains_key("retry-after");
        }
    }
    assert!(
        limited >= 10,
        "2 req/s with a 4-request burst: most of 20 refused, got {limited}"
    );
    assert!(retry_after, "429s carry Retry-After");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_tiers_concurrency_get_429_and_slots_are_released() {
    let server = TestServer::builder()
        .cells(2)
        .toml(
            r#"
[control]
default_tier = "tight"
[control.tiers.tight]
max_concurrent_requests = 1
"#,
        )
        .start()
        .await;
    let token = server.token("busy-co", Role::Operator);
    // 24 concurrent 2,000-event ingests: each waits for its fsync, so they
    // overlap on the owning cell.
    let mut tasks = Vec::new();
    for i in 0..24u64 {
        let client = reqwest::Client::new();
        let url = server.url("/v1/events");
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&Value::Array(gen_events(2_000, i)))
                .send()
                .await
                .expect("POST");
            let status = resp.status().as_u16();
            let retry = resp.headers().contains_key("retry-after");
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (status, retry, body) = t.await.expect("task");
        match status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert!(retry, "Retry-After on {body}");
                assert_eq!(
                    body["error"]["code"], "too_many_concurrent_requests",
                    "{body}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok >= 1, "at least the first is served");
    assert!(
        refused >= 1,
        "24 overlapping requests against a limit of 1: some refused"
    );
    assert_eq!(
        server.count_http(&token).await,
        ok * 2_000,
        "every accepted batch stored"
    );
    // Slots are released: one at a time, everything passes.
    for i in 0..5 {
        let resp = server
            .post_events(&token, &Value::Array(gen_events(10, 100 + i)))
            .await;
        assert_eq!(resp.status(), 200);
    }
}
