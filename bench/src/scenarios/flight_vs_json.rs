//! `flight-vs-json`: ingest N events in one of three shapes (64k-row DoPut
//! batches, 1,000-event HTTP POSTs, single-event HTTP POSTs), then fetch the
//! identical result over Flight DoGet, Flight SQL, HTTP Arrow IPC, HTTP JSON
//! and GraphQL, and time Flight SQL `SELECT count(*)`; every path must return
//! the same rows (count and a checksum of event ids) or the run fails.
//! Beside it, ROAPI serves the same events (as Parquet) over Flight SQL,
//! REST JSON and SQL over HTTP.
//!
//! The shape matters because the server keeps appends as they came until
//! they are sealed: a reader of small appends must not see small batches.
//! Times include the client decoding every row and hashing its event id.
//! The server's peak RSS is measured per path (the kernel's high-water mark
//! is reset before each path).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{FlightData, FlightDescriptor, Ticket};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Deserialize;
use serde_json::json;
use tonic::transport::Channel;

use super::roapi::{Roapi, write_parquet};
use super::{Ctx, authed, doput, events_body, flight_client, median, thousands};
use crate::report::Report;
use crate::server::{Server, mb};

const PAGE: usize = 10_000;
const ORG: &str = "bench";

/// What one read path returned.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Seen {
    pub rows: u64,
    pub checksum: u64,
    pub bytes: u64,
    /// Record batches received (Arrow paths; 0 for JSON).
    pub batches: u64,
}

impl Seen {
    /// The batch count for a report, `—` for JSON paths.
    fn batches_text(&self) -> String {
        if self.batches == 0 {
            "—".to_owned()
        } else {
            thousands(self.batches as f64)
        }
    }
}

pub fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Adds a batch's rows and event ids (any string type) to `seen`.
pub fn add_batch(seen: &mut Seen, b: &RecordBatch) -> anyhow::Result<()> {
    let col = b.column_by_name("event_id").context("no event_id column")?;
    let col = if col.data_type() == &DataType::Utf8 {
        col.clone()
    } else {
        arrow::compute::cast(col, &DataType::Utf8)?
    };
    for id in col.as_string::<i32>().iter().flatten() {
        seen.checksum = seen.checksum.wrapping_add(fnv(id));
    }
    seen.rows += b.num_rows() as u64;
    seen.batches += 1;
    Ok(())
}

fn data_bytes(d: &FlightData) -> u64 {
    (d.data_header.len() + d.data_body.len() + d.app_metadata.len()) as u64
}

pub async fn decode_stream(stream: tonic::Streaming<FlightData>) -> anyhow::Result<Seen> {
    let mut seen = Seen::default();
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = bytes.clone();
    let counted = stream.map_ok(move |d| {
        counter.fetch_add(data_bytes(&d), Ordering::Relaxed);
        d
    });
    let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        counted.map_err(arrow_flight::error::FlightError::from),
    );
    while let Some(b) = batches.try_next().await? {
        add_batch(&mut seen, &b)?;
    }
    seen.bytes = bytes.load(Ordering::Relaxed);
    Ok(seen)
}

/// GetFlightInfo on the shared port, then DoGet at the owning cell.
async fn doget_stream(
    server: &Server,
    token: &str,
) -> anyhow::Result<tonic::Streaming<FlightData>> {
    let mut client = flight_client(&server.flight).await?;
    let info = client
        .get_flight_info(authed(
            FlightDescriptor::new_path(vec!["events".into()]),
            token,
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
    Ok(owner.do_get(authed(ticket, token)?).await?.into_inner())
}

async fn read_doget(server: &Server, token: &str) -> anyhow::Result<Seen> {
    decode_stream(doget_stream(server, token).await?).await
}

/// Every event as record batches (for the Parquet export).
async fn fetch_batches(server: &Server, token: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let stream = doget_stream(server, token).await?;
    let batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        stream.map_err(arrow_flight::error::FlightError::from),
    );
    Ok(batches.try_collect().await?)
}

async fn read_sql(server: &Server, token: &str) -> anyhow::Result<Seen> {
    decode_stream(sql_stream(server, token, "SELECT * FROM events").await?).await
}

/// `SELECT count(*) FROM events` over Flight SQL.
async fn count_sql(server: &Server, token: &str) -> anyhow::Result<u64> {
    let stream = sql_stream(server, token, "SELECT count(*) FROM events").await?;
    let batches: Vec<RecordBatch> =
        arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            stream.map_err(arrow_flight::error::FlightError::from),
        )
        .try_collect()
        .await?;
    count_of(&batches)
}

