-- expect: runtime_error: table.unpack: elements
return table.unpack({}, 1, 1e8)
