//! The sequential gate: the canary judged against the primary, continuously,
//! with error rates that hold at every look, on real traffic.
//!
//! Both arms are counted by the same proxy at the same time. For each kind
//! of bad event (failures, and requests slower than a latency bound), every
//! scrape's weighted-traffic deltas feed an [`Evidence`] (see
//! [`evidence`] for the model, the rules that make it robust to bursts,
//! clumps and incidents, and the proof). This module runs a release's
//! checks through it:
//!
//! - **Baseline.** Before the canary gets traffic, the primary alone is
//!   measured for `baseline` (default 30 s): its traffic, failure rate,
//!   how much its counts vary (the dispersion prior) and, without a
//!   configured latency bound, its p99 (the learnt bound: the lower
//!   median of the p99 bucket bounds of its parts of [`LEARN_REQUESTS`]
//!   requests from the baseline's start until the canary's latency is
//!   first judged; at least [`MIN_LEARNT_BOUND`]). [`forecast`] then says what the release can
//!   decide at this traffic.
//! - **Latency tolerance.** On a bound `T`, the primary's slow requests are
//!   those over `T` and the canary's those over `T⁺`, the first bucket bound
//!   at least `T·(1 + latency_tolerance)` (default 10%: the next bound, 11–20%
//!   up). A canary up to that much slower than the primary over its whole
//!   distribution is exactly as likely to pass `T⁺` as the primary `T`, so
//!   it is "no worse"; a real slowdown still shows in seconds. (A tolerance
//!   on the ratio of slow counts would not do: at the p99 a 5% slower
//!   lognormal has 1.3–1.9 times as many slow requests, depending on its
//!   spread.)
//! - **Warm-up.** The canary's latency is not evidence during its first
//!   `warmup` (default 10 s of canary traffic): caches, JIT and pools are
//!   cold. Its failures are judged from the first request.
//! - **Checks share α.** With `m` checks (failures and each bound), each
//!   fails at `m/α` (Bonferroni). A blue/green release spends `α/2` on the
//!   mirror phase and `α/2` on the soak.
//! - **Blue/green soak.** With all traffic on the new version there is no
//!   primary traffic to compare at the same time, so its failures (and slow
//!   requests) are tested against an upper confidence bound of the
//!   primary's rate measured before the switch: the exact binomial bound at
//!   `α/4`, so a reference that came out low by chance cannot roll back an
//!   equal version. The test itself spends the other `α/4`.
//!
//! The evidence is plain data kept in the release's status, so it survives
//! restarts and weight steps.

pub mod evidence;
pub mod forecast;
pub mod level;
pub mod special;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::analysis::{Analysis, CheckResult, EvidenceReport, Outcome};
use crate::counters::{Arm, Window};
pub use evidence::{Counts, Evidence, FAIL_GRID, FLOOR_GRID, PASS_GRID, Tuning};

/// Primary requests in each part of the baseline whose p99 is taken, and
/// the least measured before an automatic latency bound is fixed.
pub const LEARN_REQUESTS: f64 = 500.0;
/// Scrapes of the primary kept while a bound is learnt (64 s of 2 s
/// scrapes, more than the default baseline and warm-up); past it the
/// oldest are merged, so that a long baseline at low traffic keeps the
/// release's saved state small (each scrape keeps its 78 buckets: about 1.2 KB of JSON, 40 KB for the 32).
pub const LEARN_SCRAPES_KEPT: usize = 32;
/// The lowest bound learnt automatically (a bucket bound): below it,
/// differences are connection set-up and scheduling noise (a canary's pool
/// is colder than the primary's), not what a release is judged on.
pub const MIN_LEARNT_BOUND: f64 = 0.01;
/// The share of requests a learnt bound (the bucket just above the
/// primary's p99) lets through: what a blue/green soak holds the new
/// version to at least, on such a bound (see [`SoakEvidence`]).
pub const LEARNT_BOUND_SHARE: f64 = 0.01;

fn default_incident_allowance() -> Duration {
    Duration::from_secs(30)
}

fn default_warmup() -> Duration {
    Duration::from_secs(10)
}

fn default_latency_tolerance() -> f64 {
    0.1
}

