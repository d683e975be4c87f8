//! The canary state machine: `(status, observation) -> (status, actions)`.
//!
//! Pure code, no I/O and no clock: the driver (`rollout`, `demo`, `kube`)
//! gathers an [`Observation`] (the time, the revision it wants released, the
//! target's readiness, one tick's [`Analysis`], webhook gates, a human's
//! command), calls [`step`], and carries out the returned [`Action`]s.
//!
//! Rules, in Flagger's phase names:
//! - A new revision (re)starts a release at `Initializing`, weight 0, from
//!   any phase; a `Failed` revision stays failed until the revision changes.
//! - `Progressing` advances one step per passing analysis tick. A failing
//!   tick counts toward `failure_limit`; reaching it rolls back. An
//!   inconclusive tick never advances; if no step passes within
//!   `progress_deadline`, the release rolls back for lack of evidence.
//! - After the last step: `WaitingPromotion` when a gate is configured
//!   (manual approval, confirm-promotion webhooks), else `Promoting`.
//!   While waiting, checks still run and failures still roll back; waiting
//!   on a human does not count toward the deadline.
//! - `Promoting` -> `Finalising` -> `Succeeded` as the target confirms each.
//! - Rollback always ends at weight 0 with phase `Failed`.

use serde::{Deserialize, Serialize};

use crate::analysis::{Analysis, Outcome};
use crate::plan::{Plan, WebhookKind};

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
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    /// Phases whose ticks carry an analysis.
    pub fn analyses(self) -> bool {
        matches!(self, Phase::Progressing | Phase::WaitingPromotion)
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
}

/// What a human asked for through `sluice promote` / `sluice abort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Open the manual promotion gate.
    Approve,
    /// Roll back now.
    Abort,
    /// Skip the remaining steps and promote now (`kubectl sluice promote --full`):
    /// a human override of the analysis, used deliberately.
    PromoteNow,
}

/// Results of the webhooks the driver ran for this tick (None: none configured or not run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gates {
    pub pre_rollout: Option<bool>,
    pub rollout: Option<bool>,
    pub confirm_promotion: Option<bool>,
    /// A rollback webhook answered 2xx: abort the release.
    pub rollback_requested: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub now: f64,
    /// The revision the user wants released now.
    pub revision: String,
    /// Initializing: the canary can take traffic. Promoting/Finalising: the
    /// promotion (or clean-up) is complete.
    pub target_ready: bool,
    pub analysis: Option<Analysis>,
    pub gates: Gates,
    pub command: Option<Command>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Level {
    Normal,
    Warning,
}

#[derive(Clone, Debug, PartialEq)]
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

/// When the driver should call [`step`] again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextTick {
    /// Right away (the next phase needs no waiting).
    Now,
    /// After a short poll (waiting on the target).
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

