//! `tls-handshakes`: DESIGN.md's "a cell never blocks: TLS handshakes must
//! not stall a cell's other tenants; measure that they don't". A server
//! serving HTTPS (2 cells, an ECDSA P-256 certificate made at run time) gets
//! steady traffic from tenants on kept-alive connections (open loop,
//! `GET /v1/events?limit=10`), alone and then beside a storm of new
//! connections (every storm request opens a new TCP + TLS connection). The
//! steady tenants' p99 is compared between the phases (medians over
//! `--runs` pairs), next to the handshake rate the storm reached and the
//! CPU it took.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use super::{Ctx, events_body, get, median, post_events, thousands};
use crate::load::{self, Outcome, RunStats};
use crate::report::{Report, class_table, run_json};
use crate::server::{Meter, Usage};

const STEADY_ORGS: usize = 8;
const STEADY_RATE: f64 = 400.0;
const STORM_WORKERS: usize = 16;

const LABELS: [&str; 1] = ["steady tenants (kept-alive HTTPS, GET /v1/events?limit=10)"];

struct Phase {
    steady: RunStats,
    storm: Option<RunStats>,
    usage: Usage,
}

/// A throwaway CA and a server certificate for 127.0.0.1/localhost, written
/// to `dir`: (CA PEM, cert path, key path).
fn certificates(dir: &std::path::Path) -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .signed_by(&key, &issuer)?;
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server-key.pem");
    std::fs::write(&cert_path, leaf.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((
        ca_cert.pem(),
        cert_path.display().to_string(),
        key_path.display().to_string(),
    ))
}

