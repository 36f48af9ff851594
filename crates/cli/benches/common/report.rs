//! Benchmark figures: their definitions and targets, the per-run values
//! collected for each measured target (our binary, the Python reference, a
//! worker at a URL), the printed table, saved runs (`--save`) and the
//! comparison with a saved run (`--compare`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::args::CommonArgs;
use super::stats::Summary;

/// Which direction of a figure is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// A pass/fail bound on the median of a figure.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    AtMost(f64),
    AtLeast(f64),
    /// From the first to the second, inclusive.
    Between(f64, f64),
    /// At least this many times the reference: its median when it was
    /// measured in the same run (side by side), else its published figure.
    TimesReference(f64),
}

impl Bound {
    /// Whether `value` meets the bound; `reference` is the reference's
    /// figure that a [`Bound::TimesReference`] scales (`None`: unknown, fails).
    pub fn passes(self, value: f64, reference: Option<f64>) -> bool {
        match self {
            Bound::AtMost(limit) => value <= limit,
            Bound::AtLeast(limit) => value >= limit,
            Bound::Between(low, high) => (low..=high).contains(&value),
            Bound::TimesReference(k) => reference.is_some_and(|r| r > 0.0 && value >= k * r),
        }
    }

    /// The limit in force, for the table (`text` is the target's description).
    fn describe(self, text: &str, reference: Option<f64>) -> String {
        match (self, reference) {
            (Bound::TimesReference(k), Some(r)) => format!("{text} = {}", fmt_num(k * r)),
            _ => text.to_owned(),
        }
    }
}

/// The count of failed operations, which every benchmark reports and which
/// must be zero.
pub const ERRORS: Metric = Metric {
    key: "errors",
    label: "failed operations",
    unit: "count",
    better: Better::Lower,
    target: Some((Bound::AtMost(0.0), "0")),
    published: None,
};

/// One figure a benchmark prints.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Key in saved runs.
    pub key: &'static str,
    /// Label in the table.
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
    /// Target the median is checked against, and how it is written.
    pub target: Option<(Bound, &'static str)>,
    /// The reference implementation's figure as published, shown when the
    /// reference is not measured in this run.
    pub published: Option<f64>,
}

/// Every per-run value of one benchmark invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedRun {
    /// Benchmark name (`worker`, `engine`).
    pub bench: String,
    /// Format version of this file.
    pub format: u32,
    /// When the run started (Unix seconds).
    pub unix_time: f64,
    /// Online CPUs of the machine.
    pub cpus: usize,
    /// 1-minute load average when the run started.
    pub loadavg_at_start: String,
    /// Durations, counts and other settings of the run.
    pub settings: serde_json::Value,
    /// Measured target (e.g. `ours`, `reference`) → metric key → one value per run.
    pub results: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
}

impl SavedRun {
    pub fn new(bench: &str, settings: serde_json::Value) -> SavedRun {
        let (cpus, load) = super::process::machine();
        let unix_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        SavedRun {
            bench: bench.to_owned(),
            format: 1,
            unix_time,
            cpus,
            loadavg_at_start: load,
            settings,
            results: BTreeMap::new(),
        }
    }

    /// Appends one run's value of `metric` for `target`.
    pub fn push(&mut self, target: &str, metric: &str, value: f64) {
        self.results
            .entry(target.to_owned())
            .or_default()
            .entry(metric.to_owned())
            .or_default()
            .push(value);
    }

    pub fn summary(&self, target: &str, metric: &str) -> Option<Summary> {
        Summary::of(self.results.get(target)?.get(metric)?)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: &Path) -> anyhow::Result<SavedRun> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a saved benchmark run", path.display()))
    }
}

/// A number with a precision that suits its size (thousands separated).
pub fn fmt_num(value: f64) -> String {
    if value.is_nan() {
        return "-".to_owned();
    }
    let abs = value.abs();
    if abs >= 1000.0 {
        let rounded = value.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let lead = match digits.len() % 3 {
            0 => 3,
            n => n,
        };
        let mut out = digits[..lead].to_owned();
        for group in digits.as_bytes()[lead..].chunks(3) {
            out.push(',');
            out.push_str(std::str::from_utf8(group).unwrap_or_default());
        }
        if rounded < 0 {
            out.insert(0, '-');
        }
        out
    } else if abs >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else if abs >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn fmt_summary(s: Option<Summary>) -> String {
    match s {
        Some(s) => format!(
            "{} / {} / {}",
            fmt_num(s.min),
            fmt_num(s.median),
            fmt_num(s.max)
        ),
        None => "-".to_owned(),
    }
}

/// How many times better `ours` is than `reference` (>1 = better).
pub fn gain(better: Better, ours: f64, reference: f64) -> f64 {
    match better {
        Better::Higher => ours / reference,
        Better::Lower => reference / ours,
    }
}

fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", rule.join("-|-"));
        }
    }
}

