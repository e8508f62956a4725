//! The hot path of `helpers.metrics`, written against the Lua C API.
//!
//! Target 1 of docs/targets.md asks a `helpers.metrics.count(name, 1, {a = x, b = y})` loop to cost at
//! most 1.5x a pure-Lua aggregation loop. A call through mlua's safe callbacks (protected call,
//! owned strings) costs ~4x, and a Lua implementation pays three `next` and two `type` calls
//! per point on top of its own instructions (~2.7x). So the three helpers are C closures: they
//! walk the engine's verdict tree (`lua/prelude.lua`) with `lua_next` and `lua_rawget`, which
//! allocate nothing and cannot raise, and add the value into a per-execution aggregate held
//! here, in Rust. Whatever the fast path cannot settle (a first sight, a rejection, an empty
//! quota lease, a bad argument) goes to the prelude's Lua slow path, which calls back into
//! [`Hot`] through ordinary mlua callbacks.
//!
//! # Safety
//! - [`Hot`] is a heap allocation the engine owns through a raw pointer (`HotBox`, its last
//!   field, freed after the Lua state whose closures point at it); the closures run only while
//!   the engine runs Lua.
//! - Every access makes a short-lived `&mut Hot` that never spans a call into Lua: the slow path
//!   (which reaches `Hot` again through the mlua callbacks) is called with no borrow alive.
//! - The fast path's frame holds no value with a destructor, so an error raised by the slow
//!   path (a strict-mode rejection, a time or memory limit) may unwind through it with
//!   `longjmp`, as Lua errors do through any C function.
//! - The fast path pushes at most 5 values above its 3 arguments, within the 20 slots Lua
//!   guarantees a C function.

use luametrics_model::{Kind, RejectReason};
use luametrics_sink::{BatchPoint, CheckedSeries};
use luametrics_sketch::Summary;
use mlua::ffi;
use std::collections::HashMap;
use std::os::raw::{c_int, c_void};
use std::sync::Arc;

/// The key under which a verdict-tree node holds its verdict: the address of this static, as a
/// light userdata, so no tag key or value can collide with it.
static END: u8 = 0;

/// The verdict key as a Lua value, for the prelude.
pub(crate) fn end_key() -> mlua::LightUserData {
    mlua::LightUserData(std::ptr::addr_of!(END) as *mut c_void)
}

/// A fast path never walks more tags than this; a longer table goes to the slow path, which
/// rejects it (`too_many_tags`) with the time limit in force.
pub(crate) const MAX_WALK: usize = 64;

/// A validated name/tag set: what a drained point is recorded under.
#[derive(PartialEq, Eq, Hash)]
struct Identity {
    /// Each tenant's series are its own: nothing of one tenant's cache serves another's.
    tenant: Arc<str>,
    series: CheckedSeries,
}

/// A validated series in the verdict cache; its index is what the Lua tree holds.
struct Series {
    identity: Arc<Identity>,
    /// The execution whose aggregate `slot` is.
    epoch: u64,
    slot: usize,
}

/// One series' points in the current execution, folded as they come (a histogram's values go
/// into its sketch, so an execution's memory does not grow with its points).
struct Slot {
    identity: Arc<Identity>,
    summary: Summary,
}

/// The Rust half of `helpers.metrics`: the verdict cache's series, this execution's
/// aggregates and its quota lease.
pub(crate) struct Hot {
    epoch: u64,
    used: u32,
    budget: u32,
    max_points: u32,
    /// Series by id (`None`: forgotten, its id free for the next series planted).
    series: Vec<Option<Series>>,
    /// Ids of forgotten series, reused first: ids stay below the series alive.
    free: Vec<usize>,
    /// Series by identity: tag tables built in different orders walk different paths of the
    /// tree, and `{n = 1}` and `{n = "1"}` are the same tags; they all share one series.
    index: HashMap<Arc<Identity>, usize>,
    slots: Vec<Slot>,
    /// The prelude holds rejections of this execution (its `drain` has something to say).
    pub(crate) rejections_pending: bool,
}

