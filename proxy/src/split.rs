//! The exact weighted split.
//!
//! Request number `n` (counted per route since its weight was last set) goes
//! to the canary iff `floor((n+1)·w/W) > floor(n·w/W)`. A single atomic
//! `fetch_add` hands out each `n` exactly once, so after any `N` requests the
//! canary got exactly `floor(N·w/W)` of the indices below `N`; requests still
//! in flight account for the at-most-one difference between floor and ceil.
//! Canary picks are spread evenly, never bunched.
//!
//! **With a baseline arm** (a route's `baseline`, see [`SplitState::next_arm`])
//! the canary and the baseline each get the share `w`: request `n` goes to
//! one of the two iff `floor((n+1)·2w/W) > floor(n·2w/W)` (the rule above
//! at weight `2w`, so `w <= W/2`), and that pick, number
//! `k = floor(n·2w/W)`, goes to the canary when `k` is even and to the
//! baseline when it is odd. After any `N` requests the two arms together
//! got `A = floor(N·2w/W)`: the baseline `floor(A/2) = floor(N·w/W)` and
//! the canary `ceil(A/2)`, which is `floor(N·w/W)` or one more (only when
//! `N·w/W` has a fractional part of at least 1/2). So each arm got
//! `floor(N·w/W)` or `ceil(N·w/W)`, the two alternate, and both are spread
//! evenly among the stable's requests. The parity of `k` depends on `n`
//! only modulo `W` (adding `W` to `n` adds the even `2w` to `k`), so the
//! same small modular arithmetic as the two-way rule gives the exact answer
//! for every `n`. Routes without a baseline never call it: their split is
//! the two-way rule, unchanged.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::WEIGHT_SCALE_BP;

/// Where the three-way split (a route with a baseline arm) sends a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    Stable,
    Canary,
    Baseline,
}

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

    /// Decides the next weighted request of a route with a baseline arm:
    /// the canary and the baseline get `canary_weight_bp` each (see the
    /// module docs). A weight over half the scale (refused by the config)
    /// is read as half.
    pub fn next_arm(&self) -> Arm {
        let pair = (2 * self.canary_weight_bp).min(WEIGHT_SCALE_BP);
        if pair == 0 {
            return Arm::Stable;
        }
        let scale = u64::from(WEIGHT_SCALE_BP);
        let r = self.counter.fetch_add(1, Ordering::Relaxed) % scale;
        let pair = u64::from(pair);
        let (before, after) = (r * pair / scale, (r + 1) * pair / scale);
        if after == before {
            Arm::Stable
        } else if before % 2 == 0 {
            Arm::Canary
        } else {
            Arm::Baseline
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

    /// The three-way rule of the module docs in 128-bit arithmetic.
    fn reference_arm(n: u64, w: u32) -> Arm {
        let (n, pair) = (u128::from(n), 2 * u128::from(w));
        let (before, after) = (n * pair / 10_000, (n + 1) * pair / 10_000);
        match (after > before, before % 2) {
            (false, _) => Arm::Stable,
            (true, 0) => Arm::Canary,
            (true, _) => Arm::Baseline,
        }
    }

    #[test]
    fn canary_and_baseline_counts_are_exact_after_any_prefix_of_requests() {
        for w in [0, 1, 7, 1000, 2500, 3333, 4999, 5000] {
            let split = SplitState::new(w);
            let (mut canary, mut baseline) = (0u64, 0u64);
            for n in 1..=30_000u64 {
                match split.next_arm() {
                    Arm::Canary => canary += 1,
                    Arm::Baseline => baseline += 1,
                    Arm::Stable => {}
                }
                let (lo, hi) = expected_bounds(n, w);
                assert!(canary >= lo && canary <= hi, "w={w} n={n} canary={canary}");
                assert_eq!(baseline, lo, "w={w} n={n}: the baseline gets floor(n*w/W)");
                assert!(canary - baseline <= 1, "the two arms alternate");
            }
        }
    }

    #[test]
    fn three_way_modular_arithmetic_matches_the_formula_for_any_request_number() {
        let starts = [0, 9_999, 10_000, 1 << 32, (1 << 53) + 7, u64::MAX - 30_000];
        for w in [1, 7, 1000, 3333, 5000] {
            for start in starts {
                let split = SplitState::new(w);
                split.counter.store(start, Ordering::Relaxed);
                for n in start..start.saturating_add(25_000) {
                    assert_eq!(split.next_arm(), reference_arm(n, w), "w={w} n={n}");
                }
            }
        }
    }

    #[test]
    fn canary_and_baseline_picks_alternate_evenly_spread() {
        let split = SplitState::new(1250);
        let picks: Vec<Arm> = (0..16).map(|_| split.next_arm()).collect();
        let arms: Vec<(usize, Arm)> = picks
            .into_iter()
            .enumerate()
            .filter(|(_, a)| *a != Arm::Stable)
            .collect();
        assert_eq!(
            arms,
            [
                (3, Arm::Canary),
                (7, Arm::Baseline),
                (11, Arm::Canary),
                (15, Arm::Baseline)
            ]
        );
        let half = SplitState::new(5000);
        let picks: Vec<Arm> = (0..4).map(|_| half.next_arm()).collect();
        assert_eq!(
            picks,
            [Arm::Canary, Arm::Baseline, Arm::Canary, Arm::Baseline],
            "at 50% the stable gets nothing"
        );
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
