//! The limits a script cannot catch: the engine's allocator, and the `pcall`, `xpcall` and
//! `coroutine.resume` the sandbox gives scripts instead of Lua's own.
//!
//! Lua's `pcall` catches every error, limits included; the message a limit raises ("not
//! enough memory", "stack overflow") is text a script can also raise itself. So the host sets
//! the abort kind itself ([`Slot::fire`]) from facts, never from text:
//! - **memory**: the allocator below refused an allocation while a script ran (withdrawn when
//!   Lua's emergency collection makes its retry fit), or a guarded call saw Lua's `LUA_ERRMEM`
//!   status;
//! - **stack**: a guarded call saw an error *and* the stack really is at its limit: the Lua
//!   stack cannot grow (Lua moved it to its error-handling size) or the C stack has fewer than
//!   [`C_STACK_MARGIN`] nested calls left (probed by nesting protected calls);
//! - **time**: the watchdog.
//!
//! Once a kind is set, the guards re-raise whatever they caught, and the abort hook makes every
//! later instruction raise, so the script cannot carry on.
//!
//! # Safety
//! These are Lua C functions written against the raw API. Their frames hold no value with a
//! destructor when they call anything that may raise (`lua_error`, `lua_call`, allocation),
//! so Lua's `longjmp` may cross them. The [`Slot`] they reach through their first upvalue (a
//! light userdata) is owned by the engine, which outlives its Lua state's functions.

use crate::watchdog::{Slot, ABORT_MEMORY, ABORT_STACK};
use mlua::ffi;
use std::alloc::{self, Layout};
use std::os::raw::{c_int, c_void};

/// A guard probing the C stack nests this many protected calls: an error on the way means the
/// C stack is within this many calls of Lua's limit (LUAI_MAXCCALLS, 200).
const C_STACK_MARGIN: i64 = 24;

/// Free slots the Lua stack must still be able to grow by: Lua gives a stack that overflowed
/// only 200 extra slots (ERRORSTACKSIZE) and refuses to grow it further.
const LUA_STACK_MARGIN: c_int = 400;

/// The engine's allocator state: its heap limit and the slot to fire when the limit refuses an
/// allocation during an execution.
pub(crate) struct Heap {
    used: usize,
    limit: usize,
    slot: *const Slot,
    /// A refused request (block, old size, new size) whose retry may still come: Lua answers
    /// a refusal with an emergency collection and asks once more, at once.
    refused: Option<(usize, usize, usize)>,
    /// The abort hook's raise count at that refusal: a withdrawal needs it unchanged (no Lua
    /// ran between the refusal and the retry).
    raises_at_refusal: u64,
    /// Memory was freed since that refusal: the emergency collection ran (a retry without a
    /// collection in between is not Lua's retry).
    freed_since_refusal: bool,
}

impl Heap {
    pub(crate) fn new(used: usize, limit: usize, slot: *const Slot) -> Self {
        Self {
            used,
            limit,
            slot,
            refused: None,
            raises_at_refusal: 0,
            freed_since_refusal: false,
        }
    }

    /// Bytes in use.
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// Allows `limit` bytes above what is in use now (an execution's own allowance).
    pub(crate) fn limit_from_now(&mut self, limit: usize) {
        self.limit = self.used.saturating_add(limit);
    }
}

