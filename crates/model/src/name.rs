//! Metric names: the dot-notation rule, and the kind and unit a name's suffix implies
//! (docs/data-model.md), shared by the policy, the catalog and the exposition.

use crate::{Kind, RejectReason, Unit};

/// Longest accepted metric name in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Checks the dot-notation rule `[a-z][a-z0-9_]*(\.[a-z0-9_]+)+`, at most 128 bytes.
pub fn validate_name(name: &str) -> Result<(), RejectReason> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN || !bytes[0].is_ascii_lowercase() {
        return Err(RejectReason::InvalidName);
    }
    let mut segments = 0usize;
    let mut segment_len = 0usize;
    for &b in bytes {
        match b {
            b'.' => {
                if segment_len == 0 {
                    return Err(RejectReason::InvalidName);
                }
                segments += 1;
                segment_len = 0;
            }
            b'a'..=b'z' | b'0'..=b'9' | b'_' => segment_len += 1,
            _ => return Err(RejectReason::InvalidName),
        }
    }
    if segment_len == 0 || segments == 0 {
        return Err(RejectReason::InvalidName);
    }
    Ok(())
}

/// The kind a name's suffix implies (docs/data-model.md), if any.
pub fn infer_kind(name: &str) -> Option<Kind> {
    let last = name.rsplit('.').next().unwrap_or(name);
    if last == "count" || last.ends_with("_count") {
        Some(Kind::Counter)
    } else if last == "active" || last == "inflight" {
        Some(Kind::Gauge)
    } else {
        None
    }
}

/// The unit a name's suffix implies (docs/data-model.md).
pub fn infer_unit(name: &str) -> Unit {
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.ends_with("_ms") || last == "ms" {
        Unit::Milliseconds
    } else if last.ends_with("_bytes") || last == "bytes" {
        Unit::Bytes
    } else if last == "count" || last.ends_with("_count") {
        Unit::Count
    } else {
        Unit::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a.b",
            "invoice.processed_count",
            "x1.y_2.z3",
            "auth.login.attempt",
        ] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        let long = format!("a.{}", "b".repeat(127));
        for bad in [
            "",
            "a",
            "A.b",
            "1a.b",
            "a..b",
            "a.b.",
            ".a.b",
            "a.B",
            "a-b.c",
            "a b.c",
            "é.b",
            long.as_str(),
        ] {
            assert_eq!(validate_name(bad), Err(RejectReason::InvalidName), "{bad}");
        }
        let max = format!("a.{}", "b".repeat(126));
        assert_eq!(validate_name(&max), Ok(()));
    }

    #[test]
    fn inference() {
        assert_eq!(infer_kind("invoice.processed_count"), Some(Kind::Counter));
        assert_eq!(infer_kind("webhook.emit.count"), Some(Kind::Counter));
        assert_eq!(infer_kind("lua.pool.active"), Some(Kind::Gauge));
        assert_eq!(infer_kind("queue.inflight"), Some(Kind::Gauge));
        assert_eq!(infer_kind("invoice.amount"), None);
        assert_eq!(infer_unit("http.request.duration_ms"), Unit::Milliseconds);
        assert_eq!(infer_unit("oidc.token.latency_ms"), Unit::Milliseconds);
        assert_eq!(infer_unit("http.request.size_bytes"), Unit::Bytes);
        assert_eq!(infer_unit("x.count"), Unit::Count);
        assert_eq!(infer_unit("x.amount"), Unit::None);
    }
}
