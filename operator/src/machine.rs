//! The canary state machine: `(status, observation) -> (status, actions)`.
//!
//! Pure code, no I/O and no clock: the driver (`rollout`, `demo`, `kube`)
//! gathers an [`Observation`] (the time, the revision it wants released, the
//! target's readiness, one tick's [`Analysis`], webhook gates, a human's
//! command), calls [`step`], persists the returned status, carries out the
//! returned [`Action`]s, and calls [`confirm`] once the router has applied
//! them.
//!
//! Rules, in Flagger's phase names:
//! - A new revision (re)starts a release at `Initializing`, weight 0, from
//!   any phase, except during `Promoting`/`Finalising`: there it is queued
//!   and released once the promotion has finished. A `Failed` revision stays
//!   failed until the revision changes or a human asks to `Retry`.
//! - `Progressing` advances one step per passing analysis tick. A failing
//!   tick counts toward `failure_limit`; reaching it rolls back. An
//!   inconclusive tick never advances; if no step passes within
//!   `progress_deadline`, the release rolls back for lack of evidence. Time
//!   the driver was not running (`Observation::paused_for`) does not count.
//! - Promotion only ever follows a tick whose analysis passed with the
//!   weight at the last step (Flagger's rule). When a gate is configured
//!   (manual approval, confirm-promotion webhooks) the release waits in
//!   `WaitingPromotion` until the gates are open *and* a tick passes. An
//!   approval is recorded whenever it arrives and acted on by the next
//!   passing tick; it never promotes on its own. `PromoteNow`
//!   (`promote --full`) is the one explicit human override of the analysis,
//!   and is evented as such.
//! - While waiting, checks still run and failures still roll back; waiting
//!   on a human does not count toward the deadline.
//! - The sequential gate ([`crate::gate`]) ticks on every scrape. A
//!   decisive failure (its fail side) rolls back at once; a step advances
//!   once it has lasted `interval` with enough canary requests and nothing
//!   failed; promotion also needs the gate's pass side (the canary shown no
//!   worse than the primary, or than its baseline arm when the release has
//!   one: the messages name which), and a release not shown so within
//!   `max_duration` rolls back.
//! - `Promoting` -> `Finalising` -> `Succeeded` as the target confirms each.
//! - Rollback always ends at weight 0 with phase `Failed`.
//! - Decisions are never lost: a router action is recorded in the status
//!   (`unconfirmed`) when it is decided, and every later tick re-issues it
//!   until the driver [`confirm`]s it. Nothing advances while it is pending.
//!   A rollback supersedes a pending forward action; a pending `Initialize`
//!   or `SetWeight` that the router never confirms rolls back at the
//!   deadline; a decided rollback is re-issued until it is confirmed, however
//!   long that takes. Weight never goes up after a rollback is decided.
//! - Post-rollout webhooks run after a promotion and after a rollback.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use sluice_proxy::config::WEIGHT_SCALE_BP;

use crate::analysis::{Analysis, Outcome};
use crate::plan::{Plan, Strategy, WebhookKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    Initializing,
    Initialized,
    Progressing,
    WaitingPromotion,
    Promoting,
    Finalising,
    Succeeded,
    Failed,
    /// An experiment ran its time: the report is out and the route is back
    /// on stable (nothing was promoted).
    Concluded,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initializing => "Initializing",
            Phase::Initialized => "Initialized",
            Phase::Progressing => "Progressing",
            Phase::WaitingPromotion => "WaitingPromotion",
            Phase::Promoting => "Promoting",
            Phase::Finalising => "Finalising",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Concluded => "Concluded",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Concluded)
    }

    /// Phases whose ticks carry an analysis.
    pub fn analyses(self) -> bool {
        matches!(self, Phase::Progressing | Phase::WaitingPromotion)
    }

    /// Phases whose ticks read the metrics: the analysing ones, and
    /// `Initializing`, which measures the primary's baseline.
    pub fn measures(self) -> bool {
        self.analyses() || self == Phase::Initializing
    }

    /// A stable number for the `sluice_canary_phase` gauge.
    pub fn code(self) -> i64 {
        match self {
            Phase::Initializing => 0,
            Phase::Initialized => 1,
            Phase::Progressing => 2,
            Phase::WaitingPromotion => 3,
            Phase::Promoting => 4,
            Phase::Finalising => 5,
            Phase::Succeeded => 6,
            Phase::Failed => 7,
            Phase::Concluded => 8,
        }
    }
}

/// Where a release stands; persisted by drivers that can restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub phase: Phase,
    pub revision: String,
    /// Index into the plan's steps of the weight now in force (Progressing on).
    pub step: usize,
    pub canary_weight_bp: u32,
    /// How many steps have had a passing analysis in this release.
    pub passed_steps: usize,
    pub failed_checks: u32,
    /// A human approved promotion (manual gate).
    pub approved: bool,
    /// Times on the driver's clock, in seconds.
    pub started_at: f64,
    pub last_progress_at: f64,
    pub last_transition_at: f64,
    pub message: String,
    /// A router action decided but not yet confirmed applied; re-issued on
    /// every tick until [`confirm`] clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed: Option<Action>,
    /// A revision that arrived during a promotion, released after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_revision: Option<String>,
    /// When the weight in force was set (the sequential gate's step dwell).
    #[serde(default)]
    pub step_started_at: f64,
    /// The sequential gate's evidence, carried for the driver (which
    /// updates it from each scrape); dropped when a release (re)starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<crate::gate::GateState>,
    /// The maximum duration passed with nothing decided, and the release
    /// waits for a person (`--when-undecided hold`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub undecided: bool,
    /// When a failure was last counted toward the limit (see
    /// [`tally_failure`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_counted_at: Option<f64>,
}

