//! `luametrics bench pool` and `bench hot-path` on a tiny matrix: the table, the JSON, the SVG
//! and the recommendation, and agreement with the pool's own metrics in the store.

use luametrics::store::{FindQuery, Location, Store};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_pool_writes_table_json_svg_and_agrees_with_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let svg_path = dir.path().join("bench.svg");
    let db = dir.path().join("bench.db");
    let out = Command::new(env!("CARGO_BIN_EXE_luametrics"))
        .current_dir(dir.path())
        .args([
            "bench",
            "pool",
            "--sizes",
            "1,2",
            "--concurrency",
            "1,4",
            "--cell-ms",
            "200",
        ])
        .args([
            "--json",
            json_path.to_str().unwrap(),
            "--svg",
            svg_path.to_str().unwrap(),
        ])
        .args(["--database", db.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("exec/s") && stdout.contains("recommended pool size:"),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .count(),
        4,
        "{stdout}"
    );

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let cells = doc["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 4);
    for c in cells {
        for field in [
            "pool_size",
            "concurrency",
            "executions",
            "throughput_per_s",
            "p50_total_ms",
            "p95_total_ms",
            "p99_total_ms",
            "p99_wait_ms",
            "peak_waiting",
            "exhausted",
            "overhead_share",
        ] {
            assert!(c.get(field).is_some(), "missing {field} in {c}");
        }
        assert!(c["executions"].as_u64().unwrap() > 0);
        assert!(c["p99_total_ms"].as_f64().unwrap() >= c["p50_total_ms"].as_f64().unwrap());
    }
    let recommended = doc["recommended_size"].as_u64().unwrap();
    assert!([1, 2].contains(&recommended));
    assert!(!doc["reason"].as_str().unwrap().is_empty());

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let xml = roxmltree::Document::parse(&svg).expect("the SVG is valid XML");
    let lines: Vec<_> = xml
        .descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("data-panel") == Some("0"))
        .collect();
    assert_eq!(lines.len(), 2, "one throughput line per concurrency");
    let mut conc: Vec<&str> = lines
        .iter()
        .filter_map(|n| n.attribute("data-concurrency"))
        .collect();
    conc.sort();
    assert_eq!(conc, vec!["1", "4"]);

    // The bench's figures agree with the pool's own metrics recorded in the store.
    let store = Store::open(Location::File(db)).await.unwrap();
    let rows = |name: &str| {
        let store = &store;
        let name = name.to_string();
        async move {
            store
                .find_metrics(&FindQuery {
                    name,
                    from_ms: i64::MIN,
                    to_ms: i64::MAX,
                    ..Default::default()
                })
                .await
                .unwrap()
        }
    };
    let exhausted: f64 = rows("lua.pool.exhausted")
        .await
        .iter()
        .map(|r| r.summary.sum)
        .sum();
    let bench_exhausted: u64 = cells.iter().map(|c| c["exhausted"].as_u64().unwrap()).sum();
    assert_eq!(exhausted as u64, bench_exhausted);
    let peak = rows("lua.pool.waiting")
        .await
        .iter()
        .map(|r| r.summary.max)
        .fold(0.0, f64::max);
    let bench_peak = cells
        .iter()
        .map(|c| c["peak_waiting"].as_i64().unwrap())
        .max()
        .unwrap();
    assert_eq!(peak as i64, bench_peak);
}

#[test]
fn bench_hot_path_prints_every_target_with_its_ratio() {
    let out = Command::new(env!("CARGO_BIN_EXE_luametrics"))
        .args(["bench", "hot-path", "--rounds", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "1. helpers.metrics.count",
        "1. helpers.metrics.gauge",
        "1. helpers.metrics.histogram",
        "2a. pooled",
        "2b. fresh",
        "3. 64 tasks",
        "6. idle engine",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} missing: {stdout}"));
        assert!(
            line.contains('x') && (line.ends_with("meets") || line.ends_with("MISSES")),
            "{line}"
        );
    }
}
