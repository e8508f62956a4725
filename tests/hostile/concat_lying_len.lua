-- expect: runtime_error: table.concat: table length
local t = setmetatable({}, { __len = function() return 1 << 40 end, __index = { "x" } })
return table.concat(t)
