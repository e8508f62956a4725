//! `luametrics.toml` and its `LUAMETRICS_<SECTION>_<KEY>` environment overrides, with defaults
//! that work on a fresh machine and errors that name the key and the expected value.

use luametrics_engine::{EngineSettings, PoolSettings};
use luametrics_model::Limits;
use luametrics_recorder::RecorderSettings;
use luametrics_store::Retention;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the data lives (`[database]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// A file path (embedded libSQL) or a `libsql://` / `http(s)://` URL.
    pub url: String,
    /// Auth token for a remote URL, when the server requires one (sqld with JWT auth, Turso).
    pub auth_token: Option<String>,
    /// How long a write waits on another writer's lock.
    pub busy_timeout_ms: u64,
    /// This process's name in a fleet sharing one database, written with every metric row it
    /// stores; empty: `<hostname>-<pid>` (set it where processes share both, as containers
    /// with host networking may).
    pub instance: String,
    /// How long a remote call (a flush, a trace batch, a query, each step of a rollup) waits
    /// for the server's answer before it fails (writes are retried), so a server that stops
    /// answering holds nothing for good.
    pub remote_timeout_ms: u64,
    /// Reads (queries, names, traces, usage) running at once: each holds a thread while it
    /// runs, so a flood of them waits its turn instead of taking every thread.
    pub max_concurrent_reads: usize,
    /// How long such a read may run before it is stopped (`read_timeout` to the client), so
    /// no query holds a thread and a database connection for minutes.
    pub read_timeout_ms: u64,
}

impl DatabaseSettings {
    /// The instance name: the configured one, else `<hostname>-<pid>`.
    pub fn instance_name(&self) -> String {
        let configured = self.instance.trim();
        if !configured.is_empty() {
            return configured.to_string();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".into());
        format!("{host}-{}", std::process::id())
    }

    /// Opens the store these settings name, set up as every user of it must be: the instance
    /// name, the bound on remote calls and the read limits. One place for the runtime and the
    /// CLI's own commands (adversary round 24: `luametrics retention` and `query` opened the
    /// store without the remote bound, so a lost answer held them 30 s whatever was set).
    pub async fn open_store(
        &self,
    ) -> Result<luametrics_store::Store, luametrics_store::StoreError> {
        use std::time::Duration;
        let location = luametrics_store::Location::parse(&self.url, self.auth_token.as_deref())?;
        let store = luametrics_store::Store::open_bounded(
            location,
            Duration::from_millis(self.busy_timeout_ms),
            Duration::from_millis(self.remote_timeout_ms.max(1)),
        )
        .await?;
        store.set_instance(self.instance_name());
        store.set_read_limits(
            self.max_concurrent_reads,
            Duration::from_millis(self.read_timeout_ms.max(1)),
        );
        Ok(store)
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "luametrics.db".into(),
            auth_token: None,
            busy_timeout_ms: 2_000,
            instance: String::new(),
            remote_timeout_ms: 30_000,
            max_concurrent_reads: luametrics_store::DEFAULT_CONCURRENT_READS,
            read_timeout_ms: luametrics_store::DEFAULT_READ_TIMEOUT.as_millis() as u64,
        }
    }
}

/// Pipelines (`[pipelines]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSettings {
    /// The definitions file; script paths in it are relative to it.
    pub file: PathBuf,
    /// How often definitions and scripts are checked for changes (0: never; reload by call).
    pub reload_interval_ms: u64,
    /// Share of successful executions whose trace is kept (errors and blocks always are).
    pub trace_sample_rate: f64,
    /// Traces queued for writing before new ones are dropped (and counted).
    pub trace_queue: usize,
    /// Whether a definitions file with no pipeline may start the runtime (by default it is a
    /// mistake: every execution would fail with an unknown trigger).
    pub allow_empty: bool,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            file: PathBuf::from("lua/pipelines.toml"),
            reload_interval_ms: 2_000,
            trace_sample_rate: 1.0,
            trace_queue: 10_000,
            allow_empty: false,
        }
    }
}

