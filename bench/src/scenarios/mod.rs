//! The scenarios, and what they share: generated events, request helpers
//! that turn an answer into a [`load::Outcome`], and Flight helpers.

pub mod burst;
pub mod cells_vs_shared;
pub mod counts;
pub mod flight_vs_json;
pub mod hostile;
pub mod ingest;
pub mod overload;
pub mod roapi;
pub mod scaling;
pub mod tls_handshakes;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use arrow::array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightDescriptor, PutResult};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::load::Outcome;
use crate::server::{Launcher, Server};

/// What every scenario gets.
pub struct Ctx {
    pub launcher: Launcher,
    pub quick: bool,
    /// Largest event count for flight-vs-json and the DoPut stream.
    pub events: Option<usize>,
    pub runs: usize,
    pub cells: usize,
    /// Seconds per load phase, overriding the scenario's default.
    pub duration: Option<u64>,
    /// Offered rate of `burst` (overriding 10,000 req/s) or of `hostile`'s
    /// attacker (overriding 200 req/s).
    pub rate: Option<f64>,
    /// `hostile`: only these attacks (empty: all of them).
    pub attacks: Vec<String>,
    /// The command line, for the report.
    pub command: String,
}

impl Ctx {
    /// `full` seconds, `quick` with `--quick`, or `--duration`.
    pub fn secs(&self, full: u64, quick: u64) -> Duration {
        Duration::from_secs(
            self.duration
                .unwrap_or(if self.quick { quick } else { full }),
        )
    }

    /// A line for reports run against `--target`.
    pub fn target_note(&self) -> Option<&'static str> {
        self.launcher.is_target().then_some(
            "**Run against `--target`:** the server's own configuration was used (the scenario's durability, rate-limit and cell settings were NOT applied) and its memory and CPU could not be read.",
        )
    }
}

/// An HTTP client for load: keep-alive pool, 10-s timeout, no proxy.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(2048)
        .no_proxy()
        .tcp_nodelay(true)
        .build()?)
}

/// A cheap deterministic hash (splitmix64), for choosing orgs and paths.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `n` small, varied JSON events, numbered from `seed`.
pub fn json_events(n: usize, seed: u64) -> Vec<Value> {
    let entities = ["order", "user", "invoice", "ticket", "payment"];
    let types = ["INSERT", "UPDATE", "DELETE", "CUSTOM"];
    (0..n as u64)
        .map(|i| {
            let k = seed.wrapping_add(i);
            json!({
                "event_type": types[(k % 4) as usize],
                "entity_type": entities[(k % 5) as usize],
                "entity_id": format!("e-{}", k % 50_000),
                "data": {"amount": k % 997, "currency": "EUR"},
                "user_id": format!("user-{}", k % 1000),
            })
        })
        .collect()
}

/// The JSON body of `n` events.
pub fn events_body(n: usize, seed: u64) -> Vec<u8> {
    serde_json::to_vec(&json_events(n, seed)).expect("JSON of generated events")
}

/// The outcome of an HTTP answer; reads (and drops) the body. A 200 whose
/// GraphQL body holds `errors` counts as an error (status 500).
pub async fn outcome(
    class: usize,
    items: u64,
    graphql: bool,
    r: Result<reqwest::Response, reqwest::Error>,
) -> Outcome {
    let Ok(r) = r else {
        return Outcome {
            class,
            status: None,
            retry_after: false,
            items: 0,
        };
    };
    let mut status = r.status().as_u16();
    let retry_after = r.headers().contains_key(reqwest::header::RETRY_AFTER);
    match r.bytes().await {
        Ok(body) => {
            if graphql && status == 200 && memchr_errors(&body) {
                status = 500;
            }
        }
        Err(_) => {
            return Outcome {
                class,
                status: None,
                retry_after,
                items: 0,
            };
        }
    }
    Outcome {
        class,
        status: Some(status),
        retry_after,
        items,
    }
}

fn memchr_errors(body: &[u8]) -> bool {
    body.windows(8).any(|w| w == b"\"errors\"")
}

