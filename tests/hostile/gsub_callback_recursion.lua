-- expect: stack_overflow
local function f(s) return (s:gsub(".", f)) end
local ok = pcall(f, "ab")
return "survived"
