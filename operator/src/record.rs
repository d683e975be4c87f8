//! The release record: what happened in one release, kept as it runs, so a
//! person can see *why* it was promoted or rolled back (the report and the
//! dashboard draw it; `kubectl sluice report` reads it back).
//!
//! - **Per scrape** (every measured tick): each arm's requests, failures
//!   and slow requests per latency bound *in that scrape's window* (not
//!   cumulative), the window's p50 and p99 (bucket upper bounds, as the
//!   experiment report reads them), the canary weight and phase, and the
//!   sequential gate's evidence against and for the canary per check with
//!   its thresholds (likelihood ratios, as the gate reports them).
//! - **Decisions**: every change of phase or weight, with the machine's
//!   reason, the evidence of each check at that moment and the check that
//!   decided it (see [`deciding_check`]).
//! - **Events**: every Event the machine emitted, with its level.
//!
//! The arms' counts come from the gate's running totals (the same numbers
//! the evidence is computed from); a plan without the sequential gate
//! records the canary's requests and failures from its analysis instead.
//!
//! Compact: numbers are rounded (evidence to 3 decimals, times to 0.1 s,
//! latencies to 0.1 ms) and a scrape has short, fixed fields; a 30-minute
//! release at 5 s scrapes with two latency bounds is about 165 KB of JSON
//! (tested below: under 180 KB), well inside Kubernetes' 1 MiB object
//! limit; the Kubernetes store also holds its ConfigMap under a byte
//! budget, dropping the oldest releases first (see `kube::records`). A release longer than [`MAX_SCRAPES`]
//! scrapes keeps its first scrapes and thins the rest, so the record never
//! outgrows the object; decisions and events are never dropped.
//!
//! A record holds at most [`MAX_CHECK_NAMES`] distinct checks (each is one
//! evidence plot on the page), and a reader refuses one that names more.
//! The writer keeps to it too, so a plan with more custom checks never
//! writes a record that would then make every page and report of its app
//! fail to read: the checks that explain a decision are kept first (the
//! deciding check, chosen from every check judged, then the failing
//! ones), and passing checks leave [`RESERVED_NAMES`] names free for
//! checks that fail later; the rest are left out, and the record says so
//! once, in an event (warning) naming what was left out, also logged. A
//! decision names its deciding check even should its evidence not fit.
//! Check names are at most [`crate::plan::MAX_CHECK_NAME`] characters (the
//! plan refuses longer ones), far inside what a reader accepts.
//!
//! Serialised as JSON with `version` ([`RECORD_VERSION`]); a reader refuses
//! a newer version by name rather than misreading it.

use serde::{Deserialize, Serialize};

use crate::analysis::{Analysis, Outcome};
use crate::counters::Arm;
use crate::gate::GateState;
use crate::machine::{Action, Level, Phase, Status};
use crate::plan::Plan;

/// The record format's version; bumped on an incompatible change.
pub const RECORD_VERSION: u32 = 1;

/// Scrapes kept per release before older ones are thinned (every other
/// one dropped, outside the first tenth): 2 hours at 5 s.
pub const MAX_SCRAPES: usize = 1440;

/// One release, start to end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub version: u32,
    /// Kubernetes namespace; none on plain hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The app (Kubernetes) or route (plain hosts).
    pub app: String,
    pub revision: String,
    /// `canary`, `blue-green` or `experiment`.
    pub strategy: String,
    /// The release's route settings, for people (`baseline arm`, `mirror
    /// 100%`, `affinity cookie app`; `-`: none). Empty in records written
    /// before it was kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traffic: String,
    /// The plan's weights in percent.
    pub steps: Vec<f64>,
    /// Wall-clock seconds (Unix) when the release started.
    pub started_at: f64,
    /// Wall-clock seconds of the last update.
    pub updated_at: f64,
    /// The latest phase and weight (percent).
    pub phase: Phase,
    pub weight: f64,
    /// `promoted`, `rolled back` or `concluded` once it ended, or
    /// `superseded by the release of revision X` when a newer release of
    /// the app started before it ended (see [`upsert`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The latest message of the machine.
    pub message: String,
    /// The primary's latency bounds in seconds, in the order of each arm's
    /// `slow` counts.
    pub bounds: Vec<f64>,
    pub scrapes: Vec<Scrape>,
    pub decisions: Vec<Decision>,
    pub events: Vec<RecordEvent>,
    /// An experiment's report, once it concluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::report::ExperimentReport>,
}

/// One measured tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scrape {
    /// Seconds since the release started.
    pub t: f64,
    /// Canary weight in percent during the window.
    pub weight: f64,
    pub phase: Phase,
    pub canary: ArmSample,
    pub primary: ArmSample,
    pub checks: Vec<CheckSample>,
}

/// One arm's traffic in one scrape's window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmSample {
    pub requests: u64,
    pub failures: u64,
    /// Requests slower than each of the record's `bounds` (the canary's at
    /// the tolerance above it, as the gate counts them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slow: Vec<u64>,
    /// Window quantiles in seconds; none without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
}

/// A check's state after a scrape: the gate's evidence (likelihood
/// ratios) with the thresholds it must reach, or a plain measured value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckSample {
    pub check: String,
    pub outcome: Outcome,
    /// Evidence against the canary (fail side) and its threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against_threshold: Option<f64>,
    /// Evidence for the canary (pass side) and its threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_canary: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_threshold: Option<f64>,
    /// A check without the gate: its value and bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub threshold: String,
    /// Failures (or slow requests) per request so far, canary and primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_rate: Option<f64>,
}

/// A change of phase or weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub t: f64,
    pub from: Option<Phase>,
    pub to: Phase,
    /// Weight in percent after the decision.
    pub weight: f64,
    /// `start`, `advance`, `promote`, `rollback`, `conclude`, `finish`, `pause`.
    pub kind: String,
    /// The machine's reason.
    pub reason: String,
    /// The check that decided it, when the evidence did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// Every check's evidence at that moment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<CheckSample>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordEvent {
    pub t: f64,
    pub warning: bool,
    pub text: String,
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

fn finite(v: f64, places: i32) -> Option<f64> {
    v.is_finite().then(|| round(v, places))
}

