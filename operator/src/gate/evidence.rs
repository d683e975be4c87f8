//! The evidence about one kind of bad event (failures, or requests slower
//! than a latency bound): the canary against the primary, scrape by scrape.
//!
//! Every scrape gives, per arm, the requests `n` and the bad events `e`
//! since the last one. Given `k = e_c + e_s`, the canary's share is
//! `Binomial(k, θ(ρ))` with `θ(ρ) = ρ·n_c / (ρ·n_c + n_s)` when events in
//! each arm are Poisson and the canary's rate per request is `ρ` times the
//! primary's. The scrape's log-likelihood ratio of an alternative `ρ_a`
//! against a null `ρ_n` is `ℓ = e_c·ln(θ_a/θ_n) + e_s·ln((1−θ_a)/(1−θ_n))`.
//! Whatever both arms share (an upstream incident, a traffic spike) cancels.
//!
//! Real traffic is not Poisson, so the ratios are used with five rules,
//! each of which keeps the evidence an e-process (see the proof below):
//!
//! 1. **Dispersion.** Each `ℓ` is divided by `φ ≥ 1`, the over-dispersion
//!    of the event counts: how much more they vary from scrape to scrape
//!    than the binomial model says. `φ` is estimated from the data before
//!    the scrape (never from the scrape itself): the primary's own counts
//!    in consecutive bins of [`BIN_EVENTS`] events (a Pearson statistic of
//!    each pair, which has mean 1 for Poisson counts at any level and any
//!    slow drift), and the canary-against-primary split in consecutive
//!    bins at one weight (a 2×2 Pearson statistic: an A/A comparison of the
//!    two arms over time, mean 1 when the split does not vary). The split's
//!    pairs decide; the primary's (learnt from the baseline on) are a
//!    prior worth [`PRIMARY_PRIOR_PAIRS`] of them, itself shrunk toward 1 by
//!    [`DISPERSION_PRIOR_PAIRS`] pseudo-pairs; at least 1. Bursts that hit
//!    both arms alike cancel in the two-arm test, so the split (not the
//!    primary) says how much the comparison is over-dispersed. Failures
//!    that come in clumps of `c` give `φ ≈ c`: a clump counts as one.
//!    When the canary is judged against a baseline arm
//!    ([`Evidence::observe_against`]), the split is canary against that
//!    arm, and the prior still comes from the primary's own counts.
//! 2. **The fail side** is an e-detector: a mixture over [`FAIL_GRID`]
//!    (`ρ₀` times 1.25 … 30) restarted at the canary's first request
//!    (weight ½), at every weight change and every [`RESTART_EVERY`]
//!    (the k-th restart weighs `∝ (k+1)^-1.1`, together ½), so a canary that turns bad
//!    after a long healthy hold is caught as fast as one bad from the start
//!    would be. The newest [`RESTARTS_KEPT`] restarts and the first are
//!    kept. A scrape's `ℓ` is capped at [`SCRAPE_CAP`] of the component's
//!    threshold, so no single scrape rolls back on its own. The check fails
//!    when `Σ w_r M_r ≥ m/α`.
//! 3. **Incidents.** A scrape in which the canary's share is significantly
//!    above [`JUMP`] times its own recent level (the *reference*: its
//!    ratio to the primary over the last [`REFERENCE_SPAN`], leaving out
//!    the newest [`REFERENCE_LAG`], each scrape taken at its own weight:
//!    [`pooled_ratio`]), when its own rate there leaves room
//!    for such a rise and the reference does not already show it worse
//!    than `ρ_max` (at [`WORSE_BEFORE_P`]: only a canary healthy before
//!    an excursion is protected from it), starts a *hold*: its positive evidence
//!    is set aside, not added. The hold goes on while the canary stays
//!    significantly above the reference (one quiet scrape is forgiven once
//!    the hold has three). If it lasts longer than the incident allowance
//!    (`--incident-allowance`, plus one scrape for the partial scrapes at
//!    its ends), the set-aside evidence is added back: it was a
//!    regression, not an incident. If it ends sooner, it was an incident
//!    only if its scrapes together were a jump at [`INCIDENT_P`]; then its
//!    evidence is dropped: an excursion of one arm shorter than the
//!    allowance (a node going bad, a dependency's hiccup, a GC storm)
//!    never rolls back a release that was healthy before it. A hold that
//!    never got there, with the canary still above the reference in the
//!    quiet scrapes that end it, was a run of high scrapes (a canary a
//!    little worse all along draws them by chance): its evidence is added
//!    back, so a moderate regression is not slowed by dropping its worst
//!    scrapes.
//!    The first scrape has no reference, so a canary that fails from its
//!    first request is judged at once; and a hold that begins on a young
//!    reference (nothing older than [`REFERENCE_LAG`] had events: the
//!    canary's first, often partial, scrapes, mostly the prior) lasts at
//!    most [`YOUNG_ALLOWANCE`], since such a reference cannot tell a jump
//!    from the canary's own level.
//! 4. **The pass side** ("the canary is not `ρ_max` times worse") uses only
//!    the scrapes at the current weight, so a canary worse only at the
//!    final weight is not promoted on evidence from earlier steps. It is a
//!    mixture over [`PASS_GRID`] (most weight on "as good as the primary"),
//!    averaged with the absolute floor's mixture (the canary's own rate
//!    under `--failure-floor`); the check is shown no worse when the average
//!    reaches `1/β`. Scrapes in which the *primary* jumps (its incident makes
//!    the canary look good) add no positive pass evidence.
//! 5. **The primary's own level** ([`crate::gate::level`]). While the
//!    primary alone (the arm the canary is compared with) fails well above
//!    its own usual rate, a CUSUM over its scrapes finds it *elevated*;
//!    such scrapes and the one after add no positive pass evidence, and
//!    the run of scrapes just before, with the primary above its level,
//!    has its positive pass evidence taken back. During an incident of its
//!    own the primary is not a fair reference: a canary worse than the
//!    primary's usual rate must not look good next to it. A rise both arms
//!    share is not the primary's alone (the canary rose too) and the
//!    comparison cancels it. Rule 4 sees only large jumps of the split in
//!    one scrape; this rule sees moderate rises, ramps and the partial
//!    scrapes at an incident's edges. A rise that lasts longer than the
//!    level's span becomes the primary's new level. At very low traffic
//!    (under half an expected failure of the primary per scrape) it does
//!    not look.
//!
//! **Why the promises hold.** Each scrape multiplies every alternative's
//! running product by a factor `X = exp(ℓ/φ)`. Under the null (the canary
//! no worse than `ρ₀`), `E[exp(ℓ)] ≤ 1` given the past (the binomial
//! likelihood ratio; for Bernoulli requests the hypergeometric share is
//! smaller in convex order, Hoeffding 1963), and `φ ≥ 1` fixed before the
//! scrape gives `E[X] ≤ E[exp(ℓ)]^{1/φ} ≤ 1` (Jensen). When counts are
//! over-dispersed by `φ_true ≤ φ` in the quasi-binomial sense (clumps of
//! `φ_true` events), `exp(ℓ/φ_true)` is the likelihood ratio of the clump
//! counts, so `E[X] ≤ 1` again. Every other rule only replaces a factor
//! by a smaller one (a cap, `min(X, 1)` during a hold or, on the pass
//! side, for a scrape rule 5 sets aside, even one scrape late) or gives the
//! set-aside factors back (which restores the capped product, whether the
//! hold ends as a regression or as a run of high scrapes): the evidence is
//! never above the plain product, which is a nonnegative
//! supermartingale. The restarted components, weighted by `w_r` with
//! `Σ w_r ≤ 1`, form an e-detector: `Σ w_r M_r` plus the weight of the
//! restarts still to come is a supermartingale starting at most at 1, so
//! by Ville's inequality it ever reaches `m/α` with probability at most
//! `α/m`. The pass side is the mirror image against `ρ ≥ ρ_max`. What the
//! bounds assume is stated in docs/gate.md: the dispersion estimate is not
//! below the truth, and excursions longer than the allowance are real.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::gate::level::Level;

