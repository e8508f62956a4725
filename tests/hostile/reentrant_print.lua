-- expect: ok: "ok"
-- __tostring that prints: print must not hold a lock while converting its arguments.
local t = setmetatable({}, { __tostring = function() print("inner") return "outer" end })
print(t)
return "ok"
