//! ROAPI (the PyPI wheel `roapi`), the peer that `flight-vs-json` runs on the
//! same events: it serves one Parquet table over REST JSON, GraphQL, SQL
//! over HTTP and Flight SQL.
//!
//! The events are exported from Honeycell itself (DoGet, so they are the very
//! rows Honeycell served) to an Arrow IPC file, converted to Parquet with
//! pyarrow, and loaded by `roapi -t events=<file>`. Every listener is bound
//! to port 0; the ports are read back from ROAPI's log. When `roapi` or
//! pyarrow is missing, or ROAPI does not start, the caller skips the peer
//! with the reason in the report.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use serde::Deserialize;
use tonic::transport::Channel;

use super::flight_vs_json::{Seen, count_of, decode_stream, fnv};
use crate::server::{cpu_secs_of, peak_rss_of, reset_peak_of};

/// A running ROAPI, killed on drop.
pub struct Roapi {
    child: Child,
    log: PathBuf,
    pub http: String,
    pub flight_sql: String,
}

impl Drop for Roapi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `roapi` executable: pip's scripts directory first (so the pid is the
/// server's own, not a version-manager shim's), else `roapi` on PATH.
fn roapi_bin() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("roapi");
        if p.is_file() {
            return Ok(p);
        }
    }
    let out = Command::new("sh")
        .args(["-c", "command -v roapi"])
        .output()
        .context("looking for roapi")?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if p.is_empty() {
        bail!("`roapi` is not installed (pip install roapi)");
    }
    Ok(PathBuf::from(p))
}

