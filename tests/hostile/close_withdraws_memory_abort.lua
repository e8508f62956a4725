-- expect: memory_limit
-- Lua-stack growth refused by the heap limit inside pcall, with a to-be-closed variable in
-- every frame. The allocator fires ABORT_MEMORY, the __close handlers run while unwinding
-- (the abort hook makes them raise "execution aborted by a limit"), and then the SAME
-- realloc request (same ptr/osize/nsize: the stack) is made again after the unwinding freed
-- memory -> guard.rs `allocate` calls slot.withdraw(ABORT_MEMORY): the abort is withdrawn
-- although Lua ran in between. pcall returns false, the script goes on and ends ok.
-- Observed (binary of 05:27, --time-limit-ms 2000: the recursion is slow in a debug build):
-- exit 0, ok:true, 414 ms,
--   result [false, "luametrics: execution aborted by a limit", 5000050000]
local function f()
  local x <close> = setmetatable({}, { __close = function() end })
  return 1 + f()
end
local ok, e = pcall(f)
local n = 0
for i = 1, 1e5 do n = n + i end -- still running Lua after the memory limit
return { ok, tostring(e), n }