/// Fail-side alternatives, as multiples of `ρ₀`.
pub const FAIL_GRID: [f64; 7] = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
/// Pass-side alternatives as multiples of `ρ_max`, with their prior
/// weights: most on "as good as the primary" (`ρ_max · 0.67 = 1` at the
/// default `ρ_max` of 1.5), where a healthy canary is.
pub const PASS_GRID: [(f64, f64); 3] = [(0.67, 0.6), (0.8, 0.2), (0.5, 0.2)];
/// Absolute-floor alternatives, as multiples of the floor.
pub const FLOOR_GRID: [f64; 5] = [0.5, 0.25, 0.1, 0.05, 0.01];
/// Seconds between restarts of the fail side.
pub const RESTART_EVERY: f64 = 30.0;
/// Restarted components kept besides the first.
pub const RESTARTS_KEPT: usize = 6;
/// A jump of the canary's share to this many times its reference starts
/// a hold.
pub const JUMP: f64 = 1.5;
/// A jump of the primary's share to this many times its reference is an
/// incident there: those scrapes add no pass evidence.
pub const PRIMARY_JUMP: f64 = 3.0;
/// How significant a jump (and its continuation) must be.
pub const JUMP_P: f64 = 0.05;
/// How significant a hold's scrapes together must be against [`JUMP`]
/// times the reference for the hold to be an incident when it ends within
/// the allowance. A hold that never gets there was a run of high scrapes
/// (of a canary a little worse all along, or chance): its evidence counts.
pub const INCIDENT_P: f64 = 0.001;
/// Seconds of kept scrapes the reference is taken from…
pub const REFERENCE_SPAN: f64 = 120.0;
/// …leaving out the newest this many (unless there is nothing older), so
/// an incident's own first scrapes never become its reference.
pub const REFERENCE_LAG: f64 = 12.0;
/// How significant the canary's excess over `ρ_max` in its reference must
/// be for it to count as not healthy before a jump (no hold then).
pub const WORSE_BEFORE_P: f64 = 0.001;
/// Seconds a hold that began on a young reference may last (if the
/// incident allowance is not shorter). Such a reference is the canary's
/// first scrape or two, often partial, and mostly the prior's pseudo-events
/// ("as the primary"): a canary failing from its first request looks like a
/// healthy one that jumped. Held for the whole allowance, 6% of canaries
/// 8x worse than the primary were rolled back only after 9 s to 93 s
/// (`sluice simulate`, 1 s scrapes, 3 s steps), their weight stepping up
/// meanwhile, instead of within their first step; 1.4% now, none after
/// 20 s. A short hold still forgives a clump of failures in the first
/// seconds, as before: a young hold that ends is judged as any other, and
/// without that forgiveness healthy canaries whose failures come in clumps
/// of 3 were called worse in 2-2.3% of releases, above the bound.
pub const YOUNG_ALLOWANCE: f64 = 3.0;
/// Pseudo-events that pull a short reference toward "as the primary".
pub const REFERENCE_PRIOR_EVENTS: f64 = 10.0;
/// Events per bin of the dispersion estimate.
pub const BIN_EVENTS: f64 = 10.0;
/// Pseudo-pairs at `φ = 1` in the primary's dispersion estimate.
pub const DISPERSION_PRIOR_PAIRS: f64 = 4.0;
/// How many of the split's pairs the primary's estimate counts for.
pub const PRIMARY_PRIOR_PAIRS: f64 = 8.0;
/// No scrape adds more than this share of a fail threshold.
pub const SCRAPE_CAP: f64 = 0.75;

/// One scrape's counts of one kind of bad event, per arm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub canary_requests: f64,
    pub canary_events: f64,
    pub stable_requests: f64,
    pub stable_events: f64,
}