/// Prints the result table: one row per metric with `primary`'s
/// min/median/max, the reference (measured as `reference`, else the
/// published figure marked `*`), the gain over it, the target and whether
/// the median meets it. Returns the number of failed targets.
pub fn print_results(
    run: &SavedRun,
    metrics: &[Metric],
    primary: &str,
    reference: Option<&str>,
) -> usize {
    let show_reference = reference.is_some() || metrics.iter().any(|m| m.published.is_some());
    let mut header = vec![
        "metric".to_owned(),
        format!("{primary} (min / median / max)"),
    ];
    if show_reference {
        header.push(match reference {
            Some(r) => format!("{r} (min / median / max)"),
            None => "reference".to_owned(),
        });
        header.push("gain".to_owned());
    }
    header.push("target".to_owned());
    header.push("result".to_owned());
    let mut rows = vec![header];
    let mut failures = 0;
    let mut used_published = false;
    for metric in metrics {
        let ours = run.summary(primary, metric.key);
        if ours.is_none() && reference.and_then(|r| run.summary(r, metric.key)).is_none() {
            continue;
        }
        let mut row = vec![
            format!("{} ({})", metric.label, metric.unit),
            fmt_summary(ours),
        ];
        let measured = reference.and_then(|r| run.summary(r, metric.key));
        let reference_value = measured.map(|s| s.median).or(metric.published);
        if show_reference {
            let (text, value) = match (measured, metric.published) {
                (Some(s), _) => (fmt_summary(Some(s)), Some(s.median)),
                (None, Some(p)) => {
                    used_published = true;
                    (format!("{} *", fmt_num(p)), Some(p))
                }
                (None, None) => ("-".to_owned(), None),
            };
            row.push(text);
            row.push(match (ours, value) {
                (Some(o), Some(r)) if r != 0.0 && o.median != 0.0 => {
                    format!("{}x", fmt_num(gain(metric.better, o.median, r)))
                }
                _ => "-".to_owned(),
            });
        }
        match (metric.target, ours) {
            (Some((bound, text)), Some(o)) => {
                let pass = bound.passes(o.median, reference_value);
                if !pass {
                    failures += 1;
                }
                row.push(bound.describe(text, reference_value));
                row.push(if pass { "pass" } else { "FAIL" }.to_owned());
            }
            (Some((_, text)), None) => {
                row.push(text.to_owned());
                row.push("-".to_owned());
            }
            (None, _) => {
                row.push("-".to_owned());
                row.push("-".to_owned());
            }
        }
        rows.push(row);
    }
    print_table(&rows);
    println!();
    println!("Figures are min / median / max over runs; targets are checked on the median.");
    if show_reference {
        println!("gain = how many times better {primary} is than the reference (median against median; >1 is better).");
    }
    if used_published {
        println!("* published figure of the reference (not measured in this run).");
    }
    failures
}

/// Prints, for every target and metric present in both runs, the saved
/// median, the new median and the change.
pub fn print_comparison(old: &SavedRun, new: &SavedRun, metrics: &[Metric]) {
    println!();
    println!(
        "Compared with the run saved at Unix time {:.0} ({} CPUs, load {}):",
        old.unix_time, old.cpus, old.loadavg_at_start
    );
    if old.bench != new.bench {
        println!(
            "warning: the saved run is of benchmark {:?}, this one is {:?}",
            old.bench, new.bench
        );
    }
    if old.settings != new.settings {
        println!(
            "note: the settings differ (saved {}, now {})",
            old.settings, new.settings
        );
    }
    let mut rows = vec![vec![
        "target".to_owned(),
        "metric".to_owned(),
        "saved median".to_owned(),
        "new median".to_owned(),
        "change".to_owned(),
        "verdict".to_owned(),
    ]];
    for (target, values) in &new.results {
        for metric in metrics {
            if !values.contains_key(metric.key) {
                continue;
            }
            let (Some(before), Some(after)) = (
                old.summary(target, metric.key),
                new.summary(target, metric.key),
            ) else {
                continue;
            };
            let change = if before.median == 0.0 {
                f64::NAN
            } else {
                (after.median - before.median) / before.median.abs() * 100.0
            };
            let verdict = if change.is_nan() || change.abs() < 5.0 {
                "same (within 5%)"
            } else if (change > 0.0) == (metric.better == Better::Higher) {
                "better"
            } else {
                "worse"
            };
            rows.push(vec![
                target.clone(),
                format!("{} ({})", metric.label, metric.unit),
                fmt_num(before.median),
                fmt_num(after.median),
                if change.is_nan() {
                    "-".to_owned()
                } else {
                    format!("{change:+.1}%")
                },
                verdict.to_owned(),
            ]);
        }
    }
    if rows.len() == 1 {
        println!("(no figure in common)");
    } else {
        print_table(&rows);
    }
}

/// Ends a benchmark after its result table: compares with and saves `saved`
/// as `--compare` / `--save` ask, then picks the exit status: failure when
/// operations failed, or when targets were missed under `--strict`.
pub fn finish(
    name: &str,
    common: &CommonArgs,
    saved: &SavedRun,
    metrics: &[Metric],
    failed_targets: usize,
    errors: u64,
) -> anyhow::Result<ExitCode> {
    if let Some(path) = &common.compare {
        let old = SavedRun::load(path)?;
        print_comparison(&old, saved, metrics);
    }
    if let Some(path) = &common.save {
        saved.save(path)?;
        println!("\nsaved to {}", path.display());
    }
    if errors > 0 {
        eprintln!("{name}: {errors} operation(s) failed; see above");
        return Ok(ExitCode::FAILURE);
    }
    if common.strict && failed_targets > 0 {
        eprintln!("{name}: {failed_targets} target(s) missed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
