//! The sequential gate: the canary judged against the primary, continuously,
//! with error rates that hold at every look.
//!
//! Both arms are counted by the same proxy at the same time. For each kind
//! of bad event (failures, and requests slower than a latency bound `T`),
//! every scrape gives weighted-traffic deltas per arm: requests `n_c`, `n_s`
//! and events `e_c`, `e_s`.
//!
//! **Model.** Events in each arm are Poisson with the canary's rate per
//! request `ρ` times the primary's. Given `k = e_c + e_s` events in a scrape,
//! `e_c ~ Binomial(k, θ(ρ))` with `θ(ρ) = ρ·n_c / (ρ·n_c + n_s)`. This uses
//! the split as it was in that scrape, so changing weights are fine, and the
//! primary's own level (an incident, a load spike hitting both) cancels out.
//!
//! **Fail side.** `M = Σ_j π_j Π_scrapes [θ(ρ_j)/θ(ρ₀)]^{e_c} [(1−θ(ρ_j))/(1−θ(ρ₀))]^{e_s}`
//! over a grid `ρ_j > ρ₀` ([`FAIL_GRID`] times `ρ₀`, equal weights). For
//! any true `ρ ≤ ρ₀` each factor has expectation `(θ θ_j/θ₀ + (1−θ)(1−θ_j)/(1−θ₀))^k ≤ 1`
//! (it is 1 at `θ = θ₀` and increases with `θ`), so `M` is a nonnegative
//! supermartingale and, by Ville's inequality, `P(ever M ≥ 1/α') ≤ α'`,
//! whenever the gate looks and however long it runs. The check fails, at
//! once, when `M ≥ m/α` (`m` checks share `α`: Bonferroni).
//!
//! **Pass side.** The mirror image: against `ρ ≥ ρ_max`, alternatives
//! [`PASS_GRID`] times `ρ_max`, all below it. A canary at least `ρ_max` times
//! worse passes with probability at most `β/2`. With few events there is
//! little ratio information, so a check also passes when the canary's own
//! event rate is shown to be under the absolute floor: the same construction
//! on the canary's requests alone, `Π (p'/f)^{e_c} ((1−p')/(1−f))^{n_c−e_c}`
//! mixed over `p'` in [`FLOOR_GRID`] times the floor `f`, a supermartingale
//! whenever the rate is `≥ f` (a beta-binomial-style confidence sequence).
//! It passes at `2/β`, so a canary that is both `ρ_max` times worse and over
//! the floor is promoted with probability at most `β` per check.
//!
//! **Bernoulli requests.** Real requests fail one by one, so given `k` the
//! canary's share is hypergeometric, not binomial. With `ρ₀ = 1` its mean is
//! the same and it is smaller in convex order (Hoeffding, 1963), so the
//! likelihood ratio (convex in `e_c`) still has expectation at most 1: the
//! bound holds. For `ρ₀ ≠ 1` it holds to the first order in the event rate.
//!
//! **Latency.** The same test runs on the requests slower than each bound
//! `T` (a bucket bound: `count(+Inf) − count(le=T)`). Without a configured
//! bound, `T` is the bucket bound just above the primary's p99 measured on
//! the first [`LEARN_REQUESTS`] primary requests of the release, and at
//! least [`MIN_LEARNT_BOUND`].
//!
//! The evidence (log-likelihood sums per grid point) is plain data kept in
//! the release's status, so it survives restarts and weight steps.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::analysis::{Analysis, CheckResult, EvidenceReport, Outcome};
use crate::counters::{Arm, Window};

/// Fail-side alternatives, as multiples of `ρ₀`.
pub const FAIL_GRID: [f64; 7] = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
/// Pass-side alternatives, as multiples of `ρ_max`.
pub const PASS_GRID: [f64; 6] = [0.8, 0.67, 0.5, 0.33, 0.2, 0.1];
/// Absolute-floor alternatives, as multiples of the floor.
pub const FLOOR_GRID: [f64; 5] = [0.5, 0.25, 0.1, 0.05, 0.01];
/// Primary requests measured before an automatic latency bound is fixed.
pub const LEARN_REQUESTS: f64 = 500.0;
/// The lowest bound learnt automatically (a bucket bound): below it,
/// differences are connection set-up and scheduling noise (a canary's pool
/// is colder than the primary's), not what a release is judged on.
pub const MIN_LEARNT_BOUND: f64 = 0.01;
/// The share of requests a learnt bound (the bucket just above the
/// primary's p99) lets through: what a blue/green soak holds the new
/// version to at least, on such a bound (see [`SoakEvidence`]).
pub const LEARNT_BOUND_SHARE: f64 = 0.01;

