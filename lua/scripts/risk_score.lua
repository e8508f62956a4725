-- user.login: scores the roles and passes the tier to later nodes through the context.
local score = 0
for _, role in ipairs(event.roles or {}) do
  score = score + (role == "admin" and 10 or 1)
end
if (event.attempts or 1) > 3 then score = score + 5 end
local tier = score > 10 and "high" or (score > 3 and "medium" or "low")
helpers.metrics.histogram("logins.risk_score", score, { plan = event.plan or "free" })
return { context = { risk = tier } }
