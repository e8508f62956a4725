//! The host functions the prelude (`lua/prelude.lua`) builds the sandbox and `helpers` from.
//!
//! They are handed to the prelude once, in one table, when an engine is built; the prelude
//! keeps them in locals and scripts never see the table. What each is for:
//!
//! | name | what the prelude uses it for |
//! |---|---|
//! | `validate(kind, name, tags)` | the slow path of a first sight: every rule of the tag policy and the name claim; returns the series id the verdict tree keeps, or the rejection reason |
//! | `take(id, value)` | folds a value into a series' per-execution aggregate, asking the sink for a quota lease when the current one is used up; returns a reason when refused |
//! | `mark_rejected()` | tells the engine this execution has rejections to drain |
//! | `reset()` | forgets every cached series (the prelude emptied its verdict tree at its bound) |
//! | `bind`, `rebind`, `hot`, `END` | build the helpers' C closures over the verdict tree and the engine's `Hot` (see `hot.rs`) |
//! | `pcall`, `xpcall`, `resume`, `track`, `body` | the guarded protected calls, coroutine resume and registration, and the runner of a script's body: limits cannot be caught (see `guard.rs`) |
//! | `print` | the script's `print`, into the execution's bounded log |
//!
//! Each Rust host function counts its time as helper time (`Shared::timed`), so the time split
//! stays honest, and none holds a lock while it calls into Lua (a `__tostring` may print).

use crate::engine::{printable, truncate_at_char, Shared, MAX_LINE_BYTES};
use crate::guard;
use crate::hot::{self, HotRef};
use crate::watchdog::Slot;
use crate::{canonical_number, MetricsSink};
use luametrics_model::{CheckedSeries, Kind, RejectReason};
use mlua::{ffi, Function, Lua, Table, Value};
use std::sync::Arc;

/// Builds the table of host functions for one engine's prelude.
pub(crate) fn table(
    lua: &Lua,
    shared: &Arc<Shared>,
    sink: &Arc<dyn MetricsSink>,
    hr: HotRef,
    slot: &Arc<Slot>,
) -> mlua::Result<Table> {
    let host = lua.create_table()?;
    {
        let sh = shared.clone();
        let sk = sink.clone();
        host.set(
            "validate",
            lua.create_function(move |lua, (kind, name, tags): (String, Value, Value)| {
                sh.timed(|| {
                    let kind = kind_of(&kind)?;
                    let tenant = sh.tenant.lock().clone();
                    match validate(sk.as_ref(), &tenant, kind, &name, &tags)? {
                        Ok(series) => {
                            Ok(Value::Integer(hr.with(|h| h.plant(tenant, series)) as i64))
                        }
                        Err(r) => Ok(Value::String(lua.create_string(r.as_str())?)),
                    }
                })
            })?,
        )?;
    }
    {
        let sh = shared.clone();
        let sk = sink.clone();
        host.set(
            "take",
            lua.create_function(move |lua, (id, value): (usize, f64)| {
                sh.timed(|| {
                    let taken = hr.with(|h| {
                        h.take(id, value, |want| {
                            let tenant = sh.tenant.lock().clone();
                            sk.reserve_points(&tenant, want)
                        })
                    });
                    match taken {
                        Ok(()) => Ok(Value::Nil),
                        Err(r) => Ok(Value::String(lua.create_string(r.as_str())?)),
                    }
                })
            })?,
        )?;
    }
    host.set(
        "mark_rejected",
        lua.create_function(move |_, ()| {
            hr.with(|h| h.rejections_pending = true);
            Ok(())
        })?,
    )?;
    // `coroutine.close` runs pending `__close` handlers without the message handler: the
    // prelude passes an error raised in one through this, so a library error inside reads as
    // Lua's own there too (adversary round 17: the prelude's position and alias leaked).
    host.set(
        "library_error",
        lua.create_function(|lua, text: mlua::LuaString| {
            let bytes = text.as_bytes();
            let Some(rest) = crate::engine::without_prelude_position(&bytes) else {
                drop(bytes);
                return Ok(text);
            };
            let mut out = Vec::with_capacity(rest.len());
            crate::engine::library_text(rest, false, &mut out);
            lua.create_string(&out)
        })?,
    )?;
    host.set(
        "reset",
        lua.create_function(move |_, ()| {
            hr.with(|h| h.reset());
            Ok(())
        })?,
    )?;
    {
        let sh = shared.clone();
        host.set(
            "reset_tenant",
            lua.create_function(move |_, ()| {
                let tenant = sh.tenant.lock().clone();
                hr.with(|h| h.reset_tenant(&tenant));
                Ok(())
            })?,
        )?;
    }
    // SAFETY: `hot::bind` and `hot::rebind` are Lua C functions that check their arguments.
    host.set("bind", unsafe { lua.create_c_function(hot::bind)? })?;
    host.set("rebind", unsafe { lua.create_c_function(hot::rebind)? })?;
    host.set("hot", hr.as_light())?;
    host.set("END", hot::end_key())?;
    host.set("pcall", guard_fn(lua, slot, guard::pcall)?)?;
    host.set("xpcall", guard_fn(lua, slot, guard::xpcall)?)?;
    host.set("resume", guard_fn(lua, slot, guard::resume)?)?;
    host.set("track", guard_fn(lua, slot, guard::track)?)?;
    host.set("bind_body", guard_fn(lua, slot, guard::bind_body)?)?;
    {
        let sh = shared.clone();
        // One line, its arguments converted by the prelude's `print` (in Lua, so a failing
        // `__tostring` is the script's error). Bytes that are not UTF-8 (Latin-1 text, binary)
        // print as U+FFFD.
        host.set("max_line", MAX_LINE_BYTES)?;
        host.set(
            "print",
            lua.create_function(move |_, text: mlua::LuaString| {
                sh.timed(|| {
                    if sh.log.lock().len() >= sh.max_log_lines {
                        return Ok(());
                    }
                    let bytes = text.as_bytes();
                    let cut = &bytes[..bytes.len().min(MAX_LINE_BYTES + 4)];
                    let mut line = String::from_utf8_lossy(cut).into_owned();
                    truncate_at_char(&mut line, MAX_LINE_BYTES);
                    let line = printable(&line);
                    let mut log = sh.log.lock();
                    if log.len() < sh.max_log_lines {
                        log.push(line);
                    }
                    Ok(())
                })
            })?,
        )?;
    }
    Ok(host)
}

