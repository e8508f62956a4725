-- expect: runtime_error: table.remove: table length
local t = setmetatable({}, { __len = function() return 1 << 62 end })
return table.remove(t, 1)
