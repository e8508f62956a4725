-- expect: runtime_error: pattern too complex
local s = string.rep("a", 100000)
return s:find("(a*)%1b")
