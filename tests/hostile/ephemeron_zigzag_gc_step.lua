-- expect: timeout
-- Adversary round 14: weak-key tables (ephemerons) converge pass by pass in one GC step in C;
-- entries chained in zig-zag node order marked one per pass: 40,000 entries, a single step of
-- seconds (abandoned). The vendored Lua now traverses weak-key tables as strong ones.
local N = 40000
local E = setmetatable({}, { __mode = "k" })
local keys = {}
for i = 1, N do local k = {}; keys[i] = k; E[k] = false end
keys = nil
-- node order, as `next` walks it
local order, n = {}, 0
for k in pairs(E) do n = n + 1; order[n] = k end
-- zig-zag chain: mid, mid-1, mid+1, mid-2, mid+2, ...
local mid = n // 2
local seq = { mid }
for d = 1, n do
  if mid - d >= 1 then seq[#seq + 1] = mid - d end
  if mid + d <= n then seq[#seq + 1] = mid + d end
end
for i = 1, #seq - 1 do E[order[seq[i]]] = { order[seq[i + 1]] } end
E[order[seq[#seq]]] = { }
local root = order[seq[1]]
order, seq = nil, nil
local t0 = os.clock()
-- churn: allocate garbage until GC cycles run
local g, last, maxgap = nil, os.clock(), 0
for i = 1, 200000 do
  g = { i }
  local now = os.clock()
  if now - last > maxgap then maxgap = now - last end
  last = now
end
while true do end
