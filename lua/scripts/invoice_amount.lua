-- invoice.created: records invoice amounts as a histogram and counts invoices per plan.
local amount = tonumber(event.amount)
if amount == nil or amount < 0 then
  return { allow = false, reason = "invalid amount" }
end
helpers.metrics.histogram("invoices.amount", amount, { currency = event.currency or "EUR", plan = event.plan or "free" })
helpers.metrics.count("invoices.created_count", 1, { plan = event.plan or "free" })
return { context = { amount_band = amount > 100 and "large" or "small" } }
