use luametrics_model::{Kind, Tags};
use luametrics_recorder::MetricsService;
use luametrics_store::{Store, TraceRecord};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
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

/// Writes traces in batches on a background task so executions never wait for the database.
/// The queue is bounded: when it is full, traces are dropped and counted
/// (`luametrics.traces.dropped.count`).
pub struct TraceWriter {
    tx: parking_lot::Mutex<Option<mpsc::Sender<TraceRecord>>>,
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    metrics: MetricsService,
    written: Arc<AtomicU64>,
    dropped: AtomicU64,
}

impl TraceWriter {
    /// Starts the writer task (inside a tokio runtime).
    pub fn start(store: Arc<Store>, metrics: MetricsService, capacity: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<TraceRecord>(capacity.max(1));
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(t) => batch.push(t),
                        Err(_) => break,
                    }
                }
                let mut delay = Duration::from_millis(50);
                let mut attempts = 0;
                loop {
                    match store.insert_traces(&batch).await {
                        Ok(()) => {
                            w.fetch_add(batch.len() as u64, Relaxed);
                            break;
                        }
                        // A transient database fault: retry a few times, then let the batch go
                        // (traces are diagnostics; metrics carry the totals).
                        Err(_) if attempts < 20 => {
                            attempts += 1;
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                        Err(_) => break,
                    }
                }
                batch.clear();
            }
        });
        Self {
            tx: parking_lot::Mutex::new(Some(tx)),
            task: tokio::sync::Mutex::new(Some(task)),
            metrics,
            written,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues a trace; never waits.
    pub fn submit(&self, trace: TraceRecord) {
        let sent = match &*self.tx.lock() {
            Some(tx) => tx.try_send(trace).is_ok(),
            None => false,
        };
        if !sent {
            self.dropped.fetch_add(1, Relaxed);
            let _ = self.metrics.record_system(
                "luametrics.traces.dropped.count",
                Kind::Counter,
                1.0,
                Tags::new(),
                None,
                None,
            );
        }
    }

    /// Traces written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Relaxed)
    }

    /// Traces dropped because the queue was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Stops accepting traces and waits until the queued ones are written.
    pub async fn shutdown(&self) {
        self.tx.lock().take();
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
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
