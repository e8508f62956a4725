//! JSON <-> Lua with limits: events go in as tables, results come out as JSON. Both directions
//! bound depth and size, so a hostile event or result is a typed error, never a hang or a crash.

use mlua::{ffi, Lua, Value};
use serde_json::{Map, Number, Value as Json};
use std::os::raw::{c_char, c_int, c_void};
use std::ptr;

/// Builds the Lua value for a JSON value (`null` becomes nil), with the raw Lua C API: through
/// mlua's safe API each value cost a registry reference and several locks.
///
/// The builder runs inside `exec_raw`, a protected call: a memory error raised while it
/// allocates unwinds to there, through frames that own nothing (references and borrowing
/// iterators only), and comes back as an `Err`.
pub(crate) fn to_lua(lua: &Lua, v: &Json, max_depth: usize) -> Result<Value, String> {
    let mut problem = None;
    // SAFETY: see above; `push` leaves exactly one value on the stack or returns its problem.
    let built: mlua::Result<Value> = unsafe {
        lua.exec_raw((), |l| {
            let base = ffi::lua_gettop(l);
            if let Err(p) = push(l, v, 0, max_depth) {
                problem = Some(p);
                ffi::lua_settop(l, base);
            }
        })
    };
    match (problem, built) {
        (Some(p), _) => Err(p),
        (None, Ok(v)) => Ok(v),
        (None, Err(e)) => Err(e.to_string()),
    }
}

unsafe fn push(
    l: *mut ffi::lua_State,
    v: &Json,
    depth: usize,
    max_depth: usize,
) -> Result<(), String> {
    // SAFETY: `l` is a valid state on this thread, and this runs inside a protected call, so an
    // error raised by a push unwinds to it.
    unsafe {
        if depth > max_depth {
            return Err(format!("nested deeper than {max_depth} levels"));
        }
        match v {
            Json::Null => ffi::lua_pushnil(l),
            Json::Bool(b) => ffi::lua_pushboolean(l, *b as c_int),
            Json::Number(n) => match n.as_i64() {
                Some(i) => ffi::lua_pushinteger(l, i),
                None => ffi::lua_pushnumber(l, n.as_f64().unwrap_or(f64::NAN)),
            },
            Json::String(s) => {
                ffi::lua_pushlstring(l, s.as_ptr() as *const c_char, s.len());
            }
            Json::Array(items) => {
                // The table, an item being built and its key: never raises, says no when the
                // stack cannot grow.
                if ffi::lua_checkstack(l, 3) == 0 {
                    return Err("nested too deeply to build".into());
                }
                ffi::lua_createtable(l, c_int::try_from(items.len()).unwrap_or(0), 0);
                for (i, item) in items.iter().enumerate() {
                    push(l, item, depth + 1, max_depth)?;
                    ffi::lua_rawseti(l, -2, i as ffi::lua_Integer + 1);
                }
            }
            Json::Object(map) => {
                if ffi::lua_checkstack(l, 3) == 0 {
                    return Err("nested too deeply to build".into());
                }
                ffi::lua_createtable(l, 0, c_int::try_from(map.len()).unwrap_or(0));
                for (k, item) in map {
                    ffi::lua_pushlstring(l, k.as_ptr() as *const c_char, k.len());
                    push(l, item, depth + 1, max_depth)?;
                    ffi::lua_rawset(l, -3);
                }
            }
        }
        Ok(())
    }
}