/// The whole machine.
pub fn step(plan: &Plan, current: Option<&Status>, obs: &Observation) -> Transition {
    let Some(current) = current else {
        return start(obs, "release started".to_string(), Vec::new());
    };
    if current.revision != obs.revision {
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
    let mut s = current.clone();
    if obs.command == Some(Command::Approve) && !s.approved && !s.phase.is_terminal() {
        s.approved = true;
    }
    match s.phase {
        Phase::Succeeded | Phase::Failed => Transition {
            status: s,
            actions: Vec::new(),
            next: NextTick::Idle,
        },
        Phase::Initializing => {
            if obs.command == Some(Command::Abort) {
                return rollback(s, obs.now, "aborted by a user".into());
            }
            if obs.target_ready {
                transition(&mut s, Phase::Initialized, obs.now, "canary ready".into());
                Transition {
                    status: s,
                    actions: Vec::new(),
                    next: NextTick::Now,
                }
            } else if deadline_passed(plan, &s, obs.now) {
                rollback(
                    s,
                    obs.now,
                    "the canary did not become ready within the progress deadline".into(),
                )
            } else {
                s.message = "waiting for the canary to become ready".into();
                Transition {
                    status: s,
                    actions: Vec::new(),
                    next: NextTick::Soon,
                }
            }
        }
        Phase::Initialized => {
            if obs.command == Some(Command::Abort) {
                return rollback(s, obs.now, "aborted by a user".into());
            }
            if obs.gates.pre_rollout == Some(false) {
                s.failed_checks += 1;
                if s.failed_checks >= plan.failure_limit {
                    return rollback(
                        s,
                        obs.now,
                        "pre-rollout webhooks failed; failure limit reached".into(),
                    );
                }
                s.message = format!(
                    "pre-rollout webhooks failed ({} of {} failures allowed)",
                    s.failed_checks, plan.failure_limit
                );
                return Transition {
                    status: s,
                    actions: Vec::new(),
                    next: NextTick::Interval,
                };
            }
            s.step = 0;
            s.canary_weight_bp = plan.steps_bp[0];
            s.last_progress_at = obs.now;
            let msg = format!("advancing to step 1 of {}", plan.steps_bp.len());
            transition(&mut s, Phase::Progressing, obs.now, msg);
            Transition {
                actions: vec![Action::SetWeight(s.canary_weight_bp)],
                status: s,
                next: NextTick::Interval,
            }
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
                Transition {
                    status: s,
                    actions: vec![Action::Finalise],
                    next: NextTick::Now,
                }
            } else {
                s.message = "waiting for the promotion to roll out".into();
                Transition {
                    status: s,
                    actions: Vec::new(),
                    next: NextTick::Soon,
                }
            }
        }
        Phase::Finalising => {
            if obs.target_ready {
                s.canary_weight_bp = 0;
                let msg = format!("revision {} promoted", s.revision);
                transition(&mut s, Phase::Succeeded, obs.now, msg.clone());
                Transition {
                    status: s,
                    actions: vec![
                        Action::Notify(WebhookKind::PostRollout),
                        Action::Event(Level::Normal, msg),
                    ],
                    next: NextTick::Idle,
                }
            } else {
                s.message = "waiting for the canary to be scaled down".into();
                Transition {
                    status: s,
                    actions: Vec::new(),
                    next: NextTick::Soon,
                }
            }
        }
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
    };
    actions.push(Action::Initialize);
    Transition {
        status,
        actions,
        next: NextTick::Soon,
    }
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
    Transition {
        status: s,
        actions: vec![Action::Rollback, Action::Event(Level::Warning, message)],
        next: NextTick::Idle,
    }
}

fn analyse(plan: &Plan, mut s: Status, obs: &Observation) -> Transition {
    if obs.command == Some(Command::Abort) {
        return rollback(s, obs.now, "aborted by a user".into());
    }
    if obs.command == Some(Command::PromoteNow) {
        let mut t = promote(s, obs.now);
        t.status.message = "promoted by a user, skipping the remaining steps".into();
        t.actions
            .push(Action::Event(Level::Normal, t.status.message.clone()));
        return t;
    }
    if obs.gates.rollback_requested {
        return rollback(s, obs.now, "a rollback webhook asked for it".into());
    }
    let Some(analysis) = &obs.analysis else {
        // Not an analysis tick (e.g. only a command arrived): hold.
        let next = if s.phase == Phase::WaitingPromotion {
            try_promote(plan, &mut s, obs, Outcome::Pass)
        } else {
            None
        };
        return next.unwrap_or(Transition {
            status: s,
            actions: Vec::new(),
            next: NextTick::Interval,
        });
    };
    let mut verdict = analysis.verdict();
    let mut why = analysis.summary();
    if obs.gates.rollout == Some(false) && verdict != Outcome::Fail {
        verdict = Outcome::Fail;
        why = "a rollout webhook failed".into();
    }
    match verdict {
        Outcome::Fail => {
            s.failed_checks += 1;
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
            Transition {
                status: s,
                actions: Vec::new(),
                next: NextTick::Interval,
            }
        }
        Outcome::Inconclusive if s.phase == Phase::Progressing => {
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
            s.message = format!(
                "holding at {}%: inconclusive: {why}",
                pct(s.canary_weight_bp)
            );
            Transition {
                status: s,
                actions: Vec::new(),
                next: NextTick::Interval,
            }
        }
        Outcome::Inconclusive | Outcome::Pass if s.phase == Phase::WaitingPromotion => {
            try_promote(plan, &mut s, obs, verdict).unwrap_or(Transition {
                status: s,
                actions: Vec::new(),
                next: NextTick::Interval,
            })
        }
        Outcome::Inconclusive => unreachable_phase(s),
        Outcome::Pass => {
            s.passed_steps = s.passed_steps.max(s.step + 1);
            s.last_progress_at = obs.now;
            if s.step + 1 < plan.steps_bp.len() {
                s.step += 1;
                s.canary_weight_bp = plan.steps_bp[s.step];
                s.message = format!(
                    "step {} passed; advancing to {}% ({})",
                    s.step,
                    pct(s.canary_weight_bp),
                    why
                );
                Transition {
                    actions: vec![Action::SetWeight(s.canary_weight_bp)],
                    status: s,
                    next: NextTick::Interval,
                }
            } else if plan.has_promotion_gate() {
                transition(
                    &mut s,
                    Phase::WaitingPromotion,
                    obs.now,
                    "all steps passed; waiting for promotion approval".into(),
                );
                try_promote(plan, &mut s, obs, Outcome::Pass).unwrap_or(Transition {
                    status: s,
                    actions: Vec::new(),
                    next: NextTick::Interval,
                })
            } else {
                promote(s, obs.now)
            }
        }
    }
}