/// What a user tunes (flags and `sluice.dev/*` annotations).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateSettings {
    /// Chance of rolling back a canary no worse than `ρ₀` times the primary.
    pub alpha: f64,
    /// Chance of promoting a canary `ρ_max` times worse (and over the floor).
    pub beta: f64,
    /// The ratio to the primary's rate still counted as "not worse".
    pub rho0: f64,
    /// A canary this many times worse must not be promoted.
    pub rho_max: f64,
    /// An event rate below this counts as fine whatever the primary does.
    pub failure_floor: f64,
    /// Latency bounds (bucket bounds); empty: one, learnt from the primary.
    #[serde(with = "durations_text")]
    pub latency_bounds: Vec<Duration>,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            alpha: 0.01,
            beta: 0.05,
            rho0: 1.0,
            rho_max: 1.5,
            failure_floor: 0.001,
            latency_bounds: Vec::new(),
        }
    }
}

mod durations_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> = d
            .iter()
            .map(|d| sluice_proxy::config::format_duration(*d))
            .collect();
        serde::Serialize::serialize(&texts, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| sluice_proxy::config::parse_duration(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

impl GateSettings {
    /// Checks the values; errors name the setting (`name` maps a field to
    /// its flag or annotation).
    pub fn validate(&self, name: impl Fn(&str) -> String) -> Result<(), String> {
        let prob = |v: f64| v.is_finite() && v > 0.0 && v < 0.5;
        if !prob(self.alpha) {
            return Err(format!(
                "{}: {} is not in (0, 0.5)",
                name("alpha"),
                self.alpha
            ));
        }
        if !prob(self.beta) {
            return Err(format!(
                "{}: {} is not in (0, 0.5)",
                name("beta"),
                self.beta
            ));
        }
        if !(self.rho0.is_finite() && self.rho0 > 0.0) {
            return Err(format!("{}: {} must be above 0", name("rho0"), self.rho0));
        }
        if !(self.rho_max.is_finite() && self.rho_max > self.rho0) {
            return Err(format!(
                "{}: {} must be above {} ({}={})",
                name("rho_max"),
                self.rho_max,
                self.rho0,
                name("rho0"),
                self.rho0
            ));
        }
        if !(self.failure_floor.is_finite() && self.failure_floor > 0.0 && self.failure_floor < 1.0)
        {
            return Err(format!(
                "{}: {} is not a fraction in (0, 1)",
                name("failure_floor"),
                self.failure_floor
            ));
        }
        for b in &self.latency_bounds {
            crate::plan::check_bucket_bound(*b)
                .map_err(|e| format!("{}: {e}", name("latency_bounds")))?;
        }
        Ok(())
    }

    /// How many checks share `α`.
    fn checks(&self) -> usize {
        1 + self.latency_bounds.len().max(1)
    }

    /// `ln(m/α)`: the fail side's threshold on the log mixture.
    pub fn fail_threshold(&self) -> f64 {
        (self.checks() as f64 / self.alpha).ln()
    }

    /// `ln(2/β)`: the pass side's threshold (ratio and floor share `β`).
    pub fn pass_threshold(&self) -> f64 {
        (2.0 / self.beta).ln()
    }
}

// === impl Evidence ===

/// Accumulated evidence about one kind of bad event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Log-likelihood ratio sums per [`FAIL_GRID`] point.
    pub fail: Vec<f64>,
    /// Per [`PASS_GRID`] point.
    pub pass: Vec<f64>,
    /// Per [`FLOOR_GRID`] point.
    pub floor: Vec<f64>,
    pub canary_requests: f64,
    pub canary_events: f64,
    pub stable_requests: f64,
    pub stable_events: f64,
}

/// `ln(Σ exp(x_i) / len)`: the log of an equal-weight mixture.
fn log_mean_exp(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let max = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    let sum: f64 = xs.iter().map(|x| (x - max).exp()).sum();
    max + (sum / xs.len() as f64).ln()
}

/// `a·ln(x)` with `0·ln(0) = 0`.
fn xlogy(a: f64, x: f64) -> f64 {
    if a == 0.0 { 0.0 } else { a * x.ln() }
}

impl Evidence {
    fn new() -> Self {
        Self {
            fail: vec![0.0; FAIL_GRID.len()],
            pass: vec![0.0; PASS_GRID.len()],
            floor: vec![0.0; FLOOR_GRID.len()],
            ..Self::default()
        }
    }

    /// Adds one scrape: `n_c`, `e_c` canary requests and events, `n_s`, `e_s`
    /// the primary's.
    pub fn observe(&mut self, s: &GateSettings, n_c: f64, e_c: f64, n_s: f64, e_s: f64) {
        let (n_c, n_s) = (n_c.max(0.0), n_s.max(0.0));
        let e_c = e_c.clamp(0.0, n_c);
        let e_s = e_s.clamp(0.0, n_s);
        self.canary_requests += n_c;
        self.canary_events += e_c;
        self.stable_requests += n_s;
        self.stable_events += e_s;
        if n_c > 0.0 {
            let f = s.failure_floor;
            for (acc, m) in self.floor.iter_mut().zip(FLOOR_GRID) {
                let p = f * m;
                *acc += xlogy(e_c, p / f) + xlogy(n_c - e_c, (1.0 - p) / (1.0 - f));
            }
        }
        if n_c == 0.0 || n_s == 0.0 || e_c + e_s == 0.0 {
            return;
        }
        let theta = |rho: f64| rho * n_c / (rho * n_c + n_s);
        let ratio = |rho_alt: f64, rho_null: f64| {
            let (ta, tn) = (theta(rho_alt), theta(rho_null));
            xlogy(e_c, ta / tn) + xlogy(e_s, (1.0 - ta) / (1.0 - tn))
        };
        for (acc, m) in self.fail.iter_mut().zip(FAIL_GRID) {
            *acc += ratio(s.rho0 * m, s.rho0);
        }
        for (acc, m) in self.pass.iter_mut().zip(PASS_GRID) {
            *acc += ratio(s.rho_max * m, s.rho_max);
        }
    }

    /// `ln M` of the fail side.
    pub fn fail_statistic(&self) -> f64 {
        log_mean_exp(&self.fail)
    }

    /// `ln` of the pass side: the better of the ratio and floor mixtures.
    pub fn pass_statistic(&self) -> f64 {
        log_mean_exp(&self.pass).max(log_mean_exp(&self.floor))
    }

    /// The canary's events per request over the primary's (None without data).
    pub fn observed_ratio(&self) -> Option<f64> {
        let c = self.canary_events / self.canary_requests;
        let s = self.stable_events / self.stable_requests;
        (self.canary_requests > 0.0 && self.stable_requests > 0.0 && s > 0.0).then(|| c / s)
    }
}

// === impl GateState ===

/// Evidence for one latency bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyEvidence {
    /// The bound in seconds (a bucket bound).
    pub bound: f64,
    /// Whether it was learnt from the primary's p99 (not configured).
    pub learnt: bool,
    pub evidence: Evidence,
}

