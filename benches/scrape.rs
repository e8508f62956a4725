//! Recording throughput while `/metrics` is scraped in a loop with 100k series, against the
//! same without scraping (target: at least 0.8x). Run: `cargo bench --bench scrape`
//! (`LUAMETRICS_BENCH_ROUNDS=N` sets the rounds).
//!
//! The timed work of a round is what a busy recorder does: 5 cycles, each recording 20,000
//! points into 2,000 series and then flushing them (sealing the windows, writing 2,000 rows,
//! folding them into the exposition that scrapes read). Flushes are where scraping and
//! recording meet (both touch the exposition; the flush also takes the accumulators' shard
//! locks), so they are inside the clock on both sides. One scraper thread encodes the whole
//! exposition in a loop during the subject's rounds and sleeps during the baseline's; the
//! sides alternate round by round (hand-rolled harness below), and a subject round starts only
//! once a scrape is under way.

use luametrics_model::{Catalog, Kind, Limits, TagPolicy, Tags};
use luametrics_recorder::{BatchPoint, MetricsService, RecorderConfig, RecorderSettings};
use luametrics_server::prometheus;
use luametrics_sketch::Summary;
use luametrics_store::{Location, Store};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---- harness: the same block in every hand-rolled bench of this directory ----

/// `cargo bench --bench NAME [-- FILTER]`. Without `--bench` (as `cargo test --benches` runs
/// a bench) each comparison runs one small round, to prove it still works.
struct Args {
    filter: Option<String>,
    quick: bool,
    rounds: Option<usize>,
}

