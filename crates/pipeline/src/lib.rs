//! Pipelines: a trigger event runs a DAG of tenant scripts on the engine pool.
//!
//! Definitions live in a TOML file ([`Pipelines::load`]) and are validated with errors that
//! name the file, the pipeline and the field. The [`Executor`] runs nodes layer by layer
//! (independent nodes concurrently, each on its own engine), merges `{ context = ... }` results
//! for later nodes, short-circuits on `{ allow = false }`, applies `on_error`, records the
//! pipeline's system metrics and hands a trace with one span per node to the [`TraceWriter`].
//! The [`Registry`] swaps definitions on reload without stopping executions in flight.

#![deny(missing_docs)]

mod definition;
mod executor;
mod registry;
mod series;
mod traces;

pub use definition::{Node, OnError, Pipeline, PipelineError, Pipelines};
pub use executor::{
    Decision, ExecuteError, Executor, NodeReport, NodeStatus, Outcome, PipelineTimings, Warning,
};
pub use registry::Registry;
pub use traces::{TraceSampler, TraceWriter};
