//! Recording throughput while `/metrics` is scraped in a loop with 100k series, against the
//! same without scraping (target: at least 0.8x). Run: `cargo bench --bench scrape`
//! (`LUAMETRICS_BENCH_ROUNDS=N` sets the rounds).
//!
//! The timed work of a round is what a busy recorder does: 5 cycles, each recording 20,000
//! points into 2,000 series and then flushing them (sealing the windows, writing 2,000 rows,
//! folding them into the exposition that scrapes read). Flushes are where scraping and
//! recording meet (both touch the exposition; the flush also takes the accumulators' shard
//! locks), so they are inside the clock on both sides. A second thread encodes the whole
//! exposition in a loop during the subject's rounds and sleeps during the baseline's; the
//! sides alternate round by round (hand-rolled harness below), and a subject round starts only
//! once a scrape is under way. A third side, the control, has that thread spin instead of
//! scraping: on a machine with few cores a scraper costs the recorder a core before it costs
//! anything else, and the control tells the two apart. The report splits each side's time
//! into recording and flushing.

use luametrics_engine::{BatchPoint, MetricsSink};
use luametrics_model::{Catalog, Kind, Limits, TagPolicy, Tags};
use luametrics_recorder::{MetricsService, RecorderConfig, RecorderSettings};
use luametrics_server::prometheus;
use luametrics_sketch::Summary;
use luametrics_store::{Location, Store};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod harness;
use harness::*;

/// The allocator the `luametrics` binary ships with, so both measure the same thing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
                    series: svc
                        .config()
                        .policy
                        .check_series(
                            "shop.orders_count",
                            Kind::Counter,
                            vec![("shop".to_string(), format!("s{i}"))],
                        )
                        .expect("a valid series"),
                    summary: s,
                }],
            );
        }
        svc.flush().await.unwrap();
        svc
    })
}

/// Seconds spent recording and flushing in one round's timed work.
#[derive(Clone, Copy, Default)]
struct Work {
    record_s: f64,
    flush_s: f64,
}

impl Work {
    fn points_per_s(&self, cycles: usize) -> f64 {
        (cycles * POINTS_PER_CYCLE) as f64 / (self.record_s + self.flush_s)
    }
}

/// The timed work: `cycles` x (record `POINTS_PER_CYCLE` points into `ACTIVE` series, flush).
fn work(rt: &tokio::runtime::Runtime, svc: &MetricsService, tags: &[Tags], cycles: usize) -> Work {
    let mut w = Work::default();
    for _ in 0..cycles {
        let t = Instant::now();
        for i in 0..POINTS_PER_CYCLE {
            svc.record_user_metric(
                "tenant-1",
                "invoice.processed_count",
                Kind::Counter,
                1.0,
                &tags[i % tags.len()],
            )
            .unwrap();
        }
        w.record_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let rows = rt.block_on(svc.flush()).unwrap();
        w.flush_s += t.elapsed().as_secs_f64();
        assert!(rows >= tags.len(), "{rows} rows flushed");
    }
    w
}

const OFF: u8 = 0;
const SCRAPE: u8 = 1;
const SPIN: u8 = 2;

/// A second thread: idle, scraping (encoding the whole exposition in a loop), or spinning
/// (burning a core and touching nothing the recorder uses: the control that tells what
/// scraping costs beyond taking a core away).
struct Neighbour {
    mode: AtomicU8,
    busy: AtomicBool,
    stop: AtomicBool,
    scrapes: AtomicU64,
}

impl Neighbour {
    fn run(&self, svc: &MetricsService, min_len: usize) {
        while !self.stop.load(SeqCst) {
            match self.mode.load(SeqCst) {
                SCRAPE => {
                    self.busy.store(true, SeqCst);
                    let text = prometheus::encode(&svc.exposition(), Catalog::builtin(), false);
                    assert!(text.len() > min_len);
                    self.scrapes.fetch_add(1, SeqCst);
                    self.busy.store(false, SeqCst);
                }
                SPIN => {
                    self.busy.store(true, SeqCst);
                    let mut x = 1u64;
                    for i in 0..100_000u64 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(i),
                        );
                    }
                    self.busy.store(false, SeqCst);
                }
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Switches to `mode` and returns once the neighbour is at it.
    fn start(&self, mode: u8) {
        let done = self.scrapes.load(SeqCst);
        self.mode.store(mode, SeqCst);
        while !self.busy.load(SeqCst) && self.scrapes.load(SeqCst) == done {
            std::thread::yield_now();
        }
    }

    /// Goes idle and returns once nothing is running.
    fn pause(&self) {
        self.mode.store(OFF, SeqCst);
        while self.busy.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn main() {
    luametrics::prepare_process();
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
    let neighbour = Neighbour {
        mode: AtomicU8::new(OFF),
        busy: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        scrapes: AtomicU64::new(0),
    };
    let mut during = Vec::new();
    let mut parts: [Vec<Work>; 3] = Default::default();
    let s = std::thread::scope(|scope| {
        scope.spawn(|| neighbour.run(&svc, series * 20));
        let parts = std::cell::RefCell::new(&mut parts);
        let measure = |side: usize| {
            let w = work(&rt, &svc, &tags, cycles);
            parts.borrow_mut()[side].push(w);
            w.points_per_s(cycles) / 1e6
        };
        let mut quiet = || {
            neighbour.pause();
            measure(0)
        };
        let mut spinning = || {
            neighbour.start(SPIN);
            let rate = measure(1);
            neighbour.pause();
            rate
        };
        let mut scraping = || {
            neighbour.start(SCRAPE);
            let before = neighbour.scrapes.load(SeqCst);
            let rate = measure(2);
            during.push((neighbour.scrapes.load(SeqCst) - before) as f64);
            neighbour.pause();
            rate
        };
        let s = alternate(rounds, &mut [&mut quiet, &mut spinning, &mut scraping]);
        neighbour.stop.store(true, SeqCst);
        s
    });
    let names = [
        "record_and_flush_without_scrape",
        "record_and_flush_next_to_a_spinning_thread",
        "record_and_flush_while_scraping",
    ];
    let side = |i: usize| Side {
        name: names[i],
        unit: "M points/s",
        samples: &s[i],
    };
    compare(
        &format!(
            "scrape: recording with a flush every {POINTS_PER_CYCLE} points ({ACTIVE} rows), {} series exposed",
            svc.exposed_series()
        ),
        side(0),
        side(2),
        |b, s| s / b,
        Goal::AtLeast(0.8),
    );
    println!(
        "  full scrapes completed inside each scraped round: {:.0}",
        spread(&during)
    );
    println!("  where the time went (seconds per round, recording / flushing):");
    for (i, name) in names.iter().enumerate() {
        let rec: Vec<f64> = parts[i].iter().map(|w| w.record_s).collect();
        let fl: Vec<f64> = parts[i].iter().map(|w| w.flush_s).collect();
        println!("    {name:<44} {:.3} / {:.3}", spread(&rec), spread(&fl));
    }
    let x = |v: Vec<f64>| {
        let r = spread(&v);
        format!("{:.2}x [{:.2}-{:.2}]", r.median, r.min, r.max)
    };
    let control = x(s[1].iter().zip(&s[0]).map(|(p, q)| p / q).collect());
    let own = x(s[2].iter().zip(&s[1]).map(|(x, p)| x / p).collect());
    println!(
        "  control: a spinning thread instead of the scraper gives {control} of the quiet rate; \
         scraping gives {own} of the spinning rate (what scraping costs beyond a busy core)"
    );
}
