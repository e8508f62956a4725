-- expect: timeout
-- Adversary round 15: string.format converted, in Lua, only the tables that had a metatable
-- when their turn came; the last argument's __tostring then gave an earlier plain table a
-- __name of 2 MiB, which C copied for each of 99,999 '%.0s' (over 20 s in C; abandoned). Every
-- table at a %s position is now converted in Lua; the endless loop after it is interrupted.
-- (4,095 tables, the most a format may take since round 22: ~16 GB copied and scanned in C.)
local N = 4095
local L = 2 * 1024 * 1024
local T = {}
local big = string.rep("n", L)
local X = setmetatable({}, { __tostring = function()
  setmetatable(T, { __name = big })
  return "x"
end })
local args = {}
for i = 1, N do args[i] = T end
args[N + 1] = X
local fmt = string.rep("%.0s", N) .. "%s"
local t0 = os.clock()
local s = string.format(fmt, table.unpack(args, 1, N + 1))
while true do end
