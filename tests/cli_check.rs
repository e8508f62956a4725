//! `luametrics check` as a user runs it: the real binary on real scripts.

use std::process::Command;

fn check(script: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.lua");
    std::fs::write(&path, script).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_luametrics"))
        .arg("check")
        .arg(&path)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_script_passes_with_its_event() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_luametrics"))
        .args(["check", &format!("{root}/lua/scripts/risk_score.lua")])
        .args([
            "--event",
            &format!("{root}/lua/scripts/event.json"),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"]["context"]["risk"], "high");
    assert_eq!(v["metrics"].as_array().unwrap().len(), 1);
    assert_eq!(v["metrics"][0]["name"], "logins.risk_score");
    let t = &v["timings"];
    let parts = ["wait_ms", "script_ms", "helpers_ms", "overhead_ms"]
        .iter()
        .map(|k| t[k].as_f64().unwrap())
        .sum::<f64>();
    assert!((parts - t["total_ms"].as_f64().unwrap()).abs() < 1e-6);
}

#[test]
fn syntax_and_runtime_errors_exit_non_zero_with_the_line() {
    let (code, _, err) = check("local a = 1\n\nlocal b = = 2\n", &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("script.lua:3:") && err.contains("syntax_error"),
        "{err}"
    );
    let (code, _, err) = check("local t = {}\nreturn t.a.b\n", &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("script.lua:2:") && err.contains("runtime_error"),
        "{err}"
    );
    let (code, _, err) = check("while true do end", &["--time-limit-ms", "20"]);
    assert_eq!(code, 1);
    assert!(err.contains("time limit of 20 ms"), "{err}");
    let (code, _, err) = check("return os.execute('id')", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("execute"), "{err}");
}

#[test]
fn rejected_metrics_are_listed_with_reasons_and_strict_fails() {
    let script = "helpers.metrics.count('auth.hack', 1)\nhelpers.metrics.count('shop.orders_count', 1, { email = 'x' })\nreturn 1\n";
    let (code, out, _) = check(script, &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("rejected: auth.hack: reserved_prefix"),
        "{out}"
    );
    assert!(
        out.contains("rejected: shop.orders_count: pii_tag"),
        "{out}"
    );
    let (code, _, err) = check(script, &["--strict"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("script.lua:1:") && err.contains("reserved_prefix"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_reported_not_panicked() {
    let (code, _, err) = check("return 1", &["--event", "/no/such/event.json"]);
    assert_eq!(code, 2);
    assert!(err.contains("/no/such/event.json"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let (code, _, err) = check("return 1", &["--event", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("not valid JSON"), "{err}");
}
