-- expect: memory_limit
-- A raising __close inside pcall used to turn the memory error into an ordinary one.
local ok = pcall(function()
  local x <close> = setmetatable({}, { __close = function() error("replaced") end })
  local t = {}
  for i = 1, 1e9 do t[i] = ("x"):rep(100000) .. i end
end)
return "survived"
