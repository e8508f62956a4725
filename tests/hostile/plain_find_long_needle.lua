-- expect: runtime_error: pattern too complex
local s = string.rep("a", 1000000)
return s:find(string.rep("a", 1000) .. "b", 1, true)
