//! Rule 5 of the evidence (see [`crate::gate::evidence`]): the primary's
//! own level, and the rises of the primary alone that make it no fair
//! reference for the pass side.
//!
//! - **The level** is the primary's events per request over its scrapes of
//!   the last [`LEVEL_SPAN`] seconds (from the baseline on), leaving out the
//!   newest [`REFERENCE_LAG`] seconds, kept in buckets of [`LEVEL_BUCKET`]
//!   seconds; with fewer than [`LEVEL_MIN_EVENTS`] events it is not used.
//!   Beside it, over every scrape of the same span, the canary's ratio to
//!   the primary: its events against those the primary's rate of each
//!   scrape predicts for its requests. (Every scrape: leaving out the ones
//!   in which the canary looked low would bias the ratio up.)
//! - **Rises are found by a CUSUM** of the primary's log-likelihood ratio
//!   of [`RISE`] times its level against its level (Poisson, divided by
//!   `φ`): it adds up over scrapes, so a moderate rise or a ramp is found
//!   within a few scrapes, not only one that a single scrape shows. A *run* lasts while the CUSUM is above 0; the primary
//!   is *elevated* while it is above `ln(1/LEVEL_P)`. It stops at
//!   [`EXCESS_CAP`] times that, so that it ends soon after the rise does.
//! - **A rise of the primary alone** is told from a shared one (a
//!   dependency both arms call, a traffic mix that changed for both) by the
//!   canary, over the run's scrapes together: a shared rise gives the
//!   canary its usual ratio to the primary's rate of each scrape. Only a
//!   scrape after which the canary's events in the run are significantly
//!   fewer than that (at [`OWN_P`]) moves the CUSUM up or is elevated (any
//!   scrape may move it down); a run in which the canary has at least that
//!   many ends: a rise of both arms, which the two-arm comparison cancels.
//!   The ratio is learnt only from scrapes in no run and in no hold of the
//!   canary's (a rise learnt into it would read as shared; a canary's
//!   incident would inflate it).
//! - Latency checks leave the rule off: the canary's slow requests are
//!   counted over a higher bound than the primary's, so a slowdown of both
//!   arms would read as the primary's own.
//! - **The pass side** gets no positive evidence from an elevated scrape
//!   nor from the one after it; the positive evidence of the last
//!   [`TAKE_BACK`] scrapes of the run before it is taken back when the run
//!   turns elevated (an incident's first, partial scrapes).
//! - Elevated scrapes stay out of the level; buckets older than
//!   [`LEVEL_SPAN`] expire whatever comes, so a rise that lasts longer
//!   empties the level, and what follows it is the primary's new level.
//! - Scrapes in which the primary is expected to fail fewer than
//!   [`MIN_EXPECTED`] requests at its level are not looked at.
//!
//! Every step only lowers the pass side's evidence, so its bound at `β`
//! holds as before (see the proof in [`crate::gate::evidence`]).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::evidence::{Counts, REFERENCE_LAG, binomial_upper_tail};

/// Seconds of the primary's scrapes its level is taken from.
pub const LEVEL_SPAN: f64 = 300.0;
/// The level's scrapes are kept summed in buckets of this many seconds.
pub const LEVEL_BUCKET: f64 = 10.0;
/// A level with fewer events than this is not used.
pub const LEVEL_MIN_EVENTS: f64 = 5.0;
/// The primary's events a scrape must be expected to have at its level
/// for the rule to look at it. Below that (a few requests per second)
/// nearly every failure of the primary is a "rise", and the scrapes the
/// rule would set aside are the ones that carry the pass side's evidence:
/// in `tests/bench/gate-power` the 20 req/s rows were promoted 8 points
/// less often, and the blue/green row at 20 req/s held 9% instead of 1%.
pub const MIN_EXPECTED: f64 = 0.5;
/// How significant the canary's shortfall must be for a rise to be the
/// primary's own.
pub const OWN_P: f64 = 0.01;
/// The rise the CUSUM looks for, as a multiple of the primary's level.
pub const RISE: f64 = 2.0;
/// The CUSUM stops at this many times its threshold, so that it falls
/// back under it within a few scrapes of the rise's end (a large incident
/// would otherwise keep the primary elevated for many minutes after it).
pub const EXCESS_CAP: f64 = 1.5;
/// The scrapes of a run before it turns elevated whose positive pass
/// evidence is taken back (an incident's partial first scrapes; a longer
/// look back would let one late finding wipe a long run's evidence).
pub const TAKE_BACK: usize = 3;
/// Pseudo-events that pull the canary's ratio to the primary toward 1.
pub const RATIO_PRIOR_EVENTS: f64 = 5.0;
/// The CUSUM's threshold is `ln(1/LEVEL_P)`: a rise that likely, at most,
/// under the primary's own level (the ordinary burstiness of its events
/// must not starve promotion).
pub const LEVEL_P: f64 = 0.001;

