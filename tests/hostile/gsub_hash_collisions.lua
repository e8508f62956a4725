-- expect: timeout
-- A gsub whose replacement table made each lookup long, in C: first ~180 keys in one
-- hash-collision chain, found through `next` order (each of 2 million matches walked the chain
-- in C, over a second per call, past the limit and its grace: the engine was abandoned, its
-- thread kept a core). The prelude now indexes a table replacement in Lua, under the time
-- limit. (That search placed a marker by Lua's public integer hash; numbers are now hashed with
-- a secret of the process.) Here each lookup walks a chain of 1,000 `__index` tables instead:
-- 2 million matches, two thousand million steps if C did the lookups.
local head = {}
local cur = head
for _ = 1, 999 do
  local nxt = {}
  setmetatable(cur, { __index = nxt })
  cur = nxt
end
local r = setmetatable({}, { __index = head })
local K = "ab"
-- Same semantics as C's lookup: the whole match (or first capture) is the key.
assert(("ab"):gsub("%w", { a = "1" }) == "1b")
assert(("ab"):gsub("(%w)(%w)", setmetatable({}, { __index = function(_, k) return k .. "!" end })) == "a!")
local subject = string.rep(K, 2097152) -- 4 MiB: 2,097,152 matches per call
string.gsub(subject, K, r)
return (string.gsub(subject, K, r))