/// Everything the gate remembers about a release; kept in its status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GateState {
    pub errors: Evidence,
    pub latency: Vec<LatencyEvidence>,
    /// The primary's cumulative buckets while a bound is being learnt.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::counters::buckets_text"
    )]
    pub learning: Vec<(f64, f64)>,
    /// Weight of the step the exposure is counted for, and its canary requests.
    pub step_weight_bp: u32,
    pub step_canary_requests: f64,
    /// The canary's traffic since the step began (what ceilings judge).
    #[serde(default)]
    pub step_canary: Arm,
    /// Scrapes observed.
    pub scrapes: u64,
    /// Both arms' traffic over the whole release (an experiment's report;
    /// the primary's rates a blue/green soak is judged against).
    #[serde(default)]
    pub total_stable: Arm,
    #[serde(default)]
    pub total_canary: Arm,
    /// Blue/green after the switch: the new version against the primary's
    /// rates from before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakEvidence>,
}

/// A blue/green soak's evidence. With all traffic on the new version there
/// is no primary traffic to compare with at the same time, so its failures
/// (and slow requests) are tested against the primary's rates measured
/// before the switch, `r`: a mixture of Poisson likelihood ratios
/// `Π m^{e} e^{-n·ρ₀·r·(m−1)}` over the same grid. For Bernoulli requests at
/// a rate `q ≤ ρ₀·r` each factor has expectation `1 + q(m−1)` times
/// `e^{-ρ₀·r·(m−1)} ≤ 1`, so Ville's inequality bounds false rollbacks by
/// α as in the two-arm test, given the reference rate.
///
/// On a latency bound learnt from the primary (its p99 bucket), the
/// reference is at least [`LEARNT_BOUND_SHARE`]: the new version keeps its
/// p99 under the primary's. A two-arm test cancels noise both arms share
/// (a busy node, a GC pause in the proxy); a soak cannot, and a reference
/// of a few hundredths of a percent would roll back a healthy version on
/// the first such hiccup. A configured bound keeps the measured share.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakEvidence {
    /// The primary's failure rate before the switch.
    pub reference_failure_rate: f64,
    pub errors: Evidence,
    /// Per latency bound: the primary's share of slower requests, and the
    /// evidence.
    pub latency: Vec<(f64, f64, Evidence)>,
}

