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

/// Process set-up of the `luametrics` binary, shared with the benches so they measure what it
/// runs: with mimalloc (its global allocator) and transparent huge pages, a bounded
/// recorder's resident memory grew 65 MiB for its 64 MiB bound instead of 47 MiB
/// (BENCHMARKS.md, twelfth session), so the process opts out of them. Call it first in `main`.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub fn prepare_process() {
    // SAFETY: a plain system call about this process; failure leaves the default.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0)
    };
}

#[cfg(all(test, feature = "cli", target_os = "linux"))]
mod tests {
    // The binary's process runs without transparent huge pages (the kernel reports it in
    // /proc/<pid>/status since Linux 5.0; older kernels have no such line to check).
    #[test]
    fn the_prepared_process_has_transparent_huge_pages_off() {
        super::prepare_process();
        let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        }
    }
}
