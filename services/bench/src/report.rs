//! The report of a run, three ways: `report.json` (everything, for tools), `report.md` (the
//! tables the README shows) and `report.svg` (throughput and p99 of each workload beside
//! pgbench's references, drawn with plotters' SVG backend: no font or bitmap stack needed).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::drive::{self, Workload};
use crate::pgbench::{self, Script};
use crate::seed::SeedOutcome;

/// Where the run happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub postgres: String,
}

/// The served process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerInfo {
    pub url: String,
    /// Whether this run started it (else `--url`).
    pub spawned: bool,
    pub pool_size: Option<u32>,
    /// Resident set before the first workload (KiB).
    pub idle_rss_kib: Option<u64>,
    /// VmHWM at the end: the process's peak resident set (KiB).
    pub peak_rss_kib: Option<u64>,
}

/// suite / pgbench for one call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ratio {
    pub workload: Workload,
    pub script: Script,
    pub suite_per_second: f64,
    pub pgbench_per_second: f64,
    pub ratio: f64,
}

/// Database round trips of one call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoundTrips {
    pub call: &'static str,
    /// SQL statements, BEGIN and COMMIT included.
    pub statements: f64,
    /// Where the number comes from.
    pub source: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub started_at: String,
    pub command: String,
    pub machine: Machine,
    pub seed: SeedOutcome,
    pub concurrency: usize,
    pub warmup_seconds: f64,
    pub duration_seconds: f64,
    pub server: ServerInfo,
    pub workloads: Vec<drive::Measured>,
    pub pgbench: Vec<pgbench::Measured>,
    pub ratios: Vec<Ratio>,
    pub round_trips: Vec<RoundTrips>,
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".to_owned(), |k| format!("{:.0}", k as f64 / 1024.0))
}

impl Report {
    /// suite / pgbench for each change and get workload measured, against each script.
    pub fn compute_ratios(&mut self) {
        let mut ratios = Vec::new();
        for measured in &self.workloads {
            let scripts: &[Script] = match measured.workload {
                Workload::ChangeStatus | Workload::ChangeStatusCallers => {
                    &[Script::ChangeAsIssued, Script::ChangeReference]
                }
                Workload::Get => &[Script::GetAsIssued, Script::GetReference],
                Workload::BatchCreate => &[Script::BatchCreateReference],
                _ => &[],
            };
            for script in scripts {
                if let Some(reference) = self.pgbench.iter().find(|p| p.script == *script) {
                    ratios.push(Ratio {
                        workload: measured.workload,
                        script: *script,
                        suite_per_second: measured.per_second,
                        pgbench_per_second: reference.per_second,
                        ratio: measured.per_second / reference.per_second.max(f64::EPSILON),
                    });
                }
            }
        }
        self.ratios = ratios;
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.markdown_setting(&mut md);
        self.markdown_workloads(&mut md);
        self.markdown_pgbench(&mut md);
        self.markdown_delivery(&mut md);
        self.markdown_server(&mut md);
        md
    }

    /// What was measured, and where.
    fn markdown_setting(&self, md: &mut String) {
        let seed = &self.seed;
        let _ = writeln!(
            *md,
            "{} opportunities, {} customers, {} history entries, {} events; {} concurrent \
             calls, {} s per workload after {} s of warmup; {} cores, {:.0} GiB, {}.\n",
            seed.plan.scale,
            seed.plan.customers,
            seed.history_entries,
            seed.events,
            self.concurrency,
            self.duration_seconds,
            self.warmup_seconds,
            self.machine.cores,
            self.machine.memory_gib,
            self.machine.postgres
        );
    }

