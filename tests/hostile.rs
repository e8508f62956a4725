//! The hostile corpus (`tests/hostile/*.lua`): one script per technique a tenant has used
//! against the sandbox's limits, each run through `luametrics check --json` as a user would,
//! with the typed outcome it must end with. The first line of each script says what it
//! expects: `-- expect: CODE[|CODE...][: text the message must contain]`, or
//! `-- expect: ok: JSON` for the result. Scripts whose expectation is a timeout run with a
//! 100 ms limit (and must be interrupted by the watchdog, not abandoned in C past its grace);
//! every other script with a limit far above its work, so only the limit under test can end
//! it, however loaded the machine.
//!
//! Each run has a hang detector: a generous wall-clock cap that only catches a script that
//! never ends (and kills it), never a performance assertion.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HANG: Duration = Duration::from_secs(60);

struct Expect {
    codes: Vec<String>,
    detail: Option<String>,
}

fn expectation(path: &Path) -> Expect {
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.lines().next().unwrap_or("");
    let spec = first
        .strip_prefix("-- expect: ")
        .unwrap_or_else(|| panic!("{}: first line must be `-- expect: ...`", path.display()));
    let (codes, detail) = match spec.split_once(": ") {
        Some((c, d)) => (c, Some(d.to_string())),
        None => (spec, None),
    };
    Expect {
        codes: codes.split('|').map(str::to_string).collect(),
        detail,
    }
}

/// Runs `luametrics check --json` on a script; kills it and fails past the hang cap.
fn run(path: &Path, time_limit_ms: u64) -> (serde_json::Value, Duration) {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_luametrics"))
        .arg("check")
        .arg(path)
        .args(["--json", "--time-limit-ms", &time_limit_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read while it runs: a report larger than the pipe's buffer would otherwise block the
    // child on its write, which looks like a hang.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let (out, err) = (out.join().unwrap(), err.join().unwrap());
            assert!(
                status.code() == Some(0) || status.code() == Some(1),
                "{}: exit {status} (a crash?): {err}",
                path.display()
            );
            let v = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {out} {err}", path.display()));
            return (v, start.elapsed());
        }
        if start.elapsed() > HANG {
            let _ = child.kill();
            panic!("{}: still running after {HANG:?}: a hang", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "lua"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_hostile_script_ends_with_its_typed_outcome() {
    let files = corpus();
    assert!(files.len() >= 40, "the corpus is here: {}", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let expect = expectation(path);
        let limit = if expect.codes.iter().any(|c| c == "timeout") {
            100
        } else {
            20_000
        };
        let (v, took) = run(path, limit);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let verdict = if expect.codes == ["ok"] {
            let want: serde_json::Value =
                serde_json::from_str(expect.detail.as_deref().unwrap_or("null")).unwrap();
            (v["ok"] == true && v["result"] == want)
                .then_some(())
                .ok_or_else(|| format!("expected ok {want}, got {v}"))
        } else {
            let code = v["error"]["code"].as_str().unwrap_or("none").to_string();
            let message = v["error"]["message"].as_str().unwrap_or("").to_string();
            if !expect.codes.contains(&code) {
                Err(format!(
                    "expected {:?}, got {code}: {message}",
                    expect.codes
                ))
            } else if code == "timeout" && v["timings"]["script_ms"].as_f64() == Some(0.0) {
                // The pool gave up on it (stuck in C past the limit and its grace): the
                // thread still burns a core. A timeout must be the watchdog's interrupt.
                Err(format!("abandoned in C instead of interrupted: {v}"))
            } else if let Some(d) = expect.detail.as_deref().filter(|_| code != "timeout") {
                message
                    .contains(d)
                    .then_some(())
                    .ok_or_else(|| format!("message {message:?} lacks {d:?}"))
            } else {
                Ok(())
            }
        };
        eprintln!(
            "{name}: {took:?} {}",
            if verdict.is_ok() { "ok" } else { "FAILED" }
        );
        if let Err(e) = verdict {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
