//! `hostile`: the issue "Hostile input" — "a flood of the worst of these
//! requests from one org leaves other orgs' p99 within 10 %".
//!
//! Modelled on `overload`: 2 cells; well-behaved neighbour orgs in the
//! attacker's cell and in the other cell (placed with the server's own
//! `Router`) send a steady open-loop mix of small `POST /v1/events` and
//! `GET /v1/events?limit=50`, plus a low rate of Flight SQL `SELECT count(*)
//! FROM events`. A baseline phase without the attacker alternates with an
//! attack phase, `--runs` pairs; the neighbours' p50/p99/p99.9 per group
//! under attack are compared with the baseline as ratios (median over the
//! pairs). The attacker — one org, a viewer token (an operator token for
//! the two ingest attacks) — sends an open loop of the requests the server
//! must refuse or bound (see [`Kind`]); every answer is classified by kind
//! and status, and any 5xx or connection failure is a failure of the
//! server. Server peak RSS per phase, /health probed throughout and after.
//!
//! The server runs with `flight_sql.query_timeout = 5s` and
//! `flight_sql.max_query_memory = 4 MiB` (so that the attacker's
//! `ORDER BY data` over its padded events is over budget); rate limits are
//! off (the launcher's default), so every hostile request reaches the check
//! that must refuse it rather than a cheap 429.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{FlightData, FlightDescriptor};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use honeycell_auth::Role;
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::overload::{orgs_in, seed_neighbours};
use super::{Ctx, authed, events_body, make_batch, median};
use crate::load::{self, ClassStats, Outcome, RunStats};
use crate::report::{Report, class_table, run_json};
use crate::server::{Meter, Server, Usage, mb};

const NEIGHBOURS_PER_CELL: usize = 4;
/// HTTP requests/s of each neighbour (alternating writes and reads).
const NEIGHBOUR_RATE: f64 = 50.0;
/// Flight SQL `SELECT count(*)` per second of each neighbour.
const NEIGHBOUR_SQL_RATE: f64 = 1.0;
/// The attacker's offered rate (all kinds together), unless `--rate`.
const ATTACK_RATE: f64 = 200.0;
/// Events the attacker ingests before the phases, and their `data` padding.
const ATTACKER_EVENTS: usize = 2_000;
const ATTACKER_PAD: usize = 4_000;
const QUERY_TIMEOUT: &str = "5s";
const MAX_QUERY_MEMORY: usize = 4 * 1024 * 1024;
/// The `/graphql` body of the oversized-variable attack (over the default
/// `http_limits.max_body_bytes`, 16 MiB).
const BIG_BODY: usize = 20_000_000;
/// Interval of the /health probe during every phase.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// An attacker's request without an answer after this is a failure of the
/// server (its longest legitimate answer is a query stopped at the 5-s
/// `query_timeout`); the request is then dropped, as a client would.
const ATTACK_DEADLINE: Duration = Duration::from_secs(15);
/// The neighbours' Flight SQL deadline, like their HTTP client's timeout.
const NEIGHBOUR_SQL_DEADLINE: Duration = Duration::from_secs(10);
/// Before each phase the server must be idle (under 0.1 core over 0.5 s);
/// how long that takes after an attack phase is reported.
const SETTLE_MAX: Duration = Duration::from_secs(60);

const GROUPS: [&str; 2] = [
    "neighbours, same cell as the attacker",
    "neighbours, other cell",
];
const SQL_GROUPS: [&str; 2] = [
    "neighbours' Flight SQL count(*), same cell",
    "neighbours' Flight SQL count(*), other cell",
];

const CROSS_JOIN: &str =
    "SELECT count(*) FROM events a, events b, events c WHERE a.entity_id < b.entity_id";
const ORDER_BY_DATA: &str = "SELECT * FROM events ORDER BY data DESC";
const GENERATE_SERIES: &str = "SELECT sum(a.value*b.value) FROM generate_series(1,100000) a CROSS JOIN generate_series(1,100000) b";
const COUNT: &str = "SELECT count(*) FROM events";

/// One kind of hostile request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Deep,
    Costly,
    CrossJoin,
    OrderByData,
    GenerateSeries,
    IngestAliases,
    BigBody,
    ForgedDoPut,
    Cursor,
}

const KINDS: [Kind; 9] = [
    Kind::Deep,
    Kind::Costly,
    Kind::CrossJoin,
    Kind::OrderByData,
    Kind::GenerateSeries,
    Kind::IngestAliases,
    Kind::BigBody,
    Kind::ForgedDoPut,
    Kind::Cursor,
];

/// Whether an answer is what the server must give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Expected,
    /// An answer, but not the refusal expected (a 200, another 4xx code).
    Unexpected,
    /// 5xx, an internal gRPC status, or no answer: the server failed.
    Failure,
}

impl Kind {
    /// The name `--attacks` takes.
    fn name(self) -> &'static str {
        match self {
            Kind::Deep => "deep",
            Kind::Costly => "costly",
            Kind::CrossJoin => "cross-join",
            Kind::OrderByData => "order-by-data",
            Kind::GenerateSeries => "generate-series",
            Kind::IngestAliases => "ingest-aliases",
            Kind::BigBody => "big-body",
            Kind::ForgedDoPut => "forged-doput",
            Kind::Cursor => "cursor",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Deep => "GraphQL literal nested 2,000 deep",
            Kind::Costly => "GraphQL 100 aliases of events(first: 10000)",
            Kind::CrossJoin => "Flight SQL 3-way self join (count)",
            Kind::OrderByData => "Flight SQL SELECT * ORDER BY data DESC",
            Kind::GenerateSeries => "Flight SQL generate_series cross join",
            Kind::IngestAliases => "GraphQL mutation, 50 ingestEvents aliases",
            Kind::BigBody => "POST /graphql with a 20 MB variable",
            Kind::ForgedDoPut => "DoPut, buffer forged to claim 1 GiB",
            Kind::Cursor => "GET /v1/events, cursor hc1:u64::MAX",
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Deep => "400 query_too_deep",
            Kind::Costly => "400 query_too_costly",
            Kind::CrossJoin => {
                "DEADLINE_EXCEEDED (query_timeout), RESOURCE_EXHAUSTED (max_queries_per_org, org_query_seconds_per_minute), or OK when the query got the CPU to finish within query_timeout"
            }
            Kind::OrderByData => "RESOURCE_EXHAUSTED (max_query_memory, or the org's query slots)",
            Kind::GenerateSeries => "INVALID_ARGUMENT (or RESOURCE_EXHAUSTED: the org's slots)",
            Kind::IngestAliases => "400 one_ingest_per_request",
            Kind::BigBody => "413 body_too_large",
            Kind::ForgedDoPut => "INVALID_ARGUMENT",
            Kind::Cursor => "400 invalid_cursor",
        }
    }

    /// Share of the attacker's requests, per 1,000. Cheap refusals make up
    /// the flood; the 20-MB bodies (16 MB/s at 200 req/s) and the 5-s
    /// queries (one every 2.5 s, so the org's 2 query slots stay taken)
    /// are rarer.
    fn weight(self) -> i64 {
        match self {
            Kind::Deep | Kind::Costly | Kind::IngestAliases | Kind::Cursor => 180,
            Kind::ForgedDoPut => 160,
            Kind::GenerateSeries => 100,
            Kind::OrderByData => 14,
            Kind::BigBody => 4,
            Kind::CrossJoin => 2,
        }
    }

    fn verdict(self, a: &Answer) -> Verdict {
        if a.is_failure() {
            return Verdict::Failure;
        }
        use tonic::Code as C;
        let ok = match (self, a) {
            (Kind::Deep, Answer::Http { status, code }) => {
                *status == 400 && code == "query_too_deep"
            }
            (Kind::Costly, Answer::Http { status, code }) => {
                *status == 400 && code == "query_too_costly"
            }
            (Kind::IngestAliases, Answer::Http { status, code }) => {
                *status == 400 && code == "one_ingest_per_request"
            }
            (Kind::BigBody, Answer::Http { status, code }) => {
                *status == 413 && code == "body_too_large"
            }
            (Kind::Cursor, Answer::Http { status, code }) => {
                *status == 400 && code == "invalid_cursor"
            }
            // Bounded either way: stopped at the time limit, refused a slot
            // or for its org's spent computing time, or done within the limit (~4e9 rows counted when the query
            // worker finds the cores idle).
            (Kind::CrossJoin, Answer::Grpc { code, .. }) => {
                matches!(code, C::DeadlineExceeded | C::ResourceExhausted | C::Ok)
            }
            (Kind::OrderByData, Answer::Grpc { code, .. }) => *code == C::ResourceExhausted,
            (Kind::GenerateSeries, Answer::Grpc { code, .. }) => {
                matches!(code, C::InvalidArgument | C::ResourceExhausted)
            }
            (Kind::ForgedDoPut, Answer::Grpc { code, .. }) => *code == C::InvalidArgument,
            _ => false,
        };
        if ok {
            Verdict::Expected
        } else {
            Verdict::Unexpected
        }
    }
}

