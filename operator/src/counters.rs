//! Windows of traffic from the proxy's own counters: what happened on a
//! route between two scrapes, per arm.
//!
//! Rules (those of PromQL's `increase()` and `histogram_quantile`):
//! - Deltas are taken per series and per scraped target (proxy replica),
//!   never on a sum: one replica restarting while others keep counting does
//!   not make the sum go backwards.
//! - A series whose value went down was reset (its process restarted): its
//!   delta is its new value, counted from 0.
//! - A series seen for the first time on a target already known is new
//!   since the last scrape (counters start at 0), so its whole value counts.
//!   A target seen for the first time only sets a baseline: what it counted
//!   before cannot be placed in time.
//! - After summing, cumulative bucket counts are made monotonic (each at
//!   least the one below), as `histogram_quantile` does.
//! - Failures are a subset of requests, so a window's failure share is
//!   always within [0, 1].

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::scrape::{Sample, histogram_quantile};

/// One arm's traffic in a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub requests: f64,
    pub failures: f64,
    /// Cumulative duration buckets `(le, count)`, sorted, `+Inf` last.
    #[serde(with = "buckets_text")]
    pub buckets: Vec<(f64, f64)>,
}

/// Serde for `(le, count)` buckets: `le` as the text Prometheus uses, so
/// `+Inf` survives JSON.
pub mod buckets_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(b: &[(f64, f64)], s: S) -> Result<S::Ok, S::Error> {
        let rows: Vec<(String, f64)> = b
            .iter()
            .map(|(le, c)| {
                let le = if le.is_infinite() {
                    "+Inf".to_string()
                } else {
                    le.to_string()
                };
                (le, *c)
            })
            .collect();
        rows.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(f64, f64)>, D::Error> {
        Vec::<(String, f64)>::deserialize(d)?
            .into_iter()
            .map(|(le, c)| {
                super::parse_le(&le).map(|le| (le, c)).ok_or_else(|| {
                    serde::de::Error::custom(format!("`{le}` is not a bucket bound"))
                })
            })
            .collect()
    }
}

impl Arm {
    /// Percent of requests classified `success`; None without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0.0)
            .then(|| (100.0 * (self.requests - self.failures) / self.requests).clamp(0.0, 100.0))
    }

    /// Requests that took longer than `le` seconds (a bucket bound).
    pub fn slower_than(&self, le: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        let within = self
            .buckets
            .iter()
            .find(|(b, _)| (*b - le).abs() <= le * 1e-9)?
            .1;
        Some((total - within).max(0.0))
    }

    /// The `q` quantile of the window's durations, as `histogram_quantile`.
    pub fn quantile(&self, q: f64) -> f64 {
        histogram_quantile(q, &self.buckets)
    }

    /// Adds `count` to the cumulative bucket `le` (call [`Arm::finish`] after).
    pub fn add_bucket(&mut self, le: f64, count: f64) {
        match self
            .buckets
            .iter_mut()
            .find(|(b, _)| b.to_bits() == le.to_bits())
        {
            Some(slot) => slot.1 += count,
            None => self.buckets.push((le, count)),
        }
    }

    /// Adds another window's traffic to this one (both cumulative buckets).
    pub fn add(&mut self, other: &Arm) {
        self.requests += other.requests;
        self.failures += other.failures;
        for (le, count) in &other.buckets {
            self.add_bucket(*le, *count);
        }
        self.finish();
    }

    /// Sorts the buckets and makes them monotonic.
    pub fn finish(&mut self) {
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut highest = 0.0f64;
        for (_, c) in &mut self.buckets {
            highest = highest.max(*c);
            *c = highest;
        }
    }
}

/// A route's traffic between two scrapes, by arm. Weighted (and sticky)
/// traffic in `stable`, `canary` and, on a route with a baseline arm,
/// `baseline`; A/B-rule traffic apart in `canary_match`, mirrored copies in
/// `canary_mirror` (the proxy sends neither to the baseline arm).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Window {
    pub stable: Arm,
    pub canary: Arm,
    pub canary_match: Arm,
    /// The canary's answers to mirrored copies.
    pub canary_mirror: Arm,
    /// The baseline arm (a fresh copy of the primary's version given the
    /// canary's share): `backend="baseline"`, weighted or sticky.
    pub baseline: Arm,
    /// How long the window lasted, in seconds (0: unknown).
    pub seconds: f64,
}

impl Window {
    /// Sorts and repairs every arm's buckets.
    pub fn finish(&mut self) {
        for arm in [
            &mut self.stable,
            &mut self.canary,
            &mut self.canary_match,
            &mut self.canary_mirror,
            &mut self.baseline,
        ] {
            arm.finish();
        }
    }
}

