//! A mergeable quantile sketch with a guaranteed relative error (DDSketch-style log buckets).
//!
//! Histograms are aggregated per series per flush window and stored as one row; percentiles over
//! hours or days must be computed by *merging* those rows. Exact samples cannot be kept, so every
//! value `v > 0` is counted in bucket `i = ceil(log_gamma(v))` with `gamma = (1 + a) / (1 - a)`.
//! Reporting a bucket as `2 * gamma^i / (gamma + 1)` is within relative error `a` of every value
//! in it (Masson, Rim, Lee: "DDSketch", VLDB 2019). Merging adds bucket counts, so a merged sketch
//! has exactly the error bound of a sketch fed all the values directly.
//!
//! Negative values use a mirrored store; zeros (and values too small to index) are counted apart.

#![deny(missing_docs)]

/// Default relative accuracy: 1%, the bound docs/data-model.md gives stored percentiles.
pub const DEFAULT_ALPHA: f64 = 0.01;

/// Values whose magnitude is below this are counted as zero (they would need absurd indexes).
const MIN_INDEXABLE: f64 = 1e-9;

/// Upper bound of buckets per side; past it the lowest buckets collapse (only tiny values lose
/// accuracy), so memory is bounded whatever the input.
const MAX_BINS: usize = 4096;

const FORMAT_VERSION: u8 = 1;

mod summary;
pub use summary::{saturate, Summary};

/// Why stored sketch bytes could not be read back.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SketchError {
    /// The blob ended before the structure it announced.
    #[error("sketch bytes truncated at offset {0}")]
    Truncated(usize),
    /// The blob was written by an unknown encoder version.
    #[error("unknown sketch format version {0}")]
    Version(u8),
    /// The blob was written with another accuracy, so buckets do not line up.
    #[error("sketch accuracy mismatch: stored {stored}, expected {expected}")]
    AlphaMismatch {
        /// Accuracy found in the blob.
        stored: f64,
        /// Accuracy of the sketch being merged into.
        expected: f64,
    },
}

/// Bucket counts for one sign, dense from `offset` (so a run of nearby values costs one slot each).
#[derive(Debug, Clone, Default, PartialEq)]
struct Store {
    offset: i32,
    counts: Vec<u64>,
}

impl Store {
    fn add(&mut self, index: i32, n: u64) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.reserve_exact(1);
            self.counts.push(n);
            return;
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            if self.counts.len() + grow > MAX_BINS {
                // Collapse: values below the lowest kept bucket land in it.
                self.counts[0] += n;
                return;
            }
            let mut v = Vec::with_capacity(self.counts.len() + grow);
            v.resize(grow, 0);
            v.extend_from_slice(&self.counts);
            self.counts = v;
            self.offset = index;
        }
        let mut pos = (index as i64 - self.offset as i64) as usize;
        if pos >= MAX_BINS {
            // The window moves up so `index` is its highest bin; what falls below its new
            // lowest bin is folded into that bin (the low end collapses, as above). Never
            // grown past MAX_BINS first: a sketch given 1e-8 then 1e300 once held 35,000 bins.
            let new_offset = index - (MAX_BINS as i32 - 1);
            let cut = ((new_offset as i64 - self.offset as i64) as usize).min(self.counts.len());
            let folded: u64 = self.counts[..cut].iter().sum();
            self.counts.drain(..cut);
            if self.counts.is_empty() {
                self.counts.push(0);
            }
            self.counts[0] += folded;
            self.offset = new_offset;
            pos = MAX_BINS - 1;
        }
        if pos >= self.counts.len() {
            // Doubling, but never past the bins a store may hold.
            let want = (pos + 1).max(self.counts.len() * 2).min(MAX_BINS);
            self.counts
                .reserve_exact(want.saturating_sub(self.counts.len()));
            self.counts.resize(pos + 1, 0);
        }
        self.counts[pos] += n;
    }

    /// Bytes of bins held.
    fn heap_bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u64>()
    }

    /// Bins this store would span after taking `other`'s (an upper bound of its length).
    fn span_with(&self, other: &Store) -> usize {
        if other.counts.is_empty() {
            return self.counts.len();
        }
        if self.counts.is_empty() {
            return other.counts.len().min(MAX_BINS);
        }
        let lo = (self.offset as i64).min(other.offset as i64);
        let hi = (self.offset as i64 + self.counts.len() as i64)
            .max(other.offset as i64 + other.counts.len() as i64);
        ((hi - lo) as usize).min(MAX_BINS)
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn merge(&mut self, other: &Store) {
        for (i, &c) in other.counts.iter().enumerate() {
            if c > 0 {
                self.add(other.offset + i as i32, c);
            }
        }
    }
}