/// The answer of a `SELECT count(*)`.
pub fn count_of(batches: &[RecordBatch]) -> anyhow::Result<u64> {
    let b = batches.first().context("count(*) returned no batch")?;
    let c = b
        .column(0)
        .as_primitive_opt::<arrow::datatypes::Int64Type>()
        .context("count(*) is not an Int64")?;
    Ok(u64::try_from(c.value(0))?)
}

/// The median time of `runs` counts by `count`, each of which must be `n`.
pub async fn timed_count<F, Fut>(
    runs: usize,
    n: usize,
    what: &str,
    mut count: F,
) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let c = count()
            .await
            .with_context(|| format!("{what} count(*) at {n} events"))?;
        times.push(t.elapsed().as_secs_f64());
        if c != n as u64 {
            bail!("{what} count(*) answered {c}, expected {n}");
        }
    }
    Ok(median(times))
}

/// Flight SQL: execute `sql`, then DoGet at the owning cell.
async fn sql_stream(
    server: &Server,
    token: &str,
    sql: &str,
) -> anyhow::Result<tonic::Streaming<FlightData>> {
    let channel = Channel::from_shared(server.flight.clone())?
        .connect()
        .await?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_header("authorization", format!("Bearer {token}"));
    let info = client.execute(sql.into(), None).await?;
    let ep = info.endpoint.first().context("no endpoint")?;
    let loc = ep
        .location
        .first()
        .context("no location")?
        .uri
        .replace("grpc+tcp://", "http://");
    let mut owner = flight_client(&loc).await?;
    let ticket: Ticket = ep.ticket.clone().context("no ticket")?;
    Ok(owner.do_get(authed(ticket, token)?).await?.into_inner())
}

