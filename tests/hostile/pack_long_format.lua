-- expect: runtime_error: format longer than 256 bytes
-- string.unpack walks its format in C, option by option, where no hook can interrupt: a 10 MB
-- format of no-op options (built with `..`, which max_string_bytes does not cap at this size)
-- ran for 200 ms against a 50 ms limit. The vendored Lua refuses formats over 256 bytes.
local f = "!"
for _ = 1, 23 do f = f .. f end
return string.unpack(f, "")
