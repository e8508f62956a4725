//! `luametrics run` (the main job) and its companions, as a user runs them: the real binary,
//! the example pipelines, a temporary database.

use luametrics::store::{Location, Store};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_luametrics");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary in an empty directory (no luametrics.toml), configured by environment.
fn luametrics(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .args(args)
        .env("LUAMETRICS_DATABASE_URL", dir.join("m.db"))
        .env(
            "LUAMETRICS_PIPELINES_FILE",
            repo().join("lua/pipelines.toml"),
        )
        .env("LUAMETRICS_LIMITS_POINTS_PER_MINUTE", "100000000")
        .env("LUAMETRICS_LIMITS_BURST", "10000000");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn gen(dir: &Path, count: usize) -> PathBuf {
    let path = dir.join("events.jsonl");
    let out = luametrics(
        dir,
        &[
            "gen-events",
            "--count",
            &count.to_string(),
            "--out",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    path
}

fn summary(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn store(dir: &Path) -> Store {
    Store::open(Location::File(dir.join("m.db"))).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_equals_what_the_database_holds() {
    let dir = tempfile::tempdir().unwrap();
    let events = gen(dir.path(), 3_000);
    let s = summary(&luametrics(
        dir.path(),
        &[
            "run",
            events.to_str().unwrap(),
            "--json",
            "--concurrency",
            "4",
        ],
        &[],
    ));
    assert_eq!(s["events"], 3_000);
    let store = store(dir.path()).await;
    // Executions per status, as traces (every trace kept at the default sample rate).
    let traces = store.trace_counts().await.unwrap();
    let by_status: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(s["executions_by_status"].clone()).unwrap();
    assert_eq!(traces, by_status);
    assert!(
        by_status.get("blocked").copied().unwrap_or(0) > 0,
        "the example blocks disposable domains"
    );
    // User-metric points per tenant.
    let per_tenant: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(s["user_points_by_tenant"].clone()).unwrap();
    assert_eq!(store.user_samples_by_tenant().await.unwrap(), per_tenant);
    assert_eq!(per_tenant.len(), 5);
    assert_eq!(
        per_tenant.values().sum::<u64>(),
        s["user_metrics_accepted"].as_u64().unwrap()
    );
    // The flusher's own count of rows written against the table.
    let rows = store.count_rows().await.unwrap();
    assert!(rows > 0);
    assert_eq!(s["metric_rows_written"].as_u64().unwrap(), rows);
    // The latency percentiles against the same timings as stored in the traces (every
    // execution is traced at the default sample rate), by nearest rank.
    let db = libsql::Builder::new_local(dir.path().join("m.db"))
        .build()
        .await
        .unwrap();
    let conn = db.connect().unwrap();
    for k in ["total_ms", "script_ms", "overhead_ms", "wait_ms"] {
        let mut r = conn
            .query(&format!("SELECT {k} FROM pipeline_traces ORDER BY {k}"), ())
            .await
            .unwrap();
        let mut v = Vec::new();
        while let Some(row) = r.next().await.unwrap() {
            v.push(row.get::<f64>(0).unwrap());
        }
        assert_eq!(v.len(), 3_000);
        for (q, name) in [(0.50, "p50"), (0.95, "p95"), (0.99, "p99")] {
            let at = v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
            assert_eq!(s[k][name].as_f64().unwrap(), at, "{k} {name}");
        }
    }
    assert_eq!(s["pool_max_size"], 4);

    // The stored data answers queries through the CLI.
    let out = luametrics(
        dir.path(),
        &[
            "query",
            "invoices.amount",
            "--agg",
            "p95",
            "--step",
            "1h",
            "--from",
            "-2h",
            "--group-by",
            "currency",
            "--json",
        ],
        &[],
    );
    let q = summary(&out);
    assert_eq!(q["tier"], "hour");
    assert_eq!(q["series"].as_array().unwrap().len(), 3);
    let out = luametrics(dir.path(), &["retention"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rolled up"));
    let out = luametrics(dir.path(), &["names"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("logins.by_plan_count"));
}

#[test]
fn malformed_lines_are_reported_with_their_number_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let good =
        r#"{"trigger":"token.issue","tenant":"t1","event":{"client":"web","queue_depth":3}}"#;
    let text = [
        good,
        "{ not json",
        good,
        r#"{"trigger":"token.issue","event":{}}"#,
        "",
        r#"{"trigger":"no.such.trigger","tenant":"t1","event":{}}"#,
        // Parses, but cannot start: counted by its own code, not as an unknown trigger.
        r#"{"trigger":"token.issue","tenant":"","event":{}}"#,
        good,
    ]
    .join("\n");
    // Lines are read one by one: one that is not UTF-8 costs that line only, and one longer
    // than the HTTP API's body limit is skipped too (it would be refused there).
    // A byte order mark before the first event is not part of it.
    let mut bytes = format!("\u{feff}{text}").into_bytes();
    bytes.extend(b"\n{\"trigger\":\"token.issue\",\"tenant\":\"t\xff1\",\"event\":{}}\n");
    bytes.extend(
        format!(
            r#"{{"trigger":"token.issue","tenant":"t1","event":{{"pad":"{}"}}}}"#,
            "x".repeat(5_000)
        )
        .as_bytes(),
    );
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, bytes).unwrap();
    let out = luametrics(
        dir.path(),
        &["run", path.to_str().unwrap(), "--json"],
        &[("LUAMETRICS_SERVER_MAX_BODY_BYTES", "4096")],
    );
    let s = summary(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("events.jsonl:2:"), "{err}");
    assert!(
        err.contains("events.jsonl:4:") && err.contains("tenant"),
        "{err}"
    );
    assert!(err.contains("events.jsonl:9:"), "{err}");
    assert!(
        err.contains("events.jsonl:10:") && err.contains("longer than"),
        "{err}"
    );
    assert_eq!(s["malformed_lines"], 4);
    assert_eq!(s["events"], 5);
    assert_eq!(s["unknown_trigger"], 1);
    assert_eq!(s["not_started"], serde_json::json!({"invalid_tenant": 1}));
    assert_eq!(s["executions_by_status"]["ok"], 3);
}

// Adversary round 5: an endless input file was read until memory ran out, and a huge
// --concurrency spawned tasks until it did.
#[test]
fn endless_inputs_and_huge_concurrency_end_with_a_clear_answer() {
    let dir = tempfile::tempdir().unwrap();
    let out = luametrics(dir.path(), &["run", "/dev/zero"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/dev/zero") && err.contains("larger than"),
        "{err}"
    );
    let script = dir.path().join("s.lua");
    std::fs::write(&script, "return 1").unwrap();
    for args in [
        vec!["check", "/dev/zero"],
        vec!["check", script.to_str().unwrap(), "--event", "/dev/zero"],
    ] {
        let out = luametrics(dir.path(), &args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("larger than"), "{args:?}: {err}");
    }
    let events = gen(dir.path(), 20);
    let out = luametrics(
        dir.path(),
        &[
            "run",
            events.to_str().unwrap(),
            "--concurrency",
            "18446744073709551615",
            "--json",
        ],
        &[],
    );
    assert_eq!(summary(&out)["events"], 20);
}

#[test]
fn bad_configuration_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let events = gen(dir.path(), 10);
    let out = luametrics(
        dir.path(),
        &["run", events.to_str().unwrap()],
        &[("LUAMETRICS_POOL_MAX_SIZE", "lots")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_size") || err.contains("lots"), "{err}");
    std::fs::write(dir.path().join("luametrics.toml"), "[pool]\nmax_sise = 3\n").unwrap();
    let out = luametrics(dir.path(), &["run", events.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("luametrics.toml") && err.contains("max_sise"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join("luametrics.toml")).unwrap();
    let out = luametrics(
        dir.path(),
        &["run", events.to_str().unwrap()],
        &[("LUAMETRICS_DATABASE_URL", "http://127.0.0.1:1")],
    );
    // A remote database that does not answer: refused at start, naming the URL and the cause.
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http://127.0.0.1:1") && err.contains("did not answer"),
        "{err}"
    );
    let out = luametrics(dir.path(), &["run", "/no/such/events.jsonl"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/events.jsonl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_events_end_with_exact_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let events = gen(dir.path(), 100_000);
    let s = summary(&luametrics(
        dir.path(),
        &["run", events.to_str().unwrap(), "--json"],
        &[("LUAMETRICS_PIPELINES_TRACE_SAMPLE_RATE", "0.01")],
    ));
    let outcomes: u64 = s["executions_by_status"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(outcomes + s["unknown_trigger"].as_u64().unwrap(), 100_000);
    assert_eq!(s["unknown_trigger"], 0);
    let store = store(dir.path()).await;
    let stored: u64 = store.user_samples_by_tenant().await.unwrap().values().sum();
    assert_eq!(stored, s["user_metrics_accepted"].as_u64().unwrap());
    assert!(
        s["user_metrics_rejected"].as_object().unwrap().is_empty(),
        "{}",
        s["user_metrics_rejected"]
    );
    assert!(s["user_metrics_dropped"].as_object().unwrap().is_empty());
}

// A reader that goes away (`luametrics names | head -1`) ends the command quietly, as for any
// command-line tool: no panic message on a failed print.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let events = gen(dir.path(), 200);
    let out = luametrics(dir.path(), &["run", events.to_str().unwrap()], &[]);
    assert!(out.status.success());
    // The read end is closed before the command starts: its first print fails.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["names"])
        .env("LUAMETRICS_DATABASE_URL", dir.path().join("m.db"))
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

// Adversary round 24: a run whose points could not all be written by the shutdown deadline
// exited 3 with one line on stderr and nothing on stdout, `--json` included: what it executed
// and accepted was nowhere but in the database. The summary comes first, with what was not
// written, then the error and exit status 3; accepted = stored + not written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_cannot_write_everything_still_prints_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let events = gen(dir.path(), 300);
    // The schema first; then another connection holds the write lock through the run.
    drop(store(dir.path()).await);
    let lock = libsql::Builder::new_local(dir.path().join("m.db"))
        .build()
        .await
        .unwrap()
        .connect()
        .unwrap();
    lock.execute("BEGIN EXCLUSIVE", ()).await.unwrap();
    let out = luametrics(
        dir.path(),
        &["run", events.to_str().unwrap(), "--json"],
        &[
            ("LUAMETRICS_RECORDER_SHUTDOWN_TIMEOUT_MS", "1500"),
            ("LUAMETRICS_DATABASE_BUSY_TIMEOUT_MS", "100"),
        ],
    );
    lock.execute("ROLLBACK", ()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("shutdown deadline passed"), "{stderr}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no summary ({e}): {stderr}"));
    assert_eq!(s["events"], 300);
    let accepted = s["user_metrics_accepted"].as_u64().unwrap();
    let unwritten = s["user_points_unwritten"].as_u64().unwrap();
    assert!(unwritten > 0, "{s}");
    let stored: u64 = store(dir.path())
        .await
        .user_samples_by_tenant()
        .await
        .unwrap()
        .values()
        .sum();
    assert_eq!(stored + unwritten, accepted, "{s}");
}
