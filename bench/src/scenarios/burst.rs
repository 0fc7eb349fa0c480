//! `burst`: the roadmap's load test. 10,000 requests/s (open loop) for 60 s
//! (`--quick`: 10 s), a realistic mix across 200 orgs, each org within its
//! quota: 70 % ingest of 1–10 events, 25 % `GET /v1/events?limit=50` with a
//! filter, 5 % GraphQL `eventCounts`. Goals: 0 errors, 0 429s, p99 < 10 ms.

use std::sync::Arc;

use serde_json::json;

use super::{Ctx, events_body, get, graphql, http_client, mix, post_events, thousands};
use crate::load;
use crate::report::{Report, class_table, run_json};
use crate::server::{Meter, mb};

const ORGS: u64 = 200;
const RATE: f64 = 10_000.0;
/// Per-org limit set on the server: each org sends ~50 req/s (≈35 writes,
/// ≈15 reads), each kind has its own bucket of this rate.
const ORG_QPS: u32 = 200;

const LABELS: [&str; 3] = [
    "ingest (POST /v1/events, 1–10 events)",
    "query (GET /v1/events?entity_type=order&limit=50)",
    "GraphQL eventCounts",
];

pub async fn run(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let duration = ctx.secs(60, 10);
    let rate = ctx.rate.unwrap_or(RATE);
    let env = [
        ("HONEYCELL_RATE_LIMITING__ENABLED", "true".to_owned()),
        ("HONEYCELL_RATE_LIMITING__ORG_MAX_QPS", ORG_QPS.to_string()),
        (
            "HONEYCELL_RATE_LIMITING__CLIENT_MAX_QPS",
            ORG_QPS.to_string(),
        ),
        (
            "HONEYCELL_RATE_LIMITING__GLOBAL_MAX_QPS",
            "100000".to_owned(),
        ),
    ];
    rep.line(&format!(
        "\n{} requests/s, open loop, for {} s on a {}-cell server: {} orgs (one token each, minted with honeycell-auth's Signer), each org picked per request by a hash, so each sends ≈{:.0} req/s. Mix: 70 % `POST /v1/events` of 1–10 events, 25 % `GET /v1/events?entity_type=order&limit=50`, 5 % GraphQL `eventCounts(groupBy: ENTITY_TYPE, bucket: HOUR)`. Rate limits on: `org_max_qps = client_max_qps = {ORG_QPS}` (reads and writes have separate buckets), `global_max_qps = 100000`, so every org stays within quota. Every org holds 100 events before the run. Latency is from the scheduled send time.\n",
        thousands(rate),
        duration.as_secs(),
        ctx.cells,
        ORGS,
        rate / ORGS as f64
    ));
    if let Some(n) = ctx.target_note() {
        rep.line(n);
    }
    let server = ctx.launcher.start(ctx.cells, &env).await?;
    let client = http_client()?;
    let tokens: Vec<Arc<str>> = (0..ORGS)
        .map(|i| server.token(&format!("burst-{i}")).map(Arc::from))
        .collect::<anyhow::Result<_>>()?;
    let ingest_url: Arc<str> = format!("{}/v1/events", server.http).into();
    let gql_url: Arc<str> = format!("{}/graphql", server.http).into();
    let query_url = format!("{}/v1/events?entity_type=order&limit=50", server.http);
    // Seed: 100 events per org.
    for (i, t) in tokens.iter().enumerate() {
        let o = post_events(
            client.clone(),
            ingest_url.clone(),
            t.clone(),
            events_body(100, i as u64 * 1000),
            0,
            100,
        )
        .await;
        if o.status != Some(200) {
            anyhow::bail!("seeding org burst-{i} answered {:?}", o.status);
        }
    }
    // Bodies of 1..=10 events, 8 variants each.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..80u64)
            .map(|k| events_body((k % 10 + 1) as usize, k * 131))
            .collect(),
    );
    let gql_body = serde_json::to_vec(&json!({
        "query": "{ eventCounts(groupBy: ENTITY_TYPE, bucket: HOUR) { key bucketStart count } }"
    }))?;
    let meter = Meter::start(&server);
    let run = load::open_loop(&LABELS, rate, duration, 4096, "burst", |i| {
        let h = mix(i);
        let org = (mix(i ^ 0x5bd1_e995) % ORGS) as usize;
        let token = tokens[org].clone();
        let client = client.clone();
        let pick = h % 100;
        let fut: futures::future::BoxFuture<'static, load::Outcome> = if pick < 70 {
            let body = bodies[((h >> 8) % 80) as usize].clone();
            let n = (h >> 8) % 80 % 10 + 1;
            Box::pin(post_events(client, ingest_url.clone(), token, body, 0, n))
        } else if pick < 95 {
            Box::pin(get(client, query_url.clone(), token, 1))
        } else {
            Box::pin(graphql(
                client,
                gql_url.clone(),
                token,
                gql_body.clone(),
                2,
                1,
            ))
        };
        fut
    })
    .await;
    let usage = meter.stop();
    let total = run.total();
    let errors = total.errors + total.transport_errors;
    let p99 = total.ms(0.99);
    rep.line("\n## Result\n");
    rep.line(&format!(
        "- errors: **{errors}** (goal 0; {} non-2xx/429 answers, {} transport failures)\n- 429s: **{}** (goal 0)\n- latency of all requests: p50 {:.2} ms, p99 **{:.2} ms** (goal < 10 ms: {}), p99.9 {:.2} ms, max {:.1} ms\n- achieved: {} ok requests/s of {} offered ({} events ingested)\n- generator: {}\n- CPU: server {} cores (busiest threads: {}), load generator {:.2} cores (of {} on the machine); server peak RSS {} MB",
        total.errors,
        total.transport_errors,
        total.http_429,
        total.ms(0.5),
        p99,
        if p99 < 10.0 { "met" } else { "MISSED" },
        total.ms(0.999),
        total.ok.max() as f64 / 1000.0,
        thousands(run.ok_per_sec()),
        thousands(rate),
        thousands(run.classes[0].items as f64),
        run.generator_note(),
        usage
            .server_cores()
            .map_or_else(|| "n/a".into(), |c| format!("{c:.2}")),
        usage.threads_note(4),
        usage.bench_cores(),
        std::thread::available_parallelism().map_or(1, usize::from),
        mb(usage.server_peak_rss),
    ));
    rep.line(&format!("\n{}", class_table(&run)));
    let series: Vec<(String, [f64; 4])> = run
        .classes
        .iter()
        .map(|c| (c.label.clone(), c.percentiles()))
        .chain(std::iter::once(("all".to_owned(), total.percentiles())))
        .collect();
    rep.latency_plot(
        "burst-latency",
        "burst: latency percentiles per path",
        &series,
    );
    let mut tp: Vec<(String, Vec<f64>)> = run
        .classes
        .iter()
        .zip(&run.per_second)
        .map(|(c, s)| (c.label.clone(), s.iter().map(|&x| x as f64).collect()))
        .collect();
    tp.push(("all".into(), run.throughput_series()));
    rep.throughput_plot(
        "burst-throughput",
        "burst: completed requests per second",
        &tp,
    );
    rep.push_raw(json!({"run": run_json(&run), "server_cores": usage.server_cores(), "server_threads": usage.threads, "bench_cores": usage.bench_cores(), "server_peak_rss": usage.server_peak_rss}));
    Ok(())
}