/// Reads a script's result into JSON with the raw Lua C API.
///
/// Through mlua's safe API every table entry cost two registry references and several locks
/// (~400 ns a value, the largest part of a short execution's overhead). The raw reader calls
/// only functions that neither allocate in Lua nor raise (`lua_next` over keys it got from
/// `lua_next`, `lua_type`, `lua_to*` on values of the matching type, `lua_checkstack`), so no
/// Lua error can unwind through it, and it reads tables raw: no metamethod runs.
pub(crate) struct FromLua {
    pub max_depth: usize,
    pub max_nodes: usize,
    /// Bytes of strings (values and keys) a result may hold: a table of 10,000 references to
    /// one 4 MiB string is 40 GB once copied out.
    pub max_bytes: usize,
    nodes: usize,
    bytes: usize,
    path: Vec<*const c_void>,
    /// Deepest level the path reached in the table being read (its height, with its level).
    deepest: usize,
    /// Tables already read, with what they were charged: a table met again (a DAG) is copied,
    /// charged again, not read again. `lua_next` walks every slot of a table, empty ones
    /// included: 9,999 references to one table of 2^19 emptied slots took 1.7 s of reading,
    /// in C after the execution's deadline (adversary round 15).
    done: std::collections::HashMap<*const c_void, Memo>,
    /// Values held in `done`.
    memo_nodes: usize,
    /// Tables of more than [`MEMO_NODES`] values read once and not kept: kept when met again.
    seen: std::collections::HashSet<*const c_void>,
    /// Tables read by walking their slots (what the memo saves; read by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    reads: usize,
    /// Slots walked so far (bounded by [`MAX_SLOTS_WALKED`]).
    slots: u64,
}

/// Largest table (in values) kept to be copied when met again.
const MEMO_NODES: usize = 64;

/// Table slots (empty ones included) a result's reading may walk: `lua_next` visits every
/// slot, in C, after the script's deadline. A table met again is copied while the memo has
/// room, but a script can fill the memo (adversary round 19: nested chains filled it with 750
/// values, then one emptied table of 2^17 slots met 4,600 times took 400 ms); this bounds the
/// walk whatever the memo does. The largest table a 16 MiB heap holds has ~2^20 slots.
const MAX_SLOTS_WALKED: u64 = 1 << 24;

extern "C-unwind" {
    /// The vendored Lua's (vendor/README.md): the slots of the table at `idx`.
    fn luametrics_tableslots(l: *mut ffi::lua_State, idx: c_int) -> ffi::lua_Unsigned;
}

/// A table read once: its value, what it was charged, and its height in levels (a copy
/// deeper in the result must fit the depth limit as a read would).
struct Memo {
    json: Json,
    nodes: usize,
    bytes: usize,
    height: usize,
}

/// A table key as read, before the table is known to be an array or an object.
enum Key {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl FromLua {
    pub fn new(max_depth: usize, max_nodes: usize, max_bytes: usize) -> Self {
        Self {
            max_depth,
            max_nodes,
            max_bytes,
            nodes: 0,
            bytes: 0,
            path: Vec::new(),
            deepest: 0,
            done: std::collections::HashMap::new(),
            memo_nodes: 0,
            seen: std::collections::HashSet::new(),
            reads: 0,
            slots: 0,
        }
    }

    /// Tables read by walking their slots so far (a table met again is copied instead).
    #[cfg(test)]
    fn tables_read(&self) -> usize {
        self.reads
    }

    /// Charges `n` bytes of string to the result's budget.
    fn charge(&mut self, n: usize) -> Result<(), String> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.max_bytes {
            return Err(format!("more than {} bytes of text", self.max_bytes));
        }
        Ok(())
    }

    /// Converts a script's result (`at` names it in errors).
    pub fn convert(&mut self, lua: &Lua, v: Value, at: &str) -> Result<Json, String> {
        let mut out = None;
        // SAFETY: the closure reads the value exec_raw pushed with non-raising calls only.
        let pushed: mlua::Result<()> = unsafe {
            lua.exec_raw(v, |l| {
                let top = ffi::lua_gettop(l);
                out = Some(self.value(l, top, &|| at.to_string()));
                ffi::lua_settop(l, top - 1);
            })
        };
        pushed.map_err(|e| e.to_string())?;
        out.unwrap_or_else(|| Err(format!("{at} could not be read")))
    }

