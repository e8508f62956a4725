//! The tag policy (docs/policy.md): denied keys, PII-shaped values, per-tenant limits and
//! reserved prefixes, applied to every point; and `CheckedSeries`, the proof a series passed it
//! that the recorder's batch path requires.

use crate::{infer_kind, validate_name, Kind, RejectReason, Tags};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Tag keys that carry PII or credentials (docs/policy.md); matched case-insensitively, `-` read as `_`.
pub const DEFAULT_DENIED_KEYS: &[&str] = &[
    "user_id",
    "userid",
    "email",
    "ip",
    "ip_address",
    "user_agent",
    "authorization",
    "cookie",
    "token",
    "password",
    "secret",
    "redirect_uri",
    "api_key",
    "key_prefix",
    "session_id",
    "phone",
];

/// Name prefixes owned by the host and luametrics; user metrics may not use them.
pub const RESERVED_PREFIXES: &[&str] = &[
    "auth.",
    "oidc.",
    "oauth.",
    "authz.",
    "rebac.",
    "pipeline.",
    "lua.",
    "helpers.",
    "webhook.",
    "qstash.",
    "jwks.",
    "apikey.",
    "email.",
    "redis.",
    "admin.",
    "http.",
    "luametrics.",
];

/// Tag keys only the host may set: the tenant is never chosen by a script.
const HOST_ONLY_KEYS: &[&str] = &["tenant", "tenant_id"];

/// The tag of the overflow series (OpenTelemetry's rule): a script's own `overflow` tag would
/// look exactly like the series its points fold into past a limit.
pub const OVERFLOW_KEY: &str = "overflow";

/// Per-tenant limits on user metrics (docs/policy.md); every field is configurable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Tag keys per point.
    pub max_tags: usize,
    /// Bytes per tag key.
    pub max_key_len: usize,
    /// Bytes per tag value.
    pub max_value_len: usize,
    /// Sustained points per minute per tenant.
    pub points_per_minute: u32,
    /// Burst of points a tenant may send at once.
    pub burst: u32,
    /// Points per script execution.
    pub max_points_per_execution: u32,
    /// Distinct tag sets per (tenant, metric name) before points fold into the overflow series.
    pub max_series_per_name: usize,
    /// Distinct series per tenant before points fold into the overflow series.
    pub max_series_per_tenant: usize,
    /// Distinct metric names (per kind) a tenant may use in the life of the process: each one
    /// claims its exported names for good and may hold an overflow series, so without this
    /// bound one tenant could make the process hold any number of them (`name_limit`).
    pub max_names_per_tenant: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tags: 8,
            max_key_len: 40,
            max_value_len: 64,
            points_per_minute: 6_000,
            burst: 1_000,
            max_points_per_execution: 250,
            max_series_per_name: 1_000,
            max_series_per_tenant: 10_000,
            max_names_per_tenant: 1_000,
        }
    }
}

/// Tag values up to this length are scanned for secrets before their length is judged, so a
/// long secret is reported as PII; a longer value is refused as too long without a scan (and a
/// host need not copy it to know).
pub const MAX_PII_SCAN_LEN: usize = 4 * 1024;

/// The cardinality and PII rules applied to every point (docs/policy.md).
#[derive(Debug, Clone)]
pub struct TagPolicy {
    denied_keys: HashSet<String>,
    /// Limits applied to user metrics.
    pub limits: Limits,
    /// Which policy this is: a [`CheckedSeries`] carries the stamp of the policy that checked
    /// it, so a sink can refuse a series another (laxer) policy let through. Clones share it.
    stamp: u64,
}

/// A user series (name, kind, tags) that passed every rule of a [`TagPolicy`]. Only
/// [`TagPolicy::check_series`] makes one, and it remembers which policy did
/// ([`TagPolicy::vouches_for`]): a sink that takes it knows the PII and tag rules ran.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckedSeries {
    name: String,
    kind: Kind,
    tags: Tags,
    stamp: u64,
    /// The tag limits it was checked under (tags, key bytes, value bytes): `limits` is a
    /// public field, so a clone of the policy with the same stamp may have laxer ones.
    checked_under: [usize; 3],
}