fn default_baseline() -> Duration {
    Duration::from_secs(30)
}

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
    /// An excursion of one arm shorter than this never rolls back on its own.
    #[serde(
        default = "default_incident_allowance",
        with = "crate::clock::duration_text"
    )]
    pub incident_allowance: Duration,
    /// The canary's first seconds of traffic, when its latency is not evidence.
    #[serde(default = "default_warmup", with = "crate::clock::duration_text")]
    pub warmup: Duration,
    /// How much slower than the primary the canary may be and still be "no
    /// worse", as a fraction (0.1: 10%).
    #[serde(default = "default_latency_tolerance")]
    pub latency_tolerance: f64,
    /// How long the primary is measured before the first step.
    #[serde(default = "default_baseline", with = "crate::clock::duration_text")]
    pub baseline: Duration,
    /// The release has a baseline arm (a fresh copy of the primary's version
    /// given the canary's exact share): the canary's latency is judged
    /// against it, not against the primary, and its failures against the
    /// old version's whole weighted traffic (primary plus baseline arm).
    /// Set it with [`GateSettings::use_baseline_arm`], which also picks the
    /// warm-up's default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub baseline_arm: bool,
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
            incident_allowance: default_incident_allowance(),
            warmup: default_warmup(),
            latency_tolerance: default_latency_tolerance(),
            baseline: default_baseline(),
            baseline_arm: false,
        }
    }
}

/// The warm-up when none is given: 10 s against the primary, none against a
/// baseline arm (it starts with the canary, so both are cold together and
/// the comparison cancels it).
pub fn default_warmup_for(baseline_arm: bool) -> Duration {
    if baseline_arm {
        Duration::ZERO
    } else {
        default_warmup()
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

/// The longest `incident_allowance`, `warmup` and `baseline` accepted.
pub const LONGEST_SETTING: Duration = Duration::from_secs(600);

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
            check_bucket_bound(*b).map_err(|e| format!("{}: {e}", name("latency_bounds")))?;
        }
        for (field, value) in [
            ("incident_allowance", self.incident_allowance),
            ("warmup", self.warmup),
            ("baseline", self.baseline),
        ] {
            if value > LONGEST_SETTING {
                return Err(format!(
                    "{}: {} is longer than the {} allowed",
                    name(field),
                    sluice_proxy::config::format_duration(value),
                    sluice_proxy::config::format_duration(LONGEST_SETTING)
                ));
            }
        }
        if !(self.latency_tolerance.is_finite() && (0.0..=1.0).contains(&self.latency_tolerance)) {
            return Err(format!(
                "{}: {} is not a fraction in [0, 1] (0.1 is 10%)",
                name("latency_tolerance"),
                self.latency_tolerance
            ));
        }
        Ok(())
    }

    /// Judges the canary against a baseline arm. Unless the user gave a
    /// warm-up (`warmup_given`: `--warmup`, `sluice.dev/warmup`), it becomes
    /// the baseline arm's default, 0 s; an explicit one wins.
    pub fn use_baseline_arm(&mut self, warmup_given: bool) {
        self.set_baseline_arm(true, warmup_given);
    }

    /// Judges the canary against a baseline arm (`on`) or the primary,
    /// with that choice's default warm-up unless the user gave one.
    pub fn set_baseline_arm(&mut self, on: bool, warmup_given: bool) {
        self.baseline_arm = on;
        if !warmup_given {
            self.warmup = default_warmup_for(on);
        }
    }

    /// How many checks share `α`.
    pub fn checks(&self) -> usize {
        1 + self.latency_bounds.len().max(1)
    }

    /// `ln(m/α)`: the fail side's threshold of a canary release.
    pub fn fail_threshold(&self) -> f64 {
        (self.checks() as f64 / self.alpha).ln()
    }

    /// `ln(1/β)`: the pass side's threshold.
    pub fn pass_threshold(&self) -> f64 {
        (1.0 / self.beta).ln()
    }

    /// What the evidence needs, with `alpha` the budget of this phase.
    pub fn tuning(&self, alpha: f64) -> Tuning {
        Tuning {
            fail_threshold: (self.checks() as f64 / alpha).ln(),
            pass_threshold: self.pass_threshold(),
            rho0: self.rho0,
            rho_max: self.rho_max,
            failure_floor: self.failure_floor,
            incident_allowance: self.incident_allowance.as_secs_f64(),
        }
    }

    /// The bucket bound the canary's requests are judged at on bound `T`.
    pub fn canary_bound(&self, bound: f64) -> f64 {
        let wanted = bound * (1.0 + self.latency_tolerance) - 1e-12;
        sluice_proxy::metrics::duration_bounds_secs()
            .find(|b| *b >= wanted)
            .unwrap_or(bound)
    }
}

// === impl GateState ===

/// Evidence for one latency bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyEvidence {
    /// The bound in seconds (a bucket bound) the primary is counted at.
    pub bound: f64,
    /// The bound the canary is counted at (the tolerance above `bound`).
    #[serde(default)]
    pub canary_bound: f64,
    /// Whether it was learnt from the primary's p99 (not configured).
    pub learnt: bool,
    pub evidence: Evidence,
}

