//! The harness every hand-rolled bench of this directory shares: its arguments, alternating
//! rounds of baseline and subject, medians with their range, and the verdict against a target
//! (a bench exits non-zero when a target misses). Each bench uses part of it.
#![allow(dead_code)]

/// `cargo bench --bench NAME [-- FILTER]`. Without `--bench` (as `cargo test --benches` runs
/// a bench) each comparison runs one small round, to prove it still works.
pub struct Args {
    pub filter: Option<String>,
    pub quick: bool,
    pub rounds: Option<usize>,
}

impl Args {
    pub fn parse() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        Self {
            quick: !args.iter().any(|a| a == "--bench"),
            filter: args.into_iter().find(|a| !a.starts_with('-')),
            rounds: std::env::var("LUAMETRICS_BENCH_ROUNDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0),
        }
    }

    pub fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    pub fn rounds(&self, default: usize) -> usize {
        if self.quick {
            1
        } else {
            self.rounds.unwrap_or(default)
        }
    }
}

/// Median and range of samples.
#[derive(Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(xs: &[f64]) -> Spread {
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

/// Runs every side once per round, the first side rotating from round to round; returns
/// each side's samples in round order.
pub fn alternate(rounds: usize, sides: &mut [&mut dyn FnMut() -> f64]) -> Vec<Vec<f64>> {
    let n = sides.len();
    let mut out = vec![Vec::with_capacity(rounds); n];
    for r in 0..rounds {
        for k in 0..n {
            let i = (r + k) % n;
            out[i].push((sides[i])());
        }
    }
    out
}

// The block is shared: not every bench uses both variants.
#[allow(dead_code)]
#[derive(Clone, Copy)]
pub enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtMost(t) => ratio <= t,
            Goal::AtLeast(t) => ratio >= t,
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Goal::AtMost(t) => write!(f, "<= {t}x"),
            Goal::AtLeast(t) => write!(f, ">= {t}x"),
        }
    }
}

/// One side of a comparison: its name, unit and samples.
pub struct Side<'a> {
    pub name: &'a str,
    pub unit: &'a str,
    pub samples: &'a [f64],
}

/// Prints both sides (median [min-max]) and the ratio `ratio(baseline, subject)` taken per
/// round, with its verdict at the median and how many rounds met the goal.
pub fn compare(
    label: &str,
    base: Side,
    subject: Side,
    ratio: impl Fn(f64, f64) -> f64,
    goal: Goal,
) -> bool {
    let ratios: Vec<f64> = base
        .samples
        .iter()
        .zip(subject.samples)
        .map(|(b, s)| ratio(*b, *s))
        .collect();
    let r = spread(&ratios);
    let met = goal.met(r.median);
    let rounds_met = ratios.iter().filter(|x| goal.met(**x)).count();
    println!("{label}");
    println!("  {:<34} {} {}", base.name, spread(base.samples), base.unit);
    println!(
        "  {:<34} {} {}",
        subject.name,
        spread(subject.samples),
        subject.unit
    );
    println!(
        "  ratio {:.2}x [{:.2}-{:.2}] over {} alternating rounds; target {goal}: {} ({rounds_met}/{} rounds meet)",
        r.median,
        r.min,
        r.max,
        ratios.len(),
        if met { "meets" } else { "MISSES" },
        ratios.len()
    );
    met
}
