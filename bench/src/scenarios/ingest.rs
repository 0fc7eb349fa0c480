//! `ingest`: events/s and acknowledgement latency of each ingest path on a
//! one-cell server, under `durability = fsync` and `interval`.
//!
//! Latency comes from an open-loop run at a fixed rate well below
//! saturation; throughput from a closed-loop run (workers back to back).
//! Every request is acknowledged only once durable (fsync mode) or written
//! (interval mode). A fifth line keeps the single-stream DoPut figure
//! (64k-row batches), the path the ≥ 1M events/s goal is about. A last
//! section measures what idempotent ingest costs on that path: the same
//! stream with a client `event_id` on every event, against a server with
//! `storage.dedup_window = 0` (off) and one with the default (on), in
//! alternating rounds of the same run.

use std::sync::Arc;

use serde_json::{Value, json};

use anyhow::bail;
use arrow::array::{Array, RecordBatch, StringArray};

use super::{
    Ctx, doput, doput_batches, events_body, flight_client, graphql, grpc_outcome, http_client,
    json_events, make_batch, median, post_events, thousands,
};
use crate::load::{self, Outcome, RunStats};
use crate::report::{Report, class_table, run_json};
use crate::server::{Meter, Server, mb};

/// One ingest path: label, events per request, open-loop rate (requests/s),
/// closed-loop workers.
struct Path {
    label: &'static str,
    events: usize,
    rate: f64,
    workers: usize,
}

const PATHS: [Path; 4] = [
    Path {
        label: "HTTP, 1 event per request",
        events: 1,
        rate: 500.0,
        workers: 32,
    },
    Path {
        label: "HTTP, 1,000-event batches",
        events: 1000,
        rate: 20.0,
        workers: 4,
    },
    Path {
        label: "GraphQL ingestEvents, 100-event batches",
        events: 100,
        rate: 50.0,
        workers: 8,
    },
    Path {
        label: "Flight DoPut, 1,000-row batch per call",
        events: 1000,
        rate: 20.0,
        workers: 4,
    },
];

/// A request factory for path `p` (index `class`) against `server`.
struct Sender {
    client: reqwest::Client,
    url: Arc<str>,
    token: Arc<str>,
    bodies: Arc<Vec<Vec<u8>>>,
    flight:
        Option<arrow_flight::flight_service_client::FlightServiceClient<tonic::transport::Channel>>,
    batch: Option<arrow::array::RecordBatch>,
}

fn graphql_body(n: usize, seed: u64) -> Vec<u8> {
    let events: Vec<Value> = json_events(n, seed)
        .into_iter()
        .map(|e| {
            json!({
                "eventType": e["event_type"],
                "entityType": e["entity_type"],
                "entityId": e["entity_id"],
                "data": e["data"],
                "userId": e["user_id"],
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "query": "mutation($e: [EventInput!]!) { ingestEvents(events: $e) { accepted } }",
        "variables": {"e": events},
    }))
    .expect("JSON of generated events")
}

impl Sender {
    async fn new(server: &Server, token: &str, class: usize) -> anyhow::Result<Sender> {
        let p = &PATHS[class];
        let (url, bodies) = match class {
            0 | 1 => (
                format!("{}/v1/events", server.http),
                (0..16).map(|s| events_body(p.events, s * 7919)).collect(),
            ),
            2 => (
                format!("{}/graphql", server.http),
                (0..16).map(|s| graphql_body(p.events, s * 7919)).collect(),
            ),
            _ => (String::new(), Vec::new()),
        };
        let (flight, batch) = if class == 3 {
            (
                Some(flight_client(&server.flight).await?),
                Some(make_batch(0, p.events)?),
            )
        } else {
            (None, None)
        };
        Ok(Sender {
            client: http_client()?,
            url: url.into(),
            token: token.into(),
            bodies: Arc::new(bodies),
            flight,
            batch,
        })
    }

    fn make(&self, class: usize, i: u64) -> futures::future::BoxFuture<'static, Outcome> {
        let items = PATHS[class].events as u64;
        match class {
            0..=2 => {
                let body = self.bodies[(i % self.bodies.len() as u64) as usize].clone();
                let (client, url, token) =
                    (self.client.clone(), self.url.clone(), self.token.clone());
                if class == 2 {
                    Box::pin(graphql(client, url, token, body, class, items))
                } else {
                    Box::pin(post_events(client, url, token, body, class, items))
                }
            }
            _ => {
                let mut flight = self.flight.clone();
                let batch = self.batch.clone();
                let token = self.token.clone();
                Box::pin(async move {
                    let r = match (flight.as_mut(), batch) {
                        (Some(f), Some(b)) => doput_batches(f, &token, vec![b]).await,
                        _ => Err(anyhow::anyhow!("no Flight client")),
                    };
                    grpc_outcome(class, r)
                })
            }
        }
    }
}

