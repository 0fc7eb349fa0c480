//! `scaling`: the same open-loop HTTP workload at increasing rates against a
//! 1-cell and a 2-cell server; the highest rate each sustains (every request
//! answered 2xx, none dropped by the generator, ≥ 95 % of the offered rate
//! achieved, p99 under the threshold). The generator's own CPU use is
//! measured (getrusage) beside the server's (/proc/<pid>/stat): on a 2-core
//! machine they compete for the same cores, which caps what this can show.

use serde_json::json;

use super::{Ctx, ReadWriteMix, http_client, seeded_orgs, thousands};
use crate::load;
use crate::report::{Report, run_json};
use crate::server::Meter;

const ORGS: u64 = 64;
/// p99 threshold for "sustained", ms.
const P99_MS: f64 = 10.0;
const LABELS: [&str; 2] = ["POST /v1/events (1 event)", "GET /v1/events?limit=10"];

struct Step {
    rate: f64,
    ok_per_s: f64,
    p50: f64,
    p99: f64,
    /// p99 of the writes and of the reads.
    p99_class: [f64; 2],
    errors: u64,
    dropped: u64,
    server_cores: Option<f64>,
    busiest_cell: Option<(String, f64)>,
    bench_cores: f64,
    sustained: bool,
}

pub async fn run(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let step_d = ctx.secs(10, 3);
    let rates: Vec<f64> = if ctx.quick {
        vec![2000.0, 4000.0, 6000.0, 8000.0, 10_000.0, 12_000.0]
    } else {
        vec![
            1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 7000.0, 8000.0, 9000.0, 10_000.0,
            12_000.0, 14_000.0, 16_000.0,
        ]
    };
    rep.line(&format!(
        "\nWorkload: open loop, half `POST /v1/events` of 1 event (fsync durability), half `GET /v1/events?limit=10`, across {ORGS} orgs (100 events each before the run), rate limits off. Rates {} req/s, {} s per step, stopping at the first step not sustained. Sustained = no errors, nothing dropped by the generator, ≥ 95 % of the offered rate completed, p99 < {P99_MS} ms (from the scheduled send time).\n",
        rates.iter().map(|r| thousands(*r)).collect::<Vec<_>>().join(", "),
        step_d.as_secs()
    ));
    if let Some(n) = ctx.target_note() {
        rep.line(n);
    }
    let mut best = Vec::new();
    let mut plot_p99 = Vec::new();
    let mut plot_cpu = Vec::new();
    let mut table = String::from(
        "| cells | offered req/s | ok req/s | p50 ms | p99 ms | p99 POST ms | p99 GET ms | errors | dropped by generator | server CPU (cores) | busiest cell thread (cores) | generator CPU (cores) | sustained |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|\n",
    );
    for cells in [1usize, 2] {
        let server = ctx.launcher.start(cells, &[]).await?;
        let client = http_client()?;
        let tokens = seeded_orgs(&server, &client, "scale", ORGS).await?;
        let workload = ReadWriteMix::new(&server, client, tokens);
        let mut steps = Vec::new();
        for &rate in &rates {
            let meter = Meter::start(&server);
            let run = load::open_loop(
                &LABELS,
                rate,
                step_d,
                4096,
                &format!("scaling {cells} cell(s) at {rate} req/s"),
                |i| workload.request(i),
            )
            .await;
            let usage = meter.stop();
            let t = run.total();
            let errors = t.errors + t.transport_errors + t.http_429;
            let ok_per_s = t.ok_count as f64 / step_d.as_secs_f64();
            let p99 = t.ms(0.99);
            let sustained =
                errors == 0 && run.dropped == 0 && ok_per_s >= 0.95 * rate && p99 < P99_MS;
            rep.push_raw(json!({"cells": cells, "rate": rate, "run": run_json(&run), "server_cores": usage.server_cores(), "server_threads": usage.threads, "bench_cores": usage.bench_cores(), "sustained": sustained}));
            steps.push(Step {
                rate,
                ok_per_s,
                p50: t.ms(0.5),
                p99,
                p99_class: [run.classes[0].ms(0.99), run.classes[1].ms(0.99)],
                errors,
                dropped: run.dropped,
                server_cores: usage.server_cores(),
                busiest_cell: usage.busiest_cell(),
                bench_cores: usage.bench_cores(),
                sustained,
            });
            if !sustained {
                break;
            }
        }
        for s in &steps {
            table.push_str(&format!(
                "| {cells} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {:.2} | {} |\n",
                thousands(s.rate),
                thousands(s.ok_per_s),
                s.p50,
                s.p99,
                s.p99_class[0],
                s.p99_class[1],
                s.errors,
                s.dropped,
                s.server_cores
                    .map_or_else(|| "n/a".into(), |c| format!("{c:.2}")),
                s.busiest_cell
                    .as_ref()
                    .map_or_else(|| "n/a".into(), |(n, c)| format!("{n}: {c:.2}")),
                s.bench_cores,
                if s.sustained { "yes" } else { "no" }
            ));
        }
        let max = steps
            .iter()
            .filter(|s| s.sustained)
            .map(|s| s.rate)
            .fold(0.0, f64::max);
        let at_max = steps.iter().find(|s| s.rate == max);
        best.push((cells, max, at_max.map(|s| (s.server_cores, s.bench_cores))));
        plot_p99.push((
            format!("{cells} cell(s): p99 ms"),
            steps.iter().map(|s| (s.rate, s.p99)).collect(),
        ));
        plot_cpu.push((
            format!("{cells} cell(s): server cores"),
            steps
                .iter()
                .filter_map(|s| s.server_cores.map(|c| (s.rate, c)))
                .collect(),
        ));
        plot_cpu.push((
            format!("{cells} cell(s): generator cores"),
            steps.iter().map(|s| (s.rate, s.bench_cores)).collect(),
        ));
    }
    rep.line("\n## Result\n");
    for (cells, max, cpu) in &best {
        let cpu_note = match cpu {
            Some((Some(s), b)) => {
                format!(" (server {s:.2} cores + generator {b:.2} cores at that rate)")
            }
            Some((None, b)) => format!(" (generator {b:.2} cores at that rate)"),
            None => String::new(),
        };
        if *max > 0.0 {
            rep.line(&format!(
                "- {cells} cell(s): max sustained **{} req/s**{cpu_note}",
                thousands(*max)
            ));
        } else {
            rep.line(&format!(
                "- {cells} cell(s): **no rate sustained**, not even the lowest tried ({} req/s): see the table and the load average",
                thousands(rates.first().copied().unwrap_or(0.0))
            ));
        }
    }
    if let [(_, one, _), (_, two, _)] = best.as_slice()
        && *one > 0.0
    {
        rep.line(&format!("- 2 cells / 1 cell: **{:.2}x**", two / one));
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    rep.line(&format!(
        "\nWhat this machine can show: it has {cores} cores, and the load generator runs on them too. At the highest sustained rate the generator itself used the CPU shown above (reqwest + tokio: roughly its cores ÷ rate per request), so a 2-cell server never gets 2 free cores: the second cell competes with the generator for the second core. A ratio near 1x here says the machine is saturated, not that cells do not scale; scaling beyond that needs the generator on other cores or another machine.\n"
    ));
    rep.line(&table);
    rep.xy_plot(
        "scaling-p99",
        "scaling: p99 vs offered rate",
        ("offered requests/s", "p99 latency (ms)"),
        &plot_p99,
    );
    rep.xy_plot(
        "scaling-cpu",
        "scaling: CPU used (cores) vs offered rate",
        ("offered requests/s", "cores"),
        &plot_cpu,
    );
    Ok(())
}
