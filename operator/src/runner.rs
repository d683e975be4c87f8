//! The driver loop around the state machine for one release: wait for the
//! next tick, gather the observation (analysis, webhooks, readiness, a
//! human's command), step the machine, persist the decision, carry out its
//! actions, and confirm them.
//!
//! Decisions are never lost: the status is saved (when a state file is set)
//! *before* its actions run, with the routing action marked unconfirmed; the
//! machine re-issues that action on every tick until the router has applied
//! it. A rollback whose router call fails is retried until it lands, with a
//! growing pause (up to 5 s) between tries, and no tick can advance the
//! weight meanwhile.
//!
//! `sluice rollout` keeps its state in a file next to its control socket, so
//! a rerun of the same command after an interruption resumes the release at
//! the step it had reached, with the time it was not running left out of the
//! progress deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::analysis::{AbTraffic, CheckResult, Outcome};
use crate::clock::wall_clock;
use crate::http::HttpClient;
use crate::machine::{
    Action, Command, Gates, Level, NextTick, Observation, Phase, Status, confirm, step,
};
use crate::plan::{Plan, WebhookKind};
use crate::provider::Provider;
use crate::router::{Readiness, RouteCheck, Router, RouterError};
use crate::webhook::{WebhookPayload, run_gate};

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
    /// A routing action decided but not yet applied (the router failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unconfirmed: Option<String>,
    pub message: String,
    /// `canary`, `blue-green` or `experiment`.
    pub strategy: &'static str,
    /// Session affinity and mirroring on the route, for people.
    pub traffic: String,
    /// An experiment's report, on the tick that ends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::report::ExperimentReport>,
}

/// The experiment report for a tick that ended an experiment, if this one did.
pub fn experiment_report(
    plan: &Plan,
    before: Option<Phase>,
    after: &Status,
) -> Option<crate::report::ExperimentReport> {
    let ended = after.phase.is_terminal() && !before.is_some_and(Phase::is_terminal);
    if !ended || !matches!(plan.strategy, crate::plan::Strategy::Experiment { .. }) {
        return None;
    }
    let settings = plan.gate.settings()?;
    let gate = after.gate.clone().unwrap_or_default();
    Some(crate::report::experiment(&gate, settings))
}

/// When each kind of webhook was last asked, in which phase of which
/// revision, and what it answered (see [`collect_gates`]); and the queue
/// of the release's calls that never gate (see [`crate::hook_queue`]).
#[derive(Clone, Debug, Default)]
pub struct HookPacing(Vec<Asked>, pub crate::hook_queue::HookQueue);

/// One kind's last asking: kind, phase, revision, when (seconds), answer.
type Asked = (
    WebhookKind,
    Option<Phase>,
    String,
    f64,
    Option<(bool, Vec<crate::webhook::HookResult>)>,
);

