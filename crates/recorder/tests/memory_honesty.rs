//! The memory bound counts what series really cost: the bytes the recorder charges for new
//! series are compared with the heap the process actually allocated for them (a counting
//! allocator), so an estimate that drifts low fails here instead of in production.

use luametrics_model::{Kind, Limits, RejectReason, TagPolicy, Tags};
use luametrics_recorder::*;
use luametrics_sink::{MetricsSink, Warning};
use luametrics_store::{Location, Store};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const HOUR: i64 = 3_600_000;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);
/// What glibc adds to each block (header and rounding), as the recorder assumes.
const PER_BLOCK: usize = 16;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The heap count is the process's: one test measures at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn service(dir: &std::path::Path) -> (MetricsService, Arc<AtomicI64>) {
    bounded_service(dir, 1 << 30).await
}

async fn bounded_service(dir: &std::path::Path, bound: usize) -> (MetricsService, Arc<AtomicI64>) {
    let store = Arc::new(
        Store::open_with(Location::File(dir.join("m.db")), Duration::from_millis(50))
            .await
            .unwrap(),
    );
    let clock = Arc::new(AtomicI64::new(1_700_000_000_000));
    let c = clock.clone();
    let limits = Limits {
        points_per_minute: 100_000_000,
        burst: 10_000_000,
        max_series_per_name: 1_000_000,
        max_series_per_tenant: 1_000_000,
        ..Limits::default()
    };
    let config = RecorderConfig {
        settings: RecorderSettings {
            window_ms: 3_600_000,
            max_memory_bytes: bound,
            idle_eviction_ms: 2 * HOUR as u64,
            ..RecorderSettings::default()
        },
        policy: TagPolicy::new(std::iter::empty(), limits),
        clock: Arc::new(move || c.load(Ordering::SeqCst)),
        ..RecorderConfig::default()
    };
    (MetricsService::start(store, config), clock)
}

fn heap() -> usize {
    LIVE.load(Ordering::SeqCst) + PER_BLOCK * BLOCKS.load(Ordering::SeqCst)
}

/// Records one point in each of `n` new series of one tenant.
fn record(service: &MetricsService, tenant: &str, kind: Kind, n: usize) {
    for i in 0..n {
        let tags: Tags = [
            ("region".to_string(), format!("eu-west-{}", i % 7)),
            ("customer".to_string(), format!("customer-{i:08}")),
            ("plan".to_string(), "enterprise".to_string()),
        ]
        .into_iter()
        .collect();
        let (name, value) = match kind {
            Kind::Histogram => ("orders.amount", (i % 1000) as f64 * 1.37),
            _ => ("orders.total", 1.0),
        };
        service
            .record_user_metric(tenant, name, kind, value, &tags)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charged_bytes_cover_the_heap_series_take_and_come_back() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (service, clock) = service(dir.path()).await;
    // Warm up: the tenant's name claim, quota and ledger entries, the maps' first growth.
    record(&service, "warmup", Kind::Counter, 2_000);
    record(&service, "warmup", Kind::Histogram, 2_000);
    let check = |what: &str, heap0: usize, charged0: usize| {
        let (heap, charged) = (
            heap().saturating_sub(heap0),
            service.memory_used() - charged0,
        );
        eprintln!("{what}: heap {heap} B, charged {charged} B");
        assert!(
            charged >= heap,
            "{what}: the series took {heap} B of heap but were charged {charged} B"
        );
        assert!(
            charged <= 3 * heap,
            "{what}: the series took {heap} B of heap but were charged {charged} B"
        );
    };
    for (kind, tenant) in [(Kind::Counter, "acme"), (Kind::Histogram, "globex")] {
        service.flush().await.unwrap();
        let (heap0, charged0) = (heap(), service.memory_used());
        record(&service, tenant, kind, 20_000);
        check(&format!("{kind:?}, recorded"), heap0, charged0);
        // Sealed and written: the exposition and the registry hold the series now.
        clock.fetch_add(HOUR, Ordering::SeqCst);
        service.flush().await.unwrap();
        service.flush().await.unwrap();
        check(&format!("{kind:?}, written"), heap0, charged0);
        // Idle past the eviction time: every byte charged for them is given back.
        clock.fetch_add(3 * HOUR, Ordering::SeqCst);
        service.flush().await.unwrap();
        service.evict_idle();
        let left = service.memory_used().saturating_sub(charged0);
        assert!(
            left < 256 * 1024,
            "{kind:?}: {left} B still charged after every series was evicted"
        );
    }
}

// A metric's names are held while its tenant holds anything (adversary round 8: 1,000 long
// histogram names per tenant held ~4 MB each, outside the bound). They are charged like the
// series: what the heap grows by when tenants record many long names is covered, and every
// byte comes back once the tenants are forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_names_are_charged_and_come_back() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (service, clock) = service(dir.path()).await;
    // Warm up: the maps' first growth, a tenant's name claim.
    record(&service, "warmup", Kind::Counter, 10);
    service.flush().await.unwrap();
    let (heap0, charged0) = (heap(), service.memory_used());
    let long = "x".repeat(100);
    for t in 0..5 {
        let tenant = format!("tenant-{t}");
        for i in 0..1_000 {
            // Half of each tenant's names are the previous tenant's too.
            let name = format!("h{long}.amount_{:04}", t * 500 + i);
            service
                .record_user_metric(&tenant, &name, Kind::Histogram, 1.0, &Tags::new())
                .unwrap();
        }
    }
    let (heap, charged) = (
        heap().saturating_sub(heap0),
        service.memory_used() - charged0,
    );
    eprintln!("5,000 long histogram names: heap {heap} B, charged {charged} B");
    assert!(
        charged >= heap && charged <= 3 * heap,
        "names and their series took {heap} B of heap but were charged {charged} B"
    );
    // Written, then idle past the eviction time: the tenants hold nothing and are forgotten,
    // and their names' charge comes back with their series'.
    clock.fetch_add(HOUR, Ordering::SeqCst);
    service.flush().await.unwrap();
    service.flush().await.unwrap();
    clock.fetch_add(3 * HOUR, Ordering::SeqCst);
    // The warm-up tenant stays (its series used again): what is left is its charge alone.
    record(&service, "warmup", Kind::Counter, 10);
    service.flush().await.unwrap();
    service.evict_idle();
    service.evict_idle();
    let left = service.memory_used() as i64 - charged0 as i64;
    assert!(left.abs() < 64 * 1024, "{left} B charged beyond the start");
}

