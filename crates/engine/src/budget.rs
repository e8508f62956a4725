//! Per-tenant engine-time budgets: how much of the pool's engine time one tenant may take.
//!
//! Per-execution limits bound one execution; nothing else stopped a tenant from sending many
//! short ones and taking every engine. Each tenant has a token bucket of engine milliseconds
//! refilled at `tenant_engine_ms_per_s` up to `tenant_engine_burst_ms`. An execution is
//! admitted while the bucket is above zero and charged afterwards with what it measured (its
//! script and helper time), so the last admitted execution may take the bucket below zero: a
//! debt the next refills pay first. A tenant over its budget is refused before it takes an
//! engine, told when to retry.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// Buckets kept before idle ones (full again) are forgotten.
const KEEP: usize = 10_000;

/// One tenant's engine time: what it may use and what it used.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TenantEngineUsage {
    /// Engine milliseconds per second the tenant may use (0: no budget).
    pub budget_ms_per_s: f64,
    /// Engine milliseconds the tenant may use at once after idling.
    pub burst_ms: f64,
    /// Engine milliseconds available now (negative: a debt the next refills pay).
    pub available_ms: f64,
    /// Engine milliseconds (script + helpers) used since the pool started.
    pub used_ms: f64,
    /// Executions refused because the budget was spent.
    pub throttled: u64,
}

struct Bucket {
    tokens_ms: f64,
    at: Instant,
    used_ms: f64,
    throttled: u64,
}

pub(crate) struct Budgets {
    rate_ms_per_s: f64,
    burst_ms: f64,
    tenants: Mutex<HashMap<Arc<str>, Bucket>>,
}

impl Budgets {
    pub(crate) fn new(rate_ms_per_s: f64, burst_ms: f64) -> Self {
        Self {
            rate_ms_per_s: rate_ms_per_s.max(0.0),
            burst_ms: burst_ms.max(0.0),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    fn enabled(&self) -> bool {
        self.rate_ms_per_s > 0.0
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens_ms = (b.tokens_ms + dt * self.rate_ms_per_s).min(self.burst_ms);
        b.at = now;
    }

    fn bucket<'a>(
        &self,
        tenants: &'a mut HashMap<Arc<str>, Bucket>,
        tenant: &str,
        now: Instant,
    ) -> &'a mut Bucket {
        if !tenants.contains_key(tenant) {
            if tenants.len() >= KEEP {
                // Forget tenants whose bucket is full again: they owe nothing.
                let (rate, burst) = (self.rate_ms_per_s, self.burst_ms);
                tenants.retain(|_, b| {
                    let dt = now.saturating_duration_since(b.at).as_secs_f64();
                    b.tokens_ms + dt * rate < burst
                });
            }
            tenants.insert(
                Arc::from(tenant),
                Bucket {
                    tokens_ms: self.burst_ms,
                    at: now,
                    used_ms: 0.0,
                    throttled: 0,
                },
            );
        }
        let b = tenants.get_mut(tenant).expect("inserted above");
        self.refill(b, now);
        b
    }

    /// Admits an execution of `tenant`, or says in how many ms its budget has room again.
    pub(crate) fn admit(&self, tenant: &str) -> Result<(), u64> {
        if !self.enabled() {
            return Ok(());
        }
        let now = Instant::now();
        let mut tenants = self.tenants.lock();
        let b = self.bucket(&mut tenants, tenant, now);
        if b.tokens_ms > 0.0 {
            return Ok(());
        }
        b.throttled += 1;
        let wait_s = (-b.tokens_ms + f64::EPSILON) / self.rate_ms_per_s;
        Err(((wait_s * 1000.0).ceil() as u64).max(1))
    }

    /// Charges `tenant` with `ms` of engine time an execution used.
    pub(crate) fn charge(&self, tenant: &str, ms: f64) {
        if ms.is_nan() || ms <= 0.0 {
            return;
        }
        let now = Instant::now();
        let mut tenants = self.tenants.lock();
        let b = self.bucket(&mut tenants, tenant, now);
        b.used_ms += ms;
        if self.enabled() {
            b.tokens_ms -= ms;
        }
    }

    /// What `tenant` may use and has used.
    pub(crate) fn usage(&self, tenant: &str) -> TenantEngineUsage {
        let now = Instant::now();
        let mut tenants = self.tenants.lock();
        let (available_ms, used_ms, throttled) = match tenants.get_mut(tenant) {
            Some(b) => {
                self.refill(b, now);
                (b.tokens_ms, b.used_ms, b.throttled)
            }
            None => (self.burst_ms, 0.0, 0),
        };
        TenantEngineUsage {
            budget_ms_per_s: self.rate_ms_per_s,
            burst_ms: self.burst_ms,
            available_ms: if self.enabled() { available_ms } else { 0.0 },
            used_ms,
            throttled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_budget_refuses_and_names_when_to_retry() {
        // 10 ms per second, 20 ms at once.
        let b = Budgets::new(10.0, 20.0);
        assert!(b.admit("a").is_ok());
        b.charge("a", 15.0);
        assert!(b.admit("a").is_ok(), "5 ms left");
        b.charge("a", 15.0);
        // 10 ms in debt: about a second at 10 ms/s.
        let retry = b.admit("a").unwrap_err();
        assert!((900..=1_001).contains(&retry), "{retry}");
        assert!(b.admit("b").is_ok(), "another tenant has its own bucket");
        let u = b.usage("a");
        assert_eq!((u.used_ms, u.throttled), (30.0, 1));
        assert!(u.available_ms < 0.0, "{u:?}");
    }

    #[test]
    fn no_budget_admits_everything_and_still_counts_use() {
        let b = Budgets::new(0.0, 0.0);
        b.charge("a", 1e9);
        assert!(b.admit("a").is_ok());
        assert_eq!(b.usage("a").used_ms, 1e9);
        assert_eq!(b.usage("a").throttled, 0);
    }
}