    /// The value at absolute stack index `idx`; leaves the stack as it found it on success.
    unsafe fn value(
        &mut self,
        l: *mut ffi::lua_State,
        idx: c_int,
        at: &dyn Fn() -> String,
    ) -> Result<Json, String> {
        // SAFETY: `l` is a valid state on this thread and `idx` an index of its stack; only reads
        // that cannot raise are used.
        unsafe {
            self.nodes += 1;
            if self.nodes > self.max_nodes {
                return Err(format!("more than {} values", self.max_nodes));
            }
            Ok(match ffi::lua_type(l, idx) {
                ffi::LUA_TNIL => Json::Null,
                ffi::LUA_TBOOLEAN => Json::Bool(ffi::lua_toboolean(l, idx) != 0),
                ffi::LUA_TNUMBER => {
                    if ffi::lua_isinteger(l, idx) != 0 {
                        Json::Number(ffi::lua_tointegerx(l, idx, ptr::null_mut()).into())
                    } else {
                        let f = ffi::lua_tonumberx(l, idx, ptr::null_mut());
                        Json::Number(
                            Number::from_f64(f)
                                .ok_or_else(|| format!("{} is not a finite number", at()))?,
                        )
                    }
                }
                ffi::LUA_TSTRING => {
                    let text =
                        string_at(l, idx).ok_or_else(|| format!("{} is not valid UTF-8", at()))?;
                    self.charge(text.len())?;
                    Json::String(text.to_string())
                }
                ffi::LUA_TTABLE => self.table(l, idx, at)?,
                t => {
                    return Err(format!(
                        "{} is a {} and cannot be returned",
                        at(),
                        type_name(l, t)
                    ))
                }
            })
        }
    }