/// The evenly interleaved order of kinds (smooth weighted round robin over
/// [`Kind::weight`]): request `i` of the attacker is `schedule[i % len]`.
/// Only the kinds in `only` take part (all of them when it is empty).
fn schedule(only: &[Kind]) -> Vec<Kind> {
    let weight = |k: Kind| {
        if only.is_empty() || only.contains(&k) {
            k.weight()
        } else {
            0
        }
    };
    let total: i64 = KINDS.iter().map(|&k| weight(k)).sum();
    let mut current = [0i64; KINDS.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, k) in current.iter_mut().zip(KINDS) {
            *c += weight(k);
        }
        let best = (0..KINDS.len())
            .filter(|&j| weight(KINDS[j]) > 0)
            .max_by_key(|&j| (current[j], std::cmp::Reverse(j)))
            .unwrap_or(0);
        current[best] -= total;
        out.push(KINDS[best]);
    }
    out
}

/// The kinds named by `--attacks` (their [`Kind::name`]s, comma-separated).
fn parse_attacks(names: &[String]) -> anyhow::Result<Vec<Kind>> {
    names
        .iter()
        .map(|n| {
            KINDS.into_iter().find(|k| k.name() == n).with_context(|| {
                format!(
                    "--attacks {n:?}: expected one of {}",
                    KINDS.map(Kind::name).join(", ")
                )
            })
        })
        .collect()
}

/// What one request came back with.
#[derive(Clone, Debug)]
enum Answer {
    /// HTTP status and the error code of the JSON body (`""` when none).
    Http { status: u16, code: String },
    /// gRPC status and the setting its message names (`""` when none).
    Grpc {
        code: tonic::Code,
        setting: String,
        message: String,
    },
    /// No answer: connect, reset, timeout, a broken stream.
    Transport(String),
}

impl Answer {
    fn is_failure(&self) -> bool {
        use tonic::Code as C;
        match self {
            Answer::Http { status, .. } => *status >= 500,
            Answer::Grpc { code, .. } => matches!(
                code,
                C::Internal | C::Unknown | C::Unavailable | C::DataLoss | C::Cancelled
            ),
            Answer::Transport(_) => true,
        }
    }

    /// How the answer is counted in the report, e.g. `400 query_too_deep`.
    fn label(&self) -> String {
        match self {
            Answer::Http { status, code } if code.is_empty() => format!("{status}"),
            Answer::Http { status, code } => format!("{status} {code}"),
            Answer::Grpc { code, setting, .. } => {
                let name = grpc_name(*code);
                if setting.is_empty() {
                    name.to_owned()
                } else {
                    format!("{name} ({setting})")
                }
            }
            Answer::Transport(_) => "no answer (transport error)".into(),
        }
    }

    fn detail(&self) -> String {
        let s = match self {
            Answer::Http { .. } => String::new(),
            Answer::Grpc { message, .. } => message.clone(),
            Answer::Transport(e) => e.clone(),
        };
        s.chars().take(200).collect()
    }

    /// As a load-driver outcome (gRPC codes mapped to HTTP-like statuses so
    /// that every answer's latency is recorded).
    fn outcome(&self, class: usize) -> Outcome {
        use tonic::Code as C;
        let status = match self {
            Answer::Http { status, .. } => Some(*status),
            Answer::Grpc { code, .. } => Some(match code {
                C::Ok => 200,
                C::InvalidArgument | C::FailedPrecondition | C::OutOfRange => 400,
                C::Unauthenticated => 401,
                C::PermissionDenied => 403,
                C::NotFound => 404,
                C::ResourceExhausted => 429,
                C::DeadlineExceeded => 504,
                _ => 500,
            }),
            Answer::Transport(_) => None,
        };
        Outcome {
            class,
            status,
            retry_after: false,
            items: 0,
        }
    }

    fn of_status(s: &tonic::Status) -> Answer {
        Answer::Grpc {
            code: s.code(),
            setting: setting_of(s.message()),
            message: s.message().to_owned(),
        }
    }

    fn of_flight(e: FlightError) -> Answer {
        match e {
            FlightError::Tonic(s) => Answer::of_status(&s),
            other => Answer::Transport(chain(&other)),
        }
    }

    fn ok() -> Answer {
        Answer::Grpc {
            code: tonic::Code::Ok,
            setting: String::new(),
            message: String::new(),
        }
    }
}

/// An error and its sources, `: `-separated (reqwest's own text omits the
/// cause: a timeout, a reset).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

