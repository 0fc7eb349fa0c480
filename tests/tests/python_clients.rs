//! Unmodified Python clients against the real server: pyarrow Flight (DoPut,
//! GetFlightInfo, DoGet at the returned location) and ADBC Flight SQL. This
//! is the README's Python example, run as a script.

use std::process::Command;

use honeycell_auth::Role;
use honeycell_tests::{TestServer, owner_of, workspace_root};
use serde_json::Value;

#[tokio::test]
async fn pyarrow_flight_and_adbc_flight_sql_work_unmodified() {
    let probe = Command::new("python3")
        .args(["-c", "import pyarrow.flight, adbc_driver_flightsql"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "python3 with pyarrow and adbc-driver-flightsql is needed: scripts/test installs them \
             (pip install -r tests/python/requirements.txt)"
        ),
    }
    let server = TestServer::builder().cells(2).start().await;
    let token = server.token("py-org", Role::Admin);
    let script = workspace_root().join("tests/python/clients.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(server.ports().flight.to_string())
        .arg(&token)
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clients.py failed: {}\n{stdout}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("clients.py prints JSON");
    assert_eq!(seen["put_ack"]["accepted"], 3, "{seen}");
    // GetFlightInfo pointed at the owning cell's own port.
    let owner = owner_of("py-org", 2);
    assert_eq!(seen["location"], server.cell_location(owner), "{seen}");
    assert_eq!(seen["doget_rows"], 2, "{seen}");
    assert_eq!(
        seen["doget_entity_ids"],
        serde_json::json!(["py-1", "py-1"])
    );
    assert_eq!(seen["doget_columns"][0], "event_id");
    assert_eq!(
        seen["sql_counts"],
        serde_json::json!([{"entity_type": "invoice", "n": 1}, {"entity_type": "order", "n": 2}])
    );
    // And the HTTP API sees the same three events.
    assert_eq!(server.count_http(&token).await, 3);
}
