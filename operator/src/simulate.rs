//! `sluice simulate`: the exact gate and state machine of a release, on
//! simulated traffic, many times over, so a user can see before a release
//! how long it takes at their traffic and what it can catch.
//!
//! Each run drives [`crate::machine::step`] with a router that always
//! works. Every tick (a scrape for the sequential gate, an interval for the
//! threshold gate) the proxy's traffic is drawn: `rps × tick` requests,
//! split between the arms exactly as the proxy splits them (the counter
//! starts again at each weight change), each arm's failures drawn from a
//! binomial at its error rate, and its durations from a uniform range plus
//! its added delay (and a slowdown of both arms from some moment, when
//! given) into the proxy's own histogram buckets. The resulting
//! [`Window`]s go through the same code the proxy provider's windows do.
//! The same `seed` gives the same runs.

use std::time::Duration;

use serde::Serialize;
use sluice_loadtest::Rng;
use sluice_proxy::config::WEIGHT_SCALE_BP;
use sluice_proxy::metrics::duration_bounds_secs;

use crate::analysis::Analysis;
use crate::counters::{Arm, Window};
use crate::gate::GateState;
use crate::machine::{self, Action, Observation, Phase, Status};
use crate::plan::{Gate, Plan};

/// How one arm behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct ArmProfile {
    /// Fraction of requests that fail.
    pub errors: f64,
    /// Durations are uniform in this range...
    pub latency: (Duration, Duration),
    /// ...plus this delay.
    pub extra: Duration,
}

impl Default for ArmProfile {
    fn default() -> Self {
        Self {
            errors: 0.0,
            latency: (Duration::from_millis(10), Duration::from_millis(50)),
            extra: Duration::ZERO,
        }
    }
}

/// Both arms get slower by `extra` from `at` on (a platform-wide slowdown).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slowdown {
    pub at: Duration,
    pub extra: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub rps: f64,
    pub plan: Plan,
    pub primary: ArmProfile,
    pub canary: ArmProfile,
    pub slowdown: Option<Slowdown>,
    pub runs: u32,
    pub seed: u64,
}

/// How one simulated release ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunResult {
    pub outcome: Outcome,
    /// Seconds from the first canary request to the decision.
    pub seconds: f64,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Promoted,
    /// Rolled back on evidence (a failed check).
    RolledBack,
    /// Rolled back for lack of evidence (a deadline or the maximum duration).
    RolledBackUndecided,
}

/// Seconds-to-decision percentiles of a set of runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Times {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Times {
    fn of(mut v: Vec<f64>) -> Option<Self> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
        Some(Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: v[v.len() - 1],
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub runs: u32,
    pub promoted: u32,
    pub rolled_back: u32,
    pub rolled_back_on_evidence: u32,
    pub rolled_back_undecided: u32,
    /// Whether the canary is worse than the primary in this scenario.
    pub canary_worse: bool,
    pub time_to_promotion: Option<Times>,
    pub time_to_rollback: Option<Times>,
}

impl Summary {
    pub fn rollback_rate(&self) -> f64 {
        f64::from(self.rolled_back) / f64::from(self.runs.max(1))
    }
}

// === sampling ===

/// A draw from Binomial(n, p): inversion for small means, a normal
/// approximation (rounded and clamped) above 30 successes expected.
pub fn binomial(rng: &mut Rng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    if p > 0.5 {
        return n - binomial(rng, n, 1.0 - p);
    }
    let mean = n as f64 * p;
    if mean > 30.0 {
        // Box-Muller.
        let (u1, u2) = (rng.next_f64().max(1e-300), rng.next_f64());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let x = (mean + z * (mean * (1.0 - p)).sqrt()).round();
        return x.clamp(0.0, n as f64) as u64;
    }
    let u = rng.next_f64();
    let q = p / (1.0 - p);
    let mut pmf = (1.0 - p).powf(n as f64);
    let mut cdf = pmf;
    let mut k = 0u64;
    while u > cdf && k < n {
        pmf *= q * (n - k) as f64 / (k + 1) as f64;
        k += 1;
        cdf += pmf;
        if pmf < 1e-18 && cdf > 0.999_999 {
            break;
        }
    }
    k
}