/// The mode of a tick's observation, by strategy and weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arms {
    /// Weighted (and sticky) canary traffic against the primary's.
    Weighted,
    /// Mirrored copies against the primary's traffic (blue/green before
    /// the switch).
    Mirror,
    /// Every canary request, by weight or by A/B rule (an experiment).
    AllCanary,
    /// All traffic on the new version (blue/green soak).
    Soak,
}

impl Arms {
    pub fn of(strategy: &crate::plan::Strategy, weight_bp: u32) -> Self {
        use crate::plan::Strategy;
        match strategy {
            Strategy::Canary => Arms::Weighted,
            Strategy::BlueGreen { .. } if weight_bp == 0 => Arms::Mirror,
            Strategy::BlueGreen { .. } => Arms::Soak,
            Strategy::Experiment { .. } => Arms::AllCanary,
        }
    }

    /// The window as the gate judges it in this mode.
    pub fn select(self, mut window: Window) -> Window {
        match self {
            Arms::Weighted | Arms::Soak => {}
            Arms::Mirror => window.canary = std::mem::take(&mut window.canary_mirror),
            Arms::AllCanary => {
                let matched = window.canary_match.clone();
                window.canary.add(&matched);
            }
        }
        window
    }
}

/// `rate` with one pseudo-event, so a primary that never failed in the
/// sample still has a positive reference.
fn smoothed_rate(events: f64, requests: f64) -> f64 {
    (events + 0.5) / (requests + 1.0)
}

impl Evidence {
    /// Adds one scrape of the new version alone against a reference rate
    /// (see [`SoakEvidence`]).
    fn observe_against(&mut self, s: &GateSettings, n_c: f64, e_c: f64, reference: f64) {
        let n_c = n_c.max(0.0);
        let e_c = e_c.clamp(0.0, n_c);
        self.canary_requests += n_c;
        self.canary_events += e_c;
        self.stable_requests += n_c;
        self.stable_events += n_c * reference;
        if n_c == 0.0 {
            return;
        }
        for (acc, m) in self.fail.iter_mut().zip(FAIL_GRID) {
            *acc += xlogy(e_c, m) - n_c * s.rho0 * reference * (m - 1.0);
        }
        for (acc, m) in self.pass.iter_mut().zip(PASS_GRID) {
            *acc += xlogy(e_c, m) - n_c * s.rho_max * reference * (m - 1.0);
        }
        let f = s.failure_floor;
        for (acc, m) in self.floor.iter_mut().zip(FLOOR_GRID) {
            let p = f * m;
            *acc += xlogy(e_c, p / f) + xlogy(n_c - e_c, (1.0 - p) / (1.0 - f));
        }
    }
}

impl GateState {
    pub fn new(settings: &GateSettings) -> Self {
        Self {
            errors: Evidence::new(),
            latency: settings
                .latency_bounds
                .iter()
                .map(|b| LatencyEvidence {
                    bound: b.as_secs_f64(),
                    learnt: false,
                    evidence: Evidence::new(),
                })
                .collect(),
            ..Self::default()
        }
    }

