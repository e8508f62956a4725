-- expect: stack_overflow
-- A __close handler that never ends, after a C-stack overflow caught by pcall.
local x <close> = setmetatable({}, { __close = function() while true do end end })
local function f() return pcall(f) end
f()
return "survived"
