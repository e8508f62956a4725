-- expect: stack_overflow
-- Nested protected calls reach the C stack limit (200 nested C calls).
local function f() return pcall(f) end
local ok = f()
return "survived"
