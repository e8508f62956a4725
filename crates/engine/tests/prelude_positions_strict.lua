-- The same with `strict` helpers used as metamethods (their rejections raise).
local t = setmetatable({}, {__index = helpers.metrics.count})
print(pcall(string.gsub, "a", "a", t))
local u = setmetatable({}, {__newindex = helpers.metrics.count})
print(pcall(table.insert, u, "x"))
local w = setmetatable({}, {__index = helpers.metrics.gauge, __len = function() return 2 end})
print(pcall(table.concat, w))
return 1