/// Lua's allocator for engines: the same layout as mlua's (so blocks mlua allocated before the
/// switch are freed correctly), a heap limit, and a memory abort when the limit refuses an
/// allocation while a script runs (outside an execution, e.g. while building an event, a
/// refusal is only the error it raises).
///
/// # Safety
/// `ud` is the engine's `Heap`, which outlives the Lua state.
pub(crate) unsafe extern "C" fn allocate(
    ud: *mut c_void,
    ptr: *mut c_void,
    osize: usize,
    nsize: usize,
) -> *mut c_void {
    // SAFETY: see above; Lua calls its allocator from the thread running the state only.
    let heap = unsafe { &mut *(ud as *mut Heap) };
    let align = ffi::SYS_MIN_ALIGN;
    if nsize == 0 {
        if !ptr.is_null() {
            // SAFETY: allocated by this allocator or mlua's, with this layout.
            unsafe {
                alloc::dealloc(
                    ptr as *mut u8,
                    Layout::from_size_align_unchecked(osize, align),
                )
            };
            heap.used = heap.used.saturating_sub(osize);
            heap.freed_since_refusal = true;
        }
        return std::ptr::null_mut();
    }
    if nsize > isize::MAX as usize / 2 {
        return std::ptr::null_mut();
    }
    // For a new block `osize` is the object's type, not a size.
    let old = if ptr.is_null() { 0 } else { osize };
    // SAFETY: the slot outlives the state (see `Heap`).
    let slot = unsafe { &*heap.slot };
    let request = (ptr as usize, osize, nsize);
    // A written-off engine gets nothing more: whatever C loop kept it running past its
    // deadline and grace ends at its next allocation (a memory error, as at the limit).
    if nsize > old && (heap.used + (nsize - old) > heap.limit || slot.is_starved()) {
        // The abort fires at once, so that no Lua runs after a refusal (`__close` handlers
        // unwinding the error included). Lua answers a refusal with an emergency collection
        // (no Lua runs during it: finalizers are not allowed) and asks once more: if that
        // second request fits, the abort is withdrawn.
        if heap.refused == Some(request) {
            // The retry failed too: the abort is final.
            heap.refused = None;
        } else if slot.is_running() && !slot.aborted() {
            // This refusal owns the abort: only its own retry may withdraw it.
            slot.fire(ABORT_MEMORY);
            heap.refused = Some(request);
            heap.raises_at_refusal = crate::watchdog::hook_raises();
            heap.freed_since_refusal = false;
        } else {
            // Outside a script, or an execution already aborted: nothing to withdraw later.
            heap.refused = None;
        }
        return std::ptr::null_mut();
    }
    if nsize > old {
        if heap.refused == Some(request)
            && heap.freed_since_refusal
            && crate::watchdog::hook_raises() == heap.raises_at_refusal
        {
            slot.withdraw(ABORT_MEMORY);
        }
        heap.refused = None;
    }
    let new = if ptr.is_null() {
        match Layout::from_size_align(nsize, align) {
            // SAFETY: a non-zero size.
            Ok(layout) => unsafe { alloc::alloc(layout) },
            Err(_) => return std::ptr::null_mut(),
        }
    } else {
        // SAFETY: `ptr` was allocated with this layout of `osize` bytes.
        unsafe {
            alloc::realloc(
                ptr as *mut u8,
                Layout::from_size_align_unchecked(osize, align),
                nsize,
            )
        }
    };
    if !new.is_null() {
        heap.used = heap.used + nsize - old;
    }
    new as *mut c_void
}

/// The slot of the running guard (its first upvalue).
///
/// # Safety
/// Called from a C function created with the slot as its first upvalue.
unsafe fn slot<'a>(l: *mut ffi::lua_State) -> &'a Slot {
    unsafe { &*(ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)) as *const Slot) }
}

/// One level of the C-stack probe: nests `n` protected calls; pushes whether all succeeded.
unsafe extern "C-unwind" fn probe_level(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua with a valid state; the three slots it pushes were checked with
    // `lua_checkstack` first.
    unsafe {
        let n = ffi::lua_tointeger(l, 1);
        let mut ok = true;
        if n > 0 {
            if ffi::lua_checkstack(l, 3) == 0 {
                ok = false;
            } else {
                ffi::lua_pushcfunction(l, probe_level);
                ffi::lua_pushinteger(l, n - 1);
                ok = ffi::lua_pcall(l, 1, 1, 0) == ffi::LUA_OK && ffi::lua_toboolean(l, -1) != 0;
            }
        }
        ffi::lua_pushboolean(l, ok as c_int);
        1
    }
}

/// Whether the C stack of `l` is within [`C_STACK_MARGIN`] calls of its limit.
unsafe fn c_stack_exhausted(l: *mut ffi::lua_State) -> bool {
    // SAFETY: `l` is a valid state on this thread; stack room is checked before pushing.
    unsafe {
        if ffi::lua_checkstack(l, 3) == 0 {
            return true;
        }
        ffi::lua_pushcfunction(l, probe_level);
        ffi::lua_pushinteger(l, C_STACK_MARGIN);
        let ok = ffi::lua_pcall(l, 1, 1, 0) == ffi::LUA_OK && ffi::lua_toboolean(l, -1) != 0;
        ffi::lua_pop(l, 1);
        !ok
    }
}

