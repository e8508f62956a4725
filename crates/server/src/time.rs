//! Times and durations as users type them: `now`, `-1h`, `-30m`, epoch milliseconds; `10s`,
//! `1m`, `1h`, `1d`. Shared by the query API and the CLI.

/// Milliseconds of a duration like `10s`, `1m`, `1h`, `1d`, `250ms` or a plain number of ms.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let mult = match unit {
        "" | "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3_600e3,
        "d" => 86_400e3,
        _ => return None,
    };
    Some((n * mult) as i64)
}

/// Epoch milliseconds of `now`, a relative time like `-1h`, or epoch milliseconds.
pub fn parse_time_ms(s: &str, now_ms: i64) -> Option<i64> {
    match s.trim() {
        "now" => Some(now_ms),
        rel if rel.starts_with('-') => parse_duration_ms(&rel[1..]).map(|d| now_ms - d),
        abs => abs.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse_duration_ms("1m"), Some(60_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("2d"), Some(172_800_000));
        assert_eq!(parse_duration_ms("5x"), None);
        assert_eq!(parse_duration_ms("-5s"), None);
        assert_eq!(parse_time_ms("now", 10), Some(10));
        assert_eq!(parse_time_ms("-1s", 5_000), Some(4_000));
        assert_eq!(parse_time_ms("1700000000000", 0), Some(1_700_000_000_000));
        assert_eq!(parse_time_ms("yesterday", 0), None);
    }
}
