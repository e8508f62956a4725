//! `Summary`: what a window keeps of a series (samples, sum, min, max, last, and a sketch for
//! histograms); mergeable, so windows, instances and rollups fold into one another.

use crate::{Sketch, SketchError};

/// Keeps a sum inside f64's finite range: past it, the sum stays at the largest finite value of
/// its sign. An overflowing sum would otherwise become infinite, and two windows that overflowed
/// in opposite directions would merge to NaN, which SQLite stores as NULL (refused by the
/// tables' `NOT NULL`: one tenant's values could stop every flush and rollup). NaN, which no
/// sum of checked values yields, is left for the caller to see.
pub fn saturate(x: f64) -> f64 {
    if x.is_nan() {
        x
    } else {
        x.clamp(-f64::MAX, f64::MAX)
    }
}

/// Everything kept of a run of points of one series: the recorder folds points into it, the
/// store writes one per series per window, and queries merge them across windows and tiers.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Number of points folded in.
    pub samples: u64,
    /// Sum of their values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// The most recent value.
    pub last: f64,
    /// Timestamp (ms) of the most recent value; decides `last` when merging.
    pub last_ts: i64,
    /// Distribution, kept for histograms only.
    pub sketch: Option<Sketch>,
}

impl Summary {
    /// An empty summary; `with_sketch` for histograms.
    pub fn new(with_sketch: bool) -> Self {
        Self {
            samples: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: 0.0,
            last_ts: i64::MIN,
            sketch: with_sketch.then(Sketch::default),
        }
    }

    /// Folds one point in.
    pub fn observe(&mut self, value: f64, ts: i64) {
        self.samples = self.samples.saturating_add(1);
        self.sum = saturate(self.sum + saturate(value));
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if ts >= self.last_ts {
            self.last = value;
            self.last_ts = ts;
        }
        if let Some(s) = &mut self.sketch {
            s.add(value);
        }
    }

    /// Folds in `other`, as if its points had been observed here.
    pub fn merge(&mut self, other: &Summary) -> Result<(), SketchError> {
        if other.samples == 0 {
            return Ok(());
        }
        self.samples = self.samples.saturating_add(other.samples);
        // Saturated on both sides: a stored sum may be infinite (written before sums saturated).
        self.sum = saturate(self.sum + saturate(other.sum));
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.last_ts >= self.last_ts {
            self.last = other.last;
            self.last_ts = other.last_ts;
        }
        match (&mut self.sketch, &other.sketch) {
            (Some(mine), Some(theirs)) => mine.merge(theirs)?,
            (None, Some(theirs)) => self.sketch = Some(theirs.clone()),
            _ => {}
        }
        Ok(())
    }

    /// Bytes merging `other` may add to [`Summary::heap_bytes`] (an upper bound).
    pub fn growth_with(&self, other: &Summary) -> usize {
        match (&self.sketch, &other.sketch) {
            (Some(mine), Some(theirs)) => mine.growth_with(theirs),
            (None, Some(theirs)) => theirs.heap_bytes(),
            _ => 0,
        }
    }

    /// Mean of the values, or 0 for an empty summary.
    pub fn mean(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.sum / self.samples as f64
        }
    }

    /// Approximate heap bytes, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.sketch.as_ref().map_or(0, Sketch::heap_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_equals_observing_everything() {
        let mut a = Summary::new(true);
        let mut b = Summary::new(true);
        let mut all = Summary::new(true);
        for (i, v) in [3.0, 1.0, 7.0, 2.0, 9.0, 4.0].into_iter().enumerate() {
            let ts = i as i64;
            if i % 2 == 0 {
                a.observe(v, ts)
            } else {
                b.observe(v, ts)
            }
            all.observe(v, ts);
        }
        a.merge(&b).unwrap();
        assert_eq!(a.samples, all.samples);
        assert_eq!(a.sum, all.sum);
        assert_eq!((a.min, a.max, a.last), (1.0, 9.0, 4.0));
        assert_eq!(a.sketch, all.sketch);
        assert_eq!(a.mean(), 26.0 / 6.0);
    }

    #[test]
    fn sums_saturate_so_opposite_overflows_merge_to_a_number() {
        let mut up = Summary::new(false);
        up.observe(1e308, 1);
        up.observe(1e308, 2);
        assert_eq!(up.sum, f64::MAX);
        let mut down = Summary::new(false);
        down.observe(-1e308, 3);
        down.observe(-1e308, 4);
        assert_eq!(down.sum, -f64::MAX);
        up.merge(&down).unwrap();
        assert_eq!((up.samples, up.sum), (4, 0.0));
        // A stored infinite sum (written before sums saturated) merges like the largest one.
        let mut legacy = Summary::new(false);
        legacy.observe(1.0, 5);
        legacy.sum = f64::NEG_INFINITY;
        let mut m = Summary::new(false);
        m.observe(f64::MAX, 6);
        m.merge(&legacy).unwrap();
        assert!(m.sum.is_finite());
    }
}
