//! `luametrics bench pool`, `bench hot-path` and `bench e2e`: performance on the operator's own
//! machine, always as ratios to a baseline measured in the same run.
//!
//! `bench hot-path` runs each target's baseline and subject in alternating rounds (the first
//! side rotating), with the same engine settings and sink on every side and all set-up before
//! the clock; it prints medians with their range and exits 1 naming every target the median
//! ratio missed (2 on errors).

use super::CliError;

mod counting;
mod e2e;
mod fairness;
mod held;
mod hot_path;
mod pool;
mod remote;
pub(crate) use e2e::{e2e, E2eArgs};
pub(crate) use fairness::{fairness, FairnessArgs};
pub(crate) use hot_path::hot_path;
use luametrics::engine::{
    Engine, EnginePool, EngineSettings, Job, MetricsSink, PoolSettings, Script,
};
use luametrics::model::{Limits, TagPolicy, DEFAULT_DENIED_KEYS};
use luametrics::recorder::{MetricsService, RecorderConfig};
use luametrics::store::{Location, Store};
pub(crate) use pool::{pool, PoolArgs};
pub(crate) use remote::{remote, RemoteArgs};
use serde::Serialize;
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The reference script of docs/targets.md (target 2).
pub(crate) const TWENTY_LINES: &str = include_str!("../../lua/bench/twenty_lines.lua");

fn event() -> serde_json::Value {
    json!({"method": "passkey", "user": {"plan": "pro", "email": "jane@example.com", "roles": ["admin", "dev", "ops"]}})
}

fn unlimited() -> TagPolicy {
    TagPolicy::new(
        DEFAULT_DENIED_KEYS.iter().map(|s| s.to_string()),
        Limits {
            points_per_minute: u32::MAX,
            burst: u32::MAX,
            max_points_per_execution: u32::MAX,
            ..Limits::default()
        },
    )
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Median and range of samples.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(xs: &[f64]) -> Spread {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Spread {
        median,
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(2);
        // Written as is: callers format it into a string before aligning it (`pad` would
        // read the precision as a truncation).
        write!(
            f,
            "{:.p$} [{:.p$}-{:.p$}]",
            self.median,
            self.min,
            self.max,
            p = p
        )
    }
}

/// A target: the ratio at most or at least a bound.
#[derive(Debug, Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
    /// Within `[lo, hi]`.
    Between(f64, f64),
}

impl Goal {
    fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtMost(t) => ratio <= t,
            Goal::Between(lo, hi) => (lo..=hi).contains(&ratio),
            Goal::AtLeast(t) => ratio >= t,
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Goal::AtMost(t) => format!("<= {t}x"),
            Goal::AtLeast(t) => format!(">= {t}x"),
            Goal::Between(lo, hi) => format!("{lo}-{hi}x"),
        };
        f.pad(&s)
    }
}

/// One line of `bench hot-path`: both sides' samples (one per round, in round order) and the
/// ratio `subject / baseline` taken round by round (the two ran back to back).
struct Row {
    name: String,
    baseline: Vec<f64>,
    subject: Vec<f64>,
    goal: Goal,
}

impl Row {
    fn ratios(&self) -> Vec<f64> {
        self.baseline
            .iter()
            .zip(&self.subject)
            .map(|(b, s)| s / b)
            .collect()
    }

    /// The verdict: the median of the per-round ratios against the target.
    fn meets(&self) -> bool {
        self.goal.met(spread(&self.ratios()).median)
    }
}

/// The lines naming every missed target, if any missed.
fn missed(rows: &[Row]) -> Option<String> {
    let lines: Vec<String> = rows
        .iter()
        .filter(|r| !r.meets())
        .map(|r| {
            format!(
                "{}: ratio {:.2}x, target {}",
                r.name,
                spread(&r.ratios()).median,
                r.goal
            )
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n  "))
}

/// Prints the rows with their verdicts; the exit code names whether every target was met
/// (1 otherwise, with each miss on stderr).
fn report(title: &str, command: &str, rows: &[Row], rounds: usize) -> ExitCode {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(56);
    println!(
        "{:<width$} {:>26} {:>26} {:>20} {:>8} {:>7}  verdict",
        title, "baseline", "subject", "ratio", "target", "rounds"
    );
    for row in rows {
        let ratios = row.ratios();
        let met = ratios.iter().filter(|r| row.goal.met(**r)).count();
        println!(
            "{:<width$} {:>26} {:>26} {:>20} {:>8} {:>7}  {}",
            row.name,
            format!("{:.2}", spread(&row.baseline)),
            format!("{:.2}", spread(&row.subject)),
            {
                let r = spread(&ratios);
                format!("{:.2}x [{:.2}-{:.2}]", r.median, r.min, r.max)
            },
            row.goal,
            format!("{met}/{}", ratios.len()),
            if row.meets() { "meets" } else { "MISSES" }
        );
    }
    println!(
        "(median [min-max] of {rounds} alternating rounds on this machine; ratio = subject / baseline \
         per round; a verdict judges the median ratio; rounds: how many rounds met the target)"
    );
    match missed(rows) {
        None => ExitCode::SUCCESS,
        Some(lines) => {
            eprintln!("luametrics {command}: targets missed on this machine:\n  {lines}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, baseline: &[f64], subject: &[f64], goal: Goal) -> Row {
        Row {
            name: name.into(),
            baseline: baseline.to_vec(),
            subject: subject.to_vec(),
            goal,
        }
    }

    #[test]
    fn spread_is_the_median_and_range() {
        let s = spread(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        let s = spread(&[5.0, 1.0, 4.0]);
        assert_eq!((s.median, s.min, s.max), (4.0, 1.0, 5.0));
        assert!(spread(&[]).median.is_nan());
    }

    #[test]
    fn verdicts_judge_the_median_of_per_round_ratios() {
        // Ratios 1.2, 2.0, 1.4: median 1.4 meets <= 1.5 though one round did not.
        let r = row(
            "1. x",
            &[1.0, 1.0, 1.0],
            &[1.2, 2.0, 1.4],
            Goal::AtMost(1.5),
        );
        assert!(r.meets());
        // Ratios 0.8, 0.9, 0.84: median 0.84 misses >= 0.85.
        let r = row(
            "3. y",
            &[100.0, 100.0, 100.0],
            &[80.0, 90.0, 84.0],
            Goal::AtLeast(0.85),
        );
        assert!(!r.meets());
        // A side that measured nothing cannot meet anything.
        let r = row("z", &[0.0], &[0.0], Goal::AtMost(1.5));
        assert!(!r.meets());
    }

    #[test]
    fn a_missed_target_is_named_and_met_ones_are_not() {
        let rows = [
            row("1. count", &[1.0], &[1.1], Goal::AtMost(1.5)),
            row("3. pool", &[100.0], &[84.0], Goal::AtLeast(0.85)),
        ];
        let msg = missed(&rows).expect("one target missed");
        assert!(
            msg.contains("3. pool: ratio 0.84x, target >= 0.85x"),
            "{msg}"
        );
        assert!(!msg.contains("1. count"), "{msg}");
        assert!(missed(&rows[..1]).is_none());
    }
}
