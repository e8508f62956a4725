-- expect: runtime_error: pattern too complex
local s = string.rep("a", 200000)
return s:find("[" .. string.rep("b", 5000) .. "]")
