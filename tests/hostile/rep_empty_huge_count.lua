-- expect: runtime_error: string.rep count
-- An empty string repeated 2^63-1 times: each repetition is a step in C.
return string.rep("", math.maxinteger)
