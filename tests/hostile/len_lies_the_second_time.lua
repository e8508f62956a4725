-- expect: ok: 1
-- A __len that answers small once and huge after: the sandbox asks it once.
local asked = 0
local t = setmetatable({}, { __len = function() asked = asked + 1 if asked == 1 then return 3 end return 1 << 62 end })
table.insert(t, 1, "x")
table.sort(setmetatable({}, { __len = function() return 0 end }))
return asked