/// What a human asked for through `sluice promote` / `sluice abort` /
/// `kubectl sluice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Open the manual promotion gate; the next passing tick promotes.
    Approve,
    /// Roll back now.
    Abort,
    /// Skip the remaining steps and the analysis and promote now
    /// (`promote --full`): a human override, evented as one.
    PromoteNow,
    /// Release a rolled-back revision again.
    Retry,
}

impl Command {
    /// Why this command would change nothing the release does in `phase`
    /// (`None`: [`step`] acts on it), in words for the person who asked.
    /// The control socket and the dashboard refuse such a command rather
    /// than accept one the machine would drop. `experiment`: the release
    /// is an experiment, which never promotes.
    ///
    /// - `Approve`: before promotion begins (Initializing up to
    ///   WaitingPromotion); it is recorded and acted on by a passing tick.
    /// - `Abort`: before promotion begins; a promotion under way finishes.
    /// - `PromoteNow`: while the canary is judged (Progressing,
    ///   WaitingPromotion), never for an experiment.
    /// - `Retry`: a rolled-back release (Failed).
    pub fn refused_in(self, phase: Phase, experiment: bool) -> Option<String> {
        let before_promotion = matches!(
            phase,
            Phase::Initializing | Phase::Initialized | Phase::Progressing | Phase::WaitingPromotion
        );
        let ended = || format!("the release has already ended ({})", phase.as_str());
        match self {
            Command::Retry if phase == Phase::Failed => None,
            Command::Retry => Some(format!(
                "retry applies to a rolled-back release, and this one is {}",
                phase.as_str()
            )),
            _ if phase.is_terminal() => Some(ended()),
            Command::Approve | Command::Abort if before_promotion => None,
            Command::PromoteNow if experiment => Some(
                "an experiment never promotes; it ends on stable when its time is up (abort ends it now)"
                    .into(),
            ),
            Command::PromoteNow if phase.analyses() => None,
            Command::PromoteNow if before_promotion => Some(format!(
                "the canary has no traffic yet ({}); promote now applies from the first step",
                phase.as_str()
            )),
            _ => Some(format!(
                "the promotion is already under way ({})",
                phase.as_str()
            )),
        }
    }
}

/// Results of the webhooks the driver ran for this tick (None: none configured or not run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gates {
    /// `confirm-rollout`: false holds the release before any traffic.
    pub confirm_rollout: Option<bool>,
    pub pre_rollout: Option<bool>,
    /// `confirm-traffic-increase`: false holds the weight where it is.
    pub confirm_traffic_increase: Option<bool>,
    pub rollout: Option<bool>,
    pub confirm_promotion: Option<bool>,
    /// A rollback webhook answered 2xx: abort the release.
    pub rollback_requested: bool,
    /// Why each webhook that did not pass failed, by kind (`rollout`):
    /// `load-test: answered 500 Internal Server Error`.
    pub failures: Vec<(WebhookKind, String)>,
}

impl Gates {
    /// ": " and why the hooks of `kind` failed, for a status message; empty
    /// when none did.
    pub fn why(&self, kind: WebhookKind) -> String {
        let texts: Vec<&str> = self
            .failures
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, why)| why.as_str())
            .collect();
        if texts.is_empty() {
            String::new()
        } else {
            format!(": {}", texts.join("; "))
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub now: f64,
    /// The revision the user wants released now.
    pub revision: String,
    /// Initializing: the canary can take traffic. Promoting/Finalising: the
    /// promotion (or clean-up) is complete.
    pub target_ready: bool,
    /// Initializing, not ready although the canary is: what else the
    /// release waits for (a baseline arm), as the status message names it
    /// after "waiting for"; None: the canary.
    pub waiting_for: Option<String>,
    pub analysis: Option<Analysis>,
    pub gates: Gates,
    pub command: Option<Command>,
    /// Seconds the driver was not running before this tick (an operator
    /// restart, a resumed `sluice rollout`): not counted toward deadlines.
    pub paused_for: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    Normal,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Prepare the canary of the new revision at weight 0.
    Initialize,
    /// Send this share of weighted traffic to the canary.
    SetWeight(u32),
    /// Make the canary's revision the stable one.
    Promote,
    /// After promotion: all traffic on stable, canary removed or scaled down.
    Finalise,
    /// All traffic back on stable, canary weight 0, stable untouched.
    Rollback,
    /// Fire-and-forget webhooks (post-rollout).
    Notify(WebhookKind),
    /// Tell the user (log line, Kubernetes Event).
    Event(Level, String),
}

impl Action {
    /// Whether this action changes where traffic goes (and so must be
    /// confirmed by the router).
    pub fn is_routing(&self) -> bool {
        matches!(
            self,
            Action::Initialize
                | Action::SetWeight(_)
                | Action::Promote
                | Action::Finalise
                | Action::Rollback
        )
    }
}

/// When the driver should call [`step`] again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextTick {
    /// Right away (the next phase needs no waiting).
    Now,
    /// After a short poll (waiting on the target or the router).
    Soon,
    /// After one analysis interval.
    Interval,
    /// Nothing to do until the revision changes.
    Idle,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub status: Status,
    pub actions: Vec<Action>,
    pub next: NextTick,
}