impl LatencyEvidence {
    fn new(settings: &GateSettings, bound: f64, learnt: bool) -> Self {
        Self {
            bound,
            canary_bound: settings.canary_bound(bound),
            learnt,
            evidence: Evidence {
                // Rule 5 is for failures only (see `gate::level`).
                level: level::Level {
                    off: true,
                    ..level::Level::default()
                },
                ..Evidence::new()
            },
        }
    }

    /// This bound's counts of one window.
    fn counts(&self, canary: &Arm, stable: &Arm) -> Counts {
        Counts {
            canary_requests: total(canary),
            canary_events: canary.slower_than(self.canary_bound).unwrap_or(0.0),
            stable_requests: total(stable),
            stable_events: stable.slower_than(self.bound).unwrap_or(0.0),
        }
    }
}

fn total(arm: &Arm) -> f64 {
    arm.buckets.last().map(|b| b.1).unwrap_or(0.0)
}

/// The bound the primary's kept scrapes give (see [`GateState::learn`]):
/// the lower median of the p99 bucket bounds of their parts of
/// [`LEARN_REQUESTS`] requests, made from the newest back (the oldest
/// scrapes, short of a whole part, are left out); infinite when that p99
/// lies above every finite bucket. None before [`LEARN_REQUESTS`]
/// requests.
fn learnt_bound(scrapes: &[(f64, Arm)]) -> Option<f64> {
    let p99 = |part: &[(f64, f64)]| {
        let seen = part.last().map_or(0.0, |b| b.1);
        part.iter()
            .find(|(b, c)| b.is_finite() && *c >= 0.99 * seen)
            .map_or(f64::INFINITY, |b| b.0)
    };
    let mut bounds = Vec::new();
    let mut part: Vec<(f64, f64)> = Vec::new();
    for (_, arm) in scrapes.iter().rev() {
        for (le, count) in &arm.buckets {
            match part.iter_mut().find(|(b, _)| b.to_bits() == le.to_bits()) {
                Some(slot) => slot.1 += count,
                None => part.push((*le, *count)),
            }
        }
        part.sort_by(|a, b| a.0.total_cmp(&b.0));
        if part.last().is_some_and(|b| b.1 >= LEARN_REQUESTS) {
            bounds.push(p99(&part));
            part.clear();
        }
    }
    bounds.sort_by(f64::total_cmp);
    bounds.get(bounds.len().checked_sub(1)? / 2).copied()
}

/// Everything the gate remembers about a release; kept in its status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GateState {
    pub errors: Evidence,
    pub latency: Vec<LatencyEvidence>,
    /// The primary's cumulative buckets while a bound is being learnt, as
    /// the previous version kept them (one sum; now taken in as one scrape
    /// of [`GateState::learning_scrapes`]).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::counters::buckets_text"
    )]
    pub learning: Vec<(f64, f64)>,
    /// The primary's scrapes while a bound is being learnt, each with the
    /// time it ended (at most [`LEARN_SCRAPES_KEPT`]: the oldest merged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learning_scrapes: Vec<(f64, Arm)>,
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
    /// Seconds of windows observed (the gate's clock).
    #[serde(default)]
    pub clock: f64,
    /// When the canary's first window began, on the gate's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_since: Option<f64>,
    /// The primary's traffic before the canary got any, and for how long.
    #[serde(default)]
    pub baseline: Arm,
    #[serde(default)]
    pub baseline_seconds: f64,
    /// The baseline arm's traffic over the release, and at this step
    /// (releases with a baseline arm).
    #[serde(default, skip_serializing_if = "arm_is_empty")]
    pub total_baseline_arm: Arm,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step_baseline_arm_requests: f64,
}

fn arm_is_empty(arm: &Arm) -> bool {
    *arm == Arm::default()
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// A blue/green soak's evidence: the new version alone, each bad event
/// tested against the primary's rate before the switch (see the module
/// docs). A Poisson likelihood-ratio mixture `Π m^{e} e^{-n·ρ₀·r·(m−1)}`
/// over [`FAIL_GRID`] with `r` the reference's upper bound: for Bernoulli
/// requests at a rate `q ≤ ρ₀·r` each factor has expectation
/// `(1 + q(m−1))·e^{-ρ₀·r·(m−1)} ≤ 1`, so Ville's inequality bounds false
/// rollbacks as in the two-arm test. Tempered by the dispersion learnt
/// before the switch; no scrape adds more than [`evidence::SCRAPE_CAP`] of
/// the threshold.
///
/// On a latency bound learnt from the primary (its p99 bucket), the
/// reference is at least [`LEARNT_BOUND_SHARE`]: the new version keeps its
/// p99 under the primary's. A two-arm test cancels noise both arms share
/// (a busy node, a GC pause in the proxy); a soak cannot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakEvidence {
    /// The upper bound of the primary's failure rate before the switch.
    pub reference_failure_rate: f64,
    pub errors: OneArm,
    /// Per latency bound: the reference share of slower requests, and the
    /// evidence.
    pub latency: Vec<(f64, f64, OneArm)>,
}

