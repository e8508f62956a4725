//! Flushing: sealing windows, writing them (exactly once, under batch ids), retrying a failing
//! database with backoff within the memory bound, recreating a deleted file, the background
//! flusher task, and the shutdown that keeps its deadline.

use super::*;

impl MetricsService {
    /// Writes every accumulated point now, the current window included; returns rows written.
    pub async fn flush(&self) -> Result<usize, RecorderError> {
        self.inner.flush(true).await
    }

    /// Stops accepting points, then flushes everything, retrying a failing database until
    /// `shutdown_timeout_ms` from now. See [`MetricsService::shutdown_by`].
    pub async fn shutdown(&self) -> Result<ShutdownReport, RecorderError> {
        let timeout = Duration::from_millis(self.inner.config.settings.shutdown_timeout_ms);
        self.shutdown_by(Instant::now() + timeout).await
    }

    /// Stops accepting points, then flushes everything, retrying a failing database until
    /// `deadline`: no lock wait runs past it. What is still unwritten then is counted as lost
    /// (reason `shutdown`) and returned as [`RecorderError::Unflushed`].
    pub async fn shutdown_by(&self, deadline: Instant) -> Result<ShutdownReport, RecorderError> {
        let result = self.shutdown_inner(deadline).await;
        // The deadline bounds this shutdown only; a host's later explicit flush has none.
        *self.inner.deadline.lock() = None;
        result
    }

    pub(super) async fn shutdown_inner(
        &self,
        deadline: Instant,
    ) -> Result<ShutdownReport, RecorderError> {
        let inner = &self.inner;
        let started = Instant::now();
        *inner.deadline.lock() = Some(deadline);
        inner.closing.store(true, SeqCst);
        // Points that passed the closing check before it was set land before the final flush.
        while inner.inflight.load(SeqCst) > 0 {
            tokio::task::yield_now().await;
        }
        // The flusher ends after its current attempt, whose lock wait is short (WRITE_WAIT).
        inner.wake.notify_one();
        while !inner.flusher_done.load(SeqCst) {
            let stopped = inner.stopped.notified();
            if inner.flusher_done.load(SeqCst) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), stopped).await;
            inner.wake.notify_one();
        }
        let mut delay = Duration::from_millis(inner.config.settings.retry_initial_ms.max(1));
        loop {
            // Each chunk of the final flush clips its lock wait to the time left (see flush).
            match inner.flush(true).await {
                Ok(n) => {
                    return Ok(ShutdownReport { rows_written: n });
                }
                Err(RecorderError::DeadlinePassed { .. }) => {
                    return Err(inner.give_up(started.elapsed(), None).await);
                }
                Err(RecorderError::Flush { source, .. }) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(inner.give_up(started.elapsed(), Some(source)).await);
                    }
                    tokio::time::sleep(delay.min(remaining)).await;
                    delay =
                        (delay * 2).min(Duration::from_millis(inner.config.settings.retry_max_ms));
                }
                Err(other) => return Err(other),
            }
        }
    }
}

