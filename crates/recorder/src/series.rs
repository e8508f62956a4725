//! Series identity, the per-tenant series limits with the overflow series, idle eviction, and
//! what a series costs against the memory bound.

use dashmap::DashMap;
use luametrics_model::{Kind, Limits, MetricType, Tags};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::mem::size_of;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// The allocator's cost per allocation besides the bytes asked for (glibc: an 8-byte chunk
/// header and rounding to 16), counted so the bound tracks resident memory, not requests.
pub(crate) const ALLOC_OVERHEAD: usize = 16;

/// Bytes a hash-map slot of `T` costs: the tables double when 7/8 full, so a slot is paid up
/// to twice over, plus its control byte.
pub(crate) const fn map_slot<T>() -> usize {
    2 * (size_of::<T>() + 1)
}

/// A B-tree node of tags: `String` keys and values, eleven to a node (std's capacity).
const TAG_LEAF: usize = 16 + 11 * 2 * size_of::<String>() + ALLOC_OVERHEAD;
/// An internal node: a leaf plus its twelve child pointers.
const TAG_INTERNAL: usize = TAG_LEAF + 12 * size_of::<usize>();

/// A registry slot: the key's `Arc` and its last use.
const REGISTRY_SLOT: usize = map_slot::<(Arc<SeriesKey>, AtomicI64)>();

/// The memory bound's counter: bytes held by accumulators, unwritten rows, the exposition and
/// series keys. Shared with the keys, which give their bytes back when the last holder drops
/// them. It also keeps what each tenant's user series hold (`Shares`), so one tenant cannot
/// take the whole bound from the others (adversary round 9).
#[derive(Clone, Default)]
pub(crate) struct Memory(Arc<AtomicUsize>, Arc<Shares>);

/// Each tenant's user bytes, and the reserve kept for tenants holding little: once the total
/// passes `max - share`, a tenant holding more than its part of the reserve, an eighth
/// ([`RESERVE_SPLIT`]), is refused. So tenants holding little always have room among them, and
/// it takes more than 8 tenant ids, arriving in any order, to fill the reserve. (Adversary
/// round 10: with the whole reserve as each tenant's part, five tenant ids, each within it,
/// filled the bound together, the first alone reaching three quarters, and another tenant kept
/// 2 points of 178.) The part does not shrink with the number of tenants: tenants arriving
/// together fill a shrinking part as fast, and the reserve would sit unused by many tenants
/// holding a little more than it.
#[derive(Default)]
pub(crate) struct Shares {
    /// The reserve: the last bytes of the bound, kept for tenants holding little; 0: none (one
    /// tenant may take the whole bound).
    share: AtomicUsize,
    used: Mutex<HashMap<Arc<str>, usize, ahash::RandomState>>,
}

impl std::ops::Deref for Memory {
    type Target = AtomicUsize;
    fn deref(&self) -> &AtomicUsize {
        &self.0
    }
}

/// The tenant whose share a key's bytes count in: user series only (the host's own series,
/// per-tenant or not, are the host's).
pub(crate) fn owner(key: &SeriesKey) -> Option<&Arc<str>> {
    if key.metric_type == MetricType::User {
        key.tenant.as_ref()
    } else {
        None
    }
}

impl Memory {
    /// A counter keeping its last `share` bytes for tenants holding little (0: none).
    pub fn with_share(share: usize) -> Self {
        let m = Memory::default();
        m.1.share.store(share, Relaxed);
        m
    }

