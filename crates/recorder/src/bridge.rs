//! The `metrics` crate facade: host code using `metrics::counter!` lands in the same store.

use crate::MetricsService;
use dashmap::DashMap;
use luametrics_model::{Kind, Tags};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// A `metrics::Recorder` writing into a [`MetricsService`]; install it with
/// `metrics::set_global_recorder`. Names must follow luametrics' dot rule and catalog; refused
/// points are counted in the service's accounting like any other.
#[derive(Clone)]
pub struct MetricsBridge {
    service: MetricsService,
    /// One handle per key and kind: the macros register on every call, and gauges'
    /// increments need the value the previous handle left.
    handles: Arc<DashMap<(Kind, Key), Arc<Handle>>>,
}

impl std::fmt::Debug for MetricsBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsBridge")
            .field("handles", &self.handles.len())
            .finish()
    }
}

impl MetricsBridge {
    pub(crate) fn new(service: MetricsService) -> Self {
        Self {
            service,
            handles: Arc::new(DashMap::new()),
        }
    }

    fn handle(&self, kind: Kind, key: &Key) -> Arc<Handle> {
        self.handles
            .entry((kind, key.clone()))
            .or_insert_with(|| Handle::new(&self.service, key))
            .clone()
    }
}

struct Handle {
    service: MetricsService,
    name: String,
    tags: Tags,
    /// Last absolute counter value, or the gauge's current value (f64 bits).
    state: AtomicU64,
}

impl Handle {
    fn new(service: &MetricsService, key: &Key) -> Arc<Self> {
        Arc::new(Self {
            service: service.clone(),
            name: key.name().to_string(),
            tags: key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect(),
            state: AtomicU64::new(0),
        })
    }

    fn record(&self, kind: Kind, value: f64) {
        let _ = self
            .service
            .record_system(&self.name, kind, value, self.tags.clone(), None, None);
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.record(Kind::Counter, value as f64);
    }
    fn absolute(&self, value: u64) {
        let prev = self.state.fetch_max(value, Relaxed);
        if value > prev {
            self.record(Kind::Counter, (value - prev) as f64);
        }
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        let new = update_f64(&self.state, |v| v + value);
        self.record(Kind::Gauge, new);
    }
    fn decrement(&self, value: f64) {
        let new = update_f64(&self.state, |v| v - value);
        self.record(Kind::Gauge, new);
    }
    fn set(&self, value: f64) {
        self.state.store(value.to_bits(), Relaxed);
        self.record(Kind::Gauge, value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        Handle::record(self, Kind::Histogram, value);
    }
}

fn update_f64(cell: &AtomicU64, f: impl Fn(f64) -> f64) -> f64 {
    let mut cur = cell.load(Relaxed);
    loop {
        let new = f(f64::from_bits(cur));
        match cell.compare_exchange_weak(cur, new.to_bits(), Relaxed, Relaxed) {
            Ok(_) => return new,
            Err(actual) => cur = actual,
        }
    }
}

impl Recorder for MetricsBridge {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(Kind::Counter, key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(Kind::Gauge, key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(Kind::Histogram, key))
    }
}