/// A guard C function bound to the engine's slot (its first upvalue).
pub(crate) fn guard_fn(
    lua: &Lua,
    slot: &Arc<Slot>,
    f: ffi::lua_CFunction,
) -> mlua::Result<Function> {
    let ptr = Arc::as_ptr(slot) as *mut std::ffi::c_void;
    // SAFETY: pushes one closure; the slot outlives the state (the engine owns both).
    unsafe {
        lua.exec_raw((), |l| {
            ffi::lua_pushlightuserdata(l, ptr);
            ffi::lua_pushcclosure(l, f, 1);
        })
    }
}

fn kind_of(s: &str) -> mlua::Result<Kind> {
    match s {
        "counter" => Ok(Kind::Counter),
        "gauge" => Ok(Kind::Gauge),
        "histogram" => Ok(Kind::Histogram),
        // Only the prelude names kinds: another name is a bug to report, not a histogram.
        other => Err(mlua::Error::runtime(format!(
            "unknown metric kind `{}`",
            printable(other)
        ))),
    }
}

/// The host side of a verdict: every rule of the tag policy, once per distinct name/tag set.
/// `Ok(Ok(series))` is an accepted series; `Ok(Err(reason))` a rejected one.
fn validate(
    sink: &dyn MetricsSink,
    tenant: &str,
    kind: Kind,
    name: &Value,
    tags: &Value,
) -> mlua::Result<Result<CheckedSeries, RejectReason>> {
    let Value::String(name) = name else {
        return Ok(Err(RejectReason::InvalidName));
    };
    let Ok(name) = name.to_str() else {
        return Ok(Err(RejectReason::InvalidName));
    };
    let policy = sink.policy();
    // The name first: a bad name is refused before its tags are read.
    if let Err(r) = policy.check_user_name(&name, kind) {
        return Ok(Err(r));
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Value::Table(t) = tags {
        // Walked first without copying anything (a Lua string is borrowed): one string may
        // back every tag, so copying before the count and length checks let one call copy
        // 64 x 8 MiB outside the Lua allocator's limit.
        let mut raw: Vec<(Value, Value)> = Vec::new();
        for pair in t.pairs::<Value, Value>() {
            raw.push(pair?);
            if raw.len() > hot::MAX_WALK {
                return Ok(Err(RejectReason::TooManyTags));
            }
        }
        if raw.len() > policy.limits.max_tags {
            return Ok(Err(RejectReason::TooManyTags));
        }
        // Past this a value is refused whatever it holds (the PII check looks at shorter ones).
        let longest_value = policy
            .limits
            .max_value_len
            .max(luametrics_model::MAX_PII_SCAN_LEN);
        for (k, v) in &raw {
            let key = match k {
                Value::String(s) if s.as_bytes().len() > policy.limits.max_key_len => {
                    return Ok(Err(RejectReason::TagKeyTooLong));
                }
                Value::String(s) => match s.to_str() {
                    Ok(s) => s.to_string(),
                    Err(_) => return Ok(Err(RejectReason::InvalidTags)),
                },
                _ => return Ok(Err(RejectReason::InvalidTags)),
            };
            let value = match v {
                Value::String(s) if s.as_bytes().len() > longest_value => {
                    return Ok(Err(RejectReason::TagValueTooLong));
                }
                Value::String(s) => match s.to_str() {
                    Ok(s) => s.to_string(),
                    Err(_) => return Ok(Err(RejectReason::InvalidTags)),
                },
                Value::Integer(i) => i.to_string(),
                Value::Number(f) => canonical_number(*f),
                Value::Boolean(b) => b.to_string(),
                _ => return Ok(Err(RejectReason::InvalidTags)),
            };
            pairs.push((key, value));
        }
    }
    let series = match policy.check_series(&name, kind, pairs) {
        Ok(s) => s,
        Err(r) => return Ok(Err(r)),
    };
    // Last: a name is claimed only for a point that passes every other rule.
    if let Err(r) = sink.claim_name(tenant, &name, kind) {
        return Ok(Err(r));
    }
    Ok(Ok(series))
}

thread_local! {
    /// When the execution running on this thread started (see [`clock`]).
    static STARTED: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Starts the clock scripts read with `os.clock` for the execution starting on this thread.
pub(crate) fn start_clock() {
    STARTED.with(|c| c.set(Some(std::time::Instant::now())));
}

/// `os.clock()`: seconds since this execution started. Lua's own counts the CPU time of the
/// whole process, every thread, so one tenant's script could watch another's work in it. (The
/// thread's own CPU clock would do too, but reading it is a system call of ~1 us, a tenth of a
/// short execution, paid by every execution whether it reads the clock or not.)
pub(crate) unsafe extern "C-unwind" fn clock(l: *mut ffi::lua_State) -> std::os::raw::c_int {
    let secs = STARTED
        .with(|c| c.get())
        .map_or(0.0, |t| t.elapsed().as_secs_f64());
    // SAFETY: called by Lua with room for one result.
    unsafe { ffi::lua_pushnumber(l, secs) };
    1
}