    /// Adds one blue/green soak scrape: the new version alone, against the
    /// primary's rates before the switch.
    pub fn observe_soak(&mut self, settings: &GateSettings, window: &Window, weight_bp: u32) {
        self.enter_step(weight_bp);
        let reference = &self.total_stable;
        let soak = self.soak.get_or_insert_with(|| SoakEvidence {
            reference_failure_rate: smoothed_rate(reference.failures, reference.requests),
            errors: Evidence::new(),
            latency: self
                .latency
                .iter()
                .map(|l| {
                    let total = reference.buckets.last().map(|b| b.1).unwrap_or(0.0);
                    let slow = reference.slower_than(l.bound).unwrap_or(0.0);
                    let measured = smoothed_rate(slow, total);
                    // A learnt bound is the primary's p99 bucket: the new
                    // version alone is held to that (at most 1% slower),
                    // not to the share the primary happened to show, which
                    // can be far below 1% and, with no primary traffic at
                    // the same time, cannot absorb the machine's noise.
                    let reference = if l.learnt {
                        measured.max(LEARNT_BOUND_SHARE)
                    } else {
                        measured
                    };
                    (l.bound, reference, Evidence::new())
                })
                .collect(),
        });
        let c = &window.canary;
        soak.errors.observe_against(
            settings,
            c.requests,
            c.failures,
            soak.reference_failure_rate,
        );
        for (bound, reference, evidence) in &mut soak.latency {
            let total = c.buckets.last().map(|b| b.1).unwrap_or(0.0);
            let slow = c.slower_than(*bound).unwrap_or(0.0);
            evidence.observe_against(settings, total, slow, *reference);
        }
        self.step_canary_requests += c.requests;
        self.step_canary.add(c);
        self.total_canary.add(c);
    }

    /// Counts a scrape taken at `weight_bp`; a new weight starts a new
    /// step's exposure.
    fn enter_step(&mut self, weight_bp: u32) {
        self.scrapes += 1;
        if weight_bp != self.step_weight_bp {
            self.step_weight_bp = weight_bp;
            self.step_canary_requests = 0.0;
            self.step_canary = Arm::default();
        }
    }

    /// Whether the step has the canary requests it needs.
    fn exposure_check(&self, min_requests: u64) -> CheckResult {
        let exposure = self.step_canary_requests;
        let enough = exposure >= min_requests as f64;
        CheckResult {
            name: "exposure".into(),
            outcome: if enough {
                Outcome::Pass
            } else {
                Outcome::Inconclusive
            },
            value: Some(exposure),
            threshold: format!(">= {min_requests} canary requests at this step"),
            reason: if enough {
                String::new()
            } else {
                format!("only {exposure:.0} canary requests at this step (need {min_requests})")
            },
            ..CheckResult::default()
        }
    }

    /// The checks of a soak: exposure and the tests against the primary's
    /// rates before the switch.
    pub fn soak_analysis(&self, settings: &GateSettings, min_requests: u64) -> Analysis {
        let mut checks = vec![self.exposure_check(min_requests)];
        if let Some(soak) = &self.soak {
            checks.push(sequential_check(
                "errors",
                "failures against the primary before the switch",
                &soak.errors,
                settings,
            ));
            for (bound, _, evidence) in &soak.latency {
                checks.push(sequential_check(
                    &latency_check_name(*bound),
                    "requests slower than the bound, against the primary before the switch",
                    evidence,
                    settings,
                ));
            }
        }
        Analysis {
            canary_requests: Some(self.step_canary_requests.round() as u64),
            checks,
            ab: None,
            promotable: None,
        }
    }

    /// Adds one scrape's window, taken while the canary weight was `weight_bp`.
    pub fn observe(&mut self, settings: &GateSettings, window: &Window, weight_bp: u32) {
        self.total_stable.add(&window.stable);
        self.total_canary.add(&window.canary);
        self.enter_step(weight_bp);
        let (c, s) = (&window.canary, &window.stable);
        self.step_canary_requests += c.requests;
        self.step_canary.add(c);
        self.errors
            .observe(settings, c.requests, c.failures, s.requests, s.failures);
        if settings.latency_bounds.is_empty() && self.latency.is_empty() {
            self.learn(s);
        }
        for l in &mut self.latency {
            let slow = |arm: &Arm| arm.slower_than(l.bound).unwrap_or(0.0);
            let total = |arm: &Arm| arm.buckets.last().map(|b| b.1).unwrap_or(0.0);
            l.evidence
                .observe(settings, total(c), slow(c), total(s), slow(s));
        }
    }

    /// Gathers the primary's durations until a bound can be fixed: the
    /// bucket bound just above its p99.
    fn learn(&mut self, stable: &Arm) {
        for (le, count) in &stable.buckets {
            match self
                .learning
                .iter_mut()
                .find(|(b, _)| b.to_bits() == le.to_bits())
            {
                Some(slot) => slot.1 += count,
                None => self.learning.push((*le, *count)),
            }
        }
        self.learning.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = self.learning.last().map(|b| b.1).unwrap_or(0.0);
        if total < LEARN_REQUESTS {
            return;
        }
        let rank = 0.99 * total;
        if let Some((bound, _)) = self
            .learning
            .iter()
            .find(|(b, c)| b.is_finite() && *c >= rank)
        {
            self.latency.push(LatencyEvidence {
                bound: bound.max(MIN_LEARNT_BOUND),
                learnt: true,
                evidence: Evidence::new(),
            });
        }
        self.learning.clear();
    }

