-- expect: runtime_error: invalid conversion '%p' to 'format'
-- Adversary round 22: short strings are one object per engine, so the address `%p` printed
-- for a string a tenant built told whether the engine held the same text already: another
-- tenant's metric name or tag value kept in its verdict cache (a content oracle, no timing).
-- Collect twice, refill the freed slots, rebuild the guess: the same address means someone
-- else kept the string alive.
local a, b = "acme-deal-1-", event and event.suffix or "northwind"
return string.format("%p", a .. b)