impl Transition {
    fn new(mut status: Status, actions: Vec<Action>, next: NextTick) -> Self {
        if let Some(routing) = actions.iter().find(|a| a.is_routing()) {
            status.unconfirmed = Some(routing.clone());
        }
        Self {
            status,
            actions,
            next,
        }
    }

    fn hold(status: Status, next: NextTick) -> Self {
        Self::new(status, Vec::new(), next)
    }
}

/// The driver has applied the status's routing action: clear it.
pub fn confirm(status: &mut Status) {
    status.unconfirmed = None;
}

/// The whole machine.
/// Adds to `t` (the step from `current`) an event for each start and
/// weight change the driver is to carry out for the first time (not a
/// re-issue), and for each failure counted, as Flagger records them, so
/// that `event` webhooks and Kubernetes Events see the release's course,
/// not only its end. Drivers call it on every step's transition.
pub fn with_course_events(current: Option<&Status>, mut t: Transition) -> Transition {
    let pending = current.and_then(|c| c.unconfirmed.as_ref());
    let mut events = Vec::new();
    for action in &t.actions {
        if matches!(action, Action::Initialize | Action::SetWeight(_)) && pending != Some(action) {
            events.push(Action::Event(Level::Normal, t.status.message.clone()));
        }
    }
    if let Some(c) = current
        && c.revision == t.status.revision
        && t.status.failed_checks > c.failed_checks
        && !t.status.phase.is_terminal()
    {
        events.push(Action::Event(Level::Warning, t.status.message.clone()));
    }
    for event in events {
        if !t.actions.contains(&event) {
            t.actions.push(event);
        }
    }
    t
}

pub fn step(plan: &Plan, current: Option<&Status>, obs: &Observation) -> Transition {
    let Some(current) = current else {
        return start(obs, "release started".to_string(), Vec::new());
    };
    let mut s = current.clone();
    // Downtime of the driver does not count toward any deadline.
    if obs.paused_for > 0.0 {
        s.last_progress_at += obs.paused_for;
        s.started_at += obs.paused_for;
    }
    if current.revision != obs.revision {
        if matches!(s.phase, Phase::Promoting | Phase::Finalising) {
            if s.queued_revision.as_deref() != Some(obs.revision.as_str()) {
                s.queued_revision = Some(obs.revision.clone());
                s.message = format!(
                    "revision {} is queued until the promotion of {} finishes",
                    obs.revision, s.revision
                );
            }
        } else {
            let mut events = Vec::new();
            if !current.phase.is_terminal() {
                events.push(Action::Event(
                    Level::Normal,
                    format!(
                        "new revision {} during {}; restarting at the first step",
                        obs.revision,
                        current.phase.as_str()
                    ),
                ));
            }
            return start(
                obs,
                format!("release of revision {} started", obs.revision),
                events,
            );
        }
    }
    if obs.command == Some(Command::Approve) && !s.approved && !s.phase.is_terminal() {
        s.approved = true;
    }
    if let Some(pending) = s.unconfirmed.clone() {
        return reissue(plan, s, obs, pending);
    }
    match s.phase {
        Phase::Succeeded | Phase::Concluded => Transition::hold(s, NextTick::Idle),
        Phase::Failed => {
            if obs.command == Some(Command::Retry) {
                start(
                    obs,
                    format!("release of revision {} retried by a user", obs.revision),
                    vec![Action::Event(
                        Level::Normal,
                        format!("revision {} is released again (retry)", obs.revision),
                    )],
                )
            } else {
                Transition::hold(s, NextTick::Idle)
            }
        }
        Phase::Initializing => {
            if obs.command == Some(Command::Abort) {
                return rollback(s, obs.now, "aborted by a user".into());
            }
            let baseline = plan.baseline().as_secs_f64();
            let measured = obs.now - s.started_at;
            let baseline_done = measured + 1e-6 >= baseline;
            if obs.target_ready && baseline_done {
                let forecast = plan.gate.settings().and_then(|settings| {
                    crate::gate::forecast::forecast(plan.schedule(), settings, s.gate.as_ref()?)
                });
                let mut actions = Vec::new();
                let message = match forecast {
                    Some(f) => {
                        actions.push(Action::Event(Level::Normal, f.to_string()));
                        format!("canary ready; {f}")
                    }
                    None => "canary ready".into(),
                };
                transition(&mut s, Phase::Initialized, obs.now, message);
                Transition::new(s, actions, NextTick::Now)
            } else if deadline_passed(plan, &s, obs.now) {
                rollback(
                    s,
                    obs.now,
                    "the canary did not become ready within the progress deadline".into(),
                )
            } else if !baseline_done {
                s.message = format!(
                    "measuring the primary before the first step ({measured:.0}s of {}){}",
                    sluice_proxy::config::format_duration(plan.baseline()),
                    if obs.target_ready {
                        String::new()
                    } else {
                        format!("; {}", waiting_message(obs))
                    }
                );
                Transition::hold(s, NextTick::Interval)
            } else {
                s.message = waiting_message(obs);
                Transition::hold(s, NextTick::Soon)
            }
        }
        Phase::Initialized => {
            if obs.command == Some(Command::Abort) {
                return rollback(s, obs.now, "aborted by a user".into());
            }
            if obs.gates.rollback_requested {
                return rollback(s, obs.now, "a rollback webhook asked for it".into());
            }
            if obs.gates.confirm_rollout == Some(false) {
                s.message = format!(
                    "waiting for the confirm-rollout webhooks to answer 2xx (no traffic to the canary yet){}",
                    obs.gates.why(WebhookKind::ConfirmRollout)
                );
                return Transition::hold(s, NextTick::Interval);
            }
            if obs.gates.pre_rollout == Some(false) {
                tally_failure(plan, &mut s, obs.now);
                if s.failed_checks >= plan.failure_limit {
                    return rollback(
                        s,
                        obs.now,
                        format!(
                            "pre-rollout webhooks failed; failure limit reached{}",
                            obs.gates.why(WebhookKind::PreRollout)
                        ),
                    );
                }
                s.message = format!(
                    "pre-rollout webhooks failed ({} of {} failures allowed){}",
                    s.failed_checks,
                    plan.failure_limit,
                    obs.gates.why(WebhookKind::PreRollout)
                );
                return Transition::hold(s, NextTick::Interval);
            }
            s.step = 0;
            s.last_progress_at = obs.now;
            s.step_started_at = obs.now;
            let (weight, msg) = match &plan.strategy {
                Strategy::Canary => (
                    plan.steps_bp[0],
                    format!("advancing to step 1 of {}", plan.steps_bp.len()),
                ),
                Strategy::BlueGreen { .. } => (
                    0,
                    "judging the new version on mirrored traffic (weight 0)".to_string(),
                ),
                Strategy::Experiment { duration } => (
                    plan.steps_bp[0],
                    format!(
                        "experiment started at {}% for {}",
                        pct(plan.steps_bp[0]),
                        sluice_proxy::config::format_duration(*duration)
                    ),
                ),
            };
            s.canary_weight_bp = weight;
            transition(&mut s, Phase::Progressing, obs.now, msg);
            let actions = if weight > 0 {
                vec![Action::SetWeight(weight)]
            } else {
                Vec::new()
            };
            Transition::new(s, actions, NextTick::Interval)
        }
        Phase::Progressing | Phase::WaitingPromotion => analyse(plan, s, obs),
        Phase::Promoting => {
            if obs.target_ready {
                transition(
                    &mut s,
                    Phase::Finalising,
                    obs.now,
                    "promoted; finalising".into(),
                );
                Transition::new(s, vec![Action::Finalise], NextTick::Now)
            } else {
                s.message = with_queued("waiting for the promotion to roll out", &s);
                Transition::hold(s, NextTick::Soon)
            }
        }
        Phase::Finalising => {
            if obs.target_ready {
                s.canary_weight_bp = 0;
                let msg = format!("revision {} promoted", s.revision);
                transition(&mut s, Phase::Succeeded, obs.now, msg.clone());
                // A queued revision starts on the next tick (its revision differs).
                let next = if s.queued_revision.take().is_some() {
                    NextTick::Now
                } else {
                    NextTick::Idle
                };
                Transition::new(
                    s,
                    vec![
                        Action::Notify(WebhookKind::PostRollout),
                        Action::Event(Level::Normal, msg),
                    ],
                    next,
                )
            } else {
                s.message = with_queued("waiting for the canary to be scaled down", &s);
                Transition::hold(s, NextTick::Soon)
            }
        }
    }
}

