//! The system-metric catalog (`catalog/system-metrics.toml`, built in): every host and
//! luametrics metric with its kind, unit and allowed tags, so a typo or an undeclared tag in host
//! code is refused and counted instead of creating a stray series (docs/policy.md).

use crate::{infer_unit, validate_name, Kind, RejectReason, TagPolicy, Tags, Unit};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

/// The built-in catalog text, shipped inside the binary.
const BUILTIN: &str = include_str!("../catalog/system-metrics.toml");

/// Why a catalog file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("cannot read catalog {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown fields.
    #[error("catalog is not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    /// An entry breaks a rule.
    #[error("catalog entry `{name}`: {problem}")]
    Entry {
        /// The metric name of the entry.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    metric: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    kind: String,
    unit: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    help: String,
}

/// One declared system metric.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    /// Metric name.
    pub name: String,
    /// Declared kind.
    pub kind: Kind,
    /// Declared unit (inferred from the suffix when the file omits it).
    pub unit: Unit,
    /// Tag keys this metric may carry (besides the host's `tenant`).
    pub tags: Vec<String>,
    /// One-line description, used for Prometheus HELP and the dashboard.
    pub help: String,
}

/// Declared system metrics, so host instrumentation cannot drift into high-cardinality tags.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: HashMap<String, CatalogEntry>,
}

impl Catalog {
    /// The catalog shipped with luametrics (the host instrumentation kit of docs/policy.md plus luametrics' own metrics).
    pub fn builtin() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| {
            // The built-in file is checked by a unit test; failing here is a build defect.
            Catalog::from_toml_str(BUILTIN).expect("built-in catalog is valid")
        })
    }

    /// Parses and validates a catalog document.
    pub fn from_toml_str(text: &str) -> Result<Self, CatalogError> {
        let raw: RawCatalog = toml::from_str(text)?;
        let policy = TagPolicy::default();
        let mut entries = HashMap::new();
        for e in raw.metric {
            let bad = |problem: String| CatalogError::Entry {
                name: e.name.clone(),
                problem,
            };
            validate_name(&e.name).map_err(|_| bad("invalid metric name".into()))?;
            let kind: Kind = e.kind.parse().map_err(bad)?;
            let unit = match &e.unit {
                Some(u) => u.parse().map_err(bad)?,
                None => infer_unit(&e.name),
            };
            for t in &e.tags {
                if policy.is_denied_key(t) {
                    return Err(bad(format!("tag `{t}` is on the PII deny list")));
                }
            }
            let entry = CatalogEntry {
                name: e.name.clone(),
                kind,
                unit,
                tags: e.tags.clone(),
                help: e.help.clone(),
            };
            if entries.insert(e.name.clone(), entry).is_some() {
                return Err(bad("declared twice".into()));
            }
        }
        Ok(Self { entries })
    }

    /// Reads a catalog file (to replace or extend the built-in one).
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Adds the entries of `other`, replacing same-named ones.
    pub fn extend(&mut self, other: Catalog) {
        self.entries.extend(other.entries);
    }

    /// The entry for a name.
    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.get(name)
    }

    /// All entries, sorted by name.
    pub fn entries(&self) -> Vec<&CatalogEntry> {
        let mut v: Vec<_> = self.entries.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Number of declared metrics.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks a system point against its entry: kind and declared tags (`tenant` always allowed).
    /// Names outside the catalog pass (hosts may add their own), subject to the PII rules.
    pub fn check(&self, name: &str, kind: Kind, tags: &Tags) -> Result<(), RejectReason> {
        validate_name(name)?;
        let Some(entry) = self.entries.get(name) else {
            return Ok(());
        };
        if entry.kind != kind {
            return Err(RejectReason::KindMismatch);
        }
        for key in tags.keys() {
            if key != "tenant" && !entry.tags.iter().any(|t| t == key) {
                return Err(RejectReason::UndeclaredTag);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_names_every_seed_metric() {
        let c = Catalog::builtin();
        for name in [
            "auth.login.attempt",
            "oidc.token.latency_ms",
            "authz.rebac.traversal_depth",
            "pipeline.exec.duration",
            "pipeline.node.overhead",
            "lua.pool.active",
            "lua.pool.waiting",
            "lua.pool.exhausted",
            "webhook.delivery.duration_ms",
            "jwks.active_key.age_ms",
            "apikey.resolve.duration",
            "email.send.rate_limited.count",
            "admin.pipeline.secret.rotate.count",
            "http.response.size_bytes",
        ] {
            assert!(c.get(name).is_some(), "{name}");
        }
        assert!(c.len() >= 80);
        let apikey = c.get("apikey.resolve.duration").unwrap();
        assert_eq!(apikey.tags, vec!["key_type".to_string()]);
        assert_eq!(apikey.unit, Unit::Milliseconds);
        assert_eq!(
            c.get("oidc.token.latency_ms").unwrap().unit,
            Unit::Milliseconds
        );
    }

    #[test]
    fn undeclared_tags_and_kinds_are_rejected() {
        let c = Catalog::builtin();
        let mut tags = Tags::new();
        tags.insert("method".into(), "password".into());
        tags.insert("status".into(), "fail".into());
        assert_eq!(c.check("auth.login.attempt", Kind::Counter, &tags), Ok(()));
        tags.insert("tenant".into(), "acme".into());
        assert_eq!(c.check("auth.login.attempt", Kind::Counter, &tags), Ok(()));
        tags.insert("country".into(), "fr".into());
        assert_eq!(
            c.check("auth.login.attempt", Kind::Counter, &tags),
            Err(RejectReason::UndeclaredTag)
        );
        assert_eq!(
            c.check("auth.login.attempt", Kind::Gauge, &Tags::new()),
            Err(RejectReason::KindMismatch)
        );
        assert_eq!(c.check("host.custom.thing", Kind::Gauge, &tags), Ok(()));
    }

    #[test]
    fn bad_catalogs_name_the_entry() {
        let dup =
            "[[metric]]\nname='a.b'\nkind='counter'\n[[metric]]\nname='a.b'\nkind='counter'\n";
        let e = Catalog::from_toml_str(dup).unwrap_err().to_string();
        assert!(e.contains("a.b") && e.contains("twice"), "{e}");
        let pii = "[[metric]]\nname='a.b'\nkind='counter'\ntags=['email']\n";
        assert!(Catalog::from_toml_str(pii)
            .unwrap_err()
            .to_string()
            .contains("email"));
        let kind = "[[metric]]\nname='a.b'\nkind='meter'\n";
        assert!(Catalog::from_toml_str(kind)
            .unwrap_err()
            .to_string()
            .contains("meter"));
        let unknown = "[[metric]]\nname='a.b'\nkind='counter'\ncolour='red'\n";
        assert!(Catalog::from_toml_str(unknown).is_err());
    }
}
