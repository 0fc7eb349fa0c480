//! The report of a scenario: `bench/results/<scenario>-<timestamp>/` with
//! `report.md`, `raw.json` and SVG plots (latency percentiles per path,
//! throughput over time in 1-s buckets).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::prelude::*;
use serde_json::{Value, json};

use crate::load::RunStats;
use crate::server::workspace;

/// A report being written.
pub struct Report {
    pub scenario: String,
    pub dir: PathBuf,
    pub md: String,
    pub raw: Vec<Value>,
}

impl Report {
    pub fn new(scenario: &str, command: &str) -> anyhow::Result<Report> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let dir = workspace()
            .join("bench/results")
            .join(format!("{scenario}-{stamp}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let md = format!(
            "# {scenario} — {}\n\nCommand: `{command}`\n\nMachine: {}; load average at start: {}\n",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            machine(),
            loadavg()
        );
        Ok(Report {
            scenario: scenario.to_owned(),
            dir,
            md,
            raw: Vec::new(),
        })
    }

    pub fn line(&mut self, s: &str) {
        self.md.push_str(s);
        self.md.push('\n');
    }

    pub fn push_raw(&mut self, v: Value) {
        self.raw.push(v);
    }

    /// Writes report.md and raw.json; returns the report's directory.
    pub fn finish(&mut self) -> anyhow::Result<&Path> {
        self.line(&format!("\nLoad average at the end: {}", loadavg()));
        std::fs::write(self.dir.join("report.md"), &self.md)?;
        std::fs::write(
            self.dir.join("raw.json"),
            serde_json::to_vec_pretty(&json!({"scenario": self.scenario, "results": self.raw}))?,
        )?;
        Ok(&self.dir)
    }

    /// Plots p50/p90/p99/p99.9 of each series and links the SVG.
    pub fn latency_plot(&mut self, name: &str, title: &str, series: &[(String, [f64; 4])]) {
        let file = format!("{name}.svg");
        match latency_svg(&self.dir.join(&file), title, series) {
            Ok(()) => self.line(&format!("\n![{title}]({file})\n")),
            Err(e) => self.line(&format!("\n(plot {file} failed: {e})\n")),
        }
    }

    /// Plots completions per second of each series and links the SVG.
    pub fn throughput_plot(&mut self, name: &str, title: &str, series: &[(String, Vec<f64>)]) {
        let xy: Vec<(String, Vec<(f64, f64)>)> = series
            .iter()
            .map(|(l, v)| {
                let pts = v.iter().enumerate().map(|(x, y)| (x as f64 + 0.5, *y));
                (l.clone(), pts.collect())
            })
            .collect();
        let axes = ("second of the run", "completed per second");
        self.xy_plot(name, title, axes, &xy);
    }

    /// Plots lines of (x, y) points and links the SVG.
    pub fn xy_plot(
        &mut self,
        name: &str,
        title: &str,
        axes: (&str, &str),
        series: &[(String, Vec<(f64, f64)>)],
    ) {
        let file = format!("{name}.svg");
        match xy_svg(&self.dir.join(&file), title, axes, series) {
            Ok(()) => self.line(&format!("\n![{title}]({file})\n")),
            Err(e) => self.line(&format!("\n(plot {file} failed: {e})\n")),
        }
    }
}

/// The 1-, 5- and 15-minute load averages (other work on the machine shows
/// here).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// CPU model, cores and memory of this machine.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(String::new, |kb| {
            format!(", {:.0} GiB", kb / 1024.0 / 1024.0)
        });
    format!(
        "{} cores ({cpu}){mem}; the load generator and the server share these cores",
        std::thread::available_parallelism().map_or(1, usize::from)
    )
}

/// The raw JSON of a run.
pub fn run_json(run: &RunStats) -> Value {
    let classes: Vec<Value> = run
        .classes
        .iter()
        .map(|c| {
            json!({
                "label": c.label,
                "sent": c.sent,
                "ok": c.ok_count,
                "http_429": c.http_429,
                "http_429_with_retry_after": c.http_429_with_retry_after,
                "errors": c.errors,
                "transport_errors": c.transport_errors,
                "items": c.items,
                "latency_ms": {"p50": c.ms(0.5), "p90": c.ms(0.9), "p99": c.ms(0.99), "p999": c.ms(0.999), "max": c.ok.max() as f64 / 1000.0},
                "service_ms": {"p50": c.service_ms(0.5), "p99": c.service_ms(0.99)},
            })
        })
        .collect();
    json!({
        "offered_rate": run.rate,
        "scheduled": run.scheduled,
        "dropped_by_generator": run.dropped,
        "send_lag_ms": {"p50": run.lag_ms(0.5), "p99": run.lag_ms(0.99), "max": run.send_lag.max() as f64 / 1000.0},
        "wall_s": run.wall.as_secs_f64(),
        "ok_per_s": run.ok_per_sec(),
        "classes": classes,
        "throughput_per_s": run.throughput_series(),
    })
}

/// A markdown table row per class of a run: requests, ok, 429, errors,
/// p50/p99/p999 from the scheduled time, p99 service time.
pub fn class_table(run: &RunStats) -> String {
    let mut s = String::from(
        "| path | sent | ok | 429 | errors | transport errors | p50 ms | p90 ms | p99 ms | p99.9 ms | p99 service ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut rows = run.classes.clone();
    if rows.len() > 1 {
        rows.push(run.total());
    }
    for c in &rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            c.label,
            c.sent,
            c.ok_count,
            c.http_429,
            c.errors,
            c.transport_errors,
            c.ms(0.5),
            c.ms(0.9),
            c.ms(0.99),
            c.ms(0.999),
            c.service_ms(0.99)
        ));
    }
    s
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn latency_svg(path: &Path, title: &str, series: &[(String, [f64; 4])]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let finite = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0);
    let max = finite.clone().fold(0.001f64, f64::max) * 1.5;
    let min = finite.fold(max, f64::min).max(0.001) / 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..3.2f64, (min..max).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| {
            match x.round() as i64 {
                0 => "p50",
                1 => "p90",
                2 => "p99",
                3 => "p99.9",
                _ => "",
            }
            .to_owned()
        })
        .y_desc("latency (ms, log)")
        .draw()?;
    for (i, (label, v)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .filter(|(_, y)| y.is_finite() && **y > 0.0)
            .map(|(x, y)| (x as f64, *y))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn xy_svg(
    path: &Path,
    title: &str,
    axes: (&str, &str),
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || series.iter().flat_map(|(_, v)| v.iter().copied());
    let len = points()
        .map(|p| p.0)
        .filter(|x| x.is_finite())
        .fold(1.0f64, f64::max)
        * 1.05;
    let max = points()
        .map(|p| p.1)
        .filter(|y| y.is_finite())
        .fold(1e-3f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..len, 0f64..max)?;
    chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .draw()?;
    for (i, (label, v)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                v.iter()
                    .copied()
                    .filter(|p| p.0.is_finite() && p.1.is_finite()),
                color.stroke_width(2),
            ))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
