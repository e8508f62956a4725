-- expect: runtime_error: string.rep count
return ("x"):sub(1, 0):rep(1e15, "")
