//! Per-tenant points-per-minute quota on a governor keyed limiter, with leases for the engine.

use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use luametrics_model::Limits;
use std::num::NonZeroU32;
use std::sync::Arc;

pub(crate) struct TenantQuota {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
    /// Points granted to an execution but not used, returned for the tenant's next request, so
    /// batch leases waste nothing.
    credits: DashMap<Arc<str>, u32>,
    burst: u32,
}

impl TenantQuota {
    pub fn new(limits: &Limits) -> Self {
        let per_minute =
            NonZeroU32::new(limits.points_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            credits: DashMap::new(),
            burst: burst.get(),
        }
    }

    /// Takes up to `want` points of the tenant's quota; returns how many were granted.
    pub fn take(&self, tenant: &Arc<str>, want: u32) -> u32 {
        if want == 0 {
            return 0;
        }
        let mut granted = 0;
        if let Some(mut c) = self.credits.get_mut(tenant) {
            let from_credit = (*c).min(want);
            *c -= from_credit;
            granted += from_credit;
        }
        let mut ask = (want - granted).min(self.burst);
        while ask > 0 && granted < want {
            let n = NonZeroU32::new(ask).unwrap_or(NonZeroU32::MIN);
            match self.limiter.check_key_n(tenant, n) {
                Ok(Ok(())) => {
                    granted += ask;
                    ask = (want - granted).min(self.burst);
                }
                // Not enough right now: try a smaller share.
                _ => ask /= 2,
            }
        }
        granted
    }

    /// Returns unused points of a lease.
    pub fn give_back(&self, tenant: &Arc<str>, n: u32) {
        if n > 0 {
            let mut c = self.credits.entry(tenant.clone()).or_insert(0);
            *c = c.saturating_add(n).min(self.burst);
        }
    }

    /// Forgets limiter state of tenants idle long enough to be back at full burst.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.credits.retain(|_, c| *c > 0);
    }

    pub fn tracked_tenants(&self) -> usize {
        self.limiter.len()
    }
}
