//! The trace writer and sampler: traces go to a bounded queue and are written in batches on a
//! background task, so an execution never waits for the database; what cannot be written is
//! counted, never silently lost.

use luametrics_model::{Kind, Tags};
use luametrics_sink::SystemMetrics;
use luametrics_store::{Store, TraceRecord};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Keeps errors and blocks always and a fixed share of successes, deterministically (every
/// k-th success for a rate of 1/k), so the kept share is exact.
#[derive(Debug)]
pub struct TraceSampler {
    rate: f64,
    seen: AtomicU64,
}

impl TraceSampler {
    /// A sampler keeping `rate` (0 to 1) of successful executions.
    pub fn new(rate: f64) -> Self {
        Self {
            rate: if rate.is_finite() {
                rate.clamp(0.0, 1.0)
            } else {
                1.0
            },
            seen: AtomicU64::new(0),
        }
    }

    /// Whether to keep a trace with this status (`ok`, `blocked`, `error`).
    pub fn keep(&self, status: &str) -> bool {
        if status != "ok" || self.rate >= 1.0 {
            return true;
        }
        let n = self.seen.fetch_add(1, Relaxed) as f64;
        ((n + 1.0) * self.rate).floor() > (n * self.rate).floor()
    }
}

const BATCH: usize = 500;

/// How long the writer gathers traces after the first of a batch before writing them.
const LINGER: Duration = Duration::from_millis(20);

/// How the writer task learns of the shutdown deadline.
#[derive(Default)]
struct Stop {
    deadline: parking_lot::Mutex<Option<Instant>>,
    notify: tokio::sync::Notify,
}

impl Stop {
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock()
    }
}

/// Counts shared by the writer task and its handle.
#[derive(Default)]
struct Counts {
    written: AtomicU64,
    /// Submitted and not yet written or dropped.
    queued: AtomicU64,
    dropped_full: AtomicU64,
    dropped_shutdown: AtomicU64,
    /// Shutdown counted what was left; the task must not count it again.
    settled: std::sync::atomic::AtomicBool,
}

impl Counts {
    /// `queued -= n`, never below zero (shutdown may have taken the count already).
    fn dequeue(&self, n: u64) {
        let _ = self
            .queued
            .fetch_update(Relaxed, Relaxed, |q| Some(q.saturating_sub(n)));
    }
}

/// Writes traces in batches on a background task so executions never wait for the database.
/// The queue is bounded: when it is full, traces are dropped and counted
/// (`luametrics.traces.dropped.count{reason="queue_full"}`). A failing database is retried
/// with backoff until it recovers or the shutdown deadline passes; what is unwritten then is
/// counted too (`reason="shutdown"`). No trace goes uncounted.
pub struct TraceWriter {
    tx: parking_lot::Mutex<Option<mpsc::Sender<TraceRecord>>>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    metrics: Arc<dyn SystemMetrics>,
    counts: Arc<Counts>,
    stop: Arc<Stop>,
}

fn count_dropped(metrics: &dyn SystemMetrics, reason: &str, n: u64) {
    if n == 0 {
        return;
    }
    let tags = Tags::from([("reason".to_string(), reason.to_string())]);
    metrics.record(
        "luametrics.traces.dropped.count",
        Kind::Counter,
        n as f64,
        tags,
        None,
    );
}

/// Moves queued traces into `batch` until it holds [`BATCH`] or the queue is empty.
fn drain(rx: &mut mpsc::Receiver<TraceRecord>, batch: &mut Vec<TraceRecord>) {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(t) => batch.push(t),
            Err(_) => break,
        }
    }
}

