//! Deadlines and aborts, enforced from outside the executing thread.
//!
//! A Lua count hook checked on the executing thread cannot stop a C function, costs every VM
//! instruction a trap, and (through mlua's error path) used to let `__close` handlers run
//! unlimited after it fired. So scripts run with no hook at all, and one watchdog thread per
//! process knows every running execution's deadline. At the deadline it marks the execution
//! aborted and installs, on every Lua thread of that execution (the main state and each
//! coroutine the script created), a raw C hook that raises on the next instruction, call,
//! return or line, and keeps raising: once an execution is aborted, no more Lua of it runs,
//! `pcall`-protected code, message handlers and `__close` handlers included (each gets at most
//! one instruction before the hook raises again). Lua 5.4's `lua_sethook` may be called from
//! another thread on a running state (ldebug.c: "can be called during a signal": `hookmask` is
//! atomic and `settraps` only marks call frames).
//!
//! The same mechanism ends an execution for its other limits: the allocator fires a memory
//! abort when the heap limit refuses an allocation, the guarded `pcall`/`xpcall`/`resume`
//! fire a stack abort when they see a real stack overflow (probed, not read from the message).
//! The abort kind is set by the host, once, and is what the execution's error is typed from.
//!
//! A C function that runs past the deadline cannot be interrupted by a hook; the sandbox bounds
//! every C function's arguments before calling it (`lua/prelude.lua`), and the pool abandons an
//! execution that still has not returned after a grace period.

use mlua::ffi;
use parking_lot::Mutex;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// No limit fired.
pub(crate) const ABORT_NONE: u8 = 0;
/// The deadline passed.
pub(crate) const ABORT_TIME: u8 = 1;
/// The heap limit refused an allocation.
pub(crate) const ABORT_MEMORY: u8 = 2;
/// The Lua stack or the C stack overflowed.
pub(crate) const ABORT_STACK: u8 = 3;

/// How often the watchdog looks at the deadlines: the precision of the time limit.
const TICK: Duration = Duration::from_millis(2);

/// Every hook event: the next instruction, call, return or new line raises.
const MASK_ALL: c_int =
    ffi::LUA_MASKCOUNT | ffi::LUA_MASKCALL | ffi::LUA_MASKRET | ffi::LUA_MASKLINE;

/// A Lua thread of a running execution (its main state or a coroutine it created). The
/// execution keeps each one reachable (the prelude's thread list) until it ends, so the pointer
/// stays valid while it is listed.
struct LuaPtr(*mut ffi::lua_State);

// SAFETY: the watchdog only passes the pointer to `lua_sethook`, which may be called from
// another thread on a running state; the owner removes it from the list (under the lock)
// before the thread can be collected.
unsafe impl Send for LuaPtr {}

#[derive(Default)]
struct Running {
    /// Nanoseconds since the watchdog's epoch after which the execution is aborted; 0: none.
    deadline_ns: u64,
    threads: Vec<LuaPtr>,
    /// The abort hook is installed on every listed thread.
    hooked: bool,
}

/// One engine's execution state as the watchdog, the allocator and the guards see it.
pub(crate) struct Slot {
    /// Mirror of `running.deadline_ns` for the watchdog's lock-free scan.
    deadline_ns: AtomicU64,
    /// The typed abort of the execution in progress (`ABORT_*`), set once by the host.
    abort: AtomicU8,
    /// Set when the pool gave up on the engine's execution: from then on its allocator
    /// refuses every request to grow, so a C loop that allocates ends at its next allocation.
    starved: AtomicBool,
    running: Mutex<Running>,
}

impl Slot {
    /// A slot the watchdog watches for as long as it lives.
    pub(crate) fn new() -> Arc<Self> {
        let slot = Arc::new(Self {
            deadline_ns: AtomicU64::new(0),
            abort: AtomicU8::new(ABORT_NONE),
            starved: AtomicBool::new(false),
            running: Mutex::new(Running::default()),
        });
        watchdog().slots.lock().push(Arc::downgrade(&slot));
        slot
    }

    /// Starts an execution on `main` that must end by `deadline_ns` (see [`now_ns`]).
    pub(crate) fn begin(&self, main: *mut ffi::lua_State, deadline_ns: u64) {
        let mut r = self.running.lock();
        self.abort.store(ABORT_NONE, Relaxed);
        r.threads.clear();
        r.threads.push(LuaPtr(main));
        r.hooked = false;
        r.deadline_ns = deadline_ns.max(1);
        self.deadline_ns.store(r.deadline_ns, Relaxed);
    }

    /// Ends the execution: nothing of it is watched any more. Returns the threads that carry
    /// the abort hook, which the caller removes before running its own Lua on them.
    pub(crate) fn end(&self) -> bool {
        let mut r = self.running.lock();
        r.deadline_ns = 0;
        self.deadline_ns.store(0, Relaxed);
        r.threads.clear();
        std::mem::take(&mut r.hooked)
    }

    /// Whether an execution is in progress (limits fire only then).
    pub(crate) fn is_running(&self) -> bool {
        self.deadline_ns.load(Relaxed) != 0
    }