fn grpc_name(c: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match c {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The first `flight_sql.<key>` a message names (the server names the limit
/// it enforced), else a few known words, else `""`.
fn setting_of(msg: &str) -> String {
    if let Some(at) = msg.find("flight_sql.") {
        let key: String = msg[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        return key.trim_end_matches('.').to_owned();
    }
    for word in [
        "max_queries_per_org",
        "max_concurrent_queries",
        "generate_series",
        "bodyLength",
        "buffer",
    ] {
        if msg.contains(word) {
            return word.to_owned();
        }
    }
    String::new()
}

/// The error code of a JSON error body: GraphQL's
/// `errors[0].extensions.code` or the REST `error.code`.
fn code_of(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    v["errors"][0]["extensions"]["code"]
        .as_str()
        .or_else(|| v["error"]["code"].as_str())
        .unwrap_or("")
        .to_owned()
}

/// An HTTP client like the other scenarios' (`super::http_client`), with
/// `timeout`, and idle pooled connections dropped after 5 s: the server
/// closes a keep-alive connection idle for `connections.header_read_timeout`
/// (10 s), and a request that raced that close (the attacker idles during
/// baselines, everyone while the server settles) would count as a failure
/// of the server.
fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(2048)
        .pool_idle_timeout(Duration::from_secs(5))
        .no_proxy()
        .tcp_nodelay(true)
        .build()?)
}

/// base64url without padding (cursor text), as the server's cursors are.
fn base64url(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Channels to the Flight locations a server names, one per location.
#[derive(Clone, Default)]
struct Channels(Arc<Mutex<HashMap<String, Channel>>>);

impl Channels {
    fn get(&self, uri: &str) -> anyhow::Result<Channel> {
        let url = uri
            .replace("grpc+tcp://", "http://")
            .replace("grpc://", "http://");
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = map.get(&url) {
            return Ok(c.clone());
        }
        let c = Channel::from_shared(url.clone())?
            .connect_timeout(Duration::from_secs(10))
            .connect_lazy();
        map.insert(url, c.clone());
        Ok(c)
    }
}

/// [`flight_sql_once`] with a deadline: no answer within it is a transport
/// failure, and the request is dropped.
async fn flight_sql(
    flight: Channel,
    cells: Channels,
    token: Arc<str>,
    sql: &str,
    deadline: Duration,
) -> Answer {
    tokio::time::timeout(deadline, flight_sql_once(flight, cells, token, sql))
        .await
        .unwrap_or_else(|_| Answer::Transport(format!("no answer within {deadline:?}")))
}

/// Flight SQL: GetFlightInfo on the shared port, then DoGet of every
/// endpoint at its location, reading every batch.
async fn flight_sql_once(flight: Channel, cells: Channels, token: Arc<str>, sql: &str) -> Answer {
    let auth = format!("Bearer {token}");
    let mut client = FlightSqlServiceClient::new(flight.clone());
    client.set_header("authorization", auth.clone());
    let info = match client.execute(sql.to_owned(), None).await {
        Ok(i) => i,
        Err(e) => return Answer::of_flight(e),
    };
    for ep in info.endpoint {
        let Some(ticket) = ep.ticket else {
            return Answer::Transport("an endpoint without a ticket".into());
        };
        let channel = match ep.location.first() {
            Some(loc) => match cells.get(&loc.uri) {
                Ok(c) => c,
                Err(e) => return Answer::Transport(format!("location {}: {e}", loc.uri)),
            },
            None => flight.clone(),
        };
        let mut at = FlightSqlServiceClient::new(channel);
        at.set_header("authorization", auth.clone());
        let mut stream = match at.do_get(ticket).await {
            Ok(s) => s,
            Err(e) => return Answer::of_flight(e),
        };
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                return Answer::of_flight(e);
            }
        }
    }
    Answer::ok()
}

/// The messages of a DoPut of one valid event whose record batch's longest
/// buffer is forged to claim 1 GiB (checked by parsing the forged header).
async fn forged_put() -> anyhow::Result<Vec<FlightData>> {
    let good: Vec<FlightData> = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["events".into()])))
        .build(futures::stream::iter([Ok(make_batch(0, 1)?)]))
        .try_collect()
        .await?;
    let last = good.len().checked_sub(1).context("no IPC messages")?;
    let header = &good[last].data_header;
    let buffer_len = |h: &[u8], i: usize| -> Option<i64> {
        let m = arrow::ipc::root_as_message(h).ok()?;
        Some(m.header_as_record_batch()?.buffers()?.get(i).length())
    };
    let m = arrow::ipc::root_as_message(header)
        .map_err(|e| anyhow::anyhow!("the batch header does not parse: {e}"))?;
    let bufs = m
        .header_as_record_batch()
        .and_then(|b| b.buffers())
        .context("the last message is not a record batch with buffers")?;
    let (index, length) = (0..bufs.len())
        .map(|i| (i, bufs.get(i).length()))
        .max_by_key(|(_, l)| *l)
        .context("a record batch without buffers")?;
    let claim: i64 = 1 << 30;
    for (at, _) in header
        .windows(8)
        .enumerate()
        .filter(|(_, w)| *w == length.to_le_bytes())
    {
        let mut forged = header.to_vec();
        forged[at..at + 8].copy_from_slice(&claim.to_le_bytes());
        if buffer_len(&forged, index) == Some(claim) {
            let mut out = good.clone();
            out[last].data_header = forged.into();
            return Ok(out);
        }
    }
    bail!("no place in the batch header holds buffer {index}'s length {length}")
}

/// Per (kind, answer label): how many, the verdict, one message.
#[derive(Clone, Debug)]
struct Tally {
    count: u64,
    verdict: Verdict,
    sample: String,
}

type Tallies = BTreeMap<(usize, String), Tally>;

/// The attacker: prepared requests and the tally of answers.
struct Attacker {
    client: reqwest::Client,
    /// For the 20-MB bodies: a new connection each, never pooled. The
    /// server stops reading at `max_body_bytes`, answers 413 and closes
    /// the connection; reused, such a connection would fail the next
    /// request of another kind, which is not that request's fault.
    big_client: reqwest::Client,
    graphql_url: String,
    cursor_url: String,
    viewer: Arc<str>,
    operator: Arc<str>,
    deep: Bytes,
    costly: Bytes,
    ingest: Bytes,
    big: Bytes,
    put: Vec<FlightData>,
    flight: Channel,
    cells: Channels,
    order: Vec<Kind>,
    tally: Book,
}

impl Attacker {
    fn request(self: &Arc<Self>, i: u64) -> BoxFuture<'static, Outcome> {
        let kind = self.order[(i % self.order.len() as u64) as usize];
        let class = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        let a = self.clone();
        Box::pin(async move {
            let answer = tokio::time::timeout(ATTACK_DEADLINE, a.send(kind))
                .await
                .unwrap_or_else(|_| {
                    Answer::Transport(format!("no answer within {ATTACK_DEADLINE:?}"))
                });
            a.tally.record(class, kind.verdict(&answer), &answer);
            answer.outcome(class)
        })
    }

    async fn send(&self, kind: Kind) -> Answer {
        match kind {
            Kind::Deep => self.graphql(&self.viewer, self.deep.clone()).await,
            Kind::Costly => self.graphql(&self.viewer, self.costly.clone()).await,
            Kind::IngestAliases => self.graphql(&self.operator, self.ingest.clone()).await,
            Kind::BigBody => {
                let r = self
                    .big_client
                    .post(&self.graphql_url)
                    .bearer_auth(&*self.viewer)
                    .header("content-type", "application/json")
                    .body(self.big.clone())
                    .send()
                    .await;
                http_answer(r).await
            }
            Kind::Cursor => {
                let r = self
                    .client
                    .get(&self.cursor_url)
                    .bearer_auth(&*self.viewer)
                    .send()
                    .await;
                http_answer(r).await
            }
            Kind::CrossJoin => self.sql(CROSS_JOIN).await,
            Kind::OrderByData => self.sql(ORDER_BY_DATA).await,
            Kind::GenerateSeries => self.sql(GENERATE_SERIES).await,
            Kind::ForgedDoPut => self.do_put().await,
        }
    }

    async fn graphql(&self, token: &str, body: Bytes) -> Answer {
        let r = self
            .client
            .post(&self.graphql_url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        http_answer(r).await
    }

    async fn sql(&self, sql: &str) -> Answer {
        // The deadline is the attacker's own (ATTACK_DEADLINE, above).
        flight_sql_once(
            self.flight.clone(),
            self.cells.clone(),
            self.viewer.clone(),
            sql,
        )
        .await
    }

    async fn do_put(&self) -> Answer {
        let mut client = FlightServiceClient::new(self.flight.clone());
        let stream = futures::stream::iter(self.put.clone());
        let req = match authed(stream, &self.operator) {
            Ok(r) => r,
            Err(e) => return Answer::Transport(format!("{e}")),
        };
        let mut acks = match client.do_put(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Answer::of_status(&s),
        };
        loop {
            match acks.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Answer::ok(),
                Err(s) => return Answer::of_status(&s),
            }
        }
    }
}

