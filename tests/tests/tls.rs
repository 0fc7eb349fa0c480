//! TLS on HTTP and Arrow Flight, against the real binary with certificates
//! made at run time: the happy path over both protocols, plaintext and
//! wrong-CA clients refused, mutual TLS for Flight (missing or foreign
//! client certificates refused), and certificate reload without a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use honeycell_auth::Role;
use honeycell_tests::{TestCa, TestServer, TlsClient, do_get_all, gen_events, location_port};

/// Writes `text` to `dir/name` atomically (as a deploy tool would).
fn put(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).expect("write a PEM file");
    std::fs::rename(&tmp, &path).expect("rename a PEM file");
    path
}

/// A server certificate from `ca` for localhost, written into `dir`; the
/// `[tls]` TOML naming it, plus `extra` lines.
fn server_tls(ca: &TestCa, dir: &Path, extra: &str) -> String {
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let cert = put(dir, "server.pem", &cert);
    let key = put(dir, "server-key.pem", &key);
    format!(
        "[tls]\ncert_path = {:?}\nkey_path = {:?}\n{extra}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn trusting(ca: &TestCa) -> TlsClient {
    TlsClient {
        ca_pem: ca.cert_pem.clone(),
        identity: None,
    }
}

/// Whether a `ListFlights`-free, cheap Flight call gets through: a
/// GetFlightInfo with the caller's token.
async fn flight_call_works(client: &TlsClient, port: u16, token: &str) -> Result<(), String> {
    let channel = client.channel(port).await.map_err(|e| format!("{e:?}"))?;
    let mut flight = arrow_flight::FlightClient::new(channel);
    flight
        .add_header("authorization", &format!("Bearer {token}"))
        .map_err(|e| e.to_string())?;
    flight
        .get_flight_info(arrow_flight::FlightDescriptor::new_path(vec![
            "events".into(),
        ]))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn http_and_flight_serve_tls_and_refuse_plaintext_and_unknown_cas() {
    let ca = TestCa::new("honeycell test CA");
    let certs = tempfile::tempdir().expect("temp dir");
    let server = TestServer::builder()
        .toml(&server_tls(&ca, certs.path(), ""))
        .tls_client(trusting(&ca))
        .start()
        .await;
    let token = server.token("tls-org", Role::Operator);

    // HTTPS ingest, then a Flight read over TLS at the advertised location.
    let sent = gen_events(25, 7);
    server.ingest(&token, &sent).await;
    let (location, batches) = server.flight_query(&token, None).await;
    assert!(
        location.starts_with("grpc+tls://"),
        "a TLS server advertises grpc+tls locations, got {location}"
    );
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(
        rows, 25,
        "every event ingested over HTTPS reads back over Flight/TLS"
    );
    // Flight SQL over TLS too, through the per-cell location it answers with.
    let counted = server
        .sql(&token, "SELECT count(*) AS n FROM events")
        .await
        .expect("Flight SQL over TLS");
    assert_eq!(counted.iter().map(|b| b.num_rows()).sum::<usize>(), 1);

    // Plaintext HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/health", server.ports().http))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plaintext HTTP must not be served on a TLS port: {plain:?}"
    );
    // Plaintext gRPC: the call fails.
    let mut plain_flight = honeycell_tests::flight_client_lazy(server.ports().flight, &token);
    let refused = plain_flight
        .get_flight_info(arrow_flight::FlightDescriptor::new_path(vec![
            "events".into(),
        ]))
        .await;
    assert!(
        refused.is_err(),
        "plaintext gRPC must be refused: {refused:?}"
    );

    // A client that trusts another CA refuses the server's certificate.
    let stranger = trusting(&TestCa::new("some other CA"));
    let wrong = stranger.reqwest().get(server.url("/health")).send().await;
    assert!(
        wrong.is_err(),
        "a certificate from an unknown CA must fail: {wrong:?}"
    );
    assert!(
        flight_call_works(&stranger, server.ports().flight, &token)
            .await
            .is_err(),
        "Flight with an untrusted server certificate must fail"
    );

    // Authentication still applies on top of TLS.
    let resp = server
        .http()
        .get(server.url("/v1/events"))
        .send()
        .await
        .expect("GET over HTTPS");
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn flight_mutual_tls_needs_a_client_certificate_from_the_client_ca() {
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let certs = tempfile::tempdir().expect("temp dir");
    let client_ca_path = put(certs.path(), "client-ca.pem", &client_ca.cert_pem);
    let toml = server_tls(
        &server_ca,
        certs.path(),
        &format!(
            "client_ca_path = {:?}\nrequire_client_cert = true",
            client_ca_path.display().to_string()
        ),
    );
    let with_cert = TlsClient {
        ca_pem: server_ca.cert_pem.clone(),
        identity: Some(client_ca.client("analytics-service")),
    };
    let server = TestServer::builder()
        .toml(&toml)
        .tls_client(with_cert.clone())
        .start()
        .await;
    let token = server.token("mtls-org", Role::Operator);
    server.ingest(&token, &gen_events(10, 3)).await;

    // With a certificate from the client CA: Flight works end to end,
    // including DoGet at the per-cell location.
    let (location, batches) = server.flight_query(&token, None).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
    assert!(location.starts_with("grpc+tls://"), "{location}");
    let mut at = server
        .flight_at(location_port(&location), Some(&token))
        .await;
    let info = at
        .get_flight_info(arrow_flight::FlightDescriptor::new_path(vec![
            "events".into(),
        ]))
        .await
        .expect("GetFlightInfo with a client certificate");
    let ticket = info.endpoint[0].ticket.clone().expect("a ticket");
    assert_eq!(
        do_get_all(&mut at, ticket)
            .await
            .expect("DoGet with a client certificate")
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        10
    );

    // Without a client certificate: refused, on the shared and per-cell ports.
    let anonymous = trusting(&server_ca);
    for port in [server.ports().flight, server.cell_port(0)] {
        let r = flight_call_works(&anonymous, port, &token).await;
        assert!(
            r.is_err(),
            "Flight without a client certificate on {port}: {r:?}"
        );
    }
    // With a certificate from another CA: refused.
    let foreign = TlsClient {
        ca_pem: server_ca.cert_pem.clone(),
        identity: Some(TestCa::new("rogue CA").client("intruder")),
    };
    let r = flight_call_works(&foreign, server.ports().flight, &token).await;
    assert!(r.is_err(), "a client certificate from another CA: {r:?}");
    // The good client still works after the refusals.
    flight_call_works(&with_cert, server.ports().flight, &token)
        .await
        .expect("Flight with the client certificate");

    // HTTP does not ask for client certificates.
    let resp = anonymous
        .reqwest()
        .get(server.url("/ready"))
        .send()
        .await
        .expect("HTTPS without a client certificate");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn certificates_reload_without_a_restart_and_a_broken_file_keeps_the_old_one() {
    let first_ca = TestCa::new("first CA");
    let second_ca = TestCa::new("second CA");
    let certs = tempfile::tempdir().expect("temp dir");
    let server = TestServer::builder()
        .toml(&server_tls(
            &first_ca,
            certs.path(),
            "reload_interval = \"200ms\"",
        ))
        .tls_client(trusting(&first_ca))
        .start()
        .await;
    let token = server.token("reload-org", Role::Viewer);
    let pid = server.pid();

    // Deploy a certificate from the second CA over the files in place.
    let (cert, key) = second_ca.leaf(&["localhost", "127.0.0.1"]);
    put(certs.path(), "server-key.pem", &key);
    put(certs.path(), "server.pem", &cert);

    let second = trusting(&second_ca);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let https = second.reqwest().get(server.url("/ready")).send().await;
        let flight = flight_call_works(&second, server.ports().flight, &token).await;
        if https.as_ref().is_ok_and(|r| r.status() == 200) && flight.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 20 s: https {https:?}, flight {flight:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.pid(), pid, "same process: reloaded, not restarted");
    // New connections no longer get the old certificate.
    let old = trusting(&first_ca)
        .reqwest()
        .get(server.url("/ready"))
        .send()
        .await;
    assert!(
        old.is_err(),
        "the replaced certificate is still served: {old:?}"
    );

    // A broken certificate file: logged, and the server keeps serving the
    // second certificate.
    put(
        certs.path(),
        "server.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains("TLS reload failed") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let still = second
        .reqwest()
        .get(server.url("/ready"))
        .send()
        .await
        .expect("HTTPS with the last good certificate");
    assert_eq!(still.status(), 200);
    flight_call_works(&second, server.ports().flight, &token)
        .await
        .expect("Flight with the last good certificate");
}

#[test]
fn tls_settings_that_do_not_fit_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let check = |toml: &str| honeycell_tests::check_config(dir.path(), toml);
    let (ok, out) = check("[tls]\ncert_path = \"/tmp/x.pem\"\n");
    assert!(!ok && out.contains("key_path"), "{out}");
    let (ok, out) = check(
        "[tls]\ncert_path = \"/nonexistent/cert.pem\"\nkey_path = \"/nonexistent/key.pem\"\n",
    );
    assert!(
        !ok && out.contains("tls.cert_path") && out.contains("/nonexistent/cert.pem"),
        "{out}"
    );
    let ca = TestCa::new("check CA");
    let toml = server_tls(&ca, dir.path(), "require_client_cert = true");
    let (ok, out) = check(&toml);
    assert!(!ok && out.contains("client_ca_path"), "{out}");
    // The key of another certificate.
    let (_, other_key) = ca.leaf(&["localhost"]);
    put(dir.path(), "server-key.pem", &other_key);
    let toml = format!(
        "[tls]\ncert_path = {:?}\nkey_path = {:?}\n",
        dir.path().join("server.pem").display().to_string(),
        dir.path().join("server-key.pem").display().to_string()
    );
    let (ok, out) = check(&toml);
    assert!(!ok && out.contains("do not make a usable pair"), "{out}");
    // A good pair passes and says TLS is on.
    let toml = server_tls(&ca, dir.path(), "");
    let (ok, out) = check(&toml);
    assert!(ok && out.contains("tls on"), "{out}");
}