/// A routing action is still unconfirmed: issue it again, unless a rollback
/// supersedes it.
fn reissue(plan: &Plan, mut s: Status, obs: &Observation, pending: Action) -> Transition {
    let forward = matches!(pending, Action::Initialize | Action::SetWeight(_));
    if forward {
        if obs.command == Some(Command::Abort) {
            return rollback(s, obs.now, "aborted by a user".into());
        }
        // Accepted while a weight change waits to be confirmed (a
        // proportional canary's pods still rolling out): it replaces it,
        // as an abort does, rather than be taken and dropped.
        if obs.command == Some(Command::PromoteNow)
            && matches!(pending, Action::SetWeight(_))
            && !matches!(plan.strategy, Strategy::Experiment { .. })
        {
            s.unconfirmed = None;
            return promote_now(s, obs.now);
        }
        if obs.gates.rollback_requested {
            return rollback(s, obs.now, "a rollback webhook asked for it".into());
        }
        if let Some(a) = obs.analysis.as_ref().filter(|a| a.decisive_failure()) {
            return rollback(
                s,
                obs.now,
                format!(
                    "the canary is worse than {}: {}",
                    a.reference(),
                    a.summary()
                ),
            );
        }
        if obs.analysis.as_ref().map(Analysis::verdict) == Some(Outcome::Fail) {
            tally_failure(plan, &mut s, obs.now);
            if s.failed_checks >= plan.failure_limit {
                let why = obs.analysis.as_ref().map(Analysis::summary);
                return rollback(
                    s,
                    obs.now,
                    format!(
                        "failure limit {} reached: {}",
                        plan.failure_limit,
                        why.unwrap_or_default()
                    ),
                );
            }
        }
        if deadline_passed(plan, &s, obs.now) {
            return rollback(
                s,
                obs.now,
                format!(
                    "the router did not confirm {} within the progress deadline",
                    describe(&pending)
                ),
            );
        }
    }
    s.message = format!("applying {} again (not yet confirmed)", describe(&pending));
    Transition::new(s, vec![pending], NextTick::Soon)
}

