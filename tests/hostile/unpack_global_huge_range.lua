-- expect: runtime_error: table.unpack: elements
return unpack({}, -1e12, 1e12)
