-- expect: timeout
-- Adversary round 14: table.move's chain check saw a Lua __index function (one hop); its first
-- call swapped in a chain of 1,999 tables, which every later element walked in C (1.5 s for
-- 100,000 elements; abandoned). With a function on the way the move now runs in Lua, each
-- access under the time limit.
local N = 100000
local H = 1999
local head = {}
local cur = head
for i = 1, H - 1 do
  local nxt = {}
  setmetatable(cur, { __index = nxt })
  cur = nxt
end
local mt = {}
mt.__index = function(t, k)
  mt.__index = head
  return nil
end
local src = setmetatable({}, mt)
local dst = {}
table.move(src, 1, N, 1, dst)
while true do end
