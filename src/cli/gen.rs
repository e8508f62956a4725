//! `luametrics gen-events`: a deterministic events file for the example pipelines.

use super::CliError;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// SplitMix64: small, fast, deterministic across platforms.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One event line for trigger `user.login`, `token.issue` or `invoice.created`.
fn event(rng: &mut Rng, tenants: usize) -> serde_json::Value {
    let tenant = format!("tenant-{}", rng.below(tenants as u64) + 1);
    let plan = rng.pick(&["free", "free", "pro", "pro", "enterprise"]);
    let roll = rng.below(100);
    if roll < 50 {
        let domain = if rng.below(100) < 5 {
            rng.pick(&["mailinator.com", "trashmail.com"])
        } else {
            rng.pick(&["example.com", "corp.example", "mail.example.org"])
        };
        let roles: Vec<&str> = (0..rng.below(4))
            .map(|_| rng.pick(&["admin", "dev", "ops", "viewer"]))
            .collect();
        json!({"trigger": "user.login", "tenant": tenant, "event": {
            "email": format!("user{}@{domain}", rng.below(100_000)),
            "plan": plan,
            "method": rng.pick(&["password", "passkey", "oauth"]),
            "attempts": rng.below(6) + 1,
            "roles": roles,
        }})
    } else if roll < 80 {
        json!({"trigger": "token.issue", "tenant": tenant, "event": {
            "client": rng.pick(&["web", "mobile", "cli"]),
            "grant_type": rng.pick(&["authorization_code", "refresh_token", "client_credentials"]),
            "queue_depth": rng.below(200),
            "plan": plan,
        }})
    } else {
        // Log-normal-ish amounts between a few and a few thousand.
        let amount = (3.0 + 1.5 * (rng.unit() + rng.unit() + rng.unit() - 1.5)).exp();
        json!({"trigger": "invoice.created", "tenant": tenant, "event": {
            "amount": (amount * 100.0).round() / 100.0,
            "currency": rng.pick(&["EUR", "USD", "GBP"]),
            "plan": plan,
            "items": rng.below(9) + 1,
        }})
    }
}

pub(crate) fn gen_events(
    count: usize,
    tenants: usize,
    seed: u64,
    out: Option<PathBuf>,
) -> Result<ExitCode, CliError> {
    let mut rng = Rng(seed);
    let mut text = String::with_capacity(count * 160);
    for _ in 0..count {
        text.push_str(&event(&mut rng, tenants.max(1)).to_string());
        text.push('\n');
    }
    match out {
        Some(path) => std::fs::write(&path, text).map_err(|source| CliError::Write {
            path: path.display().to_string(),
            source,
        })?,
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|source| CliError::Write {
                path: "standard output".into(),
                source,
            })?,
    }
    Ok(ExitCode::SUCCESS)
}
