-- Adversary round 18: errors raised where the prelude's code is nearest (refusals one level
-- too shallow, read-only proxies as __newindex, C functions as metamethods, rawset, tostring in
-- string.format) showed the prelude's position and aliases. Every line printed must be free of them.
do
print(pcall(table.concat, {}, ",", 1, 10^8))
print(pcall(function() local x = table.concat({}, ",", 1, 10^8) return x end))
print(pcall(function() local x = table.unpack({}, 1, 10^8) return x end))
local t = setmetatable({}, {__len=function() return 1.5 end})
print(pcall(function() local x = table.concat(t) return x end))
print(pcall(function() local x = table.unpack(t) return x end))
local t2 = setmetatable({}, {__len=function() return 10^9 end})
print(pcall(function() local x = table.concat(t2) return x end))
-- chain
local mt = {}
for i=1,100 do mt["k"..i]=i end
local base = setmetatable({}, {__index = {}})
local chain = setmetatable({}, mt); mt.__index = base
print(pcall(function() local x = table.concat(chain, ",", 1, 200000) return x end))
print(pcall(function() local x = table.unpack(chain, 1, 200000) return x end))
print(pcall(function() local x = table.sort(t2) return x end))
end
do
print(pcall(rawset, nil, 1, 2))
print(pcall(function() local x = rawset(nil, 1, 2) return x end))
print(pcall(function() local x = rawset({}, nil, 2) return x end))
local bad = setmetatable({}, {__tostring=function() return 1 end})
print(pcall(function() local x = string.format("%s", bad) return x end))
print(pcall(function() local x = string.format("%s %s", bad) return x end))
local bad2 = setmetatable({}, {__tostring=function() return {} end, __name="luametrics/prelude.lua:1: 's_rep'"})
print(pcall(function() local x = string.format("%s", bad2) return x end))
local named = setmetatable({}, {__name="NAME 's_rep' 't_sort'"})
print(pcall(function() local x = string.format("%d", named) return x end))
print(pcall(function() local x = ("%d"):format(named) return x end))
print(pcall(function() local x = string.rep(named) return x end))
print(pcall(function() local x = table.unpack(named, 1, "x") return x end))
print(pcall(function() local x = table.unpack() return x end))
print(pcall(function() local x = table.concat({1,{},3}) return x end))
print(pcall(function() local x = table.concat({1,2,3}, {}) return x end))
print(pcall(function() local x = select(-5, 1) return x end))
end
do
local t = setmetatable({}, {__newindex = string})
print(pcall(function() table.insert(t, "x") return 1 end))
local t2 = setmetatable({1,2,3}, {__newindex = math})
print(pcall(function() table.insert(t2, 1, "x") return 1 end))
local t3 = setmetatable({}, {__newindex = table, __len=function() return 3 end, __index=function(_, i) return i end})
print(pcall(function() table.sort(t3) return 1 end))
print(pcall(function() table.remove(t3, 1) return 1 end))
print(pcall(function() table.move({1,2}, 1, 2, 1, t3) return 1 end))
local src = setmetatable({}, {__index=function(_, i) return i end})
local dst = setmetatable({}, {__newindex = string})
print(pcall(function() table.move(src, 1, 2, 1, dst) return 1 end))
-- gsub with table replacement whose chain hits a proxy: reading only, fine
-- insert via proxy directly
print(pcall(function() table.insert(string, "x") return 1 end))
print(pcall(function() string.x = 1 return 1 end))
print(pcall(rawset, string, "x", 1))
end
do
local t = setmetatable({}, {__index = string.char})
print(pcall(string.gsub, "a", "a", t))
print(pcall(table.concat, setmetatable({}, {__index = string.char, __len = function() return 2 end})))
print(pcall(table.insert, setmetatable({}, {__newindex = math.floor}), "x"))
print(pcall(table.sort, setmetatable({}, {__index = math.abs, __len = function() return 2 end})))
print(pcall(table.unpack, setmetatable({}, {__index = utf8.char}), 1, 2))
print(pcall(table.remove, setmetatable({}, {__index = utf8.char, __len = function() return 2 end}), 1))
print(pcall(table.move, setmetatable({}, {__index = string.char}), 1, 2, 1, {}))
print(pcall(string.format, "%s", setmetatable({}, {__tostring = string.char})))
end
return 1