    /// Charges `cost` if the total stays within `max`; whether it did.
    pub fn charge(&self, cost: usize, max: usize) -> bool {
        let mut cur = self.load(Relaxed);
        loop {
            if cur.saturating_add(cost) > max {
                return false;
            }
            match self.compare_exchange_weak(cur, cur + cost, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Charges `cost` for `tenant`'s user series (`None`: the host's, the bound only): past
    /// its fair share of the reserve a tenant is refused once the total would pass
    /// `max - share`.
    pub fn charge_for(&self, tenant: Option<&Arc<str>>, cost: usize, max: usize) -> bool {
        let Some(tenant) = tenant else {
            return self.charge(cost, max);
        };
        let share = self.1.share.load(Relaxed);
        let mut used = self.1.used.lock();
        let mine = used.get(tenant).copied();
        let limit = if share > 0 && mine.unwrap_or(0).saturating_add(cost) > share / RESERVE_SPLIT {
            max.saturating_sub(share)
        } else {
            max
        };
        if !self.charge(cost, limit) {
            return false;
        }
        *used.entry(tenant.clone()).or_insert(0) += cost;
        true
    }

    /// Adds `cost` for `tenant` whatever the bound (what must be held: a handle's key and names).
    pub fn add_for(&self, tenant: Option<&Arc<str>>, cost: usize) {
        self.fetch_add(cost, Relaxed);
        if let (Some(tenant), true) = (tenant, cost > 0) {
            *self.1.used.lock().entry(tenant.clone()).or_insert(0) += cost;
        }
    }

    /// Gives back `cost` charged for `tenant`.
    pub fn release_for(&self, tenant: Option<&Arc<str>>, cost: usize) {
        self.fetch_sub(cost, Relaxed);
        if let (Some(tenant), true) = (tenant, cost > 0) {
            let mut used = self.1.used.lock();
            if let Some(n) = used.get_mut(tenant) {
                *n = n.saturating_sub(cost);
                if *n == 0 {
                    used.remove(tenant);
                }
            }
        }
    }

    /// The reserve: the last bytes of the bound, kept for tenants holding little.
    pub fn reserve(&self) -> usize {
        self.1.share.load(Relaxed)
    }

    /// Whether `tenant` holds more than its part of the reserve.
    pub fn past_share(&self, tenant: &str) -> bool {
        let share = self.1.share.load(Relaxed);
        let used = self.1.used.lock();
        share > 0
            && used
                .get(tenant)
                .is_some_and(|&mine| mine > share / RESERVE_SPLIT)
    }
}

/// The parts the reserve is split into: the most a tenant may hold and still take from it is
/// one of them, so a tenant arriving first cannot take it all because it is alone yet.
pub(crate) const RESERVE_SPLIT: usize = 8;

/// The bytes a shared key was charged, given back when the key is dropped: a key is shared
/// by `Arc` between the registry, the accumulators, the rows waiting to be written and the
/// exposition, and is charged once, for as long as any of them holds it.
/// A key charged within a budget of its own besides the bound (tenants' handles) gives its
/// bytes back to that budget too.
#[derive(Default)]
pub(crate) struct KeyCharge(
    Option<(Memory, usize, Option<Arc<str>>)>,
    Option<Arc<AtomicUsize>>,
);

impl Drop for KeyCharge {
    fn drop(&mut self) {
        if let Some((memory, bytes, tenant)) = self.0.take() {
            memory.release_for(tenant.as_ref(), bytes);
            if let Some(budget) = self.1.take() {
                budget.fetch_sub(bytes, Relaxed);
            }
        }
    }
}

impl std::fmt::Debug for KeyCharge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeyCharge({})",
            self.0.as_ref().map_or(0, |(_, b, _)| *b)
        )
    }
}

/// The identity of a series (the window is not part of it).
#[derive(Debug)]
pub(crate) struct SeriesKey {
    pub metric_type: MetricType,
    pub kind: Kind,
    pub tenant: Option<Arc<str>>,
    pub name: String,
    pub tags: Tags,
    /// What the key was charged once shared (not part of its identity).
    pub charge: KeyCharge,
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &Self) -> bool {
        self.metric_type == other.metric_type
            && self.kind == other.kind
            && self.tenant == other.tenant
            && self.name == other.name
            && self.tags == other.tags
    }
}

impl Eq for SeriesKey {}

impl std::hash::Hash for SeriesKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.metric_type.hash(state);
        self.kind.hash(state);
        self.tenant.hash(state);
        self.name.hash(state);
        self.tags.hash(state);
    }
}

impl Clone for SeriesKey {
    /// A copy is a new, uncharged key.
    fn clone(&self) -> Self {
        Self::new(
            self.metric_type,
            self.kind,
            self.tenant.clone(),
            self.name.clone(),
            self.tags.clone(),
        )
    }
}

/// Heap bytes of a string's buffer.
fn string_bytes(s: &str, capacity: usize) -> usize {
    if capacity == 0 && s.is_empty() {
        0
    } else {
        capacity.max(s.len()) + ALLOC_OVERHEAD
    }
}

impl SeriesKey {
    /// An uncharged key.
    pub fn new(
        metric_type: MetricType,
        kind: Kind,
        tenant: Option<Arc<str>>,
        name: String,
        tags: Tags,
    ) -> Self {
        Self {
            metric_type,
            kind,
            tenant,
            name,
            tags,
            charge: KeyCharge::default(),
        }
    }

