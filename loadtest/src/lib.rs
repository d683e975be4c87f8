//! `sluice-load`: a load generator that tells the truth about latency (open
//! loop without coordinated omission, HDR histograms), and the demo backend
//! with runtime-switchable fault injection. Library first: the demo and the
//! end-to-end tests use both in-process.

pub mod backend;
pub mod load;
mod pace;

pub use backend::{BackendHandle, BackendOptions, Faults, Latency, start_backend};
pub use load::{LoadControl, LoadOptions, Report, UsageError, run};

/// A small seeded PRNG (SplitMix64): the same seed gives the same faults, so
/// a fault-injection run can be repeated exactly.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_uniform_mean() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<f64> = (0..10_000).map(|_| a.next_f64()).collect();
        let ys: Vec<f64> = (0..10_000).map(|_| b.next_f64()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
    }

    #[test]
    fn latency_specs_parse() {
        use std::time::Duration;
        assert_eq!(
            Latency::parse("20ms").unwrap(),
            Latency::Fixed(Duration::from_millis(20))
        );
        assert_eq!(
            Latency::parse("10ms..200ms").unwrap(),
            Latency::Uniform(Duration::from_millis(10), Duration::from_millis(200))
        );
        assert!(Latency::parse("200ms..10ms").is_err());
        assert!(Latency::parse("fast").is_err());
    }
}
