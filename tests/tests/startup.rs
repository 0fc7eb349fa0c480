//! Start-up and failure of the process as a whole: one server per data
//! directory, one server per port, every cell open before any serves, and a
//! cell that fails while serving takes the process down (status 1, after
//! the other cells drained) rather than leaving it half alive.
//!
//! The cell faults use the test-only switch `HONEYCELL_TEST_FAULT` of debug
//! builds (`server/src/fault.rs`).

use std::time::Duration;

use honeycell_auth::Role;
use honeycell_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_exits_2_naming_the_holder() {
    let mut first = TestServer::builder().cells(1).start().await;
    let token = first.token("lock-org", Role::Admin);
    first.ingest_n(&token, 20, 1).await;

    let second = TestServer::builder()
        .cells(1)
        .data_dir(&first.data_dir())
        .start_expecting_exit()
        .await;
    assert_eq!(second.status.code(), Some(2), "{}", second.log);
    let expected = format!(
        "data dir {} is in use by pid {}",
        first.data_dir().display(),
        first.pid()
    );
    assert!(
        second.log.contains(&expected),
        "{expected:?} in:\n{}",
        second.log
    );

    // The first server was not disturbed.
    assert_eq!(first.count_http(&token).await, 20);
    // The lock goes with the process, even killed: the data dir (with its
    // stale LOCK file) is free for the next server.
    first.kill9();
    first.restart().await;
    assert_eq!(first.count_http(&token).await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_served_port_exits_2_naming_the_address() {
    let first = TestServer::builder().cells(2).start().await;
    let token = first.token("port-org", Role::Admin);
    first.ingest_n(&token, 10, 1).await;
    let ports = first.ports().clone();
    let holder = format!("pid {}", first.pid());

    // The shared ports: SO_REUSEPORT would let the second server join them.
    let http = TestServer::builder()
        .cells(2)
        .http_port(ports.http)
        .start_expecting_exit()
        .await;
    assert_eq!(http.status.code(), Some(2), "{}", http.log);
    let addr = format!(
        "http: 127.0.0.1:{} is already served by another process",
        ports.http
    );
    assert!(http.log.contains(&addr), "{addr:?} in:\n{}", http.log);
    assert!(http.log.contains(&holder), "{holder:?} in:\n{}", http.log);

    let flight = TestServer::builder()
        .cells(2)
        .flight_port(ports.flight)
        .start_expecting_exit()
        .await;
    assert_eq!(flight.status.code(), Some(2), "{}", flight.log);
    let addr = format!(
        "flight: 127.0.0.1:{} is already served by another process",
        ports.flight
    );
    assert!(flight.log.contains(&addr), "{addr:?} in:\n{}", flight.log);

    // A cell's own Flight port (bound without SO_REUSEPORT).
    let cell_port = ports.flight_cells[1];
    let cell = TestServer::builder()
        .cells(1)
        .toml(&format!("flight_cell_base_port = {cell_port}"))
        .start_expecting_exit()
        .await;
    assert_eq!(cell.status.code(), Some(2), "{}", cell.log);
    let addr = format!("127.0.0.1:{cell_port} is already in use by {holder}");
    assert!(cell.log.contains(&addr), "{addr:?} in:\n{}", cell.log);

    // The first server still serves every connection.
    for _ in 0..20 {
        let resp = first
            .http()
            .get(first.url("/ready"))
            .send()
            .await
            .expect("GET /ready");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(first.count_http(&token).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_fails_to_open_its_services_stops_the_start_naming_it() {
    let exited = TestServer::builder()
        .cells(2)
        .env("HONEYCELL_TEST_FAULT", "cell_open:1")
        .start_expecting_exit()
        .await;
    assert_eq!(exited.status.code(), Some(2), "{}", exited.log);
    // The whole chain: which cell, then why.
    let chain = "cannot start the cells: cell-1 failed to open: test fault HONEYCELL_TEST_FAULT=cell_open:1";
    assert!(exited.log.contains(chain), "{chain:?} in:\n{}", exited.log);
    assert!(!exited.log.contains("honeycell serving"), "{}", exited.log);

    // The baseline runtime opens its servers the same way.
    let shared = TestServer::builder()
        .cells(2)
        .arg("--runtime")
        .arg("shared")
        .env("HONEYCELL_TEST_FAULT", "cell_open:0")
        .start_expecting_exit()
        .await;
    assert_eq!(shared.status.code(), Some(2), "{}", shared.log);
    assert!(
        shared.log.contains("cell-0 failed to open: test fault"),
        "{}",
        shared.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_whose_storage_cannot_open_stops_the_start_naming_it() {
    // A genuinely broken data dir: one of cell 1's orgs has a file where its
    // WAL directory should be.
    let data = tempfile::tempdir().expect("tempdir");
    let org = org_owned_by("broken", 1, 2);
    let org_dir = data.path().join("orgs").join(&org);
    std::fs::create_dir_all(org_dir.join("segments")).expect("create the org dir");
    std::fs::write(org_dir.join("wal"), b"not a directory").expect("write the file");

    let exited = TestServer::builder()
        .cells(2)
        .data_dir(data.path())
        .start_expecting_exit()
        .await;
    assert_eq!(exited.status.code(), Some(2), "{}", exited.log);
    assert!(
        exited.log.contains("cell-1 failed to open"),
        "{}",
        exited.log
    );
    let path = org_dir.join("wal").display().to_string();
    assert!(exited.log.contains(&path), "{path:?} in:\n{}", exited.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_arrow_panics_on_stops_the_start_as_corrupt_with_one_quiet_line() {
    // A segment file found by fuzzing, on which arrow's decoder panics: the
    // panic is caught (the file is corrupt, the start stops naming it), and
    // the log says so in one warning, not with a panic message on stderr.
    let data = tempfile::tempdir().expect("tempdir");
    let org = org_owned_by("damaged", 0, 2);
    let segments = data.path().join("orgs").join(&org).join("segments");
    std::fs::create_dir_all(&segments).expect("create the org dir");
    let segment = segments.join("seg-00000000000000000000-00000000000000000005.arrow");
    let crash = workspace_root()
        .join("fuzz/corpus/segment_file/crash-4b2d204b51a0637a8b901e5b53e03947fbe7564d");
    std::fs::copy(&crash, &segment).expect("plant the damaged segment");

    let exited = TestServer::builder()
        .cells(2)
        .data_dir(data.path())
        .start_expecting_exit()
        .await;
    assert_eq!(exited.status.code(), Some(2), "{}", exited.log);
    let path = segment.display().to_string();
    assert!(
        exited.log.contains(&format!("corrupt file {path}")),
        "{path:?} in:\n{}",
        exited.log
    );
    assert_eq!(
        exited
            .log
            .matches("arrow panicked decoding malformed input")
            .count(),
        1,
        "{}",
        exited.log
    );
    assert!(!exited.log.contains("panicked at"), "{}", exited.log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_that_panics_while_serving_stops_the_server_with_status_1() {
    let mut server = TestServer::builder()
        .cells(2)
        .env("HONEYCELL_TEST_FAULT", "cell_panic:1")
        .start()
        .await;
    // Acknowledged writes on both cells, before the failure.
    let on_0 = server.token(&org_owned_by("calm", 0, 2), Role::Admin);
    let on_1 = server.token(&org_owned_by("doomed", 1, 2), Role::Admin);
    server.ingest_n(&on_0, 30, 1).await;
    server.ingest_n(&on_1, 40, 2).await;

    let trigger = server.data_dir().join("test-fault-trigger");
    std::fs::write(&trigger, b"").expect("write the trigger");
    let status = server.wait_exit(STOP_DEADLINE).await;
    let log = server.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("cell-1 failed while serving")
            && log.contains("cell-1 panicked: test fault HONEYCELL_TEST_FAULT=cell_panic:1"),
        "{log}"
    );
    // The other cell drained and flushed before the exit.
    assert!(
        log.lines()
            .any(|l| l.contains("cell stopped; WAL flushed") && l.contains("cell-0")),
        "{log}"
    );

    // Nothing acknowledged was lost, on either cell.
    std::fs::remove_file(&trigger).expect("remove the trigger");
    server.restart().await;
    assert_eq!(server.count_http(&on_0).await, 30);
    assert_eq!(server.count_http(&on_1).await, 40);
    // And the restarted server serves until asked to stop, then exits 0.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.sigterm().await.code(), Some(0));
}
