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
        ..Plan::threshold()
    }
}

fn sequential_plan() -> Plan {
    Plan {
        interval: Duration::from_secs(10),
        max_duration: Duration::from_secs(300),
        ..Plan {
            // Most tests start at the first step at once; the baseline
            // has tests of its own.
            gate: crate::plan::Gate::Sequential(crate::gate::GateSettings {
                baseline: Duration::ZERO,
                ..Default::default()
            }),
            ..plan()
        }
    }
}

/// A sequential-gate tick: not failed (exposure met), proven or not.
fn gate_tick(now: f64, proven: bool) -> Observation {
    let mut o = obs(now, "r1", Some(Outcome::Pass));
    if let Some(a) = o.analysis.as_mut() {
        a.promotable = Some(proven);
    }
    o
}

#[test]
fn the_sequential_gate_advances_after_the_dwell_and_promotes_only_when_proven() {
    let p = sequential_plan();
    let mut s = started(&p);
    // Ticks every 2 s: the first step lasts its 10 s dwell.
    let mut weights = vec![];
    let mut now = 0.0;
    while now < 30.0 {
        now += 2.0;
        let t = drive(&p, Some(&s), &gate_tick(now, false));
        for a in &t.actions {
            if let Action::SetWeight(w) = a {
                weights.push((now, *w));
            }
        }
        s = t.status;
    }
    assert_eq!(weights, vec![(10.0, 2500), (20.0, 5000)]);
    assert_eq!(s.phase, Phase::Progressing);
    assert!(s.message.contains("shown no worse"), "{}", s.message);
    // Not proven: holds at the last step until the maximum duration.
    let t = drive(&p, Some(&s), &gate_tick(100.0, false));
    assert_eq!(t.status.phase, Phase::Progressing);
    let t = drive(&p, Some(&t.status), &gate_tick(102.0, true));
    assert_eq!(t.status.phase, Phase::Promoting);
    // Undecided at the maximum duration: --when-undecided rollback rolls back.
    let rollback = Plan {
        when_undecided: crate::plan::Undecided::Rollback,
        ..p.clone()
    };
    let t = drive(&rollback, Some(&s), &gate_tick(300.0, false));
    assert_eq!(t.status.phase, Phase::Failed);
    assert!(
        t.status.message.contains("maximum release duration"),
        "{}",
        t.status.message
    );
}

/// A sequential-gate tick whose one check holds a jump of the canary as a
/// possible incident for `secs` seconds (of a 30 s allowance).
fn held_tick(now: f64, proven: bool, secs: f64) -> Observation {
    let mut o = gate_tick(now, proven);
    let check = &mut o.analysis.as_mut().expect("an analysis").checks[0];
    check.reason =
        format!("a jump of the canary is held as a possible incident ({secs:.0}s of 30s)");
    check.evidence = Some(crate::analysis::EvidenceReport {
        holding_for: Some(secs),
        hold_allowance: Some(30.0),
        ..Default::default()
    });
    o
}

#[test]
fn a_held_jump_of_the_canary_stops_the_weight_from_advancing_and_promoting() {
    let p = sequential_plan();
    let s = started(&p);
    // The dwell is over, but a check holds a jump: the weight stays.
    let t = drive(&p, Some(&s), &held_tick(10.0, false, 2.0));
    assert!(!t.actions.iter().any(Action::is_routing), "{:?}", t.actions);
    assert_eq!(t.status.canary_weight_bp, 1000);
    assert!(
        t.status.message.contains("holding at 10%")
            && t.status.message.contains("possible incident (2s of 30s)"),
        "{}",
        t.status.message
    );
    let t = drive(&p, Some(&t.status), &held_tick(12.0, false, 4.0));
    assert_eq!(t.status.canary_weight_bp, 1000);
    // The hold ended (forgiven): the next passing tick advances.
    let t = drive(&p, Some(&t.status), &gate_tick(14.0, false));
    assert_eq!(t.actions, vec![Action::SetWeight(2500)]);
    // At the last step, proof does not promote while a jump is held.
    let mut s = t.status;
    s = drive(&p, Some(&s), &gate_tick(24.0, false)).status;
    assert_eq!(s.canary_weight_bp, 5000);
    let t = drive(&p, Some(&s), &held_tick(40.0, true, 2.0));
    assert_eq!(t.status.phase, Phase::Progressing, "{}", t.status.message);
    let t = drive(&p, Some(&t.status), &gate_tick(42.0, true));
    assert_eq!(t.status.phase, Phase::Promoting);
    // Undecided at the maximum duration: neither `--when-undecided
    // promote` nor a person's approval promotes while a jump is held.
    let promote = Plan {
        when_undecided: crate::plan::Undecided::Promote,
        ..p.clone()
    };
    let t = drive(&promote, Some(&s), &held_tick(300.0, false, 2.0));
    assert_ne!(t.status.phase, Phase::Promoting, "{}", t.status.message);
    let t = drive(&promote, Some(&t.status), &held_tick(302.0, false, 4.0));
    assert_ne!(t.status.phase, Phase::Promoting, "{}", t.status.message);
    assert!(
        t.status.message.contains("possible incident"),
        "{}",
        t.status.message
    );
    let t = drive(&promote, Some(&t.status), &gate_tick(304.0, false));
    assert_eq!(t.status.phase, Phase::Promoting, "{}", t.status.message);
    let waiting = drive(&p, Some(&s), &gate_tick(300.0, false)).status;
    assert_eq!(waiting.phase, Phase::WaitingPromotion);
    let mut approve = held_tick(302.0, false, 2.0);
    approve.command = Some(Command::Approve);
    let t = drive(&p, Some(&waiting), &approve);
    assert_ne!(t.status.phase, Phase::Promoting, "{}", t.status.message);
    let t = drive(&p, Some(&t.status), &gate_tick(304.0, false));
    assert_eq!(t.status.phase, Phase::Promoting, "{}", t.status.message);
}

