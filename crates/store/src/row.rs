//! Rows in and out: the `RowData` trait the writer takes (so the recorder writes its sealed
//! windows without copying them), a plain `WindowRow`, and `StoredRow` as read back.

use luametrics_model::{canonical_tags, Kind, MetricType, Tags};
use luametrics_sketch::Summary;

/// One series over one flush window, as the recorder hands it to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    /// Metric name.
    pub name: String,
    /// Tenant, for user metrics (and system metrics recorded per tenant).
    pub tenant: Option<String>,
    /// System or user.
    pub metric_type: MetricType,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Tags of the series.
    pub tags: Tags,
    /// Origin such as `service:api`.
    pub source: Option<String>,
    /// Window start, ms since the epoch.
    pub timestamp_ms: i64,
    /// Window length in ms (0: a single raw point).
    pub window_ms: i64,
    /// The folded points.
    pub summary: Summary,
}

/// What the store needs of a window row. [`WindowRow`] is the plain owned form; the recorder
/// implements it on its sealed windows so a flush writes them without copying their keys.
pub trait RowData {
    /// Metric name.
    fn name(&self) -> &str;
    /// Tenant.
    fn tenant(&self) -> Option<&str>;
    /// System or user.
    fn metric_type(&self) -> MetricType;
    /// Counter, gauge or histogram.
    fn kind(&self) -> Kind;
    /// Tags of the series.
    fn tags(&self) -> &Tags;
    /// Origin such as `service:api`.
    fn source(&self) -> Option<&str>;
    /// Window start (ms).
    fn timestamp_ms(&self) -> i64;
    /// Window length (ms; 0 for a raw point).
    fn window_ms(&self) -> i64;
    /// The folded points.
    fn summary(&self) -> &Summary;

    /// The `value` column: the sum for counters, the last value for gauges, the mean for
    /// histograms; the natural single number for each kind.
    fn value(&self) -> f64 {
        let s = self.summary();
        match self.kind() {
            Kind::Counter => s.sum,
            Kind::Gauge => s.last,
            Kind::Histogram => s.mean(),
        }
    }

    /// Values for the first-class filter columns (docs/data-model.md), taken from tags (or the source).
    fn first_class(&self) -> [Option<&str>; 4] {
        let tags = self.tags();
        let tag = |k: &str| tags.get(k).map(String::as_str);
        let service =
            tag("service").or_else(|| self.source().and_then(|s| s.strip_prefix("service:")));
        [
            service,
            tag("route_id"),
            tag("client_id"),
            tag("status").or_else(|| tag("result")),
        ]
    }
}

impl RowData for WindowRow {
    fn name(&self) -> &str {
        &self.name
    }
    fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
    fn metric_type(&self) -> MetricType {
        self.metric_type
    }
    fn kind(&self) -> Kind {
        self.kind
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }
    fn window_ms(&self) -> i64 {
        self.window_ms
    }
    fn summary(&self) -> &Summary {
        &self.summary
    }
}

impl WindowRow {
    /// The identity of the series, shared by windows and rollups.
    pub fn series_key(&self) -> String {
        series_key(
            self.metric_type,
            self.tenant.as_deref(),
            &self.name,
            self.kind,
            &canonical_tags(&self.tags),
        )
    }
}

pub(crate) fn series_key(
    metric_type: MetricType,
    tenant: Option<&str>,
    name: &str,
    kind: Kind,
    tags_json: &str,
) -> String {
    format!(
        "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
        metric_type.as_str(),
        tenant.unwrap_or(""),
        name,
        kind.as_str(),
        tags_json
    )
}

/// A row read back from `metrics` (or from `metric_rollups`, with `window_ms` the bucket size).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// Row id.
    pub id: i64,
    /// Metric name.
    pub name: String,
    /// Tenant.
    pub tenant: Option<String>,
    /// System or user.
    pub metric_type: MetricType,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Tags.
    pub tags: Tags,
    /// Origin.
    pub source: Option<String>,
    /// Window (or bucket) start.
    pub timestamp_ms: i64,
    /// Window (or bucket) length.
    pub window_ms: i64,
    /// The `value` column.
    pub value: f64,
    /// Folded points.
    pub summary: Summary,
}