/// A mergeable sketch of a distribution of finite `f64` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Sketch {
    alpha: f64,
    gamma_ln: f64,
    positive: Store,
    negative: Store,
    zero: u64,
    count: u64,
    min: f64,
    max: f64,
}

impl Default for Sketch {
    fn default() -> Self {
        Self::new(DEFAULT_ALPHA)
    }
}

impl Sketch {
    /// A sketch whose quantiles are within relative error `alpha` (0 < alpha < 1).
    pub fn new(alpha: f64) -> Self {
        let alpha = if alpha > 0.0 && alpha < 1.0 {
            alpha
        } else {
            DEFAULT_ALPHA
        };
        let gamma = (1.0 + alpha) / (1.0 - alpha);
        Self {
            alpha,
            gamma_ln: gamma.ln(),
            positive: Store::default(),
            negative: Store::default(),
            zero: 0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Bytes merging `other` into this sketch may add to [`Sketch::heap_bytes`] (an upper
    /// bound, known before merging: a caller under a memory bound asks first).
    pub fn growth_with(&self, other: &Sketch) -> usize {
        let grow = |mine: &Store, theirs: &Store| {
            let span = mine.span_with(theirs);
            // Doubling may reserve up to twice the span, within the bins a store may hold.
            let cap = (span * 2).min(MAX_BINS).max(span);
            cap.saturating_sub(mine.counts.capacity()) * std::mem::size_of::<u64>()
        };
        grow(&self.positive, &other.positive) + grow(&self.negative, &other.negative)
    }

    /// The relative accuracy this sketch guarantees.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    fn index(&self, magnitude: f64) -> i32 {
        (magnitude.ln() / self.gamma_ln).ceil() as i32
    }

    fn value_of(&self, index: i32) -> f64 {
        let gamma = self.gamma_ln.exp();
        2.0 * (self.gamma_ln * index as f64).exp() / (gamma + 1.0)
    }

    /// Counts one value; non-finite values are ignored (callers reject them before this).
    pub fn add(&mut self, v: f64) {
        self.add_n(v, 1);
    }

    /// Counts `n` occurrences of one value.
    pub fn add_n(&mut self, v: f64, n: u64) {
        if !v.is_finite() || n == 0 {
            return;
        }
        if v > MIN_INDEXABLE {
            let i = self.index(v);
            self.positive.add(i, n);
        } else if v < -MIN_INDEXABLE {
            let i = self.index(-v);
            self.negative.add(i, n);
        } else {
            self.zero += n;
        }
        self.count += n;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Number of values counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether no value was counted.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds every value of `other` (same accuracy required) as if they had been added here.
    pub fn merge(&mut self, other: &Sketch) -> Result<(), SketchError> {
        if (self.alpha - other.alpha).abs() > 1e-12 {
            return Err(SketchError::AlphaMismatch {
                stored: other.alpha,
                expected: self.alpha,
            });
        }
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zero += other.zero;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        Ok(())
    }

    /// The value at quantile `q` in [0, 1], or `None` for an empty sketch.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        // Negative values, most negative first (highest magnitude index first).
        for (i, &c) in self.negative.counts.iter().enumerate().rev() {
            seen += c;
            if seen > rank {
                let v = -self.value_of(self.negative.offset + i as i32);
                return Some(v.clamp(self.min, self.max));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(0.0f64.clamp(self.min, self.max));
        }
        for (i, &c) in self.positive.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                let v = self.value_of(self.positive.offset + i as i32);
                return Some(v.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// `(representative value, count)` of every non-empty bucket, ascending by value; each
    /// representative is within the sketch's relative accuracy of the values it stands for.
    /// Exporters turn these into histogram buckets.
    pub fn bins(&self) -> Vec<(f64, u64)> {
        let mut out = Vec::new();
        for (i, &c) in self.negative.counts.iter().enumerate().rev() {
            if c > 0 {
                out.push((-self.value_of(self.negative.offset + i as i32), c));
            }
        }
        if self.zero > 0 {
            out.push((0.0, self.zero));
        }
        for (i, &c) in self.positive.counts.iter().enumerate() {
            if c > 0 {
                out.push((self.value_of(self.positive.offset + i as i32), c));
            }
        }
        out
    }

    /// `(lower edge, count)` of every non-empty bucket of values from zero up, ascending:
    /// each value a bucket counts is above its edge (zero's bucket: exactly 0), and every value
    /// above the edge within the sketch's relative accuracy (a bucket spans a factor `gamma`).
    /// What a histogram's `le` buckets are filled from: a value counts in the first bound above
    /// its bucket's edge, so a value equal to a bound is always in that bound's bucket (from
    /// the representative value, a round 100 counted in the next one); a value up to `gamma`
    /// times the bound may be too. `None` when the sketch holds negative values.
    pub fn edges(&self) -> Option<Vec<(f64, u64)>> {
        if self.negative.counts.iter().any(|&c| c > 0) {
            return None;
        }
        let mut out = Vec::new();
        if self.zero > 0 {
            out.push((0.0, self.zero));
        }
        for (i, &c) in self.positive.counts.iter().enumerate() {
            if c > 0 {
                let index = self.positive.offset + i as i32;
                out.push(((self.gamma_ln * (index - 1) as f64).exp(), c));
            }
        }
        Some(out)
    }

    /// Smallest value counted (exact).
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// Largest value counted (exact).
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// Heap bytes held (the bins), for the recorder's memory bound: at most 2 x 4096 bins of
    /// 8 bytes, whatever the sketch was given.
    pub fn heap_bytes(&self) -> usize {
        self.positive.heap_bytes() + self.negative.heap_bytes()
    }

    /// A compact binary form for a BLOB column (varint counts, dense runs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(32 + self.positive.counts.len() + self.negative.counts.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.alpha.to_le_bytes());
        put_varint(&mut out, self.zero);
        out.extend_from_slice(&self.min.to_le_bytes());
        out.extend_from_slice(&self.max.to_le_bytes());
        for store in [&self.positive, &self.negative] {
            put_varint(&mut out, zigzag(store.offset));
            put_varint(&mut out, store.counts.len() as u64);
            for &c in &store.counts {
                put_varint(&mut out, c);
            }
        }
        out
    }

    /// Reads back what [`Sketch::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SketchError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.byte()?;
        if version != FORMAT_VERSION {
            return Err(SketchError::Version(version));
        }
        let alpha = f64::from_le_bytes(r.array()?);
        let mut sketch = Sketch::new(alpha);
        sketch.zero = r.varint()?;
        sketch.min = f64::from_le_bytes(r.array()?);
        sketch.max = f64::from_le_bytes(r.array()?);
        let mut count = sketch.zero;
        for side in 0..2 {
            let offset = unzigzag(r.varint()?);
            let len = r.varint()? as usize;
            if len > MAX_BINS {
                return Err(SketchError::Truncated(r.pos));
            }
            let mut counts = Vec::with_capacity(len);
            for _ in 0..len {
                counts.push(r.varint()?);
            }
            let store = Store { offset, counts };
            count += store.total();
            if side == 0 {
                sketch.positive = store;
            } else {
                sketch.negative = store;
            }
        }
        sketch.count = count;
        Ok(sketch)
    }
}

fn zigzag(v: i32) -> u64 {
    ((v << 1) ^ (v >> 31)) as u32 as u64
}

fn unzigzag(v: u64) -> i32 {
    let v = v as u32;
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, SketchError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or(SketchError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn array(&mut self) -> Result<[u8; 8], SketchError> {
        let end = self.pos + 8;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(SketchError::Truncated(self.pos))?;
        self.pos = end;
        let mut a = [0u8; 8];
        a.copy_from_slice(slice);
        Ok(a)
    }

    fn varint(&mut self) -> Result<u64, SketchError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(SketchError::Truncated(self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn lognormal(rng: &mut impl Rng) -> f64 {
        // Box-Muller.
        let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (3.0 + 1.2 * z).exp()
    }

    #[test]
    fn quantiles_within_one_percent_after_merge_and_roundtrip() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let values: Vec<f64> = (0..100_000).map(|_| lognormal(&mut rng)).collect();
        // Ten partial sketches, serialised and merged, as the store does with window rows.
        let mut merged = Sketch::default();
        for chunk in values.chunks(10_000) {
            let mut s = Sketch::default();
            for &v in chunk {
                s.add(v);
            }
            let back = Sketch::from_bytes(&s.to_bytes()).unwrap();
            merged.merge(&back).unwrap();
        }
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let want = exact(&sorted, q);
            let got = merged.quantile(q).unwrap();
            assert!(
                ((got - want) / want).abs() <= 0.01,
                "q={q} got {got} want {want}"
            );
        }
        assert_eq!(merged.count(), 100_000);
    }

    #[test]
    fn bins_are_ascending_and_count_everything() {
        let mut s = Sketch::default();
        for v in [-5.0, 0.0, 1.0, 1.0, 250.0] {
            s.add(v);
        }
        let bins = s.bins();
        assert!(bins.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(bins.iter().map(|b| b.1).sum::<u64>(), 5);
        // One bin per distinct value, each within the sketch's 1% of the value it holds.
        let expected = [(-5.0, 1), (0.0, 1), (1.0, 2), (250.0, 1)];
        assert_eq!(bins.len(), expected.len(), "{bins:?}");
        for ((v, c), (want_v, want_c)) in bins.iter().zip(expected) {
            assert_eq!(*c, want_c, "{bins:?}");
            assert!((v - want_v).abs() <= 0.01 * f64::abs(want_v), "{bins:?}");
        }
        assert_eq!((s.min(), s.max()), (Some(-5.0), Some(250.0)));
    }

    #[test]
    fn negative_zero_and_positive_values() {
        let mut s = Sketch::default();
        for v in [-100.0, -1.0, 0.0, 0.0, 1.0, 100.0] {
            s.add(v);
        }
        assert!((s.quantile(0.0).unwrap() + 100.0).abs() <= 1.0);
        assert_eq!(s.quantile(0.5).unwrap(), 0.0);
        assert!((s.quantile(1.0).unwrap() - 100.0).abs() <= 1.0);
    }

    #[test]
    fn corrupt_bytes_are_typed_errors() {
        assert_eq!(Sketch::from_bytes(&[]), Err(SketchError::Truncated(0)));
        assert_eq!(Sketch::from_bytes(&[9]), Err(SketchError::Version(9)));
        let bytes = Sketch::default().to_bytes();
        assert!(matches!(
            Sketch::from_bytes(&bytes[..bytes.len() - 1]),
            Err(SketchError::Truncated(_))
        ));
        let mut other = Sketch::new(0.05);
        assert!(other.merge(&Sketch::default()).is_err());
    }

    #[test]
    fn memory_is_bounded_for_extreme_ranges() {
        let mut s = Sketch::default();
        let mut v = 1e-8;
        while v < 1e300 {
            s.add(v);
            v *= 1.01;
        }
        assert!(s.positive.counts.len() <= MAX_BINS);
        assert_eq!(s.quantile(1.0).unwrap(), s.max);
    }

    // The extremes at once, both signs, in either order: the bins held (capacity, not only
    // length) stay within the bound at every step, and merging predicts its growth.
    #[test]
    fn extremes_never_hold_more_than_the_bound() {
        let bound = 2 * MAX_BINS * std::mem::size_of::<u64>();
        for order in [[2e-8, 1e300], [1e300, 2e-8]] {
            let mut s = Sketch::default();
            for v in [order[0], -order[0], order[1], -order[1]] {
                s.add(v);
                assert!(s.heap_bytes() <= bound, "{} bytes", s.heap_bytes());
            }
            assert_eq!(s.count(), 4);
            assert_eq!((s.min(), s.max()), (Some(-1e300), Some(1e300)));
            let mut small = Sketch::default();
            small.add(1.0);
            let predicted = small.growth_with(&s);
            let before = small.heap_bytes();
            small.merge(&s).unwrap();
            assert!(small.heap_bytes() <= bound);
            assert!(
                small.heap_bytes() - before <= predicted,
                "grew {} past the predicted {predicted}",
                small.heap_bytes() - before
            );
        }
    }
}