impl Hot {
    pub(crate) fn new(max_points: u32) -> Self {
        Self {
            epoch: 0,
            used: 0,
            budget: 0,
            max_points,
            series: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            slots: Vec::new(),
            rejections_pending: false,
        }
    }

    /// Starts an execution: no points, no lease.
    pub(crate) fn begin(&mut self) {
        self.epoch += 1;
        self.used = 0;
        self.budget = 0;
        self.slots.clear();
    }

    /// Registers a validated name/tag set; returns the id the Lua tree keeps.
    pub(crate) fn plant(&mut self, tenant: Arc<str>, series: CheckedSeries) -> usize {
        let identity = Identity { tenant, series };
        if let Some(&id) = self.index.get(&identity) {
            return id;
        }
        let identity = Arc::new(identity);
        let series = Some(Series {
            identity: identity.clone(),
            epoch: 0,
            slot: 0,
        });
        let id = match self.free.pop() {
            Some(id) => {
                self.series[id] = series;
                id
            }
            None => {
                self.series.push(series);
                self.series.len() - 1
            }
        };
        self.index.insert(identity, id);
        id
    }

    /// Forgets every series: the prelude has just emptied every tree (the cache bound).
    pub(crate) fn reset(&mut self) {
        self.series.clear();
        self.free.clear();
        self.index.clear();
    }

    /// Forgets `tenant`'s series: the prelude has just emptied that tenant's trees (its own
    /// bound), so no tree holds their ids. One tenant's use then never grows what the engine
    /// holds for all (review: a tenant planting new series pushed the ids to the engine-wide
    /// bound alone, which emptied every tenant's trees). Points of this execution already
    /// taken stay in their aggregates.
    pub(crate) fn reset_tenant(&mut self, tenant: &str) {
        let (series, free) = (&mut self.series, &mut self.free);
        self.index.retain(|identity, id| {
            if &*identity.tenant != tenant {
                return true;
            }
            if let Some(s) = series.get_mut(*id) {
                *s = None;
                free.push(*id);
            }
            false
        });
    }

    /// Series held, every tenant's.
    pub(crate) fn live(&self) -> usize {
        self.index.len()
    }

    /// Whether a point fits the lease without asking for more.
    fn has_budget(&self) -> bool {
        self.used < self.budget
    }

    /// Adds a point to series `id`, asking `reserve(want)` for a larger lease when the current
    /// one is used up. Leases grow with use (8, 8, 16, 32...): few requests, little held back
    /// from the tenant's other executions.
    pub(crate) fn take(
        &mut self,
        id: usize,
        value: f64,
        reserve: impl FnOnce(u32) -> u32,
    ) -> Result<(), RejectReason> {
        if !self.has_budget() {
            if self.used >= self.max_points {
                return Err(RejectReason::ExecutionLimit);
            }
            let want = self.used.max(8).min(self.max_points - self.used);
            self.budget += reserve(want);
            if !self.has_budget() {
                return Err(RejectReason::RateLimited);
            }
        }
        let added = self.add(id, value);
        debug_assert!(added, "the verdict tree holds series {id}, unknown to Hot");
        Ok(())
    }

    /// Folds a value into its series' aggregate; the lease was checked. False when `id` is not
    /// a series (never the case for an id the tree holds).
    fn add(&mut self, id: usize, value: f64) -> bool {
        let Some(Some(series)) = self.series.get_mut(id) else {
            return false;
        };
        self.used += 1;
        if series.epoch == self.epoch {
            if let Some(slot) = self.slots.get_mut(series.slot) {
                slot.summary.observe(value, 0);
                return true;
            }
        }
        series.epoch = self.epoch;
        series.slot = self.slots.len();
        let mut summary = Summary::new(series.identity.series.kind() == Kind::Histogram);
        summary.observe(value, 0);
        self.slots.push(Slot {
            identity: series.identity.clone(),
            summary,
        });
        true
    }

