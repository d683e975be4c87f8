//! What a release can decide at the traffic its baseline measured: said at
//! the start of every release (a log line, a Kubernetes Event), so that
//! low traffic is a plan rather than a surprise rollback.
//!
//! From the primary's requests per second `λ`, its rate `p` of each kind of
//! bad event, the dispersion `φ` and the plan, the evidence's expected
//! growth per second is computed in closed form: at weight `w`, with the
//! reference arm (the primary) getting `r = 1 − w` of the traffic, events
//! arrive at `k = λ·p·(w·ρ + r)` per second, the canary's share is
//! `θ(ρ) = w·ρ / (w·ρ + r)`, and one alternative `a` against a null
//! `n` gains `k·[θ·ln(θ_a/θ_n) + (1−θ)·ln((1−θ_a)/(1−θ_n))]/φ` per second,
//! with variance `k·θ(1−θ)·(ln(θ_a/θ_n) − ln((1−θ_a)/(1−θ_n)))²/φ`.
//! With a baseline arm the reference gets only the canary's share, `r = w`:
//! the same canary traffic carries less evidence (at 10% a primary
//! reference has 9 times the canary's requests, a baseline arm as many),
//! so decisions take longer and the smallest regression caught is larger.
//!
//! - **Time to promotion** of a canary as good as the primary: the steps'
//!   dwell, then at the last weight the time the pass side's expected
//!   growth needs to reach its threshold (the slower of the checks).
//! - **The smallest regression caught** with 95% probability within the
//!   maximum duration: the least ratio `ρ` for which, walking the steps as a
//!   release does, the fail side's expected evidence minus 1.645 standard
//!   deviations reaches its threshold for some alternative.
//!
//! These are forecasts from a model, not promises: `sluice simulate` gives
//! the distribution on traffic you describe.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{FAIL_GRID, GateSettings, GateState, PASS_GRID};

/// What of a release's plan a forecast reads: its weights and their
/// timing (`Plan::schedule`).
#[derive(Clone, Copy, Debug)]
pub struct Schedule<'a> {
    pub steps_bp: &'a [u32],
    pub interval: Duration,
    pub max_duration: Duration,
}

/// The forecast of one release, from its baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// The route's requests per second during the baseline.
    pub rps: f64,
    pub failure_rate: f64,
    /// The learnt latency bound and the primary's share of requests over it.
    pub latency_bound: Option<f64>,
    pub slow_share: Option<f64>,
    pub dispersion: f64,
    /// Seconds to promote a canary as good as the primary (None: not
    /// within the maximum duration).
    pub promotion_secs: Option<f64>,
    /// The least failure ratio caught with 95% probability in time.
    pub smallest_failure_ratio: Option<f64>,
    /// The same for slow requests.
    pub smallest_latency_ratio: Option<f64>,
    pub max_duration_secs: f64,
}

/// What a check judges: failures or latency.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Judged {
    Failures,
    Latency,
}

/// The share of the route's traffic the canary is judged against at
/// canary weight `w`: the old version's `1 − w` (the primary, plus the
/// baseline arm when there is one), except latency with a baseline arm,
/// judged against the arm's own `w`.
fn reference_share(s: &GateSettings, w: f64, judged: Judged) -> f64 {
    if s.baseline_arm && judged == Judged::Latency {
        w
    } else {
        1.0 - w
    }
}

/// Expected gain and its variance, per second, of alternative `alt`
/// against `null` when the truth is `truth`, at canary share `w` and
/// reference share `r`.
fn growth(rate: f64, (w, r): (f64, f64), truth: f64, alt: f64, null: f64, phi: f64) -> (f64, f64) {
    if w <= 0.0 || r <= 0.0 || w + r > 1.0 + 1e-12 || rate <= 0.0 {
        return (0.0, 0.0);
    }
    let theta = |rho: f64| w * rho / (w * rho + r);
    let k = rate * (w * truth + r);
    let (t, ta, tn) = (theta(truth), theta(alt), theta(null));
    let (up, down) = ((ta / tn).ln(), ((1.0 - ta) / (1.0 - tn)).ln());
    let mean = k * (t * up + (1.0 - t) * down) / phi;
    let var = k * t * (1.0 - t) * (up - down).powi(2) / phi;
    (mean, var)
}

/// The weights a release passes through and how long it stays at each
/// (the last until `max`).
fn schedule(plan: Schedule<'_>, max: f64) -> Vec<(f64, f64)> {
    let steps: Vec<f64> = plan
        .steps_bp
        .iter()
        .map(|bp| f64::from(*bp) / 10_000.0)
        .collect();
    let interval = plan.interval.as_secs_f64();
    let mut out = Vec::new();
    let mut used = 0.0;
    for (i, w) in steps.iter().enumerate() {
        let dwell = if i + 1 == steps.len() {
            (max - used).max(0.0)
        } else {
            interval.min((max - used).max(0.0))
        };
        used += dwell;
        out.push((*w, dwell));
    }
    out
}

