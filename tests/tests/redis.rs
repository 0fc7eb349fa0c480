//! The server's Redis connection (for the job queue), against throwaway
//! `redis-server`s: plaintext and `rediss://` with a private CA are
//! reported ready; a certificate from an unknown CA or a Redis that went
//! away is reported as degraded while everything else keeps serving.

use std::time::{Duration, Instant};

use honeycell_auth::Role;
use honeycell_tests::{TestCa, TestRedis, TestServer, gen_events};
use serde_json::Value;

async fn ready(server: &TestServer) -> (u16, Value) {
    let resp = server
        .http()
        .get(server.url("/ready"))
        .send()
        .await
        .expect("GET /ready");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_redis_are_reported_ready() {
    let plain = TestRedis::start();
    let server = TestServer::builder()
        .env("HONEYCELL_REDIS_URL", plain.url())
        .start()
        .await;
    let (status, body) = ready(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redis"]["status"], "ok", "{body}");
    assert_eq!(body["redis"]["tls"], false);
    drop(server);

    let ca = TestCa::new("redis CA");
    let secure = TestRedis::start_tls(&ca);
    let ca_path = secure.dir().join("ca.pem");
    let server = TestServer::builder()
        .toml(&format!(
            "redis_url = \"{}\"\nredis_ca_path = {:?}\n",
            secure.url(),
            ca_path.display().to_string()
        ))
        .start()
        .await;
    let (status, body) = ready(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redis"]["status"], "ok", "{body}");
    assert_eq!(body["redis"]["tls"], true);
    assert!(body.get("degraded").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_or_lost_redis_degrades_but_the_server_keeps_serving() {
    // rediss:// to a Redis whose certificate comes from a CA we do not trust.
    let secure = TestRedis::start_tls(&TestCa::new("redis CA"));
    let stranger = TestCa::new("some other CA");
    let certs = tempfile::tempdir().expect("temp dir");
    let other_ca = certs.path().join("other-ca.pem");
    std::fs::write(&other_ca, &stranger.cert_pem).expect("write CA");
    let server = TestServer::builder()
        .toml(&format!(
            "redis_url = \"{}\"\nredis_ca_path = {:?}\n",
            secure.url(),
            other_ca.display().to_string()
        ))
        .start()
        .await;
    let (status, body) = ready(&server).await;
    assert_eq!(status, 200, "Redis trouble is not unreadiness: {body}");
    assert_eq!(body["degraded"], true, "{body}");
    assert_eq!(body["redis"]["status"], "unavailable", "{body}");
    let error = body["redis"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("rediss://localhost"), "{body}");
    let token = server.token("acme", Role::Operator);
    server.ingest(&token, &gen_events(5, 1)).await;
    drop(server);

    // A Redis that goes away after start: reported, then back when it returns
    // (the connection reconnects by itself).
    let mut plain = Some(TestRedis::start());
    let port = plain.as_ref().map(|r| r.port).unwrap_or_default();
    let url = plain.as_ref().map(TestRedis::url).unwrap_or_default();
    let server = TestServer::builder()
        .env("HONEYCELL_REDIS_URL", &url)
        .start()
        .await;
    assert_eq!(ready(&server).await.1["redis"]["status"], "ok");
    plain = None;
    drop(plain);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = ready(&server).await;
        assert_eq!(status, 200, "{body}");
        if body["redis"]["status"] == "unavailable" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis loss never reported: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
        .ingest(&server.token("acme", Role::Operator), &gen_events(3, 2))
        .await;
    let _back = TestRedis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = ready(&server).await;
        if body["redis"]["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "Redis never came back: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn redis_settings_that_do_not_fit_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (toml, expect) in [
        ("redis_url = \"http://cache:6379\"\n", "rediss://"),
        (
            "redis_url = \"redis://cache:6379\"\nredis_ca_path = \"/tmp/ca.pem\"\n",
            "rediss://",
        ),
        ("redis_ca_path = \"/tmp/ca.pem\"\n", "redis_url is not"),
        (
            "redis_url = \"rediss://cache:6380\"\nredis_ca_path = \"/nonexistent/ca.pem\"\n",
            "/nonexistent/ca.pem",
        ),
    ] {
        let (ok, err) = honeycell_tests::check_config(dir.path(), toml);
        assert!(!ok && err.contains(expect), "{toml}: {err}");
    }
}