#[test]
fn an_undecided_release_waits_for_a_person_by_default() {
    let p = sequential_plan();
    let mut s = started(&p);
    for now in [10.0, 20.0] {
        s = drive(&p, Some(&s), &gate_tick(now, false)).status;
    }
    let t = drive(&p, Some(&s), &gate_tick(300.0, false));
    assert_eq!(t.status.phase, Phase::WaitingPromotion);
    assert!(t.status.undecided);
    assert!(!t.actions.iter().any(Action::is_routing), "{:?}", t.actions);
    assert!(
        t.actions.iter().any(
            |a| matches!(a, Action::Event(Level::Warning, m) if m.contains("undecided after 5m"))
        ),
        "{:?}",
        t.actions
    );
    // It says what is missing, never that all checks passed.
    assert!(
        t.status.message.contains("Still missing"),
        "{}",
        t.status.message
    );
    assert!(
        !t.status.message.contains("all checks passed"),
        "{}",
        t.status.message
    );
    // Still judged: a failure rolls back.
    let mut fail = obs(302.0, "r1", Some(Outcome::Fail));
    fail.analysis.as_mut().unwrap().checks[0].decisive = true;
    let failed = drive(&p, Some(&t.status), &fail);
    assert_eq!(failed.status.phase, Phase::Failed);
    // Proof after all promotes on its own.
    let proven = drive(&p, Some(&t.status), &gate_tick(302.0, true));
    assert_eq!(proven.status.phase, Phase::Promoting);
    // Unproven ticks hold; a person's approval promotes on the next passing tick.
    let held = drive(&p, Some(&t.status), &gate_tick(302.0, false));
    assert_eq!(held.status.phase, Phase::WaitingPromotion);
    let mut approve = gate_tick(304.0, false);
    approve.command = Some(Command::Approve);
    let approved = drive(&p, Some(&held.status), &approve);
    assert_eq!(approved.status.phase, Phase::Promoting);
    assert!(
        approved.status.message.contains("promoted by a person"),
        "{}",
        approved.status.message
    );
    // --when-undecided promote promotes at once, with a warning.
    let promote = Plan {
        when_undecided: crate::plan::Undecided::Promote,
        ..p.clone()
    };
    let t = drive(&promote, Some(&s), &gate_tick(300.0, false));
    assert_eq!(t.status.phase, Phase::Promoting);
    assert!(t.actions.iter().any(
        |a| matches!(a, Action::Event(Level::Warning, m) if m.contains("promoted undecided"))
    ));
}

#[test]
fn the_baseline_measures_the_primary_before_the_first_step() {
    let p = Plan {
        gate: crate::plan::Gate::Sequential(crate::gate::GateSettings {
            baseline: Duration::from_secs(30),
            ..Default::default()
        }),
        ..sequential_plan()
    };
    let t = drive(&p, None, &obs(0.0, "r1", None));
    let mut s = t.status;
    // Ready at once, but the primary is measured first, on scrape ticks.
    for now in [2.0, 14.0, 28.0] {
        let t = drive(&p, Some(&s), &obs(now, "r1", None));
        assert_eq!(t.status.phase, Phase::Initializing, "at {now}");
        assert_eq!(t.next, NextTick::Interval);
        assert!(
            t.status.message.contains("measuring the primary"),
            "{}",
            t.status.message
        );
        s = t.status;
    }
    // With a measured baseline the forecast is said as an Event.
    s.gate = Some(crate::gate::GateState {
        baseline: crate::counters::Arm {
            requests: 12_000.0,
            failures: 120.0,
            buckets: Vec::new(),
        },
        baseline_seconds: 30.0,
        ..crate::gate::GateState::default()
    });
    let t = drive(&p, Some(&s), &obs(30.0, "r1", None));
    assert_eq!(t.status.phase, Phase::Initialized);
    let event = t
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Event(Level::Normal, m) => Some(m.clone()),
            _ => None,
        })
        .expect("a forecast event");
    assert!(
        event.contains("400.0 req/s") && event.contains("1.00% failures"),
        "{event}"
    );
    assert!(
        event.contains("expected to be promoted in about"),
        "{event}"
    );
    let t = drive(&p, Some(&t.status), &obs(30.0, "r1", None));
    assert_eq!(t.status.phase, Phase::Progressing);
    assert_eq!(t.actions, vec![Action::SetWeight(1000)]);
}

#[test]
fn a_decisive_failure_rolls_back_at_once() {
    let p = sequential_plan();
    let s = started(&p);
    let mut o = obs(2.0, "r1", Some(Outcome::Fail));
    if let Some(a) = o.analysis.as_mut() {
        a.checks[0].decisive = true;
    }
    let t = drive(&p, Some(&s), &o);
    assert_eq!(
        t.status.phase,
        Phase::Failed,
        "failure limit 2 does not apply"
    );
    assert!(t.actions.contains(&Action::Rollback));
    // A ceiling (not decisive) still counts toward the failure limit.
    let t = drive(&p, Some(&s), &obs(2.0, "r1", Some(Outcome::Fail)));
    assert_eq!(t.status.phase, Phase::Progressing);
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
            ..CheckResult::default()
        }],
        ..Analysis::default()
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

/// Steps the machine like a driver whose router always succeeds.
fn drive(plan: &Plan, s: Option<&Status>, o: &Observation) -> Transition {
    let mut t = step(plan, s, o);
    confirm(&mut t.status);
    t
}

