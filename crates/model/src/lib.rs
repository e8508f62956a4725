//! The vocabulary every other luametrics crate speaks: metric points, kinds and units, the name
//! rules, the tag policy (cardinality and PII) and the system-metric catalog, as docs/policy.md states them.
//!
//! This crate does no I/O and holds no state, so the rules it states are the same in the Lua
//! engine, the recorder, the store and the HTTP server.

#![deny(missing_docs)]

mod catalog;
mod dashboard;
mod exposition;
mod name;
mod point;
mod policy;
mod reason;
mod tenant;

pub use catalog::{Catalog, CatalogEntry, CatalogError};
pub use dashboard::{ChartSpec, Dashboard, PanelSpec, SeriesSpec};
pub use exposition::{
    exported_names, family_base, is_reserved_label, ClaimCost, Claimant, ExportedNames, Settled,
    RESERVED_LABELS,
};
pub use name::{infer_kind, infer_unit, validate_name, MAX_NAME_LEN};
pub use point::{canonical_tags, Kind, MetricType, Point, Tags, Unit};
pub use policy::{
    looks_sensitive, CheckedSeries, Limits, TagPolicy, DEFAULT_DENIED_KEYS, MAX_PII_SCAN_LEN,
    RESERVED_PREFIXES,
};
pub use reason::RejectReason;
pub use tenant::{check_tenant, MAX_TENANT_BYTES};