/// Runs the webhooks the current phase needs and reports them as gates.
/// Rollback webhooks are polled on every tick of a release that has not
/// started promoting, as Flagger does; `confirm-traffic-increase` ones only
/// when the tick's analysis passed before the last step (the weight would
/// go up).
///
/// Under the sequential gate, which ticks on every scrape, each kind is
/// asked at most once per `interval` within a phase of a revision, as
/// Flagger asks once per analysis interval (a load-test hook would
/// otherwise start a load test every scrape); between askings its last
/// answer stands (a failure in it counts once an interval anyway, see
/// `crate::machine`). That holds for a confirmation's yes too: a step or a
/// promotion may be taken on a yes up to one interval old (Flagger asks on
/// the tick that acts; asking on every scrape instead would call a
/// chat-ops or audit hook thirty times a minute while a step waits out its
/// interval or a release waits for `sluice promote`).
///
/// A tick whose analysis already fails decisively asks nothing: the
/// rollback it decides needs no answer, and waits for none (a slow
/// load-test hook, its retries).
#[allow(clippy::too_many_arguments)] // one tick's inputs, each used once
pub async fn collect_gates(
    http: &HttpClient,
    plan: &Plan,
    phase: Option<Phase>,
    analysis: Option<&crate::analysis::Analysis>,
    at_last_step: bool,
    payload: &WebhookPayload,
    pacing: &mut HookPacing,
    now: f64,
) -> Gates {
    let analysing = analysis.is_some();
    let mut gates = Gates::default();
    if analysis.is_some_and(crate::analysis::Analysis::decisive_failure) {
        return gates;
    }
    // What was asked about an earlier revision no longer matters (one
    // entry per kind and phase is kept, however many revisions come).
    pacing.0.retain(|asked| asked.2 == payload.revision);
    let interval = plan.interval.as_secs_f64();
    let mut run = async |kind: WebhookKind, gates: &mut Gates| {
        let slot = pacing
            .0
            .iter()
            .position(|a| a.0 == kind && a.1 == phase && a.2 == payload.revision);
        let (answer, fresh) = match slot.map(|i| &pacing.0[i]) {
            Some(asked) if plan.is_sequential() && now - asked.3 + 1e-6 < interval => {
                (asked.4.clone(), false)
            }
            _ => {
                let answer = run_gate(http, plan, kind, payload).await;
                let asked = (kind, phase, payload.revision.clone(), now, answer.clone());
                match slot {
                    Some(i) => pacing.0[i] = asked,
                    None => pacing.0.push(asked),
                }
                (answer, true)
            }
        };
        let (passed, results) = answer?;
        for r in results.iter().filter(|r| !r.passed) {
            // A rollback hook's 4xx is its normal "no"; one that cannot be
            // reached, or fails, is a kill switch that would not work.
            if kind == WebhookKind::Rollback && r.detail.starts_with("answered 4") {
                continue;
            }
            if fresh {
                tracing::warn!(release = %payload.name, hook = %r.hook, url = %r.url, detail = %r.detail, "{} webhook did not pass", kind.as_str());
            }
            gates.failures.push((kind, r.why()));
        }
        Some((passed, results))
    };
    if phase == Some(Phase::Initialized) {
        gates.confirm_rollout = run(WebhookKind::ConfirmRollout, &mut gates)
            .await
            .map(|g| g.0);
        if gates.confirm_rollout != Some(false) {
            gates.pre_rollout = run(WebhookKind::PreRollout, &mut gates).await.map(|g| g.0);
        }
    }
    if analysing {
        gates.rollout = run(WebhookKind::Rollout, &mut gates).await.map(|g| g.0);
    }
    // As Flagger: asked only when the tick passed, the rollout hooks
    // included, so it never approves a step that then fails.
    if !at_last_step
        && gates.rollout != Some(false)
        && analysis.is_some_and(|a| a.verdict() == crate::analysis::Outcome::Pass)
    {
        gates.confirm_traffic_increase = run(WebhookKind::ConfirmTrafficIncrease, &mut gates)
            .await
            .map(|g| g.0);
    }
    if matches!(
        phase,
        Some(Phase::Initialized | Phase::Progressing | Phase::WaitingPromotion)
    ) {
        gates.rollback_requested = run(WebhookKind::Rollback, &mut gates)
            .await
            .is_some_and(|(_, results)| results.iter().any(|r| r.passed));
    }
    if phase == Some(Phase::WaitingPromotion) || (analysing && at_last_step) {
        gates.confirm_promotion = run(WebhookKind::ConfirmPromotion, &mut gates)
            .await
            .map(|g| g.0);
    }
    gates
}

// === impl StateFile ===

/// What `sluice rollout` saves so that a rerun resumes the release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedRelease {
    pub route: String,
    /// The canary URL: the release's revision.
    pub revision: String,
    /// Wall-clock seconds of the save.
    pub saved_at: f64,
    pub status: Status,
}

/// A JSON file holding a [`SavedRelease`], replaced atomically on each save.
#[derive(Clone, Debug)]
pub struct StateFile {
    pub path: PathBuf,
}

