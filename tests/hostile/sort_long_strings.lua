-- expect: runtime_error: comparison budget
-- table.sort without a comparator compares strings in C (l_strcmp: strcoll over the whole
-- string, no pointer-equality shortcut). 20000 entries (the sort limit) referencing two 4 MiB
-- strings that differ only in their last byte: ~3e5 comparisons x 4 MiB, one C call, no hook.
-- Memory stays at ~8 MiB. Observed: timeout reported at 1.1 s (abandoned), the process kept
-- running until killed by `timeout 20` (exit 124).
local a = string.rep("a", 1024):rep(4096 - 1) .. string.rep("a", 1023)
local b = a .. "b"
a = a .. "a"
local t = {}
for i = 1, 20000 do t[i] = (i % 2 == 0) and a or b end
table.sort(t)
return 1
