-- expect: ok: "caught"
local co = coroutine.create(function() error("C stack overflow", 0) end)
local ok, e = coroutine.resume(co)
if not ok and e == "C stack overflow" then return "caught" end
