-- expect: timeout
-- Adversary round 14: table.sort's string check ran before the sort; an element's __lt (Lua) then
-- put one 4 MiB string in every slot of the table C was sorting, and the rest of the sort
-- compared 4 MiB strings in C (37 s; abandoned at the limit and its grace). Where Lua runs
-- during a sort, C now sorts a copy Lua cannot reach; the endless loop after it is interrupted.
local N = 20000
local L = 1 << 22
local big = string.rep("a", L)
local t = {}
local swapped = false
local mt = {}
mt.__lt = function(a, b)
  if not swapped then
    swapped = true
    for i = 1, N do rawset(t, i, big) end
  end
  return false
end
for i = 1, N do t[i] = setmetatable({}, mt) end
table.sort(t)
while true do end
