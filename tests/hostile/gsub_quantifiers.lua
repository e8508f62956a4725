-- expect: runtime_error: pattern too complex
return (string.rep("a", 20000)):gsub("a*a*a*b", "")
