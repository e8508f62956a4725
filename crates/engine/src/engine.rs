//! One sandboxed Lua state and everything an execution does on it: building the state (the
//! allow-listed environment, the prelude, the engine's allocator), the compile cache, the clean
//! start of every execution, the limits' typed outcomes, the time split, and the hand-off of
//! its points to the sink. The host functions the prelude uses live in `host.rs`.
//!
//! Why one file of ~800 lines: an execution's steps (begin, run under the watchdog, classify
//! the abort, drain, hand off) share the engine's private state and its invariants (nothing of
//! one execution survives into the next; a limit poisons the engine); splitting them would
//! spread one invariant over several files.

use crate::convert::{to_lua, FromLua};
use crate::guard::{self, Heap};
use crate::host;
use crate::hot::{self, Hot, HotRef};
use crate::watchdog::{self, Slot, ABORT_MEMORY, ABORT_STACK, ABORT_TIME};
use crate::{
    Clock, DiscardReason, EngineSettings, MetricsSink, Script, ScriptError, Warning, PRELUDE,
};
use luametrics_model::{Kind, RejectReason, Tags};
use mlua::chunk::ChunkMode;
use mlua::{ffi, Function, Lua, LuaOptions, MultiValue, StdLib, Table, Value};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// The prelude compiled once per process, without the names of its local variables: every
/// idle engine holds its functions, and those names were a sixth of its heap (target 6, 64 KiB).
/// Lines and upvalue names stay: the messages of library errors raised through the prelude's
/// wrappers are rewritten from them (`guard::relocate`).
fn prelude_chunk(lua: &Lua) -> mlua::Result<&'static [u8]> {
    static CHUNK: std::sync::OnceLock<Box<[u8]>> = std::sync::OnceLock::new();
    if let Some(chunk) = CHUNK.get() {
        return Ok(chunk);
    }
    let compiled = lua
        .load(PRELUDE)
        .set_name("=luametrics/prelude.lua")
        .set_mode(ChunkMode::Text)
        .into_function()?;
    unsafe extern "C-unwind" fn write(
        _: *mut ffi::lua_State,
        p: *const std::ffi::c_void,
        sz: usize,
        ud: *mut std::ffi::c_void,
    ) -> std::ffi::c_int {
        // SAFETY: `ud` is the Vec below, `p` holds `sz` bytes Lua is writing.
        unsafe {
            (*(ud as *mut Vec<u8>))
                .extend_from_slice(std::slice::from_raw_parts(p as *const u8, sz))
        };
        0
    }
    let mut bytes: Vec<u8> = Vec::new();
    let out = &mut bytes as *mut Vec<u8> as *mut std::ffi::c_void;
    // SAFETY: dumps the function exec_raw pushed; the writer cannot raise. Strip level 2 is
    // the vendored Lua's (vendor/README.md): local variables' names only.
    unsafe {
        lua.exec_raw::<()>(compiled, |l| {
            ffi::lua_dump(l, write, out, 2);
            ffi::lua_pop(l, 1);
        })?;
    }
    Ok(CHUNK.get_or_init(|| bytes.into_boxed_slice()))
}

/// Bytes of one `print` line kept (cut on a character boundary).
pub(crate) const MAX_LINE_BYTES: usize = 1024;

/// Where the time of one execution went (docs/limits.md, "Where the time goes"); the parts add up to `total_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Waiting for an engine (pool checkout).
    pub wait_ms: f64,
    /// Lua VM time, host helper calls excluded (prelude Lua code and the helpers' C fast path,
    /// a few table lookups per point, included: timing each would double its cost).
    pub script_ms: f64,
    /// Inside host helper calls: validation, quota, handing points to the recorder.
    pub helpers_ms: f64,
    /// Everything else the host did: compiling, marshalling event/context in and the result
    /// out, environment set-up and teardown.
    pub overhead_ms: f64,
    /// Wall time of the whole execution.
    pub total_ms: f64,
}

/// What an engine's caches hold ([`Engine::cache_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Patterns whose cost is kept: the last tenant's only (emptied when the tenant changes).
    pub patterns: usize,
    /// Verdict leaves of every tenant's trees.
    pub verdicts: usize,
    /// Verdict leaves of the last tenant's trees (at most `max_verdicts`).
    pub tenant_verdicts: usize,
    /// Series the host holds for the verdicts (every tenant's; at most twice `max_verdicts`).
    pub series: usize,
}

/// What happened to the metric points of one execution.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsReport {
    /// Points handed to the recorder and accepted.
    pub accepted: u64,
    /// Points the recorder dropped (memory bound, shutdown).
    pub dropped: u64,
    /// Points rejected by the helpers, by reason.
    pub rejected: BTreeMap<String, u64>,
}

/// The outcome of one script execution: its result or typed error, with what it logged,
/// its metric warnings and its time split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Execution {
    /// The returned value as JSON (`null` when nothing was returned), or why it failed.
    pub result: Result<Json, ScriptError>,
    /// One entry per distinct rejected metric and reason (at most 32).
    pub warnings: Vec<Warning>,
    /// What the script printed (control characters escaped).
    pub log: Vec<String>,
    /// Metric points accepted and rejected.
    pub metrics: MetricsReport,
    /// Where the time went.
    pub timings: Timings,
}