fn with_queued(message: &str, s: &Status) -> String {
    match &s.queued_revision {
        Some(r) => format!("{message}; revision {r} is queued until the promotion finishes"),
        None => message.to_string(),
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Initialize => "the canary's initialisation".into(),
        Action::SetWeight(bp) => format!("weight {}%", pct(*bp)),
        Action::Promote => "the promotion".into(),
        Action::Finalise => "the finalisation".into(),
        Action::Rollback => "the rollback".into(),
        Action::Notify(kind) => format!("{} webhooks", kind.as_str()),
        Action::Event(_, text) => text.clone(),
    }
}

fn start(obs: &Observation, message: String, mut actions: Vec<Action>) -> Transition {
    let status = Status {
        phase: Phase::Initializing,
        revision: obs.revision.clone(),
        step: 0,
        canary_weight_bp: 0,
        passed_steps: 0,
        failed_checks: 0,
        approved: false,
        started_at: obs.now,
        last_progress_at: obs.now,
        last_transition_at: obs.now,
        message,
        unconfirmed: None,
        queued_revision: None,
        step_started_at: obs.now,
        gate: None,
        undecided: false,
        failure_counted_at: None,
    };
    // The events come first: should `Initialize` fail, they are still said
    // (event webhooks are queued, so they hold nothing up).
    actions.push(Action::Initialize);
    Transition::new(status, actions, NextTick::Soon)
}

/// "waiting for" what keeps an Initializing release from its first step.
fn waiting_message(obs: &Observation) -> String {
    let what = obs
        .waiting_for
        .as_deref()
        .unwrap_or("the canary to become ready");
    format!("waiting for {what}")
}

fn transition(s: &mut Status, phase: Phase, now: f64, message: String) {
    s.phase = phase;
    s.last_transition_at = now;
    s.message = message;
}

fn deadline_passed(plan: &Plan, s: &Status, now: f64) -> bool {
    now - s.last_progress_at >= plan.progress_deadline.as_secs_f64()
}

fn rollback(mut s: Status, now: f64, reason: String) -> Transition {
    s.canary_weight_bp = 0;
    let message = format!("rolled back: {reason}");
    transition(&mut s, Phase::Failed, now, message.clone());
    Transition::new(
        s,
        vec![
            Action::Rollback,
            Action::Event(Level::Warning, message),
            Action::Notify(WebhookKind::PostRollout),
        ],
        NextTick::Idle,
    )
}

