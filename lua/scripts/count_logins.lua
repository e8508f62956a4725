-- Counts logins per plan and method; refuses disposable e-mail domains.
local domain = string.match(event.email or "", "@([%w%.%-]+)$")
local plan = event.plan or "free"
local method = event.method or "password"

helpers.metrics.count("logins.by_plan_count", 1, { plan = plan, method = method })

local disposable = { ["mailinator.com"] = true, ["trashmail.com"] = true }
if domain and disposable[domain] then
  helpers.metrics.count("logins.blocked_count", 1, { reason = "disposable_domain" })
  return { allow = false, reason = "disposable e-mail domain" }
end

if event.attempts and event.attempts > 3 then
  helpers.metrics.gauge("logins.retry_depth", event.attempts, { method = method })
end

local score = 0
for _, role in ipairs(event.roles or {}) do
  if role == "admin" then score = score + 10 else score = score + 1 end
end
helpers.metrics.histogram("logins.role_score", score, { plan = plan })

return { context = { plan = plan, risk = score > 10 and "high" or "low" } }
