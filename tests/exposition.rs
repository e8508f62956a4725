//! The exposition is valid for any accepted input: random names, kinds, tag keys and values
//! (the collisions tenants have used included) go through real recording, and every resulting
//! `/metrics` payload is checked by `promtool check metrics` and by the Python
//! `prometheus_client` parsers, in the text format and in OpenMetrics (installed by
//! `scripts/setup`).

use luametrics::model::{Catalog, Kind, Limits, TagPolicy, Tags, DEFAULT_DENIED_KEYS};
use luametrics::recorder::{MetricsService, RecorderConfig};
use luametrics::server::prometheus::encode;
use luametrics::store::{Location, Store};
use rand::{Rng, SeedableRng};
use std::process::Command;
use std::sync::Arc;

const SEGMENTS: &[&str] = &[
    "a",
    "b",
    "a_b",
    "h",
    "h_sum",
    "h_count",
    "h_bucket",
    "x_total",
    "y_created",
    "z_info",
    "count",
    "sum",
    "bucket",
    "total",
    "lat_ms",
    "size_bytes",
    "q",
];
const KEYS: &[&str] = &[
    "le", "quantile", "tag_le", "job", "instance", "tenant", "k", "k_1", "a", "__x", "plan",
];
const VALUES: &[&str] = &[
    "x",
    "1",
    "1.0",
    "-0",
    "a\"b",
    "back\\slash",
    "new\nline",
    "€uro",
    "",
    "  ",
];

fn random_name(rng: &mut rand::rngs::StdRng) -> String {
    let n = rng.gen_range(2..=3);
    (0..n)
        .map(|_| SEGMENTS[rng.gen_range(0..SEGMENTS.len())])
        .collect::<Vec<_>>()
        .join(".")
}

/// Runs `tool` on `text`; exit codes in `ok` pass (promtool exits 3 for style lints such as
/// "abbreviated units", which do not make a payload invalid, and 1 when it cannot parse it).
fn check_with(
    tool: &str,
    args: &[&str],
    ok: &[i32],
    text: &str,
    dir: &std::path::Path,
    what: &str,
) {
    let path = dir.join(format!("{what}.txt"));
    std::fs::write(&path, text).unwrap();
    let out = Command::new(tool)
        .args(args)
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("{tool} (installed by scripts/setup) must run: {e}"));
    assert!(
        out.status.code().is_some_and(|c| ok.contains(&c)),
        "{what}: {tool} refused the exposition: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const PY_TEXT: &str = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfams = list(p(sys.stdin.read()))\nnames = [f.name for f in fams]\nassert len(names) == len(set(names)), 'duplicate family'\nfor f in fams:\n    seen = set()\n    for s in f.samples:\n        key = (s.name, tuple(sorted(s.labels.items())))\n        assert key not in seen, ('duplicate series', key)\n        seen.add(key)\n";
const PY_OM: &str = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nlist(p(sys.stdin.read()))\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_recordings_always_give_a_valid_exposition() {
    let dir = tempfile::tempdir().unwrap();
    let mut total_accepted = 0u64;
    let mut total_rejected = 0u64;
    for seed in 0..6u64 {
        let store = Arc::new(
            Store::open(Location::File(dir.path().join(format!("m{seed}.db"))))
                .await
                .unwrap(),
        );
        let svc = MetricsService::start(
            store,
            RecorderConfig {
                policy: TagPolicy::new(
                    DEFAULT_DENIED_KEYS.iter().map(|s| s.to_string()),
                    Limits {
                        points_per_minute: u32::MAX,
                        burst: u32::MAX,
                        ..Limits::default()
                    },
                ),
                ..RecorderConfig::default()
            },
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..1_500 {
            let name = random_name(&mut rng);
            let kind = [Kind::Counter, Kind::Gauge, Kind::Histogram][rng.gen_range(0..3)];
            let mut tags = Tags::new();
            for _ in 0..rng.gen_range(0..3) {
                tags.insert(
                    KEYS[rng.gen_range(0..KEYS.len())].to_string(),
                    VALUES[rng.gen_range(0..VALUES.len())].to_string(),
                );
            }
            let tenant = ["acme", "globex", "initech"][rng.gen_range(0..3)];
            // Negative values too: refused for counters, kept for gauges and histograms (whose
            // OpenMetrics `_sum` must then be left out: it is no longer a counter).
            let value = rng.gen_range(-1000.0..1000.0);
            match svc.record_user_metric(tenant, &name, kind, value, &tags) {
                Ok(_) => total_accepted += 1,
                Err(_) => total_rejected += 1,
            }
        }
        svc.flush().await.unwrap();
        let series = svc.exposition();
        assert!(!series.is_empty());
        let text = encode(&series, Catalog::builtin(), false);
        let om = encode(&series, Catalog::builtin(), true);
        check_with(
            "promtool",
            &["check", "metrics"],
            &[0, 3],
            &text,
            dir.path(),
            "promtool",
        );
        check_with(
            "python3",
            &["-c", PY_TEXT],
            &[0],
            &text,
            dir.path(),
            "python-text",
        );
        check_with(
            "python3",
            &["-c", PY_OM],
            &[0],
            &om,
            dir.path(),
            "python-openmetrics",
        );
    }
    // Both paths were exercised: accepted points reached the exposition, colliding ones were
    // refused at record time.
    assert!(
        total_accepted > 1_000 && total_rejected > 1_000,
        "{total_accepted} {total_rejected}"
    );
}
