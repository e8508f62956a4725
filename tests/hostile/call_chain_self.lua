-- expect: runtime_error: '__call' chain too long
-- A table whose `__call` is itself: Lua 5.4 resolved the chain in C, one stack shift per hop
-- and no instruction between hops for a hook to stop it (minutes of one core per call). The
-- vendored Lua bounds the chain at 15 hops, as Lua 5.5 does: an ordinary, catchable error.
local t = {}
setmetatable(t, { __call = t })
-- A short chain still works.
local f = setmetatable({}, { __call = function(_, _, x) return x end })
local g = setmetatable({}, { __call = f })
assert(g(7) == 7, "a two-hop __call chain must still work")
-- A plain call (luaD_precall) fails and can be caught...
local ok, err = pcall(function() local x = t() return x end)
assert(not ok and tostring(err):find("'__call' chain too long", 1, true), tostring(err))
-- ...and so does a tail call (luaD_pretailcall).
return t()