    /// Ends an execution: its points, series in first-seen order, and the unused part of the
    /// lease (to give back to the tenant's quota).
    pub(crate) fn drain(&mut self) -> (Vec<BatchPoint>, u32) {
        let unused = self.budget.saturating_sub(self.used);
        self.epoch += 1;
        self.used = 0;
        self.budget = 0;
        let points = self
            .slots
            .drain(..)
            .map(|s| BatchPoint {
                series: s.identity.series.clone(),
                summary: s.summary,
            })
            .collect();
        (points, unused)
    }
}

/// A `Send` handle on the engine's [`Hot`] for the mlua callbacks of the slow path.
#[derive(Clone, Copy)]
pub(crate) struct HotRef(*mut Hot);

// SAFETY: the pointee moves between threads only with the engine that owns it, and is used
// by one thread at a time (an engine runs one execution at a time).
unsafe impl Send for HotRef {}

impl HotRef {
    /// Runs `f` on the `Hot`.
    ///
    /// Callers (the slow path's callbacks, the engine between Lua calls) must not call into
    /// Lua inside `f`: no other borrow of the `Hot` exists then.
    pub(crate) fn with<R>(self, f: impl FnOnce(&mut Hot) -> R) -> R {
        // SAFETY: see the module's safety notes; the pointer is valid while the engine lives.
        unsafe { f(&mut *self.0) }
    }

    /// Takes ownership of a boxed `Hot`; [`HotRef::free`] gives it back.
    pub(crate) fn from_box(hot: Box<Hot>) -> Self {
        Self(Box::into_raw(hot))
    }

    /// Frees the `Hot`.
    ///
    /// # Safety
    /// Once, from the owner, when nothing can reach the pointer any more.
    pub(crate) unsafe fn free(self) {
        // SAFETY: the pointer came from `from_box` and is freed once (the engine's drop).
        unsafe {
            drop(Box::from_raw(self.0));
        }
    }

    pub(crate) fn as_light(self) -> mlua::LightUserData {
        mlua::LightUserData(self.0 as *mut c_void)
    }
}

const COUNTER: i64 = 0;
const GAUGE: i64 = 1;
const HISTOGRAM: i64 = 2;

/// `bind(root, hot, slow, kind)`: the prelude's constructor of one helper, a C closure over
/// the kind's verdict tree, the engine's `Hot` and the kind's Lua slow path; `kind` is the
/// kind's name (`"counter"`, `"gauge"`, `"histogram"`).
///
/// # Safety
/// Called by Lua only, with a light userdata that points at the engine's `Hot`.
pub(crate) unsafe extern "C-unwind" fn bind(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with the arguments the prelude passes, whose types are
    // checked first.
    unsafe {
        if ffi::lua_type(l, 1) != ffi::LUA_TTABLE
            || ffi::lua_type(l, 2) != ffi::LUA_TLIGHTUSERDATA
            || ffi::lua_type(l, 3) != ffi::LUA_TFUNCTION
        {
            return 0;
        }
        let f: ffi::lua_CFunction = match string_arg(l, 4) {
            Some(b"counter") => record::<COUNTER>,
            Some(b"gauge") => record::<GAUGE>,
            Some(b"histogram") => record::<HISTOGRAM>,
            _ => return 0,
        };
        ffi::lua_settop(l, 3);
        ffi::lua_pushcclosure(l, f, 3);
        1
    }
}

/// `rebind(helper, tree)`: points a helper (a closure made by [`bind`]) at another verdict
/// tree, its first upvalue: the prelude binds the running tenant's trees at the start of each
/// execution.
///
/// # Safety
/// Called by the prelude only, with one of the helpers `bind` made and a table.
pub(crate) unsafe extern "C-unwind" fn rebind(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with the arguments the prelude passes.
    unsafe {
        if ffi::lua_iscfunction(l, 1) == 0 || ffi::lua_type(l, 2) != ffi::LUA_TTABLE {
            return 0;
        }
        ffi::lua_settop(l, 2);
        ffi::lua_setupvalue(l, 1, 1);
        0
    }
}

