-- expect: timeout
while true do
  local co = coroutine.create(function() local i = 0 while true do i = i + 1 end end)
  pcall(coroutine.resume, co)
end
