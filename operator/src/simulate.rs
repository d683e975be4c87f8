//! `sluice simulate`: the exact gate and state machine of a release, on
//! simulated traffic, many times over, so a user can see before a release
//! how long it takes at their traffic and what it can catch, on traffic
//! they describe ([`trace`]).
//!
//! Each run drives [`crate::machine::step`] with a router that always
//! works, on a clock that advances by the scrape interval. Whenever the
//! machine measures (the baseline, then every analysis tick), the proxy's
//! traffic of that interval is drawn from the trace: `rps × seconds`
//! requests (carrying the fraction over), split between the arms exactly as
//! the proxy splits them (the counter starts again at each weight change),
//! each arm's failures drawn per request (in clumps, with the scrape-to-
//! scrape dispersion of the trace) and its durations from a lognormal plus
//! a fixed delay, into the proxy's own histogram buckets. Blue/green
//! mirrors the primary's requests to the new version, then switches all
//! traffic to it. With a baseline arm (`--baseline-arm`, canary releases
//! only) a third arm gets exactly the canary's count of every interval,
//! drawn from the trace's `baseline` values (the primary's unless the
//! trace says otherwise), and the gate judges the canary against it.
//! The resulting [`Window`]s go through the same code as
//! the proxy provider's windows, or, with the Prometheus provider, through
//! Prometheus-like sampling of the cumulative counters: a sample every
//! `--prometheus-scrape` (at a random phase per run), each window the
//! difference of the samples at its two ends.
//!
//! Runs are independent: run `r`'s random state is seeded from a hash of
//! `(seed, r)`, and the same seed gives the same runs.

pub mod trace;

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Binomial, Distribution, Gamma};
use serde::Serialize;
use sluice_proxy::config::WEIGHT_SCALE_BP;
use sluice_proxy::metrics::duration_bounds_secs;

use crate::analysis::Analysis;
use crate::counters::{Arm, Window};
use crate::gate::GateState;
use crate::machine::{self, Action, Observation, Phase, Status};
use crate::plan::{Gate, Plan, Strategy};
pub use trace::{ArmTraffic, Segment, Trace};

/// Where the gate reads its windows.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SimProvider {
    /// The proxy's counters, read every scrape interval.
    Proxy,
    /// Prometheus samples every `scrape_secs`; windows of at least `window_secs`.
    Prometheus { scrape_secs: f64, window_secs: f64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub plan: Plan,
    /// Run `r` uses trace `r % len`.
    pub traces: Vec<Trace>,
    pub provider: SimProvider,
    pub runs: u32,
    pub seed: u64,
    /// How long a run may go on; one still undecided then ends `held`.
    pub horizon: Duration,
}

/// How one simulated release ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunResult {
    pub run: u64,
    pub outcome: Outcome,
    /// Seconds from the first canary request to the end.
    pub seconds: f64,
    /// The highest canary weight the release set, in percent: how far a
    /// canary got before it was rolled back.
    pub max_weight: f64,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Promoted,
    /// Promoted at the maximum duration without proof (`--when-undecided promote`).
    PromotedUndecided,
    /// Rolled back on evidence (a failed check).
    RolledBack,
    /// Rolled back for lack of evidence (a deadline or the maximum duration).
    RolledBackUndecided,
    /// Waiting for a person at the horizon (undecided, or a manual approval).
    Held,
    /// An experiment ran its time.
    Concluded,
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
    pub promoted_undecided: u32,
    /// On evidence and for lack of it.
    pub rolled_back: u32,
    pub rolled_back_on_evidence: u32,
    pub rolled_back_undecided: u32,
    pub held: u32,
    pub concluded: u32,
    pub time_to_promotion: Option<Times>,
    pub time_to_rollback: Option<Times>,
}

impl Summary {
    pub fn rollback_rate(&self) -> f64 {
        f64::from(self.rolled_back) / f64::from(self.runs.max(1))
    }
}