    /// Adds a coroutine of the execution in progress; it gets the abort hook at once if the
    /// execution was aborted already.
    pub(crate) fn track(&self, thread: *mut ffi::lua_State) {
        let mut r = self.running.lock();
        if r.deadline_ns == 0 {
            return;
        }
        if r.hooked {
            // SAFETY: a live thread of this execution (the caller holds it on its stack).
            unsafe { ffi::lua_sethook(thread, Some(abort_hook), MASK_ALL, 1) };
        }
        r.threads.push(LuaPtr(thread));
    }

    /// The execution's abort kind (`ABORT_*`).
    pub(crate) fn abort(&self) -> u8 {
        self.abort.load(Relaxed)
    }

    /// Refuses the engine every allocation from now on (for good: the engine is written off).
    pub(crate) fn starve(&self) {
        self.starved.store(true, SeqCst);
    }

    /// Whether the engine was written off while it ran (see [`Slot::starve`]).
    #[inline]
    pub(crate) fn is_starved(&self) -> bool {
        self.starved.load(Relaxed)
    }

    /// Whether a limit ended the execution.
    pub(crate) fn aborted(&self) -> bool {
        self.abort() != ABORT_NONE
    }

    /// Aborts the execution in progress with `kind` (the first kind wins) and makes every one
    /// of its Lua threads raise from now on. Does nothing outside an execution.
    pub(crate) fn fire(&self, kind: u8) {
        let mut r = self.running.lock();
        if r.deadline_ns == 0 {
            return;
        }
        let _ = self
            .abort
            .compare_exchange(ABORT_NONE, kind, Relaxed, Relaxed);
        if !r.hooked {
            r.hooked = true;
            for t in &r.threads {
                // SAFETY: listed threads are alive until `end` clears the list under this lock.
                unsafe { ffi::lua_sethook(t.0, Some(abort_hook), MASK_ALL, 1) };
            }
        }
    }

    /// Withdraws an abort of `kind` fired by a refusal that Lua's emergency collection then
    /// made good (no Lua ran in between): the execution goes on. Any other abort stands.
    pub(crate) fn withdraw(&self, kind: u8) {
        let mut r = self.running.lock();
        if r.deadline_ns == 0
            || self
                .abort
                .compare_exchange(kind, ABORT_NONE, Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        if std::mem::take(&mut r.hooked) {
            for t in &r.threads {
                // SAFETY: listed threads are alive (see `fire`).
                unsafe { ffi::lua_sethook(t.0, None, 0, 0) };
            }
        }
    }

    fn fire_if_late(&self, now: u64) {
        let deadline = self.deadline_ns.load(Relaxed);
        if deadline == 0 || now <= deadline {
            return;
        }
        let late = {
            let r = self.running.lock();
            r.deadline_ns != 0 && now > r.deadline_ns && !r.hooked
        };
        if late {
            // The execution may have ended in between: `fire` checks again under the lock.
            self.fire(ABORT_TIME);
        }
    }
}

/// Removes the abort hook from `thread` so the host can run its own Lua (the prelude's drain)
/// after an aborted execution.
///
/// # Safety
/// `thread` must be a live Lua state owned by the caller's engine.
pub(crate) unsafe fn unhook(thread: *mut ffi::lua_State) {
    unsafe { ffi::lua_sethook(thread, None, 0, 0) };
}

/// The hook every thread of an aborted execution carries: raises on every event. Raised from
/// a raw C hook with `lua_error` (no stack truncation inside the hook, unlike mlua's hook error
/// path, which ran the interrupted frame's `__close` handlers with hooks disabled).
unsafe extern "C-unwind" fn abort_hook(l: *mut ffi::lua_State, _ar: *mut ffi::lua_Debug) {
    HOOK_RAISES.fetch_add(1, Relaxed);
    // SAFETY: called by Lua with a valid state; a hook may raise.
    unsafe {
        ffi::lua_pushliteral(l, c"luametrics: execution aborted by a limit");
        ffi::lua_error(l);
    }
}

/// Times the abort hook raised, in the whole process: each raise means Lua of an aborted
/// execution tried to run.
static HOOK_RAISES: AtomicU64 = AtomicU64::new(0);

/// The abort hook's raise count so far (the allocator withdraws a memory abort only if no Lua
/// ran since it fired).
pub(crate) fn hook_raises() -> u64 {
    HOOK_RAISES.load(Relaxed)
}

struct Watchdog {
    epoch: Instant,
    slots: Mutex<Vec<Weak<Slot>>>,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("luametrics-watchdog".into())
            .spawn(|| loop {
                std::thread::sleep(TICK);
                let wd = watchdog();
                let now = now_ns();
                let mut slots = wd.slots.lock();
                slots.retain(|s| match s.upgrade() {
                    Some(slot) => {
                        slot.fire_if_late(now);
                        true
                    }
                    None => false,
                });
            });
        if let Err(e) = spawned {
            // Without a watchdog no deadline could be enforced: refuse to run scripts at all.
            panic!("cannot start the luametrics watchdog thread: {e}");
        }
        Watchdog {
            epoch: Instant::now(),
            slots: Mutex::new(Vec::new()),
        }
    })
}

/// Nanoseconds on the watchdog's clock, which deadlines are expressed in.
pub(crate) fn now_ns() -> u64 {
    watchdog().epoch.elapsed().as_nanos() as u64
}
