-- The 20-line reference script of SPEC §12: typical tenant logic on a login event.
local user = event.user or {}
local plan = user.plan or "free"
local method = event.method or "password"
local domain = string.match(user.email or "", "@(.+)$") or "unknown"
local blocked = { ["mailinator.com"] = true, ["trashmail.com"] = true }
if blocked[domain] then
  return { allow = false, reason = "disposable domain" }
end
local score = 0
for i, role in ipairs(user.roles or {}) do
  score = score + (role == "admin" and 10 or 1) * i
end
local tier = score > 20 and "high" or (score > 5 and "medium" or "low")
local label = string.format("%s:%s", plan, tier)
helpers.metrics.count("logins.by_plan_count", 1, { plan = plan, method = method })
return {
  context = { plan = plan, tier = tier, label = label, score = score,
              seen = (context.seen or 0) + 1 },
}