/// `new - old` of cumulative arm totals (a window).
fn window(new: &Arm, old: Option<&Arm>) -> Arm {
    let Some(old) = old else { return new.clone() };
    let same_buckets = new.buckets.len() == old.buckets.len()
        && new
            .buckets
            .iter()
            .zip(&old.buckets)
            .all(|(a, b)| a.0 == b.0);
    Arm {
        requests: (new.requests - old.requests).max(0.0),
        failures: (new.failures - old.failures).max(0.0),
        buckets: if same_buckets {
            new.buckets
                .iter()
                .zip(&old.buckets)
                .map(|(a, b)| (a.0, (a.1 - b.1).max(0.0)))
                .collect()
        } else {
            new.buckets.clone()
        },
    }
}

fn sample(arm: &Arm, bounds: &[f64]) -> ArmSample {
    let q = |q: f64| {
        crate::report::quantile(arm, q)
            .value
            .and_then(|v| finite(v, 4))
    };
    ArmSample {
        requests: arm.requests.round() as u64,
        failures: arm.failures.round() as u64,
        slow: bounds
            .iter()
            .map(|b| arm.slower_than(*b).unwrap_or(0.0).round() as u64)
            .collect(),
        p50: q(0.5),
        p99: q(0.99),
    }
}

/// The checks of one analysis, as recorded.
pub fn check_samples(analysis: &Analysis) -> Vec<CheckSample> {
    analysis
        .checks
        .iter()
        .map(|c| {
            let e = c.evidence.as_ref();
            CheckSample {
                check: c.name.clone(),
                outcome: c.outcome,
                against: e.and_then(|e| finite(e.fail, 3)),
                against_threshold: e.and_then(|e| finite(e.fail_threshold, 3)),
                for_canary: e.and_then(|e| finite(e.pass, 3)),
                for_threshold: e.and_then(|e| finite(e.pass_threshold, 3)),
                value: if e.is_some() {
                    None
                } else {
                    c.value.and_then(|v| finite(v, 6))
                },
                threshold: if e.is_some() {
                    String::new()
                } else {
                    c.threshold.clone()
                },
                canary_rate: e.and_then(|e| e.canary_rate).and_then(|v| finite(v, 6)),
                primary_rate: e.and_then(|e| e.primary_rate).and_then(|v| finite(v, 6)),
            }
        })
        .collect()
}

/// The check that decided a decision of `kind`: for a rollback, the
/// failing check whose evidence against went furthest past its threshold
/// (or the first failing one); for an advance or promotion, the check that
/// was proven last (its evidence for the canary nearest its threshold),
/// since the step waited for it. An experiment concludes on time, and a
/// start or a person's command is no check's doing: none is named.
pub fn deciding_check(kind: &str, checks: &[CheckSample]) -> Option<String> {
    let ratio = |v: Option<f64>, t: Option<f64>| match (v, t) {
        (Some(v), Some(t)) if t > 0.0 => v / t,
        _ => 0.0,
    };
    match kind {
        "rollback" => checks
            .iter()
            .filter(|c| c.outcome == Outcome::Fail)
            .max_by(|a, b| {
                ratio(a.against, a.against_threshold)
                    .total_cmp(&ratio(b.against, b.against_threshold))
            })
            .map(|c| c.check.clone()),
        // A passing check without evidence (a threshold check, or latency
        // still warming up) is named only when no check has evidence.
        "advance" | "promote" => checks
            .iter()
            .filter(|c| c.outcome == Outcome::Pass)
            .min_by(|a, b| {
                let key = |c: &CheckSample| match c.for_canary {
                    Some(_) => ratio(c.for_canary, c.for_threshold),
                    None => f64::INFINITY,
                };
                key(a).total_cmp(&key(b))
            })
            .map(|c| c.check.clone()),
        _ => None,
    }
}

fn decision_kind(before: Option<&Status>, after: &Status) -> Option<&'static str> {
    let from = before.map(|s| s.phase);
    let phase_changed = from != Some(after.phase);
    let weight_changed = before.is_none_or(|b| b.canary_weight_bp != after.canary_weight_bp);
    if !phase_changed && !weight_changed {
        return None;
    }
    Some(match after.phase {
        Phase::Initializing | Phase::Initialized => "start",
        Phase::Failed => "rollback",
        Phase::Promoting => "promote",
        Phase::Succeeded | Phase::Finalising => "finish",
        Phase::Concluded => "conclude",
        Phase::WaitingPromotion => "pause",
        _ if after.canary_weight_bp > before.map(|b| b.canary_weight_bp).unwrap_or_default() => {
            "advance"
        }
        _ => "change",
    })
}

impl ReleaseRecord {
    /// A new record for a release of `revision` that starts now.
    pub fn new(
        namespace: Option<&str>,
        app: &str,
        revision: &str,
        plan: &Plan,
        started_at: f64,
    ) -> Self {
        Self {
            version: RECORD_VERSION,
            namespace: namespace.map(str::to_string),
            app: app.to_string(),
            revision: revision.to_string(),
            strategy: plan.strategy.name().to_string(),
            traffic: plan.traffic_text(),
            steps: plan
                .steps_bp
                .iter()
                .map(|b| f64::from(*b) / 100.0)
                .collect(),
            started_at: round(started_at, 1),
            updated_at: round(started_at, 1),
            phase: Phase::Initializing,
            weight: 0.0,
            outcome: None,
            message: String::new(),
            bounds: Vec::new(),
            scrapes: Vec::new(),
            decisions: Vec::new(),
            events: Vec::new(),
            report: None,
        }
    }