/// Whether the error on top of `l`'s stack is a real stack overflow: it says so, and the Lua
/// stack of `thread` (where it was raised) cannot grow or the C stack of `l` is exhausted.
unsafe fn is_stack_overflow(l: *mut ffi::lua_State, thread: *mut ffi::lua_State) -> bool {
    // SAFETY: `l` and `thread` are valid states of one Lua universe on this thread; only
    // their stacks' tops are read.
    unsafe {
        let mut len = 0usize;
        if ffi::lua_type(l, -1) != ffi::LUA_TSTRING {
            return false;
        }
        let text = ffi::lua_tolstring(l, -1, &mut len);
        if text.is_null() {
            return false;
        }
        let bytes = std::slice::from_raw_parts(text as *const u8, len);
        if !bytes.ends_with(b"stack overflow") {
            return false;
        }
        ffi::lua_checkstack(thread, LUA_STACK_MARGIN) == 0 || c_stack_exhausted(l)
    }
}

/// The message handler of guarded calls: runs where the error was raised, before the stack
/// unwinds, so it can tell a real overflow from a message. Upvalues: the slot, and for
/// `xpcall` the script's handler, which it calls unless a limit fired.
unsafe extern "C-unwind" fn on_error(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a message handler created with the slot (and for `xpcall` the
    // script's handler) as upvalues, with the error on top of the stack.
    unsafe {
        let slot = slot(l);
        if !slot.aborted() && is_stack_overflow(l, l) {
            slot.fire(ABORT_STACK);
        }
        if !slot.aborted() {
            relocate(l);
        }
        if !slot.aborted() && ffi::lua_type(l, ffi::lua_upvalueindex(2)) != ffi::LUA_TNONE {
            // An error inside the script's handler comes back here (Lua calls the handler
            // again with it): past a few rounds the error is Lua's "error in error handling",
            // as Lua's own recursion ends (adversary round 18: the recursion ran into the C
            // stack's limit, which the probe above took for an overflow of the script's).
            let depth = ffi::lua_tointegerx(l, ffi::lua_upvalueindex(3), std::ptr::null_mut());
            if depth >= MAX_HANDLER_ROUNDS {
                ffi::lua_settop(l, 0);
                ffi::lua_pushliteral(l, c"error in error handling");
                return 1;
            }
            ffi::lua_pushinteger(l, depth + 1);
            ffi::lua_replace(l, ffi::lua_upvalueindex(3));
            ffi::lua_settop(l, 1);
            ffi::lua_pushvalue(l, ffi::lua_upvalueindex(2));
            ffi::lua_insert(l, 1);
            ffi::lua_call(l, 1, 1);
            ffi::lua_pushinteger(l, depth);
            ffi::lua_replace(l, ffi::lua_upvalueindex(3));
        }
        ffi::lua_settop(l, 1);
        1
    }
}

/// Times a failing `xpcall` handler is called again with its own error before the error
/// becomes "error in error handling".
const MAX_HANDLER_ROUNDS: ffi::lua_Integer = 8;

/// Stack levels the message handler looks through for the prelude's frames. Messages with a
/// prelude position come from the prelude's code or a C function it called, a level or two
/// down: the vendored `error` never names a prelude frame, however deep a script's callback
/// recurses (its messages are left alone here anyway).
const MAX_RELOCATE_LEVELS: c_int = 32;

/// Lua's `error` C function (its address), read when the first engine is built.
pub(crate) static ERROR_FN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Lua's `assert` C function (its address), read when the first engine is built.
pub(crate) static ASSERT_FN: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Where the prelude's chunk is named in error positions.
const PRELUDE_SRC: &[u8] = b"luametrics/prelude.lua";

/// Rewrites an error raised inside the prelude (at index 1) as Lua raises it for a direct
/// call: at the script's line that called the wrapper (none when a C function such as `pcall`
/// called it, as in Lua), with Lua's name for the function instead of the prelude's local
/// alias, and counting arguments from `self` for a method call (`s:rep(x)`: argument #1 is
/// `x`). The prelude's positions never reach the script: a message that starts with one is
/// rewritten when a prelude frame is on the stack near the error (its own code raised it, a
/// C function it called, or a script's callback it called whose `error(msg, level)` named a
/// prelude frame). A script's own text that only reads like the prelude's is kept when no
/// prelude frame is near (adversary round 16); raised while the prelude runs a callback for
/// the script, it is read as the prelude's (rounds 18, 19: telling them apart there cost leaks
/// of the prelude's positions).
///
/// # Safety
/// A message handler's state, with the error at index 1.
unsafe fn relocate(l: *mut ffi::lua_State) {
    unsafe {
        if ffi::lua_type(l, 1) != ffi::LUA_TSTRING {
            return;
        }
        let mut len = 0;
        let ptr = ffi::lua_tolstring(l, 1, &mut len);
        let text = std::slice::from_raw_parts(ptr as *const u8, len);
        let Some(message) = crate::engine::without_prelude_position(text) else {
            return;
        };
        let mut ar: ffi::lua_Debug = std::mem::MaybeUninit::zeroed().assume_init();
        // Raised by `error` or `assert` themselves: the vendored `error` never writes a prelude
        // position (it names the first frame below the prelude's) and `assert` writes none,
        // so the text is the script's own, or one this handler saw already (a wrapped
        // coroutine's error raised again).
        if ffi::lua_getstack(l, 1, &mut ar) != 0 && ffi::lua_getinfo(l, c"f".as_ptr(), &mut ar) != 0
        {
            let raiser = ffi::lua_tocfunction(l, -1);
            ffi::lua_pop(l, 1);
            let raiser = raiser.map_or(0, |f| f as usize);
            let ours = |f: &std::sync::atomic::AtomicUsize| {
                let f = f.load(std::sync::atomic::Ordering::Relaxed);
                f != 0 && f == raiser
            };
            if ours(&ERROR_FN) || ours(&ASSERT_FN) {
                return;
            }
        }
        let mut level = 1; // level 0 is this handler
        let mut method = false;
        let mut in_prelude = false;
        let mut place = None;
        // The prelude's frames sit near the top: a bounded walk.
        while level < MAX_RELOCATE_LEVELS && ffi::lua_getstack(l, level, &mut ar) != 0 {
            level += 1;
            if ffi::lua_getinfo(l, c"Sln".as_ptr(), &mut ar) == 0 {
                break;
            }
            let src = std::ffi::CStr::from_ptr(ar.short_src.as_ptr()).to_bytes();
            if src == PRELUDE_SRC {
                in_prelude = true;
                method = !ar.namewhat.is_null()
                    && std::ffi::CStr::from_ptr(ar.namewhat).to_bytes() == b"method";
                continue;
            }
            if !in_prelude {
                // Frames above the prelude's: the raising function, or a script's callback
                // the prelude called (`__tostring` for `print`, a comparator), whose
                // `error(msg, level)` may name a prelude frame (adversary round 19).
                continue;
            }
            if ar.currentline > 0 {
                place = Some(format!(
                    "{}:{}: ",
                    String::from_utf8_lossy(src),
                    ar.currentline
                ));
            }
            break;
        }
        if !in_prelude {
            return;
        }
        let mut out = place.unwrap_or_default().into_bytes();
        crate::engine::library_text(message, method, &mut out);
        ffi::lua_pushlstring(l, out.as_ptr() as *const _, out.len());
        ffi::lua_replace(l, 1);
    }
}

/// `bad argument #N to 'f'` of a method call counted from its `self`, as Lua counts it.
pub(crate) fn from_self(message: String) -> String {
    let Some(rest) = message.strip_prefix("bad argument #") else {
        return message;
    };
    let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
    let Ok(n) = rest[..digits].parse::<u32>() else {
        return message;
    };
    let tail = &rest[digits..];
    match n {
        0 => message,
        1 => {
            // Lua: "calling 'f' on bad self (reason)".
            let Some(tail) = tail.strip_prefix(" to ") else {
                return message;
            };
            format!("calling {tail}").replacen(" (", " on bad self (", 1)
        }
        n => format!("bad argument #{}{tail}", n - 1),
    }
}

/// After a guarded call: re-raises when a limit fired, else returns like Lua's `pcall`.
/// Stack: `true, handler, results...` or `true, handler, error`.
unsafe extern "C-unwind" fn finish(
    l: *mut ffi::lua_State,
    status: c_int,
    _: ffi::lua_KContext,
) -> c_int {
    // SAFETY: a continuation Lua calls with the same state and upvalues as the call it
    // continues.
    unsafe {
        let slot = slot(l);
        if status == ffi::LUA_ERRMEM {
            // Lua's status, not the message: a memory error the script may not catch.
            slot.fire(ABORT_MEMORY);
        }
        if status != ffi::LUA_OK && status != ffi::LUA_YIELD {
            if slot.aborted() {
                ffi::lua_error(l);
            }
            ffi::lua_pushboolean(l, 0);
            ffi::lua_pushvalue(l, -2);
            return 2;
        }
        ffi::lua_remove(l, 2);
        ffi::lua_gettop(l)
    }
}

/// `pcall(f, ...)`, guarded: limits are not caught.
pub(crate) unsafe extern "C-unwind" fn pcall(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function whose first upvalue is the slot; arguments are
    // read from the stack Lua passed in.
    unsafe {
        ffi::luaL_checkany(l, 1);
        if slot(l).aborted() {
            ffi::lua_pushliteral(l, c"luametrics: execution aborted by a limit");
            ffi::lua_error(l);
        }
        ffi::luaL_checkstack(l, 3, std::ptr::null());
        ffi::lua_pushboolean(l, 1);
        ffi::lua_insert(l, 1);
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
        ffi::lua_pushcclosure(l, on_error, 1);
        ffi::lua_insert(l, 2);
        let nargs = ffi::lua_gettop(l) - 3;
        let status = ffi::lua_pcallk(l, nargs, ffi::LUA_MULTRET, 2, 0, Some(finish));
        finish(l, status, 0)
    }
}

/// `xpcall(f, handler, ...)`, guarded: limits are not caught, and the script's handler does
/// not run for them.
pub(crate) unsafe extern "C-unwind" fn xpcall(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function whose first upvalue is the slot; arguments are
    // read from the stack Lua passed in.
    unsafe {
        ffi::luaL_checktype(l, 2, ffi::LUA_TFUNCTION);
        if slot(l).aborted() {
            ffi::lua_pushliteral(l, c"luametrics: execution aborted by a limit");
            ffi::lua_error(l);
        }
        ffi::luaL_checkstack(l, 3, std::ptr::null());
        // f, handler, args... -> true, on_error(slot, handler, rounds), f, args...
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
        ffi::lua_pushvalue(l, 2);
        ffi::lua_pushinteger(l, 0);
        ffi::lua_pushcclosure(l, on_error, 3);
        ffi::lua_replace(l, 2);
        ffi::lua_pushboolean(l, 1);
        ffi::lua_insert(l, 1);
        // true, f, on_error, args... -> true, on_error, f, args...
        ffi::lua_pushvalue(l, 3);
        ffi::lua_remove(l, 3);
        ffi::lua_insert(l, 2);
        let nargs = ffi::lua_gettop(l) - 3;
        let status = ffi::lua_pcallk(l, nargs, ffi::LUA_MULTRET, 2, 0, Some(finish));
        finish(l, status, 0)
    }
}

/// After a guarded body: a memory status is an abort; any error is raised on.
unsafe extern "C-unwind" fn finish_body(
    l: *mut ffi::lua_State,
    status: c_int,
    _: ffi::lua_KContext,
) -> c_int {
    // SAFETY: a continuation Lua calls with the same state and upvalues as the call it
    // continues.
    unsafe {
        if status == ffi::LUA_ERRMEM {
            slot(l).fire(ABORT_MEMORY);
        }
        if status != ffi::LUA_OK && status != ffi::LUA_YIELD {
            ffi::lua_error(l);
        }
        ffi::lua_remove(l, 1);
        ffi::lua_gettop(l)
    }
}

/// `body(f, ...)`: runs `f` under the guards' message handler and raises any error on. The
/// script's main function runs this way (an overflow it does not catch is typed too), and so
/// does every coroutine's body ([`bind_body`]), on the coroutine's own thread (an overflow
/// inside a coroutine is probed where it happens, before the coroutine dies). Yields pass
/// through.
pub(crate) unsafe extern "C-unwind" fn body(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua with the function to run and its arguments on the stack, and the
    // slot as first upvalue.
    unsafe {
        ffi::luaL_checkstack(l, 2, std::ptr::null());
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
        ffi::lua_pushcclosure(l, on_error, 1);
        ffi::lua_insert(l, 1);
        let nargs = ffi::lua_gettop(l) - 2;
        let status = ffi::lua_pcallk(l, nargs, ffi::LUA_MULTRET, 1, 0, Some(finish_body));
        finish_body(l, status, 0)
    }
}

/// `bind_body(f)`: a C function that runs `f` as [`body`] does, the body of a coroutine: no
/// Lua frame of the prelude's sits at the coroutine's base (review: with one there, a script's
/// own error text that reads like the prelude's was rewritten inside any coroutine).
pub(crate) unsafe extern "C-unwind" fn bind_body(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function whose first upvalue is the slot, with the function
    // to bind at index 1 (checked).
    unsafe {
        ffi::luaL_checktype(l, 1, ffi::LUA_TFUNCTION);
        ffi::lua_settop(l, 1);
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
        ffi::lua_insert(l, 1);
        ffi::lua_pushcclosure(l, bound_body, 2);
        1
    }
}

/// The C function [`bind_body`] makes: its upvalues are the slot and the function to run.
unsafe extern "C-unwind" fn bound_body(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as the closure `bind_body` built; arguments are on the stack.
    unsafe {
        // f, then as `body(f, ...)` (the slot is this closure's first upvalue too).
        ffi::luaL_checkstack(l, 1, std::ptr::null());
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(2));
        ffi::lua_insert(l, 1);
        body(l)
    }
}