/// The canary's expected share of the events of several scrapes together
/// at a ratio `rho`: each scrape's `θ(ρ)` weighed by its events. Summing
/// the scrapes' counts first would be wrong whenever the split's weight
/// changed among them: a spell of failures that both arms share at the
/// higher weight puts more of the canary's requests than of the primary's
/// in it, and the summed counts show a canary worse than the primary that
/// was never worse in any one scrape (Simpson's paradox).
fn pooled_share<'a>(scrapes: impl Iterator<Item = &'a Counts> + Clone, rho: f64) -> Option<f64> {
    // A scrape without events weighs nothing (and one without requests
    // has no `θ`: 0/0).
    let scrapes = scrapes.filter(|c| c.events() > 0.0);
    let events: f64 = scrapes.clone().map(Counts::events).sum();
    (events > 0.0).then(|| scrapes.map(|c| c.events() * c.theta(rho)).sum::<f64>() / events)
}

/// The canary's ratio to the primary over several scrapes (`sum`: their
/// counts summed): the `ρ` at which its expected share of their events
/// ([`pooled_share`], scrape by scrape) is the share it had, pulled toward
/// 1 by [`REFERENCE_PRIOR_EVENTS`] pseudo-events split as the requests
/// were. At one weight throughout this is the ratio of the arms' summed
/// rates.
fn pooled_ratio(scrapes: &[Counts], sum: &Counts) -> f64 {
    let share = sum.canary_requests / (sum.canary_requests + sum.stable_requests);
    let prior = Counts {
        canary_requests: share,
        canary_events: REFERENCE_PRIOR_EVENTS * share,
        stable_requests: 1.0 - share,
        stable_events: REFERENCE_PRIOR_EVENTS * (1.0 - share),
    };
    let had = (sum.canary_events + prior.canary_events) / (sum.events() + prior.events());
    // A scrape without events weighs nothing (and one without requests has
    // no `θ`: 0/0); the prior always has events.
    let weighed = || {
        scrapes
            .iter()
            .chain(std::iter::once(&prior))
            .filter(|c| c.events() > 0.0)
    };
    let events: f64 = weighed().map(Counts::events).sum();
    // The expected share minus `had`, and its slope, at `x = ln ρ`: the
    // share rises with `x`, each scrape's `θ` with slope `θ(1-θ)`.
    let gap = |x: f64| {
        let rho = x.exp();
        let (share, slope) = weighed().fold((0.0, 0.0), |(s, d), c| {
            let t = c.theta(rho);
            (s + c.events() * t, d + c.events() * t * (1.0 - t))
        });
        (share / events - had, slope / events)
    };
    // Newton's method on `ln ρ`, kept inside a bracket that halves whenever
    // a step would leave it: a few steps to the root of a monotone share
    // (a bisection alone took 80, and this ran at every tick). From the
    // ratio of the summed counts, the root itself at one weight throughout.
    let (mut low, mut high) = (-30.0_f64, 30.0_f64);
    if gap(low).0 >= 0.0 {
        return low.exp();
    }
    if gap(high).0 < 0.0 {
        return high.exp();
    }
    let start = (had / (1.0 - had) * (1.0 - share) / share).ln();
    let mut x = if start > low && start < high {
        start
    } else {
        0.0
    };
    for _ in 0..200 {
        let (f, slope) = gap(x);
        if f == 0.0 {
            // The root itself (often the start, at one weight).
            break;
        }
        if f < 0.0 {
            low = x;
        } else {
            high = x;
        }
        let step = x - f / slope;
        let next = if step > low && step < high {
            step
        } else {
            0.5 * (low + high)
        };
        let done = (next - x).abs() <= 1e-14 * x.abs().max(1.0);
        x = next;
        if done || high - low <= 4.0 * f64::EPSILON * x.abs().max(1.0) {
            break;
        }
    }
    x.exp()
}

impl Counts {
    fn plus(self, other: &Counts) -> Self {
        Self {
            canary_requests: self.canary_requests + other.canary_requests,
            canary_events: self.canary_events + other.canary_events,
            stable_requests: self.stable_requests + other.stable_requests,
            stable_events: self.stable_events + other.stable_events,
        }
    }

    fn sane(self) -> Self {
        let canary_requests = self.canary_requests.max(0.0);
        let stable_requests = self.stable_requests.max(0.0);
        Self {
            canary_requests,
            canary_events: self.canary_events.clamp(0.0, canary_requests),
            stable_requests,
            stable_events: self.stable_events.clamp(0.0, stable_requests),
        }
    }

    fn events(&self) -> f64 {
        self.canary_events + self.stable_events
    }

    /// `θ(ρ)`: the canary's expected share of this scrape's events.
    fn theta(&self, rho: f64) -> f64 {
        rho * self.canary_requests / (rho * self.canary_requests + self.stable_requests)
    }

    /// The log-likelihood ratio of `rho_alt` against `rho_null`.
    fn log_ratio(&self, rho_alt: f64, rho_null: f64) -> f64 {
        let (ta, tn) = (self.theta(rho_alt), self.theta(rho_null));
        xlogy(self.canary_events, ta / tn) + xlogy(self.stable_events, (1.0 - ta) / (1.0 - tn))
    }
}

/// What the evidence needs from the settings of a release.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    /// `ln(m/α)`: the fail side's threshold on `ln Σ w_r M_r`.
    pub fail_threshold: f64,
    /// `ln(1/β)`: the pass side's threshold.
    pub pass_threshold: f64,
    pub rho0: f64,
    pub rho_max: f64,
    pub failure_floor: f64,
    /// Seconds of an excursion of one arm that never roll back on their own.
    pub incident_allowance: f64,
}

/// `a·ln(x)` with `0·ln(0) = 0`.
fn xlogy(a: f64, x: f64) -> f64 {
    if a == 0.0 { 0.0 } else { a * x.ln() }
}

/// `ln Σ exp(x_i)`.
pub(crate) fn log_sum_exp(xs: impl IntoIterator<Item = f64>) -> f64 {
    let xs: Vec<f64> = xs.into_iter().collect();
    let max = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + xs.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
}

// === impl Component ===