/// Answers counted by (class, label), shared by a driver's requests.
#[derive(Default)]
struct Book(Mutex<Tallies>);

impl Book {
    fn record(&self, class: usize, verdict: Verdict, a: &Answer) {
        let mut t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = t.entry((class, a.label())).or_insert_with(|| Tally {
            count: 0,
            verdict,
            sample: a.detail(),
        });
        e.count += 1;
    }

    /// The answers so far, and a fresh count.
    fn take(&self) -> Tallies {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

async fn http_answer(r: Result<reqwest::Response, reqwest::Error>) -> Answer {
    let r = match r {
        Ok(r) => r,
        Err(e) => return Answer::Transport(chain(&e)),
    };
    let status = r.status().as_u16();
    match r.bytes().await {
        Ok(body) => Answer::Http {
            status,
            code: code_of(&body),
        },
        Err(e) => Answer::Transport(format!("reading the body of a {status}: {}", chain(&e))),
    }
}

/// /health probed every [`PROBE_EVERY`] for a phase.
#[derive(Clone, Debug, Default)]
struct Health {
    ok: u64,
    failed: u64,
    max_ms: f64,
}

async fn probe(client: reqwest::Client, url: String, duration: Duration) -> Health {
    let end = Instant::now() + duration;
    let mut h = Health::default();
    while Instant::now() < end {
        let t = Instant::now();
        let r = client
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => {
                h.ok += 1;
                h.max_ms = h.max_ms.max(t.elapsed().as_secs_f64() * 1e3);
            }
            _ => h.failed += 1,
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
    h
}

/// How long the server took to become idle before a phase, and which of
/// its threads were busy meanwhile (when it took more than a second).
#[derive(Clone, Debug)]
enum Settle {
    After(Duration, String),
    /// Still busy after [`SETTLE_MAX`].
    Busy(String),
    /// Its CPU cannot be read (`--target`): a fixed 2-s pause.
    NotMeasured,
}

impl Settle {
    fn text(&self) -> String {
        let busy = |t: &str| {
            if t.is_empty() {
                String::new()
            } else {
                format!(" (busy meanwhile: {t})")
            }
        };
        match self {
            Settle::After(d, t) => format!("idle after {:.1} s{}", d.as_secs_f64(), busy(t)),
            Settle::Busy(t) => {
                format!("**still busy after {} s**{}", SETTLE_MAX.as_secs(), busy(t))
            }
            Settle::NotMeasured => "not measured (2-s pause)".into(),
        }
    }

    fn secs(&self) -> Option<f64> {
        match self {
            Settle::After(d, _) => Some(d.as_secs_f64()),
            Settle::Busy(_) => Some(SETTLE_MAX.as_secs_f64()),
            Settle::NotMeasured => None,
        }
    }
}

/// Waits until the server uses under 0.1 core over 0.5 s, at most
/// [`SETTLE_MAX`].
async fn settle(server: &Server) -> Settle {
    let started = Instant::now();
    if server.cpu_secs().is_none() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        return Settle::NotMeasured;
    }
    let meter = Meter::start(server);
    let busy = |meter: Meter<'_>| {
        let usage = meter.stop();
        if usage.wall > 1.0 {
            usage.threads_note(3)
        } else {
            String::new()
        }
    };
    loop {
        let before = server.cpu_secs();
        tokio::time::sleep(Duration::from_millis(500)).await;
        match (before, server.cpu_secs()) {
            (Some(a), Some(b)) if (b - a) / 0.5 < 0.1 => {
                return Settle::After(started.elapsed(), busy(meter));
            }
            (Some(_), Some(_)) => {}
            _ => return Settle::NotMeasured,
        }
        if started.elapsed() > SETTLE_MAX {
            return Settle::Busy(busy(meter));
        }
    }
}

/// The server after the last phase.
struct After {
    settled: Settle,
    health: Option<u16>,
    running: Option<bool>,
    panicked: bool,
}

struct Phase {
    attack: bool,
    settled_before: Settle,
    http: RunStats,
    sql: RunStats,
    /// The neighbours' Flight SQL answers by label.
    sql_answers: Tallies,
    attacker: Option<(RunStats, Tallies)>,
    health: Health,
    usage: Usage,
}

/// Percentile of every answered request (refusals included) in ms.
fn answered_ms(c: &ClassStats, q: f64) -> f64 {
    if c.all.is_empty() {
        return f64::NAN;
    }
    c.all.value_at_quantile(q) as f64 / 1000.0
}

/// `n` events of about `pad` bytes of `data` each, as a JSON body.
fn padded_events(from: usize, n: usize, pad: usize) -> Vec<u8> {
    let filler = "x".repeat(pad);
    let events: Vec<Value> = (from..from + n)
        .map(|i| {
            json!({"event_type": "INSERT", "entity_type": "order", "entity_id": format!("e-{i}"),
                   "data": {"i": i, "pad": filler}})
        })
        .collect();
    serde_json::to_vec(&events).expect("JSON of generated events")
}

fn ratio_text(r: f64) -> String {
    if r.is_finite() {
        format!("×{r:.2}")
    } else {
        "n/a".into()
    }
}

pub async fn run(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let duration = ctx.secs(30, 10);
    let runs = ctx.runs.max(1);
    let attack_rate = ctx.rate.unwrap_or(ATTACK_RATE);
    let env = [
        (
            "HONEYCELL_FLIGHT_SQL__QUERY_TIMEOUT",
            QUERY_TIMEOUT.to_owned(),
        ),
        (
            "HONEYCELL_FLIGHT_SQL__MAX_QUERY_MEMORY",
            MAX_QUERY_MEMORY.to_string(),
        ),
    ];
    let attacker_org = orgs_in("hostile", 0, 1)?
        .pop()
        .context("an attacking org in cell 0")?;
    let same = orgs_in("calm-a", 0, NEIGHBOURS_PER_CELL)?;
    let other = orgs_in("calm-b", 1, NEIGHBOURS_PER_CELL)?;
    let only = parse_attacks(&ctx.attacks)?;
    let order = schedule(&only);
    let share = |k: Kind| {
        order.iter().filter(|x| **x == k).count() as f64 / order.len() as f64 * attack_rate
    };
    rep.line(&format!(
        "\n2 cells; `flight_sql.query_timeout = {QUERY_TIMEOUT}`, `flight_sql.max_query_memory = {MAX_QUERY_MEMORY}` (4 MiB), other limits at their defaults (`max_queries_per_org = 2`, `org_query_seconds_per_minute = 15`, `max_body_bytes = 16 MiB`); rate limits off, so every hostile request reaches the check that must refuse it. Neighbours: {NEIGHBOURS_PER_CELL} orgs in cell 0 ({}) and {NEIGHBOURS_PER_CELL} in cell 1 ({}), each at {NEIGHBOUR_RATE} req/s open loop, alternating `POST /v1/events` of 5 events and `GET /v1/events?limit=50`, plus Flight SQL `{COUNT}` at {NEIGHBOUR_SQL_RATE}/s each (GetFlightInfo, then DoGet at the owner cell's location). Attacker: `{attacker_org}` in cell 0 with {ATTACKER_EVENTS} events of ~{ATTACKER_PAD} bytes of `data` ingested beforehand; a viewer token (an operator token for the two ingest attacks); {attack_rate:.0} req/s open loop, the kinds interleaved evenly. Baseline (no attacker) and attack phases of {} s alternate, {runs} pair(s); ratios are attack / baseline per pair, median over the pairs.\n",
        same.join(", "),
        other.join(", "),
        duration.as_secs()
    ));
    rep.line("| attack | expected answer | offered req/s |\n|---|---|---:|");
    for k in KINDS.into_iter().filter(|&k| share(k) > 0.0) {
        rep.line(&format!(
            "| {} | {} | {:.1} |",
            k.label(),
            k.expected(),
            share(k)
        ));
    }
    if let Some(n) = ctx.target_note() {
        rep.line(&format!("\n{n}"));
    }

    let server = ctx.launcher.start(2, &env).await?;
    let client = http_client(Duration::from_secs(10))?;
    let ingest_url: Arc<str> = format!("{}/v1/events", server.http).into();
    let query_url = format!("{}/v1/events?limit=50", server.http);
    let calm = seed_neighbours(&server, &client, &ingest_url, &same, &other).await?;
    let attack_rt = attacker_runtime()?;
    let attacker = attack_rt
        .spawn(prepare_attacker(AttackerSetup::new(
            &server,
            &attacker_org,
            order,
        )?))
        .await
        .context("the attacker's runtime")??;
    let flight = Channel::from_shared(server.flight.clone())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connecting to Flight")?;
    let cells = Channels::default();

    let small = events_body(5, 7);
    let calm_rate = NEIGHBOUR_RATE * calm.len() as f64;
    let sql_rate = NEIGHBOUR_SQL_RATE * calm.len() as f64;
    let health_url = format!("{}/health", server.http);
    let sql_book = Arc::new(Book::default());
    let mut phases: Vec<Phase> = Vec::new();
    for r in 0..runs {
        for attack in [false, true] {
            let settled_before = settle(&server).await;
            let meter = Meter::start(&server);
            let name = if attack { "attack" } else { "baseline" };
            let msg = format!("hostile {name} {}/{runs}", r + 1);
            let http = load::open_loop(&GROUPS, calm_rate, duration, 1024, &msg, |i| {
                super::overload::neighbour_request(
                    &client,
                    &calm,
                    &ingest_url,
                    &query_url,
                    &small,
                    i,
                )
            });
            let sql = load::open_loop(
                &SQL_GROUPS,
                sql_rate,
                duration,
                64,
                "neighbours' SQL",
                |i| {
                    let (cell, token) = calm[(i % calm.len() as u64) as usize].clone();
                    let (flight, cells, book) = (flight.clone(), cells.clone(), sql_book.clone());
                    async move {
                        let a =
                            flight_sql(flight, cells, token, COUNT, NEIGHBOUR_SQL_DEADLINE).await;
                        let verdict = match &a {
                            Answer::Grpc {
                                code: tonic::Code::Ok,
                                ..
                            } => Verdict::Expected,
                            a if a.is_failure() => Verdict::Failure,
                            _ => Verdict::Unexpected,
                        };
                        book.record(cell, verdict, &a);
                        a.outcome(cell)
                    }
                },
            );
            let hostile = async {
                if !attack {
                    return None;
                }
                let attacker = attacker.clone();
                let run = attack_rt.spawn(async move {
                    let stats = load::open_loop(
                        &KINDS.map(Kind::label),
                        attack_rate,
                        duration,
                        512,
                        "attacker",
                        |i| attacker.request(i),
                    )
                    .await;
                    (stats, attacker.tally.take())
                });
                run.await.ok()
            };
            let health = probe(client.clone(), health_url.clone(), duration);
            let (http, sql, hostile, health) = tokio::join!(http, sql, hostile, health);
            let usage = meter.stop();
            phases.push(Phase {
                attack,
                settled_before,
                http,
                sql,
                sql_answers: sql_book.take(),
                attacker: hostile,
                health,
                usage,
            });
        }
    }

    // After the phases: quiet again, /health, the process, the log.
    let settled_after = settle(&server).await;
    let after = client
        .get(&health_url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16());
    // Its connections' tasks end with it; no blocking wait in async code.
    attack_rt.shutdown_background();
    let running = server.running();
    let log = server.log().unwrap_or_default();
    let panicked = log.contains("panicked") || log.contains("overflowed its stack");

    report(
        rep,
        &phases,
        &After {
            settled: settled_after,
            health: after.ok(),
            running,
            panicked,
        },
        ctx.launcher.is_target(),
    );
    Ok(())
}

/// Where the attacker sends, and as whom.
struct AttackerSetup {
    http: String,
    flight: String,
    viewer: Arc<str>,
    operator: Arc<str>,
    order: Vec<Kind>,
}

impl AttackerSetup {
    fn new(server: &Server, org: &str, order: Vec<Kind>) -> anyhow::Result<Self> {
        Ok(Self {
            http: server.http.clone(),
            flight: server.flight.clone(),
            viewer: server.token_as(org, "attacker", Role::Viewer)?.into(),
            operator: server.token_as(org, "attacker", Role::Operator)?.into(),
            order,
        })
    }
}

/// The attacker's own runtime: one thread at the lowest priority (nice
/// +19), so that building, sending and reading its requests (20-MB bodies
/// among them) takes the bench machine's spare CPU, not the neighbours'
/// clients' time. On a 2-core machine client and server share the cores; a
/// real attacker's client runs elsewhere. The server still receives and
/// refuses every request; what the attacker could not send on time is
/// reported as its generator's lag and drops.
fn attacker_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("attacker")
        .on_thread_start(|| {
            // SAFETY: plain system calls on the calling thread.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
            }
        })
        .enable_all()
        .build()
        .context("cannot start the attacker's runtime")
}

