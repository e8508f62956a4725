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
    /// Points leased to executions and not yet ingested or given back, per tenant: a batch is
    /// covered by these first, and only what was leased can be given back (a caller cannot
    /// mint credit, nor ingest past the quota without a lease).
    leased: DashMap<Arc<str>, u64>,
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
            leased: DashMap::new(),
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

    /// Leases up to `want` points of the tenant's quota to an execution; returns how many.
    pub fn lease(&self, tenant: &Arc<str>, want: u32) -> u32 {
        let granted = self.take(tenant, want);
        if granted > 0 {
            *self.leased.entry(tenant.clone()).or_insert(0) += u64::from(granted);
        }
        granted
    }

    /// Ends the unused part of a lease: at most what the tenant has leased goes back.
    pub fn end_lease(&self, tenant: &Arc<str>, unused: u32) {
        let back = self.consume_lease(tenant, u64::from(unused));
        self.give_back(tenant, back as u32);
    }

    /// Covers `n` points of a batch: from the tenant's leases first, then from its quota.
    /// Returns how many are covered (fewer when the quota is spent).
    pub fn cover(&self, tenant: &Arc<str>, n: u64) -> u64 {
        let mut covered = self.consume_lease(tenant, n);
        while covered < n {
            let want = (n - covered).min(u64::from(u32::MAX)) as u32;
            let got = self.take(tenant, want);
            if got == 0 {
                break;
            }
            covered += u64::from(got);
        }
        covered
    }

    /// Takes up to `n` from the tenant's leased points; returns how many.
    fn consume_lease(&self, tenant: &Arc<str>, n: u64) -> u64 {
        let mut taken = 0;
        if let Some(mut l) = self.leased.get_mut(tenant) {
            taken = (*l).min(n);
            *l -= taken;
        }
        self.leased.remove_if(tenant, |_, l| *l == 0);
        taken
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
