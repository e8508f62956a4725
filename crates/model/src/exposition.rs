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
    // Exactly sized: these are held for as long as the metric is used, and charged so.
    suffixes
        .iter()
        .map(|s| {
            let mut n = String::with_capacity(base.len() + s.len());
            n.push_str(&base);
            n.push_str(s);
            n
        })
        .collect()
}

/// Which metric holds each exported name. A metric whose names another metric (another kind,
/// or another name mapping to the same Prometheus name) already holds is refused with
/// [`RejectReason::NameConflict`], so the exposition never prints two families under one name.
/// Names are claimed for the life of the process (the exposition keeps them as long).
///
/// Tenants never meet each other's names: a tenant's metric is refused only for a conflict
/// with the tenant's own metrics. A tenant's metric whose names another tenant's (or a host's)
/// metric already prints is taken, stored and queried as usual, but *withheld* from `/metrics`
/// ([`ExportedNames::is_exported`]): otherwise one tenant could block another's metric, and
/// learn which names other tenants use by probing (adversary round 7).
#[derive(Debug, Default)]
pub struct ExportedNames {
    inner: RwLock<Names>,
}

#[derive(Debug, Default)]
struct Names {
    /// Exported name -> the metric printing it.
    owners: HashMap<String, (MetricType, String, Kind)>,
    /// Metrics whose names are all held by themselves: printed on `/metrics`.
    claimed: HashSet<(MetricType, String, Kind)>,
    /// Each tenant's user metrics and the exported names they take, bounded per tenant.
    tenants: HashMap<String, TenantNames>,
    /// Tenants using each claimed metric (`None`: a host claimed it, held for good), and its
    /// unit, which its exported names depend on.
    users: HashMap<(MetricType, String, Kind), (Option<usize>, Unit)>,
}

#[derive(Debug, Default)]
struct TenantNames {
    /// The tenant's metrics, each with whether it counts among its metric's users (false:
    /// withheld when claimed, so it holds nothing to give back).
    used: HashMap<(MetricType, String, Kind), (bool, Unit)>,
    exported: HashMap<String, (String, Kind)>,
}

/// Who claims a user metric's names, and how many metrics that tenant may use.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// Its bound of distinct metrics (name and kind): past it, [`RejectReason::NameLimit`].
    pub max_names: usize,
}

/// What the names of metrics hold, so they count against a memory bound like the series do
/// (adversary round 8: 1,000 long histogram names per tenant held ~4 MB each, uncharged). An
/// estimate of the heap, as the recorder's charges are: each string's bytes plus an
/// allocator block's overhead, each map slot at twice its size (a hash map's load factor).
mod cost {
    use super::*;
    use std::mem::size_of;

    /// Per heap block: the allocator's header and rounding.
    const BLOCK: usize = 16;

    fn text(s: &str) -> usize {
        s.len() + BLOCK
    }

    fn slot<T>() -> usize {
        2 * size_of::<T>() + 1
    }

    type Key = (MetricType, String, Kind);

    /// A tenant's own record of one metric: its entry in `used` and its exported names.
    pub(super) fn tenant_part(name: &str, exported: &[String]) -> usize {
        slot::<(Key, (bool, Unit))>()
            + text(name)
            + exported
                .iter()
                .map(|n| slot::<(String, (String, Kind))>() + text(n) + text(name))
                .sum::<usize>()
    }

    /// A metric printed on `/metrics`: its exported names' owners, its claim, its users.
    pub(super) fn global_part(name: &str, exported: &[String]) -> usize {
        exported
            .iter()
            .map(|n| slot::<(String, Key)>() + text(n) + text(name))
            .sum::<usize>()
            + slot::<Key>()
            + text(name)
            + slot::<(Key, (Option<usize>, Unit))>()
            + text(name)
    }

    /// A tenant's entry, before any of its metrics.
    pub(super) fn tenant(tenant: &str) -> usize {
        slot::<(String, TenantNames)>() + text(tenant)
    }
}

/// What a claim would newly hold: the claimant tenant's own record of the metric (its share
/// of a bound) and what printing the metric holds (shared by every tenant using it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClaimCost {
    /// The claimant's record (and its entry, for its first metric); 0 for a host's metric.
    pub tenant: usize,
    /// The metric's exported names, claim and users, when it is first printed.
    pub shared: usize,
}

/// Memory that forgetting tenants gave back and took (a withheld metric printed once its
/// names are free holds them now), to settle with a memory bound.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Shared bytes no longer held.
    pub freed: usize,
    /// Shared bytes newly held.
    pub taken: usize,
    /// Each forgotten tenant's own bytes ([`ClaimCost::tenant`] of its claims), given back.
    pub tenants: Vec<(String, usize)>,
}

