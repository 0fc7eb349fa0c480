//! Operations: health, readiness, metrics, `check-config` and `token`; the
//! GraphiQL page served offline under a strict Content-Security-Policy; logs
//! without colour codes when they go to a file.

use std::process::Output;

use honeycell_auth::Role;
use honeycell_tests::*;
use serde_json::{Value, json};

const FAMILIES: [(&str, &str); 12] = [
    ("honeycell_requests_total", "counter"),
    ("honeycell_request_duration_seconds", "summary"),
    ("honeycell_events_ingested_total", "counter"),
    ("honeycell_bytes_ingested_total", "counter"),
    ("honeycell_admission_rejected_total", "counter"),
    ("honeycell_bus_hops_out_total", "counter"),
    ("honeycell_bus_hops_in_total", "counter"),
    ("honeycell_buffered_bytes", "gauge"),
    ("honeycell_queue_depth", "gauge"),
    ("honeycell_orgs_open", "gauge"),
    ("honeycell_stored_bytes", "gauge"),
    ("honeycell_rate_limited_total", "counter"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_count() {
    let server = TestServer::builder().cells(2).start().await;
    let health: Value = server
        .http()
        .get(server.url("/health"))
        .send()
        .await
        .expect("GET /health")
        .json()
        .await
        .expect("JSON");
    assert_eq!(health, json!({"status": "ok"}));
    let resp = server
        .http()
        .get(server.url("/ready"))
        .send()
        .await
        .expect("GET /ready");
    assert_eq!(resp.status(), 200);
    let ready: Value = resp.json().await.expect("JSON");
    assert_eq!(
        ready,
        json!({"status": "ready", "cells": 2, "control_store": "embedded"})
    );

    let resp = server
        .http()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ASCII")
            .starts_with("text/plain"),
        "Prometheus text content type"
    );
    let m0 = resp.text().await.expect("text");
    for (name, kind) in FAMILIES {
        assert_eq!(
            m0.matches(&format!("# TYPE {name} {kind}\n")).count(),
            1,
            "{name} {kind}:\n{m0}"
        );
        assert!(m0.contains(&format!("# HELP {name} ")), "{name} has HELP");
    }
    for cell in 0..2 {
        assert!(
            m0.contains(&format!(
                "honeycell_events_ingested_total{{cell=\"{cell}\"}} 0"
            )),
            "every cell reports, starting at 0:\n{m0}"
        );
    }

    let org = org_owned_by("ops", 1, 2);
    let token = server.token(&org, Role::Operator);
    server.ingest_n(&token, 4, 0).await;
    server.ingest_n(&token, 3, 1).await;
    let (status, _) = server.get_events(&token, "limit=0").await;
    assert_eq!(status, 400);
    let m1 = server.metrics().await;
    assert_eq!(
        metric_sum(&m1, "honeycell_events_ingested_total", &[]),
        7.0,
        "{m1}"
    );
    assert_eq!(
        metric_sum(&m1, "honeycell_events_ingested_total", &["cell=\"1\""]),
        7.0,
        "owner counts"
    );
    assert!(metric_sum(&m1, "honeycell_bytes_ingested_total", &["cell=\"1\""]) > 0.0);
    assert_eq!(
        metric_sum(&m1, "honeycell_orgs_open", &["cell=\"1\""]),
        1.0,
        "{m1}"
    );
    assert_eq!(
        metric_sum(
            &m1,
            "honeycell_requests_total",
            &["route=\"POST /v1/events\"", "status=\"200\""]
        ),
        2.0,
        "{m1}"
    );
    assert_eq!(
        metric_sum(
            &m1,
            "honeycell_requests_total",
            &["route=\"GET /v1/events\"", "status=\"400\""]
        ),
        1.0,
        "{m1}"
    );
    assert_eq!(
        metric_sum(
            &m1,
            "honeycell_request_duration_seconds_count",
            &["route=\"POST /v1/events\""]
        ),
        2.0,
        "{m1}"
    );
    // Metrics themselves are requests: /metrics was counted once before this scrape.
    assert!(metric_sum(&m1, "honeycell_requests_total", &["route=\"GET /metrics\""]) >= 1.0);

    // GraphiQL.
    let resp = server
        .http()
        .get(server.url("/graphql"))
        .send()
        .await
        .expect("GET /graphql");
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.expect("html");
    assert!(html.to_lowercase().contains("graphiql"), "GraphiQL page");
}

/// The values of `attr="…"` in `html`.
fn attribute_values(html: &str, attr: &str) -> Vec<String> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &html[i + needle.len()..];
            rest[..rest.find('"').expect("a closed attribute")].to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_is_served_from_the_binary_under_a_strict_csp() {
    let server = TestServer::builder().cells(1).start().await;
    let get = |path: String| {
        let req = server.http().get(server.url(&path));
        async move {
            req.send()
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        }
    };
    let header = |resp: &reqwest::Response, name: &str| -> String {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{} without {name}", resp.url()))
            .to_owned()
    };

    let page = get("/graphql".into()).await;
    assert_eq!(page.status(), 200);
    assert!(header(&page, "content-type").starts_with("text/html"));
    let csp = header(&page, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    for loose in ["http", "*", "unsafe-inline", "unsafe-eval"] {
        assert!(!csp.contains(loose), "{loose} in {csp}");
    }
    let html = page.text().await.expect("the page");
    assert!(
        !html.contains("://") && !html.contains("\"//"),
        "the page names no URL outside the server:\n{html}"
    );

    // Every script and stylesheet is served here, under the same policy;
    // GraphiQL and React are the vendored, pinned builds.
    let scripts = attribute_values(&html, "src");
    let styles: Vec<String> = attribute_values(&html, "href")
        .into_iter()
        .filter(|u| !u.starts_with("data:"))
        .collect();
    assert_eq!(
        scripts.len(),
        4,
        "React, ReactDOM, GraphiQL, start: {scripts:?}"
    );
    assert_eq!(styles.len(), 2, "{styles:?}");
    let vendor = workspace_root().join("api/vendor/graphiql");
    for (url, kind) in scripts
        .iter()
        .map(|u| (u, "text/javascript"))
        .chain(styles.iter().map(|u| (u, "text/css")))
    {
        assert!(url.starts_with('/') && !url.starts_with("//"), "{url}");
        let resp = get(url.clone()).await;
        assert_eq!(resp.status(), 200, "{url}");
        assert!(header(&resp, "content-type").starts_with(kind), "{url}");
        assert_eq!(header(&resp, "content-security-policy"), csp, "{url}");
        assert_eq!(header(&resp, "x-content-type-options"), "nosniff", "{url}");
        let body = resp.bytes().await.expect("asset body");
        assert!(!body.is_empty(), "{url}");
        let name = url.rsplit('/').next().expect("a file name");
        if let Ok(vendored) = std::fs::read(vendor.join(name)) {
            assert!(body == vendored, "{url} is not the vendored {name}");
        }
    }
    for name in [
        "graphiql.min.js",
        "react.production.min.js",
        "react-dom.production.min.js",
    ] {
        assert!(
            scripts.iter().any(|s| s.ends_with(&format!("/{name}"))),
            "{name} in {scripts:?}"
        );
    }

    // The licences travel with the code.
    let licence = get("/graphql/assets/LICENSE-graphiql".into()).await;
    assert_eq!(licence.status(), 200);
    assert!(licence.text().await.expect("text").contains("MIT License"));
    let (status, body) = json_answer(
        "an unknown asset",
        get("/graphql/assets/nope.js".into()).await,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    // The harness sends the server's stdout and stderr to a file. NO_COLOR
    // set but empty counts as unset, so only the terminal check keeps the
    // colours out.
    let server = TestServer::builder()
        .cells(1)
        .env("NO_COLOR", "")
        .start()
        .await;
    let token = server.token("log-org", Role::Operator);
    server.ingest_n(&token, 1, 0).await;
    let resp = server.post_events("not a token", &json!([])).await;
    assert_eq!(resp.status(), 401);
    let log = server.log();
    assert!(log.contains("honeycell serving"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "colour codes in a log written to a file:\n{}",
        log.escape_debug()
    );
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = honeycell_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run honeycell")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_config_accepts_a_valid_config_and_names_the_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let secret = random_secret();
    let base = ["check-config", "--data-dir", data, "--cells", "2"];
    let ok = run(&base, &[("HONEYCELL_JWT_SECRET", &secret)]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("configuration is valid") && out.contains("2 cells"),
        "{out}"
    );

    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write config");
        p.to_str().expect("utf-8").to_owned()
    };
    let good_file = file(
        "good.toml",
        "cells = 3\n[storage]\ndurability = \"interval\"\nfsync_interval_ms = 5\n[rate_limiting]\norg_max_qps = 10\n",
    );
    let o = run(
        &["check-config", "--config", &good_file, "--data-dir", data],
        &[("HONEYCELL_JWT_SECRET", &secret)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("3 cells"));

    let typo_storage = file("typo-storage.toml", "[storage]\ndurabilty = \"fsync\"\n");
    let typo_top = file("typo-top.toml", "cellz = 2\n");
    let typo_rate = file("typo-rate.toml", "[rate_limiting]\norg_max_qpz = 2\n");
    let zero_workers = file("workers.toml", "query_workers = 0\n");
    let not_toml = file("bad.toml", "[storage\n");
    let long_secret = secret.as_str();
    // (what, extra args, env, words the error must contain)
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "unknown top-level key",
            vec!["--config", &typo_top],
            vec![],
            vec!["cellz"],
        ),
        (
            "unknown key in [storage]",
            vec!["--config", &typo_storage],
            vec![],
            vec!["durabilty"],
        ),
        (
            "unknown key in [rate_limiting]",
            vec!["--config", &typo_rate],
            vec![],
            vec!["org_max_qpz"],
        ),
        (
            "unknown key by env",
            vec![],
            vec![("HONEYCELL_LOG__FORMATT", "json")],
            vec!["formatt"],
        ),
        (
            "not TOML",
            vec!["--config", &not_toml],
            vec![],
            vec!["bad.toml"],
        ),
        (
            "bad durability value",
            vec![],
            vec![("HONEYCELL_STORAGE__DURABILITY", "sometimes")],
            vec!["durability", "sometimes"],
        ),
        (
            "override out of range",
            vec![],
            vec![("HONEYCELL_ROUTER__OVERRIDES__ACME", "5")],
            vec!["router.overrides", "acme"],
        ),
        (
            "org_max_qps = 0",
            vec![],
            vec![("HONEYCELL_RATE_LIMITING__ORG_MAX_QPS", "0")],
            vec!["rate_limiting.org_max_qps"],
        ),
        (
            "burst_seconds = 0",
            vec![],
            vec![("HONEYCELL_RATE_LIMITING__BURST_SECONDS", "0")],
            vec!["rate_limiting.burst_seconds"],
        ),
        (
            "max_queue_depth = 0",
            vec![],
            vec![("HONEYCELL_ADMISSION__MAX_QUEUE_DEPTH", "0")],
            vec!["admission.max_queue_depth"],
        ),
        (
            "max_body_bytes too small",
            vec![],
            vec![("HONEYCELL_HTTP_LIMITS__MAX_BODY_BYTES", "10")],
            vec!["http_limits.max_body_bytes"],
        ),
        (
            "segment_max_rows = 0",
            vec![],
            vec![("HONEYCELL_STORAGE__SEGMENT_MAX_ROWS", "0")],
            vec!["segment_max_rows"],
        ),
        (
            "log format",
            vec![],
            vec![("HONEYCELL_LOG__FORMAT", "xml")],
            vec!["log.format"],
        ),
        (
            "query_workers = 0",
            vec!["--config", &zero_workers],
            vec![],
            vec!["query_workers"],
        ),
        (
            "http not an address",
            vec!["--http", "nowhere"],
            vec![],
            vec!["http"],
        ),
        (
            "secret too short",
            vec![],
            vec![("HONEYCELL_JWT_SECRET", "short")],
            vec!["jwt.secret"],
        ),
        (
            "RS256 without a public key",
            vec![],
            vec![("HONEYCELL_JWT__ALGORITHM", "RS256")],
            vec!["jwt.public_key_file"],
        ),
        (
            "unknown algorithm",
            vec![],
            vec![("HONEYCELL_JWT__ALGORITHM", "HS512")],
            vec!["jwt.algorithm"],
        ),
    ];
    let mut problems = Vec::new();
    for (what, extra, env, words) in cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra);
        let mut env_all: Vec<(&str, &str)> = Vec::new();
        if !env
            .iter()
            .any(|(k, _)| *k == "HONEYCELL_JWT_SECRET" || *k == "HONEYCELL_JWT__ALGORITHM")
        {
            env_all.push(("HONEYCELL_JWT_SECRET", long_secret));
        }
        env_all.extend(env);
        let o = run(&args, &env_all);
        let err = stderr(&o);
        if o.status.code() != Some(2) {
            problems.push(format!(
                "{what}: exit code {:?}, expected 2; stderr: {err:?}",
                o.status.code()
            ));
            continue;
        }
        if !err.starts_with("error: ") {
            problems.push(format!(
                "{what}: stderr does not start with `error: `: {err:?}"
            ));
        }
        for w in words {
            if !err.contains(w) {
                problems.push(format!("{what}: the error should name {w:?}: {err:?}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_invalid_config_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = dir.path().join("ports.json");
    let o = run(
        &[
            "serve",
            "--data-dir",
            dir.path().join("data").to_str().expect("utf-8"),
            "--http",
            "127.0.0.1:0",
            "--flight",
            "127.0.0.1:0",
            "--ports-file",
            ports.to_str().expect("utf-8"),
        ],
        &[
            ("HONEYCELL_STORAGE__DURABILITY", "sometimes"),
            ("HONEYCELL_JWT_SECRET", &random_secret()),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("sometimes"), "{}", stderr(&o));
    assert!(!ports.exists(), "an invalid config never serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_mints_working_tokens_and_refuses_bad_input() {
    let server = TestServer::builder().cells(1).start().await;
    let o = server.cli_token("cli-org", "viewer");
    assert!(o.status.success(), "{}", stderr(&o));
    let token = String::from_utf8(o.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert_eq!(token.split('.').count(), 3, "a compact JWT: {token}");
    let (status, body) = server.get_events(&token, "").await;
    assert_eq!(status, 200, "{body}");
    let mut flight = server.flight(&token).await;
    let who = action_json(&mut flight, "whoami").await;
    assert_eq!(who["org"], "cli-org");
    assert_eq!(who["role"], "viewer");
    assert_eq!(who["subject"], "cli");

    let bad_role = server.cli_token("cli-org", "superuser");
    assert!(!bad_role.status.success());
    let err = stderr(&bad_role);
    assert!(err.contains("role") && err.contains("superuser"), "{err}");
    assert!(
        err.contains("admin, operator, viewer"),
        "the error lists the allowed roles: {err}"
    );

    let bad_org = server.cli_token("a/b", "admin");
    assert!(!bad_org.status.success());
    assert!(stderr(&bad_org).contains("org"), "{}", stderr(&bad_org));

    let mut cmd = honeycell_command();
    cmd.args(["token", "--org", "cli-org", "--ttl", "0s"])
        .arg("--data-dir")
        .arg(server.data_dir())
        .env("HONEYCELL_JWT_SECRET", server.secret().expect("secret"));
    let bad_ttl = cmd.output().expect("run token");
    assert!(!bad_ttl.status.success());
    assert!(stderr(&bad_ttl).contains("ttl"), "{}", stderr(&bad_ttl));

    // Without a configured key, `token` and `serve` share the development
    // secret in the data directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8");
    let o = run(&["token", "--data-dir", data, "--org", "dev-org"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta =
        std::fs::metadata(dir.path().join("jwt-dev-secret")).expect("the dev secret is created");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the dev secret is private"
    );
    // A second call reuses it: both tokens verify with the same key.
    let o2 = run(&["token", "--data-dir", data, "--org", "dev-org"], &[]);
    assert!(o2.status.success());
    let secret = std::fs::read_to_string(dir.path().join("jwt-dev-secret")).expect("secret");
    let verifier = honeycell_auth::Verifier::new(&honeycell_auth::JwtConfig {
        secret: Some(secret.trim().to_owned()),
        ..Default::default()
    })
    .expect("verifier");
    for out in [&o.stdout, &o2.stdout] {
        let t = String::from_utf8_lossy(out);
        let ctx = verifier
            .verify(t.trim())
            .expect("a dev token verifies with the dev secret");
        assert_eq!(ctx.org.as_str(), "dev-org");
        assert_eq!(ctx.role, Role::Admin, "the default role is admin");
    }
}
