//! luametrics: a Lua-embedded user-metrics runtime.
//!
//! [`Runtime`] is the embedding API: it opens the store, starts the recorder, builds the engine
//! pool, loads the pipelines, and runs `execute(trigger, tenant, event)`. [`Config`] is
//! `luametrics.toml` with `LUAMETRICS_*` environment overrides. The crates it composes are
//! re-exported for hosts that need one part only.
//!
//! Features: `server` (the HTTP sidecar, axum) and `cli` (the binary; implies `server`) are on
//! by default; a host that only embeds the runtime turns default features off and compiles
//! neither axum nor clap.

#![deny(missing_docs)]

pub use luametrics_runtime::{
    Config, ConfigError, DatabaseSettings, Error, ErrorKind, PipelineSettings, Runtime,
    RuntimeBuilder, ServerSettings, ShutdownSummary,
};

pub use luametrics_engine as engine;
pub use luametrics_model as model;
pub use luametrics_pipeline as pipeline;
pub use luametrics_recorder as recorder;
#[cfg(feature = "server")]
pub use luametrics_server as server;
pub use luametrics_sink as sink;
pub use luametrics_sketch as sketch;
pub use luametrics_store as store;