impl Execution {
    /// The execution of `script` the pool gave up on (it did not return within its limit
    /// plus the grace period): a typed timeout with nothing else, its time all waiting and
    /// overhead.
    pub fn abandoned(script: &Script, limit_ms: u64, wait_ms: f64, total_ms: f64) -> Self {
        Execution {
            result: Err(ScriptError::Timeout {
                script: script.id().to_string(),
                limit_ms,
            }),
            warnings: Vec::new(),
            log: Vec::new(),
            metrics: MetricsReport::default(),
            timings: Timings {
                wait_ms,
                overhead_ms: total_ms - wait_ms,
                total_ms,
                ..Timings::default()
            },
        }
    }
}

/// State shared between the engine and the host functions it gave to Lua.
pub(crate) struct Shared {
    epoch: Instant,
    helpers_ns: AtomicU64,
    /// The tenant of the running execution.
    pub(crate) tenant: Mutex<Arc<str>>,
    /// What the running execution printed.
    pub(crate) log: Mutex<Vec<String>>,
    pub(crate) max_log_lines: usize,
    /// What the time split is measured with (the deadline always uses real time).
    clock: Clock,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.clock.now_ns(self.epoch)
    }

    /// Runs a host function's work, counting its time as helper time (not script time).
    pub(crate) fn timed<R>(&self, f: impl FnOnce() -> R) -> R {
        let t = self.now_ns();
        let r = f();
        self.helpers_ns
            .fetch_add(self.now_ns().saturating_sub(t), Relaxed);
        r
    }
}

struct Compiled {
    source: Arc<str>,
    function: Function,
}

/// One sandboxed Lua state. Not shared: one execution at a time (the pool hands it out).
pub struct Engine {
    lua: Lua,
    /// The Lua state's main thread, where scripts start (for the watchdog's hook).
    main: MainThread,
    /// Runs a script's function under the guards' message handler.
    runner: Function,
    /// The execution's deadline and abort state, watched by the watchdog thread.
    slot: Arc<Slot>,
    begin: Function,
    drain: Function,
    /// The prelude's `control.stats`.
    stats: Function,
    /// The prelude's `control.forget`: empties the verdict caches (see [`Engine::health`]).
    forget: Function,
    cache: HashMap<u64, Compiled>,
    shared: Arc<Shared>,
    settings: Arc<EngineSettings>,
    sink: Arc<dyn MetricsSink>,
    poisoned: Option<DiscardReason>,
    executions: u64,
    /// Script and helper time of every execution so far (ns): what tenants are charged.
    busy_ns: u64,
    /// The time limit of the execution in progress.
    limit_ms: u64,
    /// Executions' random seeds: a keyed hash (SipHash, a key of its own per engine) of a
    /// count, so seeds seen by one tenant say nothing of the next.
    seed: (std::collections::hash_map::RandomState, u64),
    /// The Lua state's allocator state; after `lua`, which uses it until it is closed.
    heap: HeapBox,
    /// The Rust half of `helpers.metrics`; last, so the Lua state pointing at it goes first.
    hot: HotBox,
}

/// The main thread of an engine's Lua state.
struct MainThread(*mut ffi::lua_State);

// SAFETY: the engine is used by one thread at a time; the pointer is only handed to Lua's API
// from that thread (and to the watchdog, which may set a hook from any thread).
unsafe impl Send for MainThread {}

/// Owns the allocator state the Lua state's allocator points at.
struct HeapBox(*mut Heap);

// SAFETY: only the Lua state (on the thread running the engine) and the engine use it.
unsafe impl Send for HeapBox {}

impl HeapBox {
    fn heap(&self) -> &Heap {
        // SAFETY: valid until drop; read between executions only.
        unsafe { &*self.0 }
    }

    /// Gives the execution about to start `limit` bytes above what the heap holds now.
    fn limit_from_now(&mut self, limit: usize) {
        // SAFETY: valid until drop; no Lua runs between executions, so the allocator does not
        // use it meanwhile, and `&mut self` excludes every other reader here.
        let heap = unsafe { &mut *self.0 };
        heap.limit_from_now(limit);
    }
}

impl Drop for HeapBox {
    fn drop(&mut self) {
        // SAFETY: dropped after the Lua state (field order), the only other user.
        drop(unsafe { Box::from_raw(self.0) })
    }
}

/// Owns the engine's [`Hot`] through a raw pointer, because the Lua state and the slow path's
/// callbacks point at it too (a `Box` would claim unique access).
struct HotBox(HotRef);

impl HotBox {
    fn new(hot: Hot) -> Self {
        Self(HotRef::from_box(Box::new(hot)))
    }
}

impl Drop for HotBox {
    fn drop(&mut self) {
        // SAFETY: dropped after the Lua state (field order), the only other holder.
        unsafe { self.0.free() }
    }
}

