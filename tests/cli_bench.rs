//! `luametrics bench pool` on a tiny matrix: the table, the JSON, the SVG and the
//! recommendation, checked against what the store holds and what the test asked for;
//! `bench hot-path`, `bench e2e`, `bench fairness` and `bench remote` (against a real sqld):
//! every target printed, and an exit status
//! that agrees with the verdicts.

mod common;

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
            "failed",
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

    // The bench's figures against sources it does not compute itself, none of which can
    // pass as zero.
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
    let sum = |rows: Vec<luametrics::store::StoredRow>| rows.iter().map(|r| r.summary.sum).sum();
    // Executions the bench counted = points the script itself recorded through
    // helpers.metrics (one `logins.by_plan_count` per execution), written by the recorder.
    let executions: u64 = cells
        .iter()
        .map(|c| c["executions"].as_u64().unwrap())
        .sum();
    let failed: u64 = cells.iter().map(|c| c["failed"].as_u64().unwrap()).sum();
    let recorded: f64 = sum(rows("logins.by_plan_count").await);
    assert!(executions > 0);
    // An execution that failed (a time limit on a loaded machine) is not counted as one, and
    // may or may not have recorded its point before failing.
    assert!(
        recorded as u64 >= executions && recorded as u64 <= executions + failed,
        "recorded {recorded}, executions {executions}, failed {failed}"
    );
    // Engines created = what this test asked for: each cell warms a fresh pool of its size
    // (1 + 1 + 2 + 2), and the reference script never poisons an engine.
    let created: f64 = sum(rows("lua.engine.created.count").await);
    assert_eq!(created as u64, 6);
    assert!(rows("lua.engine.discarded.count").await.is_empty());
    // A single task never finds its pool busy: no exhaustion, no queue where concurrency is 1.
    for c in cells.iter().filter(|c| c["concurrency"] == 1) {
        assert_eq!(c["exhausted"], 0, "{c}");
        assert_eq!(c["peak_waiting"], 0, "{c}");
    }
    // The pool's exhausted counter and waiting gauge reach the store as the bench reported
    // them (the same counters, so this checks the recording path, not the figures), and no
    // more checkouts were starved than were made.
    let exhausted: f64 = sum(rows("lua.pool.exhausted").await);
    let bench_exhausted: u64 = cells.iter().map(|c| c["exhausted"].as_u64().unwrap()).sum();
    assert_eq!(exhausted as u64, bench_exhausted);
    assert!(bench_exhausted <= executions + 6);
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
    assert!(bench_peak <= 4, "at most the 4 tasks of a cell wait");
}

/// Wall-clock figures are never asserted: the verdicts may go either way on a loaded machine
/// or an unoptimised build. What is checked is that the exit status agrees with them: 0 when
/// every target meets, 1 when one misses, with every missed target named on stderr.
#[test]
fn bench_hot_path_prints_every_target_and_exits_non_zero_when_one_misses() {
    verdicts_agree_with_exit_status(
        &["bench", "hot-path", "--rounds", "1"],
        &[
            "1. helpers.metrics.count",
            "1. helpers.metrics.gauge",
            "1. helpers.metrics.histogram",
            "2a. pooled",
            "2b. fresh",
            "3. 64 tasks",
            "6. idle engine",
        ],
    );
}

#[test]
fn bench_e2e_prints_every_target_and_exits_non_zero_when_one_misses() {
    let stdout = verdicts_agree_with_exit_status(
        &[
            "bench",
            "e2e",
            "--rounds",
            "1",
            "--seconds",
            "0.3",
            "--connections",
            "4",
        ],
        &[
            "E1. ",
            "E2. HTTP vs library",
            "E2. HTTP p99",
            "E3. ",
            "E4. ",
            "E5. ",
        ],
    );
    assert!(stdout.contains("library: "), "{stdout}");
}

#[test]
fn bench_fairness_prints_every_target_and_exits_non_zero_when_one_misses() {
    let stdout = verdicts_agree_with_exit_status(
        &["bench", "fairness", "--rounds", "1", "--seconds", "0.5"],
        &[
            "B's p99 latency",
            "B's executions completed",
            "engine time granted to A",
        ],
    );
    assert!(stdout.contains("A throttled"), "{stdout}");
}

#[test]
fn bench_remote_prints_every_target_and_exits_non_zero_when_one_misses() {
    if !common::sqld::Sqld::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let all =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/lua/events.jsonl")).unwrap();
    let head: String = all.lines().take(300).map(|l| format!("{l}\n")).collect();
    std::fs::write(&events, head).unwrap();
    let sqld = common::sqld::binary();
    let stdout = verdicts_agree_with_exit_status(
        &[
            "bench",
            "remote",
            "--sqld",
            sqld.to_str().unwrap(),
            "--rows",
            "500",
            "--rounds",
            "1",
            "--events",
            events.to_str().unwrap(),
        ],
        &["R1 flush of 500 rows", "R2 luametrics run"],
    );
    assert!(stdout.contains("sqld vs local file"), "{stdout}");
}

/// Runs a bench command from the repository (its example configuration and events) and checks
/// every named target is printed with a verdict, and that the exit status agrees with them:
/// 0 when every target meets, 1 when one misses, each missed target named on stderr.
fn verdicts_agree_with_exit_status(args: &[&str], targets: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_luametrics"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut missed = Vec::new();
    for needle in targets {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} missing: {stdout}{stderr}"));
        assert!(line.contains('x') && line.contains("/1 "), "{line}");
        if line.ends_with("MISSES") {
            missed.push(needle);
        } else {
            assert!(line.ends_with("meets"), "{line}");
        }
    }
    if missed.is_empty() {
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert!(!stderr.contains("missed"), "{stderr}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(stderr.contains("targets missed"), "{stderr}");
        for needle in missed {
            assert!(stderr.contains(needle), "{needle} not named: {stderr}");
        }
    }
    stdout
}

#[test]
fn bench_hot_path_refuses_zero_rounds() {
    let out = Command::new(env!("CARGO_BIN_EXE_luametrics"))
        .args(["bench", "hot-path", "--rounds", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rounds"));
}