impl CheckedSeries {
    /// The metric name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The metric kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The tags, canonical (sorted, one value per key).
    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    /// Name, kind and tags, for a sink that keys its series by them.
    pub fn into_parts(self) -> (String, Kind, Tags) {
        (self.name, self.kind, self.tags)
    }
}

/// Stamps of policies made in this process (0 is never given).
static STAMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Default for TagPolicy {
    fn default() -> Self {
        Self::new(
            DEFAULT_DENIED_KEYS.iter().map(|s| s.to_string()),
            Limits::default(),
        )
    }
}

fn normalise_key(key: &str) -> String {
    key.to_ascii_lowercase().replace('-', "_")
}

impl TagPolicy {
    /// A policy with a custom denied-key list (replacing the default one) and limits.
    pub fn new(denied_keys: impl IntoIterator<Item = String>, limits: Limits) -> Self {
        Self {
            denied_keys: denied_keys.into_iter().map(|k| normalise_key(&k)).collect(),
            limits,
            stamp: STAMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Whether a key is on the denied list.
    pub fn is_denied_key(&self, key: &str) -> bool {
        self.denied_keys.contains(&normalise_key(key))
    }

    /// Name, prefix and kind rules for a user metric.
    pub fn check_user_name(&self, name: &str, kind: Kind) -> Result<(), RejectReason> {
        validate_name(name)?;
        if RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return Err(RejectReason::ReservedPrefix);
        }
        match infer_kind(name) {
            Some(implied) if implied != kind => Err(RejectReason::KindMismatch),
            _ => Ok(()),
        }
    }

    /// Checks a user series against every name and tag rule (name, reserved prefixes, kind
    /// suffixes, tag count and sizes, denied keys, PII in values) and vouches for it: the only
    /// way to get a [`CheckedSeries`], which is what sinks take from executions.
    pub fn check_series(
        &self,
        name: &str,
        kind: Kind,
        tags: Vec<(String, String)>,
    ) -> Result<CheckedSeries, RejectReason> {
        self.check_user_name(name, kind)?;
        self.check_user_tags(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let count = tags.len();
        let tags: Tags = tags.into_iter().collect();
        if tags.len() != count {
            // A key given twice: not one series.
            return Err(RejectReason::InvalidTags);
        }
        Ok(CheckedSeries {
            name: name.to_string(),
            kind,
            tags,
            stamp: self.stamp,
            checked_under: self.tag_limits(),
        })
    }

    /// Whether `series` was checked by this policy (or a clone of it with the same limits),
    /// not another one.
    pub fn vouches_for(&self, series: &CheckedSeries) -> bool {
        series.stamp == self.stamp && series.checked_under == self.tag_limits()
    }

    fn tag_limits(&self) -> [usize; 3] {
        let l = &self.limits;
        [l.max_tags, l.max_key_len, l.max_value_len]
    }

    /// Value rules: finite, and never negative for a counter.
    pub fn check_value(kind: Kind, value: f64) -> Result<(), RejectReason> {
        if !value.is_finite() {
            return Err(RejectReason::InvalidValue);
        }
        if kind == Kind::Counter && value < 0.0 {
            return Err(RejectReason::NegativeCounter);
        }
        Ok(())
    }

    /// Tag rules for a user metric: count, lengths, key syntax, host-only keys, PII keys and values.
    pub fn check_user_tags<'a>(
        &self,
        tags: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), RejectReason> {
        if tags.len() > self.limits.max_tags {
            return Err(RejectReason::TooManyTags);
        }
        for (k, v) in tags {
            if k.len() > self.limits.max_key_len {
                return Err(RejectReason::TagKeyTooLong);
            }
            self.check_tag(k, v, true)?;
            // PII first: a long secret is reported as what it is, not merely as too long.
            if v.len() <= MAX_PII_SCAN_LEN && looks_sensitive(v) {
                return Err(RejectReason::PiiTag);
            }
            if v.len() > self.limits.max_value_len {
                return Err(RejectReason::TagValueTooLong);
            }
        }
        Ok(())
    }

    /// Tag rules shared by system metrics: key syntax and PII (no per-tenant limits).
    pub fn check_system_tags(&self, tags: &Tags) -> Result<(), RejectReason> {
        for (k, v) in tags {
            self.check_tag(k, v, false)?;
            if looks_sensitive(v) {
                return Err(RejectReason::PiiTag);
            }
        }
        Ok(())
    }

    fn check_tag(&self, key: &str, value: &str, user: bool) -> Result<(), RejectReason> {
        if !valid_key(key) {
            return Err(RejectReason::InvalidTags);
        }
        // Prometheus reads an empty label as no label: `{k=""}` and `{}` would be two of our
        // series but one of its, and a scrape would keep only one of their values (a host's
        // point too: adversary round 13 printed `a_e_total 1` beside `a_e_total{k=""} 1`).
        if value.is_empty() {
            return Err(RejectReason::InvalidTags);
        }
        // SQLite's text functions stop at NUL (a group_by would merge `a\0b` into `a`), and
        // control characters have no place in a label.
        if value.chars().any(char::is_control) {
            return Err(RejectReason::InvalidTags);
        }
        // Zero-width and bidirectional characters make two values look like one, hide what a
        // value reads as, and slipped PII past the shape checks (`a\u{AD}@b.com`): the tenant
        // id's rule.
        if value.chars().any(crate::tenant::is_invisible_format) {
            return Err(RejectReason::InvalidTags);
        }
        // One visible value, one text: `café` composed and decomposed would be two series
        // that print alike; and a value of blanks alone reads as none (for every point).
        if !unicode_normalization::is_nfc(value) || value.trim().is_empty() {
            return Err(RejectReason::InvalidTags);
        }
        // Keys are compared without case: `TENANT="x"` beside the real `tenant` label reads
        // as the tenant to a person or a case-insensitive query.
        let lower = key.to_ascii_lowercase();
        if user && HOST_ONLY_KEYS.contains(&lower.as_str()) {
            return Err(RejectReason::InvalidTags);
        }
        if user && (crate::is_reserved_label(&lower) || lower == OVERFLOW_KEY) {
            return Err(RejectReason::ReservedTag);
        }
        // A host's tag may not take a label the exposition prints itself (the sample label of
        // histograms and summaries, or a reserved `__` name): two labels of one name would make
        // `/metrics` invalid. (`job` and `instance` stay the host's: Prometheus renames them.)
        if !user && (lower == "le" || lower == "quantile" || key.starts_with("__")) {
            return Err(RejectReason::ReservedTag);
        }
        if self.is_denied_key(key) {
            return Err(RejectReason::PiiTag);
        }
        Ok(())
    }

    /// Every rule for one user point, in the order scripts see them.
    pub fn check_user_point(
        &self,
        name: &str,
        kind: Kind,
        value: f64,
        tags: &Tags,
    ) -> Result<(), RejectReason> {
        self.check_user_name(name, kind)?;
        Self::check_value(kind, value)?;
        self.check_user_tags(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// Prometheus-compatible label names, and never the `__` prefix it reserves.
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && !key.starts_with("__")
}

/// Whether a tag value is shaped like PII or a secret: e-mail, IP address, JWT, bearer/basic
/// credential, UUID, or a long high-entropy token (hex or base64 of 24+ characters).
pub fn looks_sensitive(value: &str) -> bool {
    if value.is_ascii() {
        return looks_sensitive_text(value);
    }
    // Fullwidth and other compatibility forms (`ａ＠ｂ．ｃｏｍ`, `１０．０．０．１`) read as what they
    // fold to, ideographic full stops as dots and any script's digits as digits: judge that
    // too.
    use unicode_normalization::UnicodeNormalization;
    let folded: String = value
        .nfkc()
        .map(|c| match c {
            '\u{3002}' | '\u{FF61}' | '\u{FE52}' => '.',
            c => fold_digit(c).unwrap_or(c),
        })
        .collect();
    looks_sensitive_text(value) || looks_sensitive_text(&folded)
}

/// A decimal digit of any of the common scripts as its ASCII digit.
fn fold_digit(c: char) -> Option<char> {
    const ZEROS: [u32; 12] = [
        0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
        0x0D66,
    ];
    let u = c as u32;
    ZEROS
        .iter()
        .find(|z| (**z..**z + 10).contains(&u))
        .and_then(|z| char::from_digit(u - z, 10))
}

/// The value as a whole, each word of it (`Jane <jane@example.com>`, `{uuid}`,
/// `urn:uuid:...`), each piece of it between URL and query punctuation (`mailto:x@y?s=1`,
/// `to=x@y&a=1`, `http://10.0.0.1/`), each of those without the punctuation that ends a
/// sentence or starts a field (`x@y.`, `id:<uuid>`, `x@y:25`), and the value percent-decoded
/// (`jane%40example.com`): each shape check wants the exact shape, and a character attached
/// to it let it through (adversary round 25).
fn looks_sensitive_text(value: &str) -> bool {
    fn words<'a>(value: &'a str, seps: &'static str) -> impl Iterator<Item = &'a str> {
        value
            .split(move |c: char| c.is_whitespace() || seps.contains(c))
            .filter(|w| !w.is_empty())
    }
    let coarse = words(value, "<>(){}[]\"',;");
    let fine = words(value, "<>(){}[]\"',;?!&=|\\#*/");
    std::iter::once(value)
        .chain(coarse)
        .chain(fine)
        .any(word_looks_sensitive)
        || percent_decoded(value).is_some_and(|d| {
            std::iter::once(d.as_str())
                .chain(words(&d, "<>(){}[]\"',;?!&=|\\#*/"))
                .any(word_looks_sensitive)
        })
}

/// One word as it is, trimmed of what ends a sentence, and without a field name before a
/// colon (`src:`, `id:`, `mailto:`) or a port after it.
fn word_looks_sensitive(word: &str) -> bool {
    let trimmed = word.trim_matches(|c: char| matches!(c, '.' | ':' | '!' | '?'));
    looks_sensitive_ascii(word)
        || looks_sensitive_ascii(trimmed)
        || trimmed
            .split_once(':')
            .is_some_and(|(_, rest)| !rest.is_empty() && looks_sensitive_ascii(rest))
        || trimmed.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && is_email(host)
        })
}

/// `value` with its `%XX` escapes decoded, when it has any and decodes to text.
fn percent_decoded(value: &str) -> Option<String> {
    if !value.contains('%') {
        return None;
    }
    let b = value.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut decoded = false;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                decoded = true;
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    decoded.then(|| String::from_utf8(out).ok()).flatten()
}

fn looks_sensitive_ascii(value: &str) -> bool {
    let v = value.trim();
    is_email(v)
        || is_ip(v)
        || is_jwt(v)
        || is_credential(v)
        || is_uuid(v)
        || v.get(..9)
            .is_some_and(|p| p.eq_ignore_ascii_case("urn:uuid:"))
            && is_uuid(&v[9..])
        || is_long_hex(v)
        || is_high_entropy(v)
}

fn is_email(v: &str) -> bool {
    let Some((local, domain)) = v.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !local.contains(char::is_whitespace)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
}

fn is_ip(v: &str) -> bool {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    if v.parse::<IpAddr>().is_ok() || v.parse::<SocketAddr>().is_ok() {
        return true;
    }
    // Dotted quads with leading zeros (`192.168.001.010`), which the parser refuses.
    let quad = v.split([':', '/']).next().unwrap_or(v);
    let parts: Vec<&str> = quad.split('.').collect();
    if parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 3
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u16>().is_ok_and(|n| n <= 255)
        })
    {
        return true;
    }
    // `fe80::1%eth0`, `[::1]`, `10.0.0.1:8080` and CIDR forms.
    let stripped = v.trim_start_matches('[').trim_end_matches(']');
    let base = stripped.split(['%', '/']).next().unwrap_or(stripped);
    if base.parse::<IpAddr>().is_ok() {
        return true;
    }
    if let Some((host, port)) = v.rsplit_once(':') {
        return port.parse::<u16>().is_ok() && host.parse::<Ipv4Addr>().is_ok();
    }
    false
}