impl ExportedNames {
    /// Claims every exported name of a metric, or says which rule it breaks. A tenant's
    /// metric (`claimant`) is checked against the tenant's own metrics and bound of distinct
    /// metrics only; a host's metric (no claimant) against every metric.
    ///
    /// `room` is asked for what a claim would newly hold ([`ClaimCost`], see [`cost`]) before
    /// anything is held: false refuses it with [`RejectReason::MemoryBound`]. A bound that
    /// must never refuse (a host's own names) charges and answers true.
    pub fn claim(
        &self,
        metric_type: MetricType,
        name: &str,
        kind: Kind,
        unit: Unit,
        claimant: Option<Claimant<'_>>,
        room: &mut dyn FnMut(ClaimCost) -> bool,
    ) -> Result<(), RejectReason> {
        let key = (metric_type, name.to_string(), kind);
        let used_by = |names: &Names, c: &Claimant<'_>| {
            names
                .tenants
                .get(c.tenant)
                .is_some_and(|t| t.used.contains_key(&(metric_type, name.to_string(), kind)))
        };
        {
            let names = self.inner.read().unwrap_or_else(|e| e.into_inner());
            let known = match &claimant {
                Some(c) => used_by(&names, c),
                None => names.claimed.contains(&key),
            };
            if known {
                return Ok(());
            }
        }
        let mut names = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let exported = exported_names(metric_type, name, kind, unit);
        let mine = (name.to_string(), kind);
        if let Some(c) = &claimant {
            if used_by(&names, c) {
                return Ok(());
            }
            let tenant = names.tenants.get(c.tenant);
            if tenant.map_or(0, |t| t.used.len()) >= c.max_names {
                return Err(RejectReason::NameLimit);
            }
            // The tenant's own conflicts are the tenant's to see.
            if exported.iter().any(|n| {
                tenant
                    .and_then(|t| t.exported.get(n))
                    .is_some_and(|o| *o != mine)
            }) {
                return Err(RejectReason::NameConflict);
            }
        }
        let free = names.claimed.contains(&key)
            || exported
                .iter()
                .all(|n| names.owners.get(n).is_none_or(|o| *o == key));
        // A host's metric is refused; a tenant's is taken and withheld from `/metrics`.
        let withheld = claimant.is_some() && metric_type == MetricType::User;
        if !free && !withheld {
            return Err(RejectReason::NameConflict);
        }
        let mut bytes = ClaimCost::default();
        if free && !names.claimed.contains(&key) {
            bytes.shared = cost::global_part(name, &exported);
        }
        if let Some(c) = &claimant {
            bytes.tenant = cost::tenant_part(name, &exported);
            if !names.tenants.contains_key(c.tenant) {
                bytes.tenant += cost::tenant(c.tenant);
            }
        }
        if bytes != ClaimCost::default() && !room(bytes) {
            return Err(RejectReason::MemoryBound);
        }
        if free && !names.claimed.contains(&key) {
            for n in &exported {
                names.owners.insert(n.clone(), key.clone());
            }
            names.claimed.insert(key.clone());
        }
        if free {
            let (users, _) = names.users.entry(key.clone()).or_insert((Some(0), unit));
            match (&claimant, users.as_mut()) {
                (None, _) => *users = None,
                (Some(_), Some(n)) => *n += 1,
                (Some(_), None) => {}
            }
        }
        if let Some(c) = claimant {
            let tenant = names.tenants.entry(c.tenant.to_string()).or_default();
            for n in exported {
                tenant.exported.insert(n, mine.clone());
            }
            tenant
                .used
                .insert((metric_type, mine.0, mine.1), (free, unit));
        }
        Ok(())
    }

    /// Forgets the names of tenants `holding` says hold nothing any more (no series, no
    /// rows, no ledger): their bound of distinct metrics starts again, and a metric no tenant
    /// uses any more (and no host claimed) gives its exported names back. Safe because a
    /// tenant that holds nothing prints nothing on `/metrics`.
    pub fn forget_tenants(&self, holding: impl Fn(&str) -> bool) -> Settled {
        let mut settled = Settled::default();
        let mut names = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let names = &mut *names;
        let gone: Vec<String> = names
            .tenants
            .keys()
            .filter(|t| !holding(t))
            .cloned()
            .collect();
        let mut released = false;
        for tenant in gone {
            let Some(t) = names.tenants.remove(&tenant) else {
                continue;
            };
            let mut own = cost::tenant(&tenant);
            for (key, (counted, unit)) in t.used {
                let exported = exported_names(key.0, &key.1, key.2, unit);
                own += cost::tenant_part(&key.1, &exported);
                if !counted {
                    continue;
                }
                let Some((Some(n), _)) = names.users.get_mut(&key) else {
                    continue;
                };
                *n = n.saturating_sub(1);
                if *n > 0 {
                    continue;
                }
                names.users.remove(&key);
                names.claimed.remove(&key);
                settled.freed += cost::global_part(&key.1, &exported);
                for n in exported {
                    if names.owners.get(&n) == Some(&key) {
                        names.owners.remove(&n);
                    }
                }
                released = true;
            }
            settled.tenants.push((tenant, own));
        }
        if released {
            // What was withheld for a released metric may be printed now: the first tenant
            // metric found free claims its names (and the metric's other users are printed
            // with it).
            let Names {
                tenants,
                owners,
                claimed,
                users,
            } = names;
            for t in tenants.values_mut() {
                for (key, (counted, unit)) in t.used.iter_mut() {
                    if *counted || key.0 != MetricType::User {
                        continue;
                    }
                    let exported = exported_names(key.0, &key.1, key.2, *unit);
                    let free = claimed.contains(key)
                        || exported
                            .iter()
                            .all(|n| owners.get(n).is_none_or(|o| o == key));
                    if !free {
                        continue;
                    }
                    if claimed.insert(key.clone()) {
                        settled.taken += cost::global_part(&key.1, &exported);
                        for n in exported {
                            owners.insert(n, key.clone());
                        }
                    }
                    *counted = true;
                    if let (Some(n), _) = users.entry(key.clone()).or_insert((Some(0), *unit)) {
                        *n += 1;
                    }
                }
            }
        }
        // The charges came back: so does the room (maps keep their peak capacity otherwise).
        if names.tenants.capacity() > 4 * names.tenants.len() + 64 {
            names.tenants.shrink_to_fit();
        }
        if names.owners.capacity() > 4 * names.owners.len() + 64 {
            names.owners.shrink_to_fit();
        }
        if names.claimed.capacity() > 4 * names.claimed.len() + 64 {
            names.claimed.shrink_to_fit();
        }
        if names.users.capacity() > 4 * names.users.len() + 64 {
            names.users.shrink_to_fit();
        }
        settled
    }

    /// Tenants whose names are kept.
    pub fn tenants(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .tenants
            .len()
    }

    /// Whether a claimed metric is printed on `/metrics` (false for a tenant's metric whose
    /// names another tenant's or a host's metric already prints).
    pub fn is_exported(&self, metric_type: MetricType, name: &str, kind: Kind) -> bool {
        let names = self.inner.read().unwrap_or_else(|e| e.into_inner());
        names
            .claimed
            .contains(&(metric_type, name.to_string(), kind))
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

    // The service claims every catalog family at start (so no host point prints as one of
    // them): the catalog's own names must not collide.
    #[test]
    fn the_builtin_catalogs_families_are_distinct() {
        let names = ExportedNames::default();
        for e in crate::Catalog::builtin().entries() {
            assert_eq!(
                names.claim(
                    MetricType::System,
                    &e.name,
                    e.kind,
                    e.unit,
                    None,
                    &mut |_| true
                ),
                Ok(()),
                "{}",
                e.name
            );
        }
    }

    #[test]
    fn tenants_meet_only_their_own_names() {
        let names = ExportedNames::default();
        let a = Some(Claimant {
            tenant: "a",
            max_names: 10,
        });
        let b = Some(Claimant {
            tenant: "b",
            max_names: 10,
        });
        let claim = |name, kind, c| {
            names.claim(MetricType::User, name, kind, Unit::Count, c, &mut |_| true)
        };
        assert_eq!(claim("x.h", Kind::Histogram, a), Ok(()));
        // The tenant's own conflicts are its to see.
        assert_eq!(
            claim("x.h_sum", Kind::Gauge, a),
            Err(RejectReason::NameConflict)
        );
        assert_eq!(
            claim("x.h", Kind::Gauge, a),
            Err(RejectReason::NameConflict)
        );
        // Another tenant is neither refused nor told: its metric is withheld from /metrics.
        assert_eq!(claim("x.h", Kind::Gauge, b), Ok(()));
        assert_eq!(claim("x.h_sum", Kind::Gauge, b), Ok(()));
        assert!(names.is_exported(MetricType::User, "x.h", Kind::Histogram));
        assert!(!names.is_exported(MetricType::User, "x.h", Kind::Gauge));
        assert!(!names.is_exported(MetricType::User, "x.h_sum", Kind::Gauge));
        // The same metric in two tenants is one family (the tenant label tells them apart).
        assert_eq!(
            claim("x.h", Kind::Histogram, b),
            Err(RejectReason::NameConflict)
        );
        assert_eq!(claim("y.c", Kind::Counter, b), Ok(()));
        assert_eq!(claim("y.c", Kind::Counter, a), Ok(()));
        assert!(names.is_exported(MetricType::User, "y.c", Kind::Counter));
        // Tenants that hold nothing any more are forgotten; a metric nobody uses gives its
        // names back, and what was withheld for it may be printed once claimed.
        names.forget_tenants(|t| t == "b");
        assert_eq!(names.tenants(), 1);
        assert!(!names.is_exported(MetricType::User, "x.h", Kind::Histogram));
        let c = Some(Claimant {
            tenant: "c",
            max_names: 10,
        });
        assert_eq!(claim("x.h", Kind::Gauge, c), Ok(()));
        assert!(names.is_exported(MetricType::User, "x.h", Kind::Gauge));
        // `y.c` is still used by `b`: kept.
        assert!(names.is_exported(MetricType::User, "y.c", Kind::Counter));
        // A withheld metric is printed once what withheld it is released.
        let d = Some(Claimant {
            tenant: "d",
            max_names: 10,
        });
        assert_eq!(claim("z.q", Kind::Histogram, d), Ok(()));
        assert_eq!(claim("z.q", Kind::Gauge, c), Ok(()));
        assert!(!names.is_exported(MetricType::User, "z.q", Kind::Gauge));
        names.forget_tenants(|t| t != "d");
        assert!(names.is_exported(MetricType::User, "z.q", Kind::Gauge));
        assert!(!names.is_exported(MetricType::User, "z.q", Kind::Histogram));
        // `b`'s gauge was withheld: forgetting `b` gives back nothing of `c`'s claim.
        names.forget_tenants(|t| t == "c");
        assert!(names.is_exported(MetricType::User, "x.h", Kind::Gauge));
        assert!(!names.is_exported(MetricType::User, "y.c", Kind::Counter));
        // A host's metric still meets every claim.
        assert_eq!(
            names.claim(
                MetricType::User,
                "x.h",
                Kind::Histogram,
                Unit::Count,
                None,
                &mut |_| true
            ),
            Err(RejectReason::NameConflict)
        );
    }

    // Names count against a memory bound: a claim asks for room first and holds nothing when
    // refused; forgetting tenants gives back exactly what their claims took (withheld metrics
    // printed once free take theirs then).
    #[test]
    fn names_are_charged_and_give_every_byte_back() {
        let names = ExportedNames::default();
        let held = std::cell::Cell::new(0isize);
        let claim = |tenant, name, kind, room: bool| {
            names.claim(
                MetricType::User,
                name,
                kind,
                Unit::Count,
                Some(Claimant {
                    tenant,
                    max_names: 100,
                }),
                &mut |b: ClaimCost| {
                    if room {
                        held.set(held.get() + (b.tenant + b.shared) as isize);
                    }
                    room
                },
            )
        };
        let long = "m".repeat(128);
        assert_eq!(
            claim("a", long.as_str(), Kind::Histogram, false),
            Err(RejectReason::MemoryBound)
        );
        assert_eq!(names.tenants(), 0);
        assert!(!names.is_exported(MetricType::User, &long, Kind::Histogram));
        assert_eq!(claim("a", long.as_str(), Kind::Histogram, true), Ok(()));
        assert!(names.is_exported(MetricType::User, &long, Kind::Histogram));
        // Five exported names of ~133 bytes, each held twice or more: kilobytes, not bytes.
        assert!(held.get() > 2_000, "{}", held.get());
        // Known already: nothing more to hold, and no room asked.
        assert_eq!(claim("a", long.as_str(), Kind::Histogram, false), Ok(()));
        assert_eq!(claim("b", long.as_str(), Kind::Histogram, true), Ok(()));
        assert_eq!(claim("b", "x.h", Kind::Gauge, true), Ok(()));
        assert_eq!(claim("c", "x.h", Kind::Histogram, true), Ok(())); // withheld behind b's
        assert_eq!(claim("c", "y", Kind::Counter, true), Ok(()));
        let settle = |s: Settled| {
            let own: usize = s.tenants.iter().map(|(_, b)| b).sum();
            held.set(held.get() - s.freed as isize + s.taken as isize - own as isize)
        };
        // b goes: c's withheld histogram is printed and takes its names.
        let s = names.forget_tenants(|t| t != "b");
        assert!(s.taken > 0 && s.freed > 0);
        assert_eq!(s.tenants.len(), 1);
        assert!(s.tenants[0].0 == "b" && s.tenants[0].1 > 2_000);
        settle(s);
        assert!(names.is_exported(MetricType::User, "x.h", Kind::Histogram));
        settle(names.forget_tenants(|_| false));
        assert_eq!(names.tenants(), 0);
        assert_eq!(held.get(), 0);
    }
}