    /// The checks of the evidence so far. `min_requests` is the canary
    /// exposure a step needs before the weight may advance.
    pub fn analysis(&self, settings: &GateSettings, min_requests: u64) -> Analysis {
        let mut checks = vec![self.exposure_check(min_requests)];
        checks.push(sequential_check(
            "errors",
            "failures",
            &self.errors,
            settings,
        ));
        for l in &self.latency {
            let name = latency_check_name(l.bound);
            let what = if l.learnt {
                "requests slower than the primary's p99 bound"
            } else {
                "requests slower than the bound"
            };
            checks.push(sequential_check(&name, what, &l.evidence, settings));
        }
        if self.latency.is_empty() && settings.latency_bounds.is_empty() {
            let seen = self.learning.last().map(|b| b.1).unwrap_or(0.0);
            checks.push(CheckResult {
                name: "latency".into(),
                outcome: Outcome::Pass,
                value: None,
                threshold: "learning the primary's p99".into(),
                reason: format!(
                    "not judged yet: measuring the primary's p99 ({seen:.0} of {LEARN_REQUESTS} requests)"
                ),
                evidence: Some(EvidenceReport::default()),
                ..CheckResult::default()
            });
        }
        let promotable = checks
            .iter()
            .filter_map(|c| c.evidence.as_ref())
            .all(|e| e.proven);
        Analysis {
            canary_requests: Some(self.step_canary_requests.round() as u64),
            checks,
            ab: None,
            promotable: Some(promotable),
        }
    }
}

/// The name of the check on requests slower than `bound` seconds.
pub fn latency_check_name(bound: f64) -> String {
    format!(
        "latency>{}",
        sluice_proxy::config::format_duration(Duration::from_secs_f64(bound))
    )
}

/// The evidence's statistics against their thresholds. `exp` is monotone,
/// so `fail >= fail_threshold` is the fail side's verdict exactly.
pub fn evidence_report(e: &Evidence, s: &GateSettings) -> EvidenceReport {
    let fail = e.fail_statistic();
    let pass = e.pass_statistic();
    let (fail_at, pass_at) = (s.fail_threshold(), s.pass_threshold());
    EvidenceReport {
        fail: fail.exp(),
        fail_threshold: fail_at.exp(),
        pass: pass.exp(),
        pass_threshold: pass_at.exp(),
        proven: pass >= pass_at,
        canary_rate: (e.canary_requests > 0.0).then(|| e.canary_events / e.canary_requests),
        primary_rate: (e.stable_requests > 0.0).then(|| e.stable_events / e.stable_requests),
    }
}

fn sequential_check(name: &str, what: &str, e: &Evidence, s: &GateSettings) -> CheckResult {
    let report = evidence_report(e, s);
    let rates = format!(
        "canary {} vs primary {}",
        pct(report.canary_rate),
        pct(report.primary_rate)
    );
    let times = |rho: f64| {
        if rho == 1.0 {
            "the primary".to_string()
        } else {
            format!("{rho}× the primary")
        }
    };
    let (outcome, reason) = if report.fail >= report.fail_threshold {
        (
            Outcome::Fail,
            format!(
                "{what}: {rates}, worse than {} (evidence {:.0}, rollback at {:.0})",
                times(s.rho0),
                report.fail,
                report.fail_threshold
            ),
        )
    } else if report.proven {
        (
            Outcome::Pass,
            format!(
                "{what}: {rates}, shown to be better than {} times worse",
                s.rho_max
            ),
        )
    } else {
        (
            Outcome::Pass,
            format!(
                "{what}: not worse so far ({rates}; evidence against {:.1} of {:.0}, for {:.1} of {:.0})",
                report.fail, report.fail_threshold, report.pass, report.pass_threshold
            ),
        )
    };
    CheckResult {
        name: name.to_string(),
        outcome,
        value: e.observed_ratio(),
        threshold: format!(
            "ratio to primary: fail at ≥{}× (α), promote when ≤{}× is shown (β)",
            s.rho0, s.rho_max
        ),
        reason,
        decisive: outcome == Outcome::Fail,
        evidence: Some(report),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests;
