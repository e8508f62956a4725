-- expect: runtime_error: table.sort: table length
local t = setmetatable({}, { __len = function() return 1 << 62 end, __index = function() return 1 end })
table.sort(t)
