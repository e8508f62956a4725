//! The threads executions run on: threads meant to block, kept by the pool.
//!
//! Handing each execution to tokio's blocking pool cost two cross-thread wake-ups (the blocking
//! thread, then the awaiting task's worker), tens of microseconds on a virtual machine against
//! an execution of ten. A runner that just finished an execution stays awake for a short while
//! (`SPIN`), taking the next one from the queue without being woken; only an idle runner
//! sleeps. A runner stuck in a C function simply stays busy: the queue is served by the
//! others, and a new runner is started whenever work waits with no runner awake and fewer
//! runners than the pool may need (its places plus the abandoned executions still running).

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Queue polls a runner makes before it sleeps (a few tens of microseconds).
const SPIN: usize = 50;
/// An idle runner ends after this long without work.
const IDLE: Duration = Duration::from_secs(30);

type Task = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
pub(crate) struct Runners {
    queue: Mutex<VecDeque<Task>>,
    wake: Condvar,
    /// Runners polling the queue between executions.
    spinning: AtomicUsize,
    /// Runners asleep on `wake`.
    sleeping: AtomicUsize,
    /// Runners alive.
    threads: AtomicUsize,
}

/// Why a task's result did not come back: it panicked (its runner goes on).
#[derive(Debug)]
pub(crate) struct Panicked(pub(crate) String);

impl Runners {
    /// Runs `f` on a runner thread; `max_threads` bounds how many runners may exist. Also
    /// says whether an awake runner takes the task at once (no queue, no wake-up): then the
    /// result is usually back within microseconds, and the caller may spin for it.
    pub(crate) fn run<R: Send + 'static>(
        self: &Arc<Self>,
        max_threads: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> (oneshot::Receiver<Result<R, Panicked>>, bool) {
        let (tx, rx) = oneshot::channel();
        let task: Task = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
                Panicked(
                    p.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a runner task panicked".into()),
                )
            });
            let _ = tx.send(out);
        });
        let waiting = {
            let mut q = self.queue.lock();
            q.push_back(task);
            q.len()
        };
        // Pushed first, read second: a runner that stops spinning checks the queue under its
        // lock before it sleeps, so no task is left with every runner asleep.
        if self.spinning.load(SeqCst) >= waiting {
            return (rx, waiting == 1);
        }
        if self.sleeping.load(SeqCst) > 0 {
            self.wake.notify_one();
            return (rx, false);
        }
        if self.threads.load(SeqCst) < max_threads.max(1) {
            self.threads.fetch_add(1, SeqCst);
            let me = self.clone();
            let started = std::thread::Builder::new()
                .name("luametrics-engine".into())
                .spawn(move || me.work());
            if started.is_err() {
                // The task stays queued for a runner that frees up; past its time limit and
                // grace the caller gets a timeout like any execution that did not return.
                self.threads.fetch_sub(1, SeqCst);
            }
        }
        (rx, false)
    }

    fn work(self: Arc<Self>) {
        loop {
            let mut task = None;
            self.spinning.fetch_add(1, SeqCst);
            for _ in 0..SPIN {
                if let Some(t) = self.queue.lock().pop_front() {
                    task = Some(t);
                    break;
                }
                std::hint::spin_loop();
                std::thread::yield_now();
            }
            self.spinning.fetch_sub(1, SeqCst);
            let task = match task {
                Some(t) => t,
                None => {
                    let mut q = self.queue.lock();
                    loop {
                        if let Some(t) = q.pop_front() {
                            break t;
                        }
                        self.sleeping.fetch_add(1, SeqCst);
                        let timed_out = self.wake.wait_for(&mut q, IDLE).timed_out();
                        self.sleeping.fetch_sub(1, SeqCst);
                        if timed_out && q.is_empty() {
                            self.threads.fetch_sub(1, SeqCst);
                            return;
                        }
                    }
                }
            };
            task();
        }
    }
}
