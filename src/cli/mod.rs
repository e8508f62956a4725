//! The subcommands of the `luametrics` binary.

pub(crate) mod bench;
pub(crate) mod check;
pub(crate) mod gen;
pub(crate) mod query;
pub(crate) mod run;
pub(crate) mod serve;

/// Errors the CLI reports before exiting with status 2.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Pool(#[from] luametrics::engine::PoolError),
    #[error("{0}")]
    Runtime(#[from] luametrics::Error),
    #[error("{0}")]
    Config(#[from] luametrics::ConfigError),
    #[error("{0}")]
    Store(#[from] luametrics::store::StoreError),
    #[error("{0}")]
    Recorder(#[from] luametrics::recorder::RecorderError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid argument {arg}: {problem}")]
    Arg { arg: &'static str, problem: String },
}