/// The evidence of one version alone against a reference rate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OneArm {
    pub sums: Vec<f64>,
    pub requests: f64,
    pub events: f64,
    pub reference: f64,
    pub phi: f64,
}

impl OneArm {
    fn new(reference: f64, phi: f64) -> Self {
        Self {
            sums: vec![0.0; FAIL_GRID.len()],
            reference,
            phi: phi.max(1.0),
            ..Self::default()
        }
    }

    fn observe(&mut self, rho0: f64, cap: f64, requests: f64, events: f64) {
        let n = requests.max(0.0);
        let e = events.clamp(0.0, n);
        self.requests += n;
        self.events += e;
        if n == 0.0 {
            return;
        }
        for (sum, m) in self.sums.iter_mut().zip(FAIL_GRID) {
            let ratio =
                if e == 0.0 { 0.0 } else { e * m.ln() } - n * rho0 * self.reference * (m - 1.0);
            *sum += (ratio / self.phi).min(cap);
        }
    }

    /// `ln` of the equal-weight mixture.
    pub fn statistic(&self) -> f64 {
        evidence::log_sum_exp(self.sums.iter().copied()) - (self.sums.len().max(1) as f64).ln()
    }
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

    /// The share of `α` this mode's two-arm evidence may spend.
    pub fn alpha(self, settings: &GateSettings) -> f64 {
        match self {
            Arms::Mirror => settings.alpha / 2.0,
            _ => settings.alpha,
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
                .map(|b| LatencyEvidence::new(settings, b.as_secs_f64(), false))
                .collect(),
            ..Self::default()
        }
    }

    /// The window's length, or the scrape interval when it does not say.
    fn advance(&mut self, window: &Window) -> (f64, f64) {
        let seconds = if window.seconds > 0.0 {
            window.seconds
        } else {
            1.0
        };
        self.clock += seconds;
        (self.clock, seconds)
    }

    /// Adds one window taken before the canary gets traffic: the primary
    /// alone, for the baseline (its traffic, dispersion and latency bound).
    pub fn observe_baseline(&mut self, settings: &GateSettings, window: &Window) {
        let (at, seconds) = self.advance(window);
        let s = &window.stable;
        self.baseline.add(s);
        self.baseline_seconds += seconds;
        self.errors.observe_primary(at, s.requests, s.failures);
        if settings.latency_bounds.is_empty() && self.latency.is_empty() {
            self.learn(settings, s, at);
        }
        for l in &mut self.latency {
            let slow = s.slower_than(l.bound).unwrap_or(0.0);
            l.evidence.observe_primary(at, total(s), slow);
        }
    }

    /// Adds one blue/green soak scrape: the new version alone, against the
    /// primary's rates before the switch.
    pub fn observe_soak(&mut self, settings: &GateSettings, window: &Window, weight_bp: u32) {
        self.advance(window);
        self.enter_step(weight_bp);
        if self.soak.is_none() {
            self.soak = Some(self.start_soak(settings));
        }
        let checks = settings.checks() as f64;
        let threshold = (checks / (settings.alpha / 4.0)).ln();
        let cap = evidence::SCRAPE_CAP * threshold;
        let c = &window.canary;
        let soak = self.soak.as_mut().expect("set above");
        soak.errors
            .observe(settings.rho0, cap, c.requests, c.failures);
        for (bound, _, arm) in &mut soak.latency {
            let slow = c.slower_than(settings.canary_bound(*bound)).unwrap_or(0.0);
            arm.observe(settings.rho0, cap, total(c), slow);
        }
        self.step_canary_requests += c.requests;
        self.step_canary.add(c);
        self.total_canary.add(c);
    }

