//! The threads executions run on: threads meant to block, kept by the pool.
//!
//! Handing each execution to tokio's blocking pool cost two cross-thread wake-ups (the blocking
//! thread, then the awaiting task's worker), tens of microseconds on a virtual machine against
//! an execution of ten. A runner that just finished its work stays awake for a short while
//! (`PURE` polls on the core, then `SPIN` polls yielding it), taking the next task without
//! being woken; only an idle runner sleeps. It counts as awake from the moment it knows it has
//! no more work, before it hands its last answer over, so the caller that gets that answer and
//! submits its next execution at once finds it awake (see `Runners::will_idle`). Under load
//! a runner rarely comes back here at all: the pool's task keeps it serving the pool's queue
//! with the engine it holds. A runner stuck in a C function simply stays busy: the others
//! serve, and a new runner is started whenever a task waits with no runner awake and fewer
//! runners than the pool may need (its places plus the abandoned executions still running, at
//! most `pool.max_abandoned` of them: past it a stuck execution keeps its place). A stuck
//! runner that finally ends starts another in its place when tasks wait with none awake.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// Queue polls a runner makes before it sleeps (a few tens of microseconds).
const SPIN: usize = 50;
/// Polls before those, without yielding the core (a few microseconds).
const PURE: usize = 256;
/// An idle runner ends after this long without work.
const IDLE: Duration = Duration::from_secs(30);

pub(crate) type Task = Box<dyn FnOnce() + Send + 'static>;