    /// Reads a record from JSON; a newer version is refused by name.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not a release record: {e}"))?;
        let version = v["version"].as_u64().unwrap_or(0);
        if version != u64::from(RECORD_VERSION) {
            return Err(format!(
                "release record version {version} is not the version {RECORD_VERSION} this Sluice reads"
            ));
        }
        let mut nodes = 0usize;
        check_limits(&v, "record", &mut nodes)?;
        check_names(&v)?;
        serde_json::from_value(v).map_err(|e| format!("not a release record: {e}"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record serializes")
    }

    /// Whether the release has ended (superseded included).
    pub fn ended(&self) -> bool {
        self.outcome.is_some()
    }

    /// Ends a release that a newer one of the same app replaced before it
    /// ended: its outcome names the newer release's revision, and an event
    /// at the newer one's start says so. Its phase stays the last it had.
    fn supersede(&mut self, newer: &ReleaseRecord) {
        let outcome = format!("superseded by the release of revision {}", newer.revision);
        self.events.push(RecordEvent {
            t: self.at(newer.started_at),
            warning: false,
            text: format!(
                "{outcome}, started before this one ended (it was {} at {}%)",
                self.phase.as_str(),
                self.weight
            ),
        });
        self.updated_at = self.updated_at.max(newer.started_at);
        self.outcome = Some(outcome);
    }

    /// Seconds since the release started at wall-clock `now`.
    fn at(&self, now: f64) -> f64 {
        round((now - self.started_at).max(0.0), 1)
    }

    /// Adds one tick of the control loop: `before` and `after` are the
    /// machine's status around the step (`after.gate` the evidence after
    /// this tick's scrape, `before.gate` before it), `analysis` the tick's
    /// analysis if it judged, `actions` what the machine decided. Returns
    /// whether anything was added (a scrape, an event or a decision).
    pub fn observe(
        &mut self,
        now: f64,
        before: Option<&Status>,
        after: &Status,
        analysis: Option<&Analysis>,
        actions: &[Action],
        report: Option<&crate::report::ExperimentReport>,
    ) -> bool {
        let t = self.at(now);
        let sizes = (self.scrapes.len(), self.events.len(), self.decisions.len());
        let old_gate = before.and_then(|s| s.gate.as_ref());
        let new_gate = after.gate.as_ref();
        let scraped = match (old_gate, new_gate) {
            (_, Some(g)) => old_gate.is_none_or(|o| o.scrapes != g.scrapes),
            (_, None) => analysis.is_some(),
        };
        let decided = decision_kind(before, after);
        let samples = analysis.map(check_samples);
        // From every check judged, before any is left out of the record.
        let deciding = decided
            .zip(samples.as_ref())
            .and_then(|(k, s)| deciding_check(k, s));
        let recorded = samples.map(|s| self.recordable(t, s, deciding.as_deref()));
        if scraped {
            // The rates are kept with decisions only: they are the
            // arms' counts summed, and a third of a scrape's size.
            let checks = recorded
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|c| CheckSample {
                    canary_rate: None,
                    primary_rate: None,
                    ..c
                })
                .collect();
            let weight_bp = before.map(|s| s.canary_weight_bp).unwrap_or(0);
            let phase = before.map(|s| s.phase).unwrap_or(after.phase);
            let scrape = match new_gate {
                Some(g) => self.gate_scrape(t, weight_bp, phase, old_gate, g, checks),
                None => Scrape {
                    t,
                    weight: f64::from(weight_bp) / 100.0,
                    phase,
                    canary: analysis_sample(analysis),
                    primary: ArmSample::default(),
                    checks,
                },
            };
            self.push_scrape(scrape);
        }
        for action in actions {
            if let Action::Event(level, text) = action {
                self.events.push(RecordEvent {
                    t,
                    warning: *level == Level::Warning,
                    text: text.clone(),
                });
            }
        }
        if let Some(kind) = decided {
            let evidence = recorded
                .or_else(|| self.scrapes.last().map(|s| s.checks.clone()))
                .unwrap_or_default();
            self.decisions.push(Decision {
                t,
                from: before.map(|s| s.phase),
                to: after.phase,
                weight: f64::from(after.canary_weight_bp) / 100.0,
                kind: kind.to_string(),
                reason: after.message.clone(),
                check: deciding.or_else(|| deciding_check(kind, &evidence)),
                evidence,
            });
        }
        self.phase = after.phase;
        self.weight = f64::from(after.canary_weight_bp) / 100.0;
        self.message = after.message.clone();
        self.updated_at = round(now, 1);
        self.outcome = match after.phase {
            Phase::Succeeded => Some("promoted".into()),
            Phase::Failed => Some("rolled back".into()),
            Phase::Concluded => Some("concluded".into()),
            _ => None,
        };
        if let Some(r) = report {
            self.report = Some(r.clone());
        }
        scraped || sizes != (self.scrapes.len(), self.events.len(), self.decisions.len())
    }

    /// `checks` as this record may hold them: at most [`MAX_CHECKS`] in
    /// one list, naming at most [`MAX_CHECK_NAMES`] distinct checks across
    /// the record. The checks that explain a decision are kept first: the
    /// deciding one (`deciding`, chosen from every check judged), then
    /// the failing ones, then the rest in the plan's order; a passing
    /// check takes a name not yet recorded only while [`RESERVED_NAMES`]
    /// names are still free, so a check that fails late in a release
    /// still finds room. The list keeps the plan's order. The first time
    /// any is left out, a warning event (and a log line) names them.
    fn recordable(
        &mut self,
        t: f64,
        checks: Vec<CheckSample>,
        deciding: Option<&str>,
    ) -> Vec<CheckSample> {
        let mut names: std::collections::HashSet<String> = self
            .scrapes
            .iter()
            .flat_map(|s| &s.checks)
            .chain(self.decisions.iter().flat_map(|d| &d.evidence))
            .map(|c| c.check.clone())
            .collect();
        let rank = |c: &CheckSample| {
            if Some(c.check.as_str()) == deciding {
                0
            } else if c.outcome == Outcome::Fail {
                1
            } else {
                2
            }
        };
        let mut order: Vec<usize> = (0..checks.len()).collect();
        order.sort_by_key(|&i| rank(&checks[i]));
        let mut keep = vec![false; checks.len()];
        let mut taken = 0;
        let mut left_out: Vec<String> = Vec::new();
        for i in order {
            let c = &checks[i];
            let room = match rank(c) {
                2 => MAX_CHECK_NAMES - RESERVED_NAMES,
                _ => MAX_CHECK_NAMES,
            };
            if taken < MAX_CHECKS && (names.contains(&c.check) || names.len() < room) {
                names.insert(c.check.clone());
                keep[i] = true;
                taken += 1;
            } else if !left_out.contains(&c.check) {
                left_out.push(c.check.clone());
            }
        }
        let kept: Vec<CheckSample> = checks
            .into_iter()
            .zip(keep)
            .filter_map(|(c, k)| k.then_some(c))
            .collect();
        let said = self.events.iter().any(|e| e.text.starts_with(LEFT_OUT));
        if !left_out.is_empty() && !said {
            const NAMED: usize = 10;
            let mut list = left_out
                .iter()
                .take(NAMED)
                .map(|n| format!("`{}`", n.chars().take(200).collect::<String>()))
                .collect::<Vec<_>>()
                .join(", ");
            if left_out.len() > NAMED {
                list.push_str(&format!(" and {} more", left_out.len() - NAMED));
            }
            let text = format!(
                "{LEFT_OUT}: it holds at most {MAX_CHECK_NAMES} distinct checks, failing ones and the deciding one first, and this release has more; left out: {list} (they are still judged; only the record does not show them)"
            );
            tracing::warn!(app = %self.app, revision = %self.revision, "{text}");
            self.events.push(RecordEvent {
                t,
                warning: true,
                text,
            });
        }
        kept
    }