    unsafe fn table(
        &mut self,
        l: *mut ffi::lua_State,
        idx: c_int,
        at: &dyn Fn() -> String,
    ) -> Result<Json, String> {
        // SAFETY: `l` is a valid state on this thread and `idx` a table on its stack; only reads
        // that cannot raise are used.
        unsafe {
            let ptr = ffi::lua_topointer(l, idx);
            if self.path.contains(&ptr) {
                return Err(format!("{} refers back to itself (cyclic table)", at()));
            }
            if self.path.len() >= self.max_depth {
                return Err(format!(
                    "{} is nested deeper than {} levels",
                    at(),
                    self.max_depth
                ));
            }
            let level = self.path.len();
            if let Some(memo) = self
                .done
                .get(&ptr)
                .filter(|m| level + m.height <= self.max_depth)
            {
                let (json, nodes, bytes) = (memo.json.clone(), memo.nodes, memo.bytes);
                self.deepest = self.deepest.max(level + memo.height);
                self.nodes = self.nodes.saturating_add(nodes);
                if self.nodes > self.max_nodes {
                    return Err(format!("more than {} values", self.max_nodes));
                }
                self.charge(bytes)?;
                return Ok(json);
            }
            // A key and a value per level: never raises, says no when the stack cannot grow.
            if ffi::lua_checkstack(l, 3) == 0 {
                return Err(format!("{} is nested too deeply to read", at()));
            }
            self.slots = self.slots.saturating_add(luametrics_tableslots(l, idx));
            if self.slots > MAX_SLOTS_WALKED {
                return Err(format!(
                    "{} takes more than {MAX_SLOTS_WALKED} table slots to read (tables met \
                     again, or emptied tables)",
                    at()
                ));
            }
            let (nodes_before, bytes_before) = (self.nodes, self.bytes);
            self.reads += 1;
            self.path.push(ptr);
            let deepest_before = std::mem::replace(&mut self.deepest, self.path.len());
            let mut entries: Vec<(Key, Json)> = Vec::new();
            ffi::lua_pushnil(l);
            while ffi::lua_next(l, idx) != 0 {
                let (k, v) = (ffi::lua_gettop(l) - 1, ffi::lua_gettop(l));
                let key = match ffi::lua_type(l, k) {
                    ffi::LUA_TNUMBER if ffi::lua_isinteger(l, k) != 0 => {
                        Key::Int(ffi::lua_tointegerx(l, k, ptr::null_mut()))
                    }
                    ffi::LUA_TNUMBER => Key::Float(ffi::lua_tonumberx(l, k, ptr::null_mut())),
                    ffi::LUA_TBOOLEAN => Key::Bool(ffi::lua_toboolean(l, k) != 0),
                    ffi::LUA_TSTRING => {
                        let text = string_at(l, k)
                            .ok_or_else(|| format!("a key of {} is not valid UTF-8", at()))?;
                        self.charge(text.len())?;
                        Key::Str(text.to_string())
                    }
                    t => {
                        return Err(format!(
                            "{} has a {} key; only strings and numbers can be returned",
                            at(),
                            type_name(l, t)
                        ))
                    }
                };
                let child = || match &key {
                    Key::Int(i) => format!("{}[{i}]", at()),
                    Key::Float(f) => format!("{}[{f}]", at()),
                    Key::Bool(b) => format!("{}[{b}]", at()),
                    Key::Str(s) => format!("{}.{}", at(), short(s)),
                };
                let value = self.value(l, v, &child)?;
                entries.push((key, value));
                if entries.len() > self.max_nodes {
                    return Err(format!("{} has more than {} entries", at(), self.max_nodes));
                }
                ffi::lua_settop(l, k);
            }
            self.path.pop();
            let height = self.deepest - level;
            self.deepest = self.deepest.max(deepest_before);
            let n = entries.len();
            let is_array = n > 0
                && entries
                    .iter()
                    .all(|(k, _)| matches!(k, Key::Int(i) if *i >= 1 && (*i as usize) <= n));
            let json = if is_array {
                let mut items = vec![Json::Null; n];
                for (k, v) in entries {
                    if let Key::Int(i) = k {
                        items[i as usize - 1] = v;
                    }
                }
                Json::Array(items)
            } else {
                let mut map = Map::new();
                for (k, v) in entries {
                    let key = match k {
                        Key::Str(s) => s,
                        // Text the result gains: charged like a string key (adversary round
                        // 20: 9,990 float keys such as 1e-300 wrote 3.2 MB of key text past
                        // a 1 MiB budget).
                        other => {
                            let text = match other {
                                Key::Int(i) => i.to_string(),
                                Key::Float(f) => f.to_string(),
                                Key::Bool(b) => b.to_string(),
                                Key::Str(s) => s,
                            };
                            self.charge(text.len())?;
                            text
                        }
                    };
                    map.insert(key, v);
                }
                Json::Object(map)
            };
            // What reading it cost, key text included: a copy is charged the same.
            let charged = (self.nodes - nodes_before, self.bytes - bytes_before);
            // At most a result's worth of values: what a rescan costs is the table's slots,
            // empty ones included, whatever it holds. Small tables are kept at once; a larger
            // one when met a second time (a DAG), so a result that meets every table once
            // copies nothing (adversary round 16: 65 values in a large emptied table, met 150
            // times, were read 150 times).
            let small = charged.0 <= MEMO_NODES;
            let again = !small && !self.seen.insert(ptr);
            if (small || again) && self.memo_nodes + charged.0 <= self.max_nodes {
                self.memo_nodes += charged.0;
                let memo = Memo {
                    json: json.clone(),
                    nodes: charged.0,
                    bytes: charged.1,
                    height,
                };
                self.done.insert(ptr, memo);
            }
            Ok(json)
        }
    }
}

/// The UTF-8 text of the string at `idx` (a `LUA_TSTRING`: no conversion, no allocation).
unsafe fn string_at<'a>(l: *mut ffi::lua_State, idx: c_int) -> Option<&'a str> {
    // SAFETY: `l` is a valid state and `idx` an index of its stack; the bytes live while the value
    // stays on the stack.
    unsafe {
        let mut len = 0usize;
        let p = ffi::lua_tolstring(l, idx, &mut len);
        if p.is_null() {
            return None;
        }
        std::str::from_utf8(std::slice::from_raw_parts(p as *const u8, len)).ok()
    }
}

