-- expect: stack_overflow
local function nest() local co = coroutine.wrap(nest) return co() end
local ok = pcall(nest)
return "survived"
