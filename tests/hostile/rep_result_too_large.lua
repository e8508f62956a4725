-- expect: runtime_error: string.rep result size
return string.rep("abcd", 2e6)