/// The seed of run `run`: SplitMix64's finalizer over both, so runs of one
/// seed start from unrelated states (nearby seeds do not share streams).
pub fn run_seed(seed: u64, run: u64) -> u64 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    mix(mix(seed.wrapping_add(0x9E37_79B9_7F4A_7C15)) ^ run.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

// === sampling ===

/// A draw from Binomial(n, p).
pub fn binomial(rng: &mut SmallRng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    Binomial::new(n, p).map(|b| b.sample(rng)).unwrap_or(0)
}

/// The standard normal CDF (Abramowitz–Stegun 7.1.26 through erf; about
/// 1e-7 absolute), enough to spread durations over buckets.
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// `P(duration ≤ x seconds)` for an arm.
fn duration_cdf(a: &ArmTraffic, x: f64) -> f64 {
    let y = x * 1000.0 - a.add_ms;
    if y <= 0.0 {
        return 0.0;
    }
    if a.sigma <= 0.0 {
        return if y >= a.median_ms { 1.0 } else { 0.0 };
    }
    normal_cdf((y / a.median_ms).ln() / a.sigma)
}

/// One arm's window: `n` requests drawn from `a`.
fn draw_arm(rng: &mut SmallRng, n: u64, a: &ArmTraffic) -> Arm {
    let mut p = a.fail;
    if a.dispersion > 1.0 && n > 0 && p > 0.0 {
        // The rate varies from window to window: a gamma multiplier whose
        // variance makes the count's variance `dispersion` × binomial.
        let mean = n as f64 * p;
        let shape = mean / (a.dispersion - 1.0);
        if let Ok(g) = Gamma::new(shape, 1.0 / shape) {
            p = (p * g.sample(rng)).min(1.0);
        }
    }
    // Failures come `clump` at a time: each whole `clump` of requests
    // fails together with chance `p`, and so does the rest of the window
    // (fewer than `clump` requests, perhaps all of a quiet window's), so
    // the mean stays `n·p` and a window shorter than a clump still sees
    // its failures together, not as lone ones.
    let clump = u64::from(a.clump.max(1));
    let rest = n % clump;
    let rest_failed = rest > 0 && rng.random::<f64>() < p;
    let failures = binomial(rng, n / clump, p) * clump + if rest_failed { rest } else { 0 };
    let mut buckets = Vec::new();
    let (mut left, mut below, mut cumulative) = (n, 0.0, 0u64);
    for bound in duration_bounds_secs() {
        let p = duration_cdf(a, bound);
        let in_bucket = p - below;
        let rest = 1.0 - below;
        let k = if left == 0 || in_bucket <= 0.0 {
            0
        } else if rest <= in_bucket {
            left
        } else {
            binomial(rng, left, in_bucket / rest)
        };
        left -= k;
        cumulative += k;
        below = p;
        buckets.push((bound, cumulative as f64));
    }
    buckets.push((f64::INFINITY, n as f64));
    Arm {
        requests: n as f64,
        failures: failures as f64,
        buckets,
    }
}

/// Exact split of `n` more requests at `weight_bp`, `counted` being the
/// requests since the weight was set: the canary's share.
fn canary_share(counted: u64, n: u64, weight_bp: u32) -> u64 {
    let w = u128::from(weight_bp);
    let scale = u128::from(WEIGHT_SCALE_BP);
    let before = u128::from(counted) * w / scale;
    let after = u128::from(counted + n) * w / scale;
    (after - before) as u64
}

/// The three-way split of a route with a baseline arm (the proxy's
/// `SplitState::next_arm`): of `n` more requests, `counted` being those
/// since the weight was set, the canary's and the baseline arm's counts.
/// The two together get the two-way share at `2w`, `A = floor(N·2w/W)`
/// after `N`; the canary `ceil(A/2)` of them, the baseline arm `floor(A/2)`.
fn canary_and_baseline_shares(counted: u64, n: u64, weight_bp: u32) -> (u64, u64) {
    let pair = (2 * weight_bp).min(WEIGHT_SCALE_BP);
    let scale = u128::from(WEIGHT_SCALE_BP);
    let picked = |requests: u64| (u128::from(requests) * u128::from(pair) / scale) as u64;
    let (before, after) = (picked(counted), picked(counted + n));
    (
        after.div_ceil(2) - before.div_ceil(2),
        after / 2 - before / 2,
    )
}

// === runs ===

/// The route's traffic as a run draws it.
struct Traffic<'a> {
    trace: &'a Trace,
    rng: SmallRng,
    carry: f64,
    split_counted: u64,
    split_weight: u32,
    mirror_percent: f64,
    mirror_carry: f64,
    /// A baseline arm gets the canary's exact share (the release has one).
    baseline_arm: bool,
}