/// One arm's window: `n` requests drawn from `profile` (plus `slow` delay).
fn draw_arm(rng: &mut Rng, n: u64, profile: &ArmProfile, slow: Duration) -> Arm {
    let failures = binomial(rng, n, profile.errors);
    let (lo, hi) = profile.latency;
    let shift = (profile.extra + slow).as_secs_f64();
    let (lo, hi) = (lo.as_secs_f64() + shift, hi.as_secs_f64() + shift);
    let cdf = |x: f64| {
        if hi <= lo {
            if x >= lo { 1.0 } else { 0.0 }
        } else {
            ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
        }
    };
    // Multinomial over the buckets, one conditional binomial at a time.
    let mut buckets = Vec::new();
    let (mut left, mut below_prob, mut cumulative) = (n, 0.0, 0u64);
    for bound in duration_bounds_secs() {
        let p = cdf(bound);
        let in_bucket = p - below_prob;
        let rest = 1.0 - below_prob;
        let k = if left == 0 || in_bucket <= 0.0 {
            0
        } else if rest <= in_bucket {
            left
        } else {
            binomial(rng, left, in_bucket / rest)
        };
        left -= k;
        cumulative += k;
        below_prob = p;
        buckets.push((bound, cumulative as f64));
    }
    buckets.push((f64::INFINITY, n as f64));
    Arm {
        requests: n as f64,
        failures: failures as f64,
        buckets,
    }
}

// === runs ===

/// Exact split of `n` more requests at `weight_bp`, `counted` being the
/// requests since the weight was set: the canary's share.
fn canary_share(counted: u64, n: u64, weight_bp: u32) -> u64 {
    let w = u128::from(weight_bp);
    let scale = u128::from(WEIGHT_SCALE_BP);
    let before = u128::from(counted) * w / scale;
    let after = u128::from(counted + n) * w / scale;
    (after - before) as u64
}