impl Inner {
    /// Moves sealed windows (all windows when `all`) to the pending queue, then writes pending.
    pub(super) async fn flush(&self, all: bool) -> Result<usize, RecorderError> {
        let now = (self.config.clock)();
        self.record_self_metrics(now);
        let window_ms = self.config.settings.window_ms as i64;
        let mut sealed: Vec<(Sealed, usize)> = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            if i == 0 {
                // Size the rows once instead of growing them row by row.
                let open: usize = self.shards.iter().map(|s| s.lock().windows.len()).sum();
                sealed.reserve(open);
            }
            // Take the sealed windows under the shard lock; fold them into the exposition after
            // releasing it, so recording into this shard waits as little as possible.
            let start = sealed.len();
            {
                let mut shard = shard.lock();
                sealed.append(&mut shard.raw);
                shard.windows.retain(|key, open| {
                    let windows = &mut open.windows;
                    let mut i = 0;
                    while i < windows.len() {
                        if all || windows[i].0 + window_ms <= now {
                            let (window, e) = windows.swap_remove(i);
                            let row = Sealed {
                                key: key.clone(),
                                window,
                                window_ms,
                                summary: e.summary,
                                source: e.source,
                                accounted: e.accounted,
                            };
                            sealed.push((row, e.cost));
                        } else {
                            i += 1;
                        }
                    }
                    if !windows.is_empty() {
                        return true;
                    }
                    if open.idle_flushes == 0 {
                        // Keep the key one more flush, charged, if the bound allows.
                        let cost = ENTRY_OVERHEAD + key.uncharged_bytes();
                        let max = self.config.settings.max_memory_bytes;
                        if self.memory.charge_for(owner(key), cost, max) {
                            open.idle_charge = cost;
                            open.idle_flushes = 1;
                            return true;
                        }
                    }
                    self.memory
                        .release_for(owner(key), std::mem::take(&mut open.idle_charge));
                    false
                });
                // Memory the bound no longer charges goes back when the series are gone.
                shrink_map(&mut shard.windows);
            }
            // Room for the rows about to be folded, at once rather than doubling by doubling
            // (only for sealed rows: room reserved for every open window was heap no charge
            // covered; the slots filled are charged at twice their size).
            self.exposition.reserve_more(sealed.len() - start);
            let max = self.config.settings.max_memory_bytes;
            let mut left = 0;
            for (row, _) in &sealed[start..] {
                // The host's series have the room reserved for the service's own above the
                // bound; a tenant's meet its share.
                let max = if owner(&row.key).is_some() {
                    max
                } else {
                    max + SELF_RESERVE
                };
                if !self
                    .exposition
                    .fold(&row.key, &row.summary, now, &self.memory, max)
                {
                    left += 1;
                }
            }
            self.exposition_evicted.fetch_add(left, Relaxed);
        }
        self.relieve_pressure(now);
        let mut pending = self.pending.lock().await;
        for (row, _) in &sealed {
            self.backlog_points[type_index(row.key.metric_type)]
                .fetch_add(row.accounted_points(), Relaxed);
        }
        pending.extend(sealed);
        self.backlog_rows.store(pending.len(), Relaxed);
        // A deleted or replaced file is noticed even when there is nothing to write.
        if let Err(e @ StoreError::Gone { .. }) = self.store.check_file().await {
            self.file_gone(&e, pending.len()).await?;
        }
        let mut written = 0;
        let mut recreated = false;
        let chunk = self.config.settings.max_rows_per_transaction.max(1);
        while !pending.is_empty() {
            // During shutdown no chunk starts past the deadline, and none waits on a lock
            // beyond it.
            let deadline = *self.deadline.lock();
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(RecorderError::DeadlinePassed {
                        rows: pending.len(),
                    });
                }
                let wait = self.store.busy_timeout().min(WRITE_WAIT).min(left);
                let _ = self
                    .store
                    .set_write_wait(wait.max(Duration::from_millis(1)))
                    .await;
            }
            let (batch_id, n) = match self.in_doubt.lock().take() {
                Some((id, m)) if m <= pending.len() => (id, m),
                _ => (self.next_batch_id(), chunk.min(pending.len())),
            };
            // In doubt until it is known written: a caller that drops this flush mid-write
            // leaves the chunk to be retried under the same id, never under a new one.
            *self.in_doubt.lock() = Some((batch_id.clone(), n));
            let started = Instant::now();
            let write = self
                .store
                .create_batch_once(&batch_id, pending.iter().take(n).map(row_of));
            let result = if self.store.location().is_local() {
                // Local waits are bounded by the lock wait set above.
                write.await
            } else {
                // A remote call is bounded by the store (`database.remote_timeout_ms`), and by
                // the shutdown deadline, even one set after the call started.
                tokio::select! {
                    // A write that finished as the deadline passed counts as written.
                    biased;
                    r = write => r,
                    () = self.deadline_passed() => Err(StoreError::TimedOut {
                        what: "a flush to the remote database at the shutdown deadline",
                        after_ms: started.elapsed().as_millis() as u64,
                    }),
                }
            };
            if result.is_ok() {
                self.in_doubt.lock().take();
            }
            match result {
                Ok(_) => {
                    let mut points = [0u64; 2];
                    for (row, cost) in pending.drain(..n) {
                        self.memory.release_for(owner(&row.key), cost);
                        points[type_index(row.key.metric_type)] += row.accounted_points();
                    }
                    for (i, p) in points.into_iter().enumerate() {
                        self.backlog_points[i].fetch_sub(p, Relaxed);
                        self.file_points[i].fetch_add(p, Relaxed);
                    }
                    self.file_rows.fetch_add(n as u64, Relaxed);
                    self.backlog_rows.store(pending.len(), Relaxed);
                    if pending.is_empty() {
                        // The queue's room is charged only while rows fill it.
                        pending.shrink_to(0);
                    }
                    written += n;
                    self.flushed_rows.fetch_add(n as u64, Relaxed);
                    self.rows_written_total.fetch_add(n as u64, Relaxed);
                    if pending.is_empty() {
                        self.wrote(0);
                    }
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    if !self.closing.load(SeqCst) {
                        self.ingest_self(
                            "luametrics.flush.duration_ms",
                            Kind::Histogram,
                            ms,
                            Tags::new(),
                            now,
                        );
                    }
                }
                // The file went away between the check and the write: recreate it once.
                Err(e @ StoreError::Gone { .. }) if !recreated => {
                    recreated = true;
                    self.file_gone(&e, pending.len()).await?;
                }
                Err(source) => {
                    self.flush_errors.fetch_add(1, Relaxed);
                    self.failed(&source, pending.len());
                    return Err(RecorderError::Flush {
                        rows: pending.len(),
                        source,
                    });
                }
            }
        }
        Ok(written)
    }

    /// Resolves once a shutdown deadline is set and has passed.
    pub(super) async fn deadline_passed(&self) {
        loop {
            let deadline = *self.deadline.lock();
            match deadline {
                Some(d) => {
                    tokio::time::sleep_until(d.into()).await;
                    // A host's later flush clears the deadline; re-check it.
                    if self.deadline.lock().is_some_and(|d| d <= Instant::now()) {
                        return;
                    }
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// A batch id no other flush of any instance uses: process start, pid and a sequence
    /// shared by every service of the process (a runtime started again in the same process
    /// must not reuse an id its predecessor wrote).
    pub(super) fn next_batch_id(&self) -> String {
        static BATCH_SEQ: AtomicU64 = AtomicU64::new(0);
        static START_NS: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
        let start = START_NS.get_or_init(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        });
        format!(
            "{}-{}-{start:x}-{}",
            self.store.instance().as_deref().unwrap_or("luametrics"),
            std::process::id(),
            BATCH_SEQ.fetch_add(1, Relaxed)
        )
    }

    /// A write failed: logged once when writes start failing, then kept in the health state.
    pub(super) fn failed(&self, error: &StoreError, backlog_rows: usize) {
        let mut h = self.health.lock();
        h.failures += 1;
        h.last_error = Some(error.to_string());
        if h.failing_since_ms.is_none() {
            h.failing_since_ms = Some((self.config.clock)());
            tracing::error!(
                error = %error,
                backlog_rows,
                memory_used = self.memory.load(Relaxed),
                "luametrics: writes to the database are failing; rows are kept and retried"
            );
        }
    }

    /// A write succeeded: a recovery is logged once, and a checkpoint follows it.
    pub(super) fn wrote(&self, backlog_rows: usize) {
        let mut h = self.health.lock();
        h.file_fault = None;
        if let Some(since) = h.failing_since_ms.take() {
            tracing::warn!(
                failed_for_ms = (self.config.clock)() - since,
                failed_attempts = h.failures,
                backlog_rows,
                "luametrics: writes to the database recovered"
            );
            h.failures = 0;
            h.last_error = None;
            self.checkpoint_due.store(true, Relaxed);
        }
    }

    /// The database file was deleted or replaced (`StoreError::Gone`): a new database is
    /// created and migrated at the path for the rows still held, and what this process wrote
    /// to the vanished file is counted lost (reason `database_gone`) and logged, once the loss
    /// is certain: when a new file replaced it, or at shutdown if it never came back. If the
    /// very same file comes back (a directory renamed away and back), nothing was lost.
    pub(super) async fn file_gone(
        &self,
        error: &StoreError,
        backlog_rows: usize,
    ) -> Result<(), RecorderError> {
        if let StoreError::Gone { fault, .. } = error {
            let mut h = self.health.lock();
            if h.file_fault.is_none() {
                tracing::error!(
                    error = %error,
                    backlog_rows,
                    "luametrics: the database file was {} while open; recreating it at its path",
                    fault.as_str()
                );
            }
            h.file_fault = Some(fault.as_str());
        }
        match self.store.reopen().await {
            Ok(true) => {
                self.count_file_lost(backlog_rows);
                tracing::warn!(
                    backlog_rows,
                    "luametrics: recreated the database at its path; writing the rows still held"
                );
                Ok(())
            }
            // The file open is the one at the path again: nothing was lost.
            Ok(false) => {
                self.health.lock().file_fault = None;
                Ok(())
            }
            Err(source) => {
                self.flush_errors.fetch_add(1, Relaxed);
                self.failed(&source, backlog_rows);
                Err(RecorderError::Flush {
                    rows: backlog_rows,
                    source,
                })
            }
        }
    }

    /// Counts (and logs) the points, rows and traces this process wrote into a database file
    /// that is gone for good.
    pub(super) fn count_file_lost(&self, backlog_rows: usize) {
        let rows = self.file_rows.swap(0, Relaxed);
        let mut lost = [0u64; 2];
        for (i, t) in TYPES.into_iter().enumerate() {
            lost[i] = self.file_points[i].swap(0, Relaxed);
            self.counters.lose(t, LostReason::DatabaseGone, lost[i]);
        }
        let traces = self.store.take_file_traces();
        if traces > 0 {
            let tags = Tags::from([("reason".to_string(), "database_gone".to_string())]);
            let _ = self.ingest_self(
                "luametrics.traces.dropped.count",
                Kind::Counter,
                traces as f64,
                tags,
                (self.config.clock)(),
            );
        }
        tracing::error!(
            lost_traces = traces,
            lost_rows = rows,
            lost_system_points = lost[0],
            lost_user_points = lost[1],
            backlog_rows,
            "luametrics: the rows and traces this process had written to the vanished database \
             file are lost with it, counted (reason database_gone)"
        );
    }

    /// Gives up on every row still unwritten at the shutdown deadline: counted as lost with
    /// reason `shutdown`, their memory released.
    pub(super) async fn give_up(
        &self,
        waited: Duration,
        source: Option<StoreError>,
    ) -> RecorderError {
        if self.health.lock().file_fault.is_some() {
            // The database file never came back: what was written to it is lost too.
            self.count_file_lost(0);
        }
        let last_error = self.health.lock().last_error.clone();
        let mut pending = self.pending.lock().await;
        // The chunk in doubt goes with the rest: a later flush must not reuse its id for rows
        // that are not the same.
        self.in_doubt.lock().take();
        let rows = pending.len();
        let mut points = [0u64; 2];
        for (row, cost) in pending.drain(..) {
            self.memory.release_for(owner(&row.key), cost);
            points[type_index(row.key.metric_type)] += row.accounted_points();
        }
        for (i, t) in TYPES.into_iter().enumerate() {
            self.counters.lose(t, LostReason::Shutdown, points[i]);
            self.backlog_points[i].fetch_sub(points[i], Relaxed);
        }
        self.backlog_rows.store(0, Relaxed);
        tracing::error!(
            rows,
            system_points = points[0],
            user_points = points[1],
            error = source
                .as_ref()
                .map(|e| e.to_string())
                .or(last_error.clone())
                .unwrap_or_default(),
            "luametrics: shutdown deadline passed; unwritten rows counted as lost (reason shutdown)"
        );
        RecorderError::Unflushed {
            waited_ms: waited.as_millis() as u64,
            rows,
            points: points[0] + points[1],
            user_points: points[1],
            cause: match (&source, last_error) {
                (Some(e), _) => e.to_string(),
                (None, Some(last)) => format!("the deadline passed; last write error: {last}"),
                (None, None) => "the deadline passed".to_string(),
            },
            source: source.map(Box::new),
        }
    }
}

/// A named fn (not a closure) keeps the flush future `Send` (higher-ranked lifetimes).
pub(super) fn row_of(pending: &(Sealed, usize)) -> &Sealed {
    &pending.0
}

/// The background task: flushes sealed windows each tick, retries failures with backoff,
/// evicts idle series and prunes the limiter.
pub(super) async fn flusher(inner: Arc<Inner>) {
    let s = &inner.config.settings;
    let tick = Duration::from_millis(if s.window_ms == 0 {
        200
    } else {
        s.window_ms.clamp(50, 1_000)
    });
    let mut delay = Duration::from_millis(s.retry_initial_ms.max(1));
    // A flush never waits long on another connection's lock: it fails and retries instead.
    let _ = inner
        .store
        .set_write_wait(inner.store.busy_timeout().min(WRITE_WAIT))
        .await;
    let mut last_evict = (inner.config.clock)();
    let mut last_checkpoint = Instant::now();
    let checkpoint_every = Duration::from_millis(s.checkpoint_interval_ms);
    let evict_every = (s.idle_eviction_ms as i64 / 10).clamp(1_000, 60_000);
    loop {
        let wait = tokio::time::timeout(tick, inner.wake.notified());
        let _ = wait.await;
        if inner.closing.load(SeqCst) {
            break;
        }
        match inner.flush(false).await {
            Ok(_) => delay = Duration::from_millis(s.retry_initial_ms.max(1)),
            Err(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = inner.wake.notified() => {}
                }
                delay = (delay * 2).min(Duration::from_millis(s.retry_max_ms.max(1)));
            }
        }
        // Checkpoints under the service's control: periodically, and once writes recover, so
        // the write-ahead log cannot fill a small volume and a full disk recovers once space
        // is freed.
        let periodic =
            s.checkpoint_interval_ms > 0 && last_checkpoint.elapsed() >= checkpoint_every;
        if periodic || inner.checkpoint_due.swap(false, Relaxed) {
            match inner.store.checkpoint().await {
                Ok(_) => last_checkpoint = Instant::now(),
                Err(e) => {
                    inner.checkpoint_due.store(true, Relaxed);
                    tracing::debug!(error = %e, "luametrics: checkpoint failed; retried later");
                }
            }
        }
        let now = (inner.config.clock)();
        if now - last_evict >= evict_every {
            inner.evict_idle(now - s.idle_eviction_ms as i64);
            last_evict = now;
        }
    }
    inner.flusher_done.store(true, SeqCst);
    inner.stopped.notify_waiters();
}

impl Inner {
    /// Near the memory bound, what only serves scrapes and the series limits gives way before
    /// new points are dropped. Past the reserve (`tenant_memory_share`), a tenant holding more
    /// than its part is refused, and its series idle for two windows (at least 20 s: raw mode
    /// has no windows) would keep it so until idle eviction (an hour) whether it records or
    /// not: their exposition entries and registry keys go (written already; a series recorded
    /// again is admitted anew). Past 7/8 of the bound, any tenant's idle series leave the
    /// exposition too, least recently updated first, until the charge is back to three
    /// quarters: tenants that came and went, a host's one-off series; otherwise they would hold
    /// the bound for an hour and every new point, any tenant's, be dropped meanwhile.
    pub(super) fn relieve_pressure(&self, now: i64) {
        let bound = self.config.settings.max_memory_bytes;
        let memory = &self.memory;
        let reserve = memory.reserve();
        let past_share = |k: &SeriesKey| owner(k).is_some_and(|t| memory.past_share(t));
        let recent = now.saturating_sub((2 * self.config.settings.window_ms as i64).max(20_000));
        let mut evicted = 0;
        if reserve > 0 && memory.load(Relaxed) > bound.saturating_sub(reserve) {
            evicted += self.exposition.evict_idle(recent, memory, past_share);
            self.registry.evict_idle(recent, past_share);
        }
        // The tenants' ledger, past three quarters of its room or of the bound: the entries
        // of tenants quiet since the last such pass and all written go (adversary round 11:
        // tenant ids that came once each held theirs for the idle-eviction hour).
        let ledger_room = bound / crate::tenants::LEDGER_SHARE;
        if self.tenants.held() > ledger_room / 4 * 3 || memory.load(Relaxed) > bound / 4 * 3 {
            self.tenants.forget_quiet();
        }
        if memory.load(Relaxed) > bound / 8 * 7 {
            evicted += self
                .exposition
                .evict_oldest(recent, memory, bound / 4 * 3, past_share);
        }
        self.exposition_evicted.fetch_add(evicted as u64, Relaxed);
    }
}

/// Gives a map's room back when at most a quarter of it is used (the bound charges entries
/// at twice their size, so a map may keep up to that).
pub(crate) fn shrink_map<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    if map.capacity() > 4 * map.len() + 64 {
        map.shrink_to(2 * map.len());
    }
}