/// The primary's level and the state of its rise.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Level {
    /// `[bucket start, primary requests, primary events]` of the scrapes
    /// that were not elevated.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub buckets: VecDeque<[f64; 3]>,
    /// `[bucket start, canary events, the canary's events the primary's
    /// rate of each scrape predicts]` of every scrape with canary traffic.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub ratio: VecDeque<[f64; 3]>,
    /// The CUSUM of the primary's rise; a *run* lasts while it is above 0.
    #[serde(default)]
    pub excess: f64,
    /// The run's canary requests, its events, and the events a rise of
    /// both arms would give it.
    #[serde(default)]
    pub run_counts: [f64; 3],
    /// The positive pass evidence added, per alternative, by the last
    /// [`TAKE_BACK`] scrapes of the run (taken back if it turns elevated).
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub recent: VecDeque<Vec<f64>>,
    /// The last scrape was elevated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub elevated: bool,
    /// The rule does not apply (a latency check: the canary's slow
    /// requests are counted over a higher bound than the primary's, so a
    /// slowdown of both arms lifts the primary's count more and would read
    /// as the primary's own).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub off: bool,
}

/// The levels one scrape is judged against ([`Level::rates`]).
struct Rates {
    primary: f64,
    ratio: f64,
}

/// Adds `counts` to the bucket of `at`.
fn add_to(buckets: &mut VecDeque<[f64; 3]>, at: f64, counts: [f64; 2]) {
    let start = (at / LEVEL_BUCKET).floor() * LEVEL_BUCKET;
    match buckets.back_mut() {
        Some(last) if last[0] == start => {
            last[1] += counts[0];
            last[2] += counts[1];
        }
        _ => buckets.push_back([start, counts[0], counts[1]]),
    }
}

/// The canary's events that the primary's rate in `c` predicts for the
/// canary's requests.
fn predicted(c: &Counts) -> f64 {
    if c.stable_requests > 0.0 {
        c.canary_requests * c.stable_events / c.stable_requests
    } else {
        0.0
    }
}

/// What one scrape shows of the primary against its level.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rise {
    /// A run of the primary's rise is on (the CUSUM is above 0), and the
    /// canary did not rise with it.
    pub above: bool,
    /// The CUSUM is over its threshold.
    pub elevated: bool,
}

impl Level {
    /// Adds a scrape the gate does not judge (the baseline's; the
    /// primary's counts, and the canary's if it had traffic) that ended at
    /// `at`: filed as one in no rise and no hold.
    pub fn add(&mut self, at: f64, c: &Counts) {
        self.settle(at, c, Rise::default(), false);
    }

    fn expire(&mut self, now: f64) {
        for buckets in [&mut self.buckets, &mut self.ratio] {
            while buckets
                .front()
                .is_some_and(|b| now - b[0] > LEVEL_SPAN + LEVEL_BUCKET)
            {
                buckets.pop_front();
            }
        }
    }

    /// At `now`: the primary's events per request over the level, and the
    /// canary's ratio to the primary over the same span (its events against
    /// those the primary's rate of each scrape predicts for its requests,
    /// pulled toward 1 by [`RATIO_PRIOR_EVENTS`]).
    fn rates(&self, now: f64) -> Option<Rates> {
        let old = |b: &&[f64; 3]| b[0] + LEVEL_BUCKET <= now - REFERENCE_LAG;
        let sum = |buckets: &VecDeque<[f64; 3]>| {
            buckets
                .iter()
                .filter(old)
                .fold([0.0; 2], |acc, b| [acc[0] + b[1], acc[1] + b[2]])
        };
        let [requests, events] = sum(&self.buckets);
        let primary = (events >= LEVEL_MIN_EVENTS && requests > 0.0).then(|| events / requests)?;
        let [canary, predicted] = sum(&self.ratio);
        let ratio = (canary + RATIO_PRIOR_EVENTS) / (predicted + RATIO_PRIOR_EVENTS);
        Some(Rates { primary, ratio })
    }