async fn prepare_attacker(setup: AttackerSetup) -> anyhow::Result<Arc<Attacker>> {
    let AttackerSetup {
        http,
        flight,
        viewer,
        operator,
        order,
    } = setup;
    let client = http_client(ATTACK_DEADLINE)?;
    let ingest_url = format!("{http}/v1/events");
    for from in (0..ATTACKER_EVENTS).step_by(500) {
        let n = 500.min(ATTACKER_EVENTS - from);
        let r = client
            .post(&ingest_url)
            .bearer_auth(&*operator)
            .header("content-type", "application/json")
            .body(padded_events(from, n, ATTACKER_PAD))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "ingesting the attacker's events answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
    }
    let deep = json!({"query": format!(
        "{{ events(filter:{{entityType:{}{}}}) {{ edges {{ cursor }} }} }}",
        "[".repeat(2_000),
        "]".repeat(2_000)
    )});
    let aliases: String = (0..100)
        .map(|i| format!("a{i}: events(first: 10000) {{ edges {{ cursor }} }} "))
        .collect();
    let costly = json!({ "query": format!("{{ {aliases} }}") });
    let events: Vec<Value> = (0..100)
        .map(|i| json!({"eventType": "INSERT", "entityType": "order", "entityId": format!("x{i}")}))
        .collect();
    let mutation: String = (0..50)
        .map(|i| format!("a{i}: ingestEvents(events: $e) {{ accepted }} "))
        .collect();
    let ingest = json!({
        "query": format!("mutation($e: [EventInput!]!) {{ {mutation} }}"),
        "variables": {"e": events},
    });
    let big = json!({
        "query": "query($x: String) { events { edges { cursor } } }",
        "variables": {"x": "y".repeat(BIG_BODY)},
    });
    let to_bytes = |v: Value| Bytes::from(v.to_string().into_bytes());
    let flight = Channel::from_shared(flight)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connecting to Flight")?;
    Ok(Arc::new(Attacker {
        // Its own connections, as another client's would be, and the
        // attacker's deadline rather than the neighbours' 10 s.
        client,
        big_client: reqwest::Client::builder()
            .timeout(ATTACK_DEADLINE)
            .pool_max_idle_per_host(0)
            .no_proxy()
            .tcp_nodelay(true)
            .build()?,
        graphql_url: format!("{http}/graphql"),
        cursor_url: format!(
            "{http}/v1/events?cursor={}",
            base64url(format!("hc1:{}", u64::MAX).as_bytes())
        ),
        viewer,
        operator,
        deep: to_bytes(deep),
        costly: to_bytes(costly),
        ingest: to_bytes(ingest),
        big: to_bytes(big),
        put: forged_put().await?,
        flight,
        cells: Channels::default(),
        order,
        tally: Book::default(),
    }))
}

