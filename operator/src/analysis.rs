//! Analysis results: every check of a tick is Pass, Fail or Inconclusive.
//!
//! Inconclusive is not a soft pass: too little traffic, no data, NaN or an
//! unreachable provider never advance the weight and never promote.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    #[default]
    Inconclusive,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub outcome: Outcome,
    /// The measured value, when there is one.
    pub value: Option<f64>,
    /// The bound it was held to, e.g. `>= 99` or `<= 0.5s`.
    pub threshold: String,
    /// Why, in words (always set for Fail and Inconclusive).
    pub reason: String,
    /// A failure of this check rolls back at once (the sequential gate has
    /// already budgeted its false alarms), not after `failure_limit` ticks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub decisive: bool,
    /// The sequential gate's evidence behind this check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceReport>,
}

/// The sequential gate's evidence for one check: likelihood-ratio mixtures
/// against "no worse than ρ₀" (fail side) and against "ρ_max times worse"
/// (pass side), with the values they must reach.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvidenceReport {
    pub fail: f64,
    pub fail_threshold: f64,
    pub pass: f64,
    pub pass_threshold: f64,
    /// The pass side reached its threshold: the canary is shown no worse.
    pub proven: bool,
    /// Events per request so far, canary and primary.
    pub canary_rate: Option<f64>,
    pub primary_rate: Option<f64>,
    /// The over-dispersion `φ` the evidence is tempered by (1: binomial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispersion: Option<f64>,
    /// Seconds a jump of the canary has been held as a possible incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding_for: Option<f64>,
    /// Seconds that hold may last before it counts as a regression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_allowance: Option<f64>,
}

impl CheckResult {
    pub fn inconclusive(name: &str, threshold: String, reason: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            outcome: Outcome::Inconclusive,
            value: None,
            threshold,
            reason: reason.into(),
            ..Self::default()
        }
    }

    /// Judges `value` against optional bounds: an infinity past a bound
    /// fails; NaN, and an infinity no bound limits, are inconclusive.
    pub fn bounded(name: &str, value: f64, min: Option<f64>, max: Option<f64>, unit: &str) -> Self {
        let threshold = match (min, max) {
            (Some(lo), Some(hi)) => format!("{lo}{unit}..={hi}{unit}"),
            (Some(lo), None) => format!(">= {lo}{unit}"),
            (None, Some(hi)) => format!("<= {hi}{unit}"),
            (None, None) => "any".to_string(),
        };
        let low = min.is_some_and(|lo| value < lo);
        let high = max.is_some_and(|hi| value > hi);
        // An infinity past a bound fails it (Prometheus's `+Inf` for a
        // quantile beyond the largest bucket is a slow canary); NaN, or an
        // infinity on the side no bound limits (a division by zero), says
        // nothing.
        if value.is_nan() || (value.is_infinite() && !low && !high) {
            return Self::inconclusive(name, threshold, format!("the value is {value}"));
        }
        let (outcome, reason) = if low {
            (
                Outcome::Fail,
                format!("{} is below {}", fmt_value(value, unit), threshold),
            )
        } else if high {
            (
                Outcome::Fail,
                format!(
                    "{} is above the limit {}",
                    fmt_value(value, unit),
                    threshold
                ),
            )
        } else {
            (Outcome::Pass, String::new())
        };
        Self {
            name: name.to_string(),
            outcome,
            value: Some(value),
            threshold,
            reason,
            ..Self::default()
        }
    }
}

impl CheckResult {
    /// A latency gate `name<=max`, judged by `within` when the counts decide
    /// it exactly (requests at or under a bucket bound), else by the value.
    pub fn latency(name: &str, reading: LatencyReading, max: f64) -> Self {
        let mut check = Self::bounded(name, reading.value, None, Some(max), "s");
        if let Some(within) = reading.within
            && check.outcome != Outcome::Inconclusive
        {
            if within {
                check.outcome = Outcome::Pass;
                check.reason = String::new();
            } else {
                check.outcome = Outcome::Fail;
                check.reason = format!(
                    "{} is above the limit {}",
                    fmt_value(reading.value.max(max), "s"),
                    check.threshold
                );
            }
        }
        check
    }
}

