-- expect: stack_overflow|memory_limit
local function f() return 1 + f() end
local ok = pcall(f)
return ok
