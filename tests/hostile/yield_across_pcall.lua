-- expect: ok: 3
local co = coroutine.wrap(function() pcall(function() coroutine.yield(1) end) return 2 end)
return co() + co()
