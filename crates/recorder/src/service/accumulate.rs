//! The accumulators: a point's window, its series' shard, and the fold into the open window,
//! with the memory it costs charged against the bound first (nothing is held uncharged).

use super::*;

impl Inner {
    pub(super) fn window_start(&self, ts: i64) -> i64 {
        let w = self.config.settings.window_ms as i64;
        if w == 0 {
            ts
        } else {
            ts.div_euclid(w).saturating_mul(w)
        }
    }

    /// Folds an offered point (its summary) into its series' accumulator and accounts for it:
    /// accepted, dropped or rejected. The service's own metrics use `ingest_inner`, outside
    /// the accounting.
    pub(super) fn ingest(
        &self,
        key: impl Into<KeyIn>,
        summary: Summary,
        ts: i64,
        source: Option<String>,
    ) -> Result<Accepted, Rejected> {
        let key = key.into();
        let metric_type = key.get().metric_type;
        let samples = summary.samples;
        self.inflight.fetch_add(1, SeqCst);
        let result = self.ingest_inner(key, summary, ts, source, false);
        self.inflight.fetch_sub(1, SeqCst);
        if let Err(Rejected::Dropped(DropReason::MemoryBound)) = result {
            self.last_memory_drop_ms
                .store((self.config.clock)(), Relaxed);
        }
        match result {
            Ok(_) => self.counters.accept(metric_type, samples),
            Err(Rejected::Dropped(r)) => self.counters.drop_points(metric_type, r, samples),
            Err(Rejected::Invalid(r)) => self.counters.reject(metric_type, r, samples),
        }
        result
    }

