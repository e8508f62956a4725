-- expect: ok: "ok"
-- The Lua paths the sandbox takes where a metamethod function could change what C walks
-- (table.move/concat/unpack through an __index function, sorts with a comparator or __lt)
-- keep the library's results, overlapping moves included.
local src = setmetatable({}, { __index = function(t, k) return k * 10 end })
local dst = table.move(src, 1, 3, 2, {})
assert(dst[1] == nil and dst[2] == 10 and dst[3] == 20 and dst[4] == 30)
local a = setmetatable({1, 2, 3, 4, 5}, { __index = function() return 0 end })
table.move(a, 1, 4, 2)
assert(a[1] == 1 and a[2] == 1 and a[3] == 2 and a[4] == 3 and a[5] == 4, table.concat(a, ","))
local c = setmetatable({}, { __index = function(t, k) return "x" .. k end })
assert(table.concat(c, "-", 1, 3) == "x1-x2-x3")
local p, q, r = table.unpack(c, 2, 4)
assert(p == "x2" and q == "x3" and r == "x4")
-- A weak-key table keeps working as a table (its keys are held strongly now).
local w = setmetatable({}, { __mode = "k" })
local k = {}
w[k] = 1
assert(w[k] == 1 and next(w) == k)
-- An error on the Lua path names the table's own index, as C does.
local holes = setmetatable({}, { __index = function(_, i) if i ~= 6 then return "v" end end })
local ok, err = pcall(table.concat, holes, ",", 5, 7)
assert(not ok and err:find("index 6", 1, true), err)
-- A destination that is not a table is refused before anything is read.
local reads = 0
local counted = setmetatable({}, { __index = function() reads = reads + 1 end })
assert(not pcall(table.move, counted, 1, 3, 1, 42) and reads == 0)
local s = { 3, 1, 2 }
table.sort(s, function(x, y) return x > y end)
assert(s[1] == 3 and s[3] == 1)
local objs = {}
local mt = { __lt = function(x, y) return x.v < y.v end }
for i = 1, 5 do objs[i] = setmetatable({ v = 6 - i }, mt) end
table.sort(objs)
assert(objs[1].v == 1 and objs[5].v == 5)
return "ok"