    /// Looks at one scrape that began at `began` (counts divided by `phi`
    /// in the CUSUM); [`Level::settle`] then files it.
    pub fn look(&mut self, began: f64, c: &Counts, phi: f64) -> Rise {
        self.expire(began);
        if self.off || c.canary_requests <= 0.0 {
            self.end_run();
            return Rise::default();
        }
        self.judge(began, c, phi)
    }

    /// Files a scrape after [`Level::look`]: into the primary's level
    /// unless it was elevated, and into the canary's ratio only when it was
    /// in no rise of the primary's and in no hold of the canary's
    /// (`held`): a rise learnt into the ratio would read as shared, and a
    /// canary's incident would inflate it.
    pub fn settle(&mut self, at: f64, c: &Counts, rise: Rise, held: bool) {
        if self.off {
            return;
        }
        if !rise.elevated && c.stable_requests > 0.0 {
            add_to(&mut self.buckets, at, [c.stable_requests, c.stable_events]);
        }
        if !rise.above && !held && c.canary_requests > 0.0 {
            add_to(&mut self.ratio, at, [c.canary_events, predicted(c)]);
        }
        self.expire(at);
    }

    fn judge(&mut self, began: f64, c: &Counts, phi: f64) -> Rise {
        let Some(rates) = self.rates(began).filter(|_| c.stable_requests > 0.0) else {
            self.end_run();
            return Rise::default();
        };
        let expected = rates.primary * c.stable_requests;
        if expected < MIN_EXPECTED {
            // Too little traffic for a scrape to say anything of the
            // primary's rise: its few events are the pass side's evidence.
            self.end_run();
            return Rise::default();
        }
        let llr = (c.stable_events * RISE.ln() - expected * (RISE - 1.0)) / phi;
        // The run's canary requests, its events, and the events a rise of
        // both arms would give it (its usual ratio to the primary's rate of
        // each scrape).
        let run = &mut self.run_counts;
        run[0] += c.canary_requests;
        run[1] += c.canary_events;
        run[2] += rates.ratio * predicted(c);
        // The primary's own rise: the canary's events in the run are
        // significantly fewer than that.
        if run[1] >= run[2] {
            // The canary rose with it: a rise of both arms.
            self.end_run();
            return Rise::default();
        }
        let own = c.stable_events > expected
            && run[0] > 0.0
            && 1.0
                - binomial_upper_tail(run[0] / phi, run[1] / phi + 1.0, (run[2] / run[0]).min(1.0))
                < OWN_P;
        // A scrape that is no sign of the primary's own rise can still
        // end one.
        let step = if own { llr } else { llr.min(0.0) };
        let threshold = (1.0 / LEVEL_P).ln();
        self.excess = (self.excess + step).clamp(0.0, EXCESS_CAP * threshold);
        if self.excess <= 0.0 {
            self.end_run();
            return Rise::default();
        }
        Rise {
            above: true,
            elevated: own && self.excess > threshold,
        }
    }

    fn end_run(&mut self) {
        self.excess = 0.0;
        self.run_counts = [0.0; 3];
    }

    /// Applies the rise to one scrape's pass-side ratios before they are
    /// added to `sums` (the pass component's), taking back the positive
    /// evidence of the run before an elevated scrape; `down` (rule 4) also
    /// drops the positive part.
    pub fn filter_pass(&mut self, rise: Rise, down: bool, pass: &mut [f64], sums: &mut [f64]) {
        if rise.elevated {
            for recent in self.recent.drain(..) {
                for (sum, r) in sums.iter_mut().zip(&recent) {
                    *sum -= r;
                }
            }
        }
        if down || rise.elevated || self.elevated {
            pass.iter_mut().for_each(|r| *r = r.min(0.0));
        }
        if rise.above && !rise.elevated {
            if self.recent.len() == TAKE_BACK {
                self.recent.pop_front();
            }
            self.recent
                .push_back(pass.iter().map(|r| r.max(0.0)).collect());
        } else {
            self.recent.clear();
        }
        self.elevated = rise.elevated;
    }

    /// The pass side starts again (a new weight): nothing to take back.
    pub fn restart_pass(&mut self) {
        self.recent.clear();
    }
}