fn is_b64url(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '='
}

fn is_jwt(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts[0].starts_with("eyJ")
        && parts[..2]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(is_b64url))
        && parts[2].chars().all(is_b64url)
}

fn is_credential(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    ["bearer", "basic", "token", "digest"].iter().any(|p| {
        if !lower.starts_with(p) || v.len() <= p.len() + 8 {
            return false;
        }
        match lower.as_bytes()[p.len()] {
            b' ' => true,
            // `token:...`, `bearer=...`: only when what follows reads as a secret (one run of
            // token characters with a digit or both cases), not `digest:weekly-summary`.
            b':' | b'=' => {
                // The separator is one ASCII byte: a character boundary after it.
                let rest = &v[p.len() + 1..];
                rest.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._~+/=-".contains(c))
                    && (rest.bytes().any(|b| b.is_ascii_digit())
                        || (rest.bytes().any(|b| b.is_ascii_uppercase())
                            && rest.bytes().any(|b| b.is_ascii_lowercase())))
            }
            _ => false,
        }
    })
}

fn is_uuid(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_long_hex(v: &str) -> bool {
    let hex = v.strip_prefix("0x").unwrap_or(v);
    hex.len() >= 24 && hex.bytes().all(|c| c.is_ascii_hexdigit())
}

fn is_high_entropy(v: &str) -> bool {
    if v.len() < 24
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_'))
    {
        return false;
    }
    let has_digit = v.bytes().any(|c| c.is_ascii_digit());
    let has_upper = v.bytes().any(|c| c.is_ascii_uppercase());
    let has_lower = v.bytes().any(|c| c.is_ascii_lowercase());
    if !(has_digit && (has_upper || has_lower)) {
        return false;
    }
    shannon_bits_per_char(v) >= 3.7
}

fn shannon_bits_per_char(v: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in v.bytes() {
        counts[b as usize] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(pairs: &[(&str, &str)]) -> Result<(), RejectReason> {
        TagPolicy::default().check_user_point(
            "invoice.processed_count",
            Kind::Counter,
            1.0,
            &tags(pairs),
        )
    }

    #[test]
    fn every_denied_key_is_refused_in_any_case() {
        for key in DEFAULT_DENIED_KEYS {
            assert_eq!(check(&[(key, "x")]), Err(RejectReason::PiiTag), "{key}");
            let upper = key.to_ascii_uppercase();
            assert_eq!(
                check(&[(&upper, "x")]),
                Err(RejectReason::PiiTag),
                "{upper}"
            );
        }
        let custom = TagPolicy::new(["Customer_Ref".to_string()], Limits::default());
        assert!(custom.is_denied_key("customer_ref"));
        assert!(!custom.is_denied_key("email"));
    }

    #[test]
    fn every_denied_value_shape_is_refused() {
        let cases = [
            ("email", "jane.doe@example.com"),
            ("ipv4", "192.168.10.4"),
            ("ipv4 with port", "10.0.0.1:8080"),
            ("ipv6", "2001:db8::8a2e:370:7334"),
            ("ipv6 bracketed", "[::1]"),
            ("ipv6 zone", "fe80::1%eth0"),
            (
                "jwt",
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            ),
            ("bearer", "Bearer abcdefghijklmnop"),
            ("basic", "basic dXNlcjpwYXNzd29yZA=="),
            ("uuid", "123e4567-e89b-12d3-a456-426614174000"),
            ("hex", "deadbeefdeadbeefdeadbeef00"),
            ("base64", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
            ("base64 padded", "QmFzZTY0IGVuY29kZWQgdG9rZW4x=="),
            // Compatibility forms read as what they fold to (adversary round 7).
            ("fullwidth email", "jane\u{FF20}example.com"),
            ("fullwidth ipv4", "\u{FF11}\u{FF10}.0.0.1"),
            // Adversary round 8.
            ("ipv4 leading zeros", "192.168.001.010"),
            ("uuid in braces", "{123e4567-e89b-12d3-a456-426614174000}"),
            ("urn uuid", "urn:uuid:123e4567-e89b-12d3-a456-426614174000"),
            ("ideographic dots", "jane@example\u{3002}com"),
            ("ideographic ipv4", "10\u{3002}0\u{3002}0\u{3002}1"),
            ("arabic-indic ipv4", "\u{0661}\u{0660}.\u{0660}.\u{0660}.\u{0661}"),
            ("email in angle brackets", "<jane@example.com>"),
            ("named email", "Jane <jane@example.com>"),
            // Adversary round 25: punctuation attached to the shape.
            ("email, full stop", "jane@example.com."),
            ("email, question", "jane@example.com?"),
            ("email, exclamation", "jane@example.com!"),
            ("email, slash", "jane@example.com/"),
            ("email with port", "jane@example.com:25"),
            ("mailto", "mailto:jane@example.com?subject=x"),
            ("email in a query", "to=jane@example.com&x=1"),
            ("percent-encoded email", "jane%40example.com"),
            ("ipv4, full stop", "10.0.0.1."),
            ("ipv4 field", "ip=10.0.0.1"),
            ("ipv4 prefixed", "src:10.0.0.1"),
            ("ipv4 url", "http://10.0.0.1/"),
            ("ipv6, full stop", "2001:db8::1."),
            ("ipv6, exclamation", "2001:db8::1!"),
            ("uuid prefixed", "id:123e4567-e89b-12d3-a456-426614174000"),
            ("uuid, full stop", "123e4567-e89b-12d3-a456-426614174000."),
            (
                "jwt, full stop",
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U.",
            ),
            (
                "jwt prefixed",
                "jwt:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            ),
            ("bearer, colon", "bearer:sk4Fj29dKq81Lmz0Xw"),
            ("token, equals", "token=Zm9vYmFyYmF6cXV4"),
        ];
        for (what, value) in cases {
            assert!(looks_sensitive(value), "{what}: {value}");
            assert_eq!(
                check(&[("plan", value)]),
                Err(RejectReason::PiiTag),
                "{what}"
            );
        }
    }

    #[test]
    fn ordinary_low_cardinality_values_pass() {
        for value in [
            "pro",
            "enterprise_annual_plan_v2",
            "password",
            "2xx",
            "user.login",
            "checkout-service-eu-west",
            "1.5",
            "true",
            "EU",
            "abc@",
            "café",
            "ｐｒｏ",
            "GET /api/orders",
            "plan=pro&region=eu",
            "v1.2.3",
            "2024-01-01T10:00:00",
            "10.5%",
            "100%",
            "https://example.com/checkout?step=2",
            "token:short",
            "ratio:0.75",
            "digest:weekly-summary",
            "basic:quarterly",
            "token:refresh-failed",
            "token=expired_session",
            "tokenü-quarterly-digest",
            "bearerü:x",
        ] {
            assert!(!looks_sensitive(value), "{value}");
        }
    }

    #[test]
    fn every_limit_and_reason() {
        let p = TagPolicy::default();
        let nine: Vec<(String, String)> = (0..9).map(|i| (format!("k{i}"), "v".into())).collect();
        let nine: Vec<(&str, &str)> = nine.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(check(&nine), Err(RejectReason::TooManyTags));
        assert_eq!(check(&nine[..8]), Ok(()));
        let k41 = "k".repeat(41);
        assert_eq!(check(&[(&k41, "v")]), Err(RejectReason::TagKeyTooLong));
        assert_eq!(check(&[(&k41[..40], "v")]), Ok(()));
        let v65 = "v".repeat(65);
        assert_eq!(check(&[("k", &v65)]), Err(RejectReason::TagValueTooLong));
        assert_eq!(check(&[("k", &v65[..64])]), Ok(()));
        assert_eq!(check(&[("tenant", "acme")]), Err(RejectReason::InvalidTags));
        assert_eq!(
            check(&[("tenant_id", "acme")]),
            Err(RejectReason::InvalidTags)
        );
        assert_eq!(check(&[("bad-key!", "v")]), Err(RejectReason::InvalidTags));
        assert_eq!(check(&[("__name__", "v")]), Err(RejectReason::InvalidTags));
        assert_eq!(check(&[("", "v")]), Err(RejectReason::InvalidTags));
        // Empty (Prometheus reads it as no label) or with control characters (SQLite's text
        // functions stop at NUL): adversary round 6.
        assert_eq!(check(&[("k", "")]), Err(RejectReason::InvalidTags));
        assert_eq!(check(&[("k", "a\0b")]), Err(RejectReason::InvalidTags));
        assert_eq!(
            check(&[("k", "a\u{1b}[2J")]),
            Err(RejectReason::InvalidTags)
        );
        // Adversary round 7: invisible characters (which also slipped PII past the shape
        // checks), reserved keys in another case, and the overflow series' own tag.
        for v in [
            "a\u{AD}b",
            "pro\u{200B}",
            "\u{202E}gnp.exe",
            "x\u{FEFF}",
            // Adversary round 8: default-ignorables, separators, blanks, decomposed text.
            "jane@exa\u{34F}mple.com",
            "jane@example.c\u{E0100}om",
            "10.0.0.1\u{FE0F}",
            "a\u{3164}",
            "a\u{2800}",
            "a\u{2028}b",
            "a\u{1D173}",
            "cafe\u{301}",
            " ",
            "\u{A0}",
        ] {
            assert_eq!(check(&[("k", v)]), Err(RejectReason::InvalidTags), "{v:?}");
        }
        assert_eq!(check(&[("TENANT", "x")]), Err(RejectReason::InvalidTags));
        assert_eq!(check(&[("Tenant_Id", "x")]), Err(RejectReason::InvalidTags));
        for key in ["LE", "Quantile", "overflow", "OVERFLOW"] {
            assert_eq!(
                check(&[(key, "x")]),
                Err(RejectReason::ReservedTag),
                "{key}"
            );
        }
        assert_eq!(
            p.check_user_name("Invoice.count", Kind::Counter),
            Err(RejectReason::InvalidName)
        );
        for prefix in RESERVED_PREFIXES {
            let name = format!("{prefix}custom");
            assert_eq!(
                p.check_user_name(&name, Kind::Gauge),
                Err(RejectReason::ReservedPrefix),
                "{name}"
            );
        }
        assert_eq!(
            p.check_user_name("queue.depth.count", Kind::Gauge),
            Err(RejectReason::KindMismatch)
        );
        assert_eq!(
            TagPolicy::check_value(Kind::Gauge, f64::NAN),
            Err(RejectReason::InvalidValue)
        );
        assert_eq!(
            TagPolicy::check_value(Kind::Histogram, f64::INFINITY),
            Err(RejectReason::InvalidValue)
        );
        assert_eq!(
            TagPolicy::check_value(Kind::Counter, -1.0),
            Err(RejectReason::NegativeCounter)
        );
        assert_eq!(TagPolicy::check_value(Kind::Gauge, -1.0), Ok(()));
    }

    #[test]
    fn reasons_round_trip() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::parse(r.as_str()), Some(r));
            assert_eq!(RejectReason::ALL[r.index()], r);
        }
    }

    // Adversary round 13: a host's point could carry an empty, blank or decomposed value, or
    // a sample label in another case (`Le`): `a_e_total 1` printed beside `a_e_total{k=""} 1`,
    // one series to Prometheus. The value rules hold for every point.
    #[test]
    fn a_hosts_tags_meet_the_value_rules_too() {
        let policy = TagPolicy::default();
        for (k, v, reason) in [
            ("k", "", RejectReason::InvalidTags),
            ("k", "  ", RejectReason::InvalidTags),
            ("k", "cafe\u{301}", RejectReason::InvalidTags),
            ("Le", "1", RejectReason::ReservedTag),
            ("QUANTILE", "1", RejectReason::ReservedTag),
        ] {
            assert_eq!(
                policy.check_system_tags(&tags(&[(k, v)])),
                Err(reason),
                "{k}={v:?}"
            );
        }
        // A host keeps `job` and `instance` (Prometheus renames them), and plain values pass.
        assert_eq!(
            policy.check_system_tags(&tags(&[("job", "api"), ("k", "caf\u{e9}")])),
            Ok(())
        );
    }
}
