//! A running `luametrics serve` for end-to-end tests: the real binary on a random port with a
//! temporary database, and small HTTP helpers.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod proxy;
pub mod sqld;

pub const EXEC: &str = "exec-token-1";
pub const ADMIN: &str = "admin-token-1";

pub struct Server {
    pub child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    /// What the process wrote on stderr, when started with [`Server::start_capturing`].
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn pipelines(dir: &Path) -> PathBuf {
    let scripts = repo().join("lua/scripts");
    std::fs::write(dir.join("broken.lua"), "local t = nil\nreturn t.x\n").unwrap();
    // A tenant's script that never ends, with a to-be-closed variable that never ends either.
    std::fs::write(
        dir.join("spin.lua"),
        "local x <close> = setmetatable({}, { __close = function() while true do end end })\nwhile true do pcall(function() while true do end end) end\n",
    )
    .unwrap();
    // Records the metric the event names: any name, kind and tags a tenant might choose.
    std::fs::write(
        dir.join("probe.lua"),
        "local ok, why = helpers.metrics[event.kind](event.name, event.value or 1, event.tags)\nreturn { context = { ok = ok, why = why } }\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(repo().join("lua/pipelines.toml"))
        .unwrap()
        .replace(
            "script = \"scripts/",
            &format!("script = \"{}/", scripts.display()),
        );
    // Time limits far above the work, so a loaded machine cannot turn a node into a timeout.
    let text = text.replace("timeout_ms = 20\n", "timeout_ms = 20000\n");
    let text = format!("{text}\n[[pipeline]]\nid = \"probe\"\ntrigger = \"t.probe\"\n[[pipeline.node]]\nid = \"p\"\nscript = \"probe.lua\"\n\n[[pipeline]]\nid = \"broken\"\ntrigger = \"t.broken\"\n[[pipeline.node]]\nid = \"b\"\nscript = \"broken.lua\"\n\n[[pipeline]]\nid = \"spin\"\ntrigger = \"t.spin\"\n[[pipeline.node]]\nid = \"s\"\nscript = \"spin.lua\"\n");
    let file = dir.join("pipelines.toml");
    std::fs::write(&file, text).unwrap();
    file
}

impl Server {
    pub fn start(env: &[(&str, &str)]) -> Server {
        Self::start_in(tempfile::tempdir().unwrap(), env, false)
    }

    /// Like [`Server::start`], keeping stderr in [`Server::stderr`].
    pub fn start_capturing(env: &[(&str, &str)]) -> Server {
        Self::start_in(tempfile::tempdir().unwrap(), env, true)
    }

    /// Starts in an existing directory (its `m.db` is reused: a restart).
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)], capture: bool) -> Server {
        let file = pipelines(dir.path());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_luametrics"));
        cmd.current_dir(dir.path())
            .args(["serve", "--addr", "127.0.0.1:0"])
            .env("LUAMETRICS_DATABASE_URL", dir.path().join("m.db"))
            .env("LUAMETRICS_PIPELINES_FILE", &file)
            .env("LUAMETRICS_SERVER_EXECUTE_TOKEN", EXEC)
            .env("LUAMETRICS_SERVER_ADMIN_TOKEN", ADMIN)
            .env("LUAMETRICS_SERVER_MAX_BODY_BYTES", "65536")
            .env("LUAMETRICS_RECORDER_WINDOW_MS", "200")
            .env("LUAMETRICS_LIMITS_POINTS_PER_MINUTE", "100000000")
            .env("LUAMETRICS_LIMITS_BURST", "10000000")
            .env("LUAMETRICS_ENGINE_TIME_LIMIT_MS", "20000")
            .stdout(Stdio::piped())
            .stderr(if capture {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("[serve] {line}");
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child,
            base,
            dir,
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn stop(mut self) -> tempfile::TempDir {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status and JSON body of a request (errors included).
pub fn call(req: ureq::Request, body: Option<Value>) -> (u16, Value) {
    let res = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn get(s: &Server, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut r = ureq::get(&s.url(path));
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    call(r, None)
}

pub fn post(s: &Server, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = ureq::post(&s.url(path));
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    call(r, Some(body))
}

pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    // Bounded waiting for background work (flush windows, scrapes); not a timing assertion.
    for _ in 0..600 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("gave up waiting for {what}");
}

pub fn login(s: &Server, tenant: &str, plan: &str) -> (u16, Value) {
    post(
        s,
        "/v1/pipelines/user.login/execute",
        Some(EXEC),
        json!({"tenant": tenant, "event": {"email": "a@example.com", "plan": plan, "method": "passkey", "roles": ["dev"]}}),
    )
}

/// A counter's value for user points from `/metrics` (0 when absent).
pub fn user_counter(s: &Server, name: &str, reason: Option<&str>) -> u64 {
    let text = ureq::get(&s.url("/metrics"))
        .set("Authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains("metric_type=\"user\""))
        .filter(|l| reason.is_none_or(|r| l.contains(&format!("reason=\"{r}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// User points this instance accepted (from its own `/metrics`).
pub fn accepted(s: &Server) -> u64 {
    user_counter(s, "luametrics_points_accepted_count_total", None)
}