    /// The fold itself; `internal` is true for the service's own metrics (room reserved above
    /// the memory bound, outside the accounting, taken in while shutting down).
    pub(super) fn ingest_inner(
        &self,
        key: impl Into<KeyIn>,
        summary: Summary,
        ts: i64,
        source: Option<String>,
        internal: bool,
    ) -> Result<Accepted, Rejected> {
        if !internal && self.closing.load(SeqCst) {
            return Err(Rejected::Dropped(DropReason::ShuttingDown));
        }
        // The service's own metrics have reserved room above the bound.
        let max = self.config.settings.max_memory_bytes + if internal { SELF_RESERVE } else { 0 };
        let (key, overflowed) = match key.into() {
            KeyIn::Owned(key) if key.is_registered() => {
                let now = (self.config.clock)();
                // A new series is admitted only with room for its first entry too: admitted
                // and then refused, it would count against the tenant's limits while holding
                // no point.
                let room = max.saturating_sub(ENTRY_OVERHEAD + summary.heap_bytes());
                match self
                    .registry
                    .admit(key, now, &self.config.policy.limits, &self.memory, room)
                {
                    Some((key, overflowed)) => (KeyIn::Shared(key), overflowed),
                    None => return Err(Rejected::Dropped(DropReason::MemoryBound)),
                }
            }
            // Shared keys are system series (handles): no series limits apply to them.
            other => (other, false),
        };
        let accepted = if overflowed {
            Accepted::Overflow
        } else {
            Accepted::Stored
        };
        let window = self.window_start(ts);
        let k = key.get();
        let shard = &self.shards[(self.hasher.hash_one(k) as usize) % self.shards.len()];
        let accounted = !internal;
        // A sketch is charged what it holds; merging into it charges its growth first. A key
        // is charged by itself before any map keeps it (`KeyIn::into_shared`).
        let cost = ENTRY_OVERHEAD + summary.heap_bytes();
        let mut shard = shard.lock();
        if self.config.settings.window_ms == 0 {
            let Some(key) = key.into_shared(&self.memory, max) else {
                return Err(Rejected::Dropped(DropReason::MemoryBound));
            };
            if !self.memory.charge_for(owner(&key), cost, max) {
                return Err(Rejected::Dropped(DropReason::MemoryBound));
            }
            let row = Sealed {
                key,
                window,
                window_ms: 0,
                summary,
                source,
                accounted,
            };
            shard.raw.push((row, cost));
            return Ok(accepted);
        }
        if let Some(open) = shard.windows.get_mut(k) {
            open.idle_flushes = 0;
            if open.idle_charge > 0 {
                self.memory
                    .release_for(owner(k), std::mem::take(&mut open.idle_charge));
            }
            let windows = &mut open.windows;
            if let Some((_, entry)) = windows.iter_mut().find(|(w, _)| *w == window) {
                // A histogram's sketch grows with the range of its values (up to 64 KiB): the
                // growth is charged before the merge, so the bound holds whatever the values.
                let growth = entry.summary.growth_with(&summary);
                if growth > 0 && !self.memory.charge_for(owner(k), growth, max) {
                    return Err(Rejected::Dropped(DropReason::MemoryBound));
                }
                let before = entry.summary.heap_bytes();
                // Same accuracy everywhere, so a merge cannot fail.
                let _ = entry.summary.merge(&summary);
                let grown = entry.summary.heap_bytes().saturating_sub(before);
                if growth > grown {
                    self.memory.release_for(owner(k), growth - grown);
                }
                entry.cost += grown;
                return Ok(accepted);
            }
            if !self.memory.charge_for(owner(k), cost, max) {
                return Err(Rejected::Dropped(DropReason::MemoryBound));
            }
            windows.push((
                window,
                Entry {
                    summary,
                    source,
                    cost,
                    accounted,
                },
            ));
            return Ok(accepted);
        }
        let Some(key) = key.into_shared(&self.memory, max) else {
            return Err(Rejected::Dropped(DropReason::MemoryBound));
        };
        if !self.memory.charge_for(owner(&key), cost, max) {
            return Err(Rejected::Dropped(DropReason::MemoryBound));
        }
        shard.windows.insert(
            key,
            Open {
                windows: vec![(
                    window,
                    Entry {
                        summary,
                        source,
                        cost,
                        accounted,
                    },
                )],
                idle_flushes: 0,
                idle_charge: 0,
            },
        );
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RecorderSettings;
    use luametrics_store::Location;

    // Reviewer finding: a one-use handle's key (no room left for tenants' handles) was kept in
    // the open windows as it was, its bytes charged by the first window's entry only; once that
    // window was written, a later window of the same series (recorded through a charged
    // handle) held the key with none of its bytes charged.
    #[tokio::test]
    async fn every_key_the_open_windows_keep_carries_its_own_charge() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open_with(
                Location::File(dir.path().join("m.db")),
                Duration::from_secs(1),
            )
            .await
            .unwrap(),
        );
        let config = RecorderConfig {
            settings: RecorderSettings {
                max_memory_bytes: 1 << 20,
                ..RecorderSettings::default()
            },
            ..RecorderConfig::default()
        };
        let service = MetricsService::start(store, config);
        let tags = |v: &str| Tags::from([("shard".to_string(), v.repeat(40))]);
        let name = "host.cache.latency_ms";
        // Fill the room for tenants' handles, then make one that has none.
        let mut fillers = Vec::new();
        let one_use = loop {
            let h = service.system_series(name, Kind::Histogram, tags("x"), Some("acme"));
            assert_eq!(h.refused(), None);
            if !h.held() {
                break h;
            }
            fillers.push(h);
            assert!(
                fillers.len() < 10_000,
                "the tenants' handles never ran out of room"
            );
        };
        let ts = service.now_ms();
        one_use.record_at(1.0, ts).unwrap();
        drop(one_use);
        drop(fillers);
        let shards = &service.inner.shards;
        let keys: Vec<Arc<SeriesKey>> = shards
            .iter()
            .flat_map(|s| s.lock().windows.keys().cloned().collect::<Vec<_>>())
            .filter(|k| k.tenant.as_deref() == Some("acme"))
            .collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            keys[0].uncharged_bytes(),
            0,
            "an open window keeps an uncharged key"
        );
        service.shutdown().await.unwrap();
    }
}
