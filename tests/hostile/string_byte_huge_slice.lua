-- expect: memory_limit|runtime_error
return string.byte(string.rep("x", 2e6), 1, -1)