/// The HTTP server (`[server]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub addr: String,
    /// Bearer token for `POST /v1/pipelines/{trigger}/execute` and `POST /v1/metrics`.
    /// Unset: one is generated at start and printed.
    pub execute_token: Option<String>,
    /// Bearer token for queries, traces, pool status and the dashboard.
    /// Unset: one is generated at start and printed.
    pub admin_token: Option<String>,
    /// Whether `GET /metrics` needs the admin token (by default it does: the exposition
    /// carries host metrics and per-tenant labels, which tenants must not read).
    pub metrics_requires_token: bool,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Memory that request bodies in flight may hold at once, raw and parsed: each is charged
    /// `BODY_MEMORY_PER_BYTE` (16) times its declared length (a body without a declared length
    /// as `max_body_bytes`) before it is read (a 1 MiB array of `0,` holds ~13 MiB as values),
    /// and once read what its objects and arrays add (a map node per object). A request that
    /// would pass it gets `503 server_busy`: without this bound `max_connections` full-size
    /// requests could hold gigabytes. At least one full-size body's charge.
    pub max_inflight_body_bytes: usize,
    /// Longest a request may take before a 503.
    pub request_timeout_ms: u64,
    /// Longest a connection may take to send a request's headers (and longest an idle
    /// keep-alive connection is kept): a client that stops half-way is disconnected.
    pub header_read_timeout_ms: u64,
    /// Connections served at once; more are closed at once (each holds a file descriptor and
    /// memory, so without a cap half-open connections could take the process offline).
    pub max_connections: usize,
    /// Connections served at once from one client address, so one client cannot take every
    /// place under `max_connections`.
    pub max_connections_per_peer: usize,
    /// Longest a write to a client may wait for the client to read (a client that sends
    /// requests and never reads the answers): then its connection is closed.
    pub write_timeout_ms: u64,
    /// Read tokens of tenants (`tenant = "token"`): each sees only its own tenant's metrics,
    /// traces and usage. More can be minted with `POST /v1/tenants/{tenant}/tokens`.
    pub tenant_tokens: std::collections::BTreeMap<String, String>,
}

/// What a request body is charged against `max_inflight_body_bytes` per declared byte: a
/// parsed JSON value is 32 bytes and the shortest element (`0,`) is 2, so a body's scalar
/// values hold ~16 times its length (measured: a 1 MiB array of zeros, ~13 MiB resident);
/// objects and arrays are charged on top once the body is read.
pub const BODY_MEMORY_PER_BYTE: usize = 16;

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:7878".into(),
            execute_token: None,
            admin_token: None,
            metrics_requires_token: true,
            max_body_bytes: 1024 * 1024,
            max_inflight_body_bytes: 128 * 1024 * 1024,
            request_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            max_connections: 1_024,
            max_connections_per_peer: 128,
            write_timeout_ms: 10_000,
            tenant_tokens: Default::default(),
        }
    }
}

/// Everything in `luametrics.toml`; every table and key is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[database]`
    pub database: DatabaseSettings,
    /// `[recorder]`
    pub recorder: RecorderSettings,
    /// `[limits]`: per-tenant user-metric limits.
    pub limits: Limits,
    /// `[engine]`
    pub engine: EngineSettings,
    /// `[pool]`
    pub pool: PoolSettings,
    /// `[pipelines]`
    pub pipelines: PipelineSettings,
    /// `[retention]`
    pub retention: Retention,
    /// `[server]`
    pub server: ServerSettings,
}

/// Why the configuration cannot be used; names the file, key or variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed, or a key is unknown or of the wrong type.
    #[error("config {path}: {message}")]
    Invalid {
        /// The file (or `environment`).
        path: String,
        /// The parser's message, naming the key.
        message: String,
    },
    /// An environment override does not name a known section.
    #[error("environment variable {var}: unknown setting (expected LUAMETRICS_<SECTION>_<KEY>, sections: {sections})")]
    UnknownVariable {
        /// The variable.
        var: String,
        /// The known sections.
        sections: String,
    },
}

/// `LUAMETRICS_*` variables that are not settings (the test suite's and benches' own), so a
/// shell that exports them can still start the service.
const NOT_SETTINGS: &[&str] = &["LUAMETRICS_SQLD", "LUAMETRICS_SKIP_FLEET"];

