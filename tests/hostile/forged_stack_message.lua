-- expect: runtime_error: stack overflow
local ok, e = pcall(error, "stack overflow", 0)
error(e, 0)
