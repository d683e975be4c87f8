//! The report that ends an experiment: both arms' counts, error rates and
//! latency quantiles with 95% intervals, and the gate's comparison.
//!
//! - Error rates: Wilson score intervals.
//! - Latency quantiles: the proxy's histogram gives each request's bucket,
//!   so a quantile is known to a bucket. Its interval is the distribution-
//!   free order-statistic one: the ranks `n·q ± 1.96·√(n·q·(1−q))`, read
//!   as the lower bound of the first rank's bucket and the upper bound of
//!   the second's. The point value is the upper bound of the bucket that
//!   holds rank `n·q` (conservative: never below the truth).
//! - The comparison is the sequential gate's: its likelihood-ratio evidence
//!   on failures and on slow requests, with the same α and β as a release.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::counters::Arm;
use crate::gate::{Evidence, GateSettings, GateState, evidence_report, latency_check_name};

const Z: f64 = 1.96;

/// The quantiles an experiment reports.
pub const QUANTILES: [f64; 3] = [0.5, 0.95, 0.99];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantile {
    pub q: f64,
    /// Seconds; None without requests (or above the last finite bound).
    pub value: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmReport {
    pub requests: u64,
    pub failures: u64,
    /// Failures per request, with its 95% interval.
    pub error_rate: Option<f64>,
    pub error_rate_low: Option<f64>,
    pub error_rate_high: Option<f64>,
    pub latency: Vec<Quantile>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub check: String,
    /// "worse", "no worse" (shown), or "not shown either way".
    pub verdict: String,
    /// The canary's rate over the primary's.
    pub ratio: Option<f64>,
    pub evidence_against: f64,
    pub evidence_for: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentReport {
    pub stable: ArmReport,
    pub canary: ArmReport,
    pub comparisons: Vec<Comparison>,
}

/// The Wilson score interval of `events` out of `n`.
pub fn wilson(events: f64, n: f64) -> Option<(f64, f64)> {
    if n <= 0.0 {
        return None;
    }
    let p = (events / n).clamp(0.0, 1.0);
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// The bucket bounds around rank `rank` (1-based, fractional) of
/// cumulative `buckets`: (the bucket's lower bound, its upper bound).
fn bucket_of(buckets: &[(f64, f64)], rank: f64) -> Option<(f64, f64)> {
    let mut lower = 0.0;
    for (le, count) in buckets {
        if *count >= rank {
            return Some((lower, *le));
        }
        lower = *le;
    }
    None
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

pub fn quantile(arm: &Arm, q: f64) -> Quantile {
    let n = arm.buckets.last().map(|b| b.1).unwrap_or(0.0);
    if n < 1.0 {
        return Quantile {
            q,
            value: None,
            low: None,
            high: None,
        };
    }
    let spread = Z * (n * q * (1.0 - q)).sqrt();
    let rank = (n * q).ceil().max(1.0);
    let low_rank = (n * q - spread).floor().max(1.0);
    let high_rank = (n * q + spread).ceil().min(n);
    Quantile {
        q,
        value: bucket_of(&arm.buckets, rank).and_then(|(_, hi)| finite(hi)),
        low: bucket_of(&arm.buckets, low_rank).map(|(lo, _)| lo),
        high: bucket_of(&arm.buckets, high_rank).and_then(|(_, hi)| finite(hi)),
    }
}

pub fn arm_report(arm: &Arm) -> ArmReport {
    let interval = wilson(arm.failures, arm.requests);
    ArmReport {
        requests: arm.requests.round() as u64,
        failures: arm.failures.round() as u64,
        error_rate: (arm.requests > 0.0).then(|| arm.failures / arm.requests),
        error_rate_low: interval.map(|i| i.0),
        error_rate_high: interval.map(|i| i.1),
        latency: QUANTILES.iter().map(|q| quantile(arm, *q)).collect(),
    }
}

fn comparison(check: &str, e: &Evidence, settings: &GateSettings) -> Comparison {
    let r = evidence_report(e, settings);
    let verdict = if r.fail >= r.fail_threshold {
        "worse than the primary"
    } else if r.proven {
        "shown no worse than the primary"
    } else {
        "not shown either way"
    };
    Comparison {
        check: check.to_string(),
        verdict: verdict.to_string(),
        ratio: e.observed_ratio(),
        evidence_against: r.fail,
        evidence_for: r.pass,
    }
}

/// The report of an experiment whose evidence is `gate`.
pub fn experiment(gate: &GateState, settings: &GateSettings) -> ExperimentReport {
    let mut comparisons = vec![comparison("errors", &gate.errors, settings)];
    for l in &gate.latency {
        comparisons.push(comparison(
            &latency_check_name(l.bound),
            &l.evidence,
            settings,
        ));
    }
    ExperimentReport {
        stable: arm_report(&gate.total_stable),
        canary: arm_report(&gate.total_canary),
        comparisons,
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{:.0}ms", v * 1000.0),
        None => "-".into(),
    }
}

fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{:.2}%", v * 100.0),
        None => "-".into(),
    }
}

impl fmt::Display for ExperimentReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "experiment report (95% intervals)")?;
        for (name, arm) in [("stable", &self.stable), ("canary", &self.canary)] {
            write!(
                f,
                "  {name:<7} {} requests, {} failed, error rate {} [{}, {}]",
                arm.requests,
                arm.failures,
                pct(arm.error_rate),
                pct(arm.error_rate_low),
                pct(arm.error_rate_high)
            )?;
            for q in &arm.latency {
                write!(
                    f,
                    ", p{} {} [{}, {}]",
                    q.q * 100.0,
                    ms(q.value),
                    ms(q.low),
                    ms(q.high)
                )?;
            }
            writeln!(f)?;
        }
        for c in &self.comparisons {
            writeln!(
                f,
                "  {}: canary {} (ratio {}, evidence against {:.1}, for {:.1})",
                c.check,
                c.verdict,
                c.ratio
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "-".into()),
                c.evidence_against,
                c.evidence_for
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_published_values() {
        // 10 of 100 (a textbook example): [0.0552, 0.1744].
        let (lo, hi) = wilson(10.0, 100.0).unwrap();
        assert!(
            (lo - 0.0552).abs() < 5e-4 && (hi - 0.1744).abs() < 5e-4,
            "{lo} {hi}"
        );
        // No events still has an upper bound: 3.7% at n = 100.
        let (lo, hi) = wilson(0.0, 100.0).unwrap();
        assert_eq!(lo, 0.0);
        assert!((hi - 0.037).abs() < 1e-3, "{hi}");
        assert_eq!(wilson(0.0, 0.0), None);
    }

    #[test]
    fn quantiles_are_read_to_their_bucket_with_rank_intervals() {
        // 1000 requests: 900 under 10ms, 90 in (10ms, 50ms], 10 in (50ms, 1s].
        let arm = Arm {
            requests: 1000.0,
            failures: 0.0,
            buckets: vec![
                (0.01, 900.0),
                (0.05, 990.0),
                (1.0, 1000.0),
                (f64::INFINITY, 1000.0),
            ],
        };
        let p50 = quantile(&arm, 0.5);
        assert_eq!(
            (p50.value, p50.low, p50.high),
            (Some(0.01), Some(0.0), Some(0.01))
        );
        // Rank 950 ± 13.5: ranks 936..964, all in the second bucket.
        let p95 = quantile(&arm, 0.95);
        assert_eq!(
            (p95.value, p95.low, p95.high),
            (Some(0.05), Some(0.01), Some(0.05))
        );
        // Rank 990 ± 6.2: 983..997, from the second bucket into the third.
        let p99 = quantile(&arm, 0.99);
        assert_eq!(
            (p99.value, p99.low, p99.high),
            (Some(0.05), Some(0.01), Some(1.0))
        );
    }
}
