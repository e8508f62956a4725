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

    /// Tenants with limiter state (what `prune` bounds).
    #[cfg(test)]
    fn tracked_tenants(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A stream of one-off tenants must not grow the limiter's state forever: once a tenant is
    // back at full burst, pruning forgets it.
    #[test]
    fn pruning_forgets_tenants_back_at_full_burst() {
        let q = TenantQuota::new(&Limits {
            points_per_minute: 60_000,
            burst: 1,
            ..Limits::default()
        });
        for i in 0..100 {
            assert_eq!(q.take(&Arc::from(format!("t{i}")), 1), 1);
        }
        q.give_back(&Arc::from("t0"), 1);
        assert_eq!(q.tracked_tenants(), 100);
        // One point per millisecond: after 50 ms every tenant is back at full burst (a lower
        // bound on elapsed time, not a timing assertion).
        std::thread::sleep(std::time::Duration::from_millis(50));
        q.prune();
        assert_eq!(q.tracked_tenants(), 0);
        // The returned credit was kept until used; pruning drops only spent ones.
        assert_eq!(q.credits.len(), 1);
    }
}