/// Phases other than Progressing/WaitingPromotion never reach analysis.
fn unreachable_phase(s: Status) -> Transition {
    Transition {
        status: s,
        actions: Vec::new(),
        next: NextTick::Interval,
    }
}

/// Promotes when every gate is open and the tick did not fail.
fn try_promote(
    plan: &Plan,
    s: &mut Status,
    obs: &Observation,
    verdict: Outcome,
) -> Option<Transition> {
    if verdict == Outcome::Fail || s.passed_steps < plan.steps_bp.len() {
        return None;
    }
    let manual_ok = plan.approval == crate::plan::Approval::Auto || s.approved;
    let has_confirm_hooks = plan
        .webhooks_of(WebhookKind::ConfirmPromotion)
        .next()
        .is_some();
    let hooks_ok = !has_confirm_hooks || obs.gates.confirm_promotion == Some(true);
    if manual_ok && hooks_ok {
        return Some(promote(s.clone(), obs.now));
    }
    s.message = match (manual_ok, hooks_ok) {
        (false, _) => "all steps passed; waiting for `sluice promote`".into(),
        (true, false) => "all steps passed; confirm-promotion webhooks have not approved".into(),
        _ => unreachable!("both gates open returns above"),
    };
    None
}

fn promote(mut s: Status, now: f64) -> Transition {
    transition(
        &mut s,
        Phase::Promoting,
        now,
        "all steps passed; promoting".into(),
    );
    Transition {
        status: s,
        actions: vec![Action::Promote],
        next: NextTick::Now,
    }
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
mod tests {
    use super::*;
    use crate::analysis::CheckResult;
    use crate::plan::{Approval, Webhook};
    use std::time::Duration;

    fn plan() -> Plan {
        Plan {
            steps_bp: vec![1000, 2500, 5000],
            interval: Duration::from_secs(10),
            failure_limit: 2,
            progress_deadline: Duration::from_secs(60),
            ..Plan::default()
        }
    }

    fn analysis(outcome: Outcome) -> Analysis {
        Analysis {
            canary_requests: Some(100),
            checks: vec![CheckResult {
                name: "success-rate".into(),
                outcome,
                value: Some(1.0),
                threshold: ">= 99".into(),
                reason: format!("{outcome:?}"),
            }],
            ab: None,
        }
    }

    fn obs(now: f64, revision: &str, a: Option<Outcome>) -> Observation {
        Observation {
            now,
            revision: revision.into(),
            target_ready: true,
            analysis: a.map(analysis),
            ..Observation::default()
        }
    }

    /// Drives a release from nothing to Progressing at the first step.
    fn started(plan: &Plan) -> Status {
        let t = step(plan, None, &obs(0.0, "r1", None));
        assert_eq!(t.actions, vec![Action::Initialize]);
        let t = step(plan, Some(&t.status), &obs(0.0, "r1", None));
        assert_eq!(t.status.phase, Phase::Initialized);
        let t = step(plan, Some(&t.status), &obs(0.0, "r1", None));
        assert_eq!(t.status.phase, Phase::Progressing);
        assert_eq!(t.actions, vec![Action::SetWeight(1000)]);
        t.status
    }

    #[test]
    fn passing_ticks_walk_the_steps_then_promote_and_finalise() {
        let p = plan();
        let mut s = started(&p);
        let mut weights = vec![];
        for i in 1..=3 {
            let t = step(
                &p,
                Some(&s),
                &obs(f64::from(i) * 10.0, "r1", Some(Outcome::Pass)),
            );
            for a in &t.actions {
                if let Action::SetWeight(w) = a {
                    weights.push(*w);
                }
            }
            s = t.status;
        }
        assert_eq!(weights, vec![2500, 5000]);
        assert_eq!(s.phase, Phase::Promoting);
        let t = step(&p, Some(&s), &obs(31.0, "r1", None));
        assert_eq!(
            (t.status.phase, t.actions.clone()),
            (Phase::Finalising, vec![Action::Finalise])
        );
        let t = step(&p, Some(&t.status), &obs(32.0, "r1", None));
        assert_eq!(t.status.phase, Phase::Succeeded);
        assert_eq!(t.status.canary_weight_bp, 0);
        assert!(
            t.actions
                .contains(&Action::Notify(WebhookKind::PostRollout))
        );
    }

    #[test]
    fn inconclusive_holds_and_the_deadline_rolls_back() {
        let p = plan();
        let mut s = started(&p);
        for i in 1..6 {
            let t = step(
                &p,
                Some(&s),
                &obs(f64::from(i) * 10.0, "r1", Some(Outcome::Inconclusive)),
            );
            assert_eq!(
                t.status.canary_weight_bp, 1000,
                "inconclusive never advances"
            );
            assert!(t.actions.is_empty());
            s = t.status;
        }
        let t = step(&p, Some(&s), &obs(60.0, "r1", Some(Outcome::Inconclusive)));
        assert_eq!(t.status.phase, Phase::Failed);
        assert_eq!(t.status.canary_weight_bp, 0);
        assert_eq!(t.actions[0], Action::Rollback);
        assert!(
            t.status.message.contains("no conclusive analysis"),
            "{}",
            t.status.message
        );
    }

    #[test]
    fn failed_revision_does_not_restart_until_it_changes() {
        let p = plan();
        let mut s = started(&p);
        for i in 1..=2 {
            s = step(&p, Some(&s), &obs(f64::from(i), "r1", Some(Outcome::Fail))).status;
        }
        assert_eq!(s.phase, Phase::Failed);
        let t = step(&p, Some(&s), &obs(5.0, "r1", Some(Outcome::Pass)));
        assert_eq!(t.status.phase, Phase::Failed);
        assert_eq!(t.next, NextTick::Idle);
        let t = step(&p, Some(&s), &obs(6.0, "r2", None));
        assert_eq!(t.status.phase, Phase::Initializing);
        assert_eq!(t.status.revision, "r2");
    }

    #[test]
    fn manual_approval_holds_until_approved() {
        let p = Plan {
            approval: Approval::Manual,
            ..plan()
        };
        let mut s = started(&p);
        for i in 1..=3 {
            s = step(&p, Some(&s), &obs(f64::from(i), "r1", Some(Outcome::Pass))).status;
        }
        assert_eq!(s.phase, Phase::WaitingPromotion);
        // Waiting on a human is not a deadline matter.
        let t = step(
            &p,
            Some(&s),
            &obs(1000.0, "r1", Some(Outcome::Inconclusive)),
        );
        assert_eq!(t.status.phase, Phase::WaitingPromotion);
        let mut o = obs(1001.0, "r1", None);
        o.command = Some(Command::Approve);
        let t = step(&p, Some(&t.status), &o);
        assert_eq!(t.status.phase, Phase::Promoting);
        assert_eq!(t.actions, vec![Action::Promote]);
    }

    #[test]
    fn confirm_promotion_webhook_holds_while_it_fails() {
        let p = Plan {
            webhooks: vec![Webhook {
                kind: WebhookKind::ConfirmPromotion,
                url: "http://127.0.0.1:1/".into(),
                timeout: Duration::from_secs(1),
            }],
            ..plan()
        };
        let mut s = started(&p);
        for i in 1..=3 {
            let mut o = obs(f64::from(i), "r1", Some(Outcome::Pass));
            o.gates.confirm_promotion = Some(false);
            s = step(&p, Some(&s), &o).status;
        }
        assert_eq!(s.phase, Phase::WaitingPromotion);
        let mut o = obs(5.0, "r1", Some(Outcome::Pass));
        o.gates.confirm_promotion = Some(false);
        s = step(&p, Some(&s), &o).status;
        assert_eq!(s.phase, Phase::WaitingPromotion);
        o.gates.confirm_promotion = Some(true);
        assert_eq!(step(&p, Some(&s), &o).status.phase, Phase::Promoting);
    }

    #[test]
    fn rollback_webhook_and_abort_end_the_release() {
        let p = plan();
        let s = started(&p);
        let mut o = obs(1.0, "r1", Some(Outcome::Pass));
        o.gates.rollback_requested = true;
        let t = step(&p, Some(&s), &o);
        assert_eq!(
            (t.status.phase, t.status.canary_weight_bp),
            (Phase::Failed, 0)
        );
        let mut o = obs(1.0, "r1", None);
        o.command = Some(Command::Abort);
        let t = step(&p, Some(&s), &o);
        assert_eq!(
            (t.status.phase, t.actions[0].clone()),
            (Phase::Failed, Action::Rollback)
        );
    }

    // === property tests over random observation sequences ===

    /// The reference model a property test checks the machine against.
    #[derive(Default)]
    struct Expect {
        passed_in_release: usize,
    }

    #[test]
    fn properties_hold_for_random_observation_sequences() {
        let mut gen_rng = sluice_loadtest::Rng::new(0x5eed);
        let mut rng = move || gen_rng.next_u64();
        let (mut promotions, mut rollbacks, mut restarts) = (0, 0, 0);
        for case in 0..3000 {
            let steps_count = 1 + (rng() % 5) as usize;
            let mut steps = Vec::new();
            let mut w = 0;
            for _ in 0..steps_count {
                w += 1 + (rng() % 2000) as u32;
                steps.push(w.min(10_000));
            }
            steps.dedup();
            let p = Plan {
                steps_bp: steps.clone(),
                failure_limit: 1 + (rng() % 4) as u32,
                progress_deadline: Duration::from_secs(1 + rng() % 100),
                approval: if rng() % 4 == 0 {
                    Approval::Manual
                } else {
                    Approval::Auto
                },
                ..Plan::default()
            };
            let mut status: Option<Status> = None;
            let mut revision = 1;
            let mut now = 0.0;
            let mut model = Expect::default();
            let mut fails_in_release = 0;
            for _ in 0..60 {
                now += (rng() % 20) as f64;
                if rng() % 25 == 0 {
                    revision += 1;
                }
                let outcome = match rng() % 3 {
                    0 => Outcome::Pass,
                    1 => Outcome::Fail,
                    _ => Outcome::Inconclusive,
                };
                let mut o = obs(now, &format!("r{revision}"), Some(outcome));
                o.target_ready = rng() % 5 != 0;
                if rng() % 10 == 0 {
                    o.command = Some(Command::Approve);
                }
                let before = status.clone();
                let t = step(&p, before.as_ref(), &o);
                let new_release = before.as_ref().is_none_or(|b| b.revision != o.revision);
                if new_release && before.is_some() {
                    restarts += 1;
                }
                if new_release {
                    // A new revision restarts at the first step, weight 0.
                    assert_eq!(t.status.phase, Phase::Initializing, "case {case}");
                    assert_eq!((t.status.step, t.status.canary_weight_bp), (0, 0));
                    model = Expect::default();
                    fails_in_release = 0;
                }
                if let Some(b) = &before
                    && !new_release
                    && b.phase == Phase::Progressing
                    && t.status.passed_steps > b.passed_steps
                {
                    assert_eq!(
                        outcome,
                        Outcome::Pass,
                        "case {case}: a step passed without a passing tick"
                    );
                    model.passed_in_release += 1;
                }
                if let Some(b) = &before
                    && !new_release
                    && b.phase.analyses()
                    && outcome == Outcome::Fail
                {
                    fails_in_release += 1;
                }
                for a in &t.actions {
                    match a {
                        // Weights only ever take the planned values.
                        Action::SetWeight(w) => {
                            assert!(p.steps_bp.contains(w), "case {case}: weight {w}")
                        }
                        // No promotion unless every step passed.
                        Action::Promote => promotions += 1,
                        _ => {}
                    }
                    match a {
                        Action::Rollback => rollbacks += 1,
                        Action::Promote => assert_eq!(
                            model.passed_in_release,
                            p.steps_bp.len(),
                            "case {case}: promoted after {} of {} steps",
                            model.passed_in_release,
                            p.steps_bp.len()
                        ),
                        _ => {}
                    }
                }
                assert!(
                    t.status.canary_weight_bp == 0
                        || p.steps_bp.contains(&t.status.canary_weight_bp),
                    "case {case}: status weight {}",
                    t.status.canary_weight_bp
                );
                // The failure limit always ends in rollback at weight 0.
                if fails_in_release >= p.failure_limit && !new_release {
                    assert_eq!(t.status.phase, Phase::Failed, "case {case}");
                    assert_eq!(t.status.canary_weight_bp, 0);
                }
                if t.status.phase == Phase::Failed
                    && before.as_ref().is_some_and(|b| b.phase != Phase::Failed)
                {
                    assert!(t.actions.contains(&Action::Rollback));
                }
                status = Some(t.status);
            }
        }
        // The random walks really reach every outcome the properties talk about.
        assert!(
            promotions > 100 && rollbacks > 100 && restarts > 100,
            "{promotions} {rollbacks} {restarts}"
        );
    }
}