/// One mixture of likelihood-ratio products, started at some scrape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Component {
    /// Its weight in the e-detector (1 on the pass side).
    pub weight: f64,
    /// Log running product per alternative.
    pub sums: Vec<f64>,
    /// Positive evidence set aside during a hold, per alternative.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<f64>,
    /// When it started (seconds on the gate's clock).
    pub since: f64,
}

impl Component {
    fn new(alternatives: usize, weight: f64, since: f64) -> Self {
        Self {
            weight,
            sums: vec![0.0; alternatives],
            held: Vec::new(),
            since,
        }
    }

    /// `ln Σ_j π_j exp(sums_j)`.
    fn value(&self, log_prior: impl Fn(usize) -> f64) -> f64 {
        log_sum_exp(self.sums.iter().enumerate().map(|(j, s)| s + log_prior(j)))
    }

    /// Adds one scrape's ratios, each at most `cap`; during a hold only
    /// the negative part is added and the positive part is set aside.
    fn add(&mut self, ratios: &[f64], cap: f64, hold: bool) {
        if self.held.len() != self.sums.len() {
            self.held = vec![0.0; self.sums.len()];
        }
        for ((sum, held), r) in self.sums.iter_mut().zip(&mut self.held).zip(ratios) {
            let r = r.min(cap);
            if hold {
                *sum += r.min(0.0);
                *held += r.max(0.0);
            } else {
                *sum += r;
            }
        }
    }

    /// The hold was a regression: the set-aside evidence counts.
    fn give_back(&mut self) {
        for (sum, held) in self.sums.iter_mut().zip(&mut self.held) {
            *sum += *held;
            *held = 0.0;
        }
    }

    /// The hold was an incident: the set-aside evidence is dropped.
    fn forget_held(&mut self) {
        self.held.iter_mut().for_each(|h| *h = 0.0);
    }
}

// === impl Dispersion ===

/// The running estimate of `φ` (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dispersion {
    /// Sum of the split's pair statistics (the A/A comparison of the two
    /// arms over time), and how many pairs.
    pub sum: f64,
    pub pairs: f64,
    /// The same for the primary's own counts: a prior, which the split's
    /// pairs outweigh as they come (the primary's bursts that both arms
    /// share cancel in the two-arm test and must not temper it for good).
    #[serde(default)]
    pub primary_sum: f64,
    #[serde(default)]
    pub primary_pairs: f64,
    /// The open bin of (canary events, primary events) at `bin_weight_bp`,
    /// and the last closed one.
    pub bin: [f64; 2],
    pub last_bin: Option<[f64; 2]>,
    pub bin_weight_bp: u32,
    /// The open bin of the primary's (events, requests), and the last one.
    pub primary_bin: [f64; 2],
    pub last_primary_bin: Option<[f64; 2]>,
}

/// The Pearson statistic of a 2×2 table with `N − 1` for `N` (None with an
/// empty margin): given the margins its mean is exactly 1 when rows and
/// columns are independent (the plain `N` version's is `N/(N−1)`, which
/// would read a little dispersion into every small table).
fn pearson_2x2(a: [f64; 2], b: [f64; 2]) -> Option<f64> {
    let n = a[0] + a[1] + b[0] + b[1];
    let margins = [a[0] + a[1], b[0] + b[1], a[0] + b[0], a[1] + b[1]];
    if margins.iter().any(|m| *m <= 0.0) || n < 2.0 {
        return None;
    }
    let d = a[0] * b[1] - a[1] * b[0];
    Some(d * d * (n - 1.0) / margins.iter().product::<f64>())
}

impl Dispersion {
    /// `φ`: at least 1. The split's pairs, with the primary's estimate as
    /// a prior worth [`PRIMARY_PRIOR_PAIRS`] of them.
    pub fn phi(&self) -> f64 {
        let prior = ((self.primary_sum + DISPERSION_PRIOR_PAIRS)
            / (self.primary_pairs + DISPERSION_PRIOR_PAIRS))
            .max(1.0);
        ((self.sum + PRIMARY_PRIOR_PAIRS * prior) / (self.pairs + PRIMARY_PRIOR_PAIRS)).max(1.0)
    }

    /// The primary's events and requests of one scrape.
    fn observe_primary(&mut self, events: f64, requests: f64) {
        self.primary_bin[0] += events;
        self.primary_bin[1] += requests;
        if self.primary_bin[0] < BIN_EVENTS {
            return;
        }
        if let Some(last) = self.last_primary_bin {
            // Given both bins' events, the first's share is binomial in
            // its share of the requests when the rate did not change.
            let k = last[0] + self.primary_bin[0];
            let q = last[1] / (last[1] + self.primary_bin[1]);
            let statistic = (last[0] - k * q).powi(2) / (k * q * (1.0 - q));
            if q > 0.0 && q < 1.0 && statistic.is_finite() {
                self.primary_sum += statistic;
                self.primary_pairs += 1.0;
            }
        }
        self.last_primary_bin = Some(self.primary_bin);
        self.primary_bin = [0.0; 2];
    }

    /// The split of one scrape's events between the arms, at `weight_bp`.
    fn observe_split(&mut self, canary_events: f64, stable_events: f64, weight_bp: u32) {
        if weight_bp != self.bin_weight_bp {
            self.bin = [0.0; 2];
            self.last_bin = None;
            self.bin_weight_bp = weight_bp;
        }
        self.bin[0] += canary_events;
        self.bin[1] += stable_events;
        if self.bin[0] + self.bin[1] < BIN_EVENTS {
            return;
        }
        if let Some(last) = self.last_bin
            && let Some(x2) = pearson_2x2(last, self.bin)
            && x2.is_finite()
        {
            self.sum += x2;
            self.pairs += 1.0;
        }
        self.last_bin = Some(self.bin);
        self.bin = [0.0; 2];
    }
}

// === impl Hold ===

/// A scrape kept for the reference: (end time, counts).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub at: f64,
    pub counts: Counts,
}

