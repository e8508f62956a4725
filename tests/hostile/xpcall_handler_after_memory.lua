-- expect: memory_limit
local ran = false
local ok = xpcall(function() local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(100000) .. i end end,
  function(e) ran = true while true do end end)
return ran
