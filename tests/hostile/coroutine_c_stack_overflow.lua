-- expect: stack_overflow
-- A real C-stack overflow (nested string.gsub callbacks reach LUAI_MAXCCALLS) inside a
-- coroutine. guard.rs `resume` probes the resumer's C stack (shallow again once the
-- coroutine died) and the coroutine's Lua stack (not full): not typed. resume returns
-- false, "C stack overflow"; the script repeats it at will and ends ok.
-- Observed: exit 0, ok:true, result [false, "C stack overflow", 20]
local co = coroutine.create(function()
  local function g(s) return (s:gsub(".", g)) end
  return g("ab")
end)
local ok, e = coroutine.resume(co)
local n = 0
for i = 1, 20 do
  local c = coroutine.wrap(function() local function g(s) return (s:gsub(".", g)) end return g("ab") end)
  if not pcall(c) then n = n + 1 end
end
return { ok, tostring(e), n }
