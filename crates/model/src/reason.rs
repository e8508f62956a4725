//! Why a point was refused: one stable code per rule, the same in Lua (`false, reason`), the
//! HTTP API, the accounting and `helpers.metrics.rejected.count{reason}`.

use std::fmt;

/// Why a point was refused. The string forms are a stable API: scripts receive them from
/// `helpers.metrics`, and they label `helpers.metrics.rejected.count{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum RejectReason {
    /// The name breaks the naming rule or is too long.
    InvalidName,
    /// The value is not a finite number.
    InvalidValue,
    /// Tags are not a flat table of string keys to string/number/boolean values, or set a host-only key.
    InvalidTags,
    /// A counter was given a negative increment.
    NegativeCounter,
    /// A user metric name starts with a system prefix.
    ReservedPrefix,
    /// More tag keys than the per-point limit.
    TooManyTags,
    /// A tag key longer than the limit.
    TagKeyTooLong,
    /// A tag value longer than the limit.
    TagValueTooLong,
    /// A denied key or a value shaped like PII or a secret.
    PiiTag,
    /// The tenant's points-per-minute quota is spent.
    RateLimited,
    /// The per-execution point budget is spent.
    ExecutionLimit,
    /// A catalog metric carried a tag the catalog does not declare for it.
    UndeclaredTag,
    /// The kind contradicts the catalog or the name's suffix.
    KindMismatch,
    /// A tag key the exposition uses itself (`le`, `quantile`, `job`, `instance`, `tenant`,
    /// `__`-prefixed): it would make `/metrics` invalid.
    ReservedTag,
    /// The metric's exported names collide with another metric's (another kind, or another
    /// name that maps to the same Prometheus name): it would make `/metrics` invalid.
    NameConflict,
    /// The tenant uses its limit of distinct metric names (`limits.max_names_per_tenant`).
    NameLimit,
    /// A host's point names a tenant id [`crate::check_tenant`] refuses.
    InvalidTenant,
    /// A host's point carries a timestamp before 1970, or more than a minute (two windows,
    /// when longer) ahead of the service's clock.
    InvalidTimestamp,
    /// A metric new to its tenant: the memory bound (`recorder.max_memory_bytes`) has no room
    /// for the names it would hold. Asked again when room comes back.
    MemoryBound,
}

impl RejectReason {
    /// Every reason, for exhaustive reporting.
    pub const ALL: [RejectReason; 19] = [
        RejectReason::InvalidName,
        RejectReason::InvalidValue,
        RejectReason::InvalidTags,
        RejectReason::NegativeCounter,
        RejectReason::ReservedPrefix,
        RejectReason::TooManyTags,
        RejectReason::TagKeyTooLong,
        RejectReason::TagValueTooLong,
        RejectReason::PiiTag,
        RejectReason::RateLimited,
        RejectReason::ExecutionLimit,
        RejectReason::UndeclaredTag,
        RejectReason::KindMismatch,
        RejectReason::ReservedTag,
        RejectReason::NameConflict,
        RejectReason::NameLimit,
        RejectReason::InvalidTenant,
        RejectReason::InvalidTimestamp,
        RejectReason::MemoryBound,
    ];

    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidName => "invalid_name",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::InvalidTags => "invalid_tags",
            RejectReason::NegativeCounter => "negative_counter",
            RejectReason::ReservedPrefix => "reserved_prefix",
            RejectReason::TooManyTags => "too_many_tags",
            RejectReason::TagKeyTooLong => "tag_key_too_long",
            RejectReason::TagValueTooLong => "tag_value_too_long",
            RejectReason::PiiTag => "pii_tag",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::ExecutionLimit => "execution_limit",
            RejectReason::UndeclaredTag => "undeclared_tag",
            RejectReason::KindMismatch => "kind_mismatch",
            RejectReason::ReservedTag => "reserved_tag",
            RejectReason::NameConflict => "name_conflict",
            RejectReason::NameLimit => "name_limit",
            RejectReason::InvalidTenant => "invalid_tenant",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::MemoryBound => "memory_bound",
        }
    }

    /// Parses a stable code back.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == code)
    }

    /// Dense index for counters kept in arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
