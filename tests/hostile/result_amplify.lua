-- expect: invalid_result: bytes of text
-- Observed (binary 05:27, under `ulimit -v 3000000` to protect the machine): the caller is
-- answered `timeout` at 1.1 s (the conversion runs on the execution thread, past the limit),
-- then the process dies with SIGABRT, exit 134, "memory allocation of 4194304 bytes failed",
-- at 12.4 s. Without a ulimit the host is asked for ~40 GiB (OOM killer). 10 copies: 40 MB
-- of JSON. max_result_nodes bounds values, not bytes: every node may be the same 4 MiB string.
local s = string.rep("a", 1024):rep(4096) -- 4 MiB
local t = {}
for i = 1, 9999 do t[i] = s end
return t   -- 4 MiB Lua heap, ~40 GiB of JSON on the host
