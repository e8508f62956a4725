-- expect: runtime_error: invalid conversion
return string.format("%999999d", 1)
