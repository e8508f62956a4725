-- expect: runtime_error: string.format argument bytes
-- A table whose `__name` is 2 MiB, formatted a thousand times with `%.0s`: each conversion
-- built and scanned the 2 MiB text inside one C call (about 1 s here, minutes with more
-- arguments). The arguments are now converted and charged before C runs.
local big = string.rep("n", 2 * 1024 * 1024 - 64)
local t = setmetatable({}, { __name = big })
local args = {}
for i = 1, 1000 do args[i] = t end
return #string.format(string.rep("%.0s", 1000), table.unpack(args))
