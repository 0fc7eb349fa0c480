//! The Honeycell load generator: starts the real server (release build) or
//! targets a running one, drives it over real sockets on 127.0.0.1, and
//! writes `bench/results/<scenario>-<timestamp>/` (report.md, raw.json, SVG
//! plots).
//!
//! Modules: `server` (launching, /proc resource use), `load` (open-loop and
//! closed-loop drivers with hdrhistogram), `report` (markdown, JSON, plots),
//! `scenarios/*` (one file per scenario). Read `bench/README.md` for what
//! each scenario measures.

mod load;
mod report;
mod scenarios;
mod server;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, ValueEnum};

use report::Report;
use scenarios::Ctx;
use server::Launcher;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    FlightVsJson,
    Ingest,
    Burst,
    Overload,
    /// One org sends the worst requests the server must refuse or bound,
    /// beside neighbours in its cell and the other.
    Hostile,
    Scaling,
    CellsVsShared,
    /// Steady tenants' latency beside a storm of new TLS connections.
    TlsHandshakes,
    /// GraphQL `eventCounts` as one org's history grows.
    Counts,
    /// Every scenario above, in sequence.
    All,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::FlightVsJson => "flight-vs-json",
            Scenario::Ingest => "ingest",
            Scenario::Burst => "burst",
            Scenario::Overload => "overload",
            Scenario::Hostile => "hostile",
            Scenario::Scaling => "scaling",
            Scenario::CellsVsShared => "cells-vs-shared",
            Scenario::TlsHandshakes => "tls-handshakes",
            Scenario::Counts => "counts",
            Scenario::All => "all",
        }
    }
}

#[derive(Parser)]
#[command(about = "Honeycell benchmarks against the real server")]
struct Args {
    scenario: Scenario,
    /// Shorter runs and smaller sizes (all --quick: about 6 minutes).
    #[arg(long)]
    quick: bool,
    /// Largest event count of flight-vs-json / events of the DoPut stream.
    #[arg(long)]
    events: Option<usize>,
    /// Runs per measurement; the median is reported (--quick: at most 2).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Cells of the server (flight-vs-json, burst; ingest uses 1, overload
    /// 2, scaling 1 and 2).
    #[arg(long, default_value_t = 2)]
    cells: usize,
    /// Seconds per load phase, overriding each scenario's default.
    #[arg(long)]
    duration: Option<u64>,
    /// Offered rate in requests/s of `burst` (default 10,000) and of
    /// `hostile`'s attacker (default 200).
    #[arg(long)]
    rate: Option<f64>,
    /// `hostile`: attack with these kinds only, comma-separated (deep,
    /// costly, cross-join, order-by-data, generate-series, ingest-aliases,
    /// big-body, forged-doput, cursor), to see what each costs the others.
    #[arg(long, value_delimiter = ',')]
    attacks: Vec<String>,
    /// Server binary (default: target/release/honeycell, built if missing).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Extra `KEY=VALUE` environment of every server the bench starts,
    /// applied after the scenario's own (e.g.
    /// `HONEYCELL_STORAGE__DURABILITY=interval`); repeatable.
    #[arg(long = "server-env", value_name = "KEY=VALUE")]
    server_env: Vec<String>,
    /// Use a running server instead: `HTTP_URL,FLIGHT_URL` on 127.0.0.1, with
    /// its HS256 secret in HONEYCELL_JWT_SECRET.
    #[arg(long)]
    target: Option<String>,
}

async fn run_one(ctx: &Ctx, scenario: Scenario) -> anyhow::Result<PathBuf> {
    let mut rep = Report::new(scenario.name(), &ctx.command)?;
    rep.line(&format!("\nServer: {}", ctx.launcher.provenance()));
    let result = match scenario {
        Scenario::FlightVsJson => scenarios::flight_vs_json::run(ctx, &mut rep).await,
        Scenario::Ingest => scenarios::ingest::run(ctx, &mut rep).await,
        Scenario::Burst => scenarios::burst::run(ctx, &mut rep).await,
        Scenario::Overload => scenarios::overload::run(ctx, &mut rep).await,
        Scenario::Hostile => scenarios::hostile::run(ctx, &mut rep).await,
        Scenario::Scaling => scenarios::scaling::run(ctx, &mut rep).await,
        Scenario::CellsVsShared => scenarios::cells_vs_shared::run(ctx, &mut rep).await,
        Scenario::TlsHandshakes => scenarios::tls_handshakes::run(ctx, &mut rep).await,
        Scenario::Counts => scenarios::counts::run(ctx, &mut rep).await,
        Scenario::All => bail!("`all` is not a single scenario"),
    };
    if let Err(e) = &result {
        rep.line(&format!("\n**FAILED:** {e:#}\n"));
    }
    let dir = rep.finish()?.to_path_buf();
    println!("{}", rep.md);
    eprintln!("report written to {}", dir.display());
    result.map(|()| dir)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let extra = args
        .server_env
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--server-env {kv:?}: expected KEY=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let launcher = Launcher::new(args.target.as_deref(), args.bin.as_deref(), extra)?;
    let ctx = Ctx {
        launcher,
        quick: args.quick,
        events: args.events,
        runs: if args.quick {
            args.runs.clamp(1, 2)
        } else {
            args.runs.max(1)
        },
        cells: args.cells.max(1),
        duration: args.duration,
        rate: args.rate,
        attacks: args.attacks,
        // A debug build of the bench says so in every report's command.
        command: format!(
            "cargo run -p honeycell-bench{} -- {}",
            if cfg!(debug_assertions) {
                " (debug build)"
            } else {
                " --release"
            },
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        ),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let list = if args.scenario == Scenario::All {
        vec![
            Scenario::FlightVsJson,
            Scenario::Ingest,
            Scenario::Burst,
            Scenario::Overload,
            Scenario::Hostile,
            Scenario::Scaling,
            Scenario::CellsVsShared,
            Scenario::TlsHandshakes,
            Scenario::Counts,
        ]
    } else {
        vec![args.scenario]
    };
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    let mut done = Vec::new();
    rt.block_on(async {
        for s in list {
            let t = std::time::Instant::now();
            match run_one(&ctx, s).await {
                Ok(dir) => done.push((s.name(), dir, t.elapsed())),
                Err(e) => {
                    eprintln!("{} failed: {e:#}", s.name());
                    failed.push(s.name());
                }
            }
        }
    });
    for (name, dir, took) in &done {
        eprintln!("{name}: {:.0} s, {}", took.as_secs_f64(), dir.display());
    }
    eprintln!("total: {:.0} s", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("failed scenarios: {}", failed.join(", "));
    }
    Ok(())
}