    /// Heap the key holds once shared: its `Arc`, name, tenant, and tags (B-tree nodes and
    /// strings), as the allocator hands them out. Checked against a counting allocator by
    /// `tests/memory_honesty.rs`.
    pub fn heap_bytes(&self) -> usize {
        let n = self.tags.len();
        let nodes = match n {
            0 => 0,
            1..=11 => TAG_LEAF,
            // Nodes are at least half full (5 of 11) below the root.
            _ => (n / 5 + 1) * TAG_LEAF + (n / 30 + 1) * TAG_INTERNAL,
        };
        let strings: usize = self
            .tags
            .iter()
            .map(|(k, v)| string_bytes(k, k.capacity()) + string_bytes(v, v.capacity()))
            .sum();
        2 * size_of::<usize>()
            + size_of::<Self>()
            + ALLOC_OVERHEAD
            + string_bytes(&self.name, self.name.capacity())
            + self
                .tenant
                .as_ref()
                .map_or(0, |t| 2 * size_of::<usize>() + t.len() + ALLOC_OVERHEAD)
            + nodes
            + strings
    }

    /// Shares the key, charging its bytes (and `extra`, what its first holder's slot costs)
    /// against the bound until the last holder drops it; `None` when the bound has no room.
    pub fn charged(mut self, memory: &Memory, max: usize, extra: usize) -> Option<Arc<Self>> {
        let bytes = self.heap_bytes() + extra;
        let tenant = owner(&self).cloned();
        if !memory.charge_for(tenant.as_ref(), bytes, max) {
            return None;
        }
        self.charge = KeyCharge(Some((memory.clone(), bytes, tenant)), None);
        Some(Arc::new(self))
    }

