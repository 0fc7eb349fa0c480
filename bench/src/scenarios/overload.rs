//! `overload`: one org floods at 20x its quota beside well-behaved orgs in
//! the same cell and in the other cell. The flooder must get 429s with
//! `Retry-After`; the neighbours' p99 is compared with a baseline run
//! without the flood (goal: same cell +< 10 %, other cell within noise), and
//! the server's peak memory must stay bounded.
//!
//! Orgs are placed with `honeycell_router::Router::new(2, [])`, the same
//! function the server uses, so "same cell" is exact.

use std::sync::Arc;

use anyhow::Context as _;
use honeycell_router::Router;
use honeycell_types::OrgId;
use serde_json::json;

use super::{Ctx, events_body, get, http_client, median, post_events, thousands};
use crate::load::{self, RunStats};
use crate::report::{Report, class_table, run_json};
use crate::server::{Meter, Server, Usage, mb};

const ORG_QPS: u32 = 100;
const NEIGHBOURS_PER_CELL: usize = 4;
/// Each neighbour sends half its quota (reads and writes alternate, so each
/// bucket sees a quarter).
const NEIGHBOUR_RATE: f64 = 50.0;
const FLOOD_FACTOR: f64 = 20.0;

const LABELS: [&str; 2] = [
    "neighbours, same cell as the flooder",
    "neighbours, other cell",
];

/// Request `i` of the well-behaved neighbours `calm` (cell, token): each
/// in turn, alternating a small `POST /v1/events` and a page of reads.
pub fn neighbour_request(
    client: &reqwest::Client,
    calm: &[(usize, Arc<str>)],
    ingest_url: &Arc<str>,
    query_url: &str,
    small: &[u8],
    i: u64,
) -> futures::future::BoxFuture<'static, load::Outcome> {
    let (cell, token) = calm[(i % calm.len() as u64) as usize].clone();
    let client = client.clone();
    if (i / calm.len() as u64).is_multiple_of(2) {
        Box::pin(post_events(
            client,
            ingest_url.clone(),
            token,
            small.to_vec(),
            cell,
            5,
        ))
    } else {
        Box::pin(get(client, query_url.to_owned(), token, cell))
    }
}

/// Tokens of the neighbour orgs `same` (cell 0) and `other` (cell 1), as
/// `(cell, token)`, after 100 events of each are ingested (so that their
/// reads return a page).
pub async fn seed_neighbours(
    server: &Server,
    client: &reqwest::Client,
    ingest_url: &Arc<str>,
    same: &[String],
    other: &[String],
) -> anyhow::Result<Vec<(usize, Arc<str>)>> {
    let calm: Vec<(usize, Arc<str>)> = same
        .iter()
        .map(|o| (0, o))
        .chain(other.iter().map(|o| (1, o)))
        .map(|(c, o)| server.token(o).map(|t| (c, Arc::from(t))))
        .collect::<anyhow::Result<_>>()?;
    for (_, t) in &calm {
        let o = post_events(
            client.clone(),
            ingest_url.clone(),
            t.clone(),
            events_body(100, 1),
            0,
            100,
        )
        .await;
        if o.status != Some(200) {
            anyhow::bail!("seeding a neighbour answered {:?}", o.status);
        }
    }
    Ok(calm)
}

/// The first `n` orgs named `<prefix>-<i>` that `cell` owns (of 2).
pub fn orgs_in(prefix: &str, cell: usize, n: usize) -> anyhow::Result<Vec<String>> {
    let router = Router::new(2, [])?;
    let mut out = Vec::new();
    for i in 0..100_000 {
        let name = format!("{prefix}-{i}");
        if router.owner(&OrgId::new(&name)?).index() == cell {
            out.push(name);
            if out.len() == n {
                return Ok(out);
            }
        }
    }
    anyhow::bail!("no {n} orgs of cell {cell} among 100,000 names")
}

struct Phase {
    neighbours: RunStats,
    flood: Option<RunStats>,
    usage: Usage,
}

