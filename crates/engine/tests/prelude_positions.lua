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
-- Adversary round 19: a script's callback the prelude runs (print's __tostring, a comparator, a
-- metamethod) raising at a level that names a prelude frame.
do
local o = setmetatable({}, {__tostring=function() return 42 end})
print(pcall(print, o))
print(pcall(print, setmetatable({}, {__tostring=function() error("x", 3) end})))
print(pcall(print, setmetatable({}, {__tostring=function() error("y", 2) end})))
print(pcall(print, setmetatable({}, {__tostring=function() local x = nil; return x.y end})))
local out = {}
local function add(n, v) out[#out+1] = n .. " => " .. tostring(v) end
add("xpcall rep", select(2, xpcall(function() string.rep() end, function(m) return m end)))
add("xpcall rep direct", select(2, xpcall(string.rep, function(m) return m end)))
add("resume rep", select(2, coroutine.resume(coroutine.create(function() string.rep() end))))
add("resume direct", select(2, coroutine.resume(coroutine.create(string.rep))))
add("wrap direct", select(2, pcall(coroutine.wrap(string.rep))))
add("wrap sort lvl2", select(2, pcall(coroutine.wrap(function() table.sort(setmetatable({}, {__len=function() error("L", 2) end})) end))))
add("xpcall handler lvl", select(2, xpcall(function() table.sort({3,2,1}, function() error("C", 3) end) end, function(m) return m end)))
local ok, e = pcall(function() string.format("%d", setmetatable({}, {__name="s_rep"})) end)
add("name alias", e)
local ok, e = pcall(function() local t = table; t.x = 1 end)
add("readonly", e)
local ok, e = pcall(function() error(setmetatable({}, {__tostring=function() return "E" end})) end)
add("tbl err", e)
local ok, e = pcall(string.gsub, "aaa", "a", setmetatable({}, {__index=function(_, k) error("gi", 2) end}))
add("gsub tbl idx lvl2", e)
local ok, e = pcall(string.format, "%s", setmetatable({}, {__tostring=function() error("fs", 2) end}))
add("format ts lvl2", e)
local ok, e = pcall(string.format, "%s", setmetatable({}, {__tostring=function() error("fs3", 3) end}))
add("format ts lvl3", e)
local ok, e = pcall(table.move, setmetatable({}, {__index=function() error("mv", 2) end}), 1, 2, 1, {})
add("move idx lvl2", e)
local ok, e = pcall(table.insert, setmetatable({}, {__newindex=function() error("in", 2) end}), 1)
add("insert nidx lvl2", e)
local ok, e = pcall(table.remove, setmetatable({}, {__len=function() return 1 end, __index=function() error("rm", 2) end}))
add("remove idx lvl2", e)
for _, l in ipairs(out) do print(l) end

end
-- Review: a callback deeper than the handler looked (32 levels) naming a prelude frame.
do
print(pcall(print, setmetatable({}, {__tostring=function()
  local function r(n) if n == 0 then error("deep", 37) end r(n - 1) end
  r(33)
end})))
end
-- Adversary round 21: deeper than any handler's walk (300 levels), through print, sort, gsub.
do
local function deep(n, level) if n == 0 then error("x", level) end deep(n - 1, level) end
print(pcall(print, setmetatable({}, {__tostring=function() deep(300, 304) end})))
print(pcall(table.sort, {3, 2, 1}, function() deep(300, 304) end))
print(pcall(string.gsub, "a", "a", function() deep(300, 304) end))
end
return 1
