-- expect: timeout
-- A gsub whose replacement table holds ~180 keys in one hash-collision chain, found through
-- `next` order (Lua's hash seed does not stop it): each of 2 million matches walked the chain
-- in C, over a second per call, past the limit and its grace (the engine was abandoned, its thread
-- kept a core). The prelude now indexes a table replacement in Lua, under the time limit.
-- (The chain was found through integer keys placed by Lua's public remainder hash; numbers
-- are now hashed with a secret of the process, so the search cannot place them any more. The
-- replacement keys below are plain: 2 million matches of a table replacement per call must
-- still end at the time limit, interrupted in Lua, not in C.)
local B = {}
for c = 1, 255 do
  local ch = string.char(c)
  if not ch:find("[%^%$%(%)%%%.%[%]%*%+%-%?]") then B[#B + 1] = ch end
end
local r, n = {}, 0
for a = 1, #B do
  for c = 1, #B do
    if n < 180 then n = n + 1; r[B[a] .. B[c]] = "x" end
  end
end
local K = B[1] .. B[2]
r[K] = ""
-- Same semantics as C's lookup: the whole match (or first capture) is the key.
assert(("ab"):gsub("%w", { a = "1" }) == "1b")
assert(("ab"):gsub("(%w)(%w)", setmetatable({}, { __index = function(_, k) return k .. "!" end })) == "a!")
local subject = string.rep(K, 2097152) -- 4 MiB: 2,097,152 matches per call
string.gsub(subject, K, r)
return (string.gsub(subject, K, r))
