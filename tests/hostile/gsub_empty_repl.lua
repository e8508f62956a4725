-- expect: runtime_error: replacement too costly
-- Observed: timeout reported at 1.1 s (engine abandoned), process still busy in C at 20 s
-- (exit 124 from `timeout 20`): (n+1) empty matches x 1M "%0" expansions, no hook can stop it.
local repl = string.rep("%0", 1000000)   -- 2 MB replacement, 1M empty-capture refs
local s = string.rep("a", 100000)
return #(s:gsub("", repl))
