-- expect: memory_limit
local f = coroutine.wrap(function() local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(100000) .. i end end)
return pcall(f)
