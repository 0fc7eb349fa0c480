//! Load drivers: open loop (constant arrival rate) for latency, closed loop
//! (N workers back to back) for saturation throughput.
//!
//! The open-loop driver schedules request `i` at `start + i / rate` and
//! measures its latency from that *scheduled* time, not from when it was
//! actually sent, so a stalled server (or a stalled generator) shows up in the
//! percentiles instead of silently lowering the offered rate (coordinated
//! omission). In-flight requests are bounded: a request whose slot comes
//! while the bound is reached is not sent and is counted as dropped by the
//! generator, and how late the generator itself dispatched requests is
//! recorded in a histogram of its own. Both appear in every report.

use std::future::Future;
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;

/// What one request came back with.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// Index of the request's class (path), into the driver's `labels`.
    pub class: usize,
    /// HTTP status (gRPC: 200 for OK, 429 for RESOURCE_EXHAUSTED, 500 other).
    /// None: the request failed in transport (connect, reset, timeout).
    pub status: Option<u16>,
    /// A 429 carried `Retry-After`.
    pub retry_after: bool,
    /// Events (or rows) this request carried, for events/s.
    pub items: u64,
}

impl Outcome {
    pub fn ok(class: usize, items: u64) -> Self {
        Self {
            class,
            status: Some(200),
            retry_after: false,
            items,
        }
    }
}

/// Latency and counts of one class of requests.
#[derive(Clone, Debug)]
pub struct ClassStats {
    pub label: String,
    /// Latency in µs of successful (2xx) requests.
    pub ok: Histogram<u64>,
    /// Latency in µs of every answered request.
    pub all: Histogram<u64>,
    /// Service time in µs of successful requests: from the actual send, not
    /// the scheduled slot (equal to `ok` in closed loop).
    pub service: Histogram<u64>,
    pub sent: u64,
    pub ok_count: u64,
    pub http_429: u64,
    pub http_429_with_retry_after: u64,
    /// Non-2xx, non-429 answers.
    pub errors: u64,
    /// Transport failures (no answer).
    pub transport_errors: u64,
    pub items: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s, 3 significant digits; the bounds are constants.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("constant histogram bounds are valid")
}

impl ClassStats {
    fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            ok: histogram(),
            all: histogram(),
            service: histogram(),
            sent: 0,
            ok_count: 0,
            http_429: 0,
            http_429_with_retry_after: 0,
            errors: 0,
            transport_errors: 0,
            items: 0,
        }
    }

    fn record(&mut self, o: &Outcome, latency_us: u64, service_us: u64) {
        let v = latency_us.clamp(1, 100_000_000);
        match o.status {
            None => self.transport_errors += 1,
            Some(s) => {
                let _ = self.all.record(v);
                if (200..300).contains(&s) {
                    self.ok_count += 1;
                    self.items += o.items;
                    let _ = self.ok.record(v);
                    let _ = self.service.record(service_us.clamp(1, 100_000_000));
                } else if s == 429 {
                    self.http_429 += 1;
                    if o.retry_after {
                        self.http_429_with_retry_after += 1;
                    }
                } else {
                    self.errors += 1;
                }
            }
        }
    }

    /// Percentile of successful requests in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.ok.is_empty() {
            return f64::NAN;
        }
        self.ok.value_at_quantile(q) as f64 / 1000.0
    }

    /// Service-time percentile (from the actual send) in ms.
    pub fn service_ms(&self, q: f64) -> f64 {
        if self.service.is_empty() {
            return f64::NAN;
        }
        self.service.value_at_quantile(q) as f64 / 1000.0
    }

    /// p50, p90, p99, p99.9 in ms.
    pub fn percentiles(&self) -> [f64; 4] {
        [self.ms(0.5), self.ms(0.9), self.ms(0.99), self.ms(0.999)]
    }

    pub fn merge(&mut self, other: &ClassStats) {
        let _ = self.ok.add(&other.ok);
        let _ = self.all.add(&other.all);
        let _ = self.service.add(&other.service);
        self.sent += other.sent;
        self.ok_count += other.ok_count;
        self.http_429 += other.http_429;
        self.http_429_with_retry_after += other.http_429_with_retry_after;
        self.errors += other.errors;
        self.transport_errors += other.transport_errors;
        self.items += other.items;
    }
}

/// The result of a load run.
#[derive(Clone, Debug)]
pub struct RunStats {
    pub classes: Vec<ClassStats>,
    /// Requests the schedule called for.
    pub scheduled: u64,
    /// Requests not sent because the in-flight bound was reached.
    pub dropped: u64,
    /// How late the generator dispatched requests, µs after their slot.
    pub send_lag: Histogram<u64>,
    /// Completed requests per 1-s bucket (by completion time), per class.
    pub per_second: Vec<Vec<u64>>,
    /// Wall time from the first slot to the last answer.
    pub wall: Duration,
    /// The offered rate (requests/s); 0 for closed loop.
    pub rate: f64,
}