/// Which arm a sample belongs to.
pub fn arm_of<'a>(
    window: &'a mut Window,
    labels: &BTreeMap<String, String>,
) -> Option<&'a mut Arm> {
    let decision = labels.get("decision").map(String::as_str);
    match (labels.get("backend").map(String::as_str), decision) {
        // Sticky (affinity) traffic was placed by the weight once and is
        // user traffic like it: judged with it.
        (Some("stable"), Some("weight" | "affinity") | None) => Some(&mut window.stable),
        (Some("canary"), Some("weight" | "affinity") | None) => Some(&mut window.canary),
        (Some("baseline"), Some("weight" | "affinity") | None) => Some(&mut window.baseline),
        (Some("canary"), Some("match")) => Some(&mut window.canary_match),
        (Some("canary"), Some("mirror")) => Some(&mut window.canary_mirror),
        _ => None,
    }
}

const REQUESTS: &str = "sluice_requests_total";
const BUCKETS: &str = "sluice_request_duration_seconds_bucket";

/// A series' identity: its name and every label.
pub fn series_key(sample: &Sample) -> String {
    let mut key = sample.name.clone();
    for (k, v) in &sample.labels {
        key.push('\u{1}');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    key
}

/// Remembers the last scrape of every target and turns the next one into a
/// [`Window`].
#[derive(Debug, Default)]
pub struct Counters {
    route: String,
    /// Per target, per series: the last value seen.
    last: HashMap<String, HashMap<String, f64>>,
}

impl Counters {
    pub fn new(route: &str) -> Self {
        Self {
            route: route.to_string(),
            last: HashMap::new(),
        }
    }

    /// Forgets every baseline (the next scrape only sets them).
    pub fn clear(&mut self) {
        self.last.clear();
    }

    /// Whether any target has a baseline.
    pub fn has_baseline(&self) -> bool {
        !self.last.is_empty()
    }

    /// Takes one scrape of every target (`(target, samples)`) and returns
    /// what happened since the previous one. Targets missing from `scrape`
    /// are forgotten.
    pub fn observe(&mut self, scrape: &[(String, Vec<Sample>)]) -> Window {
        let mut window = Window::default();
        let mut next: HashMap<String, HashMap<String, f64>> = HashMap::new();
        for (target, samples) in scrape {
            let previous = self.last.get(target);
            let mut seen = HashMap::new();
            for s in samples {
                if s.labels.get("route") != Some(&self.route)
                    || !(s.name == REQUESTS || s.name == BUCKETS)
                    || !s.value.is_finite()
                {
                    continue;
                }
                let key = series_key(s);
                let delta = match previous {
                    None => 0.0,
                    Some(prev) => counter_delta(prev.get(&key).copied(), s.value),
                };
                seen.insert(key, s.value);
                add_sample(&mut window, s, delta);
            }
            next.insert(target.clone(), seen);
        }
        self.last = next;
        window.finish();
        window
    }
}

/// What a counter counted between an earlier value (None: the series is
/// new, so it started at 0) and `now`; one that went down was reset and
/// counts again from 0.
pub fn counter_delta(before: Option<f64>, now: f64) -> f64 {
    match before {
        Some(old) if now >= old => now - old,
        _ => now,
    }
}

/// Adds `delta` of a request-count or bucket sample to its arm.
pub fn add_sample(window: &mut Window, s: &Sample, delta: f64) {
    let Some(arm) = arm_of(window, &s.labels) else {
        return;
    };
    if s.name == REQUESTS {
        arm.requests += delta;
        if s.labels.get("classification").map(String::as_str) == Some("failure") {
            arm.failures += delta;
        }
    } else if let Some(le) = s.labels.get("le").and_then(|l| parse_le(l)) {
        arm.add_bucket(le, delta);
    }
}

pub(crate) fn parse_le(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        t => t.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::parse_metrics;

    fn text(stable_ok: u64, canary_ok: u64, canary_fail: u64, fast: u64, slow: u64) -> String {
        format!(
            "sluice_requests_total{{route=\"web\",backend=\"stable\",code=\"200\",classification=\"success\",decision=\"weight\"}} {stable_ok}\n\
             sluice_requests_total{{route=\"web\",backend=\"canary\",code=\"200\",classification=\"success\",decision=\"weight\"}} {canary_ok}\n\
             sluice_requests_total{{route=\"web\",backend=\"canary\",code=\"500\",classification=\"failure\",decision=\"weight\"}} {canary_fail}\n\
             sluice_requests_total{{route=\"web\",backend=\"canary\",code=\"200\",classification=\"success\",decision=\"match\"}} 7\n\
             sluice_requests_total{{route=\"other\",backend=\"canary\",code=\"500\",classification=\"failure\",decision=\"weight\"}} 99\n\
             sluice_request_duration_seconds_bucket{{le=\"0.1\",route=\"web\",backend=\"canary\",decision=\"weight\"}} {fast}\n\
             sluice_request_duration_seconds_bucket{{le=\"+Inf\",route=\"web\",backend=\"canary\",decision=\"weight\"}} {}\n",
            fast + slow
        )
    }

    fn scrape(targets: &[(&str, String)]) -> Vec<(String, Vec<Sample>)> {
        targets
            .iter()
            .map(|(t, body)| (t.to_string(), parse_metrics(body)))
            .collect()
    }

    #[test]
    fn a_first_scrape_sets_baselines_then_deltas_are_per_arm() {
        let mut c = Counters::new("web");
        let w = c.observe(&scrape(&[("a", text(100, 10, 1, 9, 2))]));
        assert_eq!(
            (
                w.stable.requests,
                w.canary.requests,
                w.canary.slower_than(0.1)
            ),
            (0.0, 0.0, Some(0.0))
        );
        let w = c.observe(&scrape(&[("a", text(190, 20, 3, 19, 4))]));
        assert_eq!(w.stable.requests, 90.0);
        assert_eq!((w.canary.requests, w.canary.failures), (12.0, 2.0));
        assert_eq!(w.canary.buckets, vec![(0.1, 10.0), (f64::INFINITY, 12.0)]);
        assert_eq!(w.canary.slower_than(0.1), Some(2.0));
        assert_eq!(w.canary_match.requests, 0.0, "A/B traffic is apart");
    }

    #[test]
    fn sticky_traffic_is_judged_with_the_weighted_and_mirrored_copies_are_apart() {
        let body = |n: u64| {
            format!(
                "sluice_requests_total{{route=\"web\",backend=\"stable\",code=\"200\",classification=\"success\",decision=\"affinity\"}} {n}\n\
                 sluice_requests_total{{route=\"web\",backend=\"canary\",code=\"500\",classification=\"failure\",decision=\"affinity\"}} {n}\n\
                 sluice_requests_total{{route=\"web\",backend=\"canary\",code=\"200\",classification=\"success\",decision=\"mirror\"}} {}\n",
                3 * n
            )
        };
        let mut c = Counters::new("web");
        c.observe(&scrape(&[("a", body(0))]));
        let w = c.observe(&scrape(&[("a", body(5))]));
        assert_eq!(w.stable.requests, 5.0);
        assert_eq!((w.canary.requests, w.canary.failures), (5.0, 5.0));
        assert_eq!(w.canary_mirror.requests, 15.0);
        assert_eq!(w.canary_match.requests, 0.0);
    }

    #[test]
    fn one_replica_restarting_does_not_turn_counts_negative() {
        let mut c = Counters::new("web");
        c.observe(&scrape(&[
            ("a", text(1000, 100, 10, 100, 10)),
            ("b", text(1000, 100, 10, 100, 10)),
        ]));
        // Replica b restarted: its counters start again from 0.
        let w = c.observe(&scrape(&[
            ("a", text(1100, 110, 11, 110, 11)),
            ("b", text(50, 5, 5, 5, 5)),
        ]));
        assert_eq!(w.stable.requests, 150.0);
        assert_eq!((w.canary.requests, w.canary.failures), (21.0, 6.0));
        let rate = w.canary.success_rate().unwrap();
        assert!((0.0..=100.0).contains(&rate));
        assert!((rate - 100.0 * 15.0 / 21.0).abs() < 1e-9);
    }

    #[test]
    fn a_new_series_on_a_known_target_counts_from_zero_and_a_new_target_only_sets_a_baseline() {
        let mut c = Counters::new("web");
        c.observe(&scrape(&[("a", text(10, 10, 0, 10, 0))]));
        let mut body = text(10, 10, 0, 10, 0);
        body.push_str("sluice_requests_total{route=\"web\",backend=\"canary\",code=\"499\",classification=\"failure\",decision=\"weight\"} 4\n");
        let w = c.observe(&scrape(&[("a", body), ("b", text(500, 500, 500, 0, 0))]));
        assert_eq!((w.canary.requests, w.canary.failures), (4.0, 4.0));
        assert_eq!(w.stable.requests, 0.0);
    }

    #[test]
    fn buckets_are_made_monotonic() {
        let mut arm = Arm::default();
        arm.add_bucket(f64::INFINITY, 5.0);
        arm.add_bucket(0.1, 7.0);
        arm.add_bucket(0.05, 2.0);
        arm.finish();
        assert_eq!(
            arm.buckets,
            vec![(0.05, 2.0), (0.1, 7.0), (f64::INFINITY, 7.0)]
        );
    }
}
