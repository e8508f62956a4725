-- expect: memory_limit
local ok = pcall(function() local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(100000) .. i end end)
return ok
