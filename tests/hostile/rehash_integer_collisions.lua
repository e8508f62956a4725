-- expect: timeout
-- Adversary round 13: integer keys `j * (2^K - 1)` all landed in one slot once the table
-- grew to 2^K slots (Lua hashed an integer by its remainder modulo 2^K - 1), and the resize
-- walked that chain once per key: 2^16 keys kept the engine's thread in C, inside one
-- instruction, for seconds past the limit and its grace (abandoned, its thread and heap kept).
-- Numbers are now hashed with a secret of the process: the keys spread, the resize takes
-- milliseconds, and the endless loop after it is interrupted by the watchdog as usual.
local K = 17
local m = (1 << K) - 1
local t = {}
for j = 1, (1 << (K - 1)) + 1 do t[j * m] = true end
while true do end