fn analyse(plan: &Plan, mut s: Status, obs: &Observation) -> Transition {
    if obs.command == Some(Command::Abort) {
        return rollback(s, obs.now, "aborted by a user".into());
    }
    if obs.command == Some(Command::PromoteNow)
        && matches!(plan.strategy, Strategy::Experiment { .. })
    {
        // Said, and otherwise a tick like any other: its analysis still
        // counts (a failure still ends the experiment).
        let plain = Observation {
            command: None,
            ..obs.clone()
        };
        let mut t = analyse(plan, s, &plain);
        t.actions.push(Action::Event(
            Level::Normal,
            "promote --full ignored: an experiment never promotes; it ends on stable when its time is up (abort ends it now)".into(),
        ));
        return t;
    }
    if obs.command == Some(Command::PromoteNow) {
        return promote_now(s, obs.now);
    }
    if obs.gates.rollback_requested {
        return rollback(s, obs.now, "a rollback webhook asked for it".into());
    }
    let Some(analysis) = &obs.analysis else {
        // Not an analysis tick (e.g. only a command arrived): hold. An
        // approval is recorded above and acted on by the next passing tick.
        if s.phase == Phase::WaitingPromotion && s.approved {
            s.message = "approved; promotes on the next passing analysis".into();
        }
        return Transition::hold(s, NextTick::Interval);
    };
    let mut verdict = analysis.verdict();
    let mut why = analysis.summary();
    if obs.gates.rollout == Some(false) && verdict != Outcome::Fail {
        verdict = Outcome::Fail;
        why = format!(
            "a rollout webhook failed{}",
            obs.gates.why(WebhookKind::Rollout)
        );
    }
    match plan.strategy {
        Strategy::Canary => {}
        Strategy::BlueGreen { iterations, soak } => {
            return blue_green(plan, s, obs, analysis, (verdict, why), iterations, soak);
        }
        Strategy::Experiment { duration } => {
            return experiment(plan, s, obs, analysis, (verdict, why), duration);
        }
    }
    if verdict == Outcome::Fail && analysis.decisive_failure() {
        // The sequential gate has budgeted its false alarms already.
        return rollback(
            s,
            obs.now,
            format!("the canary is worse than {}: {why}", analysis.reference()),
        );
    }
    let at_last_step = s.step + 1 >= plan.steps_bp.len();
    // Before the last step a release keeps stepping; the policy applies
    // once the last weight has been reached.
    if plan.is_sequential()
        && verdict != Outcome::Fail
        && at_last_step
        && !analysis.promotes()
        && obs.now - s.started_at >= plan.max_duration.as_secs_f64()
        && let Some(t) = undecided(plan, &mut s, obs, analysis)
    {
        return t;
    }
    match verdict {
        Outcome::Fail => {
            tally_failure(plan, &mut s, obs.now);
            if s.failed_checks >= plan.failure_limit {
                return rollback(
                    s,
                    obs.now,
                    format!("failure limit {} reached: {why}", plan.failure_limit),
                );
            }
            s.message = format!(
                "check failed ({} of {}): {why}",
                s.failed_checks, plan.failure_limit
            );
            Transition::hold(s, NextTick::Interval)
        }
        Outcome::Inconclusive => {
            if s.phase == Phase::Progressing && deadline_passed(plan, &s, obs.now) {
                return rollback(
                    s,
                    obs.now,
                    format!(
                        "no conclusive analysis within the progress deadline ({}): {why}",
                        sluice_proxy::config::format_duration(plan.progress_deadline)
                    ),
                );
            }
            s.message = format!(
                "holding at {}%: inconclusive: {why}",
                pct(s.canary_weight_bp)
            );
            Transition::hold(s, NextTick::Interval)
        }
        Outcome::Pass => {
            s.last_progress_at = obs.now;
            let dwell = obs.now - s.step_started_at;
            if plan.is_sequential() && dwell + 1e-6 < plan.interval.as_secs_f64() {
                s.message = format!(
                    "at {}% for {dwell:.0}s of {}: {why}",
                    pct(s.canary_weight_bp),
                    sluice_proxy::config::format_duration(plan.interval)
                );
                return Transition::hold(s, NextTick::Interval);
            }
            // A jump of the canary held as a possible incident: no more
            // users are sent to it, and it is not promoted, until the hold
            // ends (forgiven as an excursion, or counted as a regression
            // once it has had more elevated scrapes than the incident
            // allowance holds).
            if let Some(held) = held(analysis) {
                s.message = format!("holding at {}% while {held}", pct(s.canary_weight_bp));
                return Transition::hold(s, NextTick::Interval);
            }
            s.passed_steps = s.passed_steps.max(s.step + 1);
            if s.step + 1 < plan.steps_bp.len() && obs.gates.confirm_traffic_increase == Some(false)
            {
                s.message = format!(
                    "step {} passed; holding at {}% until the confirm-traffic-increase webhooks answer 2xx ({why}){}",
                    s.step + 1,
                    pct(s.canary_weight_bp),
                    obs.gates.why(WebhookKind::ConfirmTrafficIncrease)
                );
                return Transition::hold(s, NextTick::Interval);
            }
            if s.step + 1 < plan.steps_bp.len() {
                s.step += 1;
                s.canary_weight_bp = plan.steps_bp[s.step];
                s.step_started_at = obs.now;
                s.message = format!(
                    "step {} passed; advancing to {}% ({})",
                    s.step,
                    pct(s.canary_weight_bp),
                    why
                );
                let weight = s.canary_weight_bp;
                return Transition::new(s, vec![Action::SetWeight(weight)], NextTick::Interval);
            }
            // This tick passed with the weight at the last step.
            if !analysis.promotes() {
                s.message = format!(
                    "at the last step ({}%); promotion waits until the canary is shown no worse than {} at this weight. Still missing: {}",
                    pct(s.canary_weight_bp),
                    analysis.reference(),
                    analysis.missing()
                );
                return Transition::hold(s, NextTick::Interval);
            }
            match closed_gate(plan, &s, obs) {
                None => promote(s, obs.now),
                Some(waiting) => {
                    if s.phase != Phase::WaitingPromotion {
                        transition(&mut s, Phase::WaitingPromotion, obs.now, waiting);
                    } else {
                        s.message = waiting;
                    }
                    Transition::hold(s, NextTick::Interval)
                }
            }
        }
    }
}

/// What holds the release while a check holds a jump of the canary as a
/// possible incident (the sequential gate's incidents): the weight neither
/// advances nor promotes until the hold ends.
fn held(analysis: &Analysis) -> Option<String> {
    analysis.holding().map(|c| {
        format!(
            "a jump of the canary is held as a possible incident: {}: {}",
            c.name, c.reason
        )
    })
}

