//! The Observability dashboard's panels as data (`catalog/dashboard.toml`, built in): which
//! metrics each chart shows and how, kept next to the catalog of those metrics so a panel and
//! the metrics it needs change together, and checked against it (every series names a catalog
//! metric, every grouping or filter tag is one the metric may carry). The server draws them.

use crate::{Catalog, CatalogError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::OnceLock;

const BUILTIN: &str = include_str!("../catalog/dashboard.toml");

/// Aggregations a series may ask for (the store's query API).
const AGGS: &[&str] = &[
    "sum", "count", "avg", "min", "max", "last", "p50", "p90", "p95", "p99", "rate",
];

/// The dashboard: its panels in page order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dashboard {
    /// Panels, drawn in this order.
    pub panel: Vec<PanelSpec>,
}

/// One panel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelSpec {
    /// Stable id (`data-panel`, `id="panel-<id>"`).
    pub id: String,
    /// Heading.
    pub title: String,
    /// Drawn entirely by code (its charts depend on what the viewer picks).
    #[serde(default)]
    pub custom: bool,
    /// Named parts drawn by code before the charts (stats, tables, breakdowns).
    #[serde(default)]
    pub widgets: Vec<String>,
    /// What the panel asks the host to record when it has no data.
    #[serde(default)]
    pub fed_by: Vec<String>,
    /// Its charts.
    #[serde(default)]
    pub chart: Vec<ChartSpec>,
}

/// One line chart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartSpec {
    /// Title.
    pub title: String,
    /// Unit of the y axis.
    pub unit: String,
    /// Scale per-step values to a rate per minute.
    #[serde(default)]
    pub per_minute: bool,
    /// Its series.
    pub series: Vec<SeriesSpec>,
}

/// One query drawn as one line, or one line per value of `group_by`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesSpec {
    /// The metric.
    pub metric: String,
    /// The aggregation per bucket (`sum`, `p95`...).
    pub agg: String,
    /// A tag to draw one line per value of.
    #[serde(default)]
    pub group_by: Option<String>,
    /// Tag values the rows must have.
    #[serde(default)]
    pub filter: BTreeMap<String, String>,
    /// The line's label (with a group: "<label> <value>").
    #[serde(default)]
    pub label: String,
}

impl Dashboard {
    /// The dashboard shipped with luametrics, checked against the built-in catalog.
    pub fn builtin() -> &'static Dashboard {
        static DASHBOARD: OnceLock<Dashboard> = OnceLock::new();
        DASHBOARD.get_or_init(|| {
            // The built-in file is checked by a unit test; failing here is a build defect.
            Dashboard::from_toml_str(BUILTIN, Catalog::builtin())
                .expect("built-in dashboard is valid")
        })
    }

    /// Parses a dashboard and checks it against `catalog`.
    pub fn from_toml_str(text: &str, catalog: &Catalog) -> Result<Self, CatalogError> {
        let d: Dashboard = toml::from_str(text)?;
        let mut ids = std::collections::HashSet::new();
        for p in &d.panel {
            let bad = |problem: String| CatalogError::Entry {
                name: format!("dashboard panel `{}`", p.id),
                problem,
            };
            if !ids.insert(p.id.as_str()) {
                return Err(bad("the id is used twice".into()));
            }
            if !p.custom && p.chart.is_empty() && p.widgets.is_empty() {
                return Err(bad("no chart, widget or custom drawing".into()));
            }
            for c in &p.chart {
                for s in &c.series {
                    let Some(entry) = catalog.get(&s.metric) else {
                        return Err(bad(format!("`{}` is not in the catalog", s.metric)));
                    };
                    if !AGGS.contains(&s.agg.as_str()) {
                        return Err(bad(format!("`{}` is not an aggregation", s.agg)));
                    }
                    for tag in s.group_by.iter().chain(s.filter.keys()) {
                        if !entry.tags.contains(tag) {
                            return Err(bad(format!(
                                "`{}` does not carry the tag `{tag}`",
                                s.metric
                            )));
                        }
                    }
                }
            }
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_dashboard_shows_only_catalog_metrics_and_their_tags() {
        let d = Dashboard::from_toml_str(BUILTIN, Catalog::builtin()).unwrap();
        let ids: Vec<&str> = d.panel.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "system",
                "pipelines",
                "security",
                "user",
                "webhooks",
                "admin"
            ]
        );
    }

    #[test]
    fn a_panel_naming_an_unknown_metric_or_tag_is_refused() {
        let unknown = r#"
            [[panel]]
            id = "x"
            title = "X"
            [[panel.chart]]
            title = "t"
            unit = "u"
            series = [{ metric = "no.such.metric", agg = "sum" }]
        "#;
        assert!(Dashboard::from_toml_str(unknown, Catalog::builtin()).is_err());
        let bad_tag = r#"
            [[panel]]
            id = "x"
            title = "X"
            [[panel.chart]]
            title = "t"
            unit = "u"
            series = [{ metric = "http.request.duration_ms", agg = "p95", group_by = "user_id" }]
        "#;
        let e = Dashboard::from_toml_str(bad_tag, Catalog::builtin()).unwrap_err();
        assert!(e.to_string().contains("user_id"), "{e}");
        let bad_agg = r#"
            [[panel]]
            id = "x"
            title = "X"
            [[panel.chart]]
            title = "t"
            unit = "u"
            series = [{ metric = "http.request.duration_ms", agg = "median" }]
        "#;
        assert!(Dashboard::from_toml_str(bad_agg, Catalog::builtin()).is_err());
    }
}
