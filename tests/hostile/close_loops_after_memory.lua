-- expect: memory_limit
local x <close> = setmetatable({}, { __close = function() while true do end end })
local t = {}
for i = 1, 1e9 do t[i] = ("x"):rep(100000) .. i end