/// Lua's name of a type code.
unsafe fn type_name(l: *mut ffi::lua_State, t: c_int) -> String {
    // SAFETY: `l` is a valid state; `lua_typename` returns a static C string for any type tag.
    unsafe {
        std::ffi::CStr::from_ptr(ffi::lua_typename(l, t))
            .to_string_lossy()
            .into_owned()
    }
}

/// A key as an error message shows it: at most 64 bytes (cut on a character boundary), so a
/// script's megabyte-long key cannot make every trace of its errors megabytes long.
fn short(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.into();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Converts what `chunk` returns, and how many tables were walked to do it.
    fn read(chunk: &str) -> (Result<Json, String>, usize) {
        let lua = Lua::new();
        let v: Value = lua.load(chunk).eval().unwrap();
        let mut from = FromLua::new(32, 10_000, 1 << 20);
        let json = from.convert(&lua, v, "result");
        (json, from.tables_read())
    }

    #[test]
    fn a_table_met_again_is_walked_at_most_twice_whatever_its_size() {
        // 100 values in an emptied table of 2^16 slots, met 99 times.
        let (json, reads) = read(
            "local big = {}\nfor i = 1, 2 ^ 16 do big[i] = i end\n\
             for i = 101, 2 ^ 16 do big[i] = nil end\n\
             local r = {}\nfor i = 1, 99 do r[i] = big end\nreturn r",
        );
        let Ok(Json::Array(items)) = json else {
            panic!("{json:?}")
        };
        assert_eq!(items.len(), 99);
        assert!(items
            .iter()
            .all(|t| t.as_array().map(Vec::len) == Some(100)));
        // The result, then the large table twice (kept when met again).
        assert_eq!(reads, 3);
        // Small tables are kept at once; a tree of distinct tables is walked once each.
        let (_, reads) = read("local s = { 1 }\nreturn { s, s, s, { s } }");
        assert_eq!(reads, 3);
    }

    // Adversary round 20: keys that are not strings are written out as text, and that text
    // counts against the byte budget as a string key's does.
    #[test]
    fn number_keys_written_as_text_are_charged() {
        let (json, _) = read("local t = {}\nfor i = 1, 9990 do t[i * 1e-300] = 1 end\nreturn t");
        let e = json.expect_err("refused");
        assert!(e.contains("bytes"), "{e}");
        let (json, _) = read("return { [1.5] = 1, [2] = 2, [true] = 3 }");
        assert_eq!(json, Ok(serde_json::json!({ "1.5": 1, "2": 2, "true": 3 })));
        // ...and a copy of such a table is charged its key text too.
        let (json, _) = read(
            "local t = {}\nfor i = 1, 60 do t[i * 1e-300] = 1 end\n\
             local r = {}\nfor i = 1, 160 do r[i] = t end\nreturn r",
        );
        assert!(json.is_err(), "{json:?}");
    }

    // Adversary round 19: nested chains filled the memo (each memoized table counts its whole
    // subtree), then an emptied table of 2^17 slots met 4,600 times was walked each time:
    // 400 ms in C after the deadline. The slots walked are bounded whatever the memo holds.
    #[test]
    fn the_slots_walked_are_bounded_when_the_memo_is_full() {
        let (json, reads) = read(
            "local r = {}\n\
             for c = 1, 25 do local t = { 1 } for d = 1, 28 do t = { t } end r[#r + 1] = t end\n\
             local e = {}\n\
             for i = 1, 2 ^ 17 do e[-i] = true end\n\
             for i = 1, 2 ^ 17 do e[-i] = nil end\n\
             e[-1] = 1\n\
             for i = 1, 4600 do r[#r + 1] = e end\n\
             return r",
        );
        let e = json.expect_err("refused");
        assert!(e.contains("table slots"), "{e}");
        // The result and the chains, then the emptied table at most 2^24 / 2^17 = 128 times,
        // not once per reference.
        assert!(reads <= 1 + 25 * 29 + 128, "{reads}");
    }
}