/// A measured latency quantile: its value (as `histogram_quantile` gives
/// it) and, when the counts decide it exactly, whether the quantile is
/// within the gate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyReading {
    pub value: f64,
    pub within: Option<bool>,
}

impl From<f64> for LatencyReading {
    fn from(value: f64) -> Self {
        Self {
            value,
            within: None,
        }
    }
}

fn rate(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}%", v * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn fmt_value(v: f64, unit: &str) -> String {
    if v.is_infinite() {
        format!("{}Inf", if v > 0.0 { "+" } else { "-" })
    } else if unit == "s" {
        format!("{:.0}ms", v * 1000.0)
    } else {
        format!("{v:.2}{unit}")
    }
}

/// One tick's evidence about the canary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Weighted canary requests seen in the tick's window (None if unknown).
    pub canary_requests: Option<u64>,
    pub checks: Vec<CheckResult>,
    /// Canary traffic sent by A/B rules in the same window: shown, not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab: Option<AbTraffic>,
    /// Whether the evidence allows promotion. None (the threshold gate): a
    /// passing tick does. The sequential gate sets it: promotion needs its
    /// pass side, while a step may advance on exposure without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotable: Option<bool>,
    /// What the canary was judged against, for people, when not the
    /// primary: a release with a baseline arm says "the baseline arm".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against: Option<String>,
}

/// Requests an A/B rule (`canary_match`) sent to the canary in a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AbTraffic {
    pub requests: u64,
    /// Percent classified `success`; None without requests.
    pub success_rate: Option<f64>,
}

impl Analysis {
    /// Fail if any check failed, else Inconclusive if any was, else Pass.
    /// A tick without checks is Inconclusive: nothing was shown.
    pub fn verdict(&self) -> Outcome {
        if self.checks.iter().any(|c| c.outcome == Outcome::Fail) {
            Outcome::Fail
        } else if self.checks.is_empty()
            || self
                .checks
                .iter()
                .any(|c| c.outcome == Outcome::Inconclusive)
        {
            Outcome::Inconclusive
        } else {
            Outcome::Pass
        }
    }

    /// What promotion still waits for, in numbers: each check whose pass
    /// side has not reached its threshold, with how far it is.
    pub fn missing(&self) -> String {
        let missing: Vec<String> = self
            .checks
            .iter()
            .filter_map(|c| {
                let e = c.evidence.as_ref()?;
                if e.proven {
                    return None;
                }
                if e.pass_threshold == 0.0 {
                    return Some(format!("{}: {}", c.name, c.reason));
                }
                Some(format!(
                    "{}: evidence for the canary {:.1} of the {:.0} needed (canary {} vs primary {})",
                    c.name,
                    e.pass,
                    e.pass_threshold,
                    rate(e.canary_rate),
                    rate(e.primary_rate)
                ))
            })
            .collect();
        if missing.is_empty() {
            self.summary()
        } else {
            missing.join("; ")
        }
    }

    /// A one-line account of why the tick ended as it did.
    /// What the canary was judged against: "the primary" unless
    /// [`Self::against`] says otherwise.
    pub fn reference(&self) -> &str {
        self.against.as_deref().unwrap_or("the primary")
    }

    pub fn summary(&self) -> String {
        let notable: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.outcome != Outcome::Pass && !c.reason.starts_with("not judged:"))
            .map(|c| format!("{}: {}", c.name, c.reason))
            .collect();
        if notable.is_empty() && self.promotable == Some(false) {
            // Nothing failed, but promotion still waits: never "all passed".
            let all: Vec<&str> = self.checks.iter().map(|c| c.name.as_str()).collect();
            format!(
                "nothing failed ({}); not yet shown no worse",
                all.join(", ")
            )
        } else if notable.is_empty() {
            let all: Vec<&str> = self.checks.iter().map(|c| c.name.as_str()).collect();
            format!("all checks passed ({})", all.join(", "))
        } else {
            notable.join("; ")
        }
    }

    /// Whether a failure in this tick rolls back at once.
    pub fn decisive_failure(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.decisive && c.outcome == Outcome::Fail)
    }

    /// The first check that holds a jump of the canary as a possible
    /// incident (the sequential gate's incidents, `docs/gate.md`): while
    /// one does, the weight neither advances nor promotes.
    pub fn holding(&self) -> Option<&CheckResult> {
        self.checks
            .iter()
            .find(|c| c.evidence.as_ref().is_some_and(|e| e.holding_for.is_some()))
    }

    /// Whether this tick allows promotion (it must also pass).
    pub fn promotes(&self) -> bool {
        self.verdict() == Outcome::Pass && self.promotable != Some(false)
    }

    pub fn value_of(&self, name: &str) -> Option<f64> {
        self.checks
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.value)
    }
}