impl Traffic<'_> {
    /// The window of `seconds` starting at trace time `t`, at `weight_bp`
    /// (split at the trace's changes within it).
    fn draw(&mut self, t: f64, seconds: f64, weight_bp: u32, blue_green: bool) -> Window {
        if weight_bp != self.split_weight {
            self.split_weight = weight_bp;
            self.split_counted = 0;
        }
        let mut window = Window {
            seconds,
            ..Window::default()
        };
        let (mut from, end) = (t, t + seconds);
        while from < end - 1e-9 {
            let to = self.trace.next_change(from).unwrap_or(end).min(end);
            let seg = *self.trace.at(from);
            let exact = seg.rps * (to - from) + self.carry;
            let n = exact.floor() as u64;
            self.carry = exact - n as f64;
            // With a baseline arm the proxy gives it the canary's share:
            // each gets floor or ceil of N·w/W (weights of at most 50%).
            let (n_canary, n_baseline) = if self.baseline_arm {
                canary_and_baseline_shares(self.split_counted, n, weight_bp)
            } else {
                (canary_share(self.split_counted, n, weight_bp), 0)
            };
            self.split_counted += n;
            let stable = draw_arm(&mut self.rng, n - n_canary - n_baseline, &seg.primary);
            let canary = draw_arm(&mut self.rng, n_canary, &seg.canary);
            window.stable.add(&stable);
            window.canary.add(&canary);
            if self.baseline_arm {
                let baseline = draw_arm(&mut self.rng, n_baseline, &seg.baseline);
                window.baseline.add(&baseline);
            }
            if blue_green && weight_bp == 0 && self.mirror_percent > 0.0 {
                let exact = (n - n_canary) as f64 * self.mirror_percent / 100.0 + self.mirror_carry;
                let copies = exact.floor() as u64;
                self.mirror_carry = exact - copies as f64;
                let mirror = draw_arm(&mut self.rng, copies, &seg.canary);
                window.canary_mirror.add(&mirror);
            }
            from = to;
        }
        window
    }
}

impl Traffic<'_> {
    /// A window of `seconds` of the trace's first line, before the canary
    /// has any traffic (the baseline): no change of the trace applies yet.
    fn draw_first(&mut self, seconds: f64) -> Window {
        let first = *self.trace.at(0.0);
        let exact = first.rps * seconds + self.carry;
        let n = exact.floor() as u64;
        self.carry = exact - n as f64;
        Window {
            seconds,
            stable: draw_arm(&mut self.rng, n, &first.primary),
            ..Window::default()
        }
    }
}

/// Subtracts cumulative arms (Prometheus samples) `before` from `after`.
fn difference(after: &Window, before: &Window) -> Window {
    let arm = |a: &Arm, b: &Arm| {
        let mut out = Arm {
            requests: a.requests - b.requests,
            failures: a.failures - b.failures,
            buckets: a.buckets.clone(),
        };
        for (le, count) in &mut out.buckets {
            let old = b
                .buckets
                .iter()
                .find(|(x, _)| x.to_bits() == le.to_bits())
                .map(|x| x.1)
                .unwrap_or(0.0);
            *count -= old;
        }
        out
    };
    Window {
        stable: arm(&after.stable, &before.stable),
        canary: arm(&after.canary, &before.canary),
        canary_match: arm(&after.canary_match, &before.canary_match),
        canary_mirror: arm(&after.canary_mirror, &before.canary_mirror),
        baseline: arm(&after.baseline, &before.baseline),
        seconds: 0.0,
    }
}

/// Prometheus as the simulated gate sees it: cumulative counters, sampled
/// every `scrape` seconds from `phase`.
struct Sampled {
    scrape: f64,
    floor: f64,
    phase: f64,
    cumulative: Window,
    samples: Vec<(f64, Window)>,
    last_end: Option<f64>,
}

impl Sampled {
    /// Adds traffic that ended at `now`, sampling at every sample time passed.
    fn add(&mut self, window: &Window, began: f64, now: f64) {
        let before = ((began - self.phase) / self.scrape).floor();
        let after = ((now - self.phase) / self.scrape).floor();
        for arm in [
            (&mut self.cumulative.stable, &window.stable),
            (&mut self.cumulative.canary, &window.canary),
            (&mut self.cumulative.canary_mirror, &window.canary_mirror),
            (&mut self.cumulative.baseline, &window.baseline),
        ] {
            arm.0.add(arm.1);
        }
        if after > before {
            self.samples.push((now, self.cumulative.clone()));
            // Only the newest sample at or before the last judged window's
            // end is needed (the next window starts there), however many
            // scrapes a long window spans.
            if let Some(end) = self.last_end {
                let older = self
                    .samples
                    .iter()
                    .filter(|(t, _)| *t <= end + 1e-9)
                    .count();
                self.samples.drain(..older.saturating_sub(1));
            }
        }
    }