// Adversary round 11: each tenant's usage ledger (which of its metric names were rejected,
// and why) was outside the memory bound; cycling tenant ids whose executions each rejected 32
// long names grew the process to 75x an 8 MiB bound, kept for the idle-eviction hour. The
// ledger is charged (what the heap grows by is covered) and held to an eighth of the bound:
// past it a tenant's points are counted as unattributed, and once written, the entries of
// quiet tenants go and new tenants are counted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenants_ledger_is_charged_and_bounded() {
    let _serial = SERIAL.lock().await;
    let bound = 8 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (service, clock) = bounded_service(dir.path(), bound).await;
    let long = "Z".repeat(120);
    let warnings: Vec<Warning> = (0..32)
        .map(|i| Warning {
            metric: format!("{long}{i}"),
            reason: "invalid_name".into(),
            count: 1,
        })
        .collect();
    let reject = |tenant: &str| {
        MetricsSink::count_tenant_rejections(
            &service,
            tenant,
            &[(RejectReason::InvalidName, 32)],
            &warnings,
        )
    };
    // Warm up: the map's first growth.
    for t in 0..20 {
        reject(&format!("warmup-{t}"));
    }
    let (heap0, charged0) = (heap(), service.memory_used());
    for t in 0..50 {
        reject(&format!("t{t}"));
    }
    let (heap, charged) = (
        heap().saturating_sub(heap0),
        service.memory_used() - charged0,
    );
    eprintln!("50 tenants' ledgers: heap {heap} B, charged {charged} B");
    assert!(
        charged >= heap && charged <= 3 * heap,
        "the ledgers took {heap} B of heap but were charged {charged} B"
    );
    for t in 50..20_000 {
        reject(&format!("t{t}"));
    }
    let grown = self::heap().saturating_sub(heap0);
    assert!(
        grown <= bound / 8,
        "20,000 tenant ids grew the heap by {grown} B"
    );
    assert!(service.memory_used() <= bound);
    let unattributed = |service: &MetricsService| {
        service
            .exposition()
            .iter()
            .find(|s| s.name == "luametrics.tenant.usage.unattributed.count")
            .map_or(0.0, |s| s.value)
    };
    assert!(unattributed(&service) > 0.0);
    assert_eq!(service.tenant_points("t0").rejected["invalid_name"], 32);
    // Written, and quiet since: the entries go, and a new tenant is counted again.
    for _ in 0..3 {
        clock.fetch_add(HOUR, Ordering::SeqCst);
        service.flush().await.unwrap();
    }
    let before = unattributed(&service);
    reject("late");
    assert_eq!(service.tenant_points("late").rejected["invalid_name"], 32);
    assert_eq!(unattributed(&service), before);
    assert!(service.tenant_points("t0").rejected.is_empty());
}
