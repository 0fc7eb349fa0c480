//! The Honeycell load generator: starts the real server (release build),
//! drives it over real sockets and writes a report under `bench/results/`.
//!
//! Scenarios of the foundation issue:
//! - `flight-vs-json`: ingest N events, then fetch the identical result over
//!   Flight DoGet, Flight SQL, HTTP Arrow IPC, HTTP JSON and GraphQL; every
//!   path must return the same rows (count and checksum) or the run fails.
//! - `ingest`: events/s through DoPut and through HTTP batches.
//!
//! The machine is shared and noisy: each figure is the median of several
//! runs, and the ratios (from one run) are what to compare.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{FlightData, FlightDescriptor, Ticket};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Honeycell benchmarks against the real server")]
struct Args {
    /// flight-vs-json | ingest
    scenario: String,
    /// Events to ingest and read back.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Runs per path; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Fewer events and runs.
    #[arg(long)]
    quick: bool,
    /// Cells of the server.
    #[arg(long, default_value_t = 2)]
    cells: usize,
    /// Server binary (default: target/release/honeycell, built if missing).
    #[arg(long)]
    bin: Option<PathBuf>,
}

const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123456789";
const PAGE: usize = 10_000;

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    http: String,
    flight: String,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(b) = &args.bin {
        return Ok(b.clone());
    }
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "honeycell",
            "--bin",
            "honeycell",
        ])
        .current_dir(workspace())
        .status()?;
    if !status.success() {
        bail!("building the release server failed");
    }
    Ok(workspace().join("target/release/honeycell"))
}

fn start(bin: &Path, cells: usize, env: &[(&str, &str)]) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let ports = dir.path().join("ports.json");
    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
        "--cells",
    ])
    .arg(cells.to_string())
    .arg("--data-dir")
    .arg(dir.path().join("data"))
    .arg("--ports-file")
    .arg(&ports)
    .env("HONEYCELL_JWT_SECRET", SECRET)
    .env("HONEYCELL_RATE_LIMITING__ENABLED", "false")
    .env("HONEYCELL_LOG__LEVEL", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().context("starting the server")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&ports) {
            break t;
        }
        if Instant::now() > deadline {
            bail!("the server did not write its ports file");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let p: Value = serde_json::from_str(&text)?;
    let jwt = honeycell_auth::JwtConfig {
        secret: Some(SECRET.into()),
        ..Default::default()
    };
    let signer = honeycell_auth::Signer::new(&jwt)?;
    let org = honeycell_types::OrgId::new("bench")?;
    let token = signer.mint(
        &org,
        "bench",
        honeycell_auth::Role::Admin,
        Duration::from_secs(3600),
    )?;
    Ok(Server {
        child,
        _dir: dir,
        http: format!("http://127.0.0.1:{}", p["http"]),
        flight: format!("http://127.0.0.1:{}", p["flight"]),
        token,
    })
}

fn upload_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("event_type", DataType::Utf8, false),
        Field::new("entity_type", DataType::Utf8, false),
        Field::new("entity_id", DataType::Utf8, false),
        Field::new(
            "occurred_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("data", DataType::Utf8, true),
        Field::new("user_id", DataType::Utf8, true),
    ]))
}

/// A batch of realistic events: a few entity types, a JSON payload.
fn make_batch(start: usize, n: usize) -> anyhow::Result<RecordBatch> {
    let types = ["INSERT", "UPDATE", "DELETE", "CUSTOM"];
    let entities = ["order", "user", "invoice", "ticket", "payment"];
    let base = 1_795_000_000_000_000i64;
    let idx = start..start + n;
    let cols: Vec<Arc<dyn Array>> = vec![
        Arc::new(StringArray::from_iter_values(
            idx.clone().map(|i| types[i % 4]),
        )),
        Arc::new(StringArray::from_iter_values(
            idx.clone().map(|i| entities[i % 5]),
        )),
        Arc::new(StringArray::from_iter_values(
            idx.clone().map(|i| format!("e-{}", i % 50_000)),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                idx.clone().map(|i| base + i as i64 * 1_000),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(idx.clone().map(|i| {
            format!(
                "{{\"amount\":{},\"currency\":\"EUR\",\"note\":\"item {}\"}}",
                i % 997,
                i % 31
            )
        }))),
        Arc::new(StringArray::from_iter_values(
            idx.map(|i| format!("user-{}", i % 1000)),
        )),
    ];
    Ok(RecordBatch::try_new(upload_schema(), cols)?)
}

async fn flight_client(url: &str) -> anyhow::Result<FlightServiceClient<Channel>> {
    let channel = Channel::from_shared(url.to_owned())?.connect().await?;
    Ok(FlightServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

fn authed<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

/// Ingests `n` events through DoPut in batches of `batch` rows.
async fn doput(server: &Server, n: usize, batch: usize) -> anyhow::Result<Duration> {
    let mut client = flight_client(&server.flight).await?;
    let batches: Vec<RecordBatch> = (0..n)
        .step_by(batch)
        .map(|s| make_batch(s, batch.min(n - s)))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let stream = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["events".into()])))
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map(|r| r.expect("encoding generated batches"));
    let resp = client.do_put(authed(stream, &server.token)?).await?;
    let mut acks = resp.into_inner();
    let mut accepted = 0u64;
    while let Some(r) = acks.message().await? {
        let v: Value = serde_json::from_slice(&r.app_metadata)?;
        accepted += v["accepted"].as_u64().unwrap_or(0);
    }
    if accepted != n as u64 {
        bail!("DoPut acknowledged {accepted} of {n} events");
    }
    Ok(started.elapsed())
}

