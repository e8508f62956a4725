-- expect: runtime_error: tonumber: string length
-- A numeral in base 36 read digit by digit in C: 10 MiB took the whole time limit in one call.
assert(tonumber("zz", 36) == 1295 and tonumber("10") == 10 and tonumber("x") == nil)
local a = string.rep("z", 2 * 1024 * 1024)
local s = a .. a .. a
return tonumber(s, 36)
