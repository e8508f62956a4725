-- expect: runtime_error: string.format argument bytes
-- `__tostring` returning the same 4 MiB string for each of 3000 `%.0s`: C scanned it whole
-- at every conversion (12 GB). Converted once per argument and charged instead; a short
-- `__tostring` still formats as Lua does.
local small = setmetatable({}, { __tostring = function() return "small" end })
assert(string.format("[%s|%5s|%d]", small, "x", 3) == "[small|    x|3]")
assert(string.format("%%s %s", small) == "%s small")
local big = string.rep("v", 4 * 1024 * 1024)
local t = setmetatable({}, { __tostring = function() return big end })
local args = {}
for i = 1, 3000 do args[i] = t end
return #string.format(string.rep("%.0s", 3000), table.unpack(args))
