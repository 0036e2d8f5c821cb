//! A windowed latency sketch: upstream latencies of admitted requests over
//! one control interval, in log-linear buckets.
//!
//! Buckets are HDR-style: values below 16 µs exactly, then 16 buckets per
//! power of two, so a bucket spans at most 1/16 of its lower bound and its
//! midpoint is within 1/32 (3.2%) of any value in it. The index is a few
//! integer operations (no logarithm), and 384 buckets cover up to ~134 s.
//!
//! Each replica records into a [`LatencySketch`] (one relaxed atomic add per
//! request), and at every control tick [`LatencySketch::take`]s the counts
//! since the last take as a sparse, serializable [`WindowDelta`]. The leader
//! [`Window::merge`]s the deltas of all replicas and reads [`WindowStats`].
//! Counts are integers, so merging is exact: the merge of the parts is the
//! sketch of the whole.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bits of the value kept below its leading one: 16 buckets per octave.
const SUB_BITS: u32 = 4;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;

/// Latencies at or above this are counted in the last bucket: far beyond any
/// upstream timeout, so clamping loses nothing a controller acts on.
pub const MAX_MICROS: u64 = (1 << 27) - 1;

/// Number of buckets: 16 exact ones, then 16 per octave from 2^4 to 2^26 µs.
pub const BUCKETS: usize = ((27 - SUB_BITS + 1) as usize) * SUB_BUCKETS as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SketchError {
    /// A delta from another replica names a bucket this build does not have
    /// (a corrupt message, or a replica with another bucket layout).
    #[error("latency bucket {bucket} is out of range (this gateway has {BUCKETS})")]
    BucketOutOfRange { bucket: u16 },
}

fn bucket_of(micros: u64) -> usize {
    let value = micros.min(MAX_MICROS);
    if value < SUB_BUCKETS {
        return value as usize;
    }
    let octave = 63 - value.leading_zeros();
    let sub = (value >> (octave - SUB_BITS)) & (SUB_BUCKETS - 1);
    ((octave - SUB_BITS + 1) as u64 * SUB_BUCKETS + sub) as usize
}

/// The value a bucket stands for: the midpoint of the integers it holds.
fn bucket_value(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < SUB_BUCKETS {
        return bucket;
    }
    let shift = bucket / SUB_BUCKETS - 1;
    let lower = (SUB_BUCKETS + bucket % SUB_BUCKETS) << shift;
    lower + ((1 << shift) - 1) / 2
}

/// The hot-path recorder: shared by every request task of one replica.
#[derive(Debug)]
pub struct LatencySketch {
    buckets: [AtomicU32; BUCKETS],
    errors: AtomicU32,
}

impl Default for LatencySketch {
    fn default() -> Self {
        LatencySketch {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            errors: AtomicU32::new(0),
        }
    }
}

impl LatencySketch {
    pub fn new() -> LatencySketch {
        LatencySketch::default()
    }

    /// An upstream response that came back (any status below 500).
    pub fn record(&self, latency: Duration) {
        self.record_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_micros(&self, micros: u64) {
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// A 5xx, a timeout or a failed connection. Its latency is not recorded:
    /// it measures the timeout more than the checkout, and the error rate is
    /// its own signal.
    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts since the last take, leaving zero behind. A request
    /// recorded during the take lands in this delta or the next, never both
    /// and never neither.
    pub fn take(&self) -> WindowDelta {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(bucket, count)| match count.swap(0, Ordering::Relaxed) {
                0 => None,
                n => Some((bucket as u16, n)),
            })
            .collect();
        WindowDelta {
            buckets,
            errors: self.errors.swap(0, Ordering::Relaxed),
        }
    }
}

/// One replica's counts for one interval, as sent to the leader: only the
/// buckets that were hit, as `(bucket, count)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowDelta {
    pub buckets: Vec<(u16, u32)>,
    pub errors: u32,
}

/// The merged counts of one control interval, across replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    counts: Box<[u64; BUCKETS]>,
    errors: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            counts: Box::new([0; BUCKETS]),
            errors: 0,
        }
    }
}

