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
local raw_pcall, raw_xpcall = pcall, xpcall
local s_byte, s_sub, s_find, s_match, s_gmatch, s_gsub = string.byte, string.sub, string.find,
  string.match, string.gmatch, string.gsub
local m_log = math.log
local co_resume, co_close = coroutine.resume, coroutine.close

local validate, take, reset, bind = host.validate, host.take, host.reset, host.bind
local is_abort = host.is_abort
local max_verdicts = limits.max_verdicts
local max_walk = limits.max_walk
local strict = limits.strict
local pattern_budget_log = m_log(limits.pattern_budget)

---------------------------------------------------------------------------------------------
-- Read-only tables
---------------------------------------------------------------------------------------------

local frozen = setmetatable({}, { __mode = "k" })

local function readonly(t, name)
  local proxy = setmetatable({}, {
    __index = t,
    __newindex = function()
      error("attempt to modify read-only table '" .. name .. "'", 2)
    end,
    -- Iterate without handing out the underlying table.
    __pairs = function()
      local k
      return function()
        local v
        k, v = next(t, k)
        return k, v
      end
    end,
    __len = function() return #t end,
    __metatable = false,
  })
  frozen[proxy] = true
  return proxy
end

local function copy(t, except)
  local c = {}
  for k, v in pairs(t) do
    if not (except and except[k]) then c[k] = v end
  end
  return c
end

---------------------------------------------------------------------------------------------
-- Errors that must end the execution: time or memory limits. pcall, xpcall and
-- coroutine.resume catch errors; these wrappers re-raise the limit ones, so a script cannot
-- swallow its own termination.
---------------------------------------------------------------------------------------------

local function rethrow_if_abort(ok, ...)
  if not ok and is_abort((...)) then error((...), 0) end
  return ok, ...
end

local function safe_pcall(f, ...)
  return rethrow_if_abort(raw_pcall(f, ...))
end

local function safe_xpcall(f, handler, ...)
  return rethrow_if_abort(raw_xpcall(f, function(e)
    if is_abort(e) then return e end
    return handler(e)
  end, ...))
end

local safe_coroutine = copy(coroutine)
safe_coroutine.resume = function(co, ...) return rethrow_if_abort(co_resume(co, ...)) end
safe_coroutine.close = function(co) return rethrow_if_abort(co_close(co)) end

-- Finalizers would run later, in another tenant's execution or outside any time limit.
local function safe_setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in the sandbox", 2)
  end
  local ok, res = raw_pcall(setmetatable, t, mt)
  if not ok then error(res, 2) end -- blame the script's line, not the prelude's
  return res
end

local function safe_rawset(t, k, v)
  if frozen[t] then error("attempt to modify a read-only table", 2) end
  return rawset(t, k, v)
end

---------------------------------------------------------------------------------------------
-- Patterns: Lua's matcher runs in C, where the time limit cannot interrupt it, and
-- backtracking is exponential in the number of quantifiers. Refuse a match whose worst case
-- (subject length ^ (quantifiers + 1 when unanchored)) exceeds the budget.
---------------------------------------------------------------------------------------------

local qcache, qcount = {}, 0

local function quantifiers(p)
  local q = qcache[p]
  if q then return q end
  q = 0
  local i, n = 1, #p
  while i <= n do
    local c = s_byte(p, i)
    if c == 37 then -- %
      local d = s_byte(p, i + 1)
      if d == 98 then q = q + 1; i = i + 4 -- %bxy
      elseif d == 102 then i = i + 2 -- %f[set]: the set follows
      else i = i + 2 end
    elseif c == 91 then -- [set]
      i = i + 1
      if s_byte(p, i) == 94 then i = i + 1 end
      if s_byte(p, i) == 93 then i = i + 1 end
      while i <= n and s_byte(p, i) ~= 93 do
        if s_byte(p, i) == 37 then i = i + 1 end
        i = i + 1
      end
      i = i + 1
    elseif c == 42 or c == 43 or c == 45 or c == 63 then -- * + - ?
      q = q + 1; i = i + 1
    else
      i = i + 1
    end
  end
  if qcount > 1024 then qcache, qcount = {}, 0 end
  qcache[p] = q
  qcount = qcount + 1
  return q
end

local function check_pattern(s, p, anchorable, plain)
  if plain or type(p) ~= "string" then return end
  local st = type(s)
  if st ~= "string" then
    if st ~= "number" then return end -- the C function raises its own error
    s = tostring(s)
  end
  local n = #s
  if n < 2 then return end
  local q = quantifiers(p)
  if not (anchorable and s_byte(p, 1) == 94) then q = q + 1 end
  if q * m_log(n) > pattern_budget_log then
    error("pattern too complex for a subject of " .. n .. " bytes (sandbox limit)", 3)
  end
end

