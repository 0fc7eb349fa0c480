//! The fuzz targets' bodies: every parser that takes outside bytes, each
//! behind one function of `&[u8]` that must never panic, whatever the
//! bytes. A target ignores the parser's answer (an error is the expected
//! outcome for most inputs); a panic, an abort or a hang is the finding.
//!
//! Targets: [`ingest_json`] (HTTP ingest bodies, JSON and NDJSON),
//! [`graphql_request`] (the `/graphql` body, its document and variables, as
//! `graphql_guard` checks and async-graphql parses them), [`query_params`]
//! (filters, times and paging cursors of HTTP, GraphQL and Flight tickets),
//! [`credentials`] (JWTs, their header, API keys), [`ipc_stream`] (DoPut's
//! Arrow IPC messages, then the event checks a decoded batch goes through),
//! [`flight_sql_command`] (tickets and descriptor commands: Flight SQL
//! commands, protobuf `Any`, their SQL checked and planned; events tickets),
//! [`wal_frames`] and [`segment_file`] (what recovery reads from disk).
//!
//! The libFuzzer harness is `libfuzzer/` (`cargo +nightly fuzz run --fuzz-dir
//! fuzz/libfuzzer <target> fuzz/corpus/<target>`); the kept corpus is
//! `corpus/<target>/`, replayed by `tests/corpus.rs`.

use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use honeycell_flight::{QueryEngine, SqlConfig};

use honeycell_types::OrgId;

/// A target: what it does with one input.
pub type Target = fn(&[u8]);

/// Lets panics that the code under test catches itself pass quietly.
///
/// The Arrow decoders (DoPut's IPC messages, WAL payloads, segment files)
/// run under `catch_unwind` by design: arrow panics on some malformed
/// input, and the server turns that into a refusal. libFuzzer's panic
/// hook aborts on every panic, caught or not, which would report those
/// handled cases as crashes and stop the run; with this hook they pass,
/// and a panic that escapes the target still aborts (libfuzzer-sys checks
/// each input's unwinding), so it remains a finding.
fn allow_caught_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

/// Every target, by the name of its corpus folder.
pub const TARGETS: [(&str, Target); 8] = [
    ("ingest_json", ingest_json),
    ("graphql_request", graphql_request),
    ("query_params", query_params),
    ("credentials", credentials),
    ("ipc_stream", ipc_stream),
    ("flight_sql_command", flight_sql_command),
    ("wal_frames", wal_frames),
    ("segment_file", segment_file),
];

/// `POST /v1/events` bodies, as a JSON array and as NDJSON.
pub fn ingest_json(data: &[u8]) {
    let _ = honeycell_api::ingest::parse_json_array(data, 10_000);
    let _ = honeycell_api::ingest::parse_ndjson(data, 10_000);
}

/// `POST /graphql` bodies: the checks before parsing, the parse, and the
/// variables' conversion.
pub fn graphql_request(data: &[u8]) {
    static CONFIG: OnceLock<honeycell_api::HttpConfig> = OnceLock::new();
    let config = CONFIG.get_or_init(Default::default);
    if let Ok(mut request) = honeycell_api::graphql_guard::request(config, data) {
        let _ = request.parsed_query();
    }
}

/// Filter parameters, times and cursors, from NUL-separated text.
pub fn query_params(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let mut next = || parts.next().map(str::to_owned);
    let (entity_type, event_type, entity_id, since, until, cursor) =
        (next(), next(), next(), next(), next(), next());
    let _ = honeycell_cell::query::EventFilter::from_params(
        entity_type,
        event_type.as_deref(),
        entity_id,
        since.as_deref(),
        until.as_deref(),
    );
    if let Some(c) = cursor {
        let _ = honeycell_cell::query::Cursor::decode(&c);
    }
    let _ = honeycell_cell::query::parse_time(&text);
}

/// Bearer credentials: JWTs (with a fixed HS256 key), their `kid`, API keys.
pub fn credentials(data: &[u8]) {
    static VERIFIER: OnceLock<Option<honeycell_auth::Verifier>> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        let config = honeycell_auth::JwtConfig {
            secret: Some("fuzzing-secret-fuzzing-secret-fuzzing-secret".to_owned()),
            ..Default::default()
        };
        honeycell_auth::Verifier::new(&config).ok()
    });
    let text = String::from_utf8_lossy(data);
    if let Some(v) = verifier {
        let _ = v.verify_bearer(Some(&text));
        let _ = v.verify(&text);
    }
    let _ = honeycell_auth::peek_kid(&text);
    let _ = honeycell_control::parse_api_key(&text);
}

/// A DoPut stream: messages framed as `u32 header length, header, u32 body
/// length, body` (little-endian), fed to the checked decoder; each batch it
/// accepts goes through the event checks, as DoPut's do.
pub fn ipc_stream(data: &[u8]) {
    allow_caught_panics();
    let org = OrgId::new("fuzz").ok();
    let mut decoder = honeycell_storage::IpcDecoder::default();
    let mut rest = data;
    while let Some((header, after)) = take_framed(rest)
        && let Some((body, after)) = take_framed(after)
    {
        rest = after;
        match decoder.decode(header, body) {
            Ok(Some(batch)) => {
                if let Some(org) = &org {
                    let _ = honeycell_storage::normalize_batch(org, &batch, 0);
                }
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

fn take_framed(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let rest = &data[4..];
    let len = len.min(rest.len());
    Some(rest.split_at(len))
}

/// Flight tickets and descriptor commands as clients send them: Flight
/// SQL commands (protobuf `Any`), whose statement text goes through the
/// SQL checks and DataFusion's planning (not execution), and the events
/// API's JSON tickets. The input's text is also planned as a statement.
pub fn flight_sql_command(data: &[u8]) {
    use arrow_flight::sql::Command;
    use prost::Message as _;
    let _ = honeycell_flight::service::check_events_ticket(data);
    if let Ok(any) = arrow_flight::sql::Any::decode(data)
        && let Ok(command) = Command::try_from(any)
    {
        match command {
            Command::CommandStatementQuery(q) => plan(&q.query),
            Command::ActionCreatePreparedStatementRequest(q) => plan(&q.query),
            _ => {}
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        plan(text);
    }
}

/// Checks and plans `sql` with the server's query engine (its defaults).
fn plan(sql: &str) {
    static ENGINE: OnceLock<Option<(tokio::runtime::Runtime, Arc<QueryEngine>)>> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let engine = QueryEngine::new(SqlConfig::default(), rt.handle().clone());
        Some((rt, engine))
    });
    if let Some((rt, engine)) = engine {
        let _ = rt.block_on(honeycell_flight::sql::check_and_plan(engine, sql));
    }
}

/// WAL bytes as recovery scans them: the input both as raw file bytes and
/// as the payload of a frame with a valid checksum (so that the payload's
/// Arrow decoding is reached).
pub fn wal_frames(data: &[u8]) {
    allow_caught_panics();
    let _ = honeycell_storage::fuzzing::scan_wal(data);
    let framed = honeycell_storage::fuzzing::wal_frame(0, data);
    let _ = honeycell_storage::fuzzing::scan_wal(&framed);
}

/// A segment file as recovery maps and decodes it.
pub fn segment_file(data: &[u8]) {
    allow_caught_panics();
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).and_then(|()| file.flush()).is_ok() {
        let _ = honeycell_storage::fuzzing::load_segment(file.path());
    }
}