pub async fn run(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let duration = ctx.secs(20, 5);
    let runs = ctx.runs.max(1);
    let certs = tempfile::tempdir()?;
    let (ca_pem, cert_path, key_path) = certificates(certs.path())?;
    rep.line(&format!(
        "\nHTTPS on a 2-cell server (rustls, ECDSA P-256 certificate, TLS 1.3). Steady tenants: {STEADY_ORGS} orgs at {} req/s in all, open loop, `GET /v1/events?limit=10` over kept-alive connections. Storm: {STORM_WORKERS} workers back to back, each request `GET /health` on a new connection (TCP + full TLS handshake; no session resumption). Quiet and storm phases of {} s alternate, {runs} pair(s); p99s are medians over the pairs. Client and server share the machine's 2 cores, so the storm's client-side handshakes compete for CPU too.\n",
        thousands(STEADY_RATE),
        duration.as_secs()
    ));
    let env = [
        ("HONEYCELL_TLS__CERT_PATH", cert_path),
        ("HONEYCELL_TLS__KEY_PATH", key_path),
    ];
    let server = ctx
        .launcher
        .start_tls(2, &env, &ca_pem)
        .await
        .context("starting a TLS server")?;
    let root = reqwest::Certificate::from_pem(ca_pem.as_bytes())?;
    let steady_client = reqwest::Client::builder()
        .add_root_certificate(root.clone())
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()?;
    // No idle connections kept: every request opens a new one.
    let storm_client = reqwest::Client::builder()
        .add_root_certificate(root)
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .tcp_nodelay(true)
        .build()?;
    let tokens: Vec<Arc<str>> = (0..STEADY_ORGS)
        .map(|i| server.token(&format!("steady-{i}")).map(Arc::from))
        .collect::<anyhow::Result<_>>()?;
    let ingest: Arc<str> = format!("{}/v1/events", server.http).into();
    for t in &tokens {
        let o = post_events(
            steady_client.clone(),
            ingest.clone(),
            t.clone(),
            events_body(50, 3),
            0,
            50,
        )
        .await;
        if o.status != Some(200) {
            anyhow::bail!("seeding a steady tenant over HTTPS answered {:?}", o.status);
        }
    }
    let query = format!("{}/v1/events?limit=10", server.http);
    let health = format!("{}/health", server.http);

    let mut phases: Vec<(bool, Phase)> = Vec::new();
    for r in 0..runs {
        for storm in [false, true] {
            let meter = Meter::start(&server);
            let msg = format!(
                "tls-handshakes {} {}/{runs}",
                if storm { "storm" } else { "quiet" },
                r + 1
            );
            let steady = load::open_loop(&LABELS, STEADY_RATE, duration, 1024, &msg, |i| {
                let token = tokens[(i % STEADY_ORGS as u64) as usize].clone();
                get(steady_client.clone(), query.clone(), token, 0)
            });
            let storm_run = async {
                if !storm {
                    return None;
                }
                let (client, url) = (storm_client.clone(), health.clone());
                Some(
                    load::closed_loop(
                        &["storm: new TLS connection per request (GET /health)"],
                        STORM_WORKERS,
                        duration,
                        u64::MAX,
                        move |_| {
                            let (client, url) = (client.clone(), url.clone());
                            async move {
                                let r = client.get(url).send().await;
                                match r {
                                    Ok(r) => Outcome {
                                        class: 0,
                                        status: Some(r.status().as_u16()),
                                        retry_after: false,
                                        items: 1,
                                    },
                                    Err(_) => Outcome {
                                        class: 0,
                                        status: None,
                                        retry_after: false,
                                        items: 0,
                                    },
                                }
                            }
                        },
                    )
                    .await,
                )
            };
            let (steady, storm_stats) = tokio::join!(steady, storm_run);
            phases.push((
                storm,
                Phase {
                    steady,
                    storm: storm_stats,
                    usage: meter.stop(),
                },
            ));
        }
    }

    let q = |storm: bool, quantile: f64| -> f64 {
        median(
            phases
                .iter()
                .filter(|(s, _)| *s == storm)
                .map(|(_, p)| p.steady.classes[0].ms(quantile))
                .collect(),
        )
    };
    let handshakes: Vec<f64> = phases
        .iter()
        .filter_map(|(_, p)| p.storm.as_ref())
        .map(|s| s.classes[0].ok_count as f64 / s.wall.as_secs_f64().max(1e-9))
        .collect();
    let mut steady_errors = 0;
    let mut storm_errors = 0;
    for (_, p) in &phases {
        let t = p.steady.total();
        steady_errors += t.errors + t.transport_errors + t.http_429;
        if let Some(s) = &p.storm {
            storm_errors += s.classes[0].errors + s.classes[0].transport_errors;
        }
    }
    let (p50_q, p99_q, p50_s, p99_s) = (q(false, 0.5), q(false, 0.99), q(true, 0.5), q(true, 0.99));
    rep.line("\n## Result\n");
    rep.line(&format!(
        "- storm: **{} new TLS connections/s** (median over phases; each a full handshake), {storm_errors} failed\n- steady tenants, quiet: p50 {p50_q:.2} ms, p99 **{p99_q:.2} ms**\n- steady tenants, during the storm: p50 {p50_s:.2} ms, p99 **{p99_s:.2} ms** (p99 ×{:.2})\n- steady tenants' errors and 429s in all phases: {steady_errors} (goal 0)\n",
        thousands(median(handshakes)),
        p99_s / p99_q,
    ));
    for (i, (storm, p)) in phases.iter().enumerate() {
        rep.line(&format!(
            "\n### Phase {} ({})\n\nserver {} cores (busiest threads: {}), generator {:.2} cores\n\n{}",
            i + 1,
            if *storm { "storm" } else { "quiet" },
            p.usage
                .server_cores()
                .map_or_else(|| "n/a".into(), |c| format!("{c:.2}")),
            p.usage.threads_note(4),
            p.usage.bench_cores(),
            class_table(&p.steady)
        ));
        if let Some(s) = &p.storm {
            rep.line(&class_table(s));
        }
        rep.push_raw(json!({"phase": i + 1, "storm": storm, "steady": run_json(&p.steady), "storm_run": p.storm.as_ref().map(run_json), "server_cores": p.usage.server_cores(), "bench_cores": p.usage.bench_cores()}));
    }
    Ok(())
}
