-- expect: runtime_error: table.sort: elements
local t = {}
for i = 1, 30000 do t[i] = -i end
table.sort(t)
