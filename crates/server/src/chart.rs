//! Charts drawn as SVG on the server: no script, no font file, nothing fetched.

use std::fmt::Write;

const COLORS: &[&str] = &[
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A query parameter's value in an HTML attribute: percent-encoded (every byte but the
/// unreserved ones, so `&`, `+`, `#` and `%` in a tenant's id or a tag cannot cut or bend the
/// link), then HTML-escaped (a no-op after encoding, kept so the rule is one call).
pub fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    esc(&out)
}

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1e15 {
        format!("{v:.1e}")
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_time(ms: i64, span_ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (h, m) = (rem / 3600, (rem % 3600) / 60);
    if span_ms > 2 * 86_400_000 {
        // Days since the epoch are not readable; show month-day via a civil-date conversion.
        let (y, mo, d) = civil(days);
        let _ = y;
        format!("{mo:02}-{d:02}")
    } else {
        format!("{h:02}:{m:02}")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A line chart of named series over `[from, to]`, with axes, ticks and a legend.
pub fn lines(
    title: &str,
    unit: &str,
    from: i64,
    to: i64,
    series: &[(String, Vec<(i64, f64)>)],
) -> String {
    let (w, h, left, right, top, bottom) = (520.0, 200.0, 52.0, 10.0, 24.0, 36.0);
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    // Headroom above the highest point, within f64's range (a saturated sum is f64::MAX).
    let max = if max > 0.0 {
        (max * 1.1).min(f64::MAX)
    } else {
        1.0
    };
    let span = to.saturating_sub(from).max(1);
    let x = |t: i64| {
        left + (w - left - right) * ((t as f64 - from as f64) / span as f64).clamp(0.0, 1.0)
    };
    let y = |v: f64| h - bottom - (h - top - bottom) * (v / max).clamp(0.0, 1.0);
    let mut s = String::new();
    let _ = write!(s, "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">", esc(title));
    let _ = write!(
        s,
        "<text x=\"{left}\" y=\"14\" class=\"title\">{} ({})</text>",
        esc(title),
        esc(unit)
    );
    for i in 0..=4 {
        let v = max / 4.0 * i as f64;
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" class=\"grid\"/>",
            w - right,
            y(v),
            y(v)
        );
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
            left - 4.0,
            y(v) + 3.0,
            fmt_value(v)
        );
    }
    for i in 0..=4 {
        let t = from.saturating_add((span as i128 * i as i128 / 4) as i64);
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
            x(t),
            h - bottom + 14.0,
            fmt_time(t, span)
        );
    }
    let _ = write!(s, "<line x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{}\" class=\"axis\"/><line x1=\"{left}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" class=\"axis\"/>", h - bottom, w - right, h - bottom, h - bottom);
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let d: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        if points.len() == 1 {
            let _ = write!(
                s,
                "<circle data-series=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                esc(name),
                x(points[0].0),
                y(points[0].1)
            );
        } else {
            let _ = write!(s, "<polyline data-series=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/>", esc(name), d.join(" "));
        }
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" class=\"legend\" fill=\"{color}\">{}</text>",
            left + 8.0 + 120.0 * (i % 4) as f64,
            h - 6.0 - 12.0 * (i / 4) as f64 + 0.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// Horizontal stacked bars: per label, parts (e.g. overhead and script time) side by side.
pub fn stacked(title: &str, unit: &str, parts: &[&str], rows: &[(String, Vec<f64>)]) -> String {
    let row_h = 22.0;
    let (w, left, top) = (520.0, 150.0, 36.0);
    let h = top + row_h * rows.len().max(1) as f64 + 10.0;
    let max = rows
        .iter()
        .map(|(_, v)| v.iter().sum::<f64>())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut s = String::new();
    let _ = write!(s, "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">", esc(title));
    let _ = write!(
        s,
        "<text x=\"4\" y=\"14\" class=\"title\">{} ({})</text>",
        esc(title),
        esc(unit)
    );
    for (i, p) in parts.iter().enumerate() {
        let _ = write!(s, "<rect x=\"{}\" y=\"20\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"29\" class=\"legend\">{}</text>", 4.0 + 150.0 * i as f64, COLORS[i], 18.0 + 150.0 * i as f64, esc(p));
    }
    for (r, (label, values)) in rows.iter().enumerate() {
        let yy = top + row_h * r as f64;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            yy + 14.0,
            esc(label)
        );
        let mut x = left;
        for (i, v) in values.iter().enumerate() {
            let bw = (w - left - 60.0) * v / max;
            let _ = write!(s, "<rect data-series=\"{}\" data-part=\"{}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"16\" fill=\"{}\"><title>{}: {}</title></rect>", esc(label), esc(parts[i]), yy + 2.0, COLORS[i], esc(parts[i]), fmt_value(*v));
            x += bw;
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\">{}</text>",
            x + 4.0,
            yy + 14.0,
            fmt_value(values.iter().sum())
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded_then_escaped() {
        assert_eq!(q("a&b+c#d%e f"), "a%26b%2Bc%23d%25e%20f");
        assert_eq!(q("€<\"'"), "%E2%82%AC%3C%22%27");
        assert_eq!(q("plain-name_1.x~"), "plain-name_1.x~");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_454), (2026, 1, 1));
    }

    #[test]
    fn charts_are_escaped_and_carry_their_series() {
        let svg = lines(
            "a<b",
            "ms",
            0,
            60_000,
            &[("x\"y".into(), vec![(0, 1.0), (60_000, 2.0)])],
        );
        assert!(svg.contains("a&lt;b") && svg.contains("data-series=\"x&quot;y\""));
        let svg = stacked(
            "t",
            "ms",
            &["overhead", "script"],
            &[("s.lua".into(), vec![1.0, 3.0])],
        );
        assert!(svg.contains("data-part=\"overhead\"") && svg.contains("data-part=\"script\""));
    }
}
