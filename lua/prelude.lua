-- luametrics sandbox prelude.
--
-- Runs once per engine, in the full Lua state, before any tenant script. It builds the
-- read-only base environment scripts see (SPEC §6.1) and the Lua side of `helpers.metrics`
-- (SPEC §6.2): each distinct name/tag set is validated once per engine and its verdict cached
-- here, in a tree the C helpers walk without building a string; accepted points are
-- pre-aggregated per execution and the host drains them once at the end.
--
-- Arguments: a table of host functions and a table of limits. Returns the control table.
local host, limits = ...

local type, pairs, next, tostring, error, select = type, pairs, next, tostring, error, select
local setmetatable, getmetatable, rawget, rawset = setmetatable, getmetatable, rawget, rawset
local rawlen = rawlen
local s_byte, s_sub, s_find, s_match, s_gmatch, s_gsub = string.byte, string.sub, string.find,
  string.match, string.gmatch, string.gsub
local m_log, m_randomseed, maxinteger, m_ult = math.log, math.randomseed, math.maxinteger, math.ult

local validate, take, reset, bind = host.validate, host.take, host.reset, host.bind
local reset_tenant = host.reset_tenant
local max_verdicts = limits.max_verdicts
local max_walk = limits.max_walk
local strict = limits.strict
local pattern_budget_log = m_log(limits.pattern_budget)
local max_string = limits.max_string_bytes
local max_elements = limits.max_table_elements
local max_sort = limits.max_sort_elements
local max_date_format = 256
local max_format_args = 4096

---------------------------------------------------------------------------------------------
-- Read-only tables
---------------------------------------------------------------------------------------------


-- One set of metamethods for every read-only proxy (each proxy's metatable differs only in its
-- `__index`): per-library closures were a measurable share of an idle engine's heap. `proxied`
-- maps each proxy to its table (and is the set `rawset` refuses).
local proxied, proxy_names = {}, {}

local function ro_newindex(p)
  error("attempt to modify read-only table '" .. proxy_names[p] .. "'", 2)
end

-- Iterate without handing out the underlying table.
local function ro_pairs(p)
  local t, k = proxied[p], nil
  return function()
    local v
    k, v = next(t, k)
    return k, v
  end
end

local function ro_len(p) return #proxied[p] end

local function readonly(t, name)
  local proxy = setmetatable({}, {
    __index = t,
    __newindex = ro_newindex,
    __pairs = ro_pairs,
    __len = ro_len,
    __metatable = false,
  })
  proxied[proxy], proxy_names[proxy] = t, name
  return proxy
end