    fn latest(&self, at: f64) -> Window {
        self.samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= at + 1e-9)
            .map(|(_, w)| w.clone())
            .unwrap_or_default()
    }

    /// The window since the last judged one, once it spans the floor.
    fn window(&mut self, now: f64) -> Option<Window> {
        let start = *self.last_end.get_or_insert(now);
        if now - start + 1e-9 < self.floor {
            return None;
        }
        let mut w = difference(&self.latest(now), &self.latest(start));
        w.finish();
        w.seconds = now - start;
        self.last_end = Some(now);
        Some(w)
    }
}

/// One release, start to decision.
pub fn run_one(sc: &Scenario, run: u64) -> RunResult {
    let plan = &sc.plan;
    let trace = &sc.traces[(run % sc.traces.len() as u64) as usize];
    let mut rng = SmallRng::seed_from_u64(run_seed(sc.seed, run));
    let phase_offset = rng.random::<f64>();
    let mut traffic = Traffic {
        trace,
        rng,
        carry: 0.0,
        split_counted: 0,
        split_weight: 0,
        mirror_percent: plan
            .traffic
            .mirror
            .as_ref()
            .map(|m| m.percent)
            .unwrap_or(0.0),
        mirror_carry: 0.0,
        baseline_arm: matches!(plan.strategy, Strategy::Canary)
            && plan.gate.settings().is_some_and(|g| g.baseline_arm),
    };
    let blue_green = matches!(plan.strategy, Strategy::BlueGreen { .. });
    let mut sampled = match sc.provider {
        SimProvider::Proxy => None,
        SimProvider::Prometheus {
            scrape_secs,
            window_secs,
        } => Some(Sampled {
            scrape: scrape_secs,
            floor: window_secs,
            phase: phase_offset * scrape_secs,
            cumulative: Window::default(),
            samples: Vec::new(),
            last_end: None,
        }),
    };
    let dt = plan.tick_interval().as_secs_f64();
    let mirrors = blue_green && traffic.mirror_percent > 0.0;
    let limit = sc.horizon.as_secs_f64() + plan.baseline().as_secs_f64();
    let mut now = 0.0;
    let mut status: Option<Status> = None;
    let mut first_canary_at: Option<f64> = None;
    let mut gate: Option<GateState> = None;
    let mut analysis: Option<Analysis> = None;
    let mut max_weight_bp = 0u32;
    let end = |outcome, now: f64, first: Option<f64>, max_bp: u32, reason: String| RunResult {
        run,
        outcome,
        seconds: now - first.unwrap_or(now),
        max_weight: f64::from(max_bp) / 100.0,
        reason,
    };
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
        let weight_changed = t.actions.iter().any(|a| matches!(a, Action::SetWeight(_)));
        let s = t.status;
        max_weight_bp = max_weight_bp.max(s.canary_weight_bp);
        match s.phase {
            Phase::Promoting | Phase::Succeeded => {
                let outcome = if s.message.contains("promoted undecided") {
                    Outcome::PromotedUndecided
                } else {
                    Outcome::Promoted
                };
                return end(outcome, now, first_canary_at, max_weight_bp, s.message);
            }
            Phase::Failed => {
                let outcome = if s.message.contains("deadline")
                    || s.message.contains("maximum release duration")
                {
                    Outcome::RolledBackUndecided
                } else {
                    Outcome::RolledBack
                };
                return end(outcome, now, first_canary_at, max_weight_bp, s.message);
            }
            Phase::Concluded => {
                return end(
                    Outcome::Concluded,
                    now,
                    first_canary_at,
                    max_weight_bp,
                    s.message,
                );
            }
            _ => {}
        }
        if now > limit {
            return end(
                Outcome::Held,
                now,
                first_canary_at,
                max_weight_bp,
                s.message,
            );
        }
        let measures = s.phase.measures();
        let baseline = s.phase == Phase::Initializing;
        let weight = s.canary_weight_bp;
        status = Some(s);
        if !measures {
            // Initialized moves on at once in a simulation.
            continue;
        }
        if weight_changed && let Some(p) = sampled.as_mut() {
            // The provider starts a new window at a weight change.
            p.last_end = Some(now);
        }
        // The canary's first request: its first share of the split, or of
        // the stable's traffic mirrored to it (blue/green).
        if first_canary_at.is_none() && !baseline && (weight > 0 || mirrors) {
            first_canary_at = Some(now);
        }
        let drawn = match first_canary_at {
            // Trace time: seconds since the canary's first request.
            Some(first) => traffic.draw(now - first, dt, weight, blue_green),
            // The baseline, before it: the trace's first line throughout.
            None => traffic.draw_first(dt),
        };
        let began = now;
        now += dt;
        let window = match sampled.as_mut() {
            None => Some(drawn),
            Some(p) => {
                p.add(&drawn, began, now);
                p.window(now)
            }
        };
        analysis = Some(match &plan.gate {
            Gate::Sequential(settings) => match window {
                None => crate::provider::all_inconclusive(
                    plan,
                    "this window is shorter than Prometheus needs",
                ),
                Some(w) => crate::provider::judge_sequential(
                    plan,
                    settings,
                    &mut gate,
                    w,
                    weight,
                    baseline,
                    Vec::new(),
                ),
            },
            Gate::Threshold => match window {
                Some(w) if !baseline => crate::provider::analyse_window(plan, &w),
                _ => crate::provider::all_inconclusive(plan, "no window yet"),
            },
        });
    }
}

