//! The exact weighted split.
//!
//! Request number `n` (counted per route since its weight was last set) goes
//! to the canary iff `floor((n+1)·w/W) > floor(n·w/W)`. A single atomic
//! `fetch_add` hands out each `n` exactly once, so after any `N` requests the
//! canary got exactly `floor(N·w/W)` of the indices below `N`; requests still
//! in flight account for the at-most-one difference between floor and ceil.
//! Canary picks are spread evenly, never bunched.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::WEIGHT_SCALE_BP;

/// The split state of one route for one weight setting.
#[derive(Debug)]
pub struct SplitState {
    canary_weight_bp: u32,
    counter: AtomicU64,
}

impl SplitState {
    pub fn new(canary_weight_bp: u32) -> Self {
        Self {
            canary_weight_bp: canary_weight_bp.min(WEIGHT_SCALE_BP),
            counter: AtomicU64::new(0),
        }
    }

    pub fn canary_weight_bp(&self) -> u32 {
        self.canary_weight_bp
    }

    /// Decides the next weighted request; true means canary.
    pub fn next_is_canary(&self) -> bool {
        match self.canary_weight_bp {
            0 => false,
            WEIGHT_SCALE_BP => true,
            w => {
                // The decision depends on n only modulo the scale
                // (floor((n + kW)·w/W) = floor(n·w/W) + k·w), so small u64
                // products give the same answer as the formula in u128.
                let scale = u64::from(WEIGHT_SCALE_BP);
                let r = self.counter.fetch_add(1, Ordering::Relaxed) % scale;
                let w = u64::from(w);
                (r + 1) * w / scale > r * w / scale
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn expected_bounds(n: u64, w: u32) -> (u64, u64) {
        let exact = u128::from(n) * u128::from(w);
        let floor = (exact / 10_000) as u64;
        let ceil = exact.div_ceil(10_000) as u64;
        (floor, ceil)
    }

    #[test]
    fn canary_count_is_exact_after_any_prefix_of_requests() {
        for w in [0, 1, 1000, 3333, 5000, 9999, 10_000] {
            let split = SplitState::new(w);
            let mut canary = 0u64;
            for n in 1..=20_000u64 {
                if split.next_is_canary() {
                    canary += 1;
                }
                let (lo, hi) = expected_bounds(n, w);
                assert!(canary >= lo && canary <= hi, "w={w} n={n} canary={canary}");
            }
        }
    }

    /// The formula of the module docs in 128-bit arithmetic, for any n.
    fn reference(n: u64, w: u32) -> bool {
        let (n, w) = (u128::from(n), u128::from(w));
        (n + 1) * w / 10_000 > n * w / 10_000
    }

    #[test]
    fn modular_arithmetic_matches_the_formula_for_any_request_number() {
        let starts = [0, 9_999, 10_000, 1 << 32, (1 << 53) + 7, u64::MAX - 30_000];
        for w in [1, 7, 1000, 3333, 5000, 9999] {
            for start in starts {
                let split = SplitState::new(w);
                split.counter.store(start, Ordering::Relaxed);
                for n in start..start.saturating_add(25_000) {
                    assert_eq!(split.next_is_canary(), reference(n, w), "w={w} n={n}");
                }
            }
        }
    }

    #[test]
    fn canary_picks_are_evenly_spread() {
        let split = SplitState::new(2500);
        let picks: Vec<bool> = (0..16).map(|_| split.next_is_canary()).collect();
        let positions: Vec<usize> = picks
            .iter()
            .enumerate()
            .filter(|(_, c)| **c)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(positions, vec![3, 7, 11, 15]);
    }

    #[test]
    fn concurrent_threads_keep_the_total_exact() {
        let split = Arc::new(SplitState::new(3333));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let s = split.clone();
                std::thread::spawn(move || (0..12_500).filter(|_| s.next_is_canary()).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 33_330);
    }
}