/// What one scrape shows against the canary's reference
/// ([`Evidence::jumps`]).
#[derive(Clone, Copy, Debug, Default)]
struct Look {
    /// The canary's share jumped up (significantly above [`JUMP`] times
    /// the reference; in a hold, above the reference).
    up: bool,
    /// The primary's share jumped up ([`PRIMARY_JUMP`]).
    down: bool,
    /// The canary's share is above the reference at all.
    above: bool,
    /// The hold's scrapes with this one are a jump at [`INCIDENT_P`].
    strong: bool,
    /// The reference was young ([`Evidence::reference_counts`]).
    young: bool,
}

/// A jump of the canary being held as a possible incident.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// When the first held scrape began.
    pub since: f64,
    /// Scrapes significantly above the reference so far.
    pub elevated: u32,
    /// Quiet scrapes in a row.
    pub quiet: u32,
    /// Lasted longer than the allowance: a regression, judged in full.
    pub confirmed: bool,
    /// Its scrapes together were a jump at [`INCIDENT_P`]: if it ends
    /// within the allowance, it was an incident.
    #[serde(default)]
    pub strong: bool,
    /// Whether every quiet scrape since the last elevated one was still
    /// above the reference.
    #[serde(default)]
    pub quiet_above: bool,
    /// Its scrapes, which join the reference if it is confirmed.
    pub scrapes: Vec<Kept>,
    /// It began on a young reference: it lasts at most
    /// [`YOUNG_ALLOWANCE`].
    #[serde(default)]
    pub young: bool,
}

impl Hold {
    /// Seconds it may last before it is a regression.
    fn allowance(&self, t: &Tuning) -> f64 {
        if self.young {
            t.incident_allowance.min(YOUNG_ALLOWANCE)
        } else {
            t.incident_allowance
        }
    }
}

// === impl Evidence ===

/// The evidence about one kind of bad event over a release.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Totals of the judged scrapes (reports and the plan statement).
    pub canary_requests: f64,
    pub canary_events: f64,
    pub stable_requests: f64,
    pub stable_events: f64,
    pub dispersion: Dispersion,
    /// The fail side's components, the first one (if still kept) from the
    /// canary's first request.
    pub fail: Vec<Component>,
    pub restarts: u32,
    pub last_restart: f64,
    /// When the canary's first judged scrape began.
    pub canary_since: Option<f64>,
    /// The weight the pass side's evidence is for.
    pub pass_weight_bp: u32,
    pub pass: Component,
    pub floor: Component,
    pub reference: VecDeque<Kept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    /// Holds that ended as incidents (their evidence dropped).
    #[serde(default)]
    pub incidents: u32,
    /// The previous scrape's weight, to see a change.
    pub weight_bp: u32,
    /// The previous scrape, if it was above the reference (not
    /// significantly) and counted in full: a hold that starts next takes
    /// it in, as an incident's partial first scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<(Kept, Vec<f64>)>,
    /// The primary's own level and its rises (rule 5).
    #[serde(default)]
    pub level: Level,
}

/// The exponent of the restarts' weights: the k-th weighs `∝ (k+1)^-1.1`,
/// so a restart hours into a hold still starts with a usable share.
const RESTART_DECAY: f64 = 1.1;

/// `Σ_{k≥1} (k+1)^-RESTART_DECAY`, so the restarts' weights add up to ½.
fn restart_norm() -> f64 {
    // ζ(1.1) − 1, by the Euler–Maclaurin tail after 10⁴ terms.
    let n = 10_000u32;
    let head: f64 = (2..=n).map(|k| f64::from(k).powf(-RESTART_DECAY)).sum();
    let n = f64::from(n);
    head + n.powf(1.0 - RESTART_DECAY) / (RESTART_DECAY - 1.0) - 0.5 * n.powf(-RESTART_DECAY)
}

/// The weight of the `k`-th restart (k ≥ 1): the restarts share ½.
pub fn restart_weight(k: u32) -> f64 {
    thread_local! {
        static NORM: f64 = restart_norm();
    }
    0.5 * (f64::from(k) + 1.0).powf(-RESTART_DECAY) / NORM.with(|n| *n)
}

fn fail_log_prior(_: usize) -> f64 {
    -(FAIL_GRID.len() as f64).ln()
}

fn pass_log_prior(j: usize) -> f64 {
    PASS_GRID[j].1.ln()
}

fn floor_log_prior(_: usize) -> f64 {
    -(FLOOR_GRID.len() as f64).ln()
}

/// `P(X ≥ x)` for `X ~ Binomial(n, p)`, continuous in `n` and `x` (used
/// with counts divided by `φ`).
pub(crate) fn binomial_upper_tail(n: f64, x: f64, p: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    if x > n {
        return 0.0;
    }
    crate::gate::special::regularized_beta(x, n - x + 1.0, p)
}

impl Evidence {
    pub fn new() -> Self {
        Self {
            pass: Component::new(PASS_GRID.len(), 1.0, 0.0),
            floor: Component::new(FLOOR_GRID.len(), 1.0, 0.0),
            ..Self::default()
        }
    }

    /// `φ`, the over-dispersion the evidence is tempered by.
    pub fn phi(&self) -> f64 {
        self.dispersion.phi()
    }

    /// A scrape of the primary alone (before the canary gets traffic), that
    /// ends at `at` (seconds on the gate's clock): it teaches the
    /// dispersion and the primary's level (rule 5).
    pub fn observe_primary(&mut self, at: f64, requests: f64, events: f64) {
        if requests > 0.0 {
            let events = events.clamp(0.0, requests);
            self.dispersion.observe_primary(events, requests);
            self.level.add(
                at,
                &Counts {
                    stable_requests: requests,
                    stable_events: events,
                    ..Counts::default()
                },
            );
        }
    }

    /// Adds one scrape that ends at `at` (seconds on the gate's clock) and
    /// lasted `seconds`, taken while the canary weight was `weight_bp`.
    pub fn observe(&mut self, t: &Tuning, at: f64, seconds: f64, weight_bp: u32, c: Counts) {
        let primary = (c.stable_requests, c.stable_events);
        self.observe_against(t, at, seconds, weight_bp, c, primary);
    }