/// Drives a release from nothing to Progressing at the first step.
fn started(plan: &Plan) -> Status {
    let t = drive(plan, None, &obs(0.0, "r1", None));
    assert_eq!(t.actions, vec![Action::Initialize]);
    let t = drive(plan, Some(&t.status), &obs(0.0, "r1", None));
    assert_eq!(t.status.phase, Phase::Initialized);
    let t = drive(plan, Some(&t.status), &obs(0.0, "r1", None));
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
        let t = drive(
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
    let t = drive(&p, Some(&s), &obs(31.0, "r1", None));
    assert_eq!(
        (t.status.phase, t.actions.clone()),
        (Phase::Finalising, vec![Action::Finalise])
    );
    let t = drive(&p, Some(&t.status), &obs(32.0, "r1", None));
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
        let t = drive(
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
    let t = drive(&p, Some(&s), &obs(60.0, "r1", Some(Outcome::Inconclusive)));
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
fn time_the_driver_was_not_running_does_not_count_toward_the_deadline() {
    let p = plan();
    let s = started(&p);
    // The operator was down for 100 s, then ticks again: not a deadline miss.
    let mut o = obs(105.0, "r1", Some(Outcome::Inconclusive));
    o.paused_for = 100.0;
    let t = drive(&p, Some(&s), &o);
    assert_eq!(t.status.phase, Phase::Progressing, "{}", t.status.message);
    // Without the pause credit the same tick would have rolled back.
    let t = drive(&p, Some(&s), &obs(105.0, "r1", Some(Outcome::Inconclusive)));
    assert_eq!(t.status.phase, Phase::Failed);
}

#[test]
fn failed_revision_does_not_restart_until_it_changes_or_is_retried() {
    let p = plan();
    let mut s = started(&p);
    for i in 1..=2 {
        s = drive(&p, Some(&s), &obs(f64::from(i), "r1", Some(Outcome::Fail))).status;
    }
    assert_eq!(s.phase, Phase::Failed);
    let t = drive(&p, Some(&s), &obs(5.0, "r1", Some(Outcome::Pass)));
    assert_eq!(t.status.phase, Phase::Failed);
    assert_eq!(t.next, NextTick::Idle);
    let mut retry = obs(6.0, "r1", None);
    retry.command = Some(Command::Retry);
    let t = drive(&p, Some(&s), &retry);
    assert_eq!(t.status.phase, Phase::Initializing);
    assert!(t.actions.contains(&Action::Initialize));
    let t = drive(&p, Some(&s), &obs(6.0, "r2", None));
    assert_eq!(t.status.phase, Phase::Initializing);
    assert_eq!(t.status.revision, "r2");
}

#[test]
fn approval_is_recorded_and_the_next_passing_tick_promotes() {
    let p = Plan {
        approval: Approval::Manual,
        ..plan()
    };
    let mut s = started(&p);
    for i in 1..=3 {
        s = drive(&p, Some(&s), &obs(f64::from(i), "r1", Some(Outcome::Pass))).status;
    }
    assert_eq!(s.phase, Phase::WaitingPromotion);
    // Waiting on a human is not a deadline matter.
    let t = drive(
        &p,
        Some(&s),
        &obs(1000.0, "r1", Some(Outcome::Inconclusive)),
    );
    assert_eq!(t.status.phase, Phase::WaitingPromotion);
    // Approval alone (a tick without analysis) never promotes.
    let mut o = obs(1001.0, "r1", None);
    o.command = Some(Command::Approve);
    let t = drive(&p, Some(&t.status), &o);
    assert_eq!(t.status.phase, Phase::WaitingPromotion);
    assert!(t.actions.is_empty());
    // Nor does a failing or an inconclusive tick after it.
    let t = drive(&p, Some(&t.status), &obs(1002.0, "r1", Some(Outcome::Fail)));
    assert_eq!(t.status.phase, Phase::WaitingPromotion);
    let t = drive(
        &p,
        Some(&t.status),
        &obs(1003.0, "r1", Some(Outcome::Inconclusive)),
    );
    assert_eq!(t.status.phase, Phase::WaitingPromotion);
    let t = drive(&p, Some(&t.status), &obs(1004.0, "r1", Some(Outcome::Pass)));
    assert_eq!(t.status.phase, Phase::Promoting);
    assert_eq!(t.actions, vec![Action::Promote]);
}

#[test]
fn approving_right_after_a_failing_tick_does_not_promote() {
    let p = Plan {
        approval: Approval::Manual,
        failure_limit: 5,
        ..plan()
    };
    let mut s = started(&p);
    for i in 1..=3 {
        s = drive(&p, Some(&s), &obs(f64::from(i), "r1", Some(Outcome::Pass))).status;
    }
    let t = drive(&p, Some(&s), &obs(4.0, "r1", Some(Outcome::Fail)));
    let mut o = obs(5.0, "r1", None);
    o.command = Some(Command::Approve);
    let t = drive(&p, Some(&t.status), &o);
    assert_ne!(t.status.phase, Phase::Promoting);
    assert!(!t.actions.contains(&Action::Promote));
}

#[test]
fn promote_full_is_an_evented_override() {
    let p = plan();
    let s = started(&p);
    let mut o = obs(1.0, "r1", None);
    o.command = Some(Command::PromoteNow);
    let t = drive(&p, Some(&s), &o);
    assert_eq!(t.status.phase, Phase::Promoting);
    assert!(t.actions.contains(&Action::Promote));
    assert!(t.actions.iter().any(|a| matches!(
        a,
        Action::Event(Level::Warning, text) if text.contains("override")
    )));
}

#[test]
fn confirm_promotion_webhook_holds_while_it_fails() {
    let p = Plan {
        webhooks: vec![Webhook {
            timeout: Duration::from_secs(1),
            ..Webhook::new(WebhookKind::ConfirmPromotion, "http://127.0.0.1:1/")
        }],
        ..plan()
    };
    let mut s = started(&p);
    for i in 1..=3 {
        let mut o = obs(f64::from(i), "r1", Some(Outcome::Pass));
        o.gates.confirm_promotion = Some(false);
        s = drive(&p, Some(&s), &o).status;
    }
    assert_eq!(s.phase, Phase::WaitingPromotion);
    let mut o = obs(5.0, "r1", Some(Outcome::Pass));
    o.gates.confirm_promotion = Some(false);
    s = drive(&p, Some(&s), &o).status;
    assert_eq!(s.phase, Phase::WaitingPromotion);
    o.gates.confirm_promotion = Some(true);
    assert_eq!(drive(&p, Some(&s), &o).status.phase, Phase::Promoting);
}

#[test]
fn rollback_webhook_and_abort_end_the_release_and_notify_post_rollout() {
    let p = plan();
    let s = started(&p);
    let mut o = obs(1.0, "r1", Some(Outcome::Pass));
    o.gates.rollback_requested = true;
    let t = drive(&p, Some(&s), &o);
    assert_eq!(
        (t.status.phase, t.status.canary_weight_bp),
        (Phase::Failed, 0)
    );
    assert!(
        t.actions
            .contains(&Action::Notify(WebhookKind::PostRollout))
    );
    let mut o = obs(1.0, "r1", None);
    o.command = Some(Command::Abort);
    let t = drive(&p, Some(&s), &o);
    assert_eq!(
        (t.status.phase, t.actions[0].clone()),
        (Phase::Failed, Action::Rollback)
    );
}

#[test]
fn an_unconfirmed_rollback_is_reissued_and_nothing_advances_meanwhile() {
    let p = plan();
    let s = started(&p);
    let mut o = obs(1.0, "r1", None);
    o.command = Some(Command::Abort);
    // The router fails: the driver does not confirm.
    let mut t = step(&p, Some(&s), &o);
    assert_eq!(t.status.unconfirmed, Some(Action::Rollback));
    for i in 2..20 {
        let mut o = obs(f64::from(i) * 10.0, "r1", Some(Outcome::Pass));
        o.command = Some(if i % 2 == 0 {
            Command::PromoteNow
        } else {
            Command::Approve
        });
        t = step(&p, Some(&t.status), &o);
        assert_eq!(t.actions, vec![Action::Rollback], "tick {i}");
        assert_eq!(
            (t.status.phase, t.status.canary_weight_bp),
            (Phase::Failed, 0)
        );
    }
    confirm(&mut t.status);
    let t = step(&p, Some(&t.status), &obs(500.0, "r1", Some(Outcome::Pass)));
    assert!(t.actions.is_empty());
    assert_eq!(t.next, NextTick::Idle);
}

#[test]
fn an_unconfirmed_weight_is_superseded_by_an_abort() {
    let p = plan();
    let s = started(&p);
    let t = step(&p, Some(&s), &obs(10.0, "r1", Some(Outcome::Pass)));
    assert_eq!(t.status.unconfirmed, Some(Action::SetWeight(2500)));
    let t = step(&p, Some(&t.status), &obs(11.0, "r1", None));
    assert_eq!(t.actions, vec![Action::SetWeight(2500)]);
    let mut o = obs(12.0, "r1", None);
    o.command = Some(Command::Abort);
    let t = step(&p, Some(&t.status), &o);
    assert_eq!(t.actions[0], Action::Rollback);
    assert_eq!(t.status.unconfirmed, Some(Action::Rollback));
}

#[test]
fn a_new_revision_during_promotion_is_queued() {
    let p = plan();
    let mut s = started(&p);
    for i in 1..=3 {
        s = drive(&p, Some(&s), &obs(f64::from(i), "r1", Some(Outcome::Pass))).status;
    }
    assert_eq!(s.phase, Phase::Promoting);
    let mut o = obs(4.0, "r2", None);
    o.target_ready = false;
    let t = drive(&p, Some(&s), &o);
    assert_eq!(t.status.phase, Phase::Promoting);
    assert_eq!(t.status.revision, "r1");
    assert_eq!(t.status.queued_revision.as_deref(), Some("r2"));
    let t = drive(&p, Some(&t.status), &obs(5.0, "r2", None));
    assert_eq!(t.status.phase, Phase::Finalising);
    let t = drive(&p, Some(&t.status), &obs(6.0, "r2", None));
    assert_eq!(
        (t.status.phase, t.status.revision.as_str()),
        (Phase::Succeeded, "r1")
    );
    assert_eq!(t.next, NextTick::Now);
    let t = drive(&p, Some(&t.status), &obs(7.0, "r2", None));
    assert_eq!(
        (t.status.phase, t.status.revision.as_str()),
        (Phase::Initializing, "r2")
    );
}

// === property test against an independent model ===

/// What the reference model knows, from the plan, the observations it
/// generated and what its simulated router applied: never the machine's
/// status fields.
#[derive(Default)]
struct Model {
    /// Weight the router has applied (None before the first Initialize).
    router_weight: Option<u32>,
    /// The last routing action issued and not yet applied.
    pending: Option<Action>,
    /// A rollback was issued in the current release.
    rollback_decided: bool,
    /// An `Approve` command arrived in the current release.
    approved: bool,
}

#[test]
fn properties_hold_against_an_independent_model() {
    let mut gen_rng = sluice_loadtest::Rng::new(0x5eed);
    let mut rng = move || gen_rng.next_u64();
    let (mut promotions, mut rollbacks, mut reissued, mut overrides) = (0, 0, 0, 0);
    for case in 0..3000 {
        let steps_count = 1 + (rng() % 4) as usize;
        let mut steps = Vec::new();
        let mut w = 0;
        for _ in 0..steps_count {
            w += 1 + (rng() % 3000) as u32;
            steps.push(w.min(10_000));
        }
        steps.dedup();
        let last_weight = *steps.last().unwrap();
        let with_confirm_hook = rng() % 4 == 0;
        let sequential = rng() % 2 == 0;
        let p = Plan {
            gate: if sequential {
                crate::plan::Gate::Sequential(Default::default())
            } else {
                crate::plan::Gate::Threshold
            },
            interval: Duration::from_secs(rng() % 30),
            max_duration: Duration::from_secs(60 + rng() % 600),
            steps_bp: steps.clone(),
            failure_limit: 1 + (rng() % 4) as u32,
            progress_deadline: Duration::from_secs(10 + rng() % 100),
            approval: if rng() % 4 == 0 {
                Approval::Manual
            } else {
                Approval::Auto
            },
            webhooks: if with_confirm_hook {
                vec![Webhook {
                    timeout: Duration::from_secs(1),
                    ..Webhook::new(WebhookKind::ConfirmPromotion, "http://127.0.0.1:1/")
                }]
            } else {
                Vec::new()
            },
            when_undecided: match rng() % 3 {
                0 => crate::plan::Undecided::Hold,
                1 => crate::plan::Undecided::Promote,
                _ => crate::plan::Undecided::Rollback,
            },
            ..Plan::default()
        };
        let mut status: Option<Status> = None;
        let mut revision = 1;
        let mut now = 0.0;
        let mut model = Model::default();
        let ticks = 120;
        for tick in 0..ticks {
            // The last ticks are calm: no commands, a router that works.
            let calm = tick >= ticks - 20;
            now += (rng() % 20) as f64;
            if !calm && rng() % 40 == 0 {
                revision += 1;
            }
            let analysis = match rng() % 4 {
                0 => None,
                1 => Some(Outcome::Fail),
                2 => Some(Outcome::Inconclusive),
                _ => Some(Outcome::Pass),
            };
            let mut o = obs(now, &format!("r{revision}"), analysis);
            if let Some(a) = o.analysis.as_mut() {
                a.checks[0].decisive = a.checks[0].outcome == Outcome::Fail && rng() % 3 == 0;
                a.promotable = match rng() % 3 {
                    0 => Some(false),
                    1 => Some(true),
                    _ => None,
                };
            }
            o.target_ready = rng() % 5 != 0;
            if !calm {
                o.command = match rng() % 16 {
                    0 => Some(Command::Approve),
                    1 => Some(Command::Abort),
                    2 => Some(Command::PromoteNow),
                    3 => Some(Command::Retry),
                    _ => None,
                };
                o.gates.rollback_requested = rng() % 30 == 0;
                o.gates.rollout = match rng() % 6 {
                    0 => Some(false),
                    1 => Some(true),
                    _ => None,
                };
            }
            if with_confirm_hook {
                o.gates.confirm_promotion = Some(rng() % 2 == 0);
            }
            if o.command == Some(Command::Approve) {
                model.approved = true;
            }
            let pending_before = model.pending.clone();
            let mut t = step(&p, status.as_ref(), &o);
            let routing: Vec<&Action> = t.actions.iter().filter(|a| a.is_routing()).collect();
            assert!(routing.len() <= 1, "case {case}: {:?}", t.actions);
            if let Some(&action) = routing.first() {
                let is_reissue = model.pending.as_ref() == Some(action);
                if is_reissue {
                    reissued += 1;
                }
                if *action == Action::Initialize && !is_reissue {
                    // A new release (new revision or retry): fresh model state.
                    model.rollback_decided = false;
                    model.approved = o.command == Some(Command::Approve);
                }
                match action {
                    Action::SetWeight(w) => {
                        assert!(p.steps_bp.contains(w), "case {case}: weight {w}");
                        assert!(
                            !model.rollback_decided,
                            "case {case}: weight {w} after a rollback was decided"
                        );
                    }
                    Action::Promote if !is_reissue => {
                        promotions += 1;
                        assert!(
                            !model.rollback_decided,
                            "case {case}: promoted after rollback"
                        );
                        if o.command == Some(Command::PromoteNow) {
                            overrides += 1;
                        } else {
                            let verdict_passed = o.analysis.as_ref().is_some_and(|a| {
                                a.checks.iter().all(|c| c.outcome == Outcome::Pass)
                            }) && o.gates.rollout != Some(false);
                            assert!(
                                verdict_passed,
                                "case {case} tick {tick}: promoted without a passing analysis"
                            );
                            // Unproven evidence promotes only on a person's
                            // word, once the release is undecided.
                            let undecided = status.as_ref().is_some_and(|s| s.undecided);
                            let by_policy = t.status.message.contains("promoted undecided")
                                && p.when_undecided == crate::plan::Undecided::Promote;
                            assert!(
                                undecided
                                    || by_policy
                                    || o.analysis.as_ref().and_then(|a| a.promotable)
                                        != Some(false),
                                "case {case} tick {tick}: promoted on evidence that does not allow it"
                            );
                            assert!(
                                !undecided
                                    || model.approved
                                    || by_policy
                                    || o.analysis.as_ref().and_then(|a| a.promotable)
                                        != Some(false),
                                "case {case} tick {tick}: an undecided release promoted without approval or proof"
                            );
                            assert_eq!(
                                model.router_weight,
                                Some(last_weight),
                                "case {case} tick {tick}: promoted before the last step's weight was in force"
                            );
                            assert!(
                                p.approval == Approval::Auto || model.approved,
                                "case {case}: promoted without approval"
                            );
                            assert!(
                                !with_confirm_hook || o.gates.confirm_promotion == Some(true),
                                "case {case}: promoted past a closed confirm-promotion gate: {:?} {:?} prev {:?} cmd {:?}",
                                t.status.message,
                                p.strategy,
                                status.as_ref().map(|s| (&s.phase, &s.message, s.approved)),
                                o.command
                            );
                            assert!(!o.gates.rollback_requested);
                        }
                    }
                    Action::Rollback => {
                        if !is_reissue {
                            rollbacks += 1;
                        }
                        model.rollback_decided = true;
                    }
                    _ => {}
                }
                if model.pending.is_some() && !is_reissue {
                    // Only a rollback, a new release or a person's
                    // promote --full may replace a pending action.
                    assert!(
                        matches!(action, Action::Rollback | Action::Initialize)
                            || (*action == Action::Promote
                                && o.command == Some(Command::PromoteNow)),
                        "case {case}: {:?} replaced pending {:?}",
                        action,
                        model.pending
                    );
                }
                let applied = calm || rng() % 10 < 6;
                if applied {
                    model.router_weight = match action {
                        Action::Initialize | Action::Rollback | Action::Finalise => Some(0),
                        Action::SetWeight(w) => Some(*w),
                        _ => model.router_weight,
                    };
                    model.pending = None;
                    confirm(&mut t.status);
                } else {
                    model.pending = Some(action.clone());
                }
            } else if let Some(pending) = &model.pending {
                panic!("case {case} tick {tick}: pending {pending:?} was not reissued");
            }
            // A decisive failure seen by an active, unblocked release rolls back now.
            let decisive = o
                .analysis
                .as_ref()
                .is_some_and(|a| a.checks[0].decisive && a.checks[0].outcome == Outcome::Fail);
            if decisive
                && status.as_ref().is_some_and(|s| s.phase.analyses())
                && !matches!(pending_before, Some(Action::Promote | Action::Finalise))
                && o.revision == status.as_ref().unwrap().revision
                && o.command != Some(Command::PromoteNow)
            {
                assert_eq!(
                    t.status.phase,
                    Phase::Failed,
                    "case {case} tick {tick}: a decisive failure did not roll back"
                );
            }
            status = Some(t.status);
        }
        // A decided rollback has been applied by the end of the calm ticks.
        if model.rollback_decided {
            assert_eq!(model.pending, None, "case {case}");
            assert_eq!(model.router_weight, Some(0), "case {case}");
        }
    }
    // The random walks really reach every outcome the properties talk about.
    assert!(
        promotions > 100 && rollbacks > 100 && reissued > 100 && overrides > 10,
        "{promotions} {rollbacks} {reissued} {overrides}"
    );
}

fn blue_green_plan() -> Plan {
    let mut p = Plan {
        strategy: crate::plan::Strategy::BlueGreen {
            iterations: 2,
            soak: Duration::from_secs(30),
        },
        ..sequential_plan()
    };
    p.apply_strategy(|f| f.to_string()).unwrap();
    p
}

/// Initializing -> Initialized -> Progressing without a weight change.
fn started_at_zero(plan: &Plan) -> Status {
    let t = drive(plan, None, &obs(0.0, "r1", None));
    let t = drive(plan, Some(&t.status), &obs(0.0, "r1", None));
    let t = drive(plan, Some(&t.status), &obs(0.0, "r1", None));
    assert_eq!(t.status.phase, Phase::Progressing);
    t.status
}

#[test]
fn blue_green_switches_in_one_step_after_mirrored_evidence_then_soaks_and_promotes() {
    let p = blue_green_plan();
    assert_eq!(p.steps_bp, vec![10_000]);
    let s = started_at_zero(&p);
    assert_eq!(s.canary_weight_bp, 0, "judged on mirrored traffic first");
    // Proven before two intervals: waits for the iterations.
    let t = drive(&p, Some(&s), &gate_tick(12.0, true));
    assert!(t.actions.is_empty(), "{:?}", t.actions);
    // Two intervals, but not proven yet: no switch.
    let t = drive(&p, Some(&t.status), &gate_tick(20.0, false));
    assert!(t.actions.is_empty());
    assert!(
        t.status.message.contains("shown to be no worse"),
        "{}",
        t.status.message
    );
    // Proven, but a jump of the new version is held as a possible
    // incident: all traffic does not move during it.
    let t = drive(&p, Some(&t.status), &held_tick(21.0, true, 2.0));
    assert!(t.actions.is_empty(), "{:?}", t.actions);
    assert!(
        t.status.message.contains("the switch waits while"),
        "{}",
        t.status.message
    );
    // Proven: the switch is one step from 0 to 100%.
    let t = drive(&p, Some(&t.status), &gate_tick(22.0, true));
    assert_eq!(t.actions[0], Action::SetWeight(10_000));
    assert_eq!(t.status.canary_weight_bp, 10_000);
    // The soak lasts 30 s; passing ticks before it hold.
    let t = drive(&p, Some(&t.status), &gate_tick(40.0, false));
    assert_eq!(t.status.phase, Phase::Progressing);
    assert!(t.status.message.contains("soaking"), "{}", t.status.message);
    // Soaked, but held: no promotion until the hold ends.
    let held = drive(&p, Some(&t.status), &held_tick(52.0, false, 2.0));
    assert_eq!(
        held.status.phase,
        Phase::Progressing,
        "{}",
        held.status.message
    );
    let t = drive(&p, Some(&held.status), &gate_tick(54.0, false));
    assert_eq!(t.status.phase, Phase::Promoting);
}

#[test]
fn a_blue_green_failure_in_the_soak_switches_back_at_once() {
    let p = blue_green_plan();
    let s = started_at_zero(&p);
    let t = drive(&p, Some(&s), &gate_tick(20.0, true));
    assert_eq!(t.status.canary_weight_bp, 10_000);
    // A ceiling failure (not decisive) would be one of failure_limit
    // before the switch; in the soak it switches back at once.
    let t = drive(&p, Some(&t.status), &obs(24.0, "r1", Some(Outcome::Fail)));
    assert_eq!(t.status.phase, Phase::Failed);
    assert_eq!(t.status.canary_weight_bp, 0);
    assert!(t.actions.contains(&Action::Rollback));
    assert!(t.status.message.contains("soak"), "{}", t.status.message);
    // Before the switch, the same failure counts toward the limit.
    let t = drive(&p, Some(&s), &obs(4.0, "r1", Some(Outcome::Fail)));
    assert_eq!(t.status.phase, Phase::Progressing);
    assert_eq!(t.status.failed_checks, 1);
}

fn experiment_plan() -> Plan {
    let mut p = Plan {
        strategy: crate::plan::Strategy::Experiment {
            duration: Duration::from_secs(60),
        },
        steps_bp: vec![5000],
        ..sequential_plan()
    };
    p.apply_strategy(|f| f.to_string()).unwrap();
    p
}

#[test]
fn an_experiment_runs_its_time_then_returns_to_stable_without_promoting() {
    let p = experiment_plan();
    let t = drive(&p, None, &obs(0.0, "r1", None));
    let t = drive(&p, Some(&t.status), &obs(0.0, "r1", None));
    let t = drive(&p, Some(&t.status), &obs(0.0, "r1", None));
    assert_eq!(t.actions, vec![Action::SetWeight(5000)]);
    let mut s = t.status;
    // Proven no worse early: it still runs its whole time.
    for now in [10.0, 30.0, 58.0] {
        let t = drive(&p, Some(&s), &gate_tick(now, true));
        assert!(t.actions.is_empty(), "{:?}", t.actions);
        s = t.status;
    }
    // promote --full does not promote an experiment.
    let mut o = gate_tick(59.0, true);
    o.command = Some(Command::PromoteNow);
    let t = drive(&p, Some(&s), &o);
    assert_eq!(t.status.phase, Phase::Progressing);
    let t = drive(&p, Some(&t.status), &gate_tick(60.0, true));
    assert_eq!(t.status.phase, Phase::Concluded);
    assert!(t.actions.contains(&Action::Rollback));
    assert!(!t.actions.contains(&Action::Promote));
    assert_eq!(t.status.canary_weight_bp, 0);
    // Concluded is terminal.
    let t = drive(&p, Some(&t.status), &gate_tick(70.0, true));
    assert_eq!(t.next, NextTick::Idle);
}

#[test]
fn a_canary_shown_worse_ends_an_experiment_early() {
    let p = experiment_plan();
    let s = started_at_zero(&p);
    let mut o = obs(10.0, "r1", Some(Outcome::Fail));
    if let Some(a) = o.analysis.as_mut() {
        a.checks[0].decisive = true;
    }
    let t = drive(&p, Some(&s), &o);
    assert_eq!(t.status.phase, Phase::Failed);
    assert!(
        t.status.message.contains("stopped early"),
        "{}",
        t.status.message
    );
}

#[test]
fn strategies_refuse_the_threshold_gate_and_experiments_take_one_weight() {
    let mut p = Plan {
        strategy: crate::plan::Strategy::BlueGreen {
            iterations: 1,
            soak: Duration::from_secs(1),
        },
        ..plan()
    };
    let e = p.apply_strategy(|f| format!("--{f}")).unwrap_err();
    assert!(e.contains("--strategy") && e.contains("--gate"), "{e}");
    let mut p = Plan {
        strategy: crate::plan::Strategy::Experiment {
            duration: Duration::from_secs(1),
        },
        ..sequential_plan()
    };
    let e = p.apply_strategy(|f| format!("--{f}")).unwrap_err();
    assert!(e.contains("--steps"), "{e}");
    assert!(
        crate::plan::Strategy::parse("rainbow", "1", "1m", "1m")
            .unwrap_err()
            .1
            .contains("not a strategy this version knows")
    );
}

#[test]
fn confirm_rollout_holds_before_any_traffic_without_counting_failures() {
    let p = plan();
    let t = drive(&p, None, &obs(0.0, "r1", None));
    let t = drive(&p, Some(&t.status), &obs(0.0, "r1", None));
    assert_eq!(t.status.phase, Phase::Initialized);
    let mut s = t.status;
    for i in 1..=5 {
        let mut o = obs(f64::from(i), "r1", None);
        o.gates.confirm_rollout = Some(false);
        let t = drive(&p, Some(&s), &o);
        assert_eq!(t.status.phase, Phase::Initialized, "{}", t.status.message);
        assert!(t.actions.is_empty(), "{:?}", t.actions);
        assert_eq!(t.status.failed_checks, 0);
        s = t.status;
    }
    let mut o = obs(6.0, "r1", None);
    o.gates.confirm_rollout = Some(true);
    let t = drive(&p, Some(&s), &o);
    assert_eq!(t.status.phase, Phase::Progressing);
    assert_eq!(t.actions, vec![Action::SetWeight(1000)]);
}

#[test]
fn confirm_traffic_increase_holds_the_weight_of_a_passing_step() {
    let p = plan();
    let mut s = started(&p);
    let weight = s.canary_weight_bp;
    for i in 1..=3 {
        let mut o = obs(f64::from(i) * 100.0, "r1", Some(Outcome::Pass));
        o.gates.confirm_traffic_increase = Some(false);
        let t = drive(&p, Some(&s), &o);
        assert_eq!(t.status.canary_weight_bp, weight, "{}", t.status.message);
        assert!(t.actions.is_empty(), "{:?}", t.actions);
        assert_eq!(t.status.failed_checks, 0);
        s = t.status;
    }
    let mut o = obs(400.0, "r1", Some(Outcome::Pass));
    o.gates.confirm_traffic_increase = Some(true);
    let t = drive(&p, Some(&s), &o);
    assert!(t.status.canary_weight_bp > weight, "{}", t.status.message);
}

/// The sequential gate ticks on every scrape; a check or webhook that fails
/// on every one counts once per `interval` toward the failure limit, as
/// Flagger counts one per analysis interval, not once per scrape.
#[test]
fn under_the_sequential_gate_failures_count_once_per_interval() {
    let p = Plan {
        failure_limit: 3,
        ..sequential_plan()
    };
    assert_eq!(p.interval, Duration::from_secs(10));
    let mut s = started_at_zero(&p);
    // Failing every 2 s scrape for 25 s: counted at 2, 12 and 22 s.
    let mut counted = Vec::new();
    for tick in 1..=12 {
        let now = 2.0 * f64::from(tick);
        let mut o = obs(now, "r1", Some(Outcome::Pass));
        o.gates.rollout = Some(false);
        let t = drive(&p, Some(&s), &o);
        if t.status.failed_checks > s.failed_checks {
            counted.push(now);
        }
        s = t.status;
        if s.phase == Phase::Failed {
            break;
        }
    }
    assert_eq!(counted, vec![2.0, 12.0, 22.0], "{}", s.message);
    assert_eq!(s.phase, Phase::Failed, "{}", s.message);
    assert!(
        s.message.contains("failure limit 3 reached"),
        "{}",
        s.message
    );
    // The threshold gate ticks once per interval: each failure counts.
    let p = Plan {
        failure_limit: 3,
        ..plan()
    };
    let mut s = started(&p);
    for tick in 1..=3 {
        let mut o = obs(f64::from(tick), "r1", Some(Outcome::Pass));
        o.gates.rollout = Some(false);
        s = drive(&p, Some(&s), &o).status;
    }
    assert_eq!(s.phase, Phase::Failed, "{}", s.message);
}

/// `Command::refused_in` agrees with `step`: a command it refuses in a
/// phase changes nothing the release does there (phase, weight, routing
/// and webhook actions; an event may say it was ignored), in every status
/// a seeded random walk of four plans reaches. (It found that promote
/// --full on an experiment skipped that tick's analysis.)
#[test]
fn a_command_refused_in_a_phase_changes_nothing_there() {
    let manual = Plan {
        approval: Approval::Manual,
        ..plan()
    };
    let commands = [
        Command::Approve,
        Command::Abort,
        Command::PromoteNow,
        Command::Retry,
    ];
    let mut gen_rng = sluice_loadtest::Rng::new(0xc0de);
    let mut rng = move || gen_rng.next_u64();
    let mut refusals = 0;
    for (p, experiment) in [
        (plan(), false),
        (sequential_plan(), false),
        (manual, false),
        (experiment_plan(), true),
    ] {
        for _walk in 0..200 {
            let mut s: Option<Status> = None;
            for tick in 0..40 {
                let now = f64::from(tick) * 5.0;
                let analysis = match rng() % 4 {
                    0 => None,
                    1 => Some(Outcome::Fail),
                    2 => Some(Outcome::Inconclusive),
                    _ => Some(Outcome::Pass),
                };
                let mut o = obs(now, "r1", analysis);
                o.target_ready = rng() % 5 != 0;
                if let Some(current) = &s {
                    for c in commands {
                        if c.refused_in(current.phase, experiment).is_none() {
                            continue;
                        }
                        refusals += 1;
                        let mut with = o.clone();
                        with.command = Some(c);
                        let (a, b) = (step(&p, Some(current), &o), step(&p, Some(current), &with));
                        // Events may say the command was ignored.
                        let acts = |t: &Transition| {
                            t.actions
                                .iter()
                                .filter(|a| !matches!(a, Action::Event(..)))
                                .cloned()
                                .collect::<Vec<_>>()
                        };
                        assert_eq!(
                            (a.status.phase, a.status.canary_weight_bp, acts(&a)),
                            (b.status.phase, b.status.canary_weight_bp, acts(&b)),
                            "{c:?} refused in {:?} changed the release",
                            current.phase
                        );
                    }
                }
                o.command = match rng() % 8 {
                    0 => Some(commands[(rng() % 4) as usize]),
                    _ => None,
                };
                let mut t = step(&p, s.as_ref(), &o);
                // Now and then the router does not confirm at once.
                if rng() % 4 != 0 {
                    confirm(&mut t.status);
                }
                s = Some(t.status);
            }
        }
    }
    assert!(refusals > 1000, "the walk reached few refusals: {refusals}");
}

/// `promote --full` accepted while a step's weight change is still
/// unconfirmed (a proportional canary's pods rolling out) promotes, as
/// an abort then rolls back, rather than be taken and dropped.
#[test]
fn promote_now_replaces_a_weight_change_still_unconfirmed() {
    let p = plan();
    let s = started(&p);
    let t = step(&p, Some(&s), &obs(1.0, "r1", Some(Outcome::Pass)));
    assert!(
        matches!(t.status.unconfirmed, Some(Action::SetWeight(_))),
        "{:?}",
        t.status
    );
    let mut o = obs(2.0, "r1", None);
    o.command = Some(Command::PromoteNow);
    assert_eq!(Command::PromoteNow.refused_in(t.status.phase, false), None);
    let t = step(&p, Some(&t.status), &o);
    assert_eq!(t.status.phase, Phase::Promoting, "{:?}", t.status);
    assert_eq!(t.actions[0], Action::Promote);
}