---------------------------------------------------------------------------------------------
-- Limits a script cannot catch. pcall, xpcall and coroutine.resume are the host's guarded
-- versions (crates/engine/src/guard.rs): a time, memory or stack limit is re-raised, never
-- turned into `false, message`, and once one fired every later instruction of the execution
-- raises (the watchdog's hook), so no handler, `__close` or protected code gets a new budget.
-- Coroutines are registered with the watchdog (it must hook the thread that is running) and
-- kept reachable until the execution ends.
---------------------------------------------------------------------------------------------

local co_create, co_close, co_wrap, co_status = coroutine.create, coroutine.close,
  coroutine.wrap, coroutine.status
local guarded_resume, track, bind_body = host.resume, host.track, host.bind_body
local library_error = host.library_error
local threads, nthreads = {}, 0

local function create(...)
  local f = ...
  if type(f) ~= "function" then co_create(...) end -- Lua's own argument error
  -- The body runs under the guard's message handler on the coroutine's own thread, so a stack
  -- overflow inside it is probed where it happens, before the coroutine dies.
  local co = co_create(bind_body(f))
  nthreads = nthreads + 1
  threads[nthreads] = co
  track(co)
  return co
end

-- coroutine.wrap on the guarded resume: errors propagate with the caller's position, and the
-- coroutine is closed, as Lua's own wrap does.
local function wrap_results(co, ok, ...)
  if ok then return ... end
  local err = ...
  -- A coroutine that died of the error is closed: its pending `__close` handlers run, and one
  -- that raises replaces the error, as in Lua's own wrap (which leaves a coroutine it could
  -- not resume, a running one, as it is).
  if co_status(co) ~= "dead" then
    if type(err) == "string" then error(err, 2) end
    error(err, 0)
  end
  local closed, cerr = co_close(co)
  -- (The body's own error came through the message handler already: only a handler's is
  -- made Lua's own here.)
  if not closed and cerr ~= err then
    err = type(cerr) == "string" and library_error(cerr) or cerr
  end
  if type(err) == "string" then error(err, 2) end
  error(err, 0)
end

-- Changed in place (scripts reach it only through a read-only proxy; the prelude kept the
-- originals it needs): a copy was a measurable share of an idle engine's heap.
local safe_coroutine = coroutine
safe_coroutine.create = create
safe_coroutine.resume = guarded_resume
-- Closing a suspended coroutine runs its pending `__close` handlers with no message handler:
-- a library error raised in one is made Lua's own here. (A dead coroutine's close returns the
-- error it died of, which came through the message handler already, or a handler's.)
local function closed(suspended, ok, ...)
  if suspended and ok == false then
    local err = ...
    if type(err) == "string" then return false, library_error(err) end
  end
  return ok, ...
end
safe_coroutine.close = function(...)
  local co = ...
  local suspended = type(co) == "thread" and co_status(co) == "suspended"
  return closed(suspended, co_close(...))
end
safe_coroutine.wrap = function(...)
  local f = ...
  if type(f) ~= "function" then co_wrap(...) end -- Lua's own argument error
  local co = create(f)
  return function(...) return wrap_results(co, guarded_resume(co, ...)) end
end

-- Tables a script gave a metatable, each with that metatable (read raw here, whatever its
-- `__metatable` field says): their length may be a lying `__len`, so the table functions below
-- measure it once and never let C measure it again, and a missing key may walk a chain of
-- `__index` tables in C, which the functions below charge.
-- (Weak keys and values: the vendored Lua traverses tables with weak keys only as strong ones,
-- and this table lives as long as the engine.)
local metatabled = setmetatable({}, { __mode = "kv" })

-- Finalizers would run later, in another tenant's execution or outside any time limit.
local function safe_setmetatable(...)
  local t, mt = ...
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in the sandbox", 2)
  end
  -- Called directly: an argument error names `setmetatable` and is placed at the script's
  -- line by the message handler, as for the other library functions.
  local res = setmetatable(...)
  if type(t) == "table" then metatabled[t] = mt end
  return res
end

local function safe_rawset(t, k, v)
  if proxied[t] then error("attempt to modify a read-only table", 2) end
  return rawset(t, k, v)
end

---------------------------------------------------------------------------------------------
-- C library functions run in C, where no hook can interrupt them: each is bounded before it
-- runs, for any arguments. A refusal is an ordinary error naming the limit.
---------------------------------------------------------------------------------------------

local tointeger, m_type = math.tointeger, math.type
local s_rep, s_format = string.rep, string.format
local t_insert, t_remove, t_move, t_concat, t_unpack, t_sort =
  table.insert, table.remove, table.move, table.concat, table.unpack, table.sort
local os_date = os.date

local function refuse(what, n, limit)
  error(what .. " (" .. tostring(n) .. ") exceeds the sandbox limit of " .. limit, 3)
end

-- A key missing from a table walks its chain of `__index` (or `__newindex`) tables in C, up to
-- 2000 of them per access, where no hook can interrupt; at each one C looks the metamethod up
-- in the metatable, a walk as long as the collision chain of its slot, which a script can fill
-- with every entry of the metatable (keys found through `next` order). A C function over n
-- elements costs up to n x (1 + the entries of every metatable in the chain) steps, which must
-- fit this budget (a function in the chain is Lua, under the time limit, and ends the walk).
local max_chain_steps = 10 * max_elements

-- Refuses a C call over `n` elements of `t` (through `field`, and of `t2` through `field2`)
-- whose chains would cost more than the budget: each access walks the chain's tables and
-- looks the metamethod up in each of their metatables.
local function check_chain(what, n, t, field, t2, field2)
  if n <= 0 then return end
  local d, w = 0, 0
  for side = 1, 2 do
    local cur, f, hops = t, field, 0
    if side == 2 then cur, f = t2, field2 end
    while cur ~= nil and hops < 2000 do
      local mt = metatabled[cur]
      if not mt then break end
      local nx = rawget(mt, f)
      if nx == nil then break end
      hops = hops + 1
      for _ in next, mt do w = w + 1 end
      if type(nx) ~= "table" then
        -- Lua runs at each access, and may change any chain the C call walks next
        -- (adversary round 14: an `__index` function that swapped in a chain of 1,999
        -- tables kept a `table.move` in C for 1.5 s): the caller loops in Lua instead.
        return true
      end
      cur = nx
    end
    d = d + hops
  end
  if d > 0 and n * (w + 1) > max_chain_steps then
    error(what .. ": " .. tostring(n) .. " elements through a metatable chain of " .. d
      .. " tables (" .. w .. " metatable entries) exceed the sandbox limit of "
      .. max_chain_steps .. " steps", 3)
  end
  return false
end

-- A script-visible length: `#t` once (a lying `__len` is asked once, in Lua, under the time
-- limit), which must be an integer within the element limit.
local function measured_len(t, what)
  local n = #t
  local k = tointeger(n)
  if k == nil then error("object length is not an integer", 3) end
  if k > max_elements then refuse(what .. ": table length", k, max_elements) end
  return k
end

local function string_len_of(v)
  local tv = type(v)
  if tv == "string" then return #v end
  if tv == "number" then return #tostring(v) end
  return nil
end

-- The wrappers below pass their arguments on as they were given (`...`), so a missing one
-- reads "got no value" in the C function's error, as in Lua.
local function safe_rep(...)
  local s, n, sep = ...
  local k = tointeger(n)
  local ls, lsep = string_len_of(s), sep == nil and 0 or string_len_of(sep)
  if k and k > 0 and ls and lsep then
    -- Each repetition is a step even when it adds nothing (an empty string, an empty sep).
    if k > max_string then refuse("string.rep count", k, max_string) end
    local size = ls * k + lsep * (k - 1)
    if size > max_string then refuse("string.rep result size", size, max_string) end
  end
  return s_rep(...)
end

local function safe_insert(t, ...)
  local nargs = select("#", ...)
  if type(t) ~= "table" or (nargs ~= 1 and nargs ~= 2) then return t_insert(t, ...) end
  if nargs == 1 then
    if not metatabled[t] then return t_insert(t, ...) end -- an append: O(1) in C
    local n = measured_len(t, "table.insert")
    t[n + 1] = ...
    return
  end
  local pos, v = ...
  local p = tointeger(pos)
  if p == nil then return t_insert(t, pos, v) end -- C raises its own argument error
  local n = metatabled[t] and measured_len(t, "table.insert") or rawlen(t)
  if p < 1 or p > n + 1 then error("bad argument #2 to 'insert' (position out of bounds)", 2) end
  if n - p + 1 > max_elements then refuse("table.insert: elements to shift", n - p + 1, max_elements) end
  if not metatabled[t] then return t_insert(t, p, v) end
  for i = n, p, -1 do t[i + 1] = t[i] end
  t[p] = v
end

local function safe_remove(t, ...)
  local nargs = select("#", ...)
  if type(t) ~= "table" or nargs > 1 then return t_remove(t, ...) end
  local n = metatabled[t] and measured_len(t, "table.remove") or rawlen(t)
  local p = n
  if nargs == 1 then
    p = tointeger((...))
    if p == nil then return t_remove(t, ...) end -- C raises its own argument error
  end
  -- As C checks it: a position other than the length must be in 1..n+1, compared unsigned.
  if p ~= n and m_ult(n, p - 1) then
    error("bad argument #2 to 'remove' (position out of bounds)", 2)
  end
  if n - p > max_elements then refuse("table.remove: elements to shift", n - p, max_elements) end
  if not metatabled[t] then return t_remove(t, p) end
  local v = t[p]
  for i = p, n - 1 do t[i] = t[i + 1] end
  -- As C ends: the last position it reached is cleared, through `__newindex` if need be.
  if p <= n then t[n] = nil else t[p] = nil end
  return v
end

-- The number of indices from i to j, as a float (no integer overflow on extreme bounds).
local function span(i, j)
  return (j + 0.0) - i + 1
end

local function safe_move(a1, f, e, t, a2)
  local fi, ei = tointeger(f), tointeger(e)
  if fi and ei and ei >= fi and span(fi, ei) > max_elements then
    refuse("table.move: elements", span(fi, ei), max_elements)
  end
  if fi and ei and ei >= fi and type(a1) == "table" then
    local dest = a2
    if dest == nil then dest = a1 end
    if check_chain("table.move", ei - fi + 1, a1, "__index", type(dest) == "table" and dest or nil, "__newindex") then
      -- A metamethod function on the way: every access in Lua, under the time limit. All
      -- read first, then written, as C's move does for overlapping ranges.
      local ti = tointeger(t)
      -- C raises its own argument errors (a position that is not an integer, a wrap-around)
      -- before it moves anything.
      if ti == nil or ti > maxinteger - (ei - fi) or type(dest) ~= "table" then
        return t_move(a1, f, e, t, a2)
      end
      local c = {}
      for i = fi, ei do c[i - fi + 1] = a1[i] end
      for k = 1, ei - fi + 1 do dest[ti + k - 1] = c[k] end
      return dest
    end
  end
  return t_move(a1, f, e, t, a2)
end

local function bounds(t, i, j, what)
  if i == nil then i = 1 end
  if j == nil then j = metatabled[t] and measured_len(t, what) or rawlen(t) end
  local ii, jj = tointeger(i), tointeger(j)
  if ii and jj and jj >= ii and span(ii, jj) > max_elements then
    refuse(what .. ": elements", span(ii, jj), max_elements)
  end
  if ii and jj and jj >= ii and metatabled[t] and check_chain(what, jj - ii + 1, t, "__index") then
    -- A metamethod function on the way (see `check_chain`): the elements are read in Lua
    -- into a plain table, which C then reads.
    local c = {}
    for k = ii, jj do c[k] = t[k] end
    return ii, jj, c
  end
  return i, j, t
end

local function safe_concat(...)
  local t, sep, i, j = ...
  if type(t) ~= "table" then return t_concat(...) end
  i, j, t = bounds(t, i, j, "table.concat")
  return t_concat(t, sep == nil and "" or sep, i, j)
end

local function safe_unpack(...)
  local t, i, j = ...
  if type(t) ~= "table" then return t_unpack(...) end
  i, j, t = bounds(t, i, j, "table.unpack")
  return t_unpack(t, i, j)
end

-- Comparing two strings costs up to their length in C: n log n comparisons of the longest
-- string must fit the same budget as a pattern match. Returns whether C's quicksort could
-- exceed that budget: an input built against its choice of pivots leads it into many times
-- n log n comparisons (its guard against bad splits acts only past 1:128), all in one C call.
local sort_worst_log = m_log(128)
local function check_sort_cost(t, n)
  if n < 2 then return false end
  local longest = 1 -- a number costs about one byte
  for i = 1, n do
    local v = rawget(t, i)
    if type(v) == "string" and #v > longest then longest = #v end
  end
  local cost = m_log(n) + m_log(m_log(n) / m_log(2) + 1) + m_log(longest)
  if cost > pattern_budget_log then
    error("table.sort: " .. n .. " strings of up to " .. longest .. " bytes exceed the sandbox's comparison budget", 3)
  end
  return cost + sort_worst_log > pattern_budget_log
end

-- Sorts c[1..n] (strings and numbers, compared with `<`) by merging runs, in Lua: n log n
-- comparisons whatever the input, each a step the time limit can stop between. Stable.
-- Returns the sorted table (c or a second one).
local function merge_sort(c, n)
  local src, dst, width = c, {}, 1
  while width < n do
    local i = 1
    while i <= n do
      local mid, hi = i + width, i + 2 * width
      if mid > n + 1 then mid = n + 1 end
      if hi > n + 1 then hi = n + 1 end
      local a, b, k = i, mid, i
      while a < mid and b < hi do
        local x, y = src[a], src[b]
        if y < x then dst[k] = y; b = b + 1 else dst[k] = x; a = a + 1 end
        k = k + 1
      end
      while a < mid do dst[k] = src[a]; a = a + 1; k = k + 1 end
      while b < hi do dst[k] = src[b]; b = b + 1; k = k + 1 end
      i = hi
    end
    src, dst, width = dst, src, width * 2
  end
  return src
end

-- Only strings and numbers in c[1..n]: C would compare them without calling Lua.
local function plain_values(c, n)
  for i = 1, n do
    local tv = type(rawget(c, i))
    if tv ~= "string" and tv ~= "number" then return false end
  end
  return true
end

local function safe_sort(...)
  local t, comp = ...
  if type(t) ~= "table" then return t_sort(...) end
  if not metatabled[t] then
    local n = rawlen(t)
    if n > max_sort then refuse("table.sort: elements", n, max_sort) end
    -- Where Lua runs during the sort (a comparator, an `__lt`), it could change the table C
    -- is sorting (adversary round 14: an `__lt` that put a 4 MiB string in every slot kept
    -- the sort comparing them in C for 37 s): then C sorts a copy Lua cannot reach.
    -- C alone: no comparator, and only strings and numbers (no `__lt` to call).
    if comp == nil and plain_values(t, n) then
      if not check_sort_cost(t, n) then return t_sort(t) end
      local c = {}
      for i = 1, n do c[i] = rawget(t, i) end
      c = merge_sort(c, n)
      for i = 1, n do t[i] = c[i] end
      return
    end
  end
  -- Sorted through a plain copy, so C never asks a metatable for the length again.
  local n = measured_len(t, "table.sort")
  if n > max_sort then refuse("table.sort: elements", n, max_sort) end
  local c = {}
  for i = 1, n do c[i] = t[i] end
  if check_sort_cost(c, n) and comp == nil and plain_values(c, n) then
    c = merge_sort(c, n)
  else
    t_sort(c, comp)
  end
  for i = 1, n do t[i] = c[i] end
end

-- A numeral in another base is read digit by digit in C: bounded like a string result.
local raw_tonumber = tonumber
local function safe_tonumber(...)
  local v, base = ...
  if base ~= nil and type(v) == "string" and #v > max_string then
    refuse("tonumber: string length", #v, max_string)
  end
  return raw_tonumber(...)
end

local function safe_date(format, time)
  if type(format) == "string" and #format > max_date_format then
    refuse("os.date format length", #format, max_date_format)
  end
  return os_date(format, time)
end

local function safe_format(fmt, ...)
  -- Lua refuses widths and precisions over two digits itself; the format text is bounded
  -- here, and so are the bytes of string arguments (each `%s` scans its whole argument, even
  -- with a precision that prints none of it).
  if type(fmt) == "string" and #fmt > max_string then
    refuse("string.format format length", #fmt, max_string)
  end
  local n = select("#", ...)
  -- Each item is formatted in C, up to a couple of microseconds for a long `%99.99f` of a
  -- huge number: 100,000 of them ran 180 ms past the limit (adversary round 22).
  if n > max_format_args then refuse("string.format arguments", n, max_format_args) end
  local total, args, named = 0, { ... }, false
  for i = 1, n do
    local v = args[i]
    if type(v) == "string" then
      total = total + #v
      if total > max_string then refuse("string.format argument bytes", total, max_string) end
    else
      local mt = metatabled[v]
      if mt and (rawget(mt, "__tostring") ~= nil or rawget(mt, "__name") ~= nil) then named = true end
    end
  end
  if not named then return s_format(fmt, ...) end
  -- A table with `__tostring` or `__name` becomes text inside C for each `%s` (a `__name` of
  -- megabytes copied and scanned every time): such arguments are converted here, once each, as
  -- `%s` would (`__tostring` runs under the time limit), charged, and handed over as text.
  -- The argument positions `fmt` formats with `%s`.
  local ss = {}
  if type(fmt) == "string" then
    local at, k = 1, 0
    while true do
      local p = s_find(fmt, "%", at, true)
      if p == nil then break end
      if s_byte(fmt, p + 1) == 37 then
        at = p + 2 -- "%%"
      else
        k = k + 1
        local e = p + 1
        local b = s_byte(fmt, e)
        -- flags, width, precision
        while b == 45 or b == 43 or b == 32 or b == 35 or b == 46 or (b and b >= 48 and b <= 57) do
          e = e + 1
          b = s_byte(fmt, e)
        end
        if b == 115 then ss[k] = true end -- s
        at = e + 1
      end
    end
  end
  -- Every table at a `%s` position, with a metatable or not yet: a `__tostring` run here may
  -- give a table not converted yet a `__name` of megabytes, which C would then copy for each
  -- `%s` (adversary round 15: 99,999 `%.0s` of one plain table, named 2 MiB by the last
  -- argument's `__tostring`, kept `string.format` in C for over 20 s). C gets text only.
  for i = 1, n do
    local v = args[i]
    if ss[i] and type(v) == "table" then
      v = tostring(v)
      args[i] = v
      total = total + #v
      if total > max_string then refuse("string.format argument bytes", total, max_string) end
    end
  end
  return s_format(fmt, t_unpack(args, 1, n))
end

---------------------------------------------------------------------------------------------
-- Patterns: Lua's matcher runs in C, where no hook can interrupt it. Its worst case is charged
-- before it runs: (start positions) x (pattern length: each item, a long character class
-- included, is tested per position) x (subject length per quantifier or back-reference:
-- backtracking). A plain find (or a pattern without specials) costs subject x pattern
-- length. A match whose worst case exceeds the budget is refused.
---------------------------------------------------------------------------------------------

-- Costs of recent patterns, for one tenant at a time (emptied when an engine's tenant
-- changes): a tenant timing a pattern's cost must not learn whether another tenant used it
-- (adversary round 16: a cached 30 KB pattern built from one tenant's event data cost
-- another 0.04 ms against 1.7 ms). Long patterns are not kept: each costs its own length to
-- read again, and the cache must not hold megabytes.
local qcache, qcount = {}, 0
local max_cached_pattern = 256

-- Quantifiers and back-references of a pattern, and whether it has any special character.
local function pattern_cost(p)
  local c = qcache[p]
  if c then return c end
  local q, special = 0, false
  local i, n = 1, #p
  while i <= n do
    local b = s_byte(p, i)
    if b == 37 then -- %
      special = true
      local d = s_byte(p, i + 1)
      if d == 98 then q = q + 1; i = i + 4 -- %bxy
      elseif d == 102 then i = i + 2 -- %f[set]: the set follows
      elseif d and d >= 49 and d <= 57 then q = q + 1; i = i + 2 -- %1-%9: a back-reference
      else i = i + 2 end
    elseif b == 91 then -- [set]
      special = true
      i = i + 1
      if s_byte(p, i) == 94 then i = i + 1 end
      if s_byte(p, i) == 93 then i = i + 1 end
      while i <= n and s_byte(p, i) ~= 93 do
        if s_byte(p, i) == 37 then i = i + 1 end
        i = i + 1
      end
      i = i + 1
    elseif b == 42 or b == 43 or b == 45 or b == 63 then -- * + - ?
      special = true
      q = q + 1; i = i + 1
    elseif b == 94 or b == 36 or b == 46 or b == 40 or b == 41 then -- ^ $ . ( )
      special = true
      i = i + 1
    else
      i = i + 1
    end
  end
  c = special and q or -1
  if n > max_cached_pattern then return c end
  if qcount >= 1024 then qcache, qcount = {}, 0 end
  qcache[p] = c
  qcount = qcount + 1
  return c
end

local function check_pattern(s, p, anchorable, plain)
  if type(p) ~= "string" then
    if type(p) ~= "number" then return end -- the C function raises its own error
    p = tostring(p)
  end
  local st = type(s)
  if st ~= "string" then
    if st ~= "number" then return end
    s = tostring(s)
  end
  local n, m = #s, #p
  if n < 2 then return end
  if m == 0 then m = 1 end -- an empty pattern still matches at every position
  local cost
  local q = (plain and -1) or pattern_cost(p)
  if q < 0 then
    cost = m_log(n) + m_log(m) -- plain search: every position, every pattern byte
  else
    local starts = (anchorable and s_byte(p, 1) == 94) and 0 or 1
    cost = m_log(m) + (q + starts) * m_log(n)
  end
  if cost > pattern_budget_log then
    error("pattern too complex for a subject of " .. n .. " bytes (sandbox limit)", 3)
  end
end

local safe_string = string -- in place, as `coroutine`
safe_string.dump = nil
safe_string.find = function(...)
  local s, p, _, plain = ...
  check_pattern(s, p, true, plain)
  return s_find(...)
end
safe_string.match = function(...)
  local s, p = ...
  check_pattern(s, p, true)
  return s_match(...)
end
safe_string.gmatch = function(...)
  local s, p = ...
  check_pattern(s, p, false)
  return s_gmatch(...)
end
safe_string.gsub = function(...)
  local s, p, r, n = ...
  check_pattern(s, p, true)
  local given = r
  if type(r) == "table" then
    -- A table replacement is indexed once per match inside C, where no hook can interrupt:
    -- a key at the end of a long hash-collision chain (or of a chain of `__index` tables) made
    -- one call run for seconds. Indexed here, in Lua, with the same semantics (the first
    -- capture, or the whole match, is the key; metamethods apply), under the time limit.
    local t = r
    r = function(k) return t[k] end
  end
  -- A replacement string is walked once per match (`%0`..`%9` copy captures): up to
  -- (subject length + 1) x replacement length steps, even when nothing is produced.
  local rl = string_len_of(r)
  local sl = string_len_of(s)
  if rl and sl and rl > 0 then
    local matches = sl + 1
    local k = tointeger(n)
    if k and k >= 0 and k < matches then matches = k end
    if matches > 0 and m_log(matches) + m_log(rl) > pattern_budget_log then
      error("string.gsub replacement too costly for a subject of " .. sl .. " bytes (sandbox limit)", 2)
    end
  end
  if r == given then return s_gsub(...) end
  return s_gsub(s, p, r, n)
end
safe_string.rep = safe_rep
safe_string.format = safe_format
-- pack, unpack and packsize bound their format's length in C (vendor/lua-src, lstrlib.c).

-- Method calls on strings (`("x"):upper()`) go through the string metatable: point it at the
-- safe copy and hide it from getmetatable.
local string_mt = getmetatable("")
string_mt.__index = safe_string
string_mt.__metatable = false

---------------------------------------------------------------------------------------------
-- helpers.metrics
---------------------------------------------------------------------------------------------

-- Verdict cache: per tenant and kind, a tree keyed name -> tag key -> tag value -> ... -> END
-- -> series id, in the tags table's own `next` order, so a lookup builds no string. Only
-- accepted series are planted (a rejected name or value is never kept: nothing a tenant sends
-- can pin memory on the engine), and each tenant has its own trees, so whether a series is
-- cached (a fast call) says nothing about what other tenants recorded. Each tenant's trees
-- hold at most `max_verdicts` leaves and are emptied alone when full, so one tenant cannot
-- empty another's (adversary round 16: a shared bound told a tenant, by the time of its next
-- calls, how many series the others had used); the host forgets its series with them, so the
-- series the engine holds stay within the live leaves. Every tenant's trees go at once only
-- when the engine's live leaves reach twice `max_verdicts` (two tenants or more near their
-- bound): what that tells a tenant is only that others used thousands of series. The helpers are C
-- closures (crates/engine/src/hot.rs) bound to the running tenant's trees at the start of
-- each execution; they walk the tree and aggregate accepted points on the Rust side; what they
-- cannot settle comes here, to the slow path.
local END = host.END
local rebind = host.rebind
local trees, ntrees = {}, 0
local current -- the running tenant's trees: { counter = {}, gauge = {}, histogram = {}, n = leaves }
local current_tenant
local nleaves = 0 -- live leaves of every tenant's trees
local max_tenant_leaves = max_verdicts
local max_series = max_verdicts * 4
local max_trees = 1024
local bound = {} -- kind -> the helper's C closure

local function new_tree()
  return { counter = {}, gauge = {}, histogram = {}, n = 0 }
end

-- Points the helpers at `tree`.
local function use_tree(tree)
  current = tree
  for kind, f in pairs(bound) do rebind(f, tree[kind]) end
end

-- Per-execution rejections, handed over and reset by drain(). The host calls drain only after
-- an execution that rejected something (`pending`), so the common case costs no call.
-- Warnings are data: one entry per distinct (metric, reason) with its count.
local max_warnings = 32
local max_warning_name = 128
local rejected = {}
local warned, warnings, nwarnings = {}, {}, 0
local pending = false
local mark_rejected = host.mark_rejected

local function reject(reason, name)
  if not pending then
    mark_rejected() -- first: an interrupted reject may mark twice, never leave a count unseen
    pending = true
  end
  rejected[reason] = (rejected[reason] or 0) + 1
  local metric = type(name) == "string" and name or ("<" .. type(name) .. ">")
  if #metric > max_warning_name then metric = s_sub(metric, 1, max_warning_name) .. "..." end
  local key = metric .. "\0" .. reason
  local w = warned[key]
  if w then
    w.count = w.count + 1
  elseif nwarnings < max_warnings then
    w = { metric = metric, reason = reason, count = 1 }
    warned[key] = w
    nwarnings = nwarnings + 1
    warnings[nwarnings] = w
  end
  -- Level 3 is the script line: the slow path tail-calls reject, and the C helper called it.
  if strict then error("helpers.metrics: " .. metric .. ": " .. reason, 3) end
  return false, reason
end

local function valid_tag_value(v)
  local t = type(v)
  return (t == "string" or t == "boolean" or (t == "number" and v == v))
end

-- First sight of a name/tag set for this tenant: check the shapes Lua can check, ask Rust
-- for the rest (which writes each tag value's canonical text), and plant an accepted verdict.
-- Invalid shapes and rejections are not cached.
local function plant(kind, name, tags)
  if type(name) ~= "string" then return nil, "invalid_name" end
  -- A table past any tag limit (the policy allows far fewer) is refused without planting a
  -- path for each of its entries.
  local copy, n = {}, 0
  if tags ~= nil then
    for k, v in next, tags do
      if type(k) ~= "string" or not valid_tag_value(v) then return nil, "invalid_tags" end
      n = n + 1
      if n > max_walk then return nil, "too_many_tags" end
      copy[k] = v
    end
  end
  if current.n >= max_tenant_leaves then
    -- This tenant's trees alone go, and the series they named (before this one is planted).
    nleaves = nleaves - current.n
    reset_tenant()
    local tree = new_tree()
    if current_tenant ~= nil then trees[current_tenant] = tree end
    use_tree(tree)
  end
  local verdict = validate(kind, name, copy)
  if type(verdict) == "string" then return verdict end
  if nleaves >= 2 * max_verdicts or verdict >= max_series then
    -- Every tenant's trees go, then the series they named; the helpers get fresh trees.
    trees, ntrees, nleaves = {}, 0, 0
    reset()
    local tree = new_tree()
    if current_tenant ~= nil then trees[current_tenant] = tree; ntrees = 1 end
    use_tree(tree)
    verdict = validate(kind, name, copy)
    if type(verdict) == "string" then return verdict end
  end
  local node = current[kind]
  local function step(key)
    local nx = node[key]
    if nx == nil then nx = {}; node[key] = nx end
    node = nx
  end
  step(name)
  if tags ~= nil then
    for k, v in next, tags do
      step(k); step(v)
    end
  end
  node[END] = verdict
  nleaves = nleaves + 1
  current.n = current.n + 1
  return verdict
end

-- The slow path of one kind: argument errors, first sights, rejections and quota leases.
local function slow_path(kind)
  local is_counter = kind == "counter"
  return function(name, value, tags)
    if value == nil and is_counter then value = 1 end
    -- `value - value` is NaN for NaN and for +-inf, 0 for every finite number.
    if type(value) ~= "number" or value - value ~= 0 then
      return reject("invalid_value", name)
    end
    if is_counter and value < 0 then return reject("negative_counter", name) end
    local verdict
    local node = current[kind][name]
    if tags == nil then
      if node then verdict = node[END] end
    elseif type(tags) ~= "table" then
      return reject("invalid_tags", name)
    elseif node then
      local k, v = next(tags)
      while k ~= nil do
        node = node[k]
        if node == nil then break end
        node = node[v]
        if node == nil then break end
        k, v = next(tags, k)
      end
      if node then verdict = node[END] end
    end
    if verdict == nil then
      local reason
      verdict, reason = plant(kind, name, tags)
      if verdict == nil then return reject(reason, name) end
    end
    if type(verdict) == "string" then return reject(verdict, name) end
    local refused = take(verdict, value)
    if refused then return reject(refused, name) end
    return true
  end
end

current = new_tree()

local function helper(kind)
  -- bind returns nothing for arguments it does not expect: fail the engine's construction.
  local f = assert(bind(current[kind], host.hot, slow_path(kind), kind),
    "cannot bind helpers.metrics." .. kind)
  bound[kind] = f
  return f
end

local metrics = readonly({
  count = helper("counter"),
  gauge = helper("gauge"),
  histogram = helper("histogram"),
}, "helpers.metrics")

local helpers = readonly({ metrics = metrics }, "helpers")

---------------------------------------------------------------------------------------------
-- The base environment (SPEC §6.1 allow-list), read-only; each execution gets a fresh table
-- whose __index is this one, so what a script sets is gone with its environment.
---------------------------------------------------------------------------------------------

local safe_table = table -- in place, as `coroutine`
safe_table.insert, safe_table.remove, safe_table.move = safe_insert, safe_remove, safe_move
safe_table.concat, safe_table.unpack, safe_table.sort = safe_concat, safe_unpack, safe_sort

-- `print` converts each argument as Lua's does (`tostring`: `__tostring`, `__name`), here in
-- Lua, so an error a metamethod raises is the script's own error, as in Lua (adversary round
-- 18: raised inside the host's call it became a C stack overflow, or under `pcall` mlua's
-- traceback). The host keeps the line: at most `max_line` bytes, a bounded number of lines.
local host_print, max_line = host.print, host.max_line
local function safe_print(...)
  local n, args, parts, len = select("#", ...), { ... }, {}, 0
  for i = 1, n do
    local s = tostring(args[i])
    -- Only what the line can hold is copied (the host cuts on a character boundary).
    local room = max_line + 4 - len
    if #s > room then s = s_sub(s, 1, room) end
    parts[i] = s
    len = len + #s + 1
    if len > max_line then break end
  end
  return host_print(t_concat(parts, "\t"))
end

local base = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = host.pcall, select = select, tonumber = safe_tonumber, tostring = tostring, type = type,
  xpcall = host.xpcall, rawequal = rawequal, rawget = rawget, rawlen = rawlen,
  rawset = safe_rawset, setmetatable = safe_setmetatable, getmetatable = getmetatable,
  unpack = safe_unpack,
  string = readonly(safe_string, "string"),
  table = readonly(safe_table, "table"),
  -- Behind a proxy a library table cannot be changed: no copy needed for these two.
  math = readonly(math, "math"),
  utf8 = readonly(utf8, "utf8"),
  coroutine = readonly(safe_coroutine, "coroutine"),
  os = readonly({ time = os.time, clock = os.clock, date = safe_date }, "os"),
  helpers = helpers,
  print = safe_print,
}

local env_mt = { __index = base, __metatable = false }

local control = {}

-- Returns a fresh environment for an execution.
-- `tenant` selects the verdict trees; `seed` is this execution's random state, chosen by the
-- host, so no tenant's `math.randomseed` reaches the next execution.
function control.begin(event, context, tenant, seed)
  threads, nthreads = {}, 0
  m_randomseed(seed)
  if tenant ~= current_tenant then qcache, qcount = {}, 0 end
  local tree = trees[tenant]
  if tree == nil then
    if ntrees >= max_trees then
      trees, ntrees, nleaves = {}, 0, 0
      reset()
    end
    tree = new_tree()
    trees[tenant] = tree
    ntrees = ntrees + 1
  end
  current_tenant = tenant
  if tree ~= current then use_tree(tree) end
  return setmetatable({ event = event, context = context }, env_mt)
end

-- What the engine's caches hold (`Engine::cache_stats`): pattern costs kept (for the last
-- tenant only), live verdict leaves of every tenant, and of the last tenant.
function control.stats()
  return qcount, nleaves, current and current.n or 0
end

-- Empties every tenant's verdict trees and the pattern costs, and the host forgets the series
-- they named: the host calls it between executions when the engine's heap is still past
-- `recycle_memory_bytes` after a collection. The trees are bounded in leaves, not bytes (a
-- leaf of eight long tags holds some 3 KB), and they are all the engine keeps across
-- executions: emptied, the engine is reused instead of discarded.
function control.forget()
  trees, ntrees, nleaves = {}, 0, 0
  qcache, qcount = {}, 0
  reset()
  -- The helpers let go of the old trees too (they hold the running tenant's).
  current_tenant = nil
  use_tree(new_tree())
end

-- Hands the execution's rejections by reason and its warnings to the host (the accepted
-- points are on the Rust side already).
function control.drain()
  local r, w = rejected, warnings
  rejected = {}
  warned, warnings, nwarnings = {}, {}, 0
  pending = false
  return r, w
end

return control
