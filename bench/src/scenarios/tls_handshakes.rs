//! `tls-handshakes`: DESIGN.md's "a cell never blocks: TLS handshakes must
//! not stall a cell's other tenants; measure that they don't". A server
//! serving HTTPS (2 cells, an ECDSA P-256 certificate made at run time) gets
//! steady traffic from tenants on kept-alive connections (open loop,
//! `GET /v1/events?limit=10`), alone, beside a moderate storm of new
//! connections (1,000/s, open loop) and beside a saturating one (16 workers
//! back to back); every storm request opens a new TCP + TLS connection. The
//! steady tenants' p50/p99 are compared between the phases (medians over
//! `--runs` rounds), next to the handshake rate and the CPU each took.

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
/// The moderate storm: new connections per second, open loop.
const STORM_RATE: f64 = 1_000.0;

/// What runs beside the steady tenants.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Storm {
    None,
    /// [`STORM_RATE`] new connections/s, open loop.
    Moderate,
    /// [`STORM_WORKERS`] workers back to back: as many as the machine takes.
    Saturating,
}

impl Storm {
    fn name(self) -> &'static str {
        match self {
            Storm::None => "quiet",
            Storm::Moderate => "moderate storm",
            Storm::Saturating => "saturating storm",
        }
    }
}

const LABELS: [&str; 1] = ["steady tenants (kept-alive HTTPS, GET /v1/events?limit=10)"];

struct Phase {
    storm_kind: Storm,
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
        "\nHTTPS on a 2-cell server (rustls, ECDSA P-256 certificate, TLS 1.3). Steady tenants: {STEADY_ORGS} orgs at {} req/s in all, open loop, `GET /v1/events?limit=10` over kept-alive connections. Storms: each request `GET /health` on a new connection (TCP + full TLS handshake; no session resumption), either {} new connections/s open loop (moderate) or {STORM_WORKERS} workers back to back (saturating: as many as the machine takes). Quiet, moderate and saturating phases of {} s take turns, {runs} round(s); p99s are medians over the rounds. Client and server share the machine's 2 cores, so the storm's client-side handshakes compete for CPU too.\n",
        thousands(STEADY_RATE),
        thousands(STORM_RATE),
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

    let mut phases: Vec<Phase> = Vec::new();
    for r in 0..runs {
        for storm in [Storm::None, Storm::Moderate, Storm::Saturating] {
            let meter = Meter::start(&server);
            let msg = format!("tls-handshakes {} {}/{runs}", storm.name(), r + 1);
            let steady = load::open_loop(&LABELS, STEADY_RATE, duration, 1024, &msg, |i| {
                let token = tokens[(i % STEADY_ORGS as u64) as usize].clone();
                get(steady_client.clone(), query.clone(), token, 0)
            });
            let label = ["storm: new TLS connection per request (GET /health)"];
            let (client, url) = (storm_client.clone(), health.clone());
            let new_connection = move |_| {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let r = client.get(url).send().await;
                    Outcome {
                        class: 0,
                        status: r.as_ref().ok().map(|r| r.status().as_u16()),
                        retry_after: false,
                        items: u64::from(r.is_ok()),
                    }
                }
            };
            let storm_run = async {
                match storm {
                    Storm::None => None,
                    Storm::Moderate => Some(
                        load::open_loop(&label, STORM_RATE, duration, 512, "storm", new_connection)
                            .await,
                    ),
                    Storm::Saturating => Some(
                        load::closed_loop(
                            &label,
                            STORM_WORKERS,
                            duration,
                            u64::MAX,
                            new_connection,
                        )
                        .await,
                    ),
                }
            };
            let (steady, storm_stats) = tokio::join!(steady, storm_run);
            phases.push(Phase {
                storm_kind: storm,
                steady,
                storm: storm_stats,
                usage: meter.stop(),
            });
        }
    }

    let of = |kind: Storm| phases.iter().filter(move |p| p.storm_kind == kind);
    let q = |kind: Storm, quantile: f64| -> f64 {
        median(of(kind).map(|p| p.steady.classes[0].ms(quantile)).collect())
    };
    let rate = |kind: Storm| -> f64 {
        median(
            of(kind)
                .filter_map(|p| p.storm.as_ref())
                .map(|s| s.classes[0].ok_count as f64 / s.wall.as_secs_f64().max(1e-9))
                .collect(),
        )
    };
    let cores = |kind: Storm| -> (f64, f64) {
        (
            median(of(kind).filter_map(|p| p.usage.server_cores()).collect()),
            median(of(kind).map(|p| p.usage.bench_cores()).collect()),
        )
    };
    let mut steady_errors = 0;
    let mut storm_errors = 0;
    for p in &phases {
        let t = p.steady.total();
        steady_errors += t.errors + t.transport_errors + t.http_429;
        if let Some(s) = &p.storm {
            storm_errors += s.classes[0].errors + s.classes[0].transport_errors;
        }
    }
    let base = q(Storm::None, 0.99);
    rep.line("\n## Result\n");
    rep.line("| phase | new TLS connections/s | steady p50 ms | steady p99 ms | p99 vs quiet | server cores | generator cores |\n|---|---:|---:|---:|---:|---:|---:|");
    for kind in [Storm::None, Storm::Moderate, Storm::Saturating] {
        let (server_cores, bench_cores) = cores(kind);
        rep.line(&format!(
            "| {} | {} | {:.2} | {:.2} | ×{:.2} | {server_cores:.2} | {bench_cores:.2} |",
            kind.name(),
            if kind == Storm::None {
                "—".to_owned()
            } else {
                thousands(rate(kind))
            },
            q(kind, 0.5),
            q(kind, 0.99),
            q(kind, 0.99) / base,
        ));
    }
    rep.line(&format!(
        "\nSteady tenants' errors and 429s in all phases: {steady_errors} (goal 0); failed storm connections: {storm_errors}.\n"
    ));
    for (i, p) in phases.iter().enumerate() {
        rep.line(&format!(
            "\n### Phase {} ({})\n\nserver {} cores (busiest threads: {}), generator {:.2} cores\n\n{}",
            i + 1,
            p.storm_kind.name(),
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
        rep.push_raw(json!({"phase": i + 1, "storm": p.storm_kind.name(), "steady": run_json(&p.steady), "storm_run": p.storm.as_ref().map(run_json), "server_cores": p.usage.server_cores(), "bench_cores": p.usage.bench_cores()}));
    }
    Ok(())
}
