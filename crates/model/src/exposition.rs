//! The names a metric takes in the Prometheus and OpenMetrics exposition, in one place: the
//! server prints them, and the recorder refuses, at record time, a metric whose names would
//! collide with another metric's (two families with one name, or a family whose samples carry
//! another family's name), so `/metrics` stays valid whatever tenants record.
//!
//! Naming: dots become underscores; user metrics live under `user_`; millisecond timings are
//! exported in seconds (`*_ms` becomes `*_seconds`), byte sizes end in `_bytes`; counters add
//! `_total` (and `_created` in OpenMetrics); histograms add `_bucket`, `_sum`, `_count`,
//! `_created`.

use crate::{Kind, MetricType, RejectReason, Unit};
use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

/// Label names the exposition itself uses or Prometheus reserves: a tag may not take them.
pub const RESERVED_LABELS: &[&str] = &["le", "quantile", "job", "instance", "tenant", "tenant_id"];

/// Whether a tag key would collide with a label of the exposition (reserved, or `__`-prefixed).
pub fn is_reserved_label(key: &str) -> bool {
    RESERVED_LABELS.contains(&key) || key.starts_with("__")
}

/// A metric's family base name, the factor its values are scaled by (ms to seconds), and its
/// OpenMetrics unit.
pub fn family_base(
    metric_type: MetricType,
    name: &str,
    unit: Unit,
) -> (String, f64, Option<&'static str>) {
    let mut base = name.replace('.', "_");
    if metric_type == MetricType::User {
        base = format!("user_{base}");
    }
    match unit {
        Unit::Milliseconds => {
            if let Some(stripped) = base.strip_suffix("_ms") {
                base = stripped.to_string();
            }
            base.push_str("_seconds");
            (base, 0.001, Some("seconds"))
        }
        Unit::Bytes => {
            if !base.ends_with("_bytes") {
                base.push_str("_bytes");
            }
            (base, 1.0, Some("bytes"))
        }
        _ => (base, 1.0, None),
    }
}

/// Every name a metric's family occupies in either format: the family name and each sample
/// name.
pub fn exported_names(metric_type: MetricType, name: &str, kind: Kind, unit: Unit) -> Vec<String> {
    let (base, _, _) = family_base(metric_type, name, unit);
    let suffixes: &[&str] = match kind {
        Kind::Counter => &["", "_total", "_created"],
        Kind::Gauge => &[""],
        Kind::Histogram => &["", "_bucket", "_sum", "_count", "_created"],
    };
    suffixes.iter().map(|s| format!("{base}{s}")).collect()
}

/// Which metric holds each exported name. A metric whose names another metric (another kind,
/// or another name mapping to the same Prometheus name) already holds is refused with
/// [`RejectReason::NameConflict`], so the exposition never prints two families under one name.
/// Names are claimed for the life of the process (the exposition keeps them as long).
#[derive(Debug, Default)]
pub struct ExportedNames {
    inner: RwLock<Names>,
}

#[derive(Debug, Default)]
struct Names {
    /// Exported name -> the metric holding it.
    owners: HashMap<String, (MetricType, String, Kind)>,
    /// Metrics whose names are all held: the common case answers from here.
    claimed: HashSet<(MetricType, String, Kind)>,
    /// The user metrics each tenant has used (claimed, or found claimed by another tenant),
    /// bounded per tenant.
    tenants: HashMap<String, HashSet<(String, Kind)>>,
}

/// Who claims a user metric's names, and how many metrics that tenant may use.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// Its bound of distinct metrics (name and kind): past it, [`RejectReason::NameLimit`].
    pub max_names: usize,
}

impl ExportedNames {
    /// Claims every exported name of a metric, or says which rule it breaks. A tenant's
    /// metric (`claimant`) counts against the tenant's bound of distinct metrics, whoever
    /// claimed its names first.
    pub fn claim(
        &self,
        metric_type: MetricType,
        name: &str,
        kind: Kind,
        unit: Unit,
        claimant: Option<Claimant<'_>>,
    ) -> Result<(), RejectReason> {
        let key = (metric_type, name.to_string(), kind);
        let used_by = |names: &Names, c: &Claimant<'_>| {
            names
                .tenants
                .get(c.tenant)
                .is_some_and(|used| used.contains(&(name.to_string(), kind)))
        };
        {
            let names = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if names.claimed.contains(&key) && claimant.as_ref().is_none_or(|c| used_by(&names, c))
            {
                return Ok(());
            }
        }
        let mut names = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = &claimant {
            if !used_by(&names, c)
                && names.tenants.get(c.tenant).map_or(0, |u| u.len()) >= c.max_names
            {
                return Err(RejectReason::NameLimit);
            }
        }
        if !names.claimed.contains(&key) {
            let exported = exported_names(metric_type, name, kind, unit);
            for n in &exported {
                if let Some(owner) = names.owners.get(n) {
                    if *owner != key {
                        return Err(RejectReason::NameConflict);
                    }
                }
            }
            for n in exported {
                names.owners.insert(n, key.clone());
            }
            names.claimed.insert(key);
        }
        if let Some(c) = claimant {
            names
                .tenants
                .entry(c.tenant.to_string())
                .or_default()
                .insert((name.to_string(), kind));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        assert_eq!(
            exported_names(MetricType::User, "x.y_count", Kind::Counter, Unit::Count),
            [
                "user_x_y_count",
                "user_x_y_count_total",
                "user_x_y_count_created"
            ]
        );
        let (base, scale, unit) = family_base(
            MetricType::System,
            "http.request.duration_ms",
            Unit::Milliseconds,
        );
        assert_eq!(
            (base.as_str(), scale, unit),
            ("http_request_duration_seconds", 0.001, Some("seconds"))
        );
        assert!(
            is_reserved_label("le")
                && is_reserved_label("__name__")
                && !is_reserved_label("tag_le")
        );
    }
}