/// Ingests `n` events through HTTP POSTs of `batch` events, `conc` at a time.
async fn http_ingest(
    server: &Server,
    n: usize,
    batch: usize,
    conc: usize,
) -> anyhow::Result<Duration> {
    let client = reqwest::Client::new();
    let bodies: Vec<Vec<u8>> = (0..n)
        .step_by(batch)
        .map(|s| {
            let events: Vec<Value> = (s..(s + batch).min(n))
                .map(|i| json!({"event_type": "INSERT", "entity_type": "order", "entity_id": format!("h-{i}"), "data": {"amount": i % 997}}))
                .collect();
            serde_json::to_vec(&events).expect("json")
        })
        .collect();
    let started = Instant::now();
    let url = format!("{}/v1/events", server.http);
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(bodies)
        .map(|body| {
            let client = client.clone();
            let url = url.clone();
            let token = server.token.clone();
            async move {
                let r = client
                    .post(&url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("HTTP ingest answered {}: {}", r.status(), r.text().await?);
                }
                Ok(())
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(started.elapsed())
}

/// What one read path returned.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Seen {
    rows: u64,
    checksum: u64,
    bytes: u64,
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn add_batch(seen: &mut Seen, b: &RecordBatch) -> anyhow::Result<()> {
    let ids = b
        .column_by_name("event_id")
        .context("no event_id column")?
        .as_string::<i32>();
    for id in ids.iter().flatten() {
        seen.checksum = seen.checksum.wrapping_add(fnv(id));
    }
    seen.rows += b.num_rows() as u64;
    Ok(())
}

fn data_bytes(d: &FlightData) -> u64 {
    (d.data_header.len() + d.data_body.len() + d.app_metadata.len()) as u64
}

async fn read_doget(server: &Server) -> anyhow::Result<Seen> {
    let mut client = flight_client(&server.flight).await?;
    let info = client
        .get_flight_info(authed(
            FlightDescriptor::new_path(vec!["events".into()]),
            &server.token,
        )?)
        .await?
        .into_inner();
    let ep = info.endpoint.first().context("no endpoint")?;
    let loc = ep
        .location
        .first()
        .context("no location")?
        .uri
        .replace("grpc+tcp://", "http://");
    let mut owner = flight_client(&loc).await?;
    let ticket = ep.ticket.clone().context("no ticket")?;
    decode_stream(
        owner
            .do_get(authed(ticket, &server.token)?)
            .await?
            .into_inner(),
    )
    .await
}

async fn decode_stream(stream: tonic::Streaming<FlightData>) -> anyhow::Result<Seen> {
    let mut seen = Seen {
        rows: 0,
        checksum: 0,
        bytes: 0,
    };
    let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = bytes.clone();
    let counted = stream.map_ok(move |d| {
        counter.fetch_add(data_bytes(&d), std::sync::atomic::Ordering::Relaxed);
        d
    });
    let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        counted.map_err(arrow_flight::error::FlightError::from),
    );
    while let Some(b) = batches.try_next().await? {
        add_batch(&mut seen, &b)?;
    }
    seen.bytes = bytes.load(std::sync::atomic::Ordering::Relaxed);
    Ok(seen)
}

async fn read_sql(server: &Server) -> anyhow::Result<Seen> {
    let channel = Channel::from_shared(server.flight.clone())?
        .connect()
        .await?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_header("authorization", format!("Bearer {}", server.token));
    let info = client.execute("SELECT * FROM events".into(), None).await?;
    let ep = info.endpoint.first().context("no endpoint")?;
    let loc = ep
        .location
        .first()
        .context("no location")?
        .uri
        .replace("grpc+tcp://", "http://");
    let mut owner = flight_client(&loc).await?;
    let ticket: Ticket = ep.ticket.clone().context("no ticket")?;
    decode_stream(
        owner
            .do_get(authed(ticket, &server.token)?)
            .await?
            .into_inner(),
    )
    .await
}

async fn read_http_arrow(server: &Server) -> anyhow::Result<Seen> {
    let client = reqwest::Client::new();
    let mut seen = Seen {
        rows: 0,
        checksum: 0,
        bytes: 0,
    };
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/events?limit={PAGE}", server.http);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = client
            .get(&url)
            .bearer_auth(&server.token)
            .header("accept", "application/vnd.apache.arrow.stream")
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("HTTP Arrow answered {}", r.status());
        }
        cursor = r
            .headers()
            .get("x-next-cursor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = r.bytes().await?;
        seen.bytes += body.len() as u64;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
        for b in reader {
            add_batch(&mut seen, &b?)?;
        }
        if cursor.is_none() {
            return Ok(seen);
        }
    }
}

async fn read_http_json(server: &Server) -> anyhow::Result<Seen> {
    let client = reqwest::Client::new();
    let mut seen = Seen {
        rows: 0,
        checksum: 0,
        bytes: 0,
    };
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/events?limit={PAGE}", server.http);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = client.get(&url).bearer_auth(&server.token).send().await?;
        if !r.status().is_success() {
            bail!("HTTP JSON answered {}", r.status());
        }
        let body = r.bytes().await?;
        seen.bytes += body.len() as u64;
        let v: Value = serde_json::from_slice(&body)?;
        for e in v["events"].as_array().context("no events array")? {
            seen.rows += 1;
            seen.checksum = seen
                .checksum
                .wrapping_add(fnv(e["event_id"].as_str().context("event_id")?));
        }
        cursor = v["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            return Ok(seen);
        }
    }
}

