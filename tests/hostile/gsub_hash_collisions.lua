-- expect: timeout
-- A gsub whose replacement table holds ~180 keys in one hash-collision chain, found through
-- `next` order (Lua's hash seed does not stop it): each of 2 million matches walked the chain
-- in C, over a second per call, past the limit and its grace (the engine was abandoned, its thread
-- kept a core). The prelude now indexes a table replacement in Lua, under the time limit.
local MARK = 1 + 255 * 2^32 // 1 -- an integer key at node 1 (key % 255 == 1)
local BASE = 2 + 255 * 2^32 // 1
local function fresh() -- 256 nodes, all empty but node 1
  local T = { [MARK] = true }
  for j = 0, 127 do T[BASE + j] = true end
  for j = 0, 127 do T[BASE + j] = nil end
  return T
end
local B = {}
for c = 1, 255 do
  local ch = string.char(c)
  if not ch:find("[%^%$%(%)%%%.%[%]%*%+%-%?]") then B[#B + 1] = ch end
end
local found, nf, T = {}, 0, fresh()
for a = 1, #B do
  local p = B[a]
  for c = 1, #B do
    local s = p .. B[c]
    T[s] = true
    if next(T, s) == MARK then -- s sits at node 0
      nf = nf + 1; found[nf] = s
      if nf == 180 then goto done end
    end
    T[s] = nil
  end
  T = fresh()
end
::done::
local r = {}
for i = 1, nf do r[found[i]] = "x" end
local K = found[128]
r[K] = ""
-- Same semantics as C's lookup: the whole match (or first capture) is the key.
assert(("ab"):gsub("%w", { a = "1" }) == "1b")
assert(("ab"):gsub("(%w)(%w)", setmetatable({}, { __index = function(_, k) return k .. "!" end })) == "a!")
local subject = string.rep(K, 2097152) -- 4 MiB: 2,097,152 matches per call
string.gsub(subject, K, r)
return (string.gsub(subject, K, r))
