-- expect: runtime_error: string.format arguments (100000) exceeds the sandbox limit of 4096
-- Adversary round 22: every item of a format is converted in C, where no hook can interrupt:
-- 100,000 `%.99g` of huge numbers (a couple of microseconds each) ran 180 ms past a 50 ms
-- limit in one call.
local n = 100000
local args = {}
for i = 1, n do args[i] = 1e308 / i end
return #string.format(string.rep("%.99g", n), table.unpack(args, 1, n))