/// Writes `batches` as Parquet at `parquet` (via an Arrow IPC file and pyarrow).
pub fn write_parquet(batches: &[RecordBatch], dir: &Path) -> anyhow::Result<PathBuf> {
    let first = batches.first().context("no batches to export")?;
    let ipc = dir.join("events.arrow");
    let parquet = dir.join("events.parquet");
    {
        let f = std::fs::File::create(&ipc)?;
        let mut w = arrow::ipc::writer::FileWriter::try_new(f, &first.schema())?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    let script = "import sys, pyarrow as pa, pyarrow.parquet as pq\n\
                  t = pa.ipc.open_file(sys.argv[1]).read_all()\n\
                  pq.write_table(t, sys.argv[2], row_group_size=131072)\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&ipc)
        .arg(&parquet)
        .output()
        .context("running python3 to write Parquet")?;
    if !out.status.success() {
        bail!(
            "pyarrow could not write Parquet: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let _ = std::fs::remove_file(&ipc);
    Ok(parquet)
}

impl Roapi {
    /// Starts ROAPI serving `parquet` as table `events`.
    pub async fn start(parquet: &Path, dir: &Path) -> anyhow::Result<Roapi> {
        let bin = roapi_bin()?;
        let log = dir.join("roapi.log");
        let f = std::fs::File::create(&log)?;
        let child = Command::new(&bin)
            .args([
                "-a",
                "127.0.0.1:0",
                "-p",
                "127.0.0.1:0",
                "--addr-flight-sql",
                "127.0.0.1:0",
                "-t",
            ])
            .arg(format!("events={}", parquet.display()))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut r = Roapi {
            child,
            log,
            http: String::new(),
            flight_sql: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&r.log).unwrap_or_default();
            let port = |what: &str| {
                text.lines()
                    .find(|l| l.contains(&format!("for {what} traffic")))
                    .and_then(|l| l.split("Listening on ").nth(1))
                    .and_then(|s| s.split_whitespace().next())
                    .map(str::to_owned)
            };
            if let (Some(h), Some(f)) = (port("HTTP"), port("FlightSQL")) {
                r.http = format!("http://{h}");
                r.flight_sql = format!("http://{f}");
                if !h.starts_with("127.0.0.1:") || !f.starts_with("127.0.0.1:") {
                    bail!("ROAPI bound {h} / {f}, not loopback");
                }
                return Ok(r);
            }
            if let Some(status) = r.child.try_wait()? {
                bail!("roapi exited ({status}): {}", text.trim());
            }
            if Instant::now() > deadline {
                bail!(
                    "roapi did not report its ports within 120 s: {}",
                    text.trim()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn reset_peak(&self) {
        reset_peak_of(self.pid());
    }

    pub fn peak_rss(&self) -> Option<u64> {
        peak_rss_of(self.pid())
    }

    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs_of(self.pid())
    }

    /// `SELECT * FROM events` over Flight SQL (no auth; DoGet on the same
    /// connection, as ROAPI's endpoints carry no location).
    pub async fn read_flight_sql(&self) -> anyhow::Result<Seen> {
        let channel = Channel::from_shared(self.flight_sql.clone())?
            .connect()
            .await?;
        let mut client = FlightSqlServiceClient::new(channel);
        let info = client.execute("SELECT * FROM events".into(), None).await?;
        let mut seen = Seen::default();
        for ep in info.endpoint {
            let ticket = ep.ticket.context("no ticket")?;
            let flight = client.inner_mut().clone();
            let mut flight = flight
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let s = decode_stream(flight.do_get(ticket).await?.into_inner()).await?;
            seen.rows += s.rows;
            seen.checksum = seen.checksum.wrapping_add(s.checksum);
            seen.bytes += s.bytes;
            seen.batches += s.batches;
        }
        Ok(seen)
    }

    /// `SELECT count(*) FROM events` over Flight SQL.
    pub async fn count_flight_sql(&self) -> anyhow::Result<u64> {
        use futures::TryStreamExt as _;
        let channel = Channel::from_shared(self.flight_sql.clone())?
            .connect()
            .await?;
        let mut client = FlightSqlServiceClient::new(channel);
        let info = client
            .execute("SELECT count(*) FROM events".into(), None)
            .await?;
        let ep = info.endpoint.first().context("no endpoint")?;
        let ticket = ep.ticket.clone().context("no ticket")?;
        let batches: Vec<RecordBatch> = client.do_get(ticket).await?.try_collect().await?;
        count_of(&batches)
    }

    /// The whole table as JSON through REST (`GET /api/tables/events`).
    pub async fn read_rest(&self, client: &reqwest::Client) -> anyhow::Result<Seen> {
        let r = client
            .get(format!("{}/api/tables/events", self.http))
            .timeout(Duration::from_secs(600))
            .send()
            .await?;
        json_rows(r).await
    }

    /// The whole table through ROAPI's GraphQL (`POST /api/graphql`, every
    /// column selected; ROAPI answers with the rows as a JSON array).
    pub async fn read_graphql(
        &self,
        client: &reqwest::Client,
        columns: &[String],
    ) -> anyhow::Result<Seen> {
        let r = client
            .post(format!("{}/api/graphql", self.http))
            .timeout(Duration::from_secs(600))
            .body(format!("query {{ events {{ {} }} }}", columns.join(" ")))
            .send()
            .await?;
        json_rows(r).await
    }

    /// The whole table as JSON through SQL over HTTP (`POST /api/sql`).
    pub async fn read_sql_http(&self, client: &reqwest::Client) -> anyhow::Result<Seen> {
        let r = client
            .post(format!("{}/api/sql", self.http))
            .timeout(Duration::from_secs(600))
            .body("SELECT * FROM events")
            .send()
            .await?;
        json_rows(r).await
    }
}

#[derive(Deserialize)]
struct IdRow {
    event_id: String,
}

async fn json_rows(r: reqwest::Response) -> anyhow::Result<Seen> {
    if !r.status().is_success() {
        bail!("ROAPI answered {}: {}", r.status(), r.text().await?);
    }
    let body = r.bytes().await?;
    let rows: Vec<IdRow> = serde_json::from_slice(&body)?;
    let mut seen = Seen {
        bytes: body.len() as u64,
        ..Seen::default()
    };
    for e in &rows {
        seen.rows += 1;
        seen.checksum = seen.checksum.wrapping_add(fnv(&e.event_id));
    }
    Ok(seen)
}