/// Clock readings of one execution, for the time split.
#[derive(Default)]
struct Marks {
    /// When the script's function was called (None: it never was).
    call_start: Option<u64>,
    /// When it returned or raised.
    call_end: Option<u64>,
    /// The call's duration less the helper time inside it.
    script_ns: u64,
}

impl Engine {
    /// Builds a sandboxed engine; scripts it runs record through `sink`.
    pub fn new(
        settings: Arc<EngineSettings>,
        sink: Arc<dyn MetricsSink>,
    ) -> Result<Self, mlua::Error> {
        let libs = StdLib::STRING
            | StdLib::TABLE
            | StdLib::MATH
            | StdLib::UTF8
            | StdLib::COROUTINE
            | StdLib::OS;
        let lua = Lua::new_with(libs, LuaOptions::new())?;
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            helpers_ns: AtomicU64::new(0),
            tenant: Mutex::new(Arc::from("")),
            log: Mutex::new(Vec::new()),
            max_log_lines: settings.max_log_lines,
            clock: settings.clock.clone(),
        });

        let hot = HotBox::new(Hot::new(sink.policy().limits.max_points_per_execution));
        let hr = hot.0;
        let slot = Slot::new();
        let host = host::table(&lua, &shared, &sink, hr, &slot)?;
        // `os.clock` counts this execution's own CPU time (a light C function in the slot of
        // Lua's, so an idle engine holds nothing more for it).
        lua.globals()
            .get::<Table>("os")?
            .set("clock", unsafe { lua.create_c_function(host::clock)? })?;
        let runner = host::guard_fn(&lua, &slot, guard::body)?;
        let limits = lua.create_table()?;
        limits.set("max_verdicts", settings.max_verdicts)?;
        limits.set("max_walk", hot::MAX_WALK)?;
        limits.set("strict", settings.strict)?;
        limits.set("pattern_budget", settings.pattern_budget)?;
        limits.set("max_string_bytes", settings.max_string_bytes)?;
        limits.set("max_table_elements", settings.max_table_elements)?;
        limits.set("max_sort_elements", settings.max_sort_elements)?;
        let control: Table = lua
            .load(prelude_chunk(&lua)?)
            .set_name("=luametrics/prelude.lua")
            .set_mode(ChunkMode::Binary)
            .call((host, limits))?;
        let begin: Function = control.get("begin")?;
        let drain: Function = control.get("drain")?;
        let stats: Function = control.get("stats")?;
        let forget: Function = control.get("forget")?;

        // Lua's `error` and `assert`, for the message handler (`guard::relocate`).
        for (name, slot) in [("error", &guard::ERROR_FN), ("assert", &guard::ASSERT_FN)] {
            let f: Function = lua.globals().get(name)?;
            // SAFETY: reads the C function of the value exec_raw pushed, with no call into Lua.
            unsafe {
                lua.exec_raw::<()>(f, |l| {
                    if let Some(f) = ffi::lua_tocfunction(l, -1) {
                        slot.store(f as usize, std::sync::atomic::Ordering::Relaxed);
                    }
                    ffi::lua_pop(l, 1);
                })?;
            }
        }

        // Nothing of the full state stays reachable by name: scripts see only the prelude's
        // environment. The globals and the loaded-libraries table are replaced by empty ones,
        // not emptied (an emptied table keeps its slots): what the prelude did not take of the
        // libraries is collected, and an idle engine holds less (target 6).
        // Emptied first as well: a prelude function that read a global by mistake (its `_ENV`
        // is the old table) finds nothing there, not `load` or `debug` (review).
        // (With the C API: handles to its keys would each hold a slot of mlua's reference
        // stack, which an idle engine keeps.)
        // SAFETY: plain stack operations on the globals table, with no Lua running; setting
        // existing fields to nil during a `lua_next` traversal is allowed.
        unsafe {
            lua.exec_raw::<()>((), |l| {
                ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, ffi::LUA_RIDX_GLOBALS);
                ffi::lua_pushnil(l);
                while ffi::lua_next(l, -2) != 0 {
                    ffi::lua_pop(l, 1);
                    ffi::lua_pushvalue(l, -1);
                    ffi::lua_pushnil(l);
                    ffi::lua_rawset(l, -4);
                }
                ffi::lua_pop(l, 1);
            })?;
        }
        lua.set_globals(lua.create_table()?)?;
        lua.set_named_registry_value("_LOADED", lua.create_table()?)?;

        lua.gc_collect()?;
        // From here on the engine's own allocator: the heap limit, and a memory abort the
        // script cannot catch (blocks allocated so far are freed the same way).
        let heap = HeapBox(Box::into_raw(Box::new(Heap::new(
            lua.used_memory(),
            settings.memory_limit_bytes,
            Arc::as_ptr(&slot),
        ))));
        let heap_ptr = heap.0 as *mut std::ffi::c_void;
        let mut main = std::ptr::null_mut();
        // SAFETY: swaps the allocator of a state with no Lua running; the heap outlives it.
        unsafe {
            lua.exec_raw::<()>((), |l| {
                ffi::lua_setallocf(l, guard::allocate, heap_ptr);
                ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, ffi::LUA_RIDX_MAINTHREAD);
                main = ffi::lua_tothread(l, -1);
                ffi::lua_pop(l, 1);
            })?;
        }
        let seed = (std::collections::hash_map::RandomState::new(), 0);
        Ok(Self {
            lua,
            main: MainThread(main),
            runner,
            slot,
            heap,
            begin,
            drain,
            stats,
            forget,
            cache: HashMap::new(),
            shared,
            settings,
            sink,
            poisoned: None,
            executions: 0,
            busy_ns: 0,
            limit_ms: 0,
            seed,
            hot,
        })
    }

    /// The engine's execution state, for the pool to starve an engine it wrote off.
    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// Time every execution this engine ran held it, overhead included (ns, by its clock):
    /// the engine time tenants are charged with.
    pub fn busy_ns(&self) -> u64 {
        self.busy_ns
    }

    /// Lua heap in use (as the engine's allocator counts it).
    pub fn used_memory(&self) -> usize {
        self.heap.heap().used()
    }

    /// What the engine's caches hold between executions: one tenant's use must not empty
    /// another's cache, nor leave it anything to find (docs/limits.md, "Isolation").
    pub fn cache_stats(&self) -> CacheStats {
        match self.stats.call::<(usize, usize, usize)>(()) {
            Ok((patterns, verdicts, tenant_verdicts)) => CacheStats {
                patterns,
                verdicts,
                tenant_verdicts,
                series: self.hot.0.with(|h| h.live()),
            },
            Err(_) => CacheStats::default(),
        }
    }

    /// Why this engine must not be reused, if it must not.
    pub fn poisoned(&self) -> Option<DiscardReason> {
        self.poisoned
    }

    /// Executions run on this engine.
    pub fn executions(&self) -> u64 {
        self.executions
    }

    /// Scripts compiled and cached on this engine.
    pub fn cached_scripts(&self) -> usize {
        self.cache.len()
    }

    /// A fresh random seed for an execution, chosen by the host: a script's
    /// `math.randomseed` lasts only until its execution ends.
    fn next_seed(&mut self) -> i64 {
        self.seed.1 = self.seed.1.wrapping_add(1);
        keyed_seed(&self.seed.0, self.seed.1)
    }

    /// Checks the engine can be reused; collects garbage when the heap is large. What an
    /// execution leaves behind is garbage, except the verdict caches: bounded in series, not
    /// bytes, one tenant's long tags could otherwise hold the heap past the bound and have
    /// the engine discarded after each of its executions. Past the bound after a collection
    /// the caches are emptied first, and the engine is discarded only if that is not enough.
    pub fn health(&mut self) -> Option<DiscardReason> {
        if let Some(p) = self.poisoned {
            return Some(p);
        }
        let bound = self.settings.recycle_memory_bytes;
        if self.used_memory() > bound {
            let collected = self.lua.gc_collect().and_then(|()| {
                if self.used_memory() > bound {
                    self.forget.call::<()>(())?;
                    self.lua.gc_collect()?;
                }
                Ok(())
            });
            if collected.is_err() {
                self.poisoned = Some(DiscardReason::Broken);
            } else if self.used_memory() > bound {
                self.poisoned = Some(DiscardReason::HeapTooLarge);
            }
        }
        self.poisoned
    }

    fn compiled(&mut self, script: &Script) -> Result<Function, ScriptError> {
        if let Some(c) = self.cache.get(&script.hash()) {
            if Arc::ptr_eq(&c.source, script.source()) || *c.source == **script.source() {
                return Ok(c.function.clone());
            }
        }
        if self.cache.len() >= self.settings.compile_cache_size.max(1) {
            self.cache.clear();
        }
        // Our own chunk, compiled by this process from the same source: loading it is
        // linear in its size, where compiling may not be (see `Script::bytecode`).
        let loaded = match script.bytecode() {
            Some(chunk) => self
                .lua
                .load(&chunk[..])
                .set_name(format!("={}", script.id()))
                .set_mode(ChunkMode::Binary)
                .into_function(),
            None => self
                .lua
                .load(&**script.source())
                .set_name(format!("={}", script.id()))
                .set_mode(ChunkMode::Text)
                .into_function(),
        };
        let function = loaded.map_err(|e| {
            // Out of memory while compiling (a huge chunk, or a starved engine) is a
            // memory error, typed by Lua's status, not a syntax error.
            if matches!(root(&e), mlua::Error::MemoryError(_)) {
                return ScriptError::Memory {
                    script: script.id().to_string(),
                    limit_bytes: self.settings.memory_limit_bytes,
                };
            }
            let message = match &e {
                mlua::Error::SyntaxError { message, .. } => message.clone(),
                other => other.to_string(),
            };
            let (line, message) = split_location(&message, script.id());
            ScriptError::Syntax {
                script: script.id().to_string(),
                line,
                message: bounded_text(&printable(&message), MAX_LINE_BYTES),
            }
        })?;
        script.keep_bytecode(&function);
        self.cache.insert(
            script.hash(),
            Compiled {
                source: script.source().clone(),
                function: function.clone(),
            },
        );
        Ok(function)
    }

    /// Runs a script for a tenant with an event and a context; the time split excludes any
    /// pool wait (the pool adds it).
    pub fn execute(
        &mut self,
        script: &Script,
        tenant: &str,
        event: &Json,
        context: &Json,
    ) -> Execution {
        self.execute_limited(script, tenant, event, context, None)
    }

    /// Like [`Engine::execute`] with a time limit for this execution (a pipeline node's
    /// timeout) instead of the engine's default.
    pub fn execute_limited(
        &mut self,
        script: &Script,
        tenant: &str,
        event: &Json,
        context: &Json,
        time_limit_ms: Option<u64>,
    ) -> Execution {
        let t0 = self.shared.now_ns();
        // A panic in a host function must not cross the execution: the engine is written off
        // and the caller gets a typed error.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.execute_inner(script, tenant, event, context, time_limit_ms, t0)
        }));
        match run {
            Ok(execution) => execution,
            Err(panic) => {
                self.end_run();
                self.poisoned = Some(DiscardReason::Panic);
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a host function panicked".to_string());
                let total_ms = self.shared.now_ns().saturating_sub(t0) as f64 / 1e6;
                Execution {
                    result: Err(ScriptError::Internal {
                        script: script.id().to_string(),
                        message: bounded_text(&message, MAX_LINE_BYTES),
                    }),
                    warnings: Vec::new(),
                    log: Vec::new(),
                    metrics: MetricsReport::default(),
                    timings: Timings {
                        overhead_ms: total_ms,
                        total_ms,
                        ..Timings::default()
                    },
                }
            }
        }
    }

    /// Ends the watchdog's view of the running execution; the abort hook, if it fired, comes
    /// off the main thread so the host can run its own Lua (the prelude's drain) again.
    fn end_run(&self) {
        if self.slot.end() {
            // SAFETY: the engine's own main thread; no Lua runs on it now.
            unsafe { watchdog::unhook(self.main.0) };
        }
    }

    /// Everything one execution leaves behind is reset before it starts, whatever the previous
    /// execution did or however it ended: log, per-execution aggregates and quota lease,
    /// pending rejections and warnings.
    fn start_clean(&mut self) {
        crate::host::start_clock();
        self.shared.log.lock().clear();
        self.shared.helpers_ns.store(0, Relaxed);
        let leftover = self.hot.0.with(|h| {
            h.begin();
            std::mem::take(&mut h.rejections_pending)
        });
        if leftover && self.drain.call::<(Table, Table)>(()).is_err() {
            self.poisoned = Some(DiscardReason::Broken);
        }
    }

    fn execute_inner(
        &mut self,
        script: &Script,
        tenant: &str,
        event: &Json,
        context: &Json,
        time_limit_ms: Option<u64>,
        t0: u64,
    ) -> Execution {
        let sh = self.shared.clone();
        self.limit_ms = time_limit_ms.unwrap_or(self.settings.time_limit_ms);
        self.executions += 1;
        self.start_clean();
        {
            let mut t = sh.tenant.lock();
            if **t != *tenant {
                *t = Arc::from(tenant);
            }
        }
        // Each part of the split is measured on its own intervals; the total is measured
        // separately, so a part left unmeasured shows as a sum short of the total.
        let mut marks = Marks::default();
        let result = self.run(script, event, context, &mut marks);

        // Hand the buffered points over (helper time), whatever the outcome: what a script
        // recorded before failing was accepted and stays accepted.
        let hand_off = sh.now_ns();
        let (metrics, warnings) = self.hand_off(tenant);
        let handed = sh.now_ns();
        sh.helpers_ns
            .fetch_add(handed.saturating_sub(hand_off), Relaxed);

        if let Err(e) = &result {
            if let Some(reason) = e.poisons_engine() {
                self.poisoned = Some(reason);
            }
        }
        let log = std::mem::take(&mut *sh.log.lock());
        let end = sh.now_ns();
        let helpers_ns = sh.helpers_ns.load(Relaxed);
        // Overhead: before the call (compile, marshal in, environment), after it (result out),
        // and after the hand-off (teardown). Without a call, everything up to the hand-off.
        let call_start = marks.call_start.unwrap_or(hand_off);
        let call_end = marks.call_end.unwrap_or(hand_off);
        let overhead_ns = call_start.saturating_sub(t0)
            + hand_off.saturating_sub(call_end)
            + end.saturating_sub(handed);
        let ms = |ns: u64| ns as f64 / 1e6;
        // Tenants are charged all the time their execution held the engine: the script, its
        // helpers, and the overhead (the event's conversion, the result's, teardown: a 1 MB
        // event took 41 ms to convert for 0.004 ms of script, charged to nobody before;
        // adversary round 8).
        self.busy_ns += end.saturating_sub(t0);
        Execution {
            result,
            warnings,
            log,
            metrics,
            timings: Timings {
                wait_ms: 0.0,
                script_ms: ms(marks.script_ns),
                helpers_ms: ms(helpers_ns),
                overhead_ms: ms(overhead_ns),
                total_ms: ms(end.saturating_sub(t0)),
            },
        }
    }

    fn run(
        &mut self,
        script: &Script,
        event: &Json,
        context: &Json,
        marks: &mut Marks,
    ) -> Result<Json, ScriptError> {
        // The limit is the execution's own: what the engine holds already (other tenants'
        // cached verdicts, garbage not yet collected: at most `recycle_memory_bytes` after a
        // collection) does not shrink it (adversary round 13: a tenant's 15 MB allocation
        // failed or not depending on what another tenant had cached on the same engine, which
        // also told it how many series that tenant used).
        self.heap.limit_from_now(self.settings.memory_limit_bytes);
        let function = self.compiled(script)?;
        let depth = self.settings.max_depth;
        let invalid = |problem: String| ScriptError::InvalidEvent { problem };
        let seed = self.next_seed();
        let tenant = self.shared.tenant.lock().clone();
        let ev = to_lua(&self.lua, event, depth).map_err(|p| invalid(format!("event {p}")))?;
        let cx = to_lua(&self.lua, context, depth).map_err(|p| invalid(format!("context {p}")))?;
        let env: Table = self
            .begin
            .call((ev, cx, &*tenant, seed))
            .map_err(|e| self.classify(script, e))?;
        // A chunk without its upvalues' names (a stripped dump) would keep the engine's real
        // globals: never run it.
        if !function
            .set_environment(env)
            .map_err(|e| self.classify(script, e))?
        {
            return Err(ScriptError::Internal {
                script: script.id().to_string(),
                message: "the script's environment could not be set".into(),
            });
        }

        let sh = &self.shared;
        let limit_ns = self.limit_ms.saturating_mul(1_000_000).max(1);
        let helpers_before = sh.helpers_ns.load(Relaxed);
        let start = sh.now_ns();
        marks.call_start = Some(start);
        self.slot
            .begin(self.main.0, watchdog::now_ns().saturating_add(limit_ns));
        let out = self.runner.call::<MultiValue>(function);
        self.end_run();
        let end = sh.now_ns();
        marks.call_end = Some(end);
        let helpers_in_call = sh.helpers_ns.load(Relaxed) - helpers_before;
        marks.script_ns = end.saturating_sub(start).saturating_sub(helpers_in_call);
        if let Some(error) = self.aborted(script) {
            // A limit fired, even if the script then returned: its verdict stands.
            return Err(error);
        }
        let values = out.map_err(|e| self.classify(script, e))?;
        let first = values.into_iter().next().unwrap_or(Value::Nil);
        FromLua::new(
            depth,
            self.settings.max_result_nodes,
            self.settings.max_result_bytes,
        )
        .convert(&self.lua, first, "result")
        .map_err(|problem| ScriptError::InvalidResult {
            script: script.id().to_string(),
            // Names the script's own keys: bounded and printable like any script text.
            problem: bounded_text(&printable(&problem), MAX_LINE_BYTES),
        })
    }

    /// The typed error of the limit that ended the execution, if one did: set by the host
    /// (watchdog, allocator, stack probe), never read from an error message.
    fn aborted(&self, script: &Script) -> Option<ScriptError> {
        let id = script.id().to_string();
        match self.slot.abort() {
            ABORT_TIME => Some(ScriptError::Timeout {
                script: id,
                limit_ms: self.limit_ms,
            }),
            ABORT_MEMORY => Some(ScriptError::Memory {
                script: id,
                limit_bytes: self.settings.memory_limit_bytes,
            }),
            ABORT_STACK => Some(ScriptError::StackOverflow { script: id }),
            _ => None,
        }
    }

    fn classify(&self, script: &Script, e: mlua::Error) -> ScriptError {
        if let Some(error) = self.aborted(script) {
            return error;
        }
        let id = script.id().to_string();
        // A memory error outside a script's run (building its environment): typed by Lua's
        // status (mlua's MemoryError), not by the message.
        if matches!(root(&e), mlua::Error::MemoryError(_)) {
            return ScriptError::Memory {
                script: id,
                limit_bytes: self.settings.memory_limit_bytes,
            };
        }
        let text = root_message(&e);
        let (line, message) = split_location(&text, script.id());
        ScriptError::Runtime {
            script: id,
            line,
            message: bounded_text(&printable(&message), MAX_LINE_BYTES),
        }
    }

    fn hand_off(&mut self, tenant: &str) -> (MetricsReport, Vec<Warning>) {
        let mut report = MetricsReport::default();
        let (points, unused) = self.hot.0.with(|h| h.drain());
        if !points.is_empty() {
            let r = self.sink.ingest_user_batch(tenant, points);
            report.accepted = r.accepted;
            report.dropped = r.dropped;
        }
        if unused > 0 {
            self.sink.release_points(tenant, unused);
        }
        if !self
            .hot
            .0
            .with(|h| std::mem::take(&mut h.rejections_pending))
        {
            return (report, Vec::new());
        }
        let drained: mlua::Result<(Table, Table)> = self.drain.call(());
        let Ok((rejected, warnings_t)) = drained else {
            // The prelude's state could not be read: never reuse this engine.
            self.poisoned = Some(DiscardReason::Broken);
            return (report, Vec::new());
        };
        let mut rejections = Vec::new();
        for (reason, n) in rejected.pairs::<String, u64>().flatten() {
            let parsed = RejectReason::parse(&reason);
            if let Some(r) = parsed {
                rejections.push((r, n));
            }
            // A valid point that found no room (its metric's names, near the memory bound)
            // is dropped, not rejected: counted so in the report as on `/metrics` (adversary
            // round 13: the report said rejected where `/metrics` said dropped).
            if parsed == Some(RejectReason::MemoryBound) {
                report.dropped += n;
            } else {
                report.rejected.insert(reason, n);
            }
        }
        let warnings: Vec<Warning> = warnings_t
            .sequence_values::<Table>()
            .flatten()
            .map(|w| Warning {
                metric: printable(&w.get::<String>("metric").unwrap_or_default()),
                reason: w.get::<String>("reason").unwrap_or_default(),
                count: w.get::<u64>("count").unwrap_or(0),
            })
            .collect();
        if !rejections.is_empty() {
            self.sink.count_user_rejections(&rejections);
            self.sink
                .count_tenant_rejections(tenant, &rejections, &warnings);
            // Dropped for room, not rejected: `/metrics` counts those as dropped already.
            for (r, n) in rejections
                .iter()
                .filter(|(r, _)| *r != RejectReason::MemoryBound)
            {
                self.sink.record_system(
                    "helpers.metrics.rejected.count",
                    Kind::Counter,
                    *n as f64,
                    Tags::from([("reason".to_string(), r.as_str().to_string())]),
                );
            }
        }
        (report, warnings)
    }
}