async fn read_http_arrow(server: &Server, token: &str) -> anyhow::Result<Seen> {
    let client = reqwest::Client::new();
    let mut seen = Seen::default();
    let mut cursor: Option<String> = None;
    for _ in 0..1_000_000 {
        let mut url = format!("{}/v1/events?limit={PAGE}", server.http);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = client
            .get(&url)
            .bearer_auth(token)
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
    bail!("HTTP Arrow paging did not end")
}

#[derive(Deserialize)]
struct JsonPage {
    events: Vec<JsonEvent>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct JsonEvent {
    event_id: String,
}

async fn read_http_json(server: &Server, token: &str) -> anyhow::Result<Seen> {
    let client = reqwest::Client::new();
    let mut seen = Seen::default();
    let mut cursor: Option<String> = None;
    for _ in 0..1_000_000 {
        let mut url = format!("{}/v1/events?limit={PAGE}", server.http);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = client.get(&url).bearer_auth(token).send().await?;
        if !r.status().is_success() {
            bail!("HTTP JSON answered {}", r.status());
        }
        let body = r.bytes().await?;
        seen.bytes += body.len() as u64;
        let page: JsonPage = serde_json::from_slice(&body)?;
        for e in &page.events {
            seen.rows += 1;
            seen.checksum = seen.checksum.wrapping_add(fnv(&e.event_id));
        }
        cursor = page.next_cursor;
        if cursor.is_none() {
            return Ok(seen);
        }
    }
    bail!("HTTP JSON paging did not end")
}

#[derive(Deserialize)]
struct GqlAnswer {
    data: Option<GqlData>,
    errors: Option<serde_json::Value>,
}
#[derive(Deserialize)]
struct GqlData {
    events: GqlConn,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GqlConn {
    edges: Vec<GqlEdge>,
    page_info: GqlPageInfo,
}
#[derive(Deserialize)]
struct GqlEdge {
    node: GqlNode,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GqlNode {
    event_id: String,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GqlPageInfo {
    has_next_page: bool,
    end_cursor: Option<String>,
}

async fn read_graphql(server: &Server, token: &str) -> anyhow::Result<Seen> {
    let client = reqwest::Client::new();
    let mut seen = Seen::default();
    let mut after: Option<String> = None;
    let q = "query($after: String) { events(first: 10000, after: $after) { edges { node { eventId orgId eventType entityType entityId occurredAt data changes userId traceId } } pageInfo { hasNextPage endCursor } } }";
    for _ in 0..1_000_000 {
        let body = json!({"query": q, "variables": {"after": after}});
        let r = client
            .post(format!("{}/graphql", server.http))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let bytes = r.bytes().await?;
        seen.bytes += bytes.len() as u64;
        let v: GqlAnswer = serde_json::from_slice(&bytes)?;
        if let Some(errs) = v.errors {
            bail!("GraphQL errors: {errs}");
        }
        let conn = v.data.context("GraphQL answered no data")?.events;
        for e in &conn.edges {
            seen.rows += 1;
            seen.checksum = seen.checksum.wrapping_add(fnv(&e.node.event_id));
        }
        if !conn.page_info.has_next_page {
            return Ok(seen);
        }
        after = conn.page_info.end_cursor;
    }
    bail!("GraphQL paging did not end")
}

/// One path's figures.
struct Row {
    path: &'static str,
    secs: f64,
    seen: Seen,
    peak_rss: Option<u64>,
}

type Reader =
    for<'a> fn(&'a Server, &'a str) -> futures::future::BoxFuture<'a, anyhow::Result<Seen>>;

fn sizes(ctx: &Ctx) -> Vec<usize> {
    let mut v = if ctx.quick {
        vec![1_000, 100_000]
    } else {
        vec![1_000, 100_000, 1_000_000, 10_000_000]
    };
    if let Some(n) = ctx.events {
        v.retain(|&s| s < n);
        v.push(n);
    }
    v
}

/// How the events are ingested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One DoPut stream of 65,536-row batches (per million events).
    DoPut,
    /// `POST /v1/events` of 1,000 events each, as the README shows.
    Http1000,
    /// `POST /v1/events` of one event each.
    HttpSingle,
}

/// Single-event ingest is slow (one fsync'd request per event): its size.
const SINGLE_EVENTS: usize = 20_000;
const SINGLE_EVENTS_QUICK: usize = 5_000;
/// Requests in flight while ingesting over HTTP.
const HTTP_CONCURRENCY: usize = 16;

impl Shape {
    const ALL: [Shape; 3] = [Shape::DoPut, Shape::Http1000, Shape::HttpSingle];

    fn label(self) -> &'static str {
        match self {
            Shape::DoPut => "DoPut, 64k-row batches",
            Shape::Http1000 => "HTTP, 1,000-event POSTs",
            Shape::HttpSingle => "HTTP, single-event POSTs",
        }
    }

    /// DoPut at every size; 1,000-event POSTs up to 1M; single events at
    /// one small size only.
    fn sizes(self, ctx: &Ctx) -> Vec<usize> {
        let all = sizes(ctx);
        match self {
            Shape::DoPut => all,
            Shape::Http1000 => {
                let mut v: Vec<usize> = all.iter().copied().filter(|&n| n <= 1_000_000).collect();
                if v.is_empty() {
                    v.push(1_000_000);
                }
                v
            }
            Shape::HttpSingle => {
                let cap = if ctx.quick {
                    SINGLE_EVENTS_QUICK
                } else {
                    SINGLE_EVENTS
                };
                vec![all.last().copied().unwrap_or(cap).min(cap)]
            }
        }
    }

    async fn ingest(self, server: &Server, token: &str, n: usize) -> anyhow::Result<()> {
        let per_request = match self {
            Shape::DoPut => {
                let chunk = 1_000_000;
                for start in (0..n).step_by(chunk) {
                    doput(server, token, chunk.min(n - start), 65_536).await?;
                }
                return Ok(());
            }
            Shape::Http1000 => 1_000,
            Shape::HttpSingle => 1,
        };
        let client = reqwest::Client::new();
        let url = format!("{}/v1/events", server.http);
        let posts = (0..n).step_by(per_request).map(|start| {
            let body = events_body(per_request.min(n - start), start as u64);
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client
                    .post(&url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("POST /v1/events answered {}", r.status());
                }
                anyhow::Ok(())
            }
        });
        let mut done = futures::stream::iter(posts).buffer_unordered(HTTP_CONCURRENCY);
        while let Some(r) = done.next().await {
            r?;
        }
        Ok(())
    }
}

/// One shape and size's Flight figures, for the summary across shapes.
struct ShapeFigures {
    shape: Shape,
    n: usize,
    doget: (f64, u64),
    sql: (f64, u64),
    count_s: f64,
    json_s: f64,
}

pub async fn run(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    rep.line(&format!("\nIngest N events in each of three shapes — one DoPut stream of 64k-row batches; `POST /v1/events` of 1,000 events (the README's way; sizes up to 1M); `POST /v1/events` of one event ({} events only: one request per event) — then read all of them back over each path and time Flight SQL `SELECT count(*) FROM events`. HTTP ingest keeps {HTTP_CONCURRENCY} requests in flight. Times include the client decoding every row and hashing its event id; JSON and GraphQL page at 10,000 rows; `batches` is the record batches the client received. `peak RSS` is the server's VmHWM during that path (reset before it). Every path must return the same row count and checksum of event ids, or the run fails.\n", thousands(if ctx.quick { SINGLE_EVENTS_QUICK } else { SINGLE_EVENTS } as f64)));
    if let Some(n) = ctx.target_note() {
        rep.line(n);
    }
    let peer_n = sizes(ctx)
        .iter()
        .copied()
        .filter(|&n| n <= 1_000_000)
        .max()
        .unwrap_or(0);
    let mut figures = Vec::new();
    for shape in Shape::ALL {
        rep.line(&format!("\n## Ingest: {}\n", shape.label()));
        for n in shape.sizes(ctx) {
            let f = one(
                ctx,
                rep,
                shape,
                n,
                n == peer_n && shape != Shape::HttpSingle,
            )
            .await?;
            figures.push(f);
        }
    }
    summary(rep, &figures);
    Ok(())
}

/// The figures of every shape side by side, and the HTTP shapes' Flight SQL
/// against DoPut's at the same size.
fn summary(rep: &mut Report, figures: &[ShapeFigures]) {
    rep.line("\n## By ingest shape\n\n| ingest | events | DoGet (s) | DoGet batches | Flight SQL `SELECT *` (s) | SQL batches | `count(*)` (ms) | HTTP JSON (s) | SQL `SELECT *` / DoPut-ingested |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for f in figures {
        let base = figures
            .iter()
            .find(|b| b.shape == Shape::DoPut && b.n == f.n)
            .map(|b| b.sql.0);
        let ratio = match (f.shape, base) {
            (Shape::DoPut, _) => "—".to_owned(),
            (_, Some(b)) => format!(
                "{:.2}x (goal ≤ 1.2x: {})",
                f.sql.0 / b,
                if f.sql.0 / b <= 1.2 { "met" } else { "MISSED" }
            ),
            (_, None) => "— (no DoPut run at this size)".to_owned(),
        };
        rep.line(&format!(
            "| {} | {} | {:.4} | {} | {:.4} | {} | {:.1} | {:.4} | {ratio} |",
            f.shape.label(),
            thousands(f.n as f64),
            f.doget.0,
            thousands(f.doget.1 as f64),
            f.sql.0,
            thousands(f.sql.1 as f64),
            f.count_s * 1e3,
            f.json_s,
        ));
    }
}

/// Ingests `n` events in `shape` on a fresh server and reads them back over
/// every path; ROAPI beside it when `peer`.
async fn one(
    ctx: &Ctx,
    rep: &mut Report,
    shape: Shape,
    n: usize,
    peer_too: bool,
) -> anyhow::Result<ShapeFigures> {
    let paths: [(&'static str, Reader); 5] = [
        ("Flight DoGet", |s, t| Box::pin(read_doget(s, t))),
        ("Flight SQL", |s, t| Box::pin(read_sql(s, t))),
        ("HTTP Arrow IPC", |s, t| Box::pin(read_http_arrow(s, t))),
        ("HTTP JSON", |s, t| Box::pin(read_http_json(s, t))),
        ("GraphQL", |s, t| Box::pin(read_graphql(s, t))),
    ];
    let server = ctx.launcher.start(ctx.cells, &[]).await?;
    // Against a target, each size and shape gets its own org so they do
    // not mix.
    let org = if ctx.launcher.is_target() {
        format!("{ORG}-{shape:?}-{n}-{}", std::process::id()).to_lowercase()
    } else {
        ORG.to_owned()
    };
    let token = server.token(&org)?;
    let t = Instant::now();
    shape
        .ingest(&server, &token, n)
        .await
        .with_context(|| format!("ingest of {n} events, {}", shape.label()))?;
    let ingest_s = t.elapsed().as_secs_f64();
    let runs = if n >= 5_000_000 { 1 } else { ctx.runs };
    let mut rows: Vec<Row> = Vec::new();
    for (name, read) in paths {
        server.reset_peak();
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..runs {
            let t = Instant::now();
            let seen = read(&server, &token)
                .await
                .with_context(|| format!("{name} at {n} events"))?;
            times.push(t.elapsed().as_secs_f64());
            if seen.rows != n as u64 {
                bail!("{name} returned {} rows, expected {n}", seen.rows);
            }
            last = Some(seen);
        }
        rows.push(Row {
            path: name,
            secs: median(times),
            seen: last.context("no runs")?,
            peak_rss: server.peak_rss(),
        });
    }
    let count_s = timed_count(runs, n, "Honeycell", || count_sql(&server, &token)).await?;
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
    rep.line(&format!(
        "\n### {} events, {} ({} cells, median of {runs} runs; ingest took {ingest_s:.2} s)\n\n| path | time (s) | rows/s | batches | MB on the wire | MB/s | time / DoGet | server peak RSS (MB) |\n|---|---:|---:|---:|---:|---:|---:|---:|",
        thousands(n as f64),
        shape.label(),
        ctx.cells
    ));
    for r in &rows {
        let mbytes = r.seen.bytes as f64 / 1e6;
        let batches = r.seen.batches_text();
        rep.line(&format!(
            "| {} | {:.4} | {} | {batches} | {:.1} | {:.0} | {:.1}x | {} |",
            r.path,
            r.secs,
            thousands(n as f64 / r.secs),
            mbytes,
            mbytes / r.secs,
            r.secs / base,
            mb(r.peak_rss)
        ));
        rep.push_raw(json!({"events": n, "ingest": shape.label(), "system": "honeycell", "path": r.path, "seconds": r.secs, "rows_per_s": n as f64 / r.secs, "bytes": r.seen.bytes, "rows": r.seen.rows, "batches": r.seen.batches, "checksum": format!("{:x}", r.seen.checksum), "server_peak_rss": r.peak_rss}));
    }
    rep.push_raw(json!({"events": n, "ingest": shape.label(), "system": "honeycell", "path": "Flight SQL count(*)", "seconds": count_s}));
    rep.line(&format!(
        "\nAll {} paths returned {n} rows with checksum `{reference:x}`. Flight SQL `SELECT count(*) FROM events`: {:.1} ms.",
        rows.len(),
        count_s * 1e3
    ));
    let figures = ShapeFigures {
        shape,
        n,
        doget: (rows[0].secs, rows[0].seen.batches),
        sql: (rows[1].secs, rows[1].seen.batches),
        count_s,
        json_s: rows[3].secs,
    };
    if peer_too {
        let hc = Honeycell {
            n,
            reference,
            rates: rows.iter().map(|r| (r.path, n as f64 / r.secs)).collect(),
            count_s,
        };
        peer(ctx, rep, &server, &token, &hc).await?;
    }
    Ok(figures)
}

/// Honeycell's figures that ROAPI's stand beside.
struct Honeycell<'a> {
    n: usize,
    /// The checksum of event ids every path returned.
    reference: u64,
    /// Rows per second by path.
    rates: Vec<(&'a str, f64)>,
    count_s: f64,
}

/// ROAPI on the same events, beside Honeycell's figures.
async fn peer(
    ctx: &Ctx,
    rep: &mut Report,
    server: &Server,
    token: &str,
    hc: &Honeycell<'_>,
) -> anyhow::Result<()> {
    let Honeycell {
        n,
        reference,
        count_s,
        ..
    } = *hc;
    rep.line(&format!(
        "\n### Peer: ROAPI on the same {} events (Parquet)\n",
        thousands(n as f64)
    ));
    let dir = tempfile::Builder::new()
        .prefix("honeycell-bench-roapi-")
        .tempdir()?;
    let batches = fetch_batches(server, token).await?;
    // The client's own floor: hashing every event id of batches already in
    // memory, which every path above pays on top of the transfer.
    let t = Instant::now();
    let mut floor = Seen::default();
    for b in &batches {
        add_batch(&mut floor, b)?;
    }
    let floor_s = t.elapsed().as_secs_f64();
    rep.line(&format!(
        "Client floor: hashing the {} event ids of batches already in memory takes {floor_s:.3} s ({} rows/s); every Arrow path above and below pays it on top of the transfer, so it caps the ratios that this method can show.\n",
        thousands(n as f64),
        thousands(n as f64 / floor_s)
    ));
    let parquet = match write_parquet(&batches, dir.path()) {
        Ok(p) => p,
        Err(e) => {
            rep.line(&format!("**ROAPI skipped:** {e:#}"));
            return Ok(());
        }
    };
    let columns: Vec<String> = batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default();
    drop(batches);
    let roapi = match Roapi::start(&parquet, dir.path()).await {
        Ok(r) => r,
        Err(e) => {
            rep.line(&format!("**ROAPI skipped:** {e:#}"));
            return Ok(());
        }
    };
    let client = reqwest::Client::new();
    let version = std::process::Command::new("sh")
        .args(["-c", "roapi --version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    rep.line(&format!(
        "{version}, started with `roapi -a 127.0.0.1:0 -p 127.0.0.1:0 --addr-flight-sql 127.0.0.1:0 -t events=events.parquet` (table held in memory by ROAPI). JSON and GraphQL paths return the whole table in one answer (ROAPI has no cursor paging; its GraphQL selects every column); Flight SQL is `SELECT * FROM events`. Checksums must match Honeycell's, or the run fails.\n"
    ));
    let mut rows = Vec::new();
    for name in [
        "ROAPI Flight SQL",
        "ROAPI REST JSON",
        "ROAPI SQL-over-HTTP JSON",
        "ROAPI GraphQL",
    ] {
        roapi.reset_peak();
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..ctx.runs {
            let t = Instant::now();
            let seen = match name {
                "ROAPI Flight SQL" => roapi.read_flight_sql().await,
                "ROAPI REST JSON" => roapi.read_rest(&client).await,
                "ROAPI GraphQL" => roapi.read_graphql(&client, &columns).await,
                _ => roapi.read_sql_http(&client).await,
            }
            .with_context(|| format!("{name} at {n} events"))?;
            times.push(t.elapsed().as_secs_f64());
            last = Some(seen);
        }
        let seen = last.context("no runs")?;
        if seen.rows != n as u64 || seen.checksum != reference {
            bail!(
                "{name} returned {} rows with checksum {:x}; Honeycell served {n} rows with checksum {reference:x}",
                seen.rows,
                seen.checksum
            );
        }
        rows.push(Row {
            path: name,
            secs: median(times),
            seen,
            peak_rss: roapi.peak_rss(),
        });
    }
    rep.line("| path | time (s) | rows/s | batches | MB on the wire | MB/s | ROAPI peak RSS (MB) |\n|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let mbytes = r.seen.bytes as f64 / 1e6;
        let batches = r.seen.batches_text();
        rep.line(&format!(
            "| {} | {:.4} | {} | {batches} | {:.1} | {:.0} | {} |",
            r.path,
            r.secs,
            thousands(n as f64 / r.secs),
            mbytes,
            mbytes / r.secs,
            mb(r.peak_rss)
        ));
        rep.push_raw(json!({"events": n, "system": "roapi", "path": r.path, "seconds": r.secs, "rows_per_s": n as f64 / r.secs, "bytes": r.seen.bytes, "rows": r.seen.rows, "peak_rss": r.peak_rss}));
    }
    let rate = |p: &str| {
        hc.rates
            .iter()
            .find(|(k, _)| *k == p)
            .map_or(f64::NAN, |(_, v)| *v)
    };
    let peer_rate = |p: &str| {
        rows.iter()
            .find(|r| r.path == p)
            .map_or(f64::NAN, |r| n as f64 / r.secs)
    };
    let best_json = peer_rate("ROAPI REST JSON").max(peer_rate("ROAPI SQL-over-HTTP JSON"));
    let cmp = |a: f64, b: f64, goal: f64| {
        let r = a / b;
        format!(
            "{r:.2}x (goal ≥ {goal}x: {})",
            if r >= goal { "met" } else { "MISSED" }
        )
    };
    rep.line(&format!(
        "\nRatios (rows/s, same run): Honeycell DoGet / ROAPI Flight SQL = {}; Honeycell Flight SQL / ROAPI Flight SQL = {}; Honeycell HTTP JSON / ROAPI best JSON = {}; Honeycell GraphQL / ROAPI best JSON = {}; Honeycell GraphQL / ROAPI GraphQL = {}.",
        cmp(rate("Flight DoGet"), peer_rate("ROAPI Flight SQL"), 2.0),
        cmp(rate("Flight SQL"), peer_rate("ROAPI Flight SQL"), 2.0),
        cmp(rate("HTTP JSON"), best_json, 1.0),
        cmp(rate("GraphQL"), best_json, 1.0),
        cmp(rate("GraphQL"), peer_rate("ROAPI GraphQL"), 1.0),
    ));
    let roapi_count = timed_count(ctx.runs, n, "ROAPI", || roapi.count_flight_sql()).await?;
    rep.line(&format!(
        "`SELECT count(*) FROM events` over Flight SQL: Honeycell {:.1} ms, ROAPI {:.1} ms.",
        count_s * 1e3,
        roapi_count * 1e3
    ));
    rep.push_raw(json!({"events": n, "system": "roapi", "path": "ROAPI Flight SQL count(*)", "seconds": roapi_count}));
    if let Some(cpu) = roapi.cpu_secs() {
        rep.line(&format!("ROAPI used {cpu:.1} CPU-seconds in all."));
    }
    Ok(())
}
