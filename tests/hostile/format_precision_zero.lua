-- expect: runtime_error: string.format argument bytes
-- Each "%.0s" outputs nothing, but Lua's str_format checks l == strlen(s) over the whole
-- 4 MiB argument: 65536 conversions x 4 MiB = 256 GiB scanned in one uninterruptible C call.
-- Observed (100 ms limit): timeout reported at 1.1 s (abandoned), process busy in C until
-- 13.2 s (7.3 s on a re-run with the 05:27 binary). 100k arguments would make it ~20 s.
local s = string.rep("a", 1024):rep(4096) -- 4 MiB
local args = { s }
for _ = 1, 12 do table.move(args, 1, #args, #args + 1) end -- 4096 references (the most)
return #string.format(string.rep("%.0s", #args), table.unpack(args))