fn root(e: &mlua::Error) -> &mlua::Error {
    match e {
        mlua::Error::CallbackError { cause, .. } => root(cause),
        mlua::Error::WithContext { cause, .. } => root(cause),
        other => other,
    }
}

/// The first line of Lua's message, without mlua's traceback.
fn root_message(e: &mlua::Error) -> String {
    let text = match root(e) {
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::MemoryError(m) => m.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    text.lines().next().unwrap_or("").to_string()
}

/// Splits `id:LINE: message` into the line and the message.
fn split_location(text: &str, id: &str) -> (Option<u32>, String) {
    let first = text.lines().next().unwrap_or(text);
    if let Some(rest) = first.strip_prefix(id).and_then(|r| r.strip_prefix(':')) {
        if let Some((num, msg)) = rest.split_once(':') {
            if let Ok(line) = num.parse::<u32>() {
                return (Some(line), msg.trim().to_string());
            }
        }
    }
    (None, first.trim().to_string())
}

/// The prelude's local names of the C library functions it wraps, and Lua's names for them.
pub(crate) const LIBRARY_NAMES: &[(&str, &str)] = &[
    ("s_format", "format"),
    ("s_rep", "rep"),
    ("s_find", "find"),
    ("s_match", "match"),
    ("s_gmatch", "gmatch"),
    ("s_gsub", "gsub"),
    ("s_byte", "byte"),
    ("s_sub", "sub"),
    ("t_insert", "insert"),
    ("t_remove", "remove"),
    ("t_move", "move"),
    ("t_concat", "concat"),
    ("t_unpack", "unpack"),
    ("t_sort", "sort"),
    ("os_date", "date"),
    ("raw_tonumber", "tonumber"),
    ("co_create", "create"),
    ("co_wrap", "wrap"),
    ("co_close", "close"),
];

/// The message of `text` after a `luametrics/prelude.lua:LINE: ` position, if it has one.
pub(crate) fn without_prelude_position(text: &[u8]) -> Option<&[u8]> {
    let rest = text.strip_prefix(b"luametrics/prelude.lua:".as_slice())?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    rest[digits..].strip_prefix(b": ").filter(|_| digits > 0)
}

/// Bytes of a library error's message in which its function's name is looked for: Lua puts
/// it first (`bad argument #1 to 'rep' (...)`); the rest may be as long as a script's
/// `__name` and is copied as it is (adversary round 17: an 8 MiB message took the message
/// handler 100 ms in C, past the time limit).
const LIBRARY_HEAD: usize = 256;

/// Appends `message` to `out` with Lua's names for the prelude's aliases (and, for a method
/// call, arguments counted from `self`), rewriting only its head.
pub(crate) fn library_text(message: &[u8], method: bool, out: &mut Vec<u8>) {
    let mut cut = message.len().min(LIBRARY_HEAD);
    while cut > 0 && cut < message.len() && message[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    let (head, tail) = message.split_at(cut);
    // Bytes, not text: a script's bytes in the message (a binary `__name`) stay as they are.
    let mut head = head.to_vec();
    // Lua names the function before any detail in parentheses (where a script's `__name`
    // may appear): only that part is looked at, and the name is replaced once.
    let named = head.iter().position(|&b| b == b'(').unwrap_or(head.len());
    for (alias, name) in LIBRARY_NAMES {
        let quoted = format!("'{alias}'");
        let found = head[..named]
            .windows(quoted.len())
            .position(|w| w == quoted.as_bytes());
        if let Some(at) = found {
            head.splice(at..at + quoted.len(), format!("'{name}'").into_bytes());
            break;
        }
    }
    if method {
        if let Ok(text) = String::from_utf8(head.clone()) {
            head = crate::guard::from_self(text).into_bytes();
        }
    }
    out.extend_from_slice(&head);
    out.extend_from_slice(tail);
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// `s` cut to at most `max` bytes on a character boundary, with a marker when cut.
fn bounded_text(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut t = s.to_string();
    truncate_at_char(&mut t, max);
    t.push_str("…[truncated]");
    t
}

/// `s` with control characters (tab excepted) written as `\u{..}` escapes: what a script
/// prints or names reaches API clients and logs as text, never as terminal controls.
pub fn printable(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() && c != '\t' {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The one text of a numeric tag value, whatever its Lua type or history: integral floats as
/// integers (`1.0` -> `1`, `-0.0` -> `0`), other floats in their shortest round-trip form.
/// Lua folds an integral float into one table key with the integer it equals, whenever one
/// does (from -2^63 up to, not including, 2^63), so they must also be one label.
pub fn canonical_number(f: f64) -> String {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f) {
        return (f as i64).to_string();
    }
    // Debug formatting is Rust's shortest round-trip form (exponent for very large or small).
    format!("{f:?}")
}

/// The `n`th seed under `key`. A script can recover its seed from `math.random`'s outputs
/// (xoshiro256** and Lua's seeding are invertible); seeds were splitmix64 steps, themselves
/// invertible, so a tenant could count the executions other tenants ran on its engine between
/// two of its own (adversary round 11). A keyed hash of the count gives nothing away.
fn keyed_seed(key: &std::collections::hash_map::RandomState, n: u64) -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = key.build_hasher();
    h.write_u64(n);
    h.finish() as i64
}

#[cfg(test)]
mod seed_tests {
    use super::keyed_seed;
    use std::collections::hash_map::RandomState;

    /// splitmix64's output mix, undone: what a script learns of the old state from its seed.
    fn unmix(z: u64) -> u64 {
        let mut z = z ^ (z >> 31) ^ (z >> 62);
        z = z.wrapping_mul(0x3196_42b2_d24d_8ec3);
        z ^= (z >> 27) ^ (z >> 54);
        z = z.wrapping_mul(0x96de_1b17_3f11_9089);
        z ^ (z >> 30) ^ (z >> 60)
    }

    #[test]
    fn consecutive_seeds_do_not_reveal_their_distance() {
        // The inverse is right: it recovers splitmix64's state from its output.
        let state = 0x1234_5678_9abc_def0u64;
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        assert_eq!(unmix(z ^ (z >> 31)), state);
        // Seeds are not splitmix64 steps: the states behind three consecutive seeds are not
        // equally spaced (they were, by the golden-ratio increment).
        let key = RandomState::new();
        let s: Vec<u64> = (1..=3).map(|n| unmix(keyed_seed(&key, n) as u64)).collect();
        assert_ne!(s[1].wrapping_sub(s[0]), s[2].wrapping_sub(s[1]));
        // And each engine's key is its own.
        assert_ne!(keyed_seed(&key, 1), keyed_seed(&RandomState::new(), 1));
    }
}

#[cfg(test)]
mod library_text_tests {
    use super::library_text;

    fn text(message: &[u8], method: bool) -> Vec<u8> {
        let mut out = Vec::new();
        library_text(message, method, &mut out);
        out
    }

    // Review: the head went through `from_utf8_lossy`, which changed a script's bytes.
    #[test]
    fn the_alias_is_renamed_and_the_scripts_bytes_kept() {
        assert_eq!(
            text(
                b"bad argument #1 to 's_rep' (string expected, got \xff\xfe 's_rep')",
                false
            ),
            b"bad argument #1 to 'rep' (string expected, got \xff\xfe 's_rep')".to_vec()
        );
        assert_eq!(
            text(
                b"bad argument #2 to 's_rep' (number expected, got nil)",
                true
            ),
            b"bad argument #1 to 'rep' (number expected, got nil)".to_vec()
        );
        let long = [b"bad argument #1 to 't_sort' (".as_slice(), &[b'x'; 1000]].concat();
        let out = text(&long, false);
        assert!(out.starts_with(b"bad argument #1 to 'sort' ("));
        assert_eq!(out.len(), long.len() - 2);
    }
}