async fn read_graphql(server: &Server) -> anyhow::Result<Seen> {
    let client = reqwest::Client::new();
    let mut seen = Seen {
        rows: 0,
        checksum: 0,
        bytes: 0,
    };
    let mut after: Option<String> = None;
    let q = "query($after: String) { events(first: 10000, after: $after) { edges { node { eventId orgId eventType entityType entityId occurredAt data changes userId traceId } } pageInfo { hasNextPage endCursor } } }";
    loop {
        let body = json!({"query": q, "variables": {"after": after}});
        let r = client
            .post(format!("{}/graphql", server.http))
            .bearer_auth(&server.token)
            .json(&body)
            .send()
            .await?;
        let bytes = r.bytes().await?;
        seen.bytes += bytes.len() as u64;
        let v: Value = serde_json::from_slice(&bytes)?;
        if let Some(errs) = v.get("errors") {
            bail!("GraphQL errors: {errs}");
        }
        let conn = &v["data"]["events"];
        for e in conn["edges"].as_array().context("no edges")? {
            seen.rows += 1;
            seen.checksum = seen
                .checksum
                .wrapping_add(fnv(e["node"]["eventId"].as_str().context("eventId")?));
        }
        if conn["pageInfo"]["hasNextPage"].as_bool() != Some(true) {
            return Ok(seen);
        }
        after = conn["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    path: &'static str,
    secs: f64,
    seen: Seen,
}

async fn flight_vs_json(
    args: &Args,
    bin: &Path,
    out: &mut String,
    raw: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let sizes: Vec<usize> = if args.quick {
        vec![1_000, 100_000]
    } else {
        vec![1_000, 100_000, args.events]
    };
    for n in sizes {
        let server = start(bin, args.cells, &[])?;
        doput(&server, n, 65_536).await?;
        let mut rows: Vec<Row> = Vec::new();
        type Reader =
            for<'a> fn(&'a Server) -> futures::future::BoxFuture<'a, anyhow::Result<Seen>>;
        let paths: [(&'static str, Reader); 5] = [
            ("Flight DoGet", |s| Box::pin(read_doget(s))),
            ("Flight SQL", |s| Box::pin(read_sql(s))),
            ("HTTP Arrow IPC", |s| Box::pin(read_http_arrow(s))),
            ("HTTP JSON", |s| Box::pin(read_http_json(s))),
            ("GraphQL", |s| Box::pin(read_graphql(s))),
        ];
        for (name, read) in paths {
            let mut times = Vec::new();
            let mut last = None;
            for _ in 0..args.runs {
                let t = Instant::now();
                let seen = read(&server)
                    .await
                    .with_context(|| format!("{name} at {n} events"))?;
                times.push(t.elapsed().as_secs_f64());
                if seen.rows != n as u64 {
                    bail!("{name} returned {} rows, expected {n}", seen.rows);
                }
                last = Some(seen);
            }
            let seen = last.context("no runs")?;
            rows.push(Row {
                path: name,
                secs: median(times),
                seen,
            });
        }
        let reference = rows[0].seen.checksum;
        for r in &rows {
            if r.seen.checksum != reference {
                bail!(
                    "{} returned different rows (checksum {:x} vs {:x})",
                    r.path,
                    r.seen.checksum,
                    reference
                );
            }
        }
        let base = rows[0].secs;
        out.push_str(&format!(
            "\n### {n} events ({} cells, median of {} runs)\n\n| path | time (s) | rows/s | MB on the wire | MB/s | time / DoGet |\n|---|---:|---:|---:|---:|---:|\n",
            args.cells, args.runs
        ));
        for r in &rows {
            let mb = r.seen.bytes as f64 / 1e6;
            out.push_str(&format!(
                "| {} | {:.4} | {:.0} | {:.1} | {:.0} | {:.1}x |\n",
                r.path,
                r.secs,
                n as f64 / r.secs,
                mb,
                mb / r.secs,
                r.secs / base
            ));
            raw.push(json!({"events": n, "path": r.path, "seconds": r.secs, "bytes": r.seen.bytes, "rows": r.seen.rows}));
        }
    }
    Ok(())
}

async fn ingest(
    args: &Args,
    bin: &Path,
    out: &mut String,
    raw: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let n = if args.quick { 200_000 } else { args.events };
    out.push_str(
        "\n| path | durability | cells | events | time (s) | events/s | events/s per cell |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for durability in ["fsync", "interval"] {
        for (name, cells) in [
            ("DoPut (64k-row batches, 1 stream)", 1usize),
            ("HTTP POST (1000-event batches, 4 in flight)", 1),
        ] {
            let mut times = Vec::new();
            for _ in 0..args.runs {
                let server = start(bin, cells, &[("HONEYCELL_STORAGE__DURABILITY", durability)])?;
                let t = if name.starts_with("DoPut") {
                    doput(&server, n, 65_536).await?
                } else {
                    http_ingest(&server, n / 4, 1_000, 4).await?
                };
                times.push(t.as_secs_f64());
            }
            let events = if name.starts_with("DoPut") { n } else { n / 4 };
            let secs = median(times);
            let rate = events as f64 / secs;
            out.push_str(&format!(
                "| {name} | {durability} | {cells} | {events} | {secs:.3} | {rate:.0} | {:.0} |\n",
                rate / cells as f64
            ));
            raw.push(json!({"path": name, "durability": durability, "cells": cells, "events": events, "seconds": secs}));
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.runs = args.runs.min(2);
    }
    let bin = binary(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut out = String::new();
    let mut raw = Vec::new();
    out.push_str(&format!(
        "# {} — {}\n\nmachine: {} cores; command: `cargo run -p honeycell-bench --release -- {}`\n",
        args.scenario,
        chrono_now(),
        std::thread::available_parallelism().map_or(1, usize::from),
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    ));
    rt.block_on(async {
        match args.scenario.as_str() {
            "flight-vs-json" => flight_vs_json(&args, &bin, &mut out, &mut raw).await,
            "ingest" => ingest(&args, &bin, &mut out, &mut raw).await,
            other => bail!("unknown scenario {other:?}: use flight-vs-json or ingest"),
        }
    })?;
    let dir = workspace()
        .join("bench/results")
        .join(format!("{}-{}", args.scenario, stamp()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("report.md"), &out)?;
    std::fs::write(dir.join("raw.json"), serde_json::to_vec_pretty(&raw)?)?;
    print!("{out}");
    let _ = std::io::stdout().flush();
    eprintln!("report written to {}", dir.display());
    Ok(())
}

fn stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn chrono_now() -> String {
    format!("unix time {}", stamp())
}
