-- expect: timeout|runtime_error
error(setmetatable({}, { __tostring = function() while true do end end }))
