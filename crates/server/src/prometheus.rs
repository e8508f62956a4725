//! Prometheus text (0.0.4) and OpenMetrics (1.0) exposition of the recorder's cumulative state.
//!
//! Naming follows Prometheus: dots become underscores, counters end in `_total`, millisecond
//! timings are exported in seconds (`*_ms` becomes `*_seconds`), user metrics live under `user_`
//! with a `tenant` label. Every family has HELP and TYPE; histogram buckets are cumulative and
//! end with `+Inf`; two source names that map to one family never print a series twice.

use luametrics_model::{family_base, infer_unit, Catalog, Kind, MetricType};
use luametrics_recorder::ExposedSeries;
use std::collections::BTreeMap;
use std::fmt::Write;

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BYTES_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];
const PLAIN_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 100000.0,
];

/// Content type of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct Family {
    kind: Kind,
    help: String,
    unit: Option<&'static str>,
    /// Label text -> merged series.
    series: BTreeMap<String, Merged>,
}

struct Merged {
    value: f64,
    count: u64,
    buckets: Vec<u64>,
    /// A histogram observed a negative value: its sum is not a counter, which OpenMetrics
    /// requires of `_sum`, so the OpenMetrics exposition leaves it (and `_count`) out.
    negative: bool,
}

fn base_name(s: &ExposedSeries, catalog: &Catalog) -> (String, f64, Option<&'static str>, String) {
    let entry = (s.metric_type == MetricType::System)
        .then(|| catalog.get(&s.name))
        .flatten();
    let unit = entry.map_or_else(|| infer_unit(&s.name), |e| e.unit);
    // The same rules the recorder claims names with (model's exposition module).
    let (base, scale, unit_name) = family_base(s.metric_type, &s.name, unit);
    let help = match entry {
        Some(e) if !e.help.is_empty() => e.help.clone(),
        _ if s.metric_type == MetricType::User => {
            format!("User metric {} recorded by tenant scripts", s.name)
        }
        _ => format!("Host metric {}", s.name),
    };
    (base, scale, unit_name, help)
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn labels(s: &ExposedSeries) -> String {
    let mut parts = Vec::new();
    if let Some(t) = &s.tenant {
        parts.push(format!("tenant=\"{}\"", escape_label(t)));
    }
    for (k, v) in &s.tags {
        // `le` is the bucket label of histograms; a tag of that name is renamed.
        let key = if k == "le" || k == "tenant" || k.starts_with("__") {
            format!("tag_{}", k.trim_start_matches('_'))
        } else {
            k.clone()
        };
        parts.push(format!("{key}=\"{}\"", escape_label(v)));
    }
    parts.sort();
    parts.join(",")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn bounds(unit: Option<&str>) -> &'static [f64] {
    match unit {
        Some("seconds") => SECONDS_BUCKETS,
        Some("bytes") => BYTES_BUCKETS,
        _ => PLAIN_BUCKETS,
    }
}

/// Encodes every series; `openmetrics` picks the format.
pub fn encode(series: &[ExposedSeries], catalog: &Catalog, openmetrics: bool) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for s in series {
        let (base, scale, unit, help) = base_name(s, catalog);
        let family = families.entry(base).or_insert_with(|| Family {
            kind: s.kind,
            help,
            unit,
            series: BTreeMap::new(),
        });
        if family.kind != s.kind {
            // Two source names collide on one family with different kinds: keep the first kind.
            continue;
        }
        let b = bounds(family.unit);
        let mut buckets = vec![0u64; b.len()];
        let mut negative = s.kind == Kind::Histogram && s.value < 0.0;
        if let Some(sketch) = &s.sketch {
            match sketch.edges() {
                // A value counts in the first bound above its sketch bucket's lower edge
                // (adversary round 25: compared by the bucket's representative value, values
                // equal to a bound, 5, 10, 100 ms..., counted in the next bucket).
                Some(edges) => {
                    for (edge, c) in edges {
                        let edge = edge * scale;
                        let first = if edge == 0.0 {
                            b.iter().position(|bound| edge <= *bound)
                        } else {
                            b.iter().position(|bound| edge < *bound)
                        };
                        if let Some(i) = first {
                            buckets[i] += c;
                        }
                    }
                }
                // Negative values: each by its representative value, as before (a negative
                // value counts in the first bucket).
                None => {
                    negative = true;
                    for (v, c) in sketch.bins() {
                        let v = v * scale;
                        if let Some(i) = b.iter().position(|bound| v <= *bound) {
                            buckets[i] += c;
                        }
                    }
                }
            }
        }
        let merged = family.series.entry(labels(s)).or_insert(Merged {
            value: 0.0,
            count: 0,
            buckets: vec![0; b.len()],
            negative: false,
        });
        merged.negative |= negative;
        match s.kind {
            Kind::Gauge => merged.value = s.value * scale,
            _ => merged.value += s.value * scale,
        }
        merged.count += s.sketch.as_ref().map_or(s.count, |k| k.count());
        for (m, n) in merged.buckets.iter_mut().zip(buckets) {
            *m += n;
        }
    }
    let mut out = String::with_capacity(series.len() * 96);
    for (base, f) in &families {
        let (type_name, family_name) = match f.kind {
            Kind::Counter => (
                "counter",
                if openmetrics {
                    base.clone()
                } else {
                    format!("{base}_total")
                },
            ),
            Kind::Gauge => ("gauge", base.clone()),
            Kind::Histogram => ("histogram", base.clone()),
        };
        let _ = writeln!(out, "# HELP {family_name} {}", escape_help(&f.help));
        let _ = writeln!(out, "# TYPE {family_name} {type_name}");
        if openmetrics {
            if let Some(u) = f.unit {
                let _ = writeln!(out, "# UNIT {family_name} {u}");
            }
        }
        let with = |labels: &str, extra: &str| -> String {
            match (labels.is_empty(), extra.is_empty()) {
                (true, true) => String::new(),
                (false, true) => format!("{{{labels}}}"),
                (true, false) => format!("{{{extra}}}"),
                (false, false) => format!("{{{labels},{extra}}}"),
            }
        };
        for (l, m) in &f.series {
            match f.kind {
                Kind::Counter => {
                    let _ = writeln!(out, "{base}_total{} {}", with(l, ""), number(m.value));
                }
                Kind::Gauge => {
                    let _ = writeln!(out, "{base}{} {}", with(l, ""), number(m.value));
                }
                Kind::Histogram => {
                    let b = bounds(f.unit);
                    let mut cumulative = 0u64;
                    for (bound, n) in b.iter().zip(&m.buckets) {
                        cumulative += n;
                        let _ = writeln!(
                            out,
                            "{base}_bucket{} {cumulative}",
                            with(l, &format!("le=\"{}\"", number(*bound)))
                        );
                    }
                    let _ = writeln!(out, "{base}_bucket{} {}", with(l, "le=\"+Inf\""), m.count);
                    // OpenMetrics wants `_count` only beside `_sum` (the `+Inf` bucket
                    // still carries the count).
                    if !(openmetrics && m.negative) {
                        let _ = writeln!(out, "{base}_sum{} {}", with(l, ""), number(m.value));
                        let _ = writeln!(out, "{base}_count{} {}", with(l, ""), m.count);
                    }
                }
            }
        }
    }
    if openmetrics {
        out.push_str("# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use luametrics_model::Tags;
    use luametrics_sketch::Sketch;

    fn s(
        metric_type: MetricType,
        kind: Kind,
        name: &str,
        tenant: Option<&str>,
        tags: &[(&str, &str)],
        values: &[f64],
    ) -> ExposedSeries {
        let mut sketch = Sketch::default();
        for v in values {
            sketch.add(*v);
        }
        ExposedSeries {
            metric_type,
            kind,
            tenant: tenant.map(str::to_string),
            name: name.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Tags>(),
            value: match kind {
                Kind::Gauge => *values.last().unwrap_or(&0.0),
                _ => values.iter().sum(),
            },
            count: values.len() as u64,
            sketch: (kind == Kind::Histogram).then_some(sketch),
        }
    }

    // Adversary round 25: buckets were filled by each sketch bucket's representative value,
    // up to 1% off the values it counts: values equal to a bound (5, 10, 100, 0.5 ms...)
    // always counted in the next bucket. A value on a bound is in that bound's bucket; one a
    // few percent above it is not.
    #[test]
    fn values_on_a_bound_count_in_its_bucket() {
        let series = [
            s(
                MetricType::User,
                Kind::Histogram,
                "shop.size",
                Some("a"),
                &[],
                &[5.0, 10.0, 100.0, 250.0, 1000.0, 2500.0],
            ),
            s(
                MetricType::User,
                Kind::Histogram,
                "shop.wait_ms",
                Some("a"),
                &[],
                &[0.5, 5.0, 10.0, 100.0],
            ),
            s(
                MetricType::User,
                Kind::Histogram,
                "shop.above",
                Some("a"),
                &[],
                &[5.2, 10.5],
            ),
        ];
        let text = encode(&series, Catalog::builtin(), false);
        for (bound, n) in [
            ("2.5", 0),
            ("5", 1),
            ("10", 2),
            ("25", 2),
            ("100", 3),
            ("250", 4),
        ] {
            let line = format!("user_shop_size_bucket{{tenant=\"a\",le=\"{bound}\"}} {n}\n");
            assert!(text.contains(&line), "{line}{text}");
        }
        for (bound, n) in [("0.0005", 1), ("0.005", 2), ("0.01", 3), ("0.1", 4)] {
            let line =
                format!("user_shop_wait_seconds_bucket{{tenant=\"a\",le=\"{bound}\"}} {n}\n");
            assert!(text.contains(&line), "{line}{text}");
        }
        for (bound, n) in [("5", 0), ("10", 1), ("25", 2)] {
            let line = format!("user_shop_above_bucket{{tenant=\"a\",le=\"{bound}\"}} {n}\n");
            assert!(text.contains(&line), "{line}{text}");
        }
    }

    // OpenMetrics: a histogram's `_sum` is a counter, so a histogram that saw a negative value
    // must leave it out, and `_count` with it (one tenant's negative value made the whole
    // exposition unparseable).
    #[test]
    fn a_negative_histogram_value_drops_the_openmetrics_sum_only() {
        let series = vec![
            s(
                MetricType::User,
                Kind::Histogram,
                "neg.h",
                Some("m"),
                &[],
                &[-5.0],
            ),
            s(
                MetricType::User,
                Kind::Histogram,
                "pos.h",
                Some("m"),
                &[],
                &[2.0, 3.0],
            ),
        ];
        let om = encode(&series, Catalog::builtin(), true);
        assert!(!om.contains("user_neg_h_sum"), "{om}");
        assert!(!om.contains("user_neg_h_count"), "{om}");
        assert!(
            om.contains("user_neg_h_bucket{tenant=\"m\",le=\"+Inf\"} 1"),
            "{om}"
        );
        assert!(om.contains("user_pos_h_sum{tenant=\"m\"} 5"), "{om}");
        let text = encode(&series, Catalog::builtin(), false);
        assert!(text.contains("user_neg_h_sum{tenant=\"m\"} -5"), "{text}");
    }

    #[test]
    fn names_units_and_formats() {
        let series = vec![
            s(
                MetricType::System,
                Kind::Histogram,
                "http.request.duration_ms",
                None,
                &[
                    ("route_id", "/v1/pool"),
                    ("method", "GET"),
                    ("status_class", "2xx"),
                ],
                &[1.0, 3.0, 700.0],
            ),
            s(
                MetricType::System,
                Kind::Histogram,
                "pipeline.exec.duration",
                Some("acme"),
                &[("pipeline_id", "p"), ("status", "ok")],
                &[2.0],
            ),
            s(
                MetricType::User,
                Kind::Counter,
                "invoice.processed_count",
                Some("acme"),
                &[("plan", "pro \"x\"")],
                &[2.0, 3.0],
            ),
            s(
                MetricType::User,
                Kind::Gauge,
                "queue.depth",
                Some("acme"),
                &[("le", "x")],
                &[4.0, 7.0],
            ),
            // Collides with the counter's family (same name after mapping): must not repeat series.
            s(
                MetricType::User,
                Kind::Counter,
                "invoice.processed.count",
                Some("acme"),
                &[("plan", "pro \"x\"")],
                &[1.0],
            ),
        ];
        let text = encode(&series, Catalog::builtin(), false);
        assert!(
            text.contains("# TYPE http_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("http_request_duration_seconds_bucket{method=\"GET\",route_id=\"/v1/pool\",status_class=\"2xx\",le=\"0.001\"} 1"), "{text}");
        assert!(text.contains("http_request_duration_seconds_bucket{method=\"GET\",route_id=\"/v1/pool\",status_class=\"2xx\",le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("http_request_duration_seconds_sum{method=\"GET\",route_id=\"/v1/pool\",status_class=\"2xx\"} 0.704"), "{text}");
        assert!(
            text.contains("# TYPE pipeline_exec_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("pipeline_exec_duration_seconds_count{pipeline_id=\"p\",status=\"ok\",tenant=\"acme\"} 1"), "{text}");
        assert!(
            text.contains("# TYPE user_invoice_processed_count_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "user_invoice_processed_count_total{plan=\"pro \\\"x\\\"\",tenant=\"acme\"} 6"
            ),
            "{text}"
        );
        assert!(
            text.contains("user_queue_depth{tag_le=\"x\",tenant=\"acme\"} 7"),
            "{text}"
        );
        assert_eq!(
            text.matches("user_invoice_processed_count_total{").count(),
            1
        );
        let om = encode(&series, Catalog::builtin(), true);
        assert!(
            om.contains("# TYPE user_invoice_processed_count counter"),
            "{om}"
        );
        assert!(
            om.contains("# UNIT http_request_duration_seconds seconds"),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"));
    }
}