/// One release, start to decision.
pub fn run_one(sc: &Scenario, run: u64) -> RunResult {
    let mut rng = Rng::new(sc.seed ^ run.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let plan = &sc.plan;
    let dt = plan.tick_interval().as_secs_f64();
    let limit = plan.max_duration.as_secs_f64() + plan.progress_deadline.as_secs_f64() + 600.0;
    let mut now = 0.0;
    let mut status: Option<Status> = None;
    let mut first_canary_at: Option<f64> = None;
    let mut split_counted = 0u64;
    let mut split_weight = 0u32;
    let mut carry = 0.0;
    let mut gate: Option<GateState> = None;
    let mut analysis: Option<Analysis> = None;
    loop {
        let obs = Observation {
            now,
            revision: "canary".into(),
            target_ready: true,
            analysis: analysis.take(),
            ..Observation::default()
        };
        let mut t = machine::step(plan, status.as_ref(), &obs);
        machine::confirm(&mut t.status);
        if !t.actions.contains(&Action::Initialize) {
            t.status.gate = gate.clone();
        }
        let s = t.status;
        if s.phase.is_terminal() || s.phase == Phase::Promoting {
            let seconds = now - first_canary_at.unwrap_or(now);
            let outcome = if s.phase == Phase::Failed {
                if s.message.contains("deadline") || s.message.contains("maximum release duration")
                {
                    Outcome::RolledBackUndecided
                } else {
                    Outcome::RolledBack
                }
            } else {
                Outcome::Promoted
            };
            return RunResult {
                outcome,
                seconds,
                message: s.message,
            };
        }
        if now > limit {
            return RunResult {
                outcome: Outcome::RolledBackUndecided,
                seconds: now - first_canary_at.unwrap_or(now),
                message: "the simulation's time limit".into(),
            };
        }
        let analyses = s.phase.analyses();
        let weight = s.canary_weight_bp;
        status = Some(s);
        if !analyses {
            // Initializing and Initialized move on at once in a simulation.
            continue;
        }
        if weight != split_weight {
            split_weight = weight;
            split_counted = 0;
        }
        if first_canary_at.is_none() && weight > 0 {
            first_canary_at = Some(now);
        }
        // One tick of traffic.
        let exact = sc.rps * dt + carry;
        let n = exact.floor() as u64;
        carry = exact - n as f64;
        let n_canary = canary_share(split_counted, n, weight);
        split_counted += n;
        let slow = sc
            .slowdown
            .filter(|s| first_canary_at.is_some_and(|f| now - f >= s.at.as_secs_f64()))
            .map(|s| s.extra)
            .unwrap_or_default();
        let window = Window {
            stable: draw_arm(&mut rng, n - n_canary, &sc.primary, slow),
            canary: draw_arm(&mut rng, n_canary, &sc.canary, slow),
            ..Window::default()
        };
        now += dt;
        analysis = Some(match &plan.gate {
            Gate::Sequential(settings) => {
                let state = gate.get_or_insert_with(|| GateState::new(settings));
                state.observe(settings, &window, weight);
                let mut a = state.analysis(settings, plan.min_requests);
                if state.step_canary.requests >= plan.min_requests as f64 {
                    a.checks.extend(crate::provider::ceiling_checks(
                        plan,
                        &state.step_canary,
                        Vec::new(),
                    ));
                }
                a
            }
            Gate::Threshold => crate::provider::analyse_window(plan, &window),
        });
    }
}

/// Every run of a scenario, summarised.
pub fn simulate(sc: &Scenario) -> (Summary, Vec<RunResult>) {
    let results: Vec<RunResult> = (0..u64::from(sc.runs)).map(|i| run_one(sc, i)).collect();
    let count = |o: Outcome| results.iter().filter(|r| r.outcome == o).count() as u32;
    let times = |pred: &dyn Fn(Outcome) -> bool| {
        Times::of(
            results
                .iter()
                .filter(|r| pred(r.outcome))
                .map(|r| r.seconds)
                .collect(),
        )
    };
    let rho0 = sc.plan.gate.settings().map(|s| s.rho0).unwrap_or(1.0);
    let summary = Summary {
        runs: sc.runs,
        promoted: count(Outcome::Promoted),
        rolled_back: count(Outcome::RolledBack) + count(Outcome::RolledBackUndecided),
        rolled_back_on_evidence: count(Outcome::RolledBack),
        rolled_back_undecided: count(Outcome::RolledBackUndecided),
        canary_worse: sc.canary.errors > sc.primary.errors * rho0 + 1e-12
            || sc.canary.extra > sc.primary.extra,
        time_to_promotion: times(&|o| o == Outcome::Promoted),
        time_to_rollback: times(&|o| o != Outcome::Promoted),
    };
    (summary, results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_draws_have_the_right_mean_and_bounds() {
        let mut rng = Rng::new(3);
        for (n, p) in [(400u64, 0.01), (50, 0.3), (1000, 0.9), (20, 1.0), (0, 0.5)] {
            let draws: Vec<u64> = (0..4000).map(|_| binomial(&mut rng, n, p)).collect();
            assert!(draws.iter().all(|k| *k <= n));
            let mean = draws.iter().sum::<u64>() as f64 / draws.len() as f64;
            let sd = (n as f64 * p * (1.0 - p) / draws.len() as f64).sqrt();
            assert!(
                (mean - n as f64 * p).abs() <= 5.0 * sd + 1e-9,
                "n={n} p={p} mean={mean}"
            );
        }
    }

    #[test]
    fn the_exact_split_gives_floor_or_ceil_of_the_share() {
        let mut counted = 0;
        let mut canary = 0;
        for n in [7u64, 400, 13, 999, 1] {
            canary += canary_share(counted, n, 1000);
            counted += n;
            assert_eq!(canary, counted / 10);
        }
    }

    #[test]
    fn drawn_durations_fill_the_buckets_of_their_range() {
        let mut rng = Rng::new(9);
        let profile = ArmProfile {
            latency: (Duration::from_millis(255), Duration::from_millis(270)),
            ..ArmProfile::default()
        };
        let arm = draw_arm(&mut rng, 1000, &profile, Duration::ZERO);
        assert_eq!(arm.slower_than(0.25), Some(1000.0));
        assert_eq!(arm.slower_than(0.3), Some(0.0));
        let slowed = draw_arm(&mut rng, 1000, &profile, Duration::from_millis(100));
        assert_eq!(slowed.slower_than(0.35), Some(1000.0));
    }
}