impl StateFile {
    /// The state file that goes with a control socket: `<socket>.state.json`.
    pub fn beside(socket: &Path) -> Self {
        let mut name = socket.file_name().unwrap_or_default().to_os_string();
        name.push(".state.json");
        Self {
            path: socket.with_file_name(name),
        }
    }

    /// The saved release, if there is a readable one.
    pub fn load(&self) -> Result<Option<SavedRelease>, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("{} is not a saved release: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display())),
        }
    }

    pub fn save(&self, saved: &SavedRelease) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(saved).expect("status serializes"),
        )?;
        std::fs::rename(&tmp, &self.path)
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// === impl Driver ===

/// How a release run ended: its last status, and why it stopped early, if
/// it did (the decision saved, not carried out).
#[derive(Debug)]
pub struct Ended {
    pub status: Status,
    pub stopped: Option<String>,
}

/// Refusals in a row by the proxy's admin API (a 4xx other than 408, 425
/// and 429: a wrong token, a route that is gone, a change the proxy's
/// validation refuses) after which a run stops rather than retry for ever.
/// A refusal can be passing (a route being re-created, a token file being
/// rotated), so one or two are retried, with the usual backoff. A change
/// forward refused that often is given up for a rollback; a rollback
/// refused that often stops the run (exit 4), saying how to take the canary
/// out by hand.
pub const REFUSALS_BEFORE_STOP: u32 = 3;

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
    /// Where the status is saved after every tick (`sluice rollout`).
    pub state: Option<StateFile>,
    /// A release to resume, and how long no driver ran it.
    pub resume: Option<(Status, f64)>,
    /// Chat notifications of what happens to the release.
    pub notifier: crate::notify::Notifier,
    /// Where the release record is kept (`sluice rollout`: next to the
    /// state file), and who watches it (the dashboard, `--report`).
    pub records: Option<crate::record::RecordFile>,
    pub record_out: Option<watch::Sender<Option<crate::record::ReleaseRecord>>>,
    /// When each kind of webhook was last asked (see [`collect_gates`]).
    hook_pacing: HookPacing,
    /// The `event` and `post-rollout` calls, sent in the background.
    hooks: crate::hook_queue::HookQueue,
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
            state: None,
            resume: None,
            notifier: crate::notify::Notifier::none(),
            records: None,
            record_out: None,
            hook_pacing: HookPacing::default(),
            hooks: crate::hook_queue::HookQueue::default(),
        }
    }

    /// The queue of the release's `event` webhook calls: the caller
    /// flushes it once the release has ended (see [`HookQueue::flush`]).
    ///
    /// [`HookQueue::flush`]: crate::hook_queue::HookQueue::flush
    pub fn hooks(&self) -> crate::hook_queue::HookQueue {
        self.hooks.clone()
    }

    /// The record to continue: the saved one of this revision if the
    /// release is resumed, else none (a new one starts with the release).
    fn resumed_record(&self, status: Option<&Status>) -> Option<crate::record::ReleaseRecord> {
        let status = status?;
        let all = self.records.as_ref()?.load().ok()?;
        all.into_iter()
            .rev()
            .find(|r| r.revision == status.revision && r.app == self.name && !r.ended())
    }

    fn keep_record(&self, record: &crate::record::ReleaseRecord) {
        if let Some(file) = &self.records
            && let Err(e) = file.save(record)
        {
            tracing::warn!(error = %e, "could not save the release record");
        }
        if let Some(out) = &self.record_out {
            let _ = out.send(Some(record.clone()));
        }
    }

    fn save(&self, status: &Status) {
        let Some(state) = &self.state else { return };
        let saved = SavedRelease {
            route: self.name.clone(),
            revision: self.revision.clone(),
            saved_at: wall_clock(),
            status: status.clone(),
        };
        if let Err(e) = state.save(&saved) {
            tracing::warn!(file = %state.path.display(), error = %e, "could not save the release state");
        }
    }

    fn payload(&self, status: Option<&Status>) -> WebhookPayload {
        WebhookPayload {
            name: self.name.clone(),
            namespace: None,
            kind: "",
            phase: status.map(|s| s.phase.as_str()).unwrap_or("Initializing"),
            canary_weight: status
                .map(|s| f64::from(s.canary_weight_bp) / 100.0)
                .unwrap_or(0.0),
            revision: self.revision.clone(),
        }
    }

    /// Runs the release to its end (Succeeded or Failed, with its routing
    /// applied) and returns the final status; or stops early, the decision
    /// saved, when the proxy keeps refusing to carry it out (see
    /// [`REFUSALS_BEFORE_STOP`]).
    pub async fn run(mut self, mut report: impl FnMut(&TickReport)) -> Ended {
        let started = Instant::now();
        let http = HttpClient::default();
        let (mut status, mut paused_for) = match self.resume.take() {
            Some((s, paused)) => (Some(s), paused),
            None => (None, 0.0),
        };
        if status.as_ref().is_some_and(|s| s.phase.measures()) {
            // A resumed release measures from now, not from before the pause.
            self.provider.reset().await;
        }
        let mut record = self.resumed_record(status.as_ref());
        let mut next = NextTick::Now;
        let mut failures_in_a_row = 0u32;
        let mut refusals_in_a_row = 0u32;
        // Why the next tick rolls back (a change the proxy kept refusing).
        let mut forced_rollback: Option<String> = None;
        loop {
            let wait = match next {
                NextTick::Now => Duration::ZERO,
                NextTick::Soon => self.poll * 2u32.saturating_pow(failures_in_a_row.min(5)),
                NextTick::Interval => self.plan.tick_interval(),
                NextTick::Idle => {
                    if status.as_ref().is_some_and(|s| s.unconfirmed.is_none()) {
                        if let Some(state) = &self.state {
                            state.remove();
                        }
                        return Ended {
                            status: status.expect("checked above"),
                            stopped: None,
                        };
                    }
                    self.poll
                }
            };
            let wait = wait.min(Duration::from_secs(5).max(self.plan.tick_interval()));
            let (command, full_interval) = self.wait(wait).await;
            let forced = forced_rollback.take();
            let command = if forced.is_some() {
                Some(Command::Abort)
            } else {
                command
            };
            let full_interval = full_interval && next == NextTick::Interval;
            let phase = status.as_ref().map(|s| s.phase);
            let now = wall_clock();
            let payload = self.payload(status.as_ref());
            let pending = status.as_ref().is_some_and(|s| s.unconfirmed.is_some());
            let measuring = phase.is_some_and(Phase::measures) && full_interval && !pending;
            let analysing = measuring && phase.is_some_and(Phase::analyses);
            // While the canary is judged, the route must carry it at the
            // release's weight: one the proxy lost (a restart from its
            // file) or someone changed is set back before the metrics are
            // read, and the tick says so.
            let restored = match status.as_ref().filter(|_| analysing) {
                Some(s) => match self.router.restore(s.canary_weight_bp).await {
                    Ok(check) => {
                        let ours = f64::from(s.canary_weight_bp) / 100.0;
                        let why = match check {
                            RouteCheck::AsLeft => None,
                            RouteCheck::SetBack(found) => Some(format!(
                                "{found}, not this release's {ours}% (the proxy restarted from its file, or someone replaced the canary): set back"
                            )),
                            RouteCheck::Changed(found) => Some(format!(
                                "{found}, not this release's {ours}%: someone changed the weight, and it is left as it is (`sluice abort` ends a release)"
                            )),
                        };
                        if let Some(why) = &why {
                            tracing::warn!(release = %self.name, "{why}");
                        }
                        why
                    }
                    Err(e) => {
                        tracing::warn!(release = %self.name, error = %e, "could not read the route to check its weights");
                        None
                    }
                },
                None => None,
            };
            let mut gate = status.as_ref().and_then(|s| s.gate.clone());
            let analysis = if measuring {
                let weight = status.as_ref().map(|s| s.canary_weight_bp).unwrap_or(0);
                let baseline = phase == Some(Phase::Initializing);
                let a = self
                    .provider
                    .tick(&self.plan, &mut gate, weight, baseline)
                    .await;
                analysing.then_some(a)
            } else {
                None
            };
            let at_last_step = status
                .as_ref()
                .is_some_and(|s| s.step + 1 == self.plan.steps_bp.len());
            // An abort, or one that arrives while the webhooks run (a slow
            // hook, its retries), acts at once: the release rolls back
            // without waiting for their answers, which no longer matter. Any
            // other command waits for them (its decision needs them).
            let (gates, command) = if command == Some(Command::Abort) {
                (Gates::default(), command)
            } else {
                let asked = collect_gates(
                    &http,
                    &self.plan,
                    phase,
                    analysis.as_ref(),
                    at_last_step,
                    &payload,
                    &mut self.hook_pacing,
                    now,
                );
                match (command, self.commands.as_mut()) {
                    (None, Some(commands)) => {
                        let mut asked = std::pin::pin!(asked);
                        tokio::select! {
                            g = &mut asked => (g, None),
                            c = commands.recv() => match c {
                                Some(Command::Abort) => (Gates::default(), Some(Command::Abort)),
                                other => {
                                    if other.is_none() {
                                        self.commands = None;
                                    }
                                    (asked.await, other)
                                }
                            },
                        }
                    }
                    (command, _) => (asked.await, command),
                }
            };
            let readiness = match phase {
                Some(Phase::Initializing) => self.router.ready().await,
                _ => Readiness::Ready,
            };
            let (target_ready, waiting_for) = match readiness {
                Readiness::Ready => (true, None),
                Readiness::Waiting { besides_canary } => (false, besides_canary),
            };
            let obs = Observation {
                now,
                revision: self.revision.clone(),
                target_ready,
                waiting_for,
                analysis: analysis.clone(),
                gates,
                command,
                paused_for: std::mem::take(&mut paused_for),
            };
            let mut t = crate::machine::with_course_events(
                status.as_ref(),
                step(&self.plan, status.as_ref(), &obs),
            );
            if let Some(why) = forced {
                t.status.message = why;
            }
            if !t.actions.contains(&Action::Initialize) {
                // The evidence belongs to this release; a new one starts without.
                t.status.gate = gate;
            }
            // A new record for a new release: not for an `Initialize` that
            // is issued again (the proxy refused it, or a resumed release
            // was stopped mid-apply), which is the same release.
            let reissued = status.as_ref().is_some_and(|s| {
                s.unconfirmed == Some(Action::Initialize) && s.revision == t.status.revision
            });
            if (t.actions.contains(&Action::Initialize) && !reissued) || record.is_none() {
                record = Some(crate::record::ReleaseRecord::new(
                    None,
                    &self.name,
                    &self.revision,
                    &self.plan,
                    now,
                ));
            }
            let ended = experiment_report(&self.plan, phase, &t.status);
            if let Some(r) = record.as_mut() {
                r.observe(
                    now,
                    status.as_ref(),
                    &t.status,
                    analysis.as_ref(),
                    &t.actions,
                    ended.as_ref(),
                );
                self.keep_record(r);
            }
            // The decision is recorded before anything is carried out.
            self.save(&t.status);
            let after = self.payload(Some(&t.status));
            let mut message = t.status.message.clone();
            match self.apply(&t.actions, &http, &after).await {
                Ok(events) => {
                    failures_in_a_row = 0;
                    refusals_in_a_row = 0;
                    if t.status.unconfirmed.is_some() {
                        confirm(&mut t.status);
                        self.save(&t.status);
                    }
                    if !events.is_empty() {
                        message = events.join("; ");
                    }
                    next = t.next;
                }
                Err((action, e)) => {
                    failures_in_a_row += 1;
                    refusals_in_a_row = if e.is_refusal() {
                        refusals_in_a_row + 1
                    } else {
                        0
                    };
                    let rolling_back = t.actions.contains(&Action::Rollback);
                    if refusals_in_a_row >= REFUSALS_BEFORE_STOP && !rolling_back {
                        // A change forward the proxy will not take: the
                        // canary is taken back rather than left where it is.
                        forced_rollback = Some(format!(
                            "rolled back: the proxy refused {action} {refusals_in_a_row} times in a row ({e})"
                        ));
                        refusals_in_a_row = 0;
                    } else if refusals_in_a_row >= REFUSALS_BEFORE_STOP {
                        let why = format!(
                            "stopped: the proxy refused {action} {refusals_in_a_row} times in a row ({e}), which retrying cannot mend. Route `{}` keeps its weights; send all its traffic to stable through the proxy's admin API (PUT /routes/{} with {{\"canary_weight\": 0}}), or fix the proxy and run the same command again to carry out the decision ({}), saved{}",
                            self.name,
                            self.name,
                            t.status.message,
                            self.state
                                .as_ref()
                                .map(|st| format!(" in {}", st.path.display()))
                                .unwrap_or_default()
                        );
                        tracing::error!(release = %self.name, "{why}");
                        let tick =
                            self.tick_report(&t.status, analysis.as_ref(), why.clone(), started);
                        report(&tick);
                        return Ended {
                            status: t.status,
                            stopped: Some(why),
                        };
                    }
                    tracing::warn!(release = %self.name, %action, error = %e, "could not apply; retrying");
                    message = format!(
                        "could not apply {action}: {e}; retrying (the decision stands: {})",
                        t.status.message
                    );
                    next = NextTick::Soon;
                }
            }
            if let Some(why) = restored {
                message = format!("{why}; {message}");
            }
            self.notifier
                .observe(&self.name, None, status.as_ref(), &t.status);
            if let Some(r) = &ended {
                tracing::info!(release = %self.name, "{r}");
            }
            status = Some(t.status);
            if let Some(out) = &self.status_out {
                let _ = out.send(status.clone());
            }
            if let Some(s) = &status {
                let mut tick = self.tick_report(s, analysis.as_ref(), message, started);
                tick.report = ended;
                report(&tick);
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

    /// Carries out the actions in order; stops at the first routing action
    /// the router refuses.
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
                // `post-rollout`: at the end of the release, so nothing
                // waits on it but the process's exit; sent before it.
                Action::Notify(kind) => {
                    if let Some((false, results)) = run_gate(http, &self.plan, *kind, payload).await
                    {
                        tracing::warn!(release = %self.name, ?results, "{} webhooks failed", kind.as_str());
                    }
                    Ok(())
                }
                Action::Event(level, text) => {
                    match level {
                        Level::Warning => tracing::warn!(release = %self.name, "{text}"),
                        Level::Normal => tracing::info!(release = %self.name, "{text}"),
                    }
                    let call = crate::hook_queue::Call::Event {
                        warning: *level == Level::Warning,
                        message: text.clone(),
                        at: std::time::SystemTime::now(),
                    };
                    self.hooks.send(http, &self.plan, call, payload);
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
        started: Instant,
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
            elapsed_secs: started.elapsed().as_secs_f64(),
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
            unconfirmed: s.unconfirmed.as_ref().map(|a| format!("{a:?}")),
            message,
            strategy: self.plan.strategy.name(),
            traffic: self.plan.traffic_text(),
            report: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// Under the sequential gate (a tick per scrape) a rollout hook is
    /// asked once per interval, its answer standing in between; under the
    /// threshold gate (a tick per interval) on every tick.
    #[tokio::test]
    async fn under_the_sequential_gate_hooks_are_asked_once_per_interval() {
        for (sequential, asked) in [(true, 3), (false, 11)] {
            let (url, calls) = crate::webhook::tests::hook_answering(500).await;
            let mut plan = if sequential {
                Plan::default()
            } else {
                Plan::threshold()
            };
            assert_eq!(plan.is_sequential(), sequential);
            plan.interval = Duration::from_secs(10);
            plan.webhooks =
                crate::plan::parse_webhooks(&format!("- {{type: rollout, url: '{url}'}}\n"), "t")
                    .unwrap();
            let payload = WebhookPayload {
                name: "web".into(),
                namespace: None,
                kind: "",
                phase: "Progressing",
                canary_weight: 10.0,
                revision: "r1".into(),
            };
            let analysis = crate::analysis::Analysis::default();
            let mut pacing = HookPacing::default();
            // A scrape every 2 s for 20 s: asked at 0, 10 and 20 s.
            for tick in 0..=10 {
                let gates = collect_gates(
                    &HttpClient::plain(),
                    &plan,
                    Some(Phase::Progressing),
                    Some(&analysis),
                    false,
                    &payload,
                    &mut pacing,
                    2.0 * f64::from(tick),
                )
                .await;
                assert_eq!(gates.rollout, Some(false), "tick {tick}");
                assert!(gates.why(WebhookKind::Rollout).contains("answered 500"));
            }
            assert_eq!(
                calls.load(Ordering::SeqCst),
                asked,
                "sequential: {sequential}"
            );
        }
    }

    fn payload() -> WebhookPayload {
        WebhookPayload {
            name: "web".into(),
            namespace: None,
            kind: "",
            phase: "Progressing",
            canary_weight: 50.0,
            revision: "r1".into(),
        }
    }

    /// The pacing keeps only the current revision's askings: a long-lived
    /// operator sees revisions without end.
    #[tokio::test]
    async fn pacing_forgets_earlier_revisions() {
        let (url, _) = crate::webhook::tests::hook_answering(403).await;
        let mut plan = Plan::default();
        plan.webhooks =
            crate::plan::parse_webhooks(&format!("- {{type: rollback, url: '{url}'}}\n"), "t")
                .unwrap();
        let mut pacing = HookPacing::default();
        for (i, revision) in ["r1", "r2", "r3"].iter().enumerate() {
            let payload = WebhookPayload {
                revision: revision.to_string(),
                ..payload()
            };
            collect_gates(
                &HttpClient::plain(),
                &plan,
                Some(Phase::Progressing),
                None,
                false,
                &payload,
                &mut pacing,
                i as f64,
            )
            .await;
        }
        assert_eq!(pacing.0.len(), 1, "{:?}", pacing.0);
        assert_eq!(pacing.0[0].2, "r3");
    }

    /// A tick whose analysis fails decisively asks no hook: the rollback
    /// it decides waits for no load test.
    #[tokio::test]
    async fn a_decisive_failure_asks_no_webhook() {
        let (url, calls) = crate::webhook::tests::hook_answering(200).await;
        let mut plan = Plan::default();
        plan.webhooks = crate::plan::parse_webhooks(
            &format!("- {{type: rollout, url: '{url}'}}\n- {{type: rollback, url: '{url}'}}\n"),
            "t",
        )
        .unwrap();
        let mut analysis = crate::analysis::Analysis::default();
        analysis.checks.push(crate::analysis::CheckResult {
            name: "errors".into(),
            outcome: crate::analysis::Outcome::Fail,
            decisive: true,
            ..Default::default()
        });
        let mut pacing = HookPacing::default();
        let gates = collect_gates(
            &HttpClient::plain(),
            &plan,
            Some(Phase::Progressing),
            Some(&analysis),
            false,
            &payload(),
            &mut pacing,
            0.0,
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!((gates.rollout, gates.rollback_requested), (None, false));
        // The same tick without the failure asks both.
        analysis.checks[0].decisive = false;
        collect_gates(
            &HttpClient::plain(),
            &plan,
            Some(Phase::Progressing),
            Some(&analysis),
            false,
            &payload(),
            &mut pacing,
            0.0,
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