/// The gate on traffic volume that precedes every other check: below
/// `min_requests`, the other checks would judge noise.
pub fn request_volume_check(min_requests: u64, canary_requests: Option<u64>) -> CheckResult {
    let threshold = format!(">= {min_requests}");
    match canary_requests {
        None => {
            CheckResult::inconclusive("requests", threshold, "the canary request count is unknown")
        }
        Some(n) if n < min_requests => CheckResult {
            name: "requests".into(),
            outcome: Outcome::Inconclusive,
            value: Some(n as f64),
            threshold,
            reason: format!("only {n} canary requests this tick (need {min_requests})"),
            ..CheckResult::default()
        },
        Some(n) => CheckResult {
            name: "requests".into(),
            outcome: Outcome::Pass,
            value: Some(n as f64),
            threshold,
            reason: String::new(),
            ..CheckResult::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prometheus answers `+Inf` for a quantile beyond the largest bucket:
    /// past a bound, an infinity fails it; where no bound limits it, or as
    /// NaN, it says nothing.
    #[test]
    fn an_infinity_past_a_bound_fails_it() {
        let judged = |v: f64, min: Option<f64>, max: Option<f64>| {
            CheckResult::bounded("c", v, min, max, "").outcome
        };
        assert_eq!(judged(f64::INFINITY, None, Some(0.5)), Outcome::Fail);
        assert_eq!(judged(f64::NEG_INFINITY, Some(99.0), None), Outcome::Fail);
        assert_eq!(judged(f64::INFINITY, Some(1.0), Some(5.0)), Outcome::Fail);
        assert_eq!(
            judged(f64::INFINITY, Some(99.0), None),
            Outcome::Inconclusive
        );
        assert_eq!(
            judged(f64::NEG_INFINITY, None, Some(0.5)),
            Outcome::Inconclusive
        );
        assert_eq!(
            judged(f64::NAN, Some(1.0), Some(5.0)),
            Outcome::Inconclusive
        );
        let slow = CheckResult::latency(
            "p99",
            LatencyReading {
                value: f64::INFINITY,
                within: None,
            },
            0.5,
        );
        assert_eq!(slow.outcome, Outcome::Fail);
        assert_eq!(slow.reason, "+Inf is above the limit <= 0.5s");
    }

    #[test]
    fn verdict_prefers_fail_then_inconclusive() {
        let pass = CheckResult::bounded("a", 1.0, Some(0.0), None, "");
        let fail = CheckResult::bounded("b", 1.0, None, Some(0.5), "");
        let nan = CheckResult::bounded("c", f64::NAN, None, Some(0.5), "");
        assert_eq!(pass.outcome, Outcome::Pass);
        assert_eq!(fail.outcome, Outcome::Fail);
        assert_eq!(nan.outcome, Outcome::Inconclusive);
        let a = |c: Vec<CheckResult>| {
            Analysis {
                canary_requests: Some(1),
                checks: c,
                ..Analysis::default()
            }
            .verdict()
        };
        assert_eq!(a(vec![pass.clone(), nan.clone(), fail]), Outcome::Fail);
        assert_eq!(a(vec![pass.clone(), nan]), Outcome::Inconclusive);
        assert_eq!(a(vec![pass]), Outcome::Pass);
        assert_eq!(a(vec![]), Outcome::Inconclusive);
    }
}