    /// One row per workload.
    fn markdown_workloads(&self, md: &mut String) {
        let _ = writeln!(
            *md,
            "| workload | call | calls/s | items/s | p50 ms | p95 ms | p99 ms | max ms | errors | server peak RSS MiB |"
        );
        let _ = writeln!(*md, "|---|---|---:|---:|---:|---:|---:|---:|---|---:|");
        for m in &self.workloads {
            let errors = if m.errors.is_empty() {
                "0".to_owned()
            } else {
                m.errors
                    .iter()
                    .map(|(code, n)| format!("{code} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                *md,
                "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} |",
                m.workload.name(),
                m.call,
                m.per_second,
                m.per_second * m.items_per_call as f64,
                m.latency.p50_ms,
                m.latency.p95_ms,
                m.latency.p99_ms,
                m.latency.max_ms,
                errors,
                mib(m.peak_rss_kib)
            );
        }
    }

    /// pgbench beside the suite, the ratios, and the statements per call.
    fn markdown_pgbench(&self, md: &mut String) {
        if !self.pgbench.is_empty() {
            let _ = writeln!(
                *md,
                "\n| pgbench, same concurrency and data | statements | tx/s | p50 ms | p99 ms | failed |"
            );
            let _ = writeln!(*md, "|---|---:|---:|---:|---:|---:|");
            for p in &self.pgbench {
                let _ = writeln!(
                    *md,
                    "| {} | {} | {:.0} | {:.2} | {:.2} | {} |",
                    p.label,
                    p.statements,
                    p.per_second,
                    p.latency.p50_ms,
                    p.latency.p99_ms,
                    p.failed
                );
            }
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(*md, "\n| suite / pgbench | ratio |");
            let _ = writeln!(*md, "|---|---:|");
            for r in &self.ratios {
                let _ = writeln!(
                    *md,
                    "| {} / {} | {:.2}x ({:.0} / {:.0}) |",
                    r.workload.name(),
                    r.script.label(),
                    r.ratio,
                    r.suite_per_second,
                    r.pgbench_per_second
                );
            }
        }
        if !self.round_trips.is_empty() {
            let _ = writeln!(*md, "\n| call | statements per call | counted |");
            let _ = writeln!(*md, "|---|---:|---|");
            for r in &self.round_trips {
                let _ = writeln!(*md, "| {} | {:.1} | {} |", r.call, r.statements, r.source);
            }
        }
    }

    /// Event delivery, for the workloads that watched events.
    fn markdown_delivery(&self, md: &mut String) {
        for m in &self.workloads {
            if let Some(delivery) = &m.delivery {
                let _ = writeln!(
                    *md,
                    "\nEvent delivery during the mix ({} watchers, {} events received): occur \
                     time to receipt p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; the write's \
                     acknowledgement to receipt ({} events) p50 {:.1} ms, p99 {:.1} ms, max \
                     {:.1} ms. The commit lies between the two.",
                    delivery.watchers,
                    delivery.events,
                    delivery.lag.p50_ms,
                    delivery.lag.p99_ms,
                    delivery.lag.max_ms,
                    delivery.acknowledged_events,
                    delivery.lag_from_ack.p50_ms,
                    delivery.lag_from_ack.p99_ms,
                    delivery.lag_from_ack.max_ms
                );
            }
        }
    }

    /// The server and the seed.
    fn markdown_server(&self, md: &mut String) {
        let seed = &self.seed;
        let _ = writeln!(
            *md,
            "\nServer: {} ({}), pool {}; resident {} MiB idle, {} MiB peak (VmHWM). Seed: {} \
             ({:.0} s).",
            self.server.url,
            if self.server.spawned {
                "started by the bench"
            } else {
                "external"
            },
            self.server
                .pool_size
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            mib(self.server.idle_rss_kib),
            mib(self.server.peak_rss_kib),
            if seed.seeded_now {
                "loaded by this run"
            } else {
                "reused"
            },
            seed.seconds
        );
    }

    /// The chart: one bar per workload and per pgbench script, throughput on the left and
    /// p99 latency on the right, both on log scales (they span four orders of magnitude).
    pub fn svg(&self, path: &Path) -> anyhow::Result<()> {
        let mut rows: Vec<Bar> = Vec::new();
        for m in &self.workloads {
            rows.push(Bar {
                label: m.workload.name().to_owned(),
                per_second: m.per_second,
                p99_ms: m.latency.p99_ms,
                reference: false,
            });
            let scripts: &[Script] = match m.workload {
                Workload::ChangeStatus => &[Script::ChangeAsIssued, Script::ChangeReference],
                Workload::Get => &[Script::GetAsIssued, Script::GetReference],
                Workload::BatchCreate => &[Script::BatchCreateReference],
                _ => &[],
            };
            for script in scripts {
                if let Some(p) = self.pgbench.iter().find(|p| p.script == *script) {
                    rows.push(Bar {
                        label: format!("pgbench {}", p.label),
                        per_second: p.per_second,
                        p99_ms: p.latency.p99_ms,
                        reference: true,
                    });
                }
            }
        }
        let height = 90 + 30 * rows.len() as u32;
        let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error)?;
        let (left, right) = root.split_horizontally(600);
        panel(&left, "calls per second (log scale)", &rows, |b| {
            b.per_second
        })?;
        panel(&right, "p99 latency, ms (log scale)", &rows, |b| b.p99_ms)?;
        root.present().map_err(chart_error)?;
        Ok(())
    }

    /// Writes report.json, report.md and report.svg into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        self.svg(&dir.join("report.svg"))?;
        Ok(())
    }
}

struct Bar {
    label: String,
    per_second: f64,
    p99_ms: f64,
    reference: bool,
}

fn chart_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {error}")
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    rows: &[Bar],
    value: impl Fn(&Bar) -> f64,
) -> anyhow::Result<()> {
    let floor = 0.1;
    let top = rows.iter().map(&value).fold(1.0_f64, f64::max) * 4.0;
    let n = rows.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(0)
        .build_cartesian_2d((floor..top).log_scale(), 0.0..n)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_labels(6)
        .x_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .draw()
        .map_err(chart_error)?;
    let suite = RGBColor(70, 130, 180);
    let reference = RGBColor(190, 190, 190);
    for (index, bar) in rows.iter().enumerate() {
        let y = n - index as f64;
        let v = value(bar).max(floor);
        let color = if bar.reference { reference } else { suite };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(floor, y - 0.85), (v, y - 0.15)],
                color.filled(),
            )))
            .map_err(chart_error)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{}  {}", bar.label, format_value(value(bar))),
                (floor * 1.15, y - 0.3),
                ("sans-serif", 13).into_font().color(&BLACK),
            )))
            .map_err(chart_error)?;
    }
    Ok(())
}

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