impl Args {
    fn parse() -> Self {
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

    fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    fn rounds(&self, default: usize) -> usize {
        if self.quick {
            1
        } else {
            self.rounds.unwrap_or(default)
        }
    }
}

/// Median and range of samples.
#[derive(Clone, Copy)]
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
fn alternate(rounds: usize, sides: &mut [&mut dyn FnMut() -> f64]) -> Vec<Vec<f64>> {
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
enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    fn met(self, ratio: f64) -> bool {
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
struct Side<'a> {
    name: &'a str,
    unit: &'a str,
    samples: &'a [f64],
}

/// Prints both sides (median [min-max]) and the ratio `ratio(baseline, subject)` taken per
/// round, with its verdict at the median and how many rounds met the goal.
fn compare(
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

// ---- end of harness ----

const SERIES: usize = 100_000;
/// Series recorded into during the timed work (rows per flush).
const ACTIVE: usize = 2_000;
const POINTS_PER_CYCLE: usize = 20_000;
const CYCLES: usize = 5;

fn service(rt: &tokio::runtime::Runtime, dir: &tempfile::TempDir, series: usize) -> MetricsService {
    rt.block_on(async {
        let store = Arc::new(
            Store::open(Location::File(dir.path().join("s.db")))
                .await
                .unwrap(),
        );
        let svc = MetricsService::start(
            store,
            RecorderConfig {
                settings: RecorderSettings {
                    window_ms: 3_600_000,
                    max_memory_bytes: 1 << 30,
                    ..Default::default()
                },
                policy: TagPolicy::new(
                    luametrics_model::DEFAULT_DENIED_KEYS
                        .iter()
                        .map(|s| s.to_string()),
                    Limits {
                        points_per_minute: u32::MAX,
                        burst: u32::MAX,
                        max_series_per_name: usize::MAX,
                        max_series_per_tenant: usize::MAX,
                        ..Limits::default()
                    },
                ),
                ..RecorderConfig::default()
            },
        );
        // 100k series in the exposition.
        for i in 0..series {
            let mut s = Summary::new(false);
            s.observe(1.0, 0);
            svc.ingest_user_batch(
                &format!("tenant-{}", i % 10),
                vec![BatchPoint {
                    name: "shop.orders_count".into(),
                    kind: Kind::Counter,
                    tags: Tags::from([("shop".to_string(), format!("s{i}"))]),
                    summary: s,
                }],
            );
        }
        svc.flush().await.unwrap();
        svc
    })
}

/// The timed work: `cycles` x (record `POINTS_PER_CYCLE` points into `ACTIVE` series, flush).
/// Returns points per second, flushes included.
fn work(rt: &tokio::runtime::Runtime, svc: &MetricsService, tags: &[Tags], cycles: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..cycles {
        for i in 0..POINTS_PER_CYCLE {
            svc.record_user_metric(
                "tenant-1",
                "invoice.processed_count",
                1.0,
                Kind::Counter,
                &tags[i % tags.len()],
            )
            .unwrap();
        }
        let rows = rt.block_on(svc.flush()).unwrap();
        assert!(rows >= tags.len(), "{rows} rows flushed");
    }
    (cycles * POINTS_PER_CYCLE) as f64 / start.elapsed().as_secs_f64()
}

/// A thread encoding the whole exposition in a loop while `on`.
struct Scraper {
    on: AtomicBool,
    busy: AtomicBool,
    stop: AtomicBool,
    completed: AtomicU64,
}

impl Scraper {
    fn run(&self, svc: &MetricsService, min_len: usize) {
        while !self.stop.load(SeqCst) {
            if !self.on.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            self.busy.store(true, SeqCst);
            let text = prometheus::encode(&svc.exposition(), Catalog::builtin(), false);
            assert!(text.len() > min_len);
            self.completed.fetch_add(1, SeqCst);
            self.busy.store(false, SeqCst);
        }
    }

    /// Turns scraping on and returns once a scrape is under way.
    fn start(&self) {
        let done = self.completed.load(SeqCst);
        self.on.store(true, SeqCst);
        while !self.busy.load(SeqCst) && self.completed.load(SeqCst) == done {
            std::thread::yield_now();
        }
    }

    /// Turns scraping off and returns once no scrape is running.
    fn pause(&self) {
        self.on.store(false, SeqCst);
        while self.busy.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn main() {
    let args = Args::parse();
    if !args.wants("scrape") {
        return;
    }
    let rounds = args.rounds(11);
    let (series, cycles) = if args.quick {
        (10_000, 1)
    } else {
        (SERIES, CYCLES)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let svc = service(&rt, &dir, series);
    assert!(svc.exposed_series() >= series);
    let tags: Vec<Tags> = (0..ACTIVE)
        .map(|i| Tags::from([("plan".to_string(), format!("p{i}"))]))
        .collect();
    // The active series exist (and are exposed) before the first round.
    work(&rt, &svc, &tags, 1);
    let scraper = Scraper {
        on: AtomicBool::new(false),
        busy: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
    };
    let mut during = Vec::new();
    let s = std::thread::scope(|scope| {
        scope.spawn(|| scraper.run(&svc, series * 20));
        let mut quiet = || {
            scraper.pause();
            work(&rt, &svc, &tags, cycles)
        };
        let mut scraped = || {
            scraper.start();
            let before = scraper.completed.load(SeqCst);
            let rate = work(&rt, &svc, &tags, cycles);
            during.push(scraper.completed.load(SeqCst) - before);
            scraper.pause();
            rate
        };
        let s = alternate(rounds, &mut [&mut quiet, &mut scraped]);
        scraper.stop.store(true, SeqCst);
        s
    });
    let to_m = |v: &[f64]| v.iter().map(|x| x / 1e6).collect::<Vec<_>>();
    let (base, subject) = (to_m(&s[0]), to_m(&s[1]));
    compare(
        &format!(
            "scrape: recording with a flush every {POINTS_PER_CYCLE} points ({ACTIVE} rows), {} series exposed",
            svc.exposed_series()
        ),
        Side {
            name: "record_and_flush_without_scrape",
            unit: "M points/s",
            samples: &base,
        },
        Side {
            name: "record_and_flush_while_scraping",
            unit: "M points/s",
            samples: &subject,
        },
        |b, s| s / b,
        Goal::AtLeast(0.8),
    );
    let d: Vec<f64> = during.iter().map(|&n| n as f64).collect();
    println!(
        "  full scrapes completed inside each scraped round: {:.0}",
        spread(&d)
    );
}
