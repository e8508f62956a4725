-- expect: ok: {"expected_newindex_calls": 1, "negative_len_err": "", "negative_len_ok": true, "newindex_calls": 1, "removed": "nil"}
-- Adversary round 15 (Low): the sandbox's table.remove on a table with a metatable skipped
-- C's last write (t[#t + 1] = nil for a position past the end, through __newindex) and
-- refused a position equal to a negative length, which C accepts.
local log = {}
local t = setmetatable({ 1, 2, 3 }, { __newindex = function(_, k, v) log[#log + 1] = k; end })
local v = table.remove(t, 4)
local neg = setmetatable({}, { __len = function() return -1 end })
local ok, err = pcall(table.remove, neg, -1)
return { removed = tostring(v), newindex_calls = #log,
  expected_newindex_calls = 1, negative_len_ok = ok, negative_len_err = err and tostring(err) or "" }
