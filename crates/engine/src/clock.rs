//! The clock the time split is measured with. Production uses real time; tests use a ticking
//! clock, where every reading advances time by a fixed step, so the split of a script with a
//! known number of host calls is known exactly whatever the machine's speed.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Real time, or a ticking clock for deterministic tests of the time split.
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<Ticking>>);

struct Ticking {
    step_ns: u64,
    now_ns: AtomicU64,
}

impl Clock {
    /// Real (monotonic) time: what production measures with.
    pub fn real() -> Self {
        Self(None)
    }

    /// A clock whose every reading is `step` later than the previous one: an interval is worth
    /// the number of readings taken inside it plus one, times `step`.
    pub fn ticking(step: Duration) -> Self {
        Self(Some(Arc::new(Ticking {
            step_ns: step.as_nanos().max(1) as u64,
            now_ns: AtomicU64::new(0),
        })))
    }

    /// Nanoseconds since `epoch` (real) or the next tick (ticking).
    pub(crate) fn now_ns(&self, epoch: Instant) -> u64 {
        match &self.0 {
            None => epoch.elapsed().as_nanos() as u64,
            Some(t) => t.now_ns.fetch_add(t.step_ns, Relaxed) + t.step_ns,
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Clock::Real"),
            Some(t) => write!(f, "Clock::Ticking({} ns)", t.step_ns),
        }
    }
}

impl PartialEq for Clock {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}