local safe_string = copy(string, { dump = true })
safe_string.find = function(s, p, init, plain)
  check_pattern(s, p, true, plain)
  return s_find(s, p, init, plain)
end
safe_string.match = function(s, p, init)
  check_pattern(s, p, true)
  return s_match(s, p, init)
end
safe_string.gmatch = function(s, p, init)
  check_pattern(s, p, false)
  return s_gmatch(s, p, init)
end
safe_string.gsub = function(s, p, r, n)
  check_pattern(s, p, true)
  return s_gsub(s, p, r, n)
end

-- Method calls on strings (`("x"):upper()`) go through the string metatable: point it at the
-- safe copy and hide it from getmetatable.
local string_mt = getmetatable("")
string_mt.__index = safe_string
string_mt.__metatable = false

---------------------------------------------------------------------------------------------
-- helpers.metrics
---------------------------------------------------------------------------------------------

-- Verdict cache: per kind, a tree keyed name -> tag key -> tag value -> ... -> END -> verdict,
-- in the tags table's own `next` order, so a lookup builds no string. The verdict is the id
-- of an accepted series on the Rust side, or the reason it is rejected. The helpers are C
-- closures (crates/engine/src/hot.rs) that walk this tree and aggregate accepted points on
-- the Rust side; what they cannot settle comes here, to the slow path.
local END = host.END
local roots = { counter = {}, gauge = {}, histogram = {} }
local nleaves = 0

-- Per-execution rejections, handed over and reset by drain(). The host calls drain only after
-- an execution that rejected something (`pending`), so the common case costs no call.
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
  local w = tostring(name) .. ": " .. reason
  if not warned[w] and nwarnings < 32 then
    warned[w] = true
    nwarnings = nwarnings + 1
    warnings[nwarnings] = w
  end
  -- Level 3 is the script line: the slow path tail-calls reject, and the C helper called it.
  if strict then error("helpers.metrics: " .. w, 3) end
  return false, reason
end

local function valid_tag_value(v)
  local t = type(v)
  return (t == "string" or t == "boolean" or (t == "number" and v == v))
end

-- First sight of a name/tag set on this engine: check the shapes Lua can check, ask Rust for
-- the rest, and plant the verdict. Invalid shapes are not cached (their keys may be fresh
-- tables).
local function plant(kind, name, tags)
  if type(name) ~= "string" then return nil, "invalid_name" end
  -- What the series is recorded under: tag values as `tostring` writes them.
  -- A table past any tag limit (the policy allows far fewer) is refused without planting a
  -- path for each of its entries.
  local copy, n = {}, 0
  if tags ~= nil then
    for k, v in next, tags do
      if type(k) ~= "string" or not valid_tag_value(v) then return nil, "invalid_tags" end
      n = n + 1
      if n > max_walk then return nil, "too_many_tags" end
      copy[k] = tostring(v)
    end
  end
  if nleaves >= max_verdicts then
    -- Cleared in place (the helpers hold these tables), then the series they named.
    for _, root in pairs(roots) do
      for k in pairs(root) do root[k] = nil end
    end
    nleaves = 0
    reset()
  end
  local verdict = validate(kind, name, copy)
  local node = roots[kind]
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
  return verdict
end

-- The slow path of one kind: argument errors, first sights, rejections and quota leases.
local function slow_path(kind)
  local is_counter = kind == "counter"
  local root = roots[kind]
  return function(name, value, tags)
    if value == nil and is_counter then value = 1 end
    -- `value - value` is NaN for NaN and for +-inf, 0 for every finite number.
    if type(value) ~= "number" or value - value ~= 0 then
      return reject("invalid_value", name)
    end
    if is_counter and value < 0 then return reject("negative_counter", name) end
    local verdict
    local node = root[name]
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

local function helper(kind)
  -- bind returns nothing for arguments it does not expect: fail the engine's construction.
  return assert(bind(roots[kind], host.hot, slow_path(kind), kind),
    "cannot bind helpers.metrics." .. kind)
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

local base = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = safe_pcall, select = select, tonumber = tonumber, tostring = tostring, type = type,
  xpcall = safe_xpcall, rawequal = rawequal, rawget = rawget, rawlen = rawlen,
  rawset = safe_rawset, setmetatable = safe_setmetatable, getmetatable = getmetatable,
  unpack = table.unpack,
  string = readonly(safe_string, "string"),
  table = readonly(copy(table), "table"),
  math = readonly(copy(math), "math"),
  utf8 = readonly(copy(utf8), "utf8"),
  coroutine = readonly(safe_coroutine, "coroutine"),
  os = readonly({ time = os.time, clock = os.clock, date = os.date }, "os"),
  helpers = helpers,
  print = host.print,
}

local env_mt = { __index = base, __metatable = false }

local control = {}

-- Returns a fresh environment for an execution.
function control.begin(event, context)
  return setmetatable({ event = event, context = context }, env_mt)
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
