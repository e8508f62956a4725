-- token.issue: gauges the issuing queue and counts tokens per grant type.
helpers.metrics.gauge("tokens.queue_depth", event.queue_depth or 0, { client = event.client or "unknown" })
helpers.metrics.count("tokens.issued_count", 1, { grant_type = event.grant_type or "unknown", plan = event.plan or "free" })