pub async fn run(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let open_d = ctx.secs(20, 3);
    let closed_d = ctx.secs(10, 2);
    let stream_n = ctx
        .events
        .unwrap_or(if ctx.quick { 200_000 } else { 1_000_000 });
    rep.line(&format!(
        "\nOne cell. Latency: open loop at the fixed rate shown (well below saturation) for {} s, measured from each request's scheduled send time (coordinated-omission corrected); an answer is an acknowledgement of durable events. Throughput: closed loop, the workers shown sending back to back for {} s. Durability `fsync` acknowledges after the group-commit fsync; `interval` after the write (fsync every 10 ms).\n",
        open_d.as_secs(),
        closed_d.as_secs()
    ));
    if let Some(n) = ctx.target_note() {
        rep.line(n);
    }
    let mut summary = String::from(
        "| path | durability | open-loop rate (req/s) | p50 ms | p99 ms | p99.9 ms | closed-loop workers | events/s per cell | errors | server peak RSS (MB) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut lat_series = Vec::new();
    let mut all_details = String::new();
    for durability in ["fsync", "interval"] {
        let server = ctx
            .launcher
            .start(
                1,
                &[("HONEYCELL_STORAGE__DURABILITY", durability.to_owned())],
            )
            .await?;
        let token = server.token("bench-ingest")?;
        let mut details = String::new();
        for (class, p) in PATHS.iter().enumerate() {
            let sender = Arc::new(Sender::new(&server, &token, class).await?);
            let labels = [p.label];
            let meter = Meter::start(&server);
            let s = sender.clone();
            let open: RunStats = load::open_loop(
                &labels,
                p.rate,
                open_d,
                256,
                &format!("ingest {durability}: {} (open)", p.label),
                move |i| {
                    let f = s.make(class, i);
                    async move {
                        let mut o = f.await;
                        o.class = 0;
                        o
                    }
                },
            )
            .await;
            let s = sender.clone();
            let closed = load::closed_loop(&labels, p.workers, closed_d, 10_000_000, move |i| {
                let f = s.make(class, i);
                async move {
                    let mut o = f.await;
                    o.class = 0;
                    o
                }
            })
            .await;
            let usage = meter.stop();
            let o = &open.classes[0];
            let c = &closed.classes[0];
            let errors = o.errors
                + o.transport_errors
                + o.http_429
                + c.errors
                + c.transport_errors
                + c.http_429;
            summary.push_str(&format!(
                "| {} | {durability} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
                p.label,
                p.rate,
                o.ms(0.5),
                o.ms(0.99),
                o.ms(0.999),
                p.workers,
                thousands(closed.items_per_sec()),
                errors,
                mb(usage.server_peak_rss)
            ));
            details.push_str(&format!(
                "\n**{}, {durability}** — open loop: {}.\n\n{}\nclosed loop: {} events/s, p50 {:.2} ms, p99 {:.2} ms (latency under saturation).\n",
                p.label,
                open.generator_note(),
                class_table(&open),
                thousands(closed.items_per_sec()),
                c.ms(0.5),
                c.ms(0.99)
            ));
            lat_series.push((format!("{} ({durability})", p.label), o.percentiles()));
            rep.push_raw(json!({"path": p.label, "durability": durability, "open": run_json(&open), "closed": run_json(&closed), "events_per_s_per_cell": closed.items_per_sec(), "server_peak_rss": usage.server_peak_rss}));
        }
        // The single-stream bulk figure.
        let meter = Meter::start(&server);
        let t = doput(&server, &token, stream_n, 65_536).await?;
        let usage = meter.stop();
        let rate = stream_n as f64 / t.as_secs_f64();
        summary.push_str(&format!(
            "| Flight DoPut, one stream of 64k-row batches ({} events) | {durability} | — | — | — | — | 1 | {} | 0 | {} |\n",
            thousands(stream_n as f64),
            thousands(rate),
            mb(usage.server_peak_rss)
        ));
        rep.push_raw(json!({"path": "DoPut one stream 64k batches", "durability": durability, "events": stream_n, "seconds": t.as_secs_f64(), "events_per_s_per_cell": rate}));
        all_details.push_str(&format!(
            "\n## Details, durability = {durability}\n{details}"
        ));
    }
    rep.line(&format!("\n## Summary\n\n{summary}"));
    rep.latency_plot(
        "ingest-latency",
        "ingest acknowledgement latency (open loop)",
        &lat_series,
    );
    rep.line(&all_details);
    dedup_cost(ctx, rep, stream_n).await
}

/// DoPut events/s with client event ids, deduplication off and on.
async fn dedup_cost(ctx: &Ctx, rep: &mut Report, n: usize) -> anyhow::Result<()> {
    let rounds = if ctx.quick { 1 } else { ctx.runs.max(3) };
    let windows = [("0 (off)", "0"), ("24h (default, on)", "24h")];
    let mut servers = Vec::new();
    for (_, window) in windows {
        let env = [
            ("HONEYCELL_STORAGE__DURABILITY", "interval".to_owned()),
            ("HONEYCELL_STORAGE__DEDUP_WINDOW", window.to_owned()),
        ];
        let server = ctx.launcher.start(1, &env).await?;
        let token = server.token("bench-ingest-dedup")?;
        servers.push((server, token));
    }
    let mut rates = vec![Vec::new(); windows.len()];
    for round in 0..rounds {
        for (w, (server, token)) in servers.iter().enumerate() {
            let batches = batches_with_ids(n, 65_536, round * windows.len() + w)?;
            let mut client = flight_client(&server.flight).await?;
            let started = std::time::Instant::now();
            let accepted = doput_batches(&mut client, token, batches).await?;
            let secs = started.elapsed().as_secs_f64();
            if accepted != n as u64 {
                bail!("DoPut with event ids acknowledged {accepted} of {n} events");
            }
            rates[w].push(n as f64 / secs);
        }
    }
    let (off, on) = (median(rates[0].clone()), median(rates[1].clone()));
    let mut table = String::from(
        "| storage.dedup_window | events/s (median) | every round | vs off |\n|---|---:|---|---:|\n",
    );
    for ((label, _), r) in windows.iter().zip(&rates) {
        let each: Vec<String> = r.iter().map(|x| thousands(*x)).collect();
        table.push_str(&format!(
            "| {label} | {} | {} | {:+.1} % |\n",
            thousands(median(r.clone())),
            each.join(", "),
            (median(r.clone()) / off - 1.0) * 100.0
        ));
    }
    rep.line(&format!(
        "\n## Idempotent ingest's cost\n\nOne DoPut stream of 64k-row batches ({} events, each with its own client `event_id`, none repeated), durability `interval`, {rounds} alternating round(s) per setting; goal: on within 10 % of off.\n\n{table}",
        thousands(n as f64)
    ));
    if let Some(note) = ctx.target_note() {
        rep.line(note);
    }
    rep.push_raw(json!({"path": "DoPut one stream 64k batches, client event ids", "dedup_off_events_per_s": rates[0], "dedup_on_events_per_s": rates[1], "cost": 1.0 - on / off}));
    Ok(())
}

/// `n` events in `batch`-row batches, each with a client event id unique
/// to this call (`salt` and the clock in the high bits).
fn batches_with_ids(n: usize, batch: usize, salt: usize) -> anyhow::Result<Vec<RecordBatch>> {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let high = (u128::from(clock) << 64) | ((salt as u128) << 40);
    (0..n)
        .step_by(batch.max(1))
        .map(|start| {
            let b = make_batch(start, batch.min(n - start))?;
            let ids = StringArray::from_iter_values((start..start + b.num_rows()).map(|i| {
                let hex = format!("{:032x}", high | i as u128);
                format!(
                    "{}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..]
                )
            }));
            let mut fields = b.schema().fields().to_vec();
            fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(
                "event_id",
                ids.data_type().clone(),
                false,
            )));
            let mut columns = b.columns().to_vec();
            columns.push(Arc::new(ids));
            Ok(RecordBatch::try_new(
                Arc::new(arrow::datatypes::Schema::new(fields)),
                columns,
            )?)
        })
        .collect()
}
