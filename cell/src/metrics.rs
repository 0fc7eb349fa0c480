//! Per-cell metrics, kept in a thread-local of the cell's thread.
//!
//! Every protocol handler runs on the thread of the cell where its request
//! landed (each cell is one current-thread runtime), so recording is a plain
//! write into that cell's own registry: no atomics, no lock, no sharing. A
//! scrape of `/metrics` asks every cell over the bus for a snapshot and
//! renders them together in Prometheus text format.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Counters and histograms of one cell.
#[derive(Debug, Default)]
pub struct CellMetrics {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram<u64>>,
    pub events_ingested: u64,
    /// Events not stored because their `event_id` was stored within
    /// `storage.dedup_window`.
    pub events_duplicate: u64,
    pub bytes_ingested: u64,
    pub rate_limited: BTreeMap<&'static str, u64>,
    pub admission_rejected: u64,
    pub quota_rejected: u64,
    pub bus_hops_out: u64,
    pub bus_hops_in: u64,
    /// Client connections open on this cell's listeners, and refused
    /// because the cell had `connections.max_per_cell` open.
    pub connections_open: u64,
    pub connections_refused: u64,
}

/// The process-wide registry of the `shared` runtime mode (the
/// conventional design the cells are measured against): every worker thread
/// records into one mutex-guarded registry.
static SHARED: OnceLock<Mutex<CellMetrics>> = OnceLock::new();

/// Switches recording to the process-wide registry (`--runtime shared`).
pub fn use_shared_registry() {
    SHARED.get_or_init(|| Mutex::new(CellMetrics::default()));
}

thread_local! {
    static METRICS: RefCell<CellMetrics> = RefCell::new(CellMetrics::default());
}

/// Runs `f` on the current cell's metrics (or the shared registry).
pub fn with<R>(f: impl FnOnce(&mut CellMetrics) -> R) -> R {
    if let Some(shared) = SHARED.get() {
        let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
        return f(&mut guard);
    }
    METRICS.with(|m| f(&mut m.borrow_mut()))
}

/// Records one finished request: `route` is a fixed label such as
/// `POST /v1/events` or `flight.DoGet`.
pub fn record_request(route: &'static str, status: u16, elapsed: Duration) {
    with(|m| {
        *m.requests.entry((route, status)).or_default() += 1;
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let hist = m.latency.entry(route).or_insert_with(|| {
            Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("1 µs .. 60 s at 3 significant digits are valid histogram bounds")
        });
        hist.saturating_record(micros);
    });
}

/// A copy of one cell's metrics, sent over the bus to the scraping cell.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub cell: u32,
    pub requests: Vec<(&'static str, u16, u64)>,
    pub latency: Vec<(&'static str, Histogram<u64>)>,
    pub events_ingested: u64,
    pub events_duplicate: u64,
    pub bytes_ingested: u64,
    pub rate_limited: Vec<(&'static str, u64)>,
    pub admission_rejected: u64,
    pub quota_rejected: u64,
    pub bus_hops_out: u64,
    pub bus_hops_in: u64,
    pub connections_open: u64,
    pub connections_refused: u64,
    pub buffered_bytes: u64,
    pub queue_depth: u64,
    pub orgs_open: u64,
    pub stored_bytes: u64,
    pub dedup_evicted: u64,
}

impl CellMetrics {
    pub fn snapshot(&self, cell: u32) -> MetricsSnapshot {
        MetricsSnapshot {
            cell,
            requests: self
                .requests
                .iter()
                .map(|((r, s), n)| (*r, *s, *n))
                .collect(),
            latency: self.latency.iter().map(|(r, h)| (*r, h.clone())).collect(),
            events_ingested: self.events_ingested,
            events_duplicate: self.events_duplicate,
            bytes_ingested: self.bytes_ingested,
            rate_limited: self.rate_limited.iter().map(|(k, v)| (*k, *v)).collect(),
            admission_rejected: self.admission_rejected,
            quota_rejected: self.quota_rejected,
            bus_hops_out: self.bus_hops_out,
            bus_hops_in: self.bus_hops_in,
            connections_open: self.connections_open,
            connections_refused: self.connections_refused,
            buffered_bytes: 0,
            queue_depth: 0,
            orgs_open: 0,
            stored_bytes: 0,
            dedup_evicted: 0,
        }
    }
}

/// A gauge or counter with one value per cell: name, type, help, getter.
type SimpleFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&MetricsSnapshot) -> u64,
);