/// Every run of a scenario, summarised (runs spread over the machine's cores).
pub fn simulate(sc: &Scenario) -> (Summary, Vec<RunResult>) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(sc.runs.max(1) as usize) as u64;
    let mut results: Vec<RunResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                scope.spawn(move || {
                    (0..u64::from(sc.runs))
                        .filter(|r| r % threads == thread)
                        .map(|r| run_one(sc, r))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    results.sort_by_key(|r| r.run);
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
    let summary = Summary {
        runs: sc.runs,
        promoted: count(Outcome::Promoted),
        promoted_undecided: count(Outcome::PromotedUndecided),
        rolled_back: count(Outcome::RolledBack) + count(Outcome::RolledBackUndecided),
        rolled_back_on_evidence: count(Outcome::RolledBack),
        rolled_back_undecided: count(Outcome::RolledBackUndecided),
        held: count(Outcome::Held),
        concluded: count(Outcome::Concluded),
        time_to_promotion: times(&|o| matches!(o, Outcome::Promoted | Outcome::PromotedUndecided)),
        time_to_rollback: times(&|o| {
            matches!(o, Outcome::RolledBack | Outcome::RolledBackUndecided)
        }),
    };
    (summary, results)
}

/// The summary as a table for people.
pub fn table(sc: &Scenario, summary: &Summary) -> String {
    use std::fmt::Write as _;
    let plan = &sc.plan;
    let mut out = String::new();
    let steps: Vec<String> = plan
        .steps_bp
        .iter()
        .map(|b| format!("{}", f64::from(*b) / 100.0))
        .collect();
    let fmt = sluice_proxy::config::format_duration;
    let gate = match plan.gate.settings() {
        Some(g) => format!(
            "sequential gate (alpha {}, beta {}, rho0 {}, rho-max {}), a scrape every {}, steps of at least {}, baseline {}, warm-up {}, incident allowance {}",
            g.alpha,
            g.beta,
            g.rho0,
            g.rho_max,
            fmt(plan.scrape_interval),
            fmt(plan.interval),
            fmt(g.baseline),
            fmt(g.warmup),
            fmt(g.incident_allowance)
        ),
        None => format!(
            "threshold gate, a tick every {}, failure limit {}",
            fmt(plan.interval),
            plan.failure_limit
        ),
    };
    let _ = writeln!(
        out,
        "{} releases, steps {}%: {gate}",
        summary.runs,
        steps.join(",")
    );
    if let [only] = sc.traces.as_slice()
        && let [seg] = only.segments.as_slice()
    {
        let arm = |a: &ArmTraffic| {
            format!(
                "{:.2}% failures{}{}, lognormal median {}ms sigma {}{}",
                a.fail * 100.0,
                if a.clump > 1 {
                    format!(" in clumps of {}", a.clump)
                } else {
                    String::new()
                },
                if a.dispersion > 1.0 {
                    format!(" (dispersion {})", a.dispersion)
                } else {
                    String::new()
                },
                a.median_ms,
                a.sigma,
                if a.add_ms > 0.0 {
                    format!(" +{}ms", a.add_ms)
                } else {
                    String::new()
                }
            )
        };
        let _ = writeln!(out, "{} req/s", seg.rps);
        let _ = writeln!(out, "primary: {}", arm(&seg.primary));
        let _ = writeln!(out, "canary:  {}", arm(&seg.canary));
        if plan.gate.settings().is_some_and(|g| g.baseline_arm) {
            let _ = writeln!(
                out,
                "baseline arm: {} (the canary's share)",
                arm(&seg.baseline)
            );
        }
    } else {
        let _ = writeln!(
            out,
            "traffic: {} trace(s), run r replays trace r mod {}",
            sc.traces.len(),
            sc.traces.len()
        );
    }
    let _ = writeln!(
        out,
        "\n{:<30} {:>6} {:>8}   {:>8} {:>8} {:>8} {:>8}",
        "outcome", "runs", "share", "p50", "p90", "p99", "max"
    );
    let row = |out: &mut String, name: &str, n: u32, t: Option<&Times>| {
        let share = 100.0 * f64::from(n) / f64::from(summary.runs.max(1));
        let cell = |v: Option<f64>| v.map(|v| format!("{v:.0}s")).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{name:<30} {n:>6} {share:>7.1}%   {:>8} {:>8} {:>8} {:>8}",
            cell(t.map(|t| t.p50)),
            cell(t.map(|t| t.p90)),
            cell(t.map(|t| t.p99)),
            cell(t.map(|t| t.max))
        );
    };
    row(
        &mut out,
        "promoted",
        summary.promoted + summary.promoted_undecided,
        summary.time_to_promotion.as_ref(),
    );
    row(
        &mut out,
        "rolled back",
        summary.rolled_back,
        summary.time_to_rollback.as_ref(),
    );
    if summary.rolled_back_undecided > 0 {
        row(
            &mut out,
            "  of which for lack of evidence",
            summary.rolled_back_undecided,
            None,
        );
    }
    if summary.held > 0 {
        row(&mut out, "held for a person", summary.held, None);
    }
    if summary.concluded > 0 {
        row(&mut out, "concluded (experiment)", summary.concluded, None);
    }
    let _ = writeln!(
        out,
        "\ntimes are from the first canary request; seed {}",
        sc.seed
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> SmallRng {
        SmallRng::seed_from_u64(seed)
    }

    #[test]
    fn binomial_draws_have_the_right_mean_and_bounds() {
        let mut rng = rng(3);
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
    fn lognormal_durations_have_their_median_and_tail() {
        let a = ArmTraffic {
            median_ms: 20.0,
            sigma: 0.5,
            add_ms: 50.0,
            ..ArmTraffic::default()
        };
        let arm = draw_arm(&mut rng(9), 100_000, &a);
        // Nothing under the added 50 ms; half under 70 ms.
        assert_eq!(arm.slower_than(0.05), Some(100_000.0));
        let under_70 = 100_000.0 - arm.slower_than(0.07).unwrap();
        assert!((under_70 - 50_000.0).abs() < 1_000.0, "{under_70}");
        // The p99 of the lognormal part is 20·e^{2.326·0.5} = 64 ms: about
        // 1% over 114 ms, and 0.6% over the 120 ms bound.
        let over_120 = arm.slower_than(0.12).unwrap();
        assert!((over_120 - 620.0).abs() < 150.0, "{over_120}");
    }

    #[test]
    fn clumps_and_dispersion_keep_the_mean_and_raise_the_variance() {
        let mut rng = rng(5);
        let stats = |a: &ArmTraffic, rng: &mut SmallRng| {
            let xs: Vec<f64> = (0..4000).map(|_| draw_arm(rng, 800, a).failures).collect();
            let mean = xs.iter().sum::<f64>() / xs.len() as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
            (mean, var)
        };
        let plain = ArmTraffic::default();
        let (m, v) = stats(&plain, &mut rng);
        assert!(
            (m - 8.0).abs() < 0.3 && (v / 7.92 - 1.0).abs() < 0.15,
            "{m} {v}"
        );
        let clumped = ArmTraffic { clump: 3, ..plain };
        let (m, v) = stats(&clumped, &mut rng);
        assert!(
            (m - 8.0).abs() < 0.4 && (v / 7.92 - 3.0).abs() < 0.5,
            "{m} {v}"
        );
        // A window shorter than a clump: its requests fail together.
        let long_clumps = ArmTraffic {
            clump: 10,
            fail: 0.05,
            ..plain
        };
        let xs: Vec<f64> = (0..20_000)
            .map(|_| draw_arm(&mut rng, 2, &long_clumps).failures)
            .collect();
        assert!(xs.iter().all(|x| *x == 0.0 || *x == 2.0), "{xs:?}");
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.1).abs() < 0.02, "{mean}");
        let dispersed = ArmTraffic {
            dispersion: 8.0,
            ..plain
        };
        let (m, v) = stats(&dispersed, &mut rng);
        assert!(
            (m - 8.0).abs() < 0.5 && (v / 7.92 - 8.0).abs() < 1.6,
            "{m} {v}"
        );
    }

    /// A Prometheus window longer than 64 scrapes is the traffic of that
    /// window, not everything since the first sample (the samples it
    /// starts from were once dropped after 64, silently).
    #[test]
    fn a_prometheus_window_of_many_scrapes_counts_only_its_own_traffic() {
        let mut sampled = Sampled {
            scrape: 1.0,
            floor: 100.0,
            phase: 0.5,
            cumulative: Window::default(),
            samples: Vec::new(),
            last_end: None,
        };
        let mut one = Window::default();
        one.stable.requests = 1.0;
        let mut judged = Vec::new();
        for second in 1..=400 {
            let now = f64::from(second);
            sampled.add(&one, now - 1.0, now);
            if second % 10 == 0
                && let Some(w) = sampled.window(now)
            {
                judged.push(w.stable.requests);
            }
        }
        // The first call only marks the start; then one window of 100 s
        // (100 scrapes, one request each) every 100 s.
        assert_eq!(judged, vec![100.0, 100.0, 100.0]);
        assert!(sampled.samples.len() <= 102, "{}", sampled.samples.len());
    }

    /// A scenario of 400 req/s, steps 10,25,50 of a minute, 2 s scrapes,
    /// with the given trace text and a baseline arm or not.
    fn scenario(trace: &str, baseline_arm: bool, runs: u32) -> Scenario {
        let mut settings = crate::gate::GateSettings::default();
        if baseline_arm {
            settings.use_baseline_arm(false);
        }
        let first = Segment {
            t: 0.0,
            rps: 400.0,
            primary: ArmTraffic::default(),
            canary: ArmTraffic::default(),
            baseline: ArmTraffic::default(),
        };
        Scenario {
            plan: Plan {
                steps_bp: vec![1000, 2500, 5000],
                gate: Gate::Sequential(settings),
                ..Plan::default()
            },
            traces: vec![Trace::parse(trace, "test.jsonl", first).unwrap()],
            provider: SimProvider::Proxy,
            runs,
            seed: 3,
            horizon: Duration::from_secs(30 * 60),
        }
    }

    #[test]
    fn the_baseline_arm_gets_exactly_the_canarys_count_of_every_window() {
        let sc = scenario(r#"{"t": 0, "rps": 333}"#, true, 1);
        let mut traffic = Traffic {
            trace: &sc.traces[0],
            rng: rng(1),
            carry: 0.0,
            split_counted: 0,
            split_weight: 0,
            mirror_percent: 0.0,
            mirror_carry: 0.0,
            baseline_arm: true,
        };
        let mut t = 0.0;
        for (weight, windows) in [(1000u32, 7), (2500, 5), (5000, 4), (3333, 9)] {
            let (mut canary, mut baseline, mut total) = (0.0, 0.0, 0.0);
            for _ in 0..windows {
                let w = traffic.draw(t, 1.3, weight, false);
                t += 1.3;
                assert!(
                    (w.baseline.requests - w.canary.requests).abs() <= 1.0,
                    "at {weight}bp: {} vs {}",
                    w.baseline.requests,
                    w.canary.requests
                );
                canary += w.canary.requests;
                baseline += w.baseline.requests;
                total += w.canary.requests + w.baseline.requests + w.stable.requests;
                // After any window, since the weight was set: the baseline
                // arm floor(N·w/W), the canary that or one more.
                let exact = (total as u64 * u64::from(weight) / 10_000) as f64;
                assert_eq!(baseline, exact, "at {weight}bp after {total}");
                assert!(canary == exact || canary == exact + 1.0, "at {weight}bp");
            }
        }
        // Without a baseline arm nothing is drawn for it.
        traffic.baseline_arm = false;
        let w = traffic.draw(t, 2.0, 2500, false);
        assert_eq!(w.baseline, Arm::default());
        assert!(w.canary.requests > 0.0);
    }

    #[test]
    fn a_cold_baseline_arm_cancels_a_cold_canary_and_a_warm_one_does_not() {
        // Canary 3x slower for its first 10 s; the baseline arm as cold, or not.
        let both_cold = r#"{"t": 0, "canary": {"median_ms": 60}, "baseline": {"median_ms": 60}}
{"t": 10, "canary": {"median_ms": 20}, "baseline": {"median_ms": 20}}"#;
        let canary_cold = r#"{"t": 0, "canary": {"median_ms": 60}}
{"t": 10, "canary": {"median_ms": 20}}"#;
        let (summary, runs) = simulate(&scenario(both_cold, true, 40));
        assert_eq!(summary.rolled_back, 0, "{runs:?}");
        assert_eq!(summary.promoted, 40);
        // Against a warm baseline arm, with no warm-up, the cold canary is
        // judged slower (the same gate, so the comparison can fail).
        let (summary, _) = simulate(&scenario(canary_cold, true, 40));
        assert!(summary.rolled_back >= 36, "{summary:?}");
    }

    #[test]
    fn a_run_reports_the_highest_weight_it_reached() {
        // Steps 10, 25, 50: a healthy canary promoted reached the last; one
        // failing half its requests is rolled back at the first.
        let (summary, runs) = simulate(&scenario(r#"{"t": 0}"#, false, 4));
        assert_eq!(summary.promoted, 4, "{runs:?}");
        assert!(runs.iter().all(|r| r.max_weight == 50.0), "{runs:?}");
        let (summary, runs) = simulate(&scenario(r#"{"t": 0, "canary": {"fail": 0.5}}"#, false, 4));
        assert_eq!(summary.rolled_back, 4, "{runs:?}");
        assert!(runs.iter().all(|r| r.max_weight == 10.0), "{runs:?}");
    }

    #[test]
    fn a_run_with_a_baseline_arm_is_the_same_alone_or_among_others() {
        // Each run's draws come from its own (seed, run) state, whatever
        // else ran, and the extra arm draws from that state too.
        let sc = scenario(r#"{"t": 0, "canary": {"fail": 0.015}}"#, true, 12);
        let (_, all) = simulate(&sc);
        for run in [0u64, 5, 11] {
            assert_eq!(run_one(&sc, run), all[run as usize]);
        }
        let distinct: std::collections::BTreeSet<String> = all
            .iter()
            .map(|r| format!("{:?}{}", r.outcome, r.seconds))
            .collect();
        assert!(distinct.len() > 1, "every run ended the same: {all:?}");
    }

    #[test]
    fn runs_of_one_seed_are_independent() {
        // The first draws of neighbouring runs share nothing, at any offset
        // (SplitMix64 seeded `seed ^ r·G` made run r+2 replay run r two
        // draws later).
        let draws = |run: u64| -> Vec<u64> {
            let mut r = SmallRng::seed_from_u64(run_seed(1, run));
            (0..64).map(|_| r.random::<u64>()).collect()
        };
        for run in 0..50 {
            let a = draws(run);
            for other in run + 1..run + 4 {
                let b = draws(other);
                assert!(
                    a.iter().all(|x| !b.contains(x)),
                    "runs {run} and {other} share draws"
                );
            }
        }
        // And their failure counts are uncorrelated across many runs.
        let first_counts: Vec<(f64, f64)> = (0..2000u64)
            .map(|run| {
                let mut a = SmallRng::seed_from_u64(run_seed(7, run));
                let mut b = SmallRng::seed_from_u64(run_seed(7, run + 1));
                let arm = ArmTraffic::default();
                (
                    draw_arm(&mut a, 400, &arm).failures,
                    draw_arm(&mut b, 400, &arm).failures,
                )
            })
            .collect();
        let n = first_counts.len() as f64;
        let (mx, my) = first_counts
            .iter()
            .fold((0.0, 0.0), |acc, (x, y)| (acc.0 + x / n, acc.1 + y / n));
        let cov = first_counts
            .iter()
            .map(|(x, y)| (x - mx) * (y - my))
            .sum::<f64>()
            / n;
        let var = |f: &dyn Fn(&(f64, f64)) -> f64, m: f64| {
            first_counts.iter().map(|p| (f(p) - m).powi(2)).sum::<f64>() / n
        };
        let corr = cov / (var(&|p| p.0, mx) * var(&|p| p.1, my)).sqrt();
        assert!(corr.abs() < 0.08, "correlation {corr}");
    }
}
