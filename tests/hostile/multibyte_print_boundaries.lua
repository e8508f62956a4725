-- expect: ok: 64
-- Lines cut at the byte limit land inside multi-byte characters at every offset.
local n = 0
for i = 1018, 1030 do print(string.rep("x", i) .. string.rep("€", 10)) n = n + 1 end
print(string.rep("€", 400))
print(string.rep("😀", 300))
for i = 1, 100 do print(i) end
return 64