    fn gate_scrape(
        &mut self,
        t: f64,
        weight_bp: u32,
        phase: Phase,
        old: Option<&GateState>,
        g: &GateState,
        checks: Vec<CheckSample>,
    ) -> Scrape {
        let bounds: Vec<f64> = g.latency.iter().map(|l| l.bound).collect();
        if self.bounds.is_empty() || self.bounds.len() != bounds.len() {
            self.bounds = bounds.clone();
        }
        // A new release (the gate was reset) starts its totals at zero.
        let old = old.filter(|o| o.scrapes < g.scrapes);
        let canary = window(&g.total_canary, old.map(|o| &o.total_canary));
        let primary = window(&g.total_stable, old.map(|o| &o.total_stable));
        let canary_bounds: Vec<f64> = g.latency.iter().map(|l| l.canary_bound).collect();
        Scrape {
            t,
            weight: f64::from(weight_bp) / 100.0,
            phase,
            canary: sample(&canary, &canary_bounds),
            primary: sample(&primary, &bounds),
            checks,
        }
    }

    fn push_scrape(&mut self, scrape: Scrape) {
        self.scrapes.push(scrape);
        if self.scrapes.len() > MAX_SCRAPES {
            let keep = MAX_SCRAPES / 10;
            let mut i = 0usize;
            self.scrapes.retain(|_| {
                i += 1;
                i <= keep || i.is_multiple_of(2)
            });
        }
    }
}

fn analysis_sample(analysis: Option<&Analysis>) -> ArmSample {
    let Some(a) = analysis else {
        return ArmSample::default();
    };
    let requests = a.canary_requests.unwrap_or(0);
    let failures = a
        .value_of("success-rate")
        .map(|rate| ((100.0 - rate) / 100.0 * requests as f64).round() as u64)
        .unwrap_or(0);
    ArmSample {
        requests,
        failures,
        ..ArmSample::default()
    }
}

/// Limits a record read back must keep (the writer stays far inside
/// them): a hostile or corrupt record must not make a page of hundreds of
/// megabytes. Strings, lists by name, and all values together.
const MAX_STRING: usize = 256 * 1024;
const MAX_CHECKS: usize = 64;
const MAX_DECISIONS: usize = 2 * MAX_SCRAPES;
const MAX_EVENTS: usize = 2000;
const MAX_LIST: usize = 4096;
const MAX_VALUES: usize = 1_000_000;

/// Distinct check names a record may hold in all: a plan has a few checks,
/// and each name is one evidence plot on the page. The writer keeps to it
/// (see [`ReleaseRecord::recordable`]).
pub const MAX_CHECK_NAMES: usize = 64;

/// Of [`MAX_CHECK_NAMES`], the names a passing check may not take: kept
/// for checks that fail, or decide, after the passing ones have filled
/// the rest.
const RESERVED_NAMES: usize = 8;

/// How the event saying checks were left out of a record begins.
const LEFT_OUT: &str = "some checks are left out of this release's record";

