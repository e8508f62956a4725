//! A real libSQL server (`sqld`, the server behind Turso) for fleet tests: started on a free
//! port with its own data directory, optionally with JWT auth (Ed25519 keys and tokens minted
//! here), stopped and restarted on the same port and data like an operator would.
//!
//! The binary is `$LUAMETRICS_SQLD`, else `../shared/sqld/bin/sqld` next to this repository (or
//! next to the repository it was cloned from), else `sqld` on the PATH; when none runs and
//! `../shared/sqld/build.sh` exists, it is built once. `LUAMETRICS_SKIP_FLEET=1` (set by
//! `.ci/run` only when no sqld exists at all, with a warning) makes [`Sqld::available`] false.
#![allow(dead_code)]

use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A running sqld.
pub struct Sqld {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    port: u16,
    /// Data directory (kept across restarts).
    pub dir: tempfile::TempDir,
    /// The signing key whose public half sqld trusts, when auth is on.
    key: Option<SigningKey>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("Cargo.lock").exists())
        .expect("a workspace root above the manifest")
        .to_path_buf()
}

fn runs(path: &Path) -> bool {
    Command::new(path)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Where `shared/` may be: next to this repository, or next to the one it was cloned from.
fn shared_dirs() -> Vec<PathBuf> {
    let root = workspace();
    let mut dirs = vec![root.join("../shared")];
    if let Ok(out) = Command::new("git")
        .args(["remote", "get-url", "origin"])
        .current_dir(&root)
        .output()
    {
        let origin = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !origin.is_empty() && Path::new(&origin).is_dir() {
            dirs.push(Path::new(&origin).join("../shared"));
        }
    }
    dirs
}

/// The sqld binary, found or built once.
pub fn binary() -> PathBuf {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("LUAMETRICS_SQLD") {
                let p = PathBuf::from(p);
                assert!(runs(&p), "LUAMETRICS_SQLD={} does not run", p.display());
                return p;
            }
            let shared = shared_dirs();
            for dir in &shared {
                let p = dir.join("sqld/bin/sqld");
                if runs(&p) {
                    return p;
                }
            }
            if runs(Path::new("sqld")) {
                return PathBuf::from("sqld");
            }
            for dir in &shared {
                let build = dir.join("sqld/build.sh");
                if build.exists() {
                    eprintln!("building sqld with {} (minutes)", build.display());
                    let out = Command::new("bash")
                        .arg(&build)
                        .stderr(Stdio::inherit())
                        .output()
                        .expect("run sqld's build.sh");
                    assert!(out.status.success(), "sqld's build.sh failed");
                    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                    assert!(runs(&p), "build.sh printed {}, which does not run", p.display());
                    return p;
                }
            }
            panic!(
                "no sqld: set LUAMETRICS_SQLD to the sqld binary, or put it at ../shared/sqld/bin/sqld (LUAMETRICS_SKIP_FLEET=1 skips fleet tests)"
            );
        })
        .clone()
}

impl Sqld {
    /// Whether fleet tests run here (false only with `LUAMETRICS_SKIP_FLEET=1`).
    pub fn available() -> bool {
        let skip = std::env::var("LUAMETRICS_SKIP_FLEET").is_ok_and(|v| v == "1");
        if skip {
            eprintln!("SKIPPED: LUAMETRICS_SKIP_FLEET=1, no sqld on this machine");
        }
        !skip
    }

    /// A server without auth.
    pub fn start() -> Sqld {
        Self::launch(None)
    }

    /// A server that requires JWTs signed by a fresh Ed25519 key.
    pub fn start_with_auth() -> Sqld {
        Self::launch(Some(fresh_key()))
    }

    fn launch(key: Option<SigningKey>) -> Sqld {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Sqld {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir: tempfile::tempdir().unwrap(),
            key,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.args(["--db-path"])
            .arg(self.dir.path().join("data.sqld"))
            .args(["--http-listen-addr", &format!("127.0.0.1:{}", self.port)])
            .arg("--no-welcome")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(key) = &self.key {
            let file = self.dir.path().join("jwt.key");
            std::fs::write(&file, b64(key.verifying_key().as_bytes())).unwrap();
            cmd.arg("--auth-jwt-key-file").arg(file);
        }
        self.child = Some(cmd.spawn().expect("start sqld"));
        // Bounded wait for the server to answer (a hang detector, not a timing assertion).
        for _ in 0..300 {
            if self.healthy() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("sqld did not become healthy on port {}", self.port);
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.1 200")
    }

    /// A token with access `a` (`rw`, `ro`) that expires at `exp` (seconds since the epoch).
    pub fn token_with(&self, access: &str, exp: Option<u64>) -> String {
        let key = self.key.as_ref().expect("a server started with auth");
        mint(key, access, exp)
    }

    /// A read-write token valid for an hour.
    pub fn token(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.token_with("rw", Some(now + 3600))
    }

    /// Stops the server (SIGTERM, then waits); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..200 {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts the server again trusting another key: every token minted so far is refused.
    pub fn restart_with_new_key(&mut self) {
        self.stop();
        self.key = Some(fresh_key());
        self.spawn();
    }

    /// Starts the server again trusting `key` (see [`Sqld::key`]).
    pub fn restart_with_key(&mut self, key: SigningKey) {
        self.stop();
        self.key = Some(key);
        self.spawn();
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The signing key sqld trusts now.
    pub fn key(&self) -> Option<SigningKey> {
        self.key.clone()
    }
}

impl Drop for Sqld {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn fresh_key() -> SigningKey {
    let seed: [u8; 32] = rand::random();
    SigningKey::from_bytes(&seed)
}

/// A JWT as sqld and Turso read it: EdDSA over `header.claims`, claim `a` the access level.
pub fn mint(key: &SigningKey, access: &str, exp: Option<u64>) -> String {
    let header = b64(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let claims = match exp {
        Some(exp) => format!(r#"{{"a":"{access}","exp":{exp}}}"#),
        None => format!(r#"{{"a":"{access}"}}"#),
    };
    let signing_input = format!("{header}.{}", b64(claims.as_bytes()));
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&signature.to_bytes()))
}

/// The first column of every row `sql` returns, read straight from the server at `url` (not
/// through the store under test).
pub async fn query_column(url: &str, token: Option<&str>, sql: &str) -> Vec<libsql::Value> {
    let db = libsql::Builder::new_remote(url.to_string(), token.unwrap_or("").to_string())
        .build()
        .await
        .unwrap();
    let conn = db.connect().unwrap();
    let mut rows = conn.query(sql, ()).await.unwrap();
    let mut out = Vec::new();
    while let Some(r) = rows.next().await.unwrap() {
        out.push(r.get_value(0).unwrap());
    }
    out
}
