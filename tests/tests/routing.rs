//! Routing across cells: requests landing on any cell reach the owning cell
//! over the bus, Flight locations always name the owner's per-cell port, and
//! the metrics show the hops.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use arrow_flight::{FlightDescriptor, Ticket};
use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::Value;

fn put_batch(tag: &str, n: usize) -> RecordBatch {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("event_type", Arc::new(StringArray::from(vec!["INSERT"; n]))),
        (
            "entity_type",
            Arc::new(StringArray::from(vec!["routed"; n])),
        ),
        ("entity_id", Arc::new(StringArray::from(ids))),
    ];
    let schema = Schema::new(
        cols.iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect())
        .expect("batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_any_cell_reach_the_owner_and_hop_over_the_bus() {
    let server = TestServer::builder().cells(2).start().await;
    let orgs = [org_owned_by("route", 0, 2), org_owned_by("route", 1, 2)];
    let tokens = [
        server.token(&orgs[0], Role::Operator),
        server.token(&orgs[1], Role::Operator),
    ];
    let mut expected: [BTreeSet<String>; 2] = Default::default();

    // HTTP on the shared port, one new connection per request, so that
    // SO_REUSEPORT spreads them over both cells.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    for round in 0..20 {
        for (o, token) in tokens.iter().enumerate() {
            let events = gen_events(3, round);
            let resp = fresh
                .post(server.url("/v1/events"))
                .bearer_auth(token)
                .json(&events)
                .send()
                .await
                .expect("POST");
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.expect("JSON");
            expected[o].extend(string_list(&body["event_ids"]));
        }
    }
    for (o, token) in tokens.iter().enumerate() {
        for _ in 0..10 {
            let resp = fresh
                .get(server.url("/v1/events?limit=1000"))
                .bearer_auth(token)
                .send()
                .await
                .expect("GET");
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.expect("JSON");
            let got: BTreeSet<String> = body["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["event_id"].as_str().expect("id").to_owned())
                .collect();
            assert_eq!(got, expected[o], "HTTP read of org {o}");
        }
    }
    let m = server.metrics().await;
    for cell in 0..2 {
        let landed = metric_sum(
            &m,
            "honeycell_requests_total",
            &[
                &format!("cell=\"{cell}\""),
                "route=\"POST /v1/events\"",
                "status=\"200\"",
            ],
        );
        assert!(
            landed > 0.0,
            "cell {cell} accepted no HTTP connection on the shared port:\n{m}"
        );
    }

    // Flight DoPut and DoGet on every per-cell port, owner or not.
    for (o, token) in tokens.iter().enumerate() {
        for cell in 0..2 {
            let mut client = server.flight_at(server.cell_port(cell), Some(token)).await;
            let batch = put_batch(&format!("org{o}-via{cell}"), 25);
            let res = do_put_all(&mut client, vec![batch])
                .await
                .expect("DoPut on a per-cell port");
            assert_eq!(put_metadata(&res[0])["accepted"], 25);
            let rows = Row::from_batches(
                &do_get_all(&mut client, Ticket::new("{}"))
                    .await
                    .expect("DoGet"),
            );
            assert!(rows.iter().all(|r| r.org_id == orgs[o]));
            let ids: BTreeSet<String> = rows.iter().map(|r| r.event_id.clone()).collect();
            assert!(
                ids.is_superset(&expected[o]),
                "DoGet via cell {cell} misses events of org {o}"
            );
            expected[o] = ids;
            let routed = rows
                .iter()
                .filter(|r| r.entity_id.starts_with(&format!("org{o}-via{cell}-")))
                .count();
            assert_eq!(routed, 25, "the DoPut via cell {cell} is visible");
        }
        assert_eq!(expected[o].len(), 60 + 50);
    }

    let m = server.metrics().await;
    // orgs[i] is owned by cell i, so expected[i] holds cell i's events.
    for (cell, owned) in expected.iter().enumerate() {
        let c = format!("cell=\"{cell}\"");
        let out = metric_sum(&m, "honeycell_bus_hops_out_total", &[&c]);
        let inn = metric_sum(&m, "honeycell_bus_hops_in_total", &[&c]);
        assert!(out > 0.0, "cell {cell} handed nothing over the bus:\n{m}");
        assert!(inn > 0.0, "cell {cell} received nothing over the bus:\n{m}");
        // Events are counted by the owning cell only.
        let ingested = metric_sum(&m, "honeycell_events_ingested_total", &[&c]);
        assert_eq!(
            ingested as usize,
            owned.len(),
            "events ingested by cell {cell}"
        );
        let doget = metric_sum(
            &m,
            "honeycell_requests_total",
            &[&c, "route=\"flight.DoGet\"", "status=\"200\""],
        );
        assert!(
            doget >= 2.0,
            "DoGets on cell {cell}'s port are recorded on cell {cell}"
        );
    }
    let hops_out: f64 = metric_sum(&m, "honeycell_bus_hops_out_total", &[]);
    let hops_in: f64 = metric_sum(&m, "honeycell_bus_hops_in_total", &[]);
    // Every hop out is a hop in somewhere (metrics scrapes hop too).
    assert!(
        hops_in >= hops_out - 2.0 && hops_in > 0.0,
        "in {hops_in} out {hops_out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_info_location_is_always_the_owners_port() {
    let server = TestServer::builder().cells(3).start().await;
    assert_eq!(server.ports().cells, 3);
    assert_eq!(server.ports().flight_cells.len(), 3);
    let distinct: BTreeSet<u16> = server.ports().flight_cells.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "per-cell ports are distinct");
    assert!(!distinct.contains(&server.ports().flight));

    let orgs: Vec<String> = (0..3)
        .map(|c| org_owned_by("loc", c, 3))
        .chain(["loc-x".into(), "loc-y".into()])
        .collect();
    let mut ports = vec![server.ports().flight];
    ports.extend(server.ports().flight_cells.iter().copied());
    for org in &orgs {
        let owner = owner_of(org, 3);
        let token = server.token(org, Role::Viewer);
        server
            .ingest_n(&server.token(org, Role::Operator), 3, 0)
            .await;
        for &port in &ports {
            let mut client = server.flight_at(port, Some(&token)).await;
            for descriptor in [
                FlightDescriptor::new_path(vec!["events".into()]),
                FlightDescriptor::new_cmd(r#"{"entity_type":"order"}"#),
            ] {
                let info = client
                    .get_flight_info(descriptor)
                    .await
                    .expect("GetFlightInfo");
                assert_eq!(info.endpoint.len(), 1);
                let uris: Vec<&str> = info.endpoint[0]
                    .location
                    .iter()
                    .map(|l| l.uri.as_str())
                    .collect();
                assert_eq!(
                    uris,
                    vec![server.cell_location(owner).as_str()],
                    "{org} asked on port {port}"
                );
            }
            let who = action_json(&mut client, "whoami").await;
            assert_eq!(who["owner_cell"], owner as u64, "{who}");
            assert_eq!(who["location"], server.cell_location(owner), "{who}");
        }
        // Flight SQL endpoints name the owner too.
        let mut sql = server.flight_sql(&token).await;
        let info = sql
            .execute("SELECT COUNT(*) FROM events".into(), None)
            .await
            .expect("execute");
        let uris: Vec<String> = info
            .endpoint
            .iter()
            .flat_map(|e| e.location.iter().map(|l| l.uri.clone()))
            .collect();
        assert_eq!(
            uris,
            vec![server.cell_location(owner)],
            "Flight SQL location of {org}"
        );
    }
}