impl RunStats {
    /// All classes together.
    pub fn total(&self) -> ClassStats {
        let mut t = ClassStats::new("all");
        for c in &self.classes {
            t.merge(c);
        }
        t
    }

    /// Successful requests per second of wall time.
    pub fn ok_per_sec(&self) -> f64 {
        self.total().ok_count as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Items (events) acknowledged per second of wall time.
    pub fn items_per_sec(&self) -> f64 {
        self.total().items as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Completions per second, all classes, per 1-s bucket.
    pub fn throughput_series(&self) -> Vec<f64> {
        let n = self.per_second.iter().map(Vec::len).max().unwrap_or(0);
        (0..n)
            .map(|i| {
                self.per_second
                    .iter()
                    .map(|s| s.get(i).copied().unwrap_or(0) as f64)
                    .sum()
            })
            .collect()
    }

    /// Generator lag percentile in ms.
    pub fn lag_ms(&self, q: f64) -> f64 {
        if self.send_lag.is_empty() {
            return 0.0;
        }
        self.send_lag.value_at_quantile(q) as f64 / 1000.0
    }

    /// A sentence on whether the generator kept the schedule: requests not
    /// sent because the in-flight bound was reached (the server fell
    /// behind), and how late the generator itself dispatched the others.
    pub fn generator_note(&self) -> String {
        // The scheduler's timer has 1-ms granularity, so up to ~1 ms of lag
        // is the clock, not the generator falling behind.
        let late = self.send_lag.count_between(2_000, u64::MAX);
        let pct = 100.0 * late as f64 / self.send_lag.len().max(1) as f64;
        let dropped = if self.dropped == 0 {
            "0 dropped".to_owned()
        } else {
            format!(
                "**{} of {} scheduled requests dropped by the generator** (the in-flight bound was reached: answers came back slower than the offered rate)",
                self.dropped, self.scheduled
            )
        };
        let lag = format!(
            "{pct:.2} % sent more than 2 ms after their slot (send lag p99 {:.2} ms, max {:.1} ms)",
            self.lag_ms(0.99),
            self.send_lag.max() as f64 / 1000.0
        );
        let verdict = if pct < 1.0 {
            "the generator itself kept the schedule"
        } else {
            "**the generator itself could not keep the rate** (it shares the cores with the server); late sends count in the latencies, which are measured from the scheduled time"
        };
        format!("{dropped}; {lag}: {verdict}")
    }
}

struct Shared {
    classes: Vec<ClassStats>,
    per_second: Vec<Vec<u64>>,
    send_lag: Histogram<u64>,
}

impl Shared {
    fn new(labels: &[&str]) -> Self {
        Self {
            classes: labels.iter().map(|l| ClassStats::new(l)).collect(),
            per_second: vec![Vec::new(); labels.len()],
            send_lag: histogram(),
        }
    }

    fn record(&mut self, o: &Outcome, latency: Duration, service: Duration, done_at: Duration) {
        let Some(c) = self.classes.get_mut(o.class) else {
            return;
        };
        c.record(o, latency.as_micros() as u64, service.as_micros() as u64);
        if o.status.is_some_and(|s| (200..300).contains(&s)) {
            let sec = done_at.as_secs() as usize;
            let series = &mut self.per_second[o.class];
            if series.len() <= sec {
                series.resize(sec + 1, 0);
            }
            series[sec] += 1;
        }
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress(len: u64, msg: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:40} [{elapsed_precise}] {wide_bar} {pos}/{len}")
    {
        pb.set_style(style);
    }
    pb.set_message(msg.to_owned());
    pb
}

/// How long to wait for stragglers after the last slot.
const DRAIN: Duration = Duration::from_secs(15);

/// Open loop: `rate` requests/s for `duration`, at most `max_in_flight` at
/// once. `make(i)` builds request `i` (its class is chosen by the caller).
pub async fn open_loop<F, Fut>(
    labels: &[&str],
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
    msg: &str,
    make: F,
) -> RunStats
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let scheduled = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let shared = Arc::new(Mutex::new(Shared::new(labels)));
    let sem = Arc::new(Semaphore::new(max_in_flight));
    let pb = progress(scheduled, msg);
    let start = tokio::time::Instant::now() + Duration::from_millis(5);
    let mut dropped = 0u64;
    for i in 0..scheduled {
        let slot = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(slot).await;
        if i % 256 == 0 {
            pb.set_position(i);
        }
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let lag = tokio::time::Instant::now().saturating_duration_since(slot);
        let fut = make(i);
        let shared = shared.clone();
        let start_std = start.into_std();
        let slot_std = slot.into_std();
        tokio::spawn(async move {
            let sent = Instant::now();
            let o = fut.await;
            let now = Instant::now();
            let mut s = lock(&shared);
            let _ = s
                .send_lag
                .record((lag.as_micros() as u64).clamp(1, 100_000_000));
            s.record(
                &o,
                now.saturating_duration_since(slot_std),
                now - sent,
                now.saturating_duration_since(start_std),
            );
            if let Some(c) = s.classes.get_mut(o.class) {
                c.sent += 1;
            }
            drop(permit);
        });
    }
    pb.finish_and_clear();
    // Wait (bounded) for the requests still in flight.
    let _ = tokio::time::timeout(
        DRAIN,
        sem.acquire_many(u32::try_from(max_in_flight).unwrap_or(u32::MAX)),
    )
    .await;
    let wall = start.elapsed();
    let s = lock(&shared);
    RunStats {
        classes: s.classes.clone(),
        scheduled,
        dropped,
        send_lag: s.send_lag.clone(),
        per_second: s.per_second.clone(),
        wall,
        rate,
    }
}

/// Closed loop: `workers` workers send back to back for `duration` (at most
/// `max_requests` in all); latency is measured per request.
pub async fn closed_loop<F, Fut>(
    labels: &[&str],
    workers: usize,
    duration: Duration,
    max_requests: u64,
    make: F,
) -> RunStats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let shared = Arc::new(Mutex::new(Shared::new(labels)));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let make = Arc::new(make);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (shared, next, make) = (shared.clone(), next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= max_requests || Instant::now() >= deadline {
                    return;
                }
                let t = Instant::now();
                let o = make(i).await;
                let now = Instant::now();
                let mut s = lock(&shared);
                s.record(&o, now - t, now - t, now - start);
                if let Some(c) = s.classes.get_mut(o.class) {
                    c.sent += 1;
                }
            }
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(duration + DRAIN, t).await;
    }
    let wall = start.elapsed();
    let s = lock(&shared);
    let scheduled = s.classes.iter().map(|c| c.sent).sum();
    RunStats {
        classes: s.classes.clone(),
        scheduled,
        dropped: 0,
        send_lag: s.send_lag.clone(),
        per_second: s.per_second.clone(),
        wall,
        rate: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_loop_counts_every_scheduled_request() {
        let run = open_loop(
            &["a"],
            200.0,
            Duration::from_millis(250),
            8,
            "t",
            |_| async { Outcome::ok(0, 2) },
        )
        .await;
        let c = &run.classes[0];
        assert_eq!(run.scheduled, 50);
        assert_eq!(c.sent + run.dropped, run.scheduled);
        assert_eq!(c.ok_count, c.sent);
        assert_eq!(c.items, 2 * c.ok_count);
        assert_eq!(
            run.throughput_series().iter().sum::<f64>() as u64,
            c.ok_count
        );
    }

    #[tokio::test]
    async fn open_loop_drops_when_the_in_flight_bound_is_reached() {
        // Each request takes 100 ms; with at most 2 in flight at 100/s, most
        // slots find no permit and must be counted, not silently skipped.
        let run = open_loop(
            &["slow"],
            100.0,
            Duration::from_millis(300),
            2,
            "t",
            |_| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Outcome::ok(0, 1)
            },
        )
        .await;
        assert!(run.dropped > 10, "dropped {}", run.dropped);
        assert_eq!(run.classes[0].sent + run.dropped, run.scheduled);
        assert!(run.generator_note().contains("dropped by the generator"));
    }

    #[tokio::test]
    async fn latency_is_measured_from_the_scheduled_time() {
        // With permits to spare, a 50-ms answer is >= 50 ms from its slot.
        let run = open_loop(
            &["x"],
            20.0,
            Duration::from_millis(100),
            16,
            "t",
            |_| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Outcome::ok(0, 1)
            },
        )
        .await;
        assert!(run.classes[0].ms(0.5) >= 50.0);
    }

    #[tokio::test]
    async fn statuses_are_classified() {
        let run = closed_loop(&["s"], 1, Duration::from_secs(5), 4, |i| async move {
            Outcome {
                class: 0,
                status: [Some(200), Some(429), Some(500), None][i as usize],
                retry_after: i == 1,
                items: 1,
            }
        })
        .await;
        let c = &run.classes[0];
        assert_eq!(
            (
                c.ok_count,
                c.http_429,
                c.http_429_with_retry_after,
                c.errors,
                c.transport_errors
            ),
            (1, 1, 1, 1, 1)
        );
    }
}