/// Seconds until a canary as good as the primary is shown no worse, for
/// events at `rate` per second of route traffic.
fn promotion_secs(
    plan: Schedule<'_>,
    s: &GateSettings,
    rate: f64,
    phi: f64,
    judged: Judged,
) -> Option<f64> {
    let w = f64::from(*plan.steps_bp.last()?) / 10_000.0;
    let threshold = s.pass_threshold() + std::f64::consts::LN_2;
    let at_last = PASS_GRID
        .iter()
        .filter_map(|(m, prior)| {
            let shares = (w, reference_share(s, w, judged));
            let (mean, _) = growth(rate, shares, 1.0, s.rho_max * m, s.rho_max, phi);
            (mean > 0.0).then(|| (threshold - prior.ln()) / mean)
        })
        .fold(f64::INFINITY, f64::min);
    let before: f64 = plan.interval.as_secs_f64() * (plan.steps_bp.len() - 1) as f64;
    let total = before + at_last.max(plan.interval.as_secs_f64());
    (total.is_finite() && total <= plan.max_duration.as_secs_f64()).then_some(total)
}

/// Whether a canary `ratio` times worse is caught with 95% probability
/// within `max` seconds.
fn caught(
    plan: Schedule<'_>,
    s: &GateSettings,
    (rate, phi, judged): (f64, f64, Judged),
    ratio: f64,
    max: f64,
) -> bool {
    let threshold = s.fail_threshold() + 2f64.ln() + (FAIL_GRID.len() as f64).ln();
    FAIL_GRID.iter().any(|m| {
        let alt = s.rho0 * m;
        let (mut mean, mut var) = (0.0, 0.0);
        for (w, dwell) in schedule(plan, max) {
            let shares = (w, reference_share(s, w, judged));
            let (m1, v1) = growth(rate, shares, ratio, alt, s.rho0, phi);
            mean += m1 * dwell;
            var += v1 * dwell;
        }
        mean - 1.645 * var.sqrt() >= threshold
    })
}