    /// Shares the key charged against the bound and within `budget` (at most `budget_max`
    /// bytes held); `Err` with the key, uncharged, when either has no room.
    pub fn charged_within(
        mut self,
        memory: &Memory,
        max: usize,
        budget: &Arc<AtomicUsize>,
        budget_max: usize,
    ) -> Result<Arc<Self>, Self> {
        let bytes = self.heap_bytes();
        let mut cur = budget.load(Relaxed);
        loop {
            if cur.saturating_add(bytes) > budget_max {
                return Err(self);
            }
            match budget.compare_exchange_weak(cur, cur + bytes, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        let tenant = owner(&self).cloned();
        if !memory.charge_for(tenant.as_ref(), bytes, max) {
            budget.fetch_sub(bytes, Relaxed);
            return Err(self);
        }
        self.charge = KeyCharge(Some((memory.clone(), bytes, tenant)), Some(budget.clone()));
        Ok(Arc::new(self))
    }

    /// Shares the key charged whatever the bound (a handle's, made once and few): its bytes
    /// count for as long as the handle or anything sharing the key holds it.
    pub fn charged_always(mut self, memory: &Memory) -> Arc<Self> {
        let bytes = self.heap_bytes();
        let tenant = owner(&self).cloned();
        memory.add_for(tenant.as_ref(), bytes);
        self.charge = KeyCharge(Some((memory.clone(), bytes, tenant)), None);
        Arc::new(self)
    }

    /// Bytes of the key a holder must charge itself: none when the key carries its own
    /// charge, all of it for a key shared uncharged (a handle's).
    pub fn uncharged_bytes(&self) -> usize {
        if self.charge.0.is_some() {
            0
        } else {
            self.heap_bytes()
        }
    }

    /// Whether the series limits and the registry apply to this key: user series of a tenant.
    pub fn is_registered(&self) -> bool {
        self.tenant.is_some() && self.metric_type == MetricType::User
    }

    /// The overflow series of the same name (OpenTelemetry's rule), so totals stay exact.
    pub fn into_overflow(mut self) -> Self {
        self.tags = Tags::from([("overflow".to_string(), "true".to_string())]);
        self
    }
}

/// A series key as a recording brings it: built for this point, or shared by a handle that
/// built it once (so a point through a handle allocates no key).
pub(crate) enum KeyIn {
    Owned(SeriesKey),
    Shared(Arc<SeriesKey>),
}

impl KeyIn {
    pub fn get(&self) -> &SeriesKey {
        match self {
            KeyIn::Owned(k) => k,
            KeyIn::Shared(k) => k,
        }
    }

    /// The key to keep in a map: a charged shared key as it is, anything else charged against
    /// the bound (`None` when it does not fit). A shared key with no charge of its own (a
    /// one-use handle's) is copied and the copy charged: kept as it is, its bytes would be
    /// charged by whatever entry first held it and go uncharged once that entry left while
    /// later entries of the series still held the key.
    pub fn into_shared(self, memory: &Memory, max: usize) -> Option<Arc<SeriesKey>> {
        match self {
            KeyIn::Owned(k) => k.charged(memory, max, 0),
            KeyIn::Shared(k) if k.charge.0.is_some() => Some(k),
            KeyIn::Shared(k) => SeriesKey::clone(&k).charged(memory, max, 0),
        }
    }
}

impl From<SeriesKey> for KeyIn {
    fn from(k: SeriesKey) -> Self {
        KeyIn::Owned(k)
    }
}

impl From<Arc<SeriesKey>> for KeyIn {
    fn from(k: Arc<SeriesKey>) -> Self {
        KeyIn::Shared(k)
    }
}

#[derive(Default)]
struct Counts {
    per_name: HashMap<(Arc<str>, String), usize>,
    per_tenant: HashMap<Arc<str>, usize>,
}

/// Known user series with their last use; decides whether a new series fits the limits.
/// Holds the one shared copy of each key (the accumulators and the exposition share it).
#[derive(Default)]
pub(crate) struct Registry {
    seen: DashMap<Arc<SeriesKey>, AtomicI64, ahash::RandomState>,
    /// Taken only when a series is new or evicted, so the limits are exact under concurrency.
    counts: Mutex<Counts>,
}

impl Registry {
    /// Returns the shared key to record under: the series itself, or its overflow series when
    /// a new series would pass a limit (the flag says it overflowed). A new key is charged
    /// against the memory bound (`memory`, `max`) with its registry slot; `None` when it does
    /// not fit, and then nothing is registered. Only for [`SeriesKey::is_registered`] keys.
    pub fn admit(
        &self,
        key: SeriesKey,
        now: i64,
        limits: &Limits,
        memory: &Memory,
        max: usize,
    ) -> Option<(Arc<SeriesKey>, bool)> {
        let tenant = key.tenant.clone()?;
        if let Some(seen) = self.seen.get(&key) {
            seen.store(now, Relaxed);
            return Some((seen.key().clone(), false));
        }
        let mut counts = self.counts.lock();
        if let Some(seen) = self.seen.get(&key) {
            seen.store(now, Relaxed);
            return Some((seen.key().clone(), false));
        }
        let name_key = (tenant.clone(), key.name.clone());
        let per_name = counts.per_name.get(&name_key).copied().unwrap_or(0);
        let per_tenant = counts.per_tenant.get(&tenant).copied().unwrap_or(0);
        if per_name >= limits.max_series_per_name || per_tenant >= limits.max_series_per_tenant {
            drop(counts);
            let overflow = key.into_overflow();
            // The overflow series is tracked for eviction but not counted against the limits.
            if let Some(seen) = self.seen.get(&overflow) {
                seen.store(now, Relaxed);
                return Some((seen.key().clone(), true));
            }
            let shared = overflow.charged(memory, max, REGISTRY_SLOT)?;
            let entry = self
                .seen
                .entry(shared)
                .or_insert_with(|| AtomicI64::new(now));
            entry.store(now, Relaxed);
            return Some((entry.key().clone(), true));
        }
        let shared = key.charged(memory, max, REGISTRY_SLOT)?;
        *counts.per_name.entry(name_key).or_insert(0) += 1;
        *counts.per_tenant.entry(tenant).or_insert(0) += 1;
        self.seen.insert(shared.clone(), AtomicI64::new(now));
        Some((shared, false))
    }

    /// Forgets series unused since `cutoff` for which `which` holds; returns how many.
    pub fn evict_idle(&self, cutoff: i64, which: impl Fn(&SeriesKey) -> bool) -> usize {
        let mut counts = self.counts.lock();
        let mut evicted = 0;
        self.seen.retain(|key, last| {
            if last.load(Relaxed) >= cutoff || !which(key) {
                return true;
            }
            evicted += 1;
            let is_overflow =
                key.tags.len() == 1 && key.tags.get("overflow").map(String::as_str) == Some("true");
            if let (Some(tenant), false) = (&key.tenant, is_overflow) {
                let name_key = (tenant.clone(), key.name.clone());
                if let Some(n) = counts.per_name.get_mut(&name_key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.per_name.remove(&name_key);
                    }
                }
                if let Some(n) = counts.per_tenant.get_mut(tenant) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.per_tenant.remove(tenant);
                    }
                }
            }
            false
        });
        if evicted > 0 && self.seen.capacity() > 4 * self.seen.len() + 64 {
            self.seen.shrink_to_fit();
        }
        evicted
    }

    /// Tenants with a series tracked (overflow series included).
    pub fn tenants_held(&self) -> std::collections::HashSet<Arc<str>> {
        self.seen
            .iter()
            .filter_map(|e| e.key().tenant.clone())
            .collect()
    }

    /// Series currently tracked.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Every tenant with the series it holds, most first.
    pub fn tenants(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .counts
            .lock()
            .per_tenant
            .iter()
            .map(|(t, n)| (t.to_string(), *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// Series a tenant holds against its limit.
    pub fn tenant_series(&self, tenant: &str) -> usize {
        self.counts
            .lock()
            .per_tenant
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }
}
