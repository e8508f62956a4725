-- expect: runtime_error: table.move: elements
-- Empty source, empty destination: nothing is allocated, so only a count bound stops it.
return table.move({}, 1, 1 << 62, 2)
