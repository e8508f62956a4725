-- expect: ok: true
-- Host calls re-entered through metamethods: a helper inside __tostring inside print.
local t = setmetatable({}, { __tostring = function()
  assert(helpers.metrics.count("reentry.calls_count", 1, { via = "tostring" }))
  print("nested")
  return "outer"
end })
print(t, t)
return helpers.metrics.count("reentry.calls_count", 1, { via = "main" })
