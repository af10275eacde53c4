//! The one table the bench prints, and the same rows as JSON.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::stats::Stat;
use crate::BenchError;

struct Row {
    bench: &'static str,
    metric: String,
    unit: &'static str,
    stat: Stat,
}

pub struct Table {
    smoke: bool,
    runs: usize,
    started_unix: u64,
    load_at_start: String,
    rows: Vec<Row>,
    /// Remarks printed under the rows (a part of a bench that could not
    /// run yet, and why), without failing the run.
    notes: Vec<String>,
}

impl Table {
    pub fn new(smoke: bool, runs: usize) -> Table {
        Table {
            smoke,
            runs,
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            load_at_start: load_average(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, bench: &'static str, metric: &str, stat: Stat, unit: &'static str) {
        self.rows.push(Row {
            bench,
            metric: metric.to_owned(),
            unit,
            stat,
        });
    }

    pub fn note(&mut self, bench: &'static str, text: &str) {
        self.notes.push(format!("{bench}: {text}"));
    }

    /// The first row of `bench` whose metric passes `metric`.
    pub fn find(&self, bench: &str, metric: impl Fn(&str) -> bool) -> Option<Stat> {
        self.rows
            .iter()
            .find(|r| r.bench == bench && metric(&r.metric))
            .map(|r| r.stat)
    }

    /// `ours ÷ base` of the medians; the range pairs the extremes
    /// (worst ours ÷ best base .. best ours ÷ worst base).
    pub fn ratio(&mut self, bench: &'static str, metric: &str, ours: Stat, base: Stat) {
        let stat = Stat {
            median: ours.median / base.median,
            min: ours.min / base.max,
            max: ours.max / base.min,
        };
        self.row(bench, metric, stat, "ratio");
    }

    pub fn print(&self, took: Duration, failures: &[String]) {
        let mode = if self.smoke { "smoke" } else { "full" };
        println!(
            "global_distrib bench ({mode}, median of {} runs with min–max) — {} UTC, {} CPUs, load average at start {}",
            self.runs,
            utc(self.started_unix),
            cpus(),
            self.load_at_start
        );
        let w = self
            .rows
            .iter()
            .map(|r| r.metric.chars().count())
            .max()
            .unwrap_or(6)
            .max(6);
        println!(
            "{:<5} {:<w$}  {:>12}  {:>25}  unit",
            "bench", "metric", "median", "min – max"
        );
        for r in &self.rows {
            let range = format!("{} – {}", num(r.stat.min), num(r.stat.max));
            println!(
                "{:<5} {:<w$}  {:>12}  {:>25}  {}",
                r.bench,
                r.metric,
                num(r.stat.median),
                range,
                r.unit
            );
        }
        let verdicts = crate::targets::judge(self);
        let tw = verdicts
            .iter()
            .map(|v| v.what.chars().count())
            .max()
            .unwrap_or(6);
        println!(
            "{:<tw$}  {:>8}  {:>10}  {:>10}  state (worst: the worst of the runs)",
            "target", "goal", "median", "worst"
        );
        for v in &verdicts {
            let (median, worst) = match v.value {
                Some(s) => (num(s.median), num(v.worst())),
                None => ("-".into(), "-".into()),
            };
            println!(
                "{:<tw$}  {:>8}  {:>10}  {:>10}  {}",
                v.what, v.target, median, worst, v.state
            );
        }
        for n in &self.notes {
            println!("NOTE {n}");
        }
        for f in failures {
            println!("FAILED {f}");
        }
        println!(
            "total {:.1} s; load average now {}",
            took.as_secs_f64(),
            load_average()
        );
    }

    pub fn write_json(
        &self,
        path: &Path,
        took: Duration,
        failures: &[String],
    ) -> Result<(), BenchError> {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "bench": r.bench,
                    "metric": r.metric,
                    "unit": r.unit,
                    "median": finite(r.stat.median),
                    "min": finite(r.stat.min),
                    "max": finite(r.stat.max),
                })
            })
            .collect();
        let targets: Vec<serde_json::Value> = crate::targets::judge(self)
            .iter()
            .map(|v| {
                serde_json::json!({
                    "target": v.what,
                    "goal": v.target,
                    "median": v.value.and_then(|s| finite(s.median)),
                    "worst": v.value.and_then(|_| finite(v.worst())),
                    "every_run": v.every_run,
                    "state": v.state,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "mode": if self.smoke { "smoke" } else { "full" },
            "runs": self.runs,
            "started_utc": utc(self.started_unix),
            "cpus": cpus(),
            "load_average_at_start": self.load_at_start,
            "load_average_at_end": load_average(),
            "total_seconds": took.as_secs_f64(),
            "rows": rows,
            "targets": targets,
            "notes": self.notes,
            "failures": failures,
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        Ok(())
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Thousands separated above 1000, three significant figures below.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v.abs() >= 1000.0 {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        return if v < 0.0 { format!("-{out}") } else { out };
    }
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `YYYY-MM-DD HH:MM` for a Unix time (civil-from-days, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}