/// A percentile in ms, or "n/a".
fn ms_text(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "n/a".into()
    }
}

/// "label × count" of a tally, verdicts marked.
fn answers_text<'a>(items: impl Iterator<Item = (&'a String, &'a Tally)>) -> String {
    let s = items
        .map(|(l, t)| {
            let mark = match t.verdict {
                Verdict::Expected => "",
                Verdict::Unexpected => " ⚠",
                Verdict::Failure => " **FAILURE**",
            };
            format!("{l} × {}{mark}", t.count)
        })
        .collect::<Vec<_>>()
        .join("; ");
    if s.is_empty() { "none".into() } else { s }
}

/// A row per attack: what was expected, what came back, and how long the
/// answers took (from the scheduled time, refusals included).
fn attacker_table(stats: &[ClassStats], tally: &Tallies) -> String {
    let mut s = String::from(
        "| attack | expected | sent | answers (count) | unexpected | failures | answer p50 ms | answer p99 ms |\n|---|---|---:|---|---:|---:|---:|---:|\n",
    );
    for (class, kind) in KINDS.iter().enumerate() {
        let mine: Vec<(&String, &Tally)> = tally
            .iter()
            .filter(|((c, _), _)| *c == class)
            .map(|((_, l), t)| (l, t))
            .collect();
        let n = |v: Verdict| -> u64 {
            mine.iter()
                .filter(|(_, t)| t.verdict == v)
                .map(|(_, t)| t.count)
                .sum()
        };
        let c = stats.get(class);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            kind.label(),
            kind.expected(),
            c.map_or(0, |c| c.sent),
            answers_text(mine.iter().copied()),
            n(Verdict::Unexpected),
            n(Verdict::Failure),
            ms_text(c.map_or(f64::NAN, |c| answered_ms(c, 0.5))),
            ms_text(c.map_or(f64::NAN, |c| answered_ms(c, 0.99))),
        ));
    }
    s
}