    /// The soak's references, from the primary's traffic before the switch.
    fn start_soak(&self, settings: &GateSettings) -> SoakEvidence {
        let level = settings.alpha / 4.0;
        let reference = &self.total_stable;
        let upper = |events: f64, n: f64| special::binomial_upper_bound(events, n, level);
        SoakEvidence {
            reference_failure_rate: upper(reference.failures, reference.requests),
            errors: OneArm::new(
                upper(reference.failures, reference.requests),
                self.errors.phi(),
            ),
            latency: self
                .latency
                .iter()
                .map(|l| {
                    let n = total(reference);
                    let slow = reference.slower_than(l.bound).unwrap_or(0.0);
                    let mut share = upper(slow, n);
                    // A learnt bound is the primary's p99 bucket: the new
                    // version alone is held to that (at most 1% slower),
                    // not to the share the primary happened to show.
                    if l.learnt {
                        share = share.max(LEARNT_BOUND_SHARE);
                    }
                    (l.bound, share, OneArm::new(share, l.evidence.phi()))
                })
                .collect(),
        }
    }

    /// Counts a scrape taken at `weight_bp`; a new weight starts a new
    /// step's exposure.
    fn enter_step(&mut self, weight_bp: u32) {
        self.scrapes += 1;
        if weight_bp != self.step_weight_bp {
            self.step_weight_bp = weight_bp;
            self.step_canary_requests = 0.0;
            self.step_baseline_arm_requests = 0.0;
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

    /// Whether the baseline arm gets its share: a canary with traffic at
    /// this step and a baseline arm without any (the route's `baseline` not
    /// set, or its backend down before answering anything) leaves nothing
    /// to judge against, so the step waits (inconclusive) instead of
    /// passing on nothing.
    fn baseline_arm_check(&self) -> CheckResult {
        let (canary, baseline) = (self.step_canary_requests, self.step_baseline_arm_requests);
        let missing = canary > 0.0 && baseline <= 0.0;
        CheckResult {
            name: "baseline-arm".into(),
            outcome: if missing {
                Outcome::Inconclusive
            } else {
                Outcome::Pass
            },
            value: Some(baseline),
            threshold: "the baseline arm gets the canary's share".into(),
            reason: if missing {
                format!(
                    "the baseline arm got no requests at this step while the canary got {canary:.0}: is the route's `baseline` set?"
                )
            } else {
                String::new()
            },
            ..CheckResult::default()
        }
    }

    /// The checks of a soak: exposure and the tests against the primary's
    /// rates before the switch.
    pub fn soak_analysis(&self, settings: &GateSettings, min_requests: u64) -> Analysis {
        let mut checks = vec![self.exposure_check(min_requests)];
        if let Some(soak) = &self.soak {
            let threshold = (settings.checks() as f64 / (settings.alpha / 4.0)).ln();
            checks.push(soak_check("errors", "failures", &soak.errors, threshold));
            for (bound, _, arm) in &soak.latency {
                checks.push(soak_check(
                    &latency_check_name(*bound),
                    "requests slower than the bound",
                    arm,
                    threshold,
                ));
            }
        }
        Analysis {
            canary_requests: Some(self.step_canary_requests.round() as u64),
            checks,
            ab: None,
            promotable: None,
            against: None,
        }
    }

    /// Adds one scrape's window, taken while the canary weight was
    /// `weight_bp`, judged in mode `arms`.
    pub fn observe(
        &mut self,
        settings: &GateSettings,
        window: &Window,
        weight_bp: u32,
        arms: Arms,
    ) {
        let (at, seconds) = self.advance(window);
        self.total_stable.add(&window.stable);
        self.total_canary.add(&window.canary);
        self.enter_step(weight_bp);
        let against_baseline_arm = settings.baseline_arm && arms == Arms::Weighted;
        // The arms the canary is judged against. Latency: the baseline arm
        // when the release has one (as fresh as the canary, so a cold
        // start cancels), else the primary. Failures: the old version's
        // whole weighted traffic, the primary plus the baseline arm (a
        // reference as large as without an arm, so no power is lost where
        // pod age is not the question).
        let old_version;
        let (c, s, s_failures) = if against_baseline_arm {
            self.total_baseline_arm.add(&window.baseline);
            self.step_baseline_arm_requests += window.baseline.requests;
            let mut merged = window.stable.clone();
            merged.add(&window.baseline);
            old_version = merged;
            (&window.canary, &window.baseline, &old_version)
        } else {
            (&window.canary, &window.stable, &window.stable)
        };
        if c.requests > 0.0 && self.canary_since.is_none() {
            self.canary_since = Some(at - seconds);
        }
        self.step_canary_requests += c.requests;
        self.step_canary.add(c);
        let tuning = settings.tuning(arms.alpha(settings));
        let primary = &window.stable;
        self.errors.observe_against(
            &tuning,
            at,
            seconds,
            weight_bp,
            Counts {
                canary_requests: c.requests,
                canary_events: c.failures,
                stable_requests: s_failures.requests,
                stable_events: s_failures.failures,
            },
            // The failures' reference learns its dispersion from its own
            // counts: with a baseline arm, the old version's whole traffic
            // (at a step of 50% that is the arm alone, whose pods may be
            // burstier than the primary's).
            (s_failures.requests, s_failures.failures),
        );
        if settings.latency_bounds.is_empty() && self.latency.is_empty() {
            // The bound is learnt from the old version whatever the canary
            // is judged against: its p99, from the primary's traffic (and
            // the baseline arm's, which is the same version: without it a
            // release that reaches 50% before 500 requests of the primary
            // would never learn one).
            self.learn(settings, s_failures, at);
        }
        let warm = self
            .canary_since
            .is_some_and(|since| at - since > settings.warmup.as_secs_f64() + 1e-9);
        for l in &mut self.latency {
            let counts = l.counts(c, s);
            let own = (total(primary), primary.slower_than(l.bound).unwrap_or(0.0));
            if warm {
                l.evidence
                    .observe_against(&tuning, at, seconds, weight_bp, counts, own);
            } else {
                l.evidence.observe_primary(at, own.0, own.1);
            }
        }
    }

    /// The first latency bound: fixed, or the one the primary's traffic
    /// gives so far (fixed when the canary's latency is first judged).
    pub fn first_latency_bound(&self) -> Option<f64> {
        self.latency.first().map(|l| l.bound).or_else(|| {
            learnt_bound(&self.learning_scrapes)
                .filter(|b| b.is_finite())
                .map(|b| b.max(MIN_LEARNT_BOUND))
        })
    }

    /// Gathers the primary's durations until a bound can be fixed: when the
    /// canary's latency is first judged (its warm-up over), or later, once
    /// [`LEARN_REQUESTS`] are in. The bound is the lower median of the p99
    /// bucket bounds of every part of [`LEARN_REQUESTS`] requests from the
    /// baseline's start to then (the canary's warm-up included), so that a
    /// slow spell of the primary shorter than about half of that time (a
    /// deploy or a pause as the baseline starts, a shared slowdown as the
    /// canary starts) does not set a bound no canary reaches; a spell
    /// longer than that does. The kept scrapes then give the bound's
    /// evidence the primary's dispersion, as if the bound had been known
    /// from their start (a spell among them reads as dispersion there).
    fn learn(&mut self, settings: &GateSettings, stable: &Arm, at: f64) {
        if !self.learning.is_empty() {
            // Saved by the previous version: its sum, as one scrape.
            let buckets = std::mem::take(&mut self.learning);
            let requests = buckets.last().map_or(0.0, |b| b.1);
            self.learning_scrapes.push((
                at,
                Arm {
                    requests,
                    failures: 0.0,
                    buckets,
                },
            ));
        }
        if total(stable) > 0.0 {
            let mut arm = stable.clone();
            arm.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            self.learning_scrapes.push((at, arm));
        }
        // Over the limit, the two oldest become one, as one longer scrape:
        // nothing is lost to the bound, which is taken from the newest.
        while self.learning_scrapes.len() > LEARN_SCRAPES_KEPT {
            let (_, oldest) = self.learning_scrapes.remove(0);
            let next = &mut self.learning_scrapes[0].1;
            next.add(&oldest);
        }
        let warm = self
            .canary_since
            .is_some_and(|since| at - since > settings.warmup.as_secs_f64() + 1e-9);
        if !warm {
            return;
        }
        let Some(bound) = learnt_bound(&self.learning_scrapes).filter(|b| b.is_finite()) else {
            return;
        };
        let mut l = LatencyEvidence::new(settings, bound.max(MIN_LEARNT_BOUND), true);
        // The scrapes before this one (which `observe` adds as any other).
        for (when, arm) in self.learning_scrapes.iter().filter(|(w, _)| *w < at) {
            let slower = arm.slower_than(l.bound).unwrap_or(0.0);
            l.evidence.observe_primary(*when, total(arm), slower);
        }
        self.latency.push(l);
        self.learning_scrapes.clear();
    }

    /// The checks of the evidence so far. `min_requests` is the canary
    /// exposure a step needs before the weight may advance.
    pub fn analysis(&self, settings: &GateSettings, min_requests: u64, arms: Arms) -> Analysis {
        let tuning = settings.tuning(arms.alpha(settings));
        let mut checks = vec![self.exposure_check(min_requests)];
        let against_baseline_arm = settings.baseline_arm && arms == Arms::Weighted;
        let reference = if against_baseline_arm {
            "baseline arm"
        } else {
            "primary"
        };
        // Nothing is proven at a step where the baseline arm, which the
        // checks compare with, got no traffic.
        let mut baseline_arm_served = true;
        if against_baseline_arm {
            let check = self.baseline_arm_check();
            baseline_arm_served = check.outcome == Outcome::Pass;
            checks.push(check);
        }
        checks.push(sequential_check(
            "errors",
            "failures",
            &self.errors,
            &tuning,
            settings,
            self.clock,
            if against_baseline_arm {
                "primary and baseline arm"
            } else {
                reference
            },
        ));
        let warming = self
            .canary_since
            .map(|since| (since + settings.warmup.as_secs_f64() - self.clock).max(0.0));
        for l in &self.latency {
            let name = latency_check_name(l.bound);
            let what = if l.learnt {
                "requests slower than the primary's p99 bound"
            } else {
                "requests slower than the bound"
            };
            let mut check = sequential_check(
                &name,
                what,
                &l.evidence,
                &tuning,
                settings,
                self.clock,
                reference,
            );
            if let Some(left) = warming.filter(|left| *left > 0.0) {
                check.reason = format!(
                    "not judged yet: the canary's warm-up ({left:.0}s of {} left)",
                    sluice_proxy::config::format_duration(settings.warmup)
                );
            }
            checks.push(check);
        }
        if self.latency.is_empty() && settings.latency_bounds.is_empty() {
            let seen: f64 = self.learning.last().map_or(0.0, |b| b.1)
                + self
                    .learning_scrapes
                    .iter()
                    .map(|(_, a)| total(a))
                    .sum::<f64>();
            let largest = self
                .learning_scrapes
                .iter()
                .flat_map(|(_, a)| &a.buckets)
                .map(|b| b.0)
                .filter(|b| b.is_finite())
                .fold(0.0, f64::max);
            let reason = if learnt_bound(&self.learning_scrapes).is_some_and(f64::is_infinite) {
                format!(
                    "not judged: the primary's p99 is above its largest finite bucket ({}); set a bound with --latency-bound (annotation sluice.dev/latency-bound)",
                    sluice_proxy::config::format_duration(Duration::from_secs_f64(largest))
                )
            } else if let Some(left) = warming.filter(|left| *left > 0.0) {
                format!(
                    "not judged yet: the canary's warm-up ({left:.0}s of {} left); the bound is then the primary's p99 ({seen:.0} requests measured)",
                    sluice_proxy::config::format_duration(settings.warmup)
                )
            } else if seen < LEARN_REQUESTS {
                format!(
                    "not judged yet: measuring the primary's p99 ({seen:.0} of {LEARN_REQUESTS} requests)"
                )
            } else if warming.is_some() {
                format!(
                    "not judged yet: the canary's warm-up ends; the bound is then the primary's p99 ({seen:.0} requests measured)"
                )
            } else {
                format!(
                    "not judged yet: measuring the primary's p99 until the canary's first requests ({seen:.0} requests so far)"
                )
            };
            checks.push(CheckResult {
                name: "latency".into(),
                outcome: Outcome::Pass,
                value: None,
                threshold: "learning the primary's p99".into(),
                reason,
                evidence: Some(EvidenceReport::default()),
                ..CheckResult::default()
            });
        }
        let promotable = baseline_arm_served
            && checks
                .iter()
                .filter_map(|c| c.evidence.as_ref())
                .all(|e| e.proven);
        Analysis {
            canary_requests: Some(self.step_canary_requests.round() as u64),
            checks,
            ab: None,
            promotable: Some(promotable),
            against: against_baseline_arm.then(|| "the baseline arm".to_string()),
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

/// The evidence's statistics against their thresholds (a canary release's
/// `α`). `exp` is monotone, so `fail >= fail_threshold` is the fail side's
/// verdict exactly.
pub fn evidence_report(e: &Evidence, s: &GateSettings) -> EvidenceReport {
    report_with(e, &s.tuning(s.alpha), 0.0)
}

fn report_with(e: &Evidence, t: &Tuning, now: f64) -> EvidenceReport {
    let fail = e.fail_statistic();
    let pass = e.pass_statistic();
    EvidenceReport {
        fail: fail.exp(),
        fail_threshold: t.fail_threshold.exp(),
        pass: pass.exp(),
        pass_threshold: t.pass_threshold.exp(),
        proven: pass >= t.pass_threshold,
        canary_rate: (e.canary_requests > 0.0).then(|| e.canary_events / e.canary_requests),
        primary_rate: (e.stable_requests > 0.0).then(|| e.stable_events / e.stable_requests),
        dispersion: Some(e.phi()),
        holding_for: e.holding_for(now),
        hold_allowance: e.hold_allowance(t),
    }
}

/// One check's verdict; `reference` names the arm the canary is judged
/// against (`primary` or `baseline arm`).
fn sequential_check(
    name: &str,
    what: &str,
    e: &Evidence,
    t: &Tuning,
    s: &GateSettings,
    now: f64,
    reference: &str,
) -> CheckResult {
    let report = report_with(e, t, now);
    let rates = format!(
        "canary {} vs {reference} {}",
        pct(report.canary_rate),
        pct(report.primary_rate)
    );
    let times = |rho: f64| {
        if rho == 1.0 {
            format!("the {reference}")
        } else {
            format!("{rho}× the {reference}")
        }
    };
    let dispersion = if e.phi() > 1.05 {
        format!("; dispersion {:.1}", e.phi())
    } else {
        String::new()
    };
    let held = report
        .holding_for
        .map(|secs| {
            let allowance = report
                .hold_allowance
                .map_or(s.incident_allowance, Duration::from_secs_f64);
            format!(
                "; a jump of the canary is held as a possible incident ({secs:.0}s of {})",
                sluice_proxy::config::format_duration(allowance)
            )
        })
        .unwrap_or_default();
    let (outcome, reason) = if report.fail >= report.fail_threshold {
        (
            Outcome::Fail,
            format!(
                "{what}: {rates}, worse than {} (evidence {:.0}, rollback at {:.0}{dispersion})",
                times(s.rho0),
                report.fail,
                report.fail_threshold
            ),
        )
    } else if report.proven {
        (
            Outcome::Pass,
            format!(
                "{what}: {rates}, shown to be better than {} times worse at this weight{dispersion}{held}",
                s.rho_max
            ),
        )
    } else {
        (
            Outcome::Pass,
            format!(
                "{what}: not worse so far ({rates}; evidence against {:.1} of {:.0}, for {:.1} of {:.0}{dispersion}{held})",
                report.fail, report.fail_threshold, report.pass, report.pass_threshold
            ),
        )
    };
    CheckResult {
        name: name.to_string(),
        outcome,
        value: e.observed_ratio(),
        threshold: format!(
            "ratio to {reference}: fail at ≥{}× (α), promote when ≤{}× is shown at this weight (β)",
            s.rho0, s.rho_max
        ),
        reason,
        decisive: outcome == Outcome::Fail,
        evidence: Some(report),
    }
}

fn soak_check(name: &str, what: &str, arm: &OneArm, threshold: f64) -> CheckResult {
    let fail = arm.statistic();
    let rate = (arm.requests > 0.0).then(|| arm.events / arm.requests);
    let failed = fail >= threshold;
    let reason = format!(
        "{what}: new version {} against the primary's {} before the switch (upper bound; evidence {:.1} of {:.0})",
        pct(rate),
        pct(Some(arm.reference)),
        fail.exp(),
        threshold.exp()
    );
    CheckResult {
        name: name.to_string(),
        outcome: if failed { Outcome::Fail } else { Outcome::Pass },
        value: rate.map(|r| r / arm.reference.max(1e-12)),
        threshold: "ratio to the primary's rate before the switch".into(),
        reason,
        decisive: failed,
        evidence: Some(EvidenceReport {
            fail: fail.exp(),
            fail_threshold: threshold.exp(),
            canary_rate: rate,
            primary_rate: Some(arm.reference),
            dispersion: Some(arm.phi),
            ..EvidenceReport::default()
        }),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// A latency gate must be a bound of the proxy's duration histogram, so it
/// is decided by counts at that bound, never by interpolating inside a
/// bucket (which is wrong both ways).
pub fn check_bucket_bound(max: Duration) -> Result<(), String> {
    use sluice_proxy::metrics::{is_duration_bound, nearest_duration_bounds};
    if is_duration_bound(max) {
        return Ok(());
    }
    let (below, above) = nearest_duration_bounds(max);
    let nearest: Vec<String> = [below, above]
        .into_iter()
        .flatten()
        .map(sluice_proxy::config::format_duration)
        .collect();
    Err(format!(
        "{} is not a bound of the proxy's latency buckets, so it could only be judged by interpolation; use the nearest bound{}: {} (bounds run 1ms..30s at 1, 1.2, 1.4, 1.6, 1.8, 2, 2.25, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9 per decade)",
        sluice_proxy::config::format_duration(max),
        if nearest.len() > 1 { "s" } else { "" },
        nearest.join(" or ")
    ))
}

#[cfg(test)]
mod tests;