pub async fn run(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let duration = ctx.secs(30, 6);
    let runs = ctx.runs.max(1);
    let flood_rate = FLOOD_FACTOR * f64::from(ORG_QPS);
    let env = [
        ("HONEYCELL_RATE_LIMITING__ENABLED", "true".to_owned()),
        ("HONEYCELL_RATE_LIMITING__ORG_MAX_QPS", ORG_QPS.to_string()),
    ];
    let flooder = orgs_in("flood", 0, 1)?
        .pop()
        .context("a flooding org in cell 0")?;
    let same = orgs_in("calm-a", 0, NEIGHBOURS_PER_CELL)?;
    let other = orgs_in("calm-b", 1, NEIGHBOURS_PER_CELL)?;
    rep.line(&format!(
        "\n2 cells, `org_max_qps = {ORG_QPS}` (reads and writes separately). Neighbours: {NEIGHBOURS_PER_CELL} orgs in cell 0 ({}) and {NEIGHBOURS_PER_CELL} in cell 1 ({}), each at {NEIGHBOUR_RATE} req/s open loop, alternating `POST /v1/events` of 5 events and `GET /v1/events?limit=50`. Flooder: `{flooder}` in cell 0, `POST /v1/events` of 1 event at {} req/s ({FLOOD_FACTOR}x its quota), open loop. Baseline (no flood) and flood phases of {} s alternate, {runs} pair(s); p99s are medians over the pairs.\n",
        same.join(", "),
        other.join(", "),
        thousands(flood_rate),
        duration.as_secs()
    ));
    if let Some(n) = ctx.target_note() {
        rep.line(n);
    }
    let server = ctx.launcher.start(2, &env).await?;
    let client = http_client()?;
    let ingest_url: Arc<str> = format!("{}/v1/events", server.http).into();
    let query_url = format!("{}/v1/events?limit=50", server.http);
    let calm = seed_neighbours(&server, &client, &ingest_url, &same, &other).await?;
    let flood_token: Arc<str> = server.token(&flooder)?.into();
    let small = events_body(5, 7);
    let one = events_body(1, 9);
    let calm_rate = NEIGHBOUR_RATE * calm.len() as f64;
    let mut phases: Vec<(bool, Phase)> = Vec::new();
    for r in 0..runs {
        for flood in [false, true] {
            let meter = Meter::start(&server);
            let msg = format!(
                "overload {} {}/{runs}",
                if flood { "flood" } else { "baseline" },
                r + 1
            );
            let neighbours = load::open_loop(&LABELS, calm_rate, duration, 1024, &msg, |i| {
                neighbour_request(&client, &calm, &ingest_url, &query_url, &small, i)
            });
            let flood_run = async {
                if !flood {
                    return None;
                }
                Some(
                    load::open_loop(&["flooder"], flood_rate, duration, 2048, "flooder", |_| {
                        post_events(
                            client.clone(),
                            ingest_url.clone(),
                            flood_token.clone(),
                            one.clone(),
                            0,
                            1,
                        )
                    })
                    .await,
                )
            };
            let (neighbours, flood_stats) = tokio::join!(neighbours, flood_run);
            let usage = meter.stop();
            phases.push((
                flood,
                Phase {
                    neighbours,
                    flood: flood_stats,
                    usage,
                },
            ));
        }
    }
    let p99s = |flood: bool, class: usize| -> Vec<f64> {
        phases
            .iter()
            .filter(|(f, _)| *f == flood)
            .map(|(_, p)| p.neighbours.classes[class].ms(0.99))
            .collect()
    };
    let base_same = median(p99s(false, 0));
    let base_other = median(p99s(false, 1));
    let flood_same = median(p99s(true, 0));
    let flood_other = median(p99s(true, 1));
    let pct = |a: f64, b: f64| 100.0 * (a - b) / b;
    let mut f429 = 0;
    let mut f429_ra = 0;
    let mut f_ok = 0;
    let mut f_sent = 0;
    let mut f_err = 0;
    let mut calm_errors = 0;
    let mut calm_429 = 0;
    for (_, p) in &phases {
        let t = p.neighbours.total();
        calm_errors += t.errors + t.transport_errors;
        calm_429 += t.http_429;
        if let Some(f) = &p.flood {
            let c = &f.classes[0];
            f429 += c.http_429;
            f429_ra += c.http_429_with_retry_after;
            f_ok += c.ok_count;
            f_sent += c.sent;
            f_err += c.errors + c.transport_errors;
        }
    }
    let peak = |flood: bool| {
        phases
            .iter()
            .filter(|(f, _)| *f == flood)
            .filter_map(|(_, p)| p.usage.server_peak_rss)
            .max()
    };
    let flood_secs = duration.as_secs_f64() * runs as f64;
    rep.line("\n## Result\n");
    rep.line(&format!(
        "- flooder: {} requests answered, **{f429} × 429**, of which **{f429_ra} carried `Retry-After`** ({}); {} accepted ({:.0}/s against a quota of {ORG_QPS}/s plus the initial burst), {f_err} other errors\n- neighbours: {calm_errors} errors and {calm_429} 429s in all phases (goal 0)\n- neighbours' p99, same cell as the flooder: baseline {base_same:.2} ms → flood {flood_same:.2} ms (**{:+.1} %**, goal < +10 %: {})\n- neighbours' p99, other cell: baseline {base_other:.2} ms → flood {flood_other:.2} ms (**{:+.1} %**, goal within noise)\n- same-cell change minus other-cell change: **{:+.1} points** (what the flood costs a neighbour for sharing the flooder's cell, beyond what it costs everyone on this shared 2-core machine: the flooder's generator and its 429s use the same cores)\n- server peak RSS: baseline {} MB, flood {} MB (bounded: {})",
        thousands(f_sent as f64),
        if f429 == f429_ra { "every one" } else { "NOT every one" },
        thousands(f_ok as f64),
        f_ok as f64 / flood_secs,
        pct(flood_same, base_same),
        if pct(flood_same, base_same) < 10.0 { "met" } else { "MISSED" },
        pct(flood_other, base_other),
        pct(flood_same, base_same) - pct(flood_other, base_other),
        mb(peak(false)),
        mb(peak(true)),
        match (peak(false), peak(true)) {
            (Some(a), Some(b)) if (b as f64) < a as f64 * 1.5 + 50e6 => "yes",
            (Some(_), Some(_)) => "grew noticeably",
            _ => "not measured",
        }
    ));
    for (i, (flood, p)) in phases.iter().enumerate() {
        rep.line(&format!(
            "\n### Phase {} ({}): neighbours\n\ngenerator: {}; server {} cores, generator {:.2} cores\n\n{}",
            i + 1,
            if *flood { "flood" } else { "baseline" },
            p.neighbours.generator_note(),
            p.usage
                .server_cores()
                .map_or_else(|| "n/a".into(), |c| format!("{c:.2}")),
            p.usage.bench_cores(),
            class_table(&p.neighbours)
        ));
        if let Some(f) = &p.flood {
            rep.line(&format!(
                "Flooder ({}):\n\n{}",
                f.generator_note(),
                class_table(f)
            ));
        }
        rep.push_raw(json!({"phase": i + 1, "flood": flood, "neighbours": run_json(&p.neighbours), "flooder": p.flood.as_ref().map(run_json), "server_peak_rss": p.usage.server_peak_rss, "server_cores": p.usage.server_cores(), "bench_cores": p.usage.bench_cores()}));
    }
    let pick = |flood: bool| {
        phases
            .iter()
            .rfind(|(f, _)| *f == flood)
            .map(|(_, p)| p.neighbours.classes.clone())
    };
    let mut series = Vec::new();
    for (flood, name) in [(false, "baseline"), (true, "flood")] {
        for c in pick(flood).unwrap_or_default() {
            series.push((format!("{} ({name})", c.label), c.percentiles()));
        }
    }
    rep.latency_plot(
        "overload-latency",
        "overload: neighbours' latency, baseline vs flood",
        &series,
    );
    if let Some((_, p)) = phases.iter().rfind(|(f, _)| *f) {
        let mut tp = vec![("neighbours".to_owned(), p.neighbours.throughput_series())];
        if let Some(f) = &p.flood {
            tp.push(("flooder (accepted)".to_owned(), f.throughput_series()));
        }
        rep.throughput_plot(
            "overload-throughput",
            "overload: accepted requests per second (flood phase)",
            &tp,
        );
    }
    Ok(())
}
