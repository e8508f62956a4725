//! The embedding API: [`Runtime`] opens the store, starts the recorder, builds the engine pool,
//! loads the pipelines and runs `execute(trigger, tenant, event)`; [`Config`] is
//! `luametrics.toml` with `LUAMETRICS_*` environment overrides.

#![deny(missing_docs)]

mod config;
mod runtime;

pub use config::{
    Config, ConfigError, DatabaseSettings, PipelineSettings, ServerSettings, BODY_MEMORY_PER_BYTE,
};
pub use runtime::{Error, ErrorKind, Runtime, RuntimeBuilder, ShutdownSummary};
