-- expect: runtime_error: table.concat: 100000 elements through a metatable chain of 1998 tables
-- A missing key walks the chain of `__index` tables in C (up to 2000 per access): concat,
-- unpack and move over a chained table ran for seconds inside one C call. Each is charged
-- elements x (1 + entries of the chain's metatables) before it runs. (gsub indexes a
-- replacement table in Lua, under the time limit: tests/hostile/gsub_hash_collisions.lua.)
local function chain(n)
  local head = {}
  local cur = head
  for _ = 1, n do
    local nxt = {}
    setmetatable(cur, { __index = nxt })
    cur = nxt
  end
  return head, cur
end
-- A short chain (a class with a parent) over a thousand elements still works.
local obj, base = chain(2)
for i = 1, 1000 do base[i] = "x" end
assert(#table.concat(obj, "", 1, 1000) == 1000)
assert(select("#", table.unpack(obj, 1, 1000)) == 1000)
-- A chain's metatables are charged by their entries: a metamethod lookup may walk every
-- entry of a collision chain the script built in the metatable.
local wide = {}
for i = 1, 5000 do wide["k" .. i] = i end
wide.__index = base
local big = setmetatable({}, wide)
local okw, errw = pcall(table.concat, big, "", 1, 1000)
assert(not okw and errw:find("(5001 metatable entries)", 1, true), errw)
local head, last = chain(1998)
for i = 1, 100000 do last[i] = "x" end
local ok, err = pcall(table.unpack, head, 1, 100000)
assert(not ok and err:find("table.unpack: 100000 elements through a metatable chain", 1, true), err)
ok, err = pcall(table.move, head, 1, 100000, 1, {})
assert(not ok and err:find("table.move: 100000 elements through a metatable chain", 1, true), err)
return table.concat(head, "", 1, 100000)