/// What the controller reads from a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowStats {
    /// Responses plus errors.
    pub requests: u64,
    pub errors: u64,
    /// `None` when no response came back (only errors, or nothing).
    pub p95: Option<Duration>,
}

impl WindowStats {
    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.requests)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Window {
    pub fn new() -> Window {
        Window::default()
    }

    /// Adds one replica's delta. A delta naming an unknown bucket is refused
    /// whole, so a bad message cannot half-count.
    pub fn merge(&mut self, delta: &WindowDelta) -> Result<(), SketchError> {
        if let Some(&(bucket, _)) = delta.buckets.iter().find(|(b, _)| *b as usize >= BUCKETS) {
            return Err(SketchError::BucketOutOfRange { bucket });
        }
        for &(bucket, count) in &delta.buckets {
            let slot = &mut self.counts[bucket as usize];
            *slot = slot.saturating_add(u64::from(count));
        }
        self.errors = self.errors.saturating_add(u64::from(delta.errors));
        Ok(())
    }

    /// Starts the next interval.
    pub fn clear(&mut self) {
        *self = Window::default();
    }

    fn responses(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |sum, &count| sum.saturating_add(count))
    }

    /// Requests seen: responses plus errors.
    pub fn count(&self) -> u64 {
        self.responses().saturating_add(self.errors)
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Errors over all requests; 0 for an empty window.
    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.count())
    }

    /// The latency below which a fraction `q` of the responses fell (the
    /// response of rank ⌈q·n⌉), within 3.2%; `None` without responses.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let responses = self.responses();
        if responses == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * responses as f64).ceil() as u64).clamp(1, responses);
        let mut seen = 0u64;
        let bucket = self.counts.iter().position(|&count| {
            seen = seen.saturating_add(count);
            seen >= rank
        })?;
        Some(Duration::from_micros(bucket_value(bucket)))
    }

    pub fn stats(&self) -> WindowStats {
        WindowStats {
            requests: self.count(),
            errors: self.errors,
            p95: self.quantile(0.95),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Draws one latency in µs.
    type Draw = dyn Fn(&mut StdRng) -> u64;

    fn window_of(sketch: &LatencySketch) -> Window {
        let mut window = Window::new();
        window
            .merge(&sketch.take())
            .expect("own buckets are in range");
        window
    }

    /// The exact quantile by the same rank rule as `Window::quantile`.
    fn exact_quantile(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    #[test]
    fn buckets_are_ordered_and_read_back_within_the_relative_error() {
        let octave_edges = (18..=27).flat_map(|bit| [(1u64 << bit) - 1, 1 << bit]);
        let mut previous = 0;
        for micros in (0..200_000).chain(octave_edges) {
            let bucket = bucket_of(micros);
            assert!(
                bucket >= previous,
                "{micros} µs went back to bucket {bucket}"
            );
            previous = bucket;
            let value = bucket_value(bucket);
            assert_eq!(
                bucket_of(value),
                bucket,
                "{micros} µs: value outside its bucket"
            );
            let err = (value as f64 - micros as f64).abs() / (micros as f64).max(1.0);
            assert!(
                err <= 1.0 / 32.0 || micros > MAX_MICROS,
                "{micros} µs read back as {value}"
            );
        }
        assert_eq!(bucket_of(MAX_MICROS), BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_the_relative_error_of_the_exact_ones() {
        let mut rng = StdRng::seed_from_u64(7);
        let distributions: [(&str, Box<Draw>); 3] = [
            (
                "uniform 1–900 ms",
                Box::new(|r| r.random_range(1_000..900_000)),
            ),
            (
                "log-normal around 200 ms",
                Box::new(|r| {
                    let z: f64 = (0..12).map(|_| r.random::<f64>()).sum::<f64>() - 6.0;
                    (200_000.0 * (0.8 * z).exp()) as u64
                }),
            ),
            (
                "bimodal 40 ms / 2 s",
                Box::new(|r| {
                    if r.random_bool(0.9) {
                        r.random_range(30_000..50_000)
                    } else {
                        r.random_range(1_500_000..2_500_000)
                    }
                }),
            ),
        ];
        for (name, draw) in distributions {
            let sketch = LatencySketch::new();
            let mut values: Vec<u64> = (0..20_000).map(|_| draw(&mut rng)).collect();
            for &v in &values {
                sketch.record_micros(v);
            }
            values.sort_unstable();
            let window = window_of(&sketch);
            for q in [0.5, 0.9, 0.95, 0.99] {
                let exact = exact_quantile(&values, q) as f64;
                let got = window.quantile(q).expect("samples").as_micros() as f64;
                let err = (got - exact).abs() / exact;
                assert!(err <= 0.05, "{name} q{q}: {got} vs exact {exact}");
            }
        }
    }

    #[test]
    fn merged_deltas_equal_recording_everything_in_one_sketch() {
        let mut rng = StdRng::seed_from_u64(11);
        let replicas = [
            LatencySketch::new(),
            LatencySketch::new(),
            LatencySketch::new(),
        ];
        let single = LatencySketch::new();
        for i in 0..30_000 {
            let replica = &replicas[i % 3];
            if rng.random_bool(0.03) {
                replica.record_error();
                single.record_error();
            } else {
                let micros = rng.random_range(0..3_000_000);
                replica.record_micros(micros);
                single.record_micros(micros);
            }
        }
        let mut merged = Window::new();
        for replica in &replicas {
            let wire = serde_json::to_string(&replica.take()).expect("serializes");
            let delta: WindowDelta = serde_json::from_str(&wire).expect("round-trips");
            merged.merge(&delta).expect("in range");
        }
        let whole = window_of(&single);
        assert_eq!(merged, whole);
        assert_eq!(merged.count(), 30_000);
        assert_eq!(merged.stats(), whole.stats());
    }

    #[test]
    fn take_leaves_an_empty_sketch_behind() {
        let sketch = LatencySketch::new();
        sketch.record(Duration::from_millis(120));
        sketch.record(Duration::from_millis(130));
        sketch.record_error();
        let first = sketch.take();
        assert_eq!(first.buckets.iter().map(|&(_, n)| n).sum::<u32>(), 2);
        assert_eq!(first.errors, 1);
        assert_eq!(sketch.take(), WindowDelta::default());
        sketch.record(Duration::from_millis(5));
        assert_eq!(window_of(&sketch).count(), 1);
    }

    #[test]
    fn concurrent_recording_loses_no_counts() {
        let sketch = LatencySketch::new();
        let mut window = Window::new();
        std::thread::scope(|scope| {
            for thread in 0..8u64 {
                let sketch = &sketch;
                scope.spawn(move || {
                    for i in 0..20_000u64 {
                        if i % 50 == 0 {
                            sketch.record_error();
                        } else {
                            sketch.record_micros(thread * 1_000 + i);
                        }
                    }
                });
            }
            // Takes while the threads record: every count lands in exactly one delta.
            for _ in 0..20 {
                window.merge(&sketch.take()).expect("in range");
            }
        });
        window.merge(&sketch.take()).expect("in range");
        assert_eq!(window.count(), 8 * 20_000);
        assert_eq!(window.errors(), 8 * 400);
    }

    #[test]
    fn error_rate_and_empty_windows() {
        let sketch = LatencySketch::new();
        assert_eq!(Window::new().quantile(0.95), None);
        assert_eq!(Window::new().error_rate(), 0.0);
        for _ in 0..3 {
            sketch.record_error();
        }
        let window = window_of(&sketch);
        assert_eq!(window.quantile(0.95), None, "errors carry no latency");
        assert_eq!(window.error_rate(), 1.0);
        sketch.record_micros(10);
        sketch.record_error();
        let stats = window_of(&sketch).stats();
        assert_eq!((stats.requests, stats.errors), (2, 1));
        assert_eq!(stats.error_rate(), 0.5);
    }

    #[test]
    fn a_delta_with_an_unknown_bucket_is_refused_whole() {
        let mut window = Window::new();
        let delta = WindowDelta {
            buckets: vec![(3, 5), (BUCKETS as u16, 1)],
            errors: 2,
        };
        assert_eq!(
            window.merge(&delta),
            Err(SketchError::BucketOutOfRange {
                bucket: BUCKETS as u16
            })
        );
        assert_eq!(window, Window::new());
    }
}