/// The maximum duration has passed with nothing decided: what
/// `--when-undecided` says.
fn undecided(
    plan: &Plan,
    s: &mut Status,
    obs: &Observation,
    analysis: &Analysis,
) -> Option<Transition> {
    let max = sluice_proxy::config::format_duration(plan.max_duration);
    if s.undecided {
        // Already waiting for a person: an approval decides, on a tick
        // that passed (nothing failed, nothing inconclusive).
        // A person's word stands in for the evidence, not for the
        // confirm-promotion webhooks: those must still approve.
        let closed = closed_gate(plan, s, obs);
        let policy = plan.when_undecided == crate::plan::Undecided::Promote && closed.is_none();
        if let (true, Some(why)) = (s.approved, &closed) {
            s.message = format!("approved while undecided; {why}");
            return Some(Transition::hold(s.clone(), NextTick::Interval));
        }
        if (s.approved || policy) && analysis.verdict() == Outcome::Pass {
            if let Some(held) = held(analysis) {
                // Neither a person's word nor the policy promotes during a
                // possible incident: the hold ends, forgiven or counted,
                // after about its allowance.
                s.message = format!("undecided after {max}; promotion waits while {held}");
                return Some(Transition::hold(s.clone(), NextTick::Interval));
            }
            let message = if s.approved {
                format!(
                    "promoted by a person after the release was undecided for {max} (evidence then: {})",
                    analysis.missing()
                )
            } else {
                format!(
                    "promoted undecided (--when-undecided promote): not shown to be no worse than {} within {max}: {}",
                    analysis.reference(),
                    analysis.missing()
                )
            };
            let mut t = promote(s.clone(), obs.now);
            t.status.message = message.clone();
            t.actions.push(Action::Event(Level::Warning, message));
            return Some(t);
        }
        s.message = format!(
            "undecided after {max}; waiting for `sluice promote` or `sluice abort` (a failure still rolls back, proof still promotes). Still missing: {}",
            analysis.missing()
        );
        return Some(Transition::hold(s.clone(), NextTick::Interval));
    }
    match plan.when_undecided {
        crate::plan::Undecided::Rollback => Some(rollback(
            s.clone(),
            obs.now,
            format!(
                "not shown to be no worse than {} within the maximum release duration ({max}): {}",
                analysis.reference(),
                analysis.missing()
            ),
        )),
        crate::plan::Undecided::Promote
            if closed_gate(plan, s, obs).is_none()
                && analysis.verdict() == Outcome::Pass
                && analysis.holding().is_none() =>
        {
            let message = format!(
                "promoted undecided (--when-undecided promote): not shown to be no worse than {} within {max}: {}",
                analysis.reference(),
                analysis.missing()
            );
            let mut t = promote(s.clone(), obs.now);
            t.status.message = message.clone();
            t.actions.push(Action::Event(Level::Warning, message));
            Some(t)
        }
        // Hold, or promote past a promotion gate that is still closed
        // (a manual approval, a confirm-promotion webhook): wait.
        crate::plan::Undecided::Hold | crate::plan::Undecided::Promote => {
            s.undecided = true;
            let message = format!(
                "undecided after {max}: nothing failed, but the canary is not yet shown no worse than {}; waiting for a person (`sluice promote` or `sluice abort`; `kubectl sluice promote` or `abort`). Still missing: {}",
                analysis.reference(),
                analysis.missing()
            );
            transition(s, Phase::WaitingPromotion, obs.now, message.clone());
            Some(Transition::new(
                s.clone(),
                vec![Action::Event(Level::Warning, message)],
                NextTick::Interval,
            ))
        }
    }
}

/// Blue/green: judged on mirrored copies at weight 0, then switched to
/// 100% in one step and soaked; any failure in the soak switches back.
fn blue_green(
    plan: &Plan,
    mut s: Status,
    obs: &Observation,
    analysis: &Analysis,
    (verdict, why): (Outcome, String),
    iterations: u32,
    soak: std::time::Duration,
) -> Transition {
    let switched = s.canary_weight_bp >= WEIGHT_SCALE_BP;
    let dwell = obs.now - s.step_started_at;
    if verdict == Outcome::Fail {
        if switched {
            return rollback(
                s,
                obs.now,
                format!("failed during the soak; all traffic is back on the primary: {why}"),
            );
        }
        let mut s = match count_failure(
            plan,
            s,
            obs.now,
            analysis,
            format!("worse than the primary on mirrored traffic (no user saw it): {why}"),
            format!(
                "failure limit {} reached on mirrored traffic: {why}",
                plan.failure_limit
            ),
        ) {
            ControlFlow::Continue(s) => s,
            ControlFlow::Break(rolled_back) => return rolled_back,
        };
        s.message = format!(
            "check failed on mirrored traffic ({} of {}): {why}",
            s.failed_checks, plan.failure_limit
        );
        return Transition::hold(s, NextTick::Interval);
    }
    if !switched
        && !analysis.promotes()
        && obs.now - s.started_at >= plan.max_duration.as_secs_f64()
        && let Some(t) = undecided(plan, &mut s, obs, analysis)
    {
        return t;
    }
    if verdict == Outcome::Inconclusive {
        if deadline_passed(plan, &s, obs.now) {
            return rollback(
                s,
                obs.now,
                format!(
                    "no conclusive analysis within the progress deadline ({}): {why}",
                    sluice_proxy::config::format_duration(plan.progress_deadline)
                ),
            );
        }
        s.message = if switched {
            format!(
                "soaking for {dwell:.0}s of {}: inconclusive: {why}",
                sluice_proxy::config::format_duration(soak)
            )
        } else {
            format!("judging mirrored traffic: inconclusive: {why}")
        };
        return Transition::hold(s, NextTick::Interval);
    }
    s.last_progress_at = obs.now;
    if switched {
        if dwell + 1e-6 < soak.as_secs_f64() {
            s.message = format!(
                "soaking at 100% for {dwell:.0}s of {}: {why}",
                sluice_proxy::config::format_duration(soak)
            );
            return Transition::hold(s, NextTick::Interval);
        }
        if let Some(held) = held(analysis) {
            s.message = format!("soaked at 100%; promotion waits while {held}");
            return Transition::hold(s, NextTick::Interval);
        }
        return promote(s, obs.now);
    }
    let needed = f64::from(iterations) * plan.interval.as_secs_f64();
    if dwell + 1e-6 < needed {
        s.message = format!("judging mirrored traffic for {dwell:.0}s of {needed:.0}s: {why}");
        return Transition::hold(s, NextTick::Interval);
    }
    if !analysis.promotes() {
        s.message = format!(
            "the switch waits until the new version is shown to be no worse than the primary on mirrored traffic: {why}"
        );
        return Transition::hold(s, NextTick::Interval);
    }
    // All traffic moves at once: never during a possible incident of the
    // new version on the mirrored copies.
    if let Some(held) = held(analysis) {
        s.message = format!("the switch waits while {held}");
        return Transition::hold(s, NextTick::Interval);
    }
    if let Some(waiting) = closed_gate(plan, &s, obs) {
        let waiting = waiting.replace("all steps passed", "mirrored traffic passed");
        if s.phase != Phase::WaitingPromotion {
            transition(&mut s, Phase::WaitingPromotion, obs.now, waiting);
        } else {
            s.message = waiting;
        }
        return Transition::hold(s, NextTick::Interval);
    }
    s.passed_steps = 1;
    s.canary_weight_bp = WEIGHT_SCALE_BP;
    s.step_started_at = obs.now;
    let message = format!(
        "switched all traffic to the new version in one step; soaking for {}",
        sluice_proxy::config::format_duration(soak)
    );
    transition(&mut s, Phase::Progressing, obs.now, message.clone());
    Transition::new(
        s,
        vec![
            Action::SetWeight(WEIGHT_SCALE_BP),
            Action::Event(Level::Normal, message),
        ],
        NextTick::Interval,
    )
}

