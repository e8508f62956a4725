-- expect: memory_limit
local co = coroutine.create(function() local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(100000) .. i end end)
local ok = coroutine.resume(co)
return ok
