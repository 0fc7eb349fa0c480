//! `cells-vs-shared`: the same workload against the cell design
//! (`--runtime cells`: one pinned current-thread runtime per core, state
//! owned per cell) and against the conventional configuration of the same
//! binary (`--runtime shared`: one work-stealing runtime, a process-wide
//! limiter and metrics registry behind mutexes, one storage owner).
//!
//! Two measurements per mode: a closed-loop saturating run (throughput, and
//! throughput per core of server CPU actually used), and an open-loop run at
//! a fixed rate below saturation (latency from the scheduled send time).

use serde_json::json;

use super::{Ctx, ReadWriteMix, http_client, median, seeded_orgs, thousands};
use crate::load;
use crate::report::{Report, run_json};
use crate::server::Meter;

const ORGS: u64 = 64;
const LABELS: [&str; 2] = ["POST /v1/events (1 event)", "GET /v1/events?limit=10"];

struct ModeResult {
    mode: &'static str,
    sat_ok_per_s: f64,
    sat_server_cores: Option<f64>,
    per_core: Option<f64>,
    open_rate: f64,
    open_p50: f64,
    open_p99: f64,
    open_p999: f64,
    open_errors: u64,
    bench_cores: f64,
}

pub async fn run(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let cells = ctx.cells.max(2);
    let sat_d = ctx.secs(15, 5);
    let open_d = ctx.secs(20, 5);
    let open_rate = if ctx.quick { 3000.0 } else { 4000.0 };
    let rounds = if ctx.quick { 1 } else { ctx.runs.max(1) };
    rep.line(&format!(
        "\nWorkload: half `POST /v1/events` of 1 event (fsync durability), half `GET /v1/events?limit=10`, across {ORGS} orgs (100 events each first), rate limits on but far above the load. Saturation: closed loop, 64 concurrent requests, {} s. Latency: open loop at {} req/s, {} s. {cells} cells vs {cells} work-stealing worker threads; {rounds} round(s), alternating modes, medians reported.\n",
        sat_d.as_secs(),
        thousands(open_rate),
        open_d.as_secs()
    ));
    if let Some(n) = ctx.target_note() {
        rep.line(n);
    }
    let mut results: Vec<Vec<ModeResult>> = vec![Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (k, mode) in ["cells", "shared"].into_iter().enumerate() {
            let env = [
                ("HONEYCELL_RUNTIME", mode.to_owned()),
                (
                    "HONEYCELL_RATE_LIMITING__GLOBAL_MAX_QPS",
                    "10000000".to_owned(),
                ),
                ("HONEYCELL_RATE_LIMITING__ORG_MAX_QPS", "1000000".to_owned()),
                (
                    "HONEYCELL_RATE_LIMITING__CLIENT_MAX_QPS",
                    "1000000".to_owned(),
                ),
            ];
            let server = ctx.launcher.start(cells, &env).await?;
            let client = http_client()?;
            let tokens = seeded_orgs(&server, &client, "cvs", ORGS).await?;
            let workload = ReadWriteMix::new(&server, client, tokens);
            let make = move |i: u64| workload.request(i);
            let meter = Meter::start(&server);
            let sat = load::closed_loop(&LABELS, 64, sat_d, u64::MAX, make.clone()).await;
            let sat_usage = meter.stop();
            let meter = Meter::start(&server);
            let open = load::open_loop(
                &LABELS,
                open_rate,
                open_d,
                4096,
                &format!("cells-vs-shared {mode}"),
                make,
            )
            .await;
            let open_usage = meter.stop();
            let t = open.total();
            let sat_ok = sat.ok_per_sec();
            let cores = sat_usage.server_cores();
            rep.push_raw(json!({"mode": mode, "cells": cells, "saturation": run_json(&sat), "saturation_server_cores": cores, "open_loop": run_json(&open), "open_server_cores": open_usage.server_cores()}));
            results[k].push(ModeResult {
                mode,
                sat_ok_per_s: sat_ok,
                sat_server_cores: cores,
                per_core: cores.filter(|c| *c > 0.0).map(|c| sat_ok / c),
                open_rate,
                open_p50: t.ms(0.5),
                open_p99: t.ms(0.99),
                open_p999: t.ms(0.999),
                open_errors: t.errors + t.transport_errors + t.http_429,
                bench_cores: sat_usage.bench_cores(),
            });
        }
    }
    let med = |v: &[ModeResult], f: fn(&ModeResult) -> f64| median(v.iter().map(f).collect());
    let mut table = String::from(
        "| mode | saturated ok req/s | server CPU (cores) | req/s per server core | generator CPU (cores) | open-loop req/s | p50 ms | p99 ms | p999 ms | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut per_core = [f64::NAN; 2];
    let mut p99 = [f64::NAN; 2];
    for (k, v) in results.iter().enumerate() {
        let Some(first) = v.first() else { continue };
        per_core[k] = med(v, |r| r.per_core.unwrap_or(f64::NAN));
        p99[k] = med(v, |r| r.open_p99);
        table.push_str(&format!(
            "| {} | {} | {:.2} | {} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {} |\n",
            first.mode,
            thousands(med(v, |r| r.sat_ok_per_s)),
            med(v, |r| r.sat_server_cores.unwrap_or(f64::NAN)),
            thousands(per_core[k]),
            med(v, |r| r.bench_cores),
            thousands(first.open_rate),
            med(v, |r| r.open_p50),
            p99[k],
            med(v, |r| r.open_p999),
            v.iter().map(|r| r.open_errors).sum::<u64>(),
        ));
    }
    rep.line(&table);
    rep.line(&format!(
        "\n**Ratio (cells / shared), req/s per server core: {:.2}x** (goal ≥ 1.3x); p99 at {} req/s: cells {:.2} ms vs shared {:.2} ms.\n\nOn this 2-core machine the load generator shares the cores with the server (its CPU use is in the table), so the saturated figures are capped by the generator as much as by the server; per-core throughput divides by the CPU the server actually used, which is the fairer comparison here.\n",
        per_core[0] / per_core[1],
        thousands(open_rate),
        p99[0],
        p99[1]
    ));
    Ok(())
}