impl TraceWriter {
    /// Starts the writer task (inside a tokio runtime).
    pub fn start(store: Arc<Store>, metrics: impl SystemMetrics, capacity: usize) -> Self {
        let metrics: Arc<dyn SystemMetrics> = Arc::new(metrics);
        let (tx, mut rx) = mpsc::channel::<TraceRecord>(capacity.max(1));
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(Stop::default());
        let (c, st, m) = (counts.clone(), stop.clone(), metrics.clone());
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut failing = false;
            while let Some(first) = rx.recv().await {
                batch.push(first);
                drain(&mut rx, &mut batch);
                // Gather for a moment: a commit costs about as much for one trace as for
                // hundreds (pages written to the WAL, a blocking hand-off), and every trace
                // awaited one by one wakes this task, so a steady trickle is written a batch
                // at a time. Sleeping, not awaiting each trace: submitters wake nobody
                // meanwhile. A backlog of a full batch or shutdown skips the wait.
                if batch.len() < BATCH && st.deadline().is_none() {
                    tokio::select! {
                        _ = tokio::time::sleep(LINGER) => {}
                        _ = st.notify.notified() => {}
                    }
                    drain(&mut rx, &mut batch);
                }
                let mut delay = Duration::from_millis(50);
                loop {
                    if st.deadline().is_some_and(|d| Instant::now() >= d) {
                        // Past the deadline: this batch and everything queued is unwritten.
                        rx.close();
                        let mut n = batch.len() as u64;
                        while rx.try_recv().is_ok() {
                            n += 1;
                        }
                        if !c.settled.swap(true, Relaxed) {
                            c.dropped_shutdown.fetch_add(n, Relaxed);
                            c.dequeue(n);
                            count_dropped(m.as_ref(), "shutdown", n);
                        }
                        tracing::error!(
                            traces = n,
                            "luametrics: shutdown deadline passed; unwritten traces dropped (reason shutdown)"
                        );
                        return;
                    }
                    match store.insert_traces(&batch).await {
                        Ok(()) => {
                            c.written.fetch_add(batch.len() as u64, Relaxed);
                            c.dequeue(batch.len() as u64);
                            if std::mem::take(&mut failing) {
                                tracing::warn!("luametrics: trace writes recovered");
                            }
                            break;
                        }
                        // Retried until the database recovers or shutdown's deadline: the
                        // bounded queue, not a retry count, limits what waits.
                        Err(e) => {
                            if !std::mem::replace(&mut failing, true) {
                                tracing::error!(
                                    error = %e,
                                    batch = batch.len(),
                                    "luametrics: trace writes are failing; retrying"
                                );
                            }
                            let sleep = match st.deadline() {
                                Some(d) => delay.min(d.saturating_duration_since(Instant::now())),
                                None => delay,
                            };
                            tokio::select! {
                                _ = tokio::time::sleep(sleep) => {}
                                _ = st.notify.notified() => {}
                            }
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                    }
                }
                batch.clear();
            }
        });
        Self {
            tx: parking_lot::Mutex::new(Some(tx)),
            task: tokio::sync::Mutex::new(Some(task)),
            metrics,
            counts,
            stop,
        }
    }

    /// Queues a trace; never waits.
    pub fn submit(&self, trace: TraceRecord) {
        self.counts.queued.fetch_add(1, Relaxed);
        let sent = match &*self.tx.lock() {
            Some(tx) => tx.try_send(trace).is_ok(),
            None => false,
        };
        if !sent {
            self.counts.dequeue(1);
            self.counts.dropped_full.fetch_add(1, Relaxed);
            count_dropped(self.metrics.as_ref(), "queue_full", 1);
        }
    }

    /// Traces submitted and not yet written or dropped.
    pub fn queued(&self) -> u64 {
        self.counts.queued.load(Relaxed)
    }

    /// Traces written so far.
    pub fn written(&self) -> u64 {
        self.counts.written.load(Relaxed)
    }

    /// Traces dropped, for any reason (queue full or closed, shutdown deadline).
    pub fn dropped(&self) -> u64 {
        self.counts.dropped_full.load(Relaxed) + self.counts.dropped_shutdown.load(Relaxed)
    }

    /// Traces still unwritten when the shutdown deadline passed.
    pub fn dropped_at_shutdown(&self) -> u64 {
        self.counts.dropped_shutdown.load(Relaxed)
    }

    /// Stops accepting traces and writes the queued ones, retrying a failing database until
    /// `deadline`; what is unwritten then is counted as dropped (reason `shutdown`).
    pub async fn shutdown_by(&self, deadline: Instant) {
        self.tx.lock().take();
        *self.stop.deadline.lock() = Some(deadline);
        self.stop.notify.notify_waiters();
        let Some(mut task) = self.task.lock().await.take() else {
            return;
        };
        // The task keeps the deadline itself, give or take one write (whose lock wait the
        // recorder keeps at most 500 ms). Past a grace, shutdown stops waiting for it: what is
        // still queued is counted here, once (`settled` keeps the task from counting it too;
        // a write that lands after that is counted written as well as dropped).
        let grace = deadline + Duration::from_secs(1);
        if tokio::time::timeout_at(grace.into(), &mut task)
            .await
            .is_err()
            && !self.counts.settled.swap(true, Relaxed)
        {
            let n = self.counts.queued.swap(0, Relaxed);
            self.counts.dropped_shutdown.fetch_add(n, Relaxed);
            count_dropped(self.metrics.as_ref(), "shutdown", n);
        }
    }

    /// Stops accepting traces and waits until the queued ones are written (no deadline).
    pub async fn shutdown(&self) {
        self.shutdown_by(Instant::now() + Duration::from_secs(3600))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_keeps_the_exact_share_and_every_failure() {
        let s = TraceSampler::new(0.25);
        let kept = (0..1000).filter(|_| s.keep("ok")).count();
        assert_eq!(kept, 250);
        assert!((0..100).all(|_| s.keep("error") && s.keep("blocked")));
        let none = TraceSampler::new(0.0);
        assert!(!(0..100).any(|_| none.keep("ok")));
    }
}