/// `POST /v1/events` with a prepared JSON body of `items` events.
pub async fn post_events(
    client: reqwest::Client,
    url: Arc<str>,
    token: Arc<str>,
    body: Vec<u8>,
    class: usize,
    items: u64,
) -> Outcome {
    let r = client
        .post(&*url)
        .bearer_auth(&*token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    outcome(class, items, false, r).await
}

/// Tokens for the orgs `{prefix}-0` .. `{prefix}-{n-1}`, each seeded with
/// 100 events through `POST /v1/events` so that reads have data.
pub async fn seeded_orgs(
    server: &Server,
    client: &reqwest::Client,
    prefix: &str,
    n: u64,
) -> anyhow::Result<Vec<Arc<str>>> {
    let url: Arc<str> = format!("{}/v1/events", server.http).into();
    let mut tokens = Vec::with_capacity(n as usize);
    for i in 0..n {
        let token: Arc<str> = server.token(&format!("{prefix}-{i}"))?.into();
        let o = post_events(
            client.clone(),
            url.clone(),
            token.clone(),
            events_body(100, i),
            0,
            100,
        )
        .await;
        if o.status != Some(200) {
            bail!("seeding org {prefix}-{i} answered {:?}", o.status);
        }
        tokens.push(token);
    }
    Ok(tokens)
}

/// The half-write, half-read workload of `scaling` and `cells-vs-shared`:
/// request `i` is, by a hash of `i`, a 1-event `POST /v1/events` (class 0)
/// or a `GET /v1/events?limit=10` (class 1) for one of the orgs.
#[derive(Clone)]
pub struct ReadWriteMix {
    tokens: Arc<Vec<Arc<str>>>,
    client: reqwest::Client,
    ingest_url: Arc<str>,
    query_url: Arc<str>,
    body: Arc<Vec<u8>>,
}

impl ReadWriteMix {
    pub fn new(server: &Server, client: reqwest::Client, tokens: Vec<Arc<str>>) -> Self {
        Self {
            tokens: Arc::new(tokens),
            client,
            ingest_url: format!("{}/v1/events", server.http).into(),
            query_url: format!("{}/v1/events?limit=10", server.http).into(),
            body: Arc::new(events_body(1, 3)),
        }
    }

    pub fn request(&self, i: u64) -> futures::future::BoxFuture<'static, Outcome> {
        let h = mix(i);
        let token = self.tokens[(h % self.tokens.len().max(1) as u64) as usize].clone();
        let client = self.client.clone();
        if (h >> 32).is_multiple_of(2) {
            let body = (*self.body).clone();
            Box::pin(post_events(
                client,
                self.ingest_url.clone(),
                token,
                body,
                0,
                1,
            ))
        } else {
            Box::pin(get(client, self.query_url.to_string(), token, 1))
        }
    }
}

/// A GET with the bearer token.
pub async fn get(client: reqwest::Client, url: String, token: Arc<str>, class: usize) -> Outcome {
    let r = client.get(url).bearer_auth(&*token).send().await;
    outcome(class, 1, false, r).await
}

/// `POST /graphql` with a prepared JSON body.
pub async fn graphql(
    client: reqwest::Client,
    url: Arc<str>,
    token: Arc<str>,
    body: Vec<u8>,
    class: usize,
    items: u64,
) -> Outcome {
    let r = client
        .post(&*url)
        .bearer_auth(&*token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    outcome(class, items, true, r).await
}

// ---- Flight ----

pub fn upload_schema() -> Arc<Schema> {
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
pub fn make_batch(start: usize, n: usize) -> anyhow::Result<RecordBatch> {
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

pub async fn flight_client(url: &str) -> anyhow::Result<FlightServiceClient<Channel>> {
    let channel = Channel::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(FlightServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

pub fn authed<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(req)
}

/// One DoPut of `batches`; returns the number of events acknowledged.
pub async fn doput_batches(
    client: &mut FlightServiceClient<Channel>,
    token: &str,
    batches: Vec<RecordBatch>,
) -> anyhow::Result<u64> {
    let stream = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["events".into()])))
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .filter_map(|r| async move { r.ok() });
    let resp = client.do_put(authed(stream, token)?).await?;
    let mut acks = resp.into_inner();
    let mut accepted = 0u64;
    while let Some(r) = acks.message().await? {
        accepted += accepted_of(&r)?;
    }
    Ok(accepted)
}

fn accepted_of(r: &PutResult) -> anyhow::Result<u64> {
    let v: Value = serde_json::from_slice(&r.app_metadata)?;
    Ok(v["accepted"].as_u64().unwrap_or(0))
}

/// Ingests `n` events through one DoPut stream of `batch`-row batches.
pub async fn doput(
    server: &Server,
    token: &str,
    n: usize,
    batch: usize,
) -> anyhow::Result<Duration> {
    let mut client = flight_client(&server.flight).await?;
    let batches: Vec<RecordBatch> = (0..n)
        .step_by(batch.max(1))
        .map(|s| make_batch(s, batch.min(n - s)))
        .collect::<anyhow::Result<_>>()?;
    let started = std::time::Instant::now();
    let accepted = doput_batches(&mut client, token, batches)
        .await
        .context("DoPut")?;
    if accepted != n as u64 {
        bail!("DoPut acknowledged {accepted} of {n} events");
    }
    Ok(started.elapsed())
}

/// The gRPC outcome of a DoPut as an [`Outcome`].
pub fn grpc_outcome(class: usize, r: anyhow::Result<u64>) -> Outcome {
    match r {
        Ok(n) => Outcome::ok(class, n),
        Err(e) => {
            let status = e.downcast_ref::<tonic::Status>().map(|s| match s.code() {
                tonic::Code::ResourceExhausted => 429,
                tonic::Code::Unavailable => 503,
                _ => 500,
            });
            Outcome {
                class,
                status,
                retry_after: false,
                items: 0,
            }
        }
    }
}

/// The median of a list (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Integer with thousands separators.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-1000.0), "-1,000");
        assert_eq!(thousands(f64::NAN), "n/a");
    }

    #[test]
    fn median_of_odd_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(median(vec![]).is_nan());
    }
}