/// The least ratio (between 1 and 1000) caught in time, by bisection on
/// a log scale.
fn smallest_ratio(
    plan: Schedule<'_>,
    s: &GateSettings,
    rate: f64,
    phi: f64,
    judged: Judged,
) -> Option<f64> {
    let max = plan.max_duration.as_secs_f64();
    let how = (rate, phi, judged);
    if !caught(plan, s, how, 1000.0, max) {
        return None;
    }
    let (mut lo, mut hi) = (s.rho0.max(1.0), 1000.0f64);
    for _ in 0..40 {
        let mid = (lo * hi).sqrt();
        if caught(plan, s, how, mid, max) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// The forecast from a gate state whose baseline has been measured (None
/// without baseline traffic).
pub fn forecast(plan: Schedule<'_>, s: &GateSettings, gate: &GateState) -> Option<Forecast> {
    let b = &gate.baseline;
    if gate.baseline_seconds <= 0.0 || b.requests <= 0.0 {
        return None;
    }
    let rps = b.requests / gate.baseline_seconds;
    let failure_rate = (b.failures + 0.5) / (b.requests + 1.0);
    let phi = gate.errors.phi();
    let latency_bound = gate.first_latency_bound();
    let slow_share = latency_bound.map(|bound| {
        let total = b.buckets.last().map(|x| x.1).unwrap_or(0.0);
        (b.slower_than(bound).unwrap_or(0.0) + 0.5) / (total + 1.0)
    });
    // Without a bound yet, slow requests are about 1% (the p99's bucket).
    let slow = slow_share.unwrap_or(0.01);
    let promotion = [(failure_rate, Judged::Failures), (slow, Judged::Latency)]
        .iter()
        .map(|(p, judged)| promotion_secs(plan, s, rps * p, phi, *judged))
        .try_fold(0.0f64, |acc, t| t.map(|t| acc.max(t)));
    Some(Forecast {
        rps,
        failure_rate,
        latency_bound,
        slow_share,
        dispersion: phi,
        promotion_secs: promotion,
        smallest_failure_ratio: smallest_ratio(plan, s, rps * failure_rate, phi, Judged::Failures),
        smallest_latency_ratio: smallest_ratio(plan, s, rps * slow, phi, Judged::Latency),
        max_duration_secs: plan.max_duration.as_secs_f64(),
    })
}

fn duration(secs: f64) -> String {
    if secs >= 90.0 {
        format!("{:.0}m", (secs / 60.0).round())
    } else {
        format!("{secs:.0}s")
    }
}

impl fmt::Display for Forecast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "baseline: {:.1} req/s, {:.2}% failures",
            self.rps,
            self.failure_rate * 100.0
        )?;
        if let (Some(bound), Some(share)) = (self.latency_bound, self.slow_share) {
            write!(
                f,
                ", {:.2}% slower than {:.0}ms",
                share * 100.0,
                bound * 1000.0
            )?;
        }
        if self.dispersion > 1.05 {
            write!(f, ", dispersion {:.1}", self.dispersion)?;
        }
        let max = duration(self.max_duration_secs);
        match self.promotion_secs {
            Some(t) => write!(
                f,
                ". A canary as good as the primary is expected to be promoted in about {}",
                duration(t)
            )?,
            None => write!(
                f,
                ". At this traffic a canary as good as the primary is not expected to be shown no worse within the {max} maximum; the release will then do what --when-undecided says (default: wait for a person)"
            )?,
        }
        let ratio = |r: Option<f64>| match r {
            Some(r) if r < 100.0 => format!("{r:.1}×"),
            Some(r) => format!("{r:.0}×"),
            None => "no ratio".into(),
        };
        write!(
            f,
            "; within {max} it catches, with 95% probability, a canary failing {} as often as the primary",
            ratio(self.smallest_failure_ratio)
        )?;
        if self.latency_bound.is_some() {
            write!(
                f,
                " or {} as often slower than the latency bound",
                ratio(self.smallest_latency_ratio)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Arm;
    use crate::plan::Plan;

    fn baseline(rps: f64, failure_rate: f64, seconds: f64) -> GateState {
        let requests = rps * seconds;
        GateState {
            baseline: Arm {
                requests,
                failures: requests * failure_rate,
                buckets: Vec::new(),
            },
            baseline_seconds: seconds,
            ..GateState::default()
        }
    }

    fn plan() -> Plan {
        Plan {
            steps_bp: vec![1000, 2500, 5000],
            interval: std::time::Duration::from_secs(60),
            ..Plan::default()
        }
    }

    #[test]
    fn more_traffic_decides_sooner_and_catches_smaller_regressions() {
        let s = GateSettings::default();
        let busy = forecast(plan().schedule(), &s, &baseline(400.0, 0.01, 30.0)).unwrap();
        let quiet = forecast(plan().schedule(), &s, &baseline(40.0, 0.01, 30.0)).unwrap();
        let (busy_t, quiet_t) = (busy.promotion_secs.unwrap(), quiet.promotion_secs.unwrap());
        assert!(busy_t < quiet_t, "{busy_t} vs {quiet_t}");
        let (b, q) = (
            busy.smallest_failure_ratio.unwrap(),
            quiet.smallest_failure_ratio.unwrap(),
        );
        assert!(b < q && b > 1.0, "{b} vs {q}");
        // Three one-minute steps: no promotion before the last step's dwell.
        assert!(busy_t >= 180.0, "{busy_t}");
    }

    #[test]
    fn a_baseline_arm_costs_latency_evidence_and_not_failure_evidence() {
        // Latency is judged against the arm, a reference of the canary's
        // own size (not nine to one at 10%): it carries less evidence.
        // Failures are judged against primary + arm, the old version's
        // whole traffic: as without an arm.
        let primary = GateSettings::default();
        let mut arm = GateSettings::default();
        arm.use_baseline_arm(false);
        let state = baseline(100.0, 0.01, 30.0);
        let f = |plan: &Plan, s: &GateSettings| forecast(plan.schedule(), s, &state).unwrap();
        let quarter = Plan {
            steps_bp: vec![1000, 2500],
            ..plan()
        };
        // Ending at 25%: the latency check's 25% against the primary's 75%.
        let (p, a) = (f(&quarter, &primary), f(&quarter, &arm));
        assert!(
            p.promotion_secs.unwrap() < a.promotion_secs.unwrap_or(f64::INFINITY),
            "promotion {:?}s against the primary, {:?}s with the arm",
            p.promotion_secs,
            a.promotion_secs
        );
        // Ending at 50%, the arm and the primary's share are the same size.
        let (p, a) = (f(&plan(), &primary), f(&plan(), &arm));
        let (pp, ap) = (p.promotion_secs.unwrap(), a.promotion_secs.unwrap());
        assert!((pp - ap).abs() < 1e-9, "{pp} vs {ap}");
        // The smaller latency reference of the first steps costs what is
        // caught; the failure reference costs nothing.
        let (pl, al) = (
            p.smallest_latency_ratio.unwrap(),
            a.smallest_latency_ratio.unwrap(),
        );
        assert!(
            pl < al,
            "latency: {pl} against the primary, {al} against the arm"
        );
        let (pf, af) = (
            p.smallest_failure_ratio.unwrap(),
            a.smallest_failure_ratio.unwrap(),
        );
        assert!((pf - af).abs() < 1e-9, "failures: {pf} vs {af}");
    }

    #[test]
    fn five_requests_a_second_is_undecided_within_half_an_hour() {
        let s = GateSettings::default();
        let f = forecast(plan().schedule(), &s, &baseline(5.0, 0.01, 30.0)).unwrap();
        assert_eq!(f.promotion_secs, None);
        let text = f.to_string();
        assert!(text.contains("not expected to be shown no worse"), "{text}");
        assert!(text.contains("5.0 req/s"), "{text}");
    }

    #[test]
    fn no_baseline_no_forecast() {
        assert_eq!(
            forecast(
                plan().schedule(),
                &GateSettings::default(),
                &GateState::default()
            ),
            None
        );
    }
}