/// The neighbours' Flight SQL answers, per group.
fn sql_answers_text(t: &Tallies) -> String {
    (0..SQL_GROUPS.len())
        .map(|g| {
            let mine = t
                .iter()
                .filter(|((c, _), _)| *c == g)
                .map(|((_, l), v)| (l, v));
            format!(
                "{}: {}",
                if g == 0 { "same cell" } else { "other cell" },
                answers_text(mine)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Adds `b` into `a`.
fn merge_tallies(a: &mut Tallies, b: &Tallies) {
    for (key, v) in b {
        let e = a.entry(key.clone()).or_insert_with(|| Tally {
            count: 0,
            ..v.clone()
        });
        e.count += v.count;
    }
}

/// Percentiles of the neighbours in one group: medians over the pairs of
/// the baseline's and the attack's, and of the per-pair ratios.
struct Row {
    label: String,
    base: [f64; 3],
    attack: [f64; 3],
    ratio: [f64; 3],
}

const QS: [f64; 3] = [0.5, 0.99, 0.999];

fn row(pairs: &[(&Phase, &Phase)], label: &str, pick: impl Fn(&Phase) -> &ClassStats) -> Row {
    let mut r = Row {
        label: label.to_owned(),
        base: [f64::NAN; 3],
        attack: [f64::NAN; 3],
        ratio: [f64::NAN; 3],
    };
    for (j, q) in QS.iter().enumerate() {
        r.base[j] = median(pairs.iter().map(|(b, _)| pick(b).ms(*q)).collect());
        r.attack[j] = median(pairs.iter().map(|(_, a)| pick(a).ms(*q)).collect());
        r.ratio[j] = median(
            pairs
                .iter()
                .map(|(b, a)| pick(a).ms(*q) / pick(b).ms(*q))
                .filter(|x| x.is_finite())
                .collect(),
        );
    }
    r
}

fn report(rep: &mut Report, phases: &[Phase], after: &After, target: bool) {
    let pairs: Vec<(&Phase, &Phase)> = phases
        .chunks(2)
        .filter_map(|c| match c {
            [b, a] if !b.attack && a.attack => Some((b, a)),
            _ => None,
        })
        .collect();
    let rows = [
        row(&pairs, GROUPS[0], |p| &p.http.classes[0]),
        row(&pairs, GROUPS[1], |p| &p.http.classes[1]),
        row(&pairs, SQL_GROUPS[0], |p| &p.sql.classes[0]),
        row(&pairs, SQL_GROUPS[1], |p| &p.sql.classes[1]),
    ];
    let within = |r: f64| r.is_finite() && r <= 1.10;

    // Neighbours' failures, and every answer over all phases.
    let (mut calm_errors, mut calm_429, mut calm_transport, mut calm_dropped) = (0, 0, 0, 0);
    let mut sql_answers: Tallies = BTreeMap::new();
    let mut tally: Tallies = BTreeMap::new();
    let mut attacker_stats: Vec<ClassStats> = Vec::new();
    for p in phases {
        for run in [&p.http, &p.sql] {
            let t = run.total();
            calm_errors += t.errors;
            calm_429 += t.http_429;
            calm_transport += t.transport_errors;
            calm_dropped += run.dropped;
        }
        merge_tallies(&mut sql_answers, &p.sql_answers);
        if let Some((stats, t)) = &p.attacker {
            merge_tallies(&mut tally, t);
            if attacker_stats.is_empty() {
                attacker_stats = stats.classes.clone();
            } else {
                for (a, b) in attacker_stats.iter_mut().zip(&stats.classes) {
                    a.merge(b);
                }
            }
        }
    }
    let count_of = |v: Verdict| -> u64 {
        tally
            .values()
            .filter(|t| t.verdict == v)
            .map(|t| t.count)
            .sum()
    };
    let (expected, unexpected, failures) = (
        count_of(Verdict::Expected),
        count_of(Verdict::Unexpected),
        count_of(Verdict::Failure),
    );
    let attacker_dropped: u64 = phases
        .iter()
        .filter_map(|p| p.attacker.as_ref())
        .map(|(s, _)| s.dropped)
        .sum();
    let probes_ok: u64 = phases.iter().map(|p| p.health.ok).sum();
    let probes_failed: u64 = phases.iter().map(|p| p.health.failed).sum();
    let probe_max = phases
        .iter()
        .filter(|p| p.attack)
        .map(|p| p.health.max_ms)
        .fold(0.0, f64::max);
    // The process is gone, /health does not answer after the run, or a
    // panic: the server failed outright.
    let broken = after.health != Some(200) || after.running == Some(false) || after.panicked;
    let alive = !broken && probes_failed == 0;
    let latency_met = within(rows[0].ratio[1]) && within(rows[1].ratio[1]);
    let no_5xx = failures == 0 && calm_errors + calm_transport == 0;
    let goal = latency_met && alive && no_5xx && unexpected == 0;
    let peak = |attack: bool| {
        phases
            .iter()
            .filter(|p| p.attack == attack)
            .filter_map(|p| p.usage.server_peak_rss)
            .max()
    };
    let health_after = after
        .health
        .map_or_else(|| "no answer".into(), |s| s.to_string());
    let process = match after.running {
        Some(true) => "running",
        Some(false) => "**exited**",
        None => "not observed (--target)",
    };

    rep.line("\n## Result\n");
    if failures > 0 || broken {
        rep.line(&format!(
            "**SERVER FAILURE:** {failures} of the attacker's requests got a 5xx, an internal gRPC status or no answer (within {} s); /health after the run: {health_after}; process {process}; panic in the log: {}. See the attacker table and the messages below.\n",
            ATTACK_DEADLINE.as_secs(),
            if after.panicked { "**YES**" } else { "no" },
        ));
    }
    rep.line(&format!(
        "**Goal** (neighbours' p99 under attack within 10 % of the baseline, same cell and other cell; the server alive throughout; no 5xx; every refusal the expected one): **{}** — p99 same cell {} ({}), other cell {} ({}); alive throughout: {} ({probes_ok} /health probes answered within 2 s, {probes_failed} not, slowest under attack {probe_max:.1} ms; after the run: /health {health_after}, process {process}{}, {}); 5xx or no answer: {failures} to the attacker, {} to the neighbours; unexpected answers to the attacker: {unexpected}; neighbours refused (429 or RESOURCE_EXHAUSTED, not in the goal as the issue states it, but no neighbour should be): {}.\n",
        if goal { "met" } else { "MISSED" },
        ratio_text(rows[0].ratio[1]),
        if within(rows[0].ratio[1]) { "met" } else { "missed" },
        ratio_text(rows[1].ratio[1]),
        if within(rows[1].ratio[1]) { "met" } else { "missed" },
        if alive { "yes" } else { "**NO**" },
        if after.panicked { ", **a panic in its log**" } else { "" },
        after.settled.text(),
        calm_errors + calm_transport,
        if calm_429 == 0 {
            "0".to_owned()
        } else {
            format!("**{calm_429}**")
        },
    ));
    rep.line(
        "### Neighbours (medians over the pairs; ratio = attack / baseline per pair, median)\n",
    );
    rep.line("| group | baseline p50 / p99 / p99.9 ms | attack p50 / p99 / p99.9 ms | ratio p50 | ratio p99 | ratio p99.9 | p99 within 10 % |\n|---|---|---|---:|---:|---:|---|");
    for (i, r) in rows.iter().enumerate() {
        rep.line(&format!(
            "| {} | {} / {} / {} | {} / {} / {} | {} | {} | {} | {}{} |",
            r.label,
            ms_text(r.base[0]),
            ms_text(r.base[1]),
            ms_text(r.base[2]),
            ms_text(r.attack[0]),
            ms_text(r.attack[1]),
            ms_text(r.attack[2]),
            ratio_text(r.ratio[0]),
            ratio_text(r.ratio[1]),
            ratio_text(r.ratio[2]),
            if within(r.ratio[1]) { "yes" } else { "no" },
            if i >= 2 {
                " (reported; the goal is on the HTTP groups)"
            } else {
                ""
            },
        ));
    }
    rep.line(&format!(
        "\nNeighbours in all phases: {calm_errors} error answers, {calm_429} 429s, {calm_transport} transport failures or timeouts (goal 0), {calm_dropped} requests dropped by the generator. Their Flight SQL answers: {}. The Flight SQL groups send {NEIGHBOUR_SQL_RATE}/s per org, so their p99/p99.9 rest on few samples (about {} per group and phase).",
        sql_answers_text(&sql_answers),
        phases.first().map_or(0, |p| p.sql.classes[0].sent)
    ));
    // How long the server kept working after each attack phase ended.
    let recovery = phases
        .iter()
        .enumerate()
        .filter(|(i, _)| *i > 0 && phases[i - 1].attack)
        .map(|(_, p)| p.settled_before.secs())
        .chain(
            phases
                .last()
                .filter(|p| p.attack)
                .map(|_| after.settled.secs()),
        )
        .flatten()
        .fold(f64::NAN, f64::max);
    if recovery.is_finite() {
        rep.line(&format!(
            "
**Recovery:** after an attack phase ended (its requests answered or dropped at their {}-s deadline) the server needed up to **{recovery:.1} s** to be idle again{}.",
            ATTACK_DEADLINE.as_secs(),
            if recovery > 5.0 {
                " — it kept working for the attacker after the attacker had gone (see which threads, below)"
            } else {
                ""
            }
        ));
    }
    rep.line(&format!(
        "\nBefore each phase the server had to be idle (under 0.1 core over 0.5 s): {}; after the last phase: {}.",
        phases
            .iter()
            .enumerate()
            .map(|(i, p)| format!(
                "phase {} ({}) {}",
                i + 1,
                if p.attack { "attack" } else { "baseline" },
                p.settled_before.text()
            ))
            .collect::<Vec<_>>()
            .join(", "),
        after.settled.text()
    ));

    rep.line(&format!(
        "\n### Attacker ({} requests answered in all attack phases: {expected} the expected refusal, {unexpected} unexpected, **{failures} server failures** (5xx, internal gRPC status, no answer within {} s); {attacker_dropped} dropped by the generator)\n",
        expected + unexpected + failures,
        ATTACK_DEADLINE.as_secs()
    ));
    rep.line(&attacker_table(&attacker_stats, &tally));
    let samples: Vec<String> = tally
        .iter()
        .map(|((c, l), t)| (KINDS.get(*c).map_or("?", |k| k.label()), l, t))
        .chain(
            sql_answers
                .iter()
                .map(|((_, l), t)| ("neighbours' Flight SQL", l, t)),
        )
        .filter(|(_, _, t)| !t.sample.is_empty())
        .map(|(who, l, t)| format!("- {who} → {l}: \"{}\"", t.sample.replace('|', "/")))
        .collect();
    if !samples.is_empty() {
        rep.line(&format!(
            "\nOne message per gRPC answer or failure:\n\n{}",
            samples.join("\n")
        ));
    }
    rep.line(&format!(
        "\nAnswer latencies are from the scheduled time, refusals included (a query stopped at `query_timeout` answers after it).\n\nServer peak RSS: baseline {} MB, attack {} MB (per phase below){}.",
        mb(peak(false)),
        mb(peak(true)),
        if target {
            "; not measured against --target"
        } else {
            ""
        },
    ));

    for (i, p) in phases.iter().enumerate() {
        rep.line(&format!(
            "\n### Phase {} ({})\n\nserver before the phase: {}; neighbours' HTTP: {}; server {} cores (busiest threads: {}), generator {:.2} cores; server peak RSS {} MB; /health: {} answered, {} not within 2 s, slowest {:.1} ms\n\n{}\n{}\nNeighbours' Flight SQL answers: {}\n",
            i + 1,
            if p.attack { "attack" } else { "baseline" },
            p.settled_before.text(),
            p.http.generator_note(),
            p.usage
                .server_cores()
                .map_or_else(|| "n/a".into(), |c| format!("{c:.2}")),
            p.usage.threads_note(4),
            p.usage.bench_cores(),
            mb(p.usage.server_peak_rss),
            p.health.ok,
            p.health.failed,
            p.health.max_ms,
            class_table(&p.http),
            class_table(&p.sql),
            sql_answers_text(&p.sql_answers),
        ));
        if let Some((stats, t)) = &p.attacker {
            rep.line(&format!(
                "Attacker ({}):\n\n{}",
                stats.generator_note(),
                attacker_table(&stats.classes, t)
            ));
        }
        let tally_json = |t: &Tallies, names: &dyn Fn(usize) -> &'static str| -> Vec<Value> {
            t.iter()
                .map(|((c, l), v)| {
                    json!({"class": names(*c), "answer": l, "count": v.count, "verdict": format!("{:?}", v.verdict), "sample": v.sample})
                })
                .collect()
        };
        let kind_name = |c: usize| KINDS.get(c).map_or("?", |k| k.label());
        let group_name = |c: usize| SQL_GROUPS.get(c).copied().unwrap_or("?");
        rep.push_raw(json!({
            "phase": i + 1,
            "attack": p.attack,
            "settled_before": p.settled_before.text(),
            "neighbours_http": run_json(&p.http),
            "neighbours_sql": run_json(&p.sql),
            "neighbours_sql_answers": tally_json(&p.sql_answers, &group_name),
            "attacker": p.attacker.as_ref().map(|(s, _)| run_json(s)),
            "attacker_answers": p.attacker.as_ref().map(|(_, t)| tally_json(t, &kind_name)),
            "health": {"ok": p.health.ok, "failed": p.health.failed, "max_ms": p.health.max_ms},
            "server_peak_rss": p.usage.server_peak_rss,
            "server_cores": p.usage.server_cores(),
            "bench_cores": p.usage.bench_cores(),
        }));
    }
    rep.push_raw(json!({
        "summary": {
            "ratios": rows.iter().map(|r| json!({"group": r.label, "p50": r.ratio[0], "p99": r.ratio[1], "p999": r.ratio[2]})).collect::<Vec<_>>(),
            "attacker_expected": expected,
            "attacker_unexpected": unexpected,
            "attacker_failures": failures,
            "neighbour_errors": calm_errors,
            "neighbour_transport_errors": calm_transport,
            "health_probes_failed": probes_failed,
            "health_after": after.health,
            "running": after.running,
            "panicked": after.panicked,
            "settled_after": after.settled.text(),
            "goal_met": goal,
        }
    }));

    let last = |attack: bool| phases.iter().rfind(|p| p.attack == attack);
    let mut series = Vec::new();
    let mut tp = Vec::new();
    for (attack, name) in [(false, "baseline"), (true, "attack")] {
        if let Some(p) = last(attack) {
            for c in &p.http.classes {
                series.push((format!("{} ({name})", c.label), c.percentiles()));
            }
            tp.push((
                format!("neighbours' HTTP ({name})"),
                p.http.throughput_series(),
            ));
        }
    }
    rep.latency_plot(
        "hostile-latency",
        "hostile: neighbours' HTTP latency, baseline vs attack",
        &series,
    );
    rep.throughput_plot(
        "hostile-throughput",
        "hostile: neighbours' completed requests per second",
        &tp,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_the_cursor_encoding() {
        assert_eq!(
            base64url(b"hc1:18446744073709551615"),
            "aGMxOjE4NDQ2NzQ0MDczNzA5NTUxNjE1"
        );
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn the_schedule_holds_every_kind_by_its_weight() {
        let s = schedule(&[]);
        assert_eq!(s.len(), 1000);
        for k in KINDS {
            assert_eq!(
                s.iter().filter(|x| **x == k).count() as i64,
                k.weight(),
                "{k:?}"
            );
        }
        // The rare kinds are spread out, not bunched.
        let at: Vec<usize> = (0..s.len()).filter(|&i| s[i] == Kind::CrossJoin).collect();
        assert_eq!(at.len(), 2);
        assert!(at[1] - at[0] >= 400, "{at:?}");
    }

    #[test]
    fn a_schedule_of_some_kinds_holds_only_those() {
        let s = schedule(&[Kind::Deep, Kind::CrossJoin]);
        assert_eq!(s.len(), 182);
        assert_eq!(s.iter().filter(|x| **x == Kind::CrossJoin).count(), 2);
        assert!(s.iter().all(|x| matches!(x, Kind::Deep | Kind::CrossJoin)));
        let names = vec!["cursor".to_owned(), "big-body".to_owned()];
        assert_eq!(
            parse_attacks(&names).expect("known names"),
            vec![Kind::Cursor, Kind::BigBody]
        );
        assert!(parse_attacks(&["nope".to_owned()]).is_err());
    }

    #[test]
    fn verdicts() {
        let http = |status, code: &str| Answer::Http {
            status,
            code: code.into(),
        };
        let grpc = |code| Answer::Grpc {
            code,
            setting: String::new(),
            message: String::new(),
        };
        assert_eq!(
            Kind::Deep.verdict(&http(400, "query_too_deep")),
            Verdict::Expected
        );
        assert_eq!(
            Kind::Deep.verdict(&http(400, "query_too_costly")),
            Verdict::Unexpected
        );
        assert_eq!(Kind::Deep.verdict(&http(200, "")), Verdict::Unexpected);
        assert_eq!(Kind::Costly.verdict(&http(502, "")), Verdict::Failure);
        assert_eq!(
            Kind::CrossJoin.verdict(&grpc(tonic::Code::DeadlineExceeded)),
            Verdict::Expected
        );
        assert_eq!(
            Kind::OrderByData.verdict(&grpc(tonic::Code::Ok)),
            Verdict::Unexpected
        );
        assert_eq!(
            Kind::ForgedDoPut.verdict(&grpc(tonic::Code::Internal)),
            Verdict::Failure
        );
        assert_eq!(
            Kind::Cursor.verdict(&Answer::Transport("reset".into())),
            Verdict::Failure
        );
    }

    #[test]
    fn settings_are_read_from_messages() {
        assert_eq!(
            setting_of(
                "your org runs 2 queries already (its tier's max_concurrent_queries, else flight_sql.max_queries_per_org); retry"
            ),
            "flight_sql.max_queries_per_org"
        );
        assert_eq!(
            setting_of("computed for longer than 5s (flight_sql.query_timeout)."),
            "flight_sql.query_timeout"
        );
        assert_eq!(setting_of("something else"), "");
    }

    #[tokio::test]
    async fn the_forged_put_claims_a_gibibyte() {
        let msgs = forged_put().await.expect("forged");
        let m = arrow::ipc::root_as_message(&msgs[msgs.len() - 1].data_header).expect("parses");
        let bufs = m
            .header_as_record_batch()
            .and_then(|b| b.buffers())
            .expect("buffers");
        assert!((0..bufs.len()).any(|i| bufs.get(i).length() == 1 << 30));
    }
}