/// A failing tick of a blue/green or experiment release: a decisive
/// failure rolls back at once (`worse`), any other counts toward
/// `failure_limit` and rolls back when it reaches it (`at_limit`).
/// Continue: the release goes on, with the failure counted.
fn count_failure(
    plan: &Plan,
    mut s: Status,
    now: f64,
    analysis: &Analysis,
    worse: String,
    at_limit: String,
) -> ControlFlow<Transition, Status> {
    if analysis.decisive_failure() {
        return ControlFlow::Break(rollback(s, now, worse));
    }
    tally_failure(plan, &mut s, now);
    if s.failed_checks >= plan.failure_limit {
        return ControlFlow::Break(rollback(s, now, at_limit));
    }
    ControlFlow::Continue(s)
}

/// Counts a failed check or webhook toward the failure limit. The
/// sequential gate ticks on every scrape, so there at most one failure is
/// counted per `interval`, as Flagger counts one per analysis interval: a
/// check or hook that fails for three scrapes in a row is one failure, not
/// three. (Its own decisive failures roll back at once, as before.)
fn tally_failure(plan: &Plan, s: &mut Status, now: f64) {
    if plan.is_sequential() {
        if let Some(at) = s.failure_counted_at
            && now - at + 1e-6 < plan.interval.as_secs_f64()
        {
            return;
        }
        s.failure_counted_at = Some(now);
    }
    s.failed_checks += 1;
}

/// An experiment: both versions side by side for `duration`, then back on
/// stable with a report. A canary shown worse ends it early (Failed).
fn experiment(
    plan: &Plan,
    mut s: Status,
    obs: &Observation,
    analysis: &Analysis,
    (verdict, why): (Outcome, String),
    duration: std::time::Duration,
) -> Transition {
    if verdict == Outcome::Fail {
        s = match count_failure(
            plan,
            s,
            obs.now,
            analysis,
            format!(
                "experiment stopped early: the canary is worse than {}: {why}",
                analysis.reference()
            ),
            format!(
                "experiment stopped early: failure limit {} reached: {why}",
                plan.failure_limit
            ),
        ) {
            ControlFlow::Continue(s) => s,
            ControlFlow::Break(rolled_back) => return rolled_back,
        };
    }
    let ran = obs.now - s.step_started_at;
    if ran + 1e-6 >= duration.as_secs_f64() {
        let message = format!(
            "experiment concluded after {}; the route is back on stable",
            sluice_proxy::config::format_duration(duration)
        );
        s.canary_weight_bp = 0;
        transition(&mut s, Phase::Concluded, obs.now, message.clone());
        return Transition::new(
            s,
            vec![
                Action::Rollback,
                Action::Event(Level::Normal, message),
                Action::Notify(WebhookKind::PostRollout),
            ],
            NextTick::Idle,
        );
    }
    s.last_progress_at = obs.now;
    s.message = format!(
        "experiment at {}% for {ran:.0}s of {}: {why}",
        pct(s.canary_weight_bp),
        sluice_proxy::config::format_duration(duration)
    );
    Transition::hold(s, NextTick::Interval)
}

/// Why promotion must still wait after a passing tick, if it must.
fn closed_gate(plan: &Plan, s: &Status, obs: &Observation) -> Option<String> {
    let manual_ok = plan.approval == crate::plan::Approval::Auto || s.approved;
    let has_confirm_hooks = plan
        .webhooks_of(WebhookKind::ConfirmPromotion)
        .next()
        .is_some();
    let hooks_ok = !has_confirm_hooks || obs.gates.confirm_promotion == Some(true);
    match (manual_ok, hooks_ok) {
        (true, true) => None,
        (false, _) => Some("all steps passed; waiting for `sluice promote`".into()),
        (true, false) => Some(format!(
            "all steps passed; confirm-promotion webhooks have not approved{}",
            obs.gates.why(WebhookKind::ConfirmPromotion)
        )),
    }
}

/// `promote --full`: promotion at once, whatever the analysis says.
fn promote_now(s: Status, now: f64) -> Transition {
    let message = format!(
        "promoted by a user override (promote --full) at {}%, skipping the remaining steps and the analysis",
        pct(s.canary_weight_bp)
    );
    let mut t = promote(s, now);
    t.status.message = message.clone();
    t.actions.push(Action::Event(Level::Warning, message));
    t
}

fn promote(mut s: Status, now: f64) -> Transition {
    transition(
        &mut s,
        Phase::Promoting,
        now,
        "all steps passed; promoting".into(),
    );
    Transition::new(s, vec![Action::Promote], NextTick::Now)
}

fn pct(bp: u32) -> String {
    let v = f64::from(bp) / 100.0;
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests;