/// The bytes of a string argument (no conversion of numbers).
unsafe fn string_arg<'a>(l: *mut ffi::lua_State, idx: c_int) -> Option<&'a [u8]> {
    // SAFETY: `l` is the running state and `idx` a valid index of its stack; the bytes live as long
    // as the value stays on the stack, which the caller keeps.
    unsafe {
        if ffi::lua_type(l, idx) != ffi::LUA_TSTRING {
            return None;
        }
        let mut len = 0usize;
        let p = ffi::lua_tolstring(l, idx, &mut len);
        (!p.is_null()).then(|| std::slice::from_raw_parts(p as *const u8, len))
    }
}

/// `count`, `gauge` or `histogram` (`KIND`): settles a point whose series is in the verdict
/// cache and accepted, within the lease; hands anything else to the slow path.
unsafe extern "C-unwind" fn record<const KIND: i64>(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function (the helpers' closures) whose upvalues the engine set:
    // the `Hot` pointer and the verdict tree.
    unsafe {
        ffi::lua_settop(l, 3);
        match fast(l, KIND) {
            Some((hot, id, value)) => {
                // SAFETY: no other borrow of the `Hot` is alive (no Lua call in between).
                if (*hot).add(id, value) {
                    ffi::lua_pushboolean(l, 1);
                    return 1;
                }
                slow(l)
            }
            None => slow(l),
        }
    }
}

/// The lookup: `(hot, series id, value)` when the fast path can take the point.
unsafe fn fast(l: *mut ffi::lua_State, kind: i64) -> Option<(*mut Hot, usize, f64)> {
    // SAFETY: `l` is the running state of a helper call; the upvalues hold the engine's `Hot`
    // pointer (alive while the engine is) and the verdict tree.
    unsafe {
        let value = match ffi::lua_type(l, 2) {
            ffi::LUA_TNUMBER => ffi::lua_tonumberx(l, 2, std::ptr::null_mut()),
            ffi::LUA_TNIL if kind == COUNTER => 1.0,
            _ => return None,
        };
        if !value.is_finite() || (kind == COUNTER && value < 0.0) {
            return None;
        }
        let hot = ffi::lua_touserdata(l, ffi::lua_upvalueindex(2)) as *mut Hot;
        if hot.is_null() || !(*hot).has_budget() {
            return None;
        }
        // Slot 4: the current node, starting at root[name].
        ffi::lua_pushvalue(l, 1);
        if ffi::lua_rawget(l, ffi::lua_upvalueindex(1)) != ffi::LUA_TTABLE {
            return None;
        }
        match ffi::lua_type(l, 3) {
            ffi::LUA_TNIL => {}
            ffi::LUA_TTABLE => {
                let mut walked = 0;
                ffi::lua_pushnil(l);
                // Slots 5 and 6: the tag key and value; 7: node[key]; 8: node[key][value].
                while ffi::lua_next(l, 3) != 0 {
                    walked += 1;
                    if walked > MAX_WALK {
                        return None;
                    }
                    ffi::lua_pushvalue(l, 5);
                    if ffi::lua_rawget(l, 4) != ffi::LUA_TTABLE {
                        return None;
                    }
                    ffi::lua_pushvalue(l, 6);
                    if ffi::lua_rawget(l, 7) != ffi::LUA_TTABLE {
                        return None;
                    }
                    ffi::lua_replace(l, 4);
                    ffi::lua_settop(l, 5);
                }
            }
            _ => return None,
        }
        if ffi::lua_rawgetp(l, 4, std::ptr::addr_of!(END) as *const c_void) != ffi::LUA_TNUMBER {
            return None;
        }
        let mut is_int = 0;
        let id = ffi::lua_tointegerx(l, -1, &mut is_int);
        if is_int == 0 || id < 0 {
            return None;
        }
        Some((hot, id as usize, value))
    }
}

/// Calls the kind's Lua slow path with the original arguments and returns what it returns.
unsafe fn slow(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: `l` is the running state of a helper call; its upvalues are the ones `record` was
    // created with.
    unsafe {
        ffi::lua_settop(l, 3);
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(3));
        ffi::lua_pushvalue(l, 1);
        ffi::lua_pushvalue(l, 2);
        ffi::lua_pushvalue(l, 3);
        ffi::lua_call(l, 3, ffi::LUA_MULTRET);
        ffi::lua_gettop(l) - 3
    }
}
