-- expect: timeout
-- A to-be-closed variable whose __close never ends, then a loop: the limit fires, and the
-- handler gets no fresh budget.
local x <close> = setmetatable({}, { __close = function() local i = 0 while true do i = i + 1 end end })
while true do end