    /// [`Evidence::observe`] when the canary is judged against another arm
    /// than the primary (a baseline arm, in `c`'s `stable_*`): `primary`,
    /// the primary's own `(requests, events)` of the scrape, keeps teaching
    /// the primary's dispersion prior, as before the canary started (a
    /// baseline arm starting cold is a trend, not dispersion); the split
    /// between the two judged arms teaches the rest.
    pub fn observe_against(
        &mut self,
        t: &Tuning,
        at: f64,
        seconds: f64,
        weight_bp: u32,
        c: Counts,
        primary: (f64, f64),
    ) {
        let c = c.sane();
        let (primary_requests, primary_events) =
            (primary.0.max(0.0), primary.1.clamp(0.0, primary.0.max(0.0)));
        let seconds = seconds.max(1e-3);
        let began = at - seconds;
        // φ is fixed before this scrape is seen.
        let phi = self.phi();
        if c.canary_requests <= 0.0 && self.canary_since.is_none() {
            self.dispersion
                .observe_primary(primary_events, primary_requests);
            if c.stable_requests > 0.0 {
                self.level.add(at, &c);
            }
            return;
        }
        self.canary_requests += c.canary_requests;
        self.canary_events += c.canary_events;
        self.stable_requests += c.stable_requests;
        self.stable_events += c.stable_events;
        if self.canary_since.is_none() {
            self.canary_since = Some(began);
            self.fail = vec![Component::new(FAIL_GRID.len(), 0.5, began)];
            self.last_restart = began;
            self.weight_bp = weight_bp;
            self.pass_weight_bp = weight_bp;
        } else if weight_bp != self.weight_bp {
            self.restart(began);
            self.weight_bp = weight_bp;
        } else if began - self.last_restart >= RESTART_EVERY - 1e-9 {
            self.restart(began);
        }
        if weight_bp != self.pass_weight_bp {
            self.level.restart_pass();
            self.pass = Component::new(PASS_GRID.len(), 1.0, began);
            self.floor = Component::new(FLOOR_GRID.len(), 1.0, began);
            self.pass_weight_bp = weight_bp;
        }
        let two_arms = c.canary_requests > 0.0 && c.stable_requests > 0.0 && c.events() > 0.0;
        let ratios = |null: f64, alternatives: &mut dyn Iterator<Item = f64>| -> Vec<f64> {
            alternatives
                .map(|alt| {
                    if two_arms {
                        c.log_ratio(alt, null) / phi
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let fail = ratios(t.rho0, &mut FAIL_GRID.iter().map(|m| m * t.rho0));
        let mut pass = ratios(t.rho_max, &mut PASS_GRID.iter().map(|m| m.0 * t.rho_max));
        let rise = self.level.look(began, &c, phi);
        let floor: Vec<f64> = FLOOR_GRID
            .iter()
            .map(|m| {
                if c.canary_requests > 0.0 {
                    let (f, p) = (t.failure_floor, t.failure_floor * m);
                    (xlogy(c.canary_events, p / f)
                        + xlogy(c.canary_requests - c.canary_events, (1.0 - p) / (1.0 - f)))
                        / phi
                } else {
                    0.0
                }
            })
            .collect();
        let look = if two_arms {
            self.jumps(t, &c, began, phi)
        } else {
            Look::default()
        };
        let previous = self.above.take();
        let starts = look.up && self.hold.is_none();
        let hold = self.track_hold(t, look, Kept { at, counts: c }, seconds);
        self.level.settle(at, &c, rise, hold || self.hold.is_some());
        if starts && let Some((kept, ratios)) = previous {
            self.take_into_hold(t, kept, &ratios);
        }
        if !hold && look.above && self.hold.is_none() {
            self.above = Some((Kept { at, counts: c }, fail.clone()));
        }
        for comp in &mut self.fail {
            let threshold = t.fail_threshold - comp.weight.ln();
            comp.add(&fail, SCRAPE_CAP * threshold, hold);
        }
        self.level
            .filter_pass(rise, look.down, &mut pass, &mut self.pass.sums);
        self.pass.add(&pass, f64::INFINITY, false);
        self.floor.add(&floor, f64::INFINITY, false);
        self.dispersion
            .observe_primary(primary_events, primary_requests);
        self.dispersion
            .observe_split(c.canary_events, c.stable_events, weight_bp);
        while self
            .reference
            .front()
            .is_some_and(|k| at - k.at > REFERENCE_SPAN)
        {
            self.reference.pop_front();
        }
    }

    /// A new fail-side component, and the oldest restarted one dropped.
    fn restart(&mut self, began: f64) {
        self.restarts += 1;
        self.fail.push(Component::new(
            FAIL_GRID.len(),
            restart_weight(self.restarts),
            began,
        ));
        self.last_restart = began;
        let first_kept = self.fail.first().is_some_and(|c| c.weight == 0.5);
        let restarted = self.fail.len() - usize::from(first_kept);
        if restarted > RESTARTS_KEPT {
            self.fail.remove(usize::from(first_kept));
        }
    }

    /// The kept scrapes the reference is taken from, their sum, and whether
    /// it is *young* (no scrape older than [`REFERENCE_LAG`] had events, so
    /// it is the older half of what there is). None before any scrape with
    /// traffic in both arms.
    fn reference_counts(&self, now: f64) -> Option<(Vec<Counts>, Counts, bool)> {
        let sum = |scrapes: &[Counts]| scrapes.iter().fold(Counts::default(), |acc, c| acc.plus(c));
        let mut scrapes: Vec<Counts> = self
            .reference
            .iter()
            .filter(|k| now - k.at >= REFERENCE_LAG)
            .map(|k| k.counts)
            .collect();
        let mut s = sum(&scrapes);
        let young = s.events() < 1.0 || s.canary_requests <= 0.0 || s.stable_requests <= 0.0;
        if young {
            // A young reference: its older half, so the newest scrapes
            // (perhaps an incident's start) are never all of it.
            let keep = self.reference.len().div_ceil(2);
            scrapes = self.reference.iter().take(keep).map(|k| k.counts).collect();
            s = sum(&scrapes);
        }
        if self.reference.is_empty() || s.canary_requests <= 0.0 || s.stable_requests <= 0.0 {
            return None;
        }
        Some((scrapes, s, young))
    }

    /// Puts a scrape already counted (the one before a hold began, above
    /// the reference) into the hold: its positive evidence is set aside and
    /// it leaves the reference.
    fn take_into_hold(&mut self, t: &Tuning, kept: Kept, ratios: &[f64]) {
        for comp in &mut self.fail {
            if comp.since < kept.at - 1e-9 {
                let cap = SCRAPE_CAP * (t.fail_threshold - comp.weight.ln());
                if comp.held.len() != comp.sums.len() {
                    comp.held = vec![0.0; comp.sums.len()];
                }
                for ((sum, held), r) in comp.sums.iter_mut().zip(&mut comp.held).zip(ratios) {
                    let positive = r.min(cap).max(0.0);
                    *sum -= positive;
                    *held += positive;
                }
            }
        }
        if self.reference.back().is_some_and(|k| k.at == kept.at) {
            self.reference.pop_back();
        }
        if let Some(hold) = self.hold.as_mut() {
            // The previous scrape lasted about as long as this one.
            let length = hold
                .scrapes
                .first()
                .map(|k| k.at - hold.since)
                .unwrap_or(0.0);
            hold.since -= length;
            hold.scrapes.insert(0, kept);
        }
    }

    /// What this scrape shows against the canary's reference.
    fn jumps(&self, t: &Tuning, c: &Counts, began: f64, phi: f64) -> Look {
        let Some((scrapes, reference, young)) = self.reference_counts(began) else {
            return Look::default();
        };
        let r = pooled_ratio(&scrapes, &reference);
        let (k, ec, es) = (
            c.events() / phi,
            c.canary_events / phi,
            c.stable_events / phi,
        );
        let (high, low) = (r.max(t.rho0), r.min(t.rho0));
        // An incident raises the canary's own rate by JUMP, which a canary
        // already failing two requests in three cannot do: its share of
        // the events may look higher than a young reference pulled toward
        // the primary, but it is judged, not held.
        let own_rate_can_rise =
            JUMP * (reference.canary_events + 1.0) / (reference.canary_requests + 1.0) < 1.0;
        // An excursion is forgiven only to a canary that was healthy before
        // it (rule 3): one whose reference already shows it worse than
        // `ρ_max` (at [`WORSE_BEFORE_P`]) has nothing a hold would protect,
        // and a jump of its share (its own noise, or the primary's events
        // falling by chance, which moves the share of a canary failing far
        // more than the primary most) is judged at once.
        let healthy_before = binomial_upper_tail(
            reference.events() / phi,
            reference.canary_events / phi,
            pooled_share(scrapes.iter(), t.rho_max).unwrap_or_else(|| reference.theta(t.rho_max)),
        ) >= WORSE_BEFORE_P;
        let up = if self.hold.is_some() {
            binomial_upper_tail(k, ec, c.theta(high)) < JUMP_P
        } else {
            c.canary_events >= 2.0
                && own_rate_can_rise
                && healthy_before
                && binomial_upper_tail(k, ec, c.theta(JUMP * high)) < JUMP_P
        };
        // The primary's own jumps matter to the pass side only when large
        // (an incident there makes a bad canary look good); the ordinary
        // burstiness of its events must not starve promotion.
        let down = c.stable_events >= 2.0
            && binomial_upper_tail(k, es, 1.0 - c.theta(low / PRIMARY_JUMP)) < JUMP_P;
        // Strictly above: a scrape whose share equals the reference's is
        // not, and neither is one that equals it but for rounding (with an
        // exact split and whole counts the two are often the same ratio,
        // and which side of it `r` lands on is the last bits of a root).
        let above =
            c.canary_events > k * phi * c.theta(high) * (1.0 + 1e-9) && c.canary_events >= 1.0;
        let strong = up && {
            let held = self.hold.iter().flat_map(|h| &h.scrapes);
            let all = held.clone().fold(*c, |acc, kept| acc.plus(&kept.counts));
            let each = held.map(|kept| &kept.counts).chain(std::iter::once(c));
            binomial_upper_tail(
                all.events() / phi,
                all.canary_events / phi,
                pooled_share(each, JUMP * high).unwrap_or_else(|| all.theta(JUMP * high)),
            ) < INCIDENT_P
        };
        Look {
            up,
            down,
            above,
            strong,
            young,
        }
    }

    /// Moves the hold on by one scrape; whether the scrape is held.
    fn track_hold(&mut self, t: &Tuning, look: Look, kept: Kept, seconds: f64) -> bool {
        let Look {
            up,
            down,
            above,
            strong,
            young,
        } = look;
        let Some(hold) = self.hold.as_mut() else {
            if up {
                self.hold = Some(Hold {
                    since: kept.at - seconds,
                    elevated: 1,
                    quiet: 0,
                    confirmed: false,
                    strong,
                    quiet_above: true,
                    scrapes: vec![kept],
                    young,
                });
                return true;
            }
            if !down {
                self.reference.push_back(kept);
            }
            return false;
        };
        if up {
            hold.elevated += 1;
            hold.quiet = 0;
            hold.strong |= strong;
            hold.quiet_above = true;
        } else {
            hold.quiet += 1;
            hold.quiet_above &= above;
        }
        let ended = hold.quiet >= 2 || (hold.quiet == 1 && hold.elevated < 3);
        if ended {
            // Not a jump, and the canary still above its level after it:
            // the canary's own level, whose evidence counts.
            let incident = !hold.confirmed && (hold.strong || !hold.quiet_above);
            self.hold = None;
            for comp in &mut self.fail {
                if incident {
                    comp.forget_held();
                } else {
                    comp.give_back();
                }
            }
            if incident {
                self.incidents += 1;
            }
            if !down {
                self.reference.push_back(kept);
            }
            return false;
        }
        if hold.confirmed {
            self.reference.push_back(kept);
            return false;
        }
        // An incident of the allowance covers at most this many scrapes
        // (its first and last may be partial), and one more may be above
        // the reference by chance.
        let allowance = hold.allowance(t);
        let most = (allowance / seconds).ceil() as u32 + 2;
        if hold.elevated > most {
            hold.confirmed = true;
            let scrapes = std::mem::take(&mut hold.scrapes);
            self.reference.extend(scrapes);
            self.reference.push_back(kept);
            for comp in &mut self.fail {
                comp.give_back();
            }
            return false;
        }
        hold.scrapes.push(kept);
        true
    }

    /// `ln Σ w_r M_r`: the fail side's statistic (the check fails at
    /// [`Tuning::fail_threshold`]).
    pub fn fail_statistic(&self) -> f64 {
        log_sum_exp(
            self.fail
                .iter()
                .map(|c| c.value(fail_log_prior) + c.weight.ln()),
        )
    }

    /// `ln((E_ratio + E_floor) / 2)`: the pass side's statistic.
    pub fn pass_statistic(&self) -> f64 {
        log_sum_exp([
            self.pass.value(pass_log_prior),
            self.floor.value(floor_log_prior),
        ]) - std::f64::consts::LN_2
    }

    /// The canary's events per request over the primary's (None without data).
    pub fn observed_ratio(&self) -> Option<f64> {
        let c = self.canary_events / self.canary_requests;
        let s = self.stable_events / self.stable_requests;
        (self.canary_requests > 0.0 && self.stable_requests > 0.0 && s > 0.0).then(|| c / s)
    }

    /// Seconds the current hold has lasted, if one is going on and not
    /// yet confirmed.
    pub fn holding_for(&self, now: f64) -> Option<f64> {
        self.open_hold().map(|h| now - h.since)
    }

    /// Seconds the current hold may last before it is a regression (see
    /// [`YOUNG_ALLOWANCE`]), if one is going on and not yet confirmed.
    pub fn hold_allowance(&self, t: &Tuning) -> Option<f64> {
        self.open_hold().map(|h| h.allowance(t))
    }

    /// The hold going on, unless it is already confirmed a regression.
    pub(super) fn open_hold(&self) -> Option<&Hold> {
        self.hold.as_ref().filter(|h| !h.confirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};

    /// The definition of [`pooled_ratio`] solved by plain bisection on
    /// `ln ρ` (as it once was computed, with more steps): the `ρ` at which
    /// the events' expected canary share, scrape by scrape, equals the
    /// share it had. Both solve it only to within rounding: where nearly
    /// every θ is 0 or 1 the computed share is flat over a band of `ln ρ`,
    /// about `ε` times the canary's events wide (2e-8 with 1e9 events,
    /// found by a review), and the two land at different points of it.
    /// Scrapes of the sizes drawn here keep that band under 1e-10.
    fn by_bisection(scrapes: &[Counts], sum: &Counts) -> f64 {
        let share = sum.canary_requests / (sum.canary_requests + sum.stable_requests);
        let mut all = scrapes.to_vec();
        all.push(Counts {
            canary_requests: share,
            canary_events: REFERENCE_PRIOR_EVENTS * share,
            stable_requests: 1.0 - share,
            stable_events: REFERENCE_PRIOR_EVENTS * (1.0 - share),
        });
        all.retain(|c| c.canary_events + c.stable_events > 0.0);
        let events: f64 = all.iter().map(|c| c.canary_events + c.stable_events).sum();
        let had = all.iter().map(|c| c.canary_events).sum::<f64>() / events;
        let expected = |rho: f64| {
            all.iter()
                .map(|c| {
                    let t = rho * c.canary_requests / (rho * c.canary_requests + c.stable_requests);
                    (c.canary_events + c.stable_events) * t
                })
                .sum::<f64>()
                / events
        };
        let (mut low, mut high) = (-30.0_f64, 30.0_f64);
        for _ in 0..200 {
            let mid = 0.5 * (low + high);
            if expected(mid.exp()) < had {
                low = mid;
            } else {
                high = mid;
            }
        }
        (0.5 * (low + high)).exp()
    }

    #[test]
    fn the_pooled_ratio_is_the_root_bisection_finds_at_any_weights() {
        let seed = 20261207;
        println!("seed {seed}");
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut worst = 0.0_f64;
        for case in 0..5_000 {
            let n = rng.random_range(1..=90);
            let weights = [0.0, 0.01, 0.05, 0.2, 0.5, 0.9, 1.0];
            let scrapes: Vec<Counts> = (0..n)
                .map(|_| {
                    let w = weights[rng.random_range(0..weights.len())];
                    let requests = if rng.random_bool(0.1) {
                        0.0
                    } else {
                        rng.random_range(0.0..2000.0_f64).floor()
                    };
                    let (cr, sr) = ((requests * w).round(), (requests * (1.0 - w)).round());
                    // Rates from none to all (an arm failing every request
                    // too), the canary's from its own draw.
                    let mut rate = || {
                        if rng.random_bool(0.05) {
                            1.0
                        } else {
                            rng.random_range(0.0..1.0_f64).powi(3)
                        }
                    };
                    let (pc, ps) = (rate(), rate());
                    Counts {
                        canary_requests: cr,
                        canary_events: (cr * pc).floor(),
                        stable_requests: sr,
                        stable_events: (sr * ps).floor(),
                    }
                })
                .collect();
            let sum = scrapes.iter().fold(Counts::default(), |a, c| a.plus(c));
            if sum.canary_requests + sum.stable_requests == 0.0 {
                continue;
            }
            let (fast, slow) = (pooled_ratio(&scrapes, &sum), by_bisection(&scrapes, &sum));
            let off = (fast.ln() - slow.ln()).abs();
            assert!(
                off <= 1e-9,
                "case {case} (seed {seed}): {fast} against {slow}: {scrapes:?}"
            );
            worst = worst.max(off);
        }
        println!("largest difference in ln ρ: {worst:e}");
    }
}
