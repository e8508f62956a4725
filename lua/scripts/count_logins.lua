-- user.login: counts logins per plan and method, with the risk tier an earlier node computed.
local plan = event.plan or "free"
local method = event.method or "password"
helpers.metrics.count("logins.by_plan_count", 1, { plan = plan, method = method, risk = context.risk or "unknown" })
if (event.attempts or 1) > 3 then
  helpers.metrics.gauge("logins.retry_depth", event.attempts, { method = method })
end