/// Refuses a record naming more than [`MAX_CHECK_NAMES`] checks across its
/// scrapes and decisions (each scrape's list is bounded, but a hostile
/// record could name new checks in every one).
fn check_names(v: &serde_json::Value) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    let lists = [("scrapes", "checks"), ("decisions", "evidence")];
    for (outer, inner) in lists {
        for item in v[outer].as_array().into_iter().flatten() {
            for c in item[inner].as_array().into_iter().flatten() {
                if let Some(name) = c["check"].as_str() {
                    names.insert(name);
                }
                if names.len() > MAX_CHECK_NAMES {
                    return Err(format!(
                        "the release record names more than {MAX_CHECK_NAMES} distinct checks (record.{outer}[].{inner}[].check); refused"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn list_limit(key: &str) -> usize {
    match key {
        "scrapes" => MAX_SCRAPES,
        "checks" | "evidence" => MAX_CHECKS,
        "decisions" => MAX_DECISIONS,
        "events" => MAX_EVENTS,
        _ => MAX_LIST,
    }
}

/// Refuses a record past the limits, naming where (`record.scrapes[3].checks`).
fn check_limits(v: &serde_json::Value, at: &str, nodes: &mut usize) -> Result<(), String> {
    *nodes += 1;
    if *nodes > MAX_VALUES {
        return Err(format!(
            "the release record holds more than {MAX_VALUES} values; refused"
        ));
    }
    match v {
        serde_json::Value::String(s) if s.len() > MAX_STRING => Err(format!(
            "{at} is a string of {} bytes, more than the {MAX_STRING} a record may hold",
            s.len()
        )),
        serde_json::Value::Array(items) => {
            let key = at.rsplit('.').next().unwrap_or(at);
            let key = key.split('[').next().unwrap_or(key);
            let limit = list_limit(key);
            if items.len() > limit {
                return Err(format!(
                    "{at} has {} entries, more than the {limit} a record may hold",
                    items.len()
                ));
            }
            for (i, item) in items.iter().enumerate() {
                check_limits(item, &format!("{at}[{i}]"), nodes)?;
            }
            Ok(())
        }
        serde_json::Value::Object(map) => {
            for (k, item) in map {
                if k.len() > MAX_STRING {
                    return Err(format!("{at} has a key of {} bytes", k.len()));
                }
                check_limits(item, &format!("{at}.{k}"), nodes)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

// === impl RecordFile ===

/// Plain hosts: the records of a route's releases in a JSON file next to
/// the control socket's state file (`<socket>.releases.json`), the last
/// [`DEFAULT_KEEP`] kept, newest last.
#[derive(Clone, Debug)]
pub struct RecordFile {
    pub path: std::path::PathBuf,
}

/// Releases kept per app when nothing says otherwise.
pub const DEFAULT_KEEP: usize = 10;

impl RecordFile {
    pub fn beside(socket: &std::path::Path) -> Self {
        let mut name = socket.file_name().unwrap_or_default().to_os_string();
        name.push(".releases.json");
        Self {
            path: socket.with_file_name(name),
        }
    }

    /// Every record in the file, oldest first (none if there is no file).
    pub fn load(&self) -> Result<Vec<ReleaseRecord>, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                records_from_json(&text).map_err(|e| format!("{}: {e}", self.path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display())),
        }
    }

    /// Saves `record` (replacing the one of the same start, else added).
    /// A file that cannot be read is not overwritten (that would wipe the
    /// history in it): the error names it. The file is the owner's only
    /// (mode 0600): records name revisions and endpoints.
    pub fn save(&self, record: &ReleaseRecord) -> Result<(), String> {
        let mut all = self
            .load()
            .map_err(|e| format!("not writing the release record over what is there: {e}"))?;
        upsert(&mut all, record.clone(), DEFAULT_KEEP);
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp)?;
            #[cfg(unix)]
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            f.write_all(records_to_json(&all).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

/// Puts `record` in `all` (replacing one with the same revision and start),
/// keeping the newest `keep`. An app has one release at a time: every
/// record of the same app (and namespace) that started before `record` and
/// has not ended is ended as superseded by it (a new revision pushed
/// mid-release, or a plain host's release interrupted and started afresh),
/// so it is never shown running beside the live one.
pub fn upsert(all: &mut Vec<ReleaseRecord>, record: ReleaseRecord, keep: usize) {
    for older in all.iter_mut().filter(|o| {
        o.namespace == record.namespace
            && o.app == record.app
            && !o.ended()
            && o.started_at < record.started_at
    }) {
        older.supersede(&record);
    }
    match all
        .iter_mut()
        .find(|r| r.started_at == record.started_at && r.revision == record.revision)
    {
        Some(slot) => *slot = record,
        None => all.push(record),
    }
    all.sort_by(|a, b| a.started_at.total_cmp(&b.started_at));
    let extra = all.len().saturating_sub(keep.max(1));
    all.drain(..extra);
}

/// A list of records as JSON: `{"version":1,"releases":[...]}`.
pub fn records_to_json(all: &[ReleaseRecord]) -> String {
    serde_json::json!({"version": RECORD_VERSION, "releases": all}).to_string()
}

pub fn records_from_json(text: &str) -> Result<Vec<ReleaseRecord>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a list of release records: {e}"))?;
    let Some(list) = v["releases"].as_array() else {
        return Err("not a list of release records: no `releases`".into());
    };
    list.iter()
        .map(|r| ReleaseRecord::from_json(&r.to_string()))
        .collect()
}

// === Kubernetes: the records ConfigMap ===

/// The ConfigMap holding an app's release records: `<app>-sluice-releases`.
pub fn configmap_name(app: &str) -> String {
    format!("{app}-sluice-releases")
}

/// Bytes of record data a ConfigMap may hold: Kubernetes refuses objects
/// over 1 MiB; this leaves room for metadata and a margin.
pub const CONFIGMAP_BUDGET: usize = 900 * 1024;

/// The data key of one release: `release-<start, unix seconds>.json`
/// (sorts by start; one key per release so `kubectl get -o yaml` shows
/// each release apart).
pub fn data_key(record: &ReleaseRecord) -> String {
    format!("release-{:013.1}.json", record.started_at)
}

/// The records in a ConfigMap's `data` (any key that is not a record is
/// named in the error).
pub fn from_configmap_data(
    data: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<ReleaseRecord>, String> {
    let mut all = data
        .iter()
        .filter(|(k, _)| k.starts_with("release-") && k.ends_with(".json"))
        .map(|(k, v)| ReleaseRecord::from_json(v).map_err(|e| format!("key {k}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    all.sort_by(|a, b| a.started_at.total_cmp(&b.started_at));
    Ok(all)
}

/// The data of the ConfigMap for `all` (oldest first): the newest `keep`,
/// then the oldest dropped until it fits [`CONFIGMAP_BUDGET`] (the newest
/// is always kept).
pub fn to_configmap_data(
    all: &[ReleaseRecord],
    keep: usize,
) -> std::collections::BTreeMap<String, String> {
    let start = all.len().saturating_sub(keep.max(1));
    let mut kept: Vec<(String, String)> = all[start..]
        .iter()
        .map(|r| (data_key(r), r.to_json()))
        .collect();
    while kept.len() > 1
        && kept.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > CONFIGMAP_BUDGET
    {
        kept.remove(0);
    }
    kept.into_iter().collect()
}

/// The release of `revision` (the newest of it), or the newest release.
pub fn pick<'a>(all: &'a [ReleaseRecord], revision: Option<&str>) -> Option<&'a ReleaseRecord> {
    match revision {
        Some(rev) => all.iter().rev().find(|r| r.revision == rev),
        None => all.last(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{GateSettings, GateState};

    fn arm(requests: f64, failures: f64, slow_over_100ms: f64) -> Arm {
        Arm {
            requests,
            failures,
            buckets: vec![
                (0.05, requests - slow_over_100ms - requests * 0.01),
                (0.1, requests - slow_over_100ms),
                (0.25, requests),
                (f64::INFINITY, requests),
            ],
        }
    }

    fn status(phase: Phase, weight_bp: u32, gate: Option<GateState>) -> Status {
        Status {
            phase,
            revision: "v2".into(),
            step: 0,
            canary_weight_bp: weight_bp,
            passed_steps: 0,
            failed_checks: 0,
            approved: false,
            started_at: 0.0,
            last_progress_at: 0.0,
            last_transition_at: 0.0,
            message: format!("{phase:?} at {weight_bp}"),
            unconfirmed: None,
            queued_revision: None,
            step_started_at: 0.0,
            gate,
            undecided: false,
            failure_counted_at: None,
        }
    }

    fn analysis(fail: bool) -> Analysis {
        let settings = GateSettings::default();
        let mut a = Analysis::default();
        for (name, against) in [("errors", 1.234567), ("latency<=100ms", 0.5)] {
            a.checks.push(crate::analysis::CheckResult {
                name: name.into(),
                outcome: if fail && name == "errors" {
                    Outcome::Fail
                } else {
                    Outcome::Pass
                },
                evidence: Some(crate::analysis::EvidenceReport {
                    fail: if fail { 9.0 } else { against },
                    fail_threshold: settings.fail_threshold(),
                    pass: 3.1,
                    pass_threshold: settings.pass_threshold(),
                    proven: !fail,
                    canary_rate: Some(0.0123456789),
                    primary_rate: Some(0.001),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        a
    }

    fn gate_at(scrapes: u64, canary: f64, stable: f64) -> GateState {
        let settings = GateSettings {
            latency_bounds: vec![std::time::Duration::from_millis(100)],
            ..GateSettings::default()
        };
        let mut g = GateState::new(&settings);
        g.scrapes = scrapes;
        g.total_canary = arm(canary, canary * 0.01, canary * 0.02);
        g.total_stable = arm(stable, stable * 0.001, stable * 0.005);
        g
    }

    /// `a` and `count` more checks named `custom-00`, `custom-01`, ...,
    /// each a copy of its second; those numbered in `failing` fail, each
    /// further past its threshold the higher its number.
    fn with_custom_checks(mut a: Analysis, count: usize, failing: &[usize]) -> Analysis {
        for i in 0..count {
            let mut c = a.checks[1].clone();
            c.name = format!("custom-{i:02}");
            if failing.contains(&i) {
                c.outcome = Outcome::Fail;
                c.evidence.as_mut().unwrap().fail = 5.0 + i as f64;
            }
            a.checks.push(c);
        }
        a
    }

    /// The record of a release of v2 that advances `steps` times, 5 s
    /// apart, with `passing` analysed at each, and is rolled back at the
    /// next scrape on `failing`.
    fn rolled_back(
        plan: &Plan,
        steps: u64,
        passing: &Analysis,
        failing: &Analysis,
    ) -> ReleaseRecord {
        let mut r = ReleaseRecord::new(None, "web", "v2", plan, 0.0);
        let mut before = status(Phase::Progressing, 500, Some(gate_at(0, 0.0, 0.0)));
        for i in 1..=steps {
            let after = status(
                Phase::Progressing,
                500 * i as u32,
                Some(gate_at(i, 100.0, 1900.0)),
            );
            r.observe(
                5.0 * i as f64,
                Some(&before),
                &after,
                Some(passing),
                &[],
                None,
            );
            before = after;
        }
        let end = steps + 1;
        let after = status(Phase::Failed, 0, Some(gate_at(end, 200.0, 3800.0)));
        r.observe(
            5.0 * end as f64,
            Some(&before),
            &after,
            Some(failing),
            &[],
            None,
        );
        r
    }

    #[test]
    fn a_scrape_records_each_arms_window_not_the_totals() {
        let plan = crate::demo::demo_plan();
        let mut r = ReleaseRecord::new(None, "web", "v2", &plan, 1000.0);
        let before = status(Phase::Progressing, 500, Some(gate_at(3, 100.0, 1900.0)));
        let after = status(Phase::Progressing, 500, Some(gate_at(4, 200.0, 3800.0)));
        r.observe(
            1005.0,
            Some(&before),
            &after,
            Some(&analysis(false)),
            &[],
            None,
        );
        assert_eq!(r.scrapes.len(), 1);
        let s = &r.scrapes[0];
        assert_eq!(s.t, 5.0);
        assert_eq!(s.weight, 5.0);
        assert_eq!((s.canary.requests, s.canary.failures), (100, 1));
        assert_eq!((s.primary.requests, s.primary.failures), (1900, 2));
        assert_eq!(r.bounds.len(), 1);
        assert_eq!(s.primary.slow, vec![10]);
        assert_eq!(s.checks[0].against, Some(1.235));
        assert!(r.decisions.is_empty(), "nothing changed, nothing decided");
    }

    #[test]
    fn a_rollback_names_the_failing_check_and_keeps_its_evidence() {
        let plan = crate::demo::demo_plan();
        let mut r = ReleaseRecord::new(None, "web", "v2", &plan, 0.0);
        let before = status(Phase::Progressing, 500, Some(gate_at(3, 100.0, 1900.0)));
        let after = status(Phase::Failed, 0, Some(gate_at(4, 200.0, 3800.0)));
        let events = [Action::Event(Level::Warning, "rolled back".into())];
        r.observe(
            12.0,
            Some(&before),
            &after,
            Some(&analysis(true)),
            &events,
            None,
        );
        let d = &r.decisions[0];
        assert_eq!(d.kind, "rollback");
        assert_eq!(d.check.as_deref(), Some("errors"));
        assert_eq!(d.evidence[0].against, Some(9.0));
        assert_eq!(r.outcome.as_deref(), Some("rolled back"));
        assert!(r.events[0].warning);
        let back = ReleaseRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_newer_record_version_is_refused_by_name() {
        let plan = crate::demo::demo_plan();
        let r = ReleaseRecord::new(None, "web", "v2", &plan, 0.0);
        let text = r.to_json().replace("\"version\":1", "\"version\":2");
        let err = ReleaseRecord::from_json(&text).unwrap_err();
        assert!(err.contains("version 2"), "{err}");
    }

    #[test]
    fn a_thirty_minute_release_at_five_second_scrapes_fits_well_inside_a_kubernetes_object() {
        let plan = crate::demo::demo_plan();
        let mut r = ReleaseRecord::new(Some("shop"), "checkout", "v2", &plan, 0.0);
        let mut before = status(Phase::Progressing, 500, Some(gate_at(0, 0.0, 0.0)));
        for i in 1..=360u64 {
            let weight = 500 + (i as u32 / 36) * 500;
            let mut g = gate_at(i, 123.0 * i as f64, 4567.0 * i as f64);
            g.latency.push(g.latency[0].clone());
            let after = status(Phase::Progressing, weight, Some(g));
            let events = [Action::Event(Level::Normal, format!("weight {weight}"))];
            let acts: &[Action] = if weight != before.canary_weight_bp {
                &events
            } else {
                &[]
            };
            r.observe(
                i as f64 * 5.0,
                Some(&before),
                &after,
                Some(&analysis(false)),
                acts,
                None,
            );
            before = after;
        }
        assert_eq!(r.scrapes.len(), 360);
        let size = r.to_json().len();
        eprintln!("a 30-minute record: {size} bytes");
        // Kubernetes refuses objects over 1 MiB (etcd's request limit);
        // the record must leave room for several releases in one ConfigMap.
        assert!(size < 180 * 1024, "a 30-minute record is {size} bytes");
        let ten = records_to_json(&vec![r; 3]);
        assert!(ten.len() < 1024 * 1024 * 6 / 10, "{} bytes", ten.len());
    }

    #[test]
    fn a_record_past_the_limits_is_refused_naming_where() {
        let plan = crate::demo::demo_plan();
        let rec = ReleaseRecord::new(None, "web", "v2", &plan, 1.0);
        let mut v: serde_json::Value = serde_json::from_str(&rec.to_json()).unwrap();
        assert!(ReleaseRecord::from_json(&v.to_string()).is_ok());
        v["decisions"] = serde_json::Value::Array(
            (0..MAX_DECISIONS + 1)
                .map(|_| serde_json::json!({}))
                .collect(),
        );
        let err = ReleaseRecord::from_json(&v.to_string()).unwrap_err();
        assert!(
            err.contains(&format!(
                "record.decisions has {} entries",
                MAX_DECISIONS + 1
            )),
            "{err}"
        );
        v["decisions"] = serde_json::json!([]);
        v["message"] = serde_json::Value::String("x".repeat(MAX_STRING + 1));
        let err = ReleaseRecord::from_json(&v.to_string()).unwrap_err();
        assert!(err.contains("record.message is a string of"), "{err}");
        v["message"] = serde_json::json!("");
        v["scrapes"] = serde_json::json!([{"checks": (0..MAX_CHECKS + 1).collect::<Vec<_>>()}]);
        let err = ReleaseRecord::from_json(&v.to_string()).unwrap_err();
        assert!(
            err.contains("record.scrapes[0].checks has 65 entries"),
            "{err}"
        );
    }

    #[test]
    fn a_record_file_is_private_and_an_unreadable_one_is_not_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sluice-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = RecordFile::beside(&dir.join("control.sock"));
        let _ = std::fs::remove_file(&file.path);
        let plan = crate::demo::demo_plan();
        let rec = ReleaseRecord::new(None, "web", "v2", &plan, 1.0);
        file.save(&rec).unwrap();
        let mode = std::fs::metadata(&file.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert_eq!(file.load().unwrap().len(), 1);
        // A file that cannot be read keeps what it has.
        std::fs::write(&file.path, "{\"version\":1,\"releases\":[{\"oops\"").unwrap();
        let err = file.save(&rec).unwrap_err();
        assert!(err.contains("not writing the release record"), "{err}");
        assert!(err.contains(&file.path.display().to_string()), "{err}");
        assert_eq!(
            std::fs::read_to_string(&file.path).unwrap(),
            "{\"version\":1,\"releases\":[{\"oops\""
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn upsert_keeps_the_newest_n_and_replaces_the_same_release() {
        let plan = crate::demo::demo_plan();
        let mut all = Vec::new();
        for start in 0..5 {
            upsert(
                &mut all,
                ReleaseRecord::new(None, "web", "v2", &plan, f64::from(start)),
                3,
            );
        }
        let mut again = ReleaseRecord::new(None, "web", "v2", &plan, 4.0);
        again.message = "updated".into();
        upsert(&mut all, again, 3);
        let starts: Vec<f64> = all.iter().map(|r| r.started_at).collect();
        assert_eq!(starts, vec![2.0, 3.0, 4.0]);
        assert_eq!(all[2].message, "updated");
    }

    #[test]
    fn a_newer_release_of_the_app_ends_its_older_open_ones_as_superseded() {
        let plan = crate::demo::demo_plan();
        let mut all = Vec::new();
        let mut done = ReleaseRecord::new(Some("shop"), "web", "v1", &plan, 10.0);
        done.outcome = Some("promoted".into());
        upsert(&mut all, done, 10);
        let mut interrupted = ReleaseRecord::new(Some("shop"), "web", "v2", &plan, 20.0);
        interrupted.phase = Phase::Progressing;
        interrupted.weight = 20.0;
        upsert(&mut all, interrupted, 10);
        upsert(
            &mut all,
            ReleaseRecord::new(Some("shop"), "api", "v9", &plan, 25.0),
            10,
        );
        upsert(
            &mut all,
            ReleaseRecord::new(Some("other"), "web", "v9", &plan, 26.0),
            10,
        );
        upsert(
            &mut all,
            ReleaseRecord::new(Some("shop"), "web", "v3", &plan, 30.0),
            10,
        );
        let outcome = |ns: &str, app: &str, start: f64| {
            all.iter()
                .find(|r| {
                    r.namespace.as_deref() == Some(ns) && r.app == app && r.started_at == start
                })
                .unwrap()
                .outcome
                .clone()
        };
        assert_eq!(outcome("shop", "web", 10.0).as_deref(), Some("promoted"));
        assert_eq!(
            outcome("shop", "web", 20.0).as_deref(),
            Some("superseded by the release of revision v3")
        );
        // Another app, or the same name in another namespace, is not this one.
        assert_eq!(outcome("shop", "api", 25.0), None);
        assert_eq!(outcome("other", "web", 26.0), None);
        assert_eq!(outcome("shop", "web", 30.0), None);
        let old = all.iter().find(|r| r.started_at == 20.0).unwrap();
        assert!(old.ended());
        assert_eq!(old.events.last().unwrap().t, 10.0);
        assert!(
            old.events
                .last()
                .unwrap()
                .text
                .contains("it was Progressing at 20%"),
            "{:?}",
            old.events
        );
        // Read back, it is still ended.
        let back = records_from_json(&records_to_json(&all)).unwrap();
        assert!(back.iter().find(|r| r.started_at == 20.0).unwrap().ended());
    }

    #[test]
    fn a_record_naming_too_many_distinct_checks_is_refused() {
        let plan = crate::demo::demo_plan();
        let rec = ReleaseRecord::new(None, "web", "v2", &plan, 1.0);
        let mut v: serde_json::Value = serde_json::from_str(&rec.to_json()).unwrap();
        let scrape = |names: std::ops::Range<usize>| {
            serde_json::json!({"t": 1.0, "weight": 10.0, "phase": "Progressing",
                "canary": {"requests": 1, "failures": 0}, "primary": {"requests": 1, "failures": 0},
                "checks": names.map(|n| serde_json::json!({"check": format!("c{n}"), "outcome": "pass", "against": 1.0})).collect::<Vec<_>>()})
        };
        // Each scrape within its own limit; 64 names in all are fine.
        v["scrapes"] = serde_json::json!([scrape(0..40), scrape(24..64)]);
        ReleaseRecord::from_json(&v.to_string()).unwrap();
        v["scrapes"] = serde_json::json!([scrape(0..40), scrape(25..65)]);
        let err = ReleaseRecord::from_json(&v.to_string()).unwrap_err();
        assert!(
            err.contains("more than 64 distinct checks (record.scrapes[].checks[].check)"),
            "{err}"
        );
    }

    #[test]
    fn the_configmap_keeps_the_newest_n_within_its_byte_budget() {
        let plan = crate::demo::demo_plan();
        let mut all = Vec::new();
        for start in 0..12 {
            let mut r = ReleaseRecord::new(
                Some("shop"),
                "web",
                &format!("v{start}"),
                &plan,
                f64::from(start) * 100.0,
            );
            // 200 KB each: only four fit in the budget.
            r.message = "x".repeat(200 * 1024);
            all.push(r);
        }
        let data = to_configmap_data(&all, 10);
        assert_eq!(data.len(), 4);
        let back = from_configmap_data(&data).unwrap();
        let revisions: Vec<&str> = back.iter().map(|r| r.revision.as_str()).collect();
        assert_eq!(revisions, ["v8", "v9", "v10", "v11"]);
        assert_eq!(pick(&back, Some("v9")).unwrap().revision, "v9");
        assert_eq!(pick(&back, None).unwrap().revision, "v11");
        for a in &mut all {
            a.message.clear();
        }
        assert_eq!(to_configmap_data(&all, 10).len(), 10);
        assert_eq!(to_configmap_data(&all, 3).len(), 3);
    }

    /// A release with more custom checks than a record may hold writes a
    /// record that reads back (and does not spoil the other records kept
    /// with it, in the file or the ConfigMap): passing checks fill the 64
    /// names but the reserved 8, in the plan's order, the failing one is
    /// kept, and one warning event names what was left out.
    #[test]
    fn a_release_with_more_checks_than_a_record_holds_writes_a_readable_record() {
        let plan = crate::demo::demo_plan();
        let r = rolled_back(
            &plan,
            3,
            &with_custom_checks(analysis(false), 70, &[]),
            &with_custom_checks(analysis(true), 70, &[]),
        );

        let back = ReleaseRecord::from_json(&r.to_json()).expect("the record reads back");
        assert_eq!(back, r);
        assert_eq!(r.scrapes.len(), 4);
        let passing_room = MAX_CHECK_NAMES - RESERVED_NAMES;
        for s in &r.scrapes {
            assert_eq!(s.checks.len(), passing_room);
            assert_eq!(
                s.checks[0].check, "errors",
                "the plan's own checks come first"
            );
        }
        let rollback = r.decisions.last().unwrap();
        assert_eq!(rollback.kind, "rollback");
        assert_eq!(rollback.check.as_deref(), Some("errors"));
        assert_eq!(rollback.evidence.len(), passing_room);
        // 2 + 70 checks, 56 kept: custom-54 to custom-69 left out, said once.
        let said: Vec<&RecordEvent> = r
            .events
            .iter()
            .filter(|e| e.text.starts_with(LEFT_OUT))
            .collect();
        assert_eq!(said.len(), 1, "{:?}", r.events);
        assert!(said[0].warning);
        assert!(
            said[0].text.contains("left out: `custom-54`, `custom-55`")
                && said[0].text.contains("and 6 more")
                && !said[0].text.contains("`custom-53`"),
            "{}",
            said[0].text
        );
        // Kept with another release, the file's list and the ConfigMap read.
        let other = ReleaseRecord::new(None, "web", "v1", &plan, -100.0);
        let all = vec![other, r];
        assert_eq!(records_from_json(&records_to_json(&all)).unwrap().len(), 2);
        assert_eq!(
            from_configmap_data(&to_configmap_data(&all, 10))
                .unwrap()
                .len(),
            2
        );
    }

    /// With more checks than a record holds, a rollback decided by a check
    /// past the 64th keeps its attribution and that check's evidence: the
    /// deciding check is chosen from every check judged, and failing
    /// checks are kept before passing ones, which are left out instead.
    #[test]
    fn a_rollback_decided_by_a_check_past_the_64th_names_it_and_keeps_its_evidence() {
        let plan = crate::demo::demo_plan();
        // custom-88 goes furthest past its threshold; custom-70 fails too.
        let r = rolled_back(
            &plan,
            2,
            &with_custom_checks(analysis(false), 90, &[]),
            &with_custom_checks(analysis(false), 90, &[70, 88]),
        );
        let rollback = r.decisions.last().unwrap();
        assert_eq!(rollback.kind, "rollback");
        assert_eq!(rollback.check.as_deref(), Some("custom-88"));
        let kept: Vec<&str> = rollback.evidence.iter().map(|c| c.check.as_str()).collect();
        assert!(
            kept.contains(&"custom-88") && kept.contains(&"custom-70"),
            "{kept:?}"
        );
        assert!(kept.len() <= MAX_CHECKS, "{}", kept.len());
        assert_eq!(kept[0], "errors", "the plan's order is kept");
        let back = ReleaseRecord::from_json(&r.to_json()).expect("the record reads back");
        assert_eq!(back, r);
    }
}
