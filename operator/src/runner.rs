//! The driver loop around the state machine for one release: wait for the
//! next tick, gather the observation (analysis, webhooks, readiness, a
//! human's command), step the machine, carry out its actions.
//!
//! A transition is only kept once all its actions succeeded: if the router
//! cannot apply a weight, the status stays where it was and the tick is
//! retried shortly, so the recorded state never runs ahead of the traffic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::analysis::{AbTraffic, CheckResult, Outcome};
use crate::http::HttpClient;
use crate::machine::{Action, Command, Gates, Level, NextTick, Observation, Phase, Status, step};
use crate::plan::{Plan, WebhookKind};
use crate::provider::Provider;
use crate::router::{Router, RouterError};
use crate::webhook::{WebhookPayload, rollback_requested, run_gate};

/// One tick, as shown in the live view and printed by `--output json`.
#[derive(Clone, Debug, Serialize)]
pub struct TickReport {
    pub elapsed_secs: f64,
    pub release: String,
    pub revision: String,
    pub phase: Phase,
    pub canary_weight: f64,
    /// 1-based index of the step in force (0 before the first).
    pub step: usize,
    pub steps: usize,
    pub failed_checks: u32,
    pub failure_limit: u32,
    pub canary_requests: Option<u64>,
    pub success_rate: Option<f64>,
    /// Latency quantiles by name (`p99`), in seconds.
    pub latency: BTreeMap<String, f64>,
    pub verdict: Option<Outcome>,
    pub checks: Vec<CheckResult>,
    /// Canary traffic sent by A/B rules in the window: shown apart, not judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ab: Option<AbTraffic>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not apply `{action}` for {for_secs:.0}s: {source}")]
    Router {
        action: String,
        for_secs: f64,
        #[source]
        source: RouterError,
    },
}

/// Runs the webhooks the current phase needs and reports them as gates.
pub async fn collect_gates(
    http: &HttpClient,
    plan: &Plan,
    phase: Option<Phase>,
    analysing: bool,
    at_last_step: bool,
    payload: &WebhookPayload,
) -> Gates {
    let mut gates = Gates::default();
    if phase == Some(Phase::Initialized) {
        gates.pre_rollout = run_gate(http, plan, WebhookKind::PreRollout, payload)
            .await
            .map(|g| g.0);
    }
    if analysing {
        gates.rollout = run_gate(http, plan, WebhookKind::Rollout, payload)
            .await
            .map(|g| g.0);
        gates.rollback_requested = rollback_requested(http, plan, payload).await;
    }
    if phase == Some(Phase::WaitingPromotion) || (analysing && at_last_step) {
        gates.confirm_promotion = run_gate(http, plan, WebhookKind::ConfirmPromotion, payload)
            .await
            .map(|g| g.0);
    }
    gates
}

/// Everything one release needs.
pub struct Driver<R: Router> {
    pub name: String,
    pub revision: String,
    pub plan: Plan,
    pub router: R,
    pub provider: Provider,
    /// `promote`/`abort` from a human (the control socket).
    pub commands: Option<mpsc::UnboundedReceiver<Command>>,
    /// The latest status, for whoever asks (the control socket).
    pub status_out: Option<watch::Sender<Option<Status>>>,
    /// Delay of a `NextTick::Soon` poll.
    pub poll: Duration,
}

impl<R: Router> Driver<R> {
    pub fn new(name: &str, revision: &str, plan: Plan, router: R, provider: Provider) -> Self {
        Self {
            name: name.to_string(),
            revision: revision.to_string(),
            plan,
            router,
            provider,
            commands: None,
            status_out: None,
            poll: Duration::from_millis(250),
        }
    }