const SECTIONS: &[&str] = &[
    "database",
    "recorder",
    "limits",
    "engine",
    "pool",
    "pipelines",
    "retention",
    "server",
];

impl Config {
    /// Reads `path` if it exists (defaults otherwise), then applies `LUAMETRICS_*` variables.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (text, name) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None if Path::new("luametrics.toml").exists() => (
                std::fs::read_to_string("luametrics.toml").map_err(|source| ConfigError::Read {
                    path: "luametrics.toml".into(),
                    source,
                })?,
                "luametrics.toml".to_string(),
            ),
            None => (String::new(), "defaults".to_string()),
        };
        Self::from_sources(&text, &name, std::env::vars())
    }

    /// Parses a config text and applies overrides from `vars` (for tests and hosts).
    pub fn from_sources(
        text: &str,
        name: &str,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: name.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let mut overridden = false;
        for (var, value) in vars {
            let Some(rest) = var.strip_prefix("LUAMETRICS_") else {
                continue;
            };
            if NOT_SETTINGS.contains(&var.as_str()) {
                continue;
            }
            let lower = rest.to_ascii_lowercase();
            let Some(section) = SECTIONS
                .iter()
                .find(|s| lower.starts_with(&format!("{s}_")))
            else {
                return Err(ConfigError::UnknownVariable {
                    var,
                    sections: SECTIONS.join(", "),
                });
            };
            let key = &lower[section.len() + 1..];
            // Numbers and booleans as such; anything else as a string.
            let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .filter(|v| !v.is_table() && !v.is_array())
                .unwrap_or_else(|| toml::Value::String(value.clone()));
            let table = doc
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = table {
                t.insert(key.to_string(), parsed);
                overridden = true;
            }
        }
        let path = if overridden {
            format!("{name} (with LUAMETRICS_* overrides)")
        } else {
            name.to_string()
        };
        let config: Config = toml::Value::Table(doc)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                path: path.clone(),
                message: e.to_string().trim().replace('\n', " "),
            })?;
        config.validate(&path)?;
        Ok(config)
    }

    /// Checks what the types cannot say (retention order, shares and rates in range, tokens
    /// not blank); `path` names where the settings came from. [`Config::load`] and
    /// [`crate::Runtime::start`] both call it, so settings built in code meet the same rules
    /// as a file's.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        self.retention
            .validate()
            .map_err(|e| ConfigError::Invalid {
                path: path.to_string(),
                message: e.to_string(),
            })?;
        // The recorder's own rules (shares: NaN compares false with everything, so
        // `ready_memory_share = nan` made `/readyz` answer 503 for good, adversary round 11).
        self.recorder.validate().map_err(|e| ConfigError::Invalid {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        // Rates: a NaN or negative rate means nothing.
        for (key, value, range, what) in [(
            "pipelines.trace_sample_rate",
            self.pipelines.trace_sample_rate,
            (0.0, 1.0),
            "a share of executions from 0 to 1",
        )] {
            if !(value >= range.0 && value <= range.1) {
                return Err(ConfigError::Invalid {
                    path: path.to_string(),
                    message: format!("{key} = {value}: expected {what}"),
                });
            }
        }
        // An empty token would let an empty bearer (or `?token=`) in.
        for (key, token) in [
            ("server.execute_token", &self.server.execute_token),
            ("server.admin_token", &self.server.admin_token),
        ] {
            if let Some(t) = token {
                if t.trim().is_empty() || t.chars().any(char::is_control) {
                    return Err(ConfigError::Invalid {
                        path: path.to_string(),
                        message: format!(
                            "{key} is set but empty or blank (or holds control characters): \
                             set a real token, or unset it to have one generated"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn empty_or_blank_tokens_are_refused_at_start() {
        for value in ["", "   ", "\t"] {
            let e = Config::from_sources(
                "",
                "defaults",
                vars(&[("LUAMETRICS_SERVER_ADMIN_TOKEN", value)]),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("server.admin_token"), "{value:?}: {e}");
        }
        let e = Config::from_sources("[server]\nexecute_token = \" \"\n", "f.toml", vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.execute_token") && e.contains("f.toml"),
            "{e}"
        );
        let ok = Config::from_sources(
            "",
            "d",
            vars(&[("LUAMETRICS_SERVER_ADMIN_TOKEN", "s3cret")]),
        );
        assert_eq!(ok.unwrap().server.admin_token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn shares_and_rates_out_of_range_are_refused_at_start() {
        for (var, value) in [
            ("LUAMETRICS_RECORDER_READY_MEMORY_SHARE", "nan"),
            ("LUAMETRICS_RECORDER_READY_MEMORY_SHARE", "0"),
            ("LUAMETRICS_RECORDER_READY_MEMORY_SHARE", "1.5"),
            ("LUAMETRICS_RECORDER_TENANT_MEMORY_SHARE", "-1"),
            ("LUAMETRICS_RECORDER_TENANT_MEMORY_SHARE", "nan"),
            ("LUAMETRICS_PIPELINES_TRACE_SAMPLE_RATE", "nan"),
            ("LUAMETRICS_PIPELINES_TRACE_SAMPLE_RATE", "-5"),
            ("LUAMETRICS_PIPELINES_TRACE_SAMPLE_RATE", "inf"),
        ] {
            let e = Config::from_sources("", "defaults", vars(&[(var, value)]))
                .unwrap_err()
                .to_string();
            let key = var
                .trim_start_matches("LUAMETRICS_")
                .to_lowercase()
                .replacen('_', ".", 1);
            assert!(e.contains(&key), "{var}={value}: {e}");
        }
        for (var, value) in [
            ("LUAMETRICS_RECORDER_READY_MEMORY_SHARE", "1"),
            ("LUAMETRICS_RECORDER_TENANT_MEMORY_SHARE", "1"),
            ("LUAMETRICS_RECORDER_TENANT_MEMORY_SHARE", "0"),
            ("LUAMETRICS_PIPELINES_TRACE_SAMPLE_RATE", "0"),
        ] {
            assert!(
                Config::from_sources("", "defaults", vars(&[(var, value)])).is_ok(),
                "{var}={value}"
            );
        }
    }

    #[test]
    fn defaults_work_without_a_file() {
        let c = Config::from_sources("", "defaults", vars(&[])).unwrap();
        assert_eq!(c.database.url, "luametrics.db");
        assert_eq!(c.pool.max_size, 4);
        assert_eq!(c.limits.max_points_per_execution, 250);
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = Config::from_sources(
            "[pool]\nmax_size = 2\n[database]\nurl = \"a.db\"\n",
            "luametrics.toml",
            vars(&[
                ("LUAMETRICS_POOL_MAX_SIZE", "8"),
                ("LUAMETRICS_DATABASE_URL", "libsql://x.turso.io"),
                ("LUAMETRICS_ENGINE_STRICT", "true"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.pool.max_size, 8);
        assert_eq!(c.database.url, "libsql://x.turso.io");
        assert!(c.engine.strict);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let e = Config::from_sources("[pool]\nmax_sise = 2\n", "luametrics.toml", vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("luametrics.toml") && e.contains("max_sise"),
            "{e}"
        );
        let e = Config::from_sources(
            "[pool]\nmax_size = \"many\"\n",
            "luametrics.toml",
            vars(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_size") || e.contains("many"), "{e}");
        let e = Config::from_sources("", "x", vars(&[("LUAMETRICS_POOL_MAX_SIZE", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("LUAMETRICS_* overrides"), "{e}");
        // The suite's own variables are not settings, and not errors either.
        Config::from_sources(
            "",
            "x",
            vars(&[
                ("LUAMETRICS_SQLD", "/bin/sqld"),
                ("LUAMETRICS_SKIP_FLEET", "1"),
            ]),
        )
        .unwrap();
        let e = Config::from_sources("", "x", vars(&[("LUAMETRICS_COLOR", "red")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("LUAMETRICS_COLOR"), "{e}");
        let e = Config::from_sources("[retention]\nraw_days = 60\n", "x", vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("raw_days"), "{e}");
        let e = Config::from_sources("[pool\n", "bad.toml", vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.toml"), "{e}");
    }
}