/// `coroutine.resume(co, ...)`, guarded: a limit inside the coroutine is not turned into
/// `false, message`; it is raised in the resumer.
pub(crate) unsafe extern "C-unwind" fn resume(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function whose first upvalue is the slot; the coroutine is
    // checked to be a thread before it is resumed.
    unsafe {
        let co = ffi::lua_tothread(l, 1);
        if co.is_null() {
            ffi::luaL_checktype(l, 1, ffi::LUA_TTHREAD);
            return 0;
        }
        let slot = slot(l);
        if slot.aborted() {
            ffi::lua_pushliteral(l, c"luametrics: execution aborted by a limit");
            ffi::lua_error(l);
        }
        let narg = ffi::lua_gettop(l) - 1;
        if ffi::lua_checkstack(co, narg) == 0 {
            ffi::lua_pushboolean(l, 0);
            ffi::lua_pushliteral(l, c"too many arguments to resume");
            return 2;
        }
        ffi::lua_xmove(l, co, narg);
        let mut nres: c_int = 0;
        let status = ffi::lua_resume(co, l, narg, &mut nres);
        if status == ffi::LUA_OK || status == ffi::LUA_YIELD {
            if ffi::lua_checkstack(l, nres + 1) == 0 {
                ffi::lua_pop(co, nres);
                ffi::lua_pushboolean(l, 0);
                ffi::lua_pushliteral(l, c"too many results to resume");
                return 2;
            }
            ffi::lua_pushboolean(l, 1);
            ffi::lua_xmove(co, l, nres);
            return nres + 1;
        }
        if status == ffi::LUA_ERRMEM {
            slot.fire(ABORT_MEMORY);
        }
        // The coroutine's stack is left as it was at the error, for the Lua-stack probe; a
        // C-stack overflow is counted on the resumer, probed here.
        ffi::lua_xmove(co, l, 1);
        if !slot.aborted() && is_stack_overflow(l, co) {
            slot.fire(ABORT_STACK);
        }
        if slot.aborted() {
            ffi::lua_error(l);
        }
        ffi::lua_pushboolean(l, 0);
        ffi::lua_insert(l, -2);
        2
    }
}

/// Registers a coroutine of the execution with the watchdog (its only argument).
pub(crate) unsafe extern "C-unwind" fn track(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua with the coroutine as its argument and the slot as first upvalue.
    unsafe {
        let co = ffi::lua_tothread(l, 1);
        if !co.is_null() {
            slot(l).track(co);
        }
        0
    }
}