thread_local! {
    /// Set on a runner whose execution was written off while it ran: it ends after its task
    /// instead of serving more (it was demoted, and a thread cannot win its priority back).
    static RETIRE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Set on a runner that counted itself as spinning before its task returned (see
    /// [`Runners::will_idle`]), so its loop does not count it twice.
    static COUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The calling thread's kernel id, for [`demote`]; 0 where there is none to name. Asked of
/// the kernel once per thread (a system call per execution cost a few percent of a short one).
pub(crate) fn current_tid() -> i32 {
    thread_local! {
        static TID: i32 = {
            #[cfg(target_os = "linux")]
            {
                // SAFETY: gettid has no preconditions.
                unsafe { libc::gettid() }
            }
            #[cfg(not(target_os = "linux"))]
            {
                0
            }
        };
    }
    TID.with(|t| *t)
}

/// Moves thread `tid` (of this process) to the idle scheduling class: it runs only on a core
/// nothing else wants. An execution written off while stuck in a C call keeps its thread
/// until the call returns; demoted, it no longer takes CPU from the executions that replaced it.
pub(crate) fn demote(tid: i32) {
    #[cfg(target_os = "linux")]
    if tid > 0 {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain system call on a thread id of this process (if the thread ended
        // meanwhile the call fails harmlessly: ids are not reused while its runner lives).
        unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = tid;
}

/// Ends the calling runner once its task returns (see `RETIRE`).
pub(crate) fn retire_current() {
    RETIRE.with(|r| r.set(true));
}

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
    /// Tasks in `queue`, readable without its lock.
    queued: AtomicUsize,
}

impl Runners {
    /// Runs `task` on a runner thread; `max_threads` bounds how many runners may exist.
    /// Returns whether an awake runner takes the task at once (no queue, no wake-up): then
    /// its result is usually ready within microseconds, and the caller may spin for it.
    pub(crate) fn run(self: &Arc<Self>, max_threads: usize, task: Task) -> bool {
        let waiting = {
            let mut q = self.queue.lock();
            q.push_back(task);
            self.queued.store(q.len(), SeqCst);
            q.len()
        };
        // Pushed first, read second: a runner that stops spinning checks the queue under its
        // lock before it sleeps, so no task is left with every runner asleep.
        let spinning = self.spinning.load(SeqCst);
        if spinning >= waiting {
            return waiting == 1;
        }
        let sleeping = self.sleeping.load(SeqCst);
        // Wake a sleeper only when the runners free to take tasks cover every task waiting: a
        // sleeper already woken for an earlier task still counts as asleep until it takes it,
        // so two tasks must not both count on it (the second would wait behind whatever the
        // first one's runner serves next). Otherwise start a runner.
        if sleeping > 0 && spinning + sleeping >= waiting {
            self.wake.notify_one();
            return false;
        }
        if self.threads.load(SeqCst) >= max_threads.max(1) {
            if sleeping > 0 {
                self.wake.notify_one();
            }
            return false;
        }
        self.start();
        false
    }

    /// Starts a runner thread.
    fn start(self: &Arc<Self>) {
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

    /// Called by a task on its runner when it has no more work and is about to hand its
    /// last answer over: the runner counts as spinning from now on, so a caller that gets
    /// the answer and submits its next execution at once finds a runner awake for it (and
    /// may spin for the answer) instead of queueing it as if every runner were busy (then
    /// parking, and being woken: the slow half of a bimodal hand-off).
    pub(crate) fn will_idle(&self) {
        if RETIRE.with(|r| r.get()) || COUNTED.with(|c| c.replace(true)) {
            return;
        }
        self.spinning.fetch_add(1, SeqCst);
    }

    fn pop(&self) -> Option<Task> {
        let mut q = self.queue.lock();
        let t = q.pop_front();
        self.queued.store(q.len(), SeqCst);
        t
    }

    fn work(self: Arc<Self>) {
        loop {
            let mut task = None;
            if !COUNTED.with(|c| c.replace(false)) {
                self.spinning.fetch_add(1, SeqCst);
            }
            // First without giving the core up (a caller that just got its answer submits its
            // next execution within a microsecond or two, and a yield costs about as much),
            // then yielding between polls.
            for poll in 0..PURE + SPIN {
                // Read without the lock: polling under it would contend with the caller
                // pushing the task this runner waits for.
                if self.queued.load(SeqCst) > 0 {
                    if let Some(t) = self.pop() {
                        task = Some(t);
                        break;
                    }
                }
                std::hint::spin_loop();
                if poll >= PURE {
                    std::thread::yield_now();
                }
            }
            self.spinning.fetch_sub(1, SeqCst);
            let task = match task {
                Some(t) => t,
                None => {
                    let mut q = self.queue.lock();
                    loop {
                        if let Some(t) = q.pop_front() {
                            self.queued.store(q.len(), SeqCst);
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
            // A task that panics (the pool's own code, not a script: engines catch those)
            // unwinds its guards, which give its place back; the runner goes on.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
            if RETIRE.with(|r| r.replace(false)) {
                if COUNTED.with(|c| c.replace(false)) {
                    self.spinning.fetch_sub(1, SeqCst);
                }
                self.threads.fetch_sub(1, SeqCst);
                // Work queued while every thread was stuck (past the pool's bound on
                // abandoned threads) gets a fresh thread in this one's place: nothing else
                // would start one for it.
                let awake = self.spinning.load(SeqCst) + self.sleeping.load(SeqCst);
                if self.queued.load(SeqCst) > awake {
                    self.start();
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    // Two tasks submitted at once while one runner sleeps: the second must get a runner of its
    // own, not wait behind the first (which here waits for the second: a hang if they share).
    #[test]
    fn a_second_task_never_waits_behind_a_sleeper_woken_for_the_first() {
        for _ in 0..20 {
            let runners = Arc::new(Runners::default());
            let (done_tx, done_rx) = mpsc::channel();
            runners.run(4, Box::new(move || done_tx.send(()).unwrap()));
            done_rx.recv().unwrap();
            // Bounded polling until the runner sleeps (a hang detector, not a timing check).
            for _ in 0..10_000 {
                if runners.sleeping.load(SeqCst) == 1 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(runners.sleeping.load(SeqCst), 1);
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let (out_tx, out_rx) = mpsc::channel();
            runners.run(
                4,
                Box::new(move || {
                    let got = go_rx.recv_timeout(Duration::from_secs(20)).is_ok();
                    out_tx.send(got).unwrap();
                }),
            );
            runners.run(4, Box::new(move || go_tx.send(()).unwrap()));
            assert!(
                out_rx.recv().unwrap(),
                "the second task waited behind the first"
            );
        }
    }

    // A task that said it has no more work (`will_idle`) and has not returned yet: a task
    // submitted now is taken by that runner as an awake one (no wake-up, so the caller may
    // spin for its answer), and runs once the first returns. A retired runner never counts.
    #[test]
    fn a_runner_about_to_idle_counts_as_awake_and_takes_the_next_task() {
        let runners = Arc::new(Runners::default());
        let (said_tx, said_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let me = runners.clone();
        assert!(!runners.run(
            1,
            Box::new(move || {
                me.will_idle();
                said_tx.send(()).unwrap();
                let _ = go_rx.recv_timeout(Duration::from_secs(20));
            }),
        ));
        said_rx.recv().unwrap();
        assert_eq!(runners.spinning.load(SeqCst), 1);
        let (out_tx, out_rx) = mpsc::channel();
        assert!(
            runners.run(1, Box::new(move || out_tx.send(()).unwrap())),
            "a runner about to idle was not counted as awake"
        );
        go_tx.send(()).unwrap();
        out_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the next task ran on the runner that was about to idle");
        // Counted once: after both tasks the one runner is awake or asleep, never twice.
        for _ in 0..10_000 {
            if runners.sleeping.load(SeqCst) == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(runners.sleeping.load(SeqCst), 1);
        assert_eq!(runners.spinning.load(SeqCst), 0);

        // A runner whose execution was written off ends after its task: not awake for more.
        let (said_tx, said_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let me = runners.clone();
        runners.run(
            2,
            Box::new(move || {
                retire_current();
                me.will_idle();
                said_tx.send(()).unwrap();
                let _ = go_rx.recv_timeout(Duration::from_secs(20));
            }),
        );
        said_rx.recv().unwrap();
        assert_eq!(runners.spinning.load(SeqCst), 0);
        go_tx.send(()).unwrap();
    }
}
