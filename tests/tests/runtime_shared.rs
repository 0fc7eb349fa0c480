//! `--runtime shared`: the conventional work-stealing configuration of the
//! same binary that the benchmarks compare the cells against. It must be a
//! real, correct server: the same rows through every protocol, the same
//! limits, the same clean shutdown.

use honeycell_auth::Role;
use honeycell_tests::{Row, TestServer, by_id, checksum, gen_events};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_runtime_serves_every_protocol_and_stops_cleanly() {
    let mut server = TestServer::builder()
        .cells(2)
        .arg("--runtime")
        .arg("shared")
        .start()
        .await;
    assert_eq!(
        server.ports().flight_cells.len(),
        1,
        "one owner, one location"
    );
    let token = server.token("shared-a", Role::Admin);
    let other = server.token("shared-b", Role::Admin);
    let sent = server.ingest(&token, &gen_events(250, 7)).await;
    server.ingest(&other, &gen_events(40, 8)).await;
    assert_eq!(sent.len(), 250);

    let http = by_id(
        server
            .all_events_http(&token, "", 100)
            .await
            .iter()
            .map(Row::from_http),
    );
    let (location, batches) = server.flight_query(&token, None).await;
    assert_eq!(location, server.cell_location(0));
    let flight = by_id(Row::from_batches(&batches));
    let sql = by_id(Row::from_batches(
        &server
            .sql(&token, "SELECT * FROM events")
            .await
            .expect("sql"),
    ));
    assert_eq!(http.len(), 250);
    assert_eq!(checksum(&http), checksum(&flight));
    assert_eq!(checksum(&http), checksum(&sql));
    assert!(
        http.keys().all(|id| sent.contains(id)),
        "only org a's events"
    );

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("route=\"POST /v1/events\",status=\"200\"}"),
        "shared-mode metrics count requests:\n{metrics}"
    );
    let status = server.sigterm().await;
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    server.restart().await;
    assert_eq!(server.count_http(&token).await, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_runtime_enforces_rate_limits_with_retry_after() {
    let server = TestServer::builder()
        .cells(2)
        .arg("--runtime")
        .arg("shared")
        .env("HONEYCELL_RATE_LIMITING__ORG_MAX_QPS", 3)
        .env("HONEYCELL_RATE_LIMITING__BURST_SECONDS", 1)
        .start()
        .await;
    let token = server.token("limited", Role::Admin);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let r = server
            .http()
            .get(server.url("/v1/events"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("request");
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").cloned();
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    assert!(retry_after.is_some(), "429 carries Retry-After");
    // Another org has its own bucket.
    let fine = server.token("unlimited", Role::Viewer);
    let (status, _) = server.get_events(&fine, "").await;
    assert_eq!(status, 200);
}