/// Renders all cells' snapshots as Prometheus text (exposition format 0.0.4).
pub fn render(cells: &[MetricsSnapshot]) -> String {
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, body: &mut dyn FnMut(&mut String)| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        body(&mut out);
    };
    family(
        "honeycell_requests_total",
        "counter",
        "Requests finished, by the cell they landed on, route and status.",
        &mut |o| {
            for c in cells {
                for (route, status, n) in &c.requests {
                    let _ = writeln!(
                        o,
                        "honeycell_requests_total{{cell=\"{}\",route=\"{route}\",status=\"{status}\"}} {n}",
                        c.cell
                    );
                }
            }
        },
    );
    family(
        "honeycell_request_duration_seconds",
        "summary",
        "Request latency by cell and route (hdrhistogram, since start).",
        &mut |o| {
            for c in cells {
                for (route, h) in &c.latency {
                    for q in [0.5, 0.9, 0.99, 0.999] {
                        let _ = writeln!(
                            o,
                            "honeycell_request_duration_seconds{{cell=\"{}\",route=\"{route}\",quantile=\"{q}\"}} {:.6}",
                            c.cell,
                            h.value_at_quantile(q) as f64 / 1e6
                        );
                    }
                    let sum = h.mean() * h.len() as f64 / 1e6;
                    let _ = writeln!(
                        o,
                        "honeycell_request_duration_seconds_sum{{cell=\"{}\",route=\"{route}\"}} {sum:.6}",
                        c.cell
                    );
                    let _ = writeln!(
                        o,
                        "honeycell_request_duration_seconds_count{{cell=\"{}\",route=\"{route}\"}} {}",
                        c.cell,
                        h.len()
                    );
                }
            }
        },
    );
    let simple: [SimpleFamily; 14] = [
        (
            "honeycell_events_ingested_total",
            "counter",
            "Events durably appended by the owning cell.",
            |c| c.events_ingested,
        ),
        (
            "honeycell_events_duplicate_total",
            "counter",
            "Events not stored because their event_id was stored within storage.dedup_window.",
            |c| c.events_duplicate,
        ),
        (
            "honeycell_dedup_evicted_total",
            "counter",
            "Event ids forgotten before storage.dedup_window ended because an org held storage.dedup_max_ids; when it grows the effective window is shorter.",
            |c| c.dedup_evicted,
        ),
        (
            "honeycell_bytes_ingested_total",
            "counter",
            "Arrow bytes durably appended by the owning cell.",
            |c| c.bytes_ingested,
        ),
        (
            "honeycell_admission_rejected_total",
            "counter",
            "Requests refused by admission control (queue depth or buffered memory).",
            |c| c.admission_rejected,
        ),
        (
            "honeycell_quota_rejected_total",
            "counter",
            "Writes refused because the org reached its tier's storage quota.",
            |c| c.quota_rejected,
        ),
        (
            "honeycell_bus_hops_out_total",
            "counter",
            "Requests this cell handed to another (owning) cell.",
            |c| c.bus_hops_out,
        ),
        (
            "honeycell_bus_hops_in_total",
            "counter",
            "Requests this cell received from another cell over the bus.",
            |c| c.bus_hops_in,
        ),
        (
            "honeycell_connections_open",
            "gauge",
            "Client connections open on the cell's HTTP and Flight listeners.",
            |c| c.connections_open,
        ),
        (
            "honeycell_connections_refused_total",
            "counter",
            "Connections closed at once because the cell had connections.max_per_cell open.",
            |c| c.connections_refused,
        ),
        (
            "honeycell_buffered_bytes",
            "gauge",
            "Bytes held in unsealed buffers and queued writes.",
            |c| c.buffered_bytes,
        ),
        (
            "honeycell_queue_depth",
            "gauge",
            "Requests in flight in the cell (admission control input).",
            |c| c.queue_depth,
        ),
        (
            "honeycell_orgs_open",
            "gauge",
            "Orgs whose event log this cell has open.",
            |c| c.orgs_open,
        ),
        (
            "honeycell_stored_bytes",
            "gauge",
            "Bytes on disk of the orgs this cell has open.",
            |c| c.stored_bytes,
        ),
    ];
    for (name, kind, help, get) in simple {
        family(name, kind, help, &mut |o| {
            for c in cells {
                let _ = writeln!(o, "{name}{{cell=\"{}\"}} {}", c.cell, get(c));
            }
        });
    }
    family(
        "honeycell_rate_limited_total",
        "counter",
        "Requests refused by a rate limit, by limit scope and operation kind.",
        &mut |o| {
            for c in cells {
                for (scope, n) in &c.rate_limited {
                    let _ = writeln!(
                        o,
                        "honeycell_rate_limited_total{{cell=\"{}\",limit=\"{scope}\"}} {n}",
                        c.cell
                    );
                }
            }
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_renders_prometheus_text() {
        record_request("GET /v1/events", 200, Duration::from_millis(2));
        record_request("GET /v1/events", 200, Duration::from_millis(4));
        record_request("GET /v1/events", 429, Duration::from_micros(50));
        with(|m| m.events_ingested += 7);
        let snap = with(|m| m.snapshot(3));
        let text = render(&[snap]);
        assert!(text.contains(
            "honeycell_requests_total{cell=\"3\",route=\"GET /v1/events\",status=\"200\"} 2"
        ));
        assert!(text.contains("honeycell_events_ingested_total{cell=\"3\"} 7"));
        assert!(text.contains(
            "honeycell_request_duration_seconds_count{cell=\"3\",route=\"GET /v1/events\"} 3"
        ));
        // Every family is announced once with HELP and TYPE.
        assert_eq!(
            text.matches("# TYPE honeycell_requests_total counter")
                .count(),
            1
        );
    }
}