    /// Runs the release to its end (Succeeded or Failed).
    pub async fn run(mut self, mut report: impl FnMut(&TickReport)) -> Result<Status, RunError> {
        let clock = Instant::now();
        let http = HttpClient::default();
        let mut status: Option<Status> = None;
        let mut next = NextTick::Now;
        let mut failing_since: Option<Instant> = None;
        loop {
            let wait = match next {
                NextTick::Now => Duration::ZERO,
                NextTick::Soon => self.poll,
                NextTick::Interval => self.plan.interval,
                NextTick::Idle => {
                    return Ok(status.expect("a release has a status once started"));
                }
            };
            let (command, full_interval) = self.wait(wait).await;
            let full_interval = full_interval && next == NextTick::Interval;
            let phase = status.as_ref().map(|s| s.phase);
            let now = clock.elapsed().as_secs_f64();
            let payload = WebhookPayload {
                name: self.name.clone(),
                namespace: None,
                kind: "",
                phase: phase.map(Phase::as_str).unwrap_or("Initializing"),
                canary_weight: status
                    .as_ref()
                    .map(|s| f64::from(s.canary_weight_bp) / 100.0)
                    .unwrap_or(0.0),
                revision: self.revision.clone(),
            };
            let analysing = phase.is_some_and(Phase::analyses) && full_interval;
            let analysis = if analysing {
                Some(self.provider.analyse(&self.plan).await)
            } else {
                None
            };
            let at_last_step = status
                .as_ref()
                .is_some_and(|s| s.step + 1 == self.plan.steps_bp.len());
            let gates =
                collect_gates(&http, &self.plan, phase, analysing, at_last_step, &payload).await;
            let target_ready = match phase {
                Some(Phase::Initializing) => self.router.ready().await,
                _ => true,
            };
            let obs = Observation {
                now,
                revision: self.revision.clone(),
                target_ready,
                analysis: analysis.clone(),
                gates,
                command,
            };
            let t = step(&self.plan, status.as_ref(), &obs);
            let mut message = t.status.message.clone();
            match self.apply(&t.actions, &http, &payload).await {
                Ok(events) => {
                    failing_since = None;
                    if !events.is_empty() {
                        message = events.join("; ");
                    }
                    status = Some(t.status.clone());
                    next = t.next;
                }
                Err((action, e)) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    tracing::warn!(release = %self.name, %action, error = %e, "could not apply; retrying");
                    if since.elapsed() > self.plan.progress_deadline {
                        return Err(RunError::Router {
                            action,
                            for_secs: since.elapsed().as_secs_f64(),
                            source: e,
                        });
                    }
                    message = format!("could not apply {action}: {e}; retrying");
                    next = NextTick::Soon;
                }
            }
            if let Some(out) = &self.status_out {
                let _ = out.send(status.clone());
            }
            if let Some(s) = &status {
                report(&self.tick_report(s, analysis.as_ref(), message, clock));
            }
        }
    }

    /// Waits `wait`, or less if a command arrives; returns the command and
    /// whether the whole wait elapsed.
    async fn wait(&mut self, wait: Duration) -> (Option<Command>, bool) {
        if wait.is_zero() {
            return (None, false);
        }
        let Some(commands) = self.commands.as_mut() else {
            tokio::time::sleep(wait).await;
            return (None, true);
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => (None, true),
            c = commands.recv() => {
                if c.is_none() {
                    // The control socket is gone; wait out the rest without it.
                    self.commands = None;
                    tokio::time::sleep(wait).await;
                    return (None, true);
                }
                (c, false)
            }
        }
    }

    async fn apply(
        &mut self,
        actions: &[Action],
        http: &HttpClient,
        payload: &WebhookPayload,
    ) -> Result<Vec<String>, (String, RouterError)> {
        let mut events = Vec::new();
        for action in actions {
            let result = match action {
                Action::Initialize => self.router.initialize().await,
                Action::SetWeight(bp) => self.router.set_weight(*bp).await,
                Action::Promote => self.router.promote().await,
                Action::Finalise => self.router.finalise().await,
                Action::Rollback => self.router.rollback().await,
                Action::Notify(kind) => {
                    if let Some((ok, results)) = run_gate(http, &self.plan, *kind, payload).await
                        && !ok
                    {
                        tracing::warn!(release = %self.name, ?results, "{} webhooks failed", kind.as_str());
                    }
                    Ok(())
                }
                Action::Event(level, text) => {
                    // The view shows events; logs keep them at info for operators.
                    let warning = *level == Level::Warning;
                    tracing::info!(release = %self.name, warning, "{text}");
                    events.push(text.clone());
                    Ok(())
                }
            };
            if let Err(e) = result {
                return Err((format!("{action:?}"), e));
            }
            if matches!(action, Action::Initialize | Action::SetWeight(_)) {
                self.provider.reset().await;
            }
        }
        Ok(events)
    }

    fn tick_report(
        &self,
        s: &Status,
        analysis: Option<&crate::analysis::Analysis>,
        message: String,
        clock: Instant,
    ) -> TickReport {
        let latency = analysis
            .map(|a| {
                self.plan
                    .latency
                    .iter()
                    .filter_map(|c| a.value_of(&c.name()).map(|v| (c.name(), v)))
                    .collect()
            })
            .unwrap_or_default();
        TickReport {
            elapsed_secs: clock.elapsed().as_secs_f64(),
            release: self.name.clone(),
            revision: s.revision.clone(),
            phase: s.phase,
            canary_weight: f64::from(s.canary_weight_bp) / 100.0,
            step: if matches!(s.phase, Phase::Initializing | Phase::Initialized) {
                0
            } else {
                s.step + 1
            },
            steps: self.plan.steps_bp.len(),
            failed_checks: s.failed_checks,
            failure_limit: self.plan.failure_limit,
            canary_requests: analysis.and_then(|a| a.canary_requests),
            success_rate: analysis.and_then(|a| a.value_of("success-rate")),
            latency,
            verdict: analysis.map(|a| a.verdict()),
            checks: analysis.map(|a| a.checks.clone()).unwrap_or_default(),
            ab: analysis.and_then(|a| a.ab.clone()),
            message,
        }
    }
}
