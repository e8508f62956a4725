//! The vocabulary of a point: kinds, metric types, units, tags and their canonical text (one
//! text per tag set, so the same series is one row and one cache entry however it was built).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Tags of a point. Sorted, so equal tag sets give equal series keys and equal stored JSON.
pub type Tags = BTreeMap<String, String>;

/// Serialises tags as the canonical JSON object stored in the `tags` column and used as a series key.
pub fn canonical_tags(tags: &Tags) -> String {
    // BTreeMap keys are sorted, so the JSON text is canonical. Written by hand: this runs once
    // per stored row, and serde's generic path costs several times more.
    let mut out = String::with_capacity(
        2 + tags
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum::<usize>(),
    );
    out.push('{');
    for (i, (k, v)) in tags.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, k);
        out.push(':');
        json_string(&mut out, v);
    }
    out.push('}');
    out
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_tags_is_the_json_serde_would_write() {
        let tags: Tags = [("b", "x\"y\\z"), ("a", "line\nbreak\u{1}"), ("é", "ü")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(canonical_tags(&tags), serde_json::to_string(&tags).unwrap());
        assert_eq!(canonical_tags(&Tags::new()), "{}");
        let back: Tags = serde_json::from_str(&canonical_tags(&tags)).unwrap();
        assert_eq!(back, tags);
    }
}

/// How points of a series combine; decides aggregation and the Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Monotonic count; points are summed.
    Counter,
    /// A level; keeps last, min, max and mean.
    Gauge,
    /// A distribution; keeps count, sum, min, max and a quantile sketch.
    Histogram,
}

impl Kind {
    /// Stable lower-case name used in the database and the APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "counter" | "count" => Ok(Kind::Counter),
            "gauge" => Ok(Kind::Gauge),
            "histogram" => Ok(Kind::Histogram),
            other => Err(format!(
                "unknown metric kind `{other}` (expected counter, gauge or histogram)"
            )),
        }
    }
}

/// Who owns a metric: the host and luametrics (`system`) or a tenant's script (`user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    /// Infrastructure and application metrics, validated against the catalog.
    System,
    /// Tenants' custom metrics, validated by the tag policy and quotas.
    User,
}

impl MetricType {
    /// Stable lower-case name used in the database and the APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::System => "system",
            MetricType::User => "user",
        }
    }
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MetricType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => Ok(MetricType::System),
            "user" => Ok(MetricType::User),
            other => Err(format!(
                "unknown metric type `{other}` (expected system or user)"
            )),
        }
    }
}

/// Unit of a metric's values; exporters convert `Milliseconds` to seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// A count of events.
    Count,
    /// A duration in milliseconds.
    #[serde(rename = "ms")]
    Milliseconds,
    /// A size in bytes.
    Bytes,
    /// A plain number.
    None,
}

impl Unit {
    /// Stable short name used in the catalog and the APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "count",
            Unit::Milliseconds => "ms",
            Unit::Bytes => "bytes",
            Unit::None => "none",
        }
    }
}

impl FromStr for Unit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "count" => Ok(Unit::Count),
            "ms" => Ok(Unit::Milliseconds),
            "bytes" => Ok(Unit::Bytes),
            "none" => Ok(Unit::None),
            other => Err(format!(
                "unknown unit `{other}` (expected count, ms, bytes or none)"
            )),
        }
    }
}

/// One measurement, as offered to the recorder (docs/data-model.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Dot-notation name, see [`crate::validate_name`].
    pub name: String,
    /// The measured value; must be finite.
    pub value: f64,
    /// Low-cardinality dimensions.
    #[serde(default)]
    pub tags: Tags,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Contextual origin such as `service:api`.
    #[serde(default)]
    pub source: Option<String>,
    /// System or user.
    pub metric_type: MetricType,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The tenant; always set for user metrics.
    #[serde(default)]
    pub tenant: Option<String>,
}
