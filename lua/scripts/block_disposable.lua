-- user.login: refuse disposable e-mail domains before anything else runs.
local domain = string.match(event.email or "", "@([%w%.%-]+)$")
local disposable = { ["mailinator.com"] = true, ["trashmail.com"] = true }
if domain and disposable[domain] then
  helpers.metrics.count("logins.blocked_count", 1, { reason = "disposable_domain" })
  return { allow = false, reason = "disposable e-mail domain" }
end
return { context = { domain_kind = domain and "corporate" or "unknown" } }
