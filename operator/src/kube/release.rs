//! Release: one tick of the state machine per reconcile. It reads the
//! command, measures (through the app's metric provider), runs the gates,
//! steps the machine, saves the decision, and carries out its routing
//! actions (weights in the proxy's ConfigMap, the canary's scale, the
//! primary's template on promotion).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::Value;

use super::annotations::{MetricsSource, Router, Settings};
use super::api::{publish, rfc3339, save_status, scale, sluice_post, to_value};
use super::baseline::{
    baseline_ready, follow_canary, scale_down_baseline, settle_idle_baseline, start_baseline,
};
use super::bootstrap::scale_hpa_bounds;
use super::commands::{clear_command, read_command};
use super::drift::settle_idle_canary;
use super::gateway::{set_weight, settle_route};
use super::inputs::{config_data, copy_configs};
use super::knobs::CanaryScale;
use super::objects::*;
use super::proxy::{at_rest, proxies_lag, proxy_targets, report_refused};
use super::services::{point_canary, proxy_serves};
use super::{Context, Error, KubeStatus, without_config_hash};
use crate::http::HttpClient;
use crate::machine::{self, Action as MachineAction, Command, Level, NextTick, Observation, Phase};
use crate::provider::Provider;
use crate::runner::collect_gates;
use crate::webhook::WebhookPayload;

/// Puts a release's metric provider back into the context when dropped, so
/// an early return (an API error) never loses its baseline.
pub(super) struct Borrowed<'a> {
    ctx: &'a Context,
    key: String,
    provider: Option<Provider>,
}

impl Borrowed<'_> {
    fn get(&mut self) -> &mut Provider {
        self.provider.as_mut().expect("held until drop")
    }
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            self.ctx
                .providers
                .lock()
                .expect("providers lock")
                .insert(self.key.clone(), p);
        }
    }
}

/// Carries out one routing action of the machine on the cluster.
///
/// A/B rules (`sluice.dev/match`) are written from `Initialize` on, so a
/// matching request reaches the canary at weight 0, and removed with the
/// weight at `Finalise` and `Rollback`. With `canary-scale: proportional`
/// the canary's replicas follow each weight. With an
/// `abort-scale-down-delay` a rollback leaves the canary's pods up (out of
/// the traffic); the caller records when they go ([`scale_down_due`]).
/// With `sluice.dev/baseline-arm` the baseline arm starts with the canary
/// at its size and follows it, and is scaled down when the release ends
/// (see [`super::baseline`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply_routing(
    ctx: &Context,
    ns: &str,
    app: &str,
    dv: &Value,
    primary: &Deployment,
    ports: &[ProxiedPort],
    owner: &Value,
    status: &KubeStatus,
    action: &MachineAction,
    settings: &Settings,
) -> Result<(), Error> {
    let traffic = &settings.plan.traffic;
    let primary_replicas = i64::from(
        primary
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(1),
    );
    // A proportional canary runs for the larger of its weight and its
    // mirrored share (a blue/green copy at weight 0 is not put on one pod).
    let scaled_bp = |bp: u32| {
        let mirrored = traffic.mirror.as_ref().map_or(0, |m| {
            (m.percent * 100.0).round().clamp(0.0, 10_000.0) as u32
        });
        bp.max(mirrored)
    };
    match action {
        MachineAction::Initialize => {
            if settings.canary_scale == CanaryScale::Proportional {
                scale_hpa_bounds(ctx, ns, app, dv, settings.canary_scale, scaled_bp(0)).await?;
            }
            let canary_replicas = settings
                .canary_scale
                .replicas(primary_replicas, scaled_bp(0));
            scale(ctx, ns, app, canary_replicas).await?;
            if settings.route.baseline_arm {
                start_baseline(ctx, ns, app, dv, canary_replicas).await?;
            }
            if traffic.mirror.is_some() || !settings.route.canary_match.is_empty() {
                // Copies (blue/green) and A/B matches go to the canary
                // from the start.
                point_canary(ctx, ns, app, dv, owner).await?;
            }
            set_weight(
                ctx,
                ns,
                app,
                ports,
                0,
                owner,
                traffic,
                &settings.route,
                &settings.router,
            )
            .await
        }
        MachineAction::SetWeight(bp) => {
            if settings.canary_scale == CanaryScale::Proportional {
                // The user's HPA gets the new bounds first (it would undo
                // the scale), then the canary is scaled, and the weight
                // moves only once the canary runs that many ready pods:
                // until then the action stays unconfirmed and is retried.
                scale_hpa_bounds(ctx, ns, app, dv, settings.canary_scale, scaled_bp(*bp)).await?;
                let want = settings
                    .canary_scale
                    .replicas(primary_replicas, scaled_bp(*bp));
                scale(ctx, ns, app, want).await?;
                if settings.route.baseline_arm {
                    follow_canary(ctx, ns, app, dv, want).await?;
                }
                let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
                let user = to_value(&deployments.get(app).await?)?;
                if user["spec"]["replicas"].as_i64() != Some(want) || !rolled_out(&user) {
                    return Err(Error::Other(format!(
                        "canary {app} is scaled to {want} pods for {}% and {} of them are ready; the weight moves once all are",
                        f64::from(*bp) / 100.0,
                        user["status"]["availableReplicas"].as_i64().unwrap_or(0)
                    )));
                }
            }
            if *bp > 0 {
                point_canary(ctx, ns, app, dv, owner).await?;
            }
            set_weight(
                ctx,
                ns,
                app,
                ports,
                *bp,
                owner,
                traffic,
                &settings.route,
                &settings.router,
            )
            .await
        }
        MachineAction::Promote => {
            // The template recorded when promotion was decided: a revision
            // arriving meanwhile is queued, never promoted in its place.
            let source = status
                .promoting_template
                .clone()
                .unwrap_or_else(|| dv["spec"]["template"].clone());
            copy_configs(ctx, ns, app, &source, owner).await?;
            let (cm_data, secret_data) = config_data(ctx, ns, &source).await?;
            let template = primary_template(
                &source,
                &selector_of(dv),
                app,
                &config_hash(&cm_data, &secret_data),
            );
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
            let mut p = to_value(&deployments.get(&primary_name(app)).await?)?;
            if canonical_json(&p["spec"]["template"]) != canonical_json(&template) {
                p["spec"]["template"] = template;
                deployments
                    .replace(
                        &primary_name(app),
                        &sluice_post(),
                        &serde_json::from_value(p)?,
                    )
                    .await?;
            }
            Ok(())
        }
        MachineAction::Finalise | MachineAction::Rollback => {
            set_weight(
                ctx,
                ns,
                app,
                ports,
                0,
                owner,
                &at_rest(traffic),
                &settings.route.at_rest(),
                &settings.router,
            )
            .await?;
            // The route no longer names the baseline arm: it goes (a
            // no-op without one).
            scale_down_baseline(ctx, ns, app).await?;
            if *action == MachineAction::Rollback && !settings.abort_scale_down_delay.is_zero() {
                // Kept up for people to look at; scaled down when due.
                return Ok(());
            }
            scale_down_canary(ctx, ns, app, &settings.router).await
        }
        MachineAction::Notify(_) | MachineAction::Event(..) => Ok(()),
    }
}

/// Scales the user's Deployment (the canary) to 0, once nothing can reach
/// it any more.
async fn scale_down_canary(
    ctx: &Context,
    ns: &str,
    app: &str,
    router: &Router,
) -> Result<(), Error> {
    if *router != Router::Proxy {
        // Service `app` was never taken over: the route's weight (written
        // before this) is all that reaches the canary.
        return scale(ctx, ns, app, 0).await;
    }
    // Never scale the user's Deployment to 0 while its Service
    // might route to it directly (drift not yet restored).
    if !proxy_serves(ctx, ns, app).await? {
        return Err(Error::Other(format!(
            "Service {app} has no ready proxy endpoint yet; {app} is scaled down once it has"
        )));
    }
    // The canary's pods go only once every proxy replica has the
    // config that sends them nothing.
    if let Some(lag) = proxies_lag(ctx, ns, app).await? {
        return Err(Error::Other(format!(
            "{lag}; {app} is scaled down once every proxy replica serves the new config"
        )));
    }
    scale(ctx, ns, app, 0).await
}

/// One step of a release (or nothing, when there is nothing to release).
///
/// Order, so that no decision is lost: read the command annotation, step
/// the machine, save the status (the decision, with its routing action
/// marked unconfirmed), only then clear the command annotation, then carry
/// out the actions and save again once the routing action is confirmed. A
/// failed API call leaves the decision in the status; the next reconcile
/// re-issues it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn release_tick(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    app: &str,
    dv: &Value,
    primary: &Deployment,
    ports: &[ProxiedPort],
    revision: &str,
    settings: &Settings,
    status: &mut KubeStatus,
) -> Result<Action, Error> {
    let key = format!("{ns}/{app}");
    // What is on record (the caller may already have changed `status`,
    // e.g. its observed generation: a change to save).
    let saved = KubeStatus::from_primary(primary).unwrap_or_default();
    let release_running = status
        .machine
        .as_ref()
        .is_some_and(|m| !m.phase.is_terminal() || m.unconfirmed.is_some());
    // The baseline arm is decided when a release starts: a release under
    // way keeps what it started with (a route never names an arm that was
    // not started, and a started one is not left behind).
    let kept;
    let settings = if release_running && settings.route.baseline_arm != status.baseline_arm {
        let mut s = settings.clone();
        s.route.baseline_arm = status.baseline_arm;
        if let crate::plan::Gate::Sequential(g) = &mut s.plan.gate {
            let warmup_given =
                kube::ResourceExt::annotations(d).contains_key(super::annotations::WARMUP);
            g.set_baseline_arm(status.baseline_arm, warmup_given);
        }
        kept = s;
        &kept
    } else {
        settings
    };
    let plan = &settings.plan;
    // The URLs an app's annotations give (webhooks, web and Datadog
    // checks, chat channels) get the app's own access
    // (`sluice.dev/access`) and never the operator's: an app team must not
    // be able to point one at a host the operator holds credentials for.
    let http = ctx
        .app_http
        .lock()
        .expect("app_http lock")
        .get(&key)
        .cloned()
        .unwrap_or_else(HttpClient::plain);
    let owner = owner_reference(dv);
    let (raw_command, command) = read_command(ctx, d, primary, status).await;
    let pending = status
        .machine
        .as_ref()
        .is_some_and(|m| m.unconfirmed.is_some());
    let active = pending
        || status
            .machine
            .as_ref()
            .is_some_and(|m| !m.phase.is_terminal());
    let retrying = command == Some(Command::Retry);
    if active && settings.router == Router::Proxy {
        // Weights reach a replica only if it takes the config.
        report_refused(ctx, d, ns, app).await;
    }
    if settings.route.baseline_arm
        && !pending
        && status.machine.as_ref().is_some_and(|m| {
            matches!(
                m.phase,
                Phase::Initialized | Phase::Progressing | Phase::WaitingPromotion
            )
        })
    {
        // The canary's size can change mid-release (its HPA): the
        // baseline arm keeps the same.
        let canary_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        follow_canary(ctx, ns, app, dv, i64::from(canary_replicas)).await?;
    }
    // The Deployment reverted to the revision the primary runs while a
    // release of another revision is under way (before its promotion):
    // the release ends at once, as rolled back, without analysis
    // ([`revert_to_stable`]).
    let to_stable = active
        && !status.primary_revision.is_empty()
        && revision == status.primary_revision
        && status.machine.as_ref().is_some_and(|m| {
            m.revision != revision
                && (m.phase.is_terminal()
                    || matches!(
                        m.phase,
                        Phase::Initializing
                            | Phase::Initialized
                            | Phase::Progressing
                            | Phase::WaitingPromotion
                    ))
        });
    if !active && !retrying {
        if let Some(read) = &raw_command {
            clear_command(ctx, ns, app, read).await?;
        }
        let idle = revision == status.primary_revision
            || status.failed_revision.as_deref() == Some(revision);
        // The kept-up canary scaled down in this very call: `d`, read
        // before, still shows its pods, which are no drift.
        let mut scaled_down_now = false;
        if let Some(due) = scale_down_due(status, settings) {
            if status.scale_down_at != Some(due) {
                // The delay was changed meanwhile: it counts from the end
                // of the release.
                status.scale_down_at = Some(due);
                save_status(ctx, ns, app, status).await?;
            }
            if (ctx.now)() >= due {
                // The kept-up canary's delay is over.
                scale_down_canary(ctx, ns, app, &settings.router).await?;
                scaled_down_now = true;
                status.scale_down_at = None;
                save_status(ctx, ns, app, status).await?;
                publish(
                    ctx,
                    d,
                    EventType::Normal,
                    "ScaledDown",
                    scaled_down_note(status, app),
                )
                .await;
            }
        }
        if idle {
            settle_route(
                ctx,
                ns,
                app,
                ports,
                &owner,
                &plan.traffic,
                &settings.route,
                &settings.router,
            )
            .await?;
            settle_idle_baseline(ctx, ns, app, dv, settings.route.baseline_arm).await?;
            if status.scale_down_at.is_none() && !scaled_down_now {
                settle_idle_canary(ctx, d, ns, app).await?;
            }
            // A new generation with nothing to release (replicas, a
            // revert): the status says it has been seen.
            let saved = KubeStatus::from_primary(primary).map_or(0, |s| s.observed_generation);
            if saved != status.observed_generation {
                save_status(ctx, ns, app, status).await?;
            }
        }
        if revision == status.primary_revision {
            return Ok(Action::requeue(until_scale_down(
                status,
                (ctx.now)(),
                Duration::from_secs(60),
            )));
        }
        if status.failed_revision.as_deref() == Some(revision) {
            return Ok(Action::requeue(until_scale_down(
                status,
                (ctx.now)(),
                Duration::from_secs(300),
            )));
        }
    }
    let now = (ctx.now)();
    let phase = status.machine.as_ref().filter(|_| active).map(|m| m.phase);
    // A terminal release of this revision holds it (a concluded
    // experiment is not run again), except a release ended by a revert to
    // the stable: that revision was never judged, and comes back as a new
    // release.
    let previous = status.machine.clone().filter(|m| {
        !m.phase.is_terminal()
            || m.unconfirmed.is_some()
            || (m.revision == revision && (retrying || !ended_by_revert(status, m)))
    });
    // The first tick of this process for a running release: the time no
    // operator ran it is not held against it, and the provider takes a
    // fresh baseline instead of judging a window it did not see.
    let resumed = active
        && ctx
            .resumed
            .lock()
            .expect("resumed lock")
            .insert(key.clone());
    let paused_for = if resumed && status.last_tick_at > 0.0 {
        (now - status.last_tick_at - plan.tick_interval().as_secs_f64() - ctx.poll.as_secs_f64())
            .max(0.0)
    } else {
        0.0
    };
    let mut borrowed = Borrowed {
        ctx,
        key: key.clone(),
        provider: Some(
            ctx.providers
                .lock()
                .expect("providers lock")
                .remove(&key)
                .unwrap_or_else(|| (ctx.make_provider)(settings, ns, app)),
        ),
    };
    borrowed.get().set_checks_http(http.clone());
    if let Provider::Proxy(p) = borrowed.get()
        && settings.metrics == MetricsSource::Proxy
        && let Ok(targets) = proxy_targets(ctx, ns, app).await
        && !targets.is_empty()
    {
        p.set_targets(&targets);
    }
    if resumed && phase.is_some_and(Phase::measures) {
        borrowed.get().reset().await;
        status.last_analysis_at = now;
    }
    let measuring = phase.is_some_and(Phase::measures)
        && !to_stable
        && !pending
        && now - status.last_analysis_at >= plan.tick_interval().as_secs_f64();
    let analysing = measuring && phase.is_some_and(Phase::analyses);
    let mut gate = previous.as_ref().and_then(|m| m.gate.clone());
    let analysis = if measuring {
        status.last_analysis_at = now;
        let weight = previous.as_ref().map(|m| m.canary_weight_bp).unwrap_or(0);
        let baseline = phase == Some(Phase::Initializing);
        let a = borrowed.get().tick(plan, &mut gate, weight, baseline).await;
        analysing.then_some(a)
    } else {
        None
    };
    let payload = WebhookPayload {
        name: app.to_string(),
        namespace: Some(ns.to_string()),
        kind: "",
        phase: phase.map(Phase::as_str).unwrap_or("Initializing"),
        canary_weight: status.canary_weight,
        revision: revision.to_string(),
    };
    let at_last_step = previous
        .as_ref()
        .is_some_and(|m| m.step + 1 == plan.steps_bp.len());
    // No gate webhook is asked about a release that ends by a revert, nor
    // on the tick that finds a new revision: the release restarts at weight
    // 0 first, and its hooks are asked in its own phases (the old phase's
    // hooks would be asked about a revision whose release has not begun).
    let new_revision = previous.as_ref().is_some_and(|m| m.revision != revision);
    let gates = if to_stable || new_revision {
        machine::Gates::default()
    } else {
        let key = format!("{ns}/{app}");
        let mut pacing = ctx
            .hook_pacing
            .lock()
            .expect("the pacing lock")
            .remove(&key)
            .unwrap_or_default();
        let gates = collect_gates(
            &http,
            plan,
            phase,
            analysis.as_ref(),
            at_last_step,
            &payload,
            &mut pacing,
            now,
        )
        .await;
        ctx.hook_pacing
            .lock()
            .expect("the pacing lock")
            .insert(key, pacing);
        gates
    };
    // The canary is ready and the baseline arm (if any) is not.
    let mut arm_not_ready = false;
    let target_ready = match phase {
        Some(Phase::Initializing) => {
            let user = to_value(d)?;
            let canary_ready =
                user["spec"]["replicas"].as_i64().unwrap_or(0) >= 1 && rolled_out(&user);
            arm_not_ready = canary_ready
                && settings.route.baseline_arm
                && !baseline_ready(ctx, ns, app).await?;
            canary_ready && !arm_not_ready
        }
        Some(Phase::Promoting) => {
            let source = status
                .promoting_template
                .clone()
                .unwrap_or_else(|| dv["spec"]["template"].clone());
            let expected = primary_template(&source, &selector_of(dv), app, "");
            let pv = to_value(primary)?;
            canonical_json(&without_config_hash(&pv["spec"]["template"]))
                == canonical_json(&without_config_hash(&expected))
                && rolled_out(&pv)
        }
        _ => true,
    };
    let obs = Observation {
        now,
        revision: revision.to_string(),
        target_ready,
        waiting_for: arm_not_ready
            .then(|| format!("the baseline arm {} to become ready", baseline_name(app))),
        analysis: analysis.clone(),
        gates,
        command,
        paused_for,
    };
    let mut t = match previous.as_ref() {
        Some(m) if to_stable => revert_to_stable(m, revision, now),
        _ => machine::with_course_events(
            previous.as_ref(),
            machine::step(plan, previous.as_ref(), &obs),
        ),
    };
    // The tick that decides the return to the stable (not a re-issue).
    let reverted_to_stable = to_stable && previous.as_ref().is_some_and(|m| !m.phase.is_terminal());
    let fresh_start = t.actions.contains(&MachineAction::Initialize)
        && previous
            .as_ref()
            .is_none_or(|m| m.revision != revision || m.phase.is_terminal());
    let reverted = fresh_start && in_rollback_window(status, revision, settings.rollback_window);
    if reverted {
        // A revert to a revision promoted before: promoted at once, with
        // no canary traffic and no analysis.
        let mut s = t.status.clone();
        s.phase = Phase::Promoting;
        s.message = format!(
            "revision {revision} was promoted before (within sluice.dev/rollback-window: {}); promoting it at once, without analysis",
            settings.rollback_window
        );
        s.unconfirmed = Some(MachineAction::Promote);
        t = machine::Transition {
            status: s,
            actions: vec![MachineAction::Promote],
            next: NextTick::Now,
        };
    }
    if !t.actions.contains(&MachineAction::Initialize) {
        t.status.gate = gate;
    }
    ctx.notifier
        .observe(app, Some(ns), previous.as_ref(), &t.status);
    if let Some((_, own)) = ctx
        .app_notifiers
        .lock()
        .expect("app_notifiers lock")
        .get(&key)
    {
        own.observe(app, Some(ns), previous.as_ref(), &t.status);
    }
    let m = &t.status;
    let newly = |p: Phase| m.phase == p && previous.as_ref().is_none_or(|old| old.phase != p);
    if t.actions.contains(&MachineAction::Initialize) && !pending {
        status.baseline_arm = settings.route.baseline_arm;
    }
    if (t.actions.contains(&MachineAction::Initialize) && !pending) || reverted {
        status.release_started_at = now;
        // A new release replaces a rolled-back canary kept up.
        status.scale_down_at = None;
    }
    if t.actions.contains(&MachineAction::Promote) && status.promoting_template.is_none() {
        status.promoting_template = Some(dv["spec"]["template"].clone());
    }
    if newly(Phase::Failed) {
        if !reverted_to_stable {
            // A revision reverted away from was not found bad: released
            // again as usual if it comes back.
            status.failed_revision = Some(m.revision.clone());
        }
        ctx.metrics
            .release_ended(ns, app, "failed", now - status.release_started_at);
    }
    if newly(Phase::Succeeded) {
        status.remember_promoted(&m.revision, settings.rollback_window);
        status.primary_revision = m.revision.clone();
        status.promoting_template = None;
        ctx.metrics
            .release_ended(ns, app, "succeeded", now - status.release_started_at);
    }
    if newly(Phase::Concluded) {
        ctx.metrics
            .release_ended(ns, app, "concluded", now - status.release_started_at);
    }
    let report = crate::runner::experiment_report(plan, phase, m);
    if report.is_some() {
        status.report = report.clone();
    } else if t.actions.contains(&MachineAction::Initialize) {
        status.report = None;
    }
    if previous.as_ref().is_none_or(|old| old.phase != m.phase) {
        status.last_transition = rfc3339(now);
    }
    status.last_tick_at = now;
    if let Some(a) = &analysis {
        status.last_checks = a.checks.clone();
        status.last_ab = a.ab.clone();
    }
    record_machine(status, &t.status, plan);
    super::api::keep_record(
        ctx,
        ns,
        app,
        &owner,
        settings.keep_releases,
        plan,
        fresh_start || reverted,
        now,
        previous.as_ref(),
        &t.status,
        analysis.as_ref(),
        &t.actions,
        report.as_ref(),
    )
    .await;
    // 1. The decision is saved before anything is carried out. A
    // reconcile that changed nothing but the time saves nothing (within a
    // tick interval of the last save): the primary, where the status is
    // kept, is watched, so each save sets off a reconcile, and saving the
    // time alone made that a loop of about twenty writes a second for the
    // whole release.
    let unchanged = KubeStatus {
        last_tick_at: saved.last_tick_at,
        ..status.clone()
    } == saved
        && now - saved.last_tick_at < plan.tick_interval().as_secs_f64();
    if !unchanged {
        save_status(ctx, ns, app, status).await?;
    }
    // 2. The command is consumed only once its effect is on record.
    if let Some(read) = &raw_command {
        clear_command(ctx, ns, app, read).await?;
    }
    if reverted_to_stable {
        publish(
            ctx,
            d,
            EventType::Normal,
            "RevertedToStable",
            t.status.message.clone(),
        )
        .await;
    }
    // 3. Carry it out.
    let mut failed = None;
    // The app's `event` and `post-rollout` calls go out in the background.
    let hooks = ctx
        .hook_pacing
        .lock()
        .expect("the pacing lock")
        .entry(format!("{ns}/{app}"))
        .or_default()
        .1
        .clone();
    for action in &t.actions {
        if reverted && *action == MachineAction::Promote {
            // A revert mid-release: the release it replaces had canary
            // weight and A/B rules; nothing goes to the canary (which now
            // runs the reverted revision) while the primary is rolled back.
            let at_rest_first = set_weight(
                ctx,
                ns,
                app,
                ports,
                0,
                &owner,
                &at_rest(&plan.traffic),
                &settings.route.at_rest(),
                &settings.router,
            )
            .await;
            if let Err(e) = at_rest_first {
                failed = Some((action.clone(), e));
                break;
            }
        }
        if action.is_routing() {
            let applied = apply_routing(
                ctx, ns, app, dv, primary, ports, &owner, status, action, settings,
            )
            .await;
            match applied {
                Ok(()) => {
                    if matches!(
                        action,
                        MachineAction::Initialize | MachineAction::SetWeight(_)
                    ) {
                        borrowed.get().reset().await;
                    }
                }
                Err(e) => {
                    failed = Some((action.clone(), e));
                    break;
                }
            }
            continue;
        }
        match action {
            MachineAction::Notify(kind) => {
                let after = WebhookPayload {
                    phase: t.status.phase.as_str(),
                    canary_weight: f64::from(t.status.canary_weight_bp) / 100.0,
                    ..payload.clone()
                };
                hooks.send(&http, plan, crate::hook_queue::Call::Notify(*kind), &after);
            }
            MachineAction::Event(level, text) => {
                let (ty, reason) = match level {
                    // The forecast from the baseline: what the release can decide.
                    Level::Normal if text.starts_with("baseline:") => (EventType::Normal, "Plan"),
                    Level::Normal => (EventType::Normal, "Progress"),
                    Level::Warning if t.status.phase == Phase::Failed => {
                        (EventType::Warning, "RolledBack")
                    }
                    Level::Warning if text.starts_with("undecided after") => {
                        (EventType::Warning, "Undecided")
                    }
                    Level::Warning => (EventType::Warning, "Override"),
                };
                publish(ctx, d, ty, reason, text.clone()).await;
                let after = WebhookPayload {
                    phase: t.status.phase.as_str(),
                    canary_weight: f64::from(t.status.canary_weight_bp) / 100.0,
                    ..payload.clone()
                };
                let call = crate::hook_queue::Call::Event {
                    warning: *level == Level::Warning,
                    message: text.clone(),
                    at: std::time::SystemTime::now(),
                };
                hooks.send(&http, plan, call, &after);
            }
            _ => {}
        }
    }
    if let Some((action, e)) = failed {
        tracing::warn!(deployment = %key, ?action, error = %e, "could not apply; the decision is kept and retried");
        status.message = format!(
            "could not apply {action:?}: {e}; retrying (the decision stands: {})",
            t.status.message
        );
        let _ = save_status(ctx, ns, app, status).await;
        return Ok(Action::requeue(ctx.poll));
    }
    if t.actions.contains(&MachineAction::Rollback) && !settings.abort_scale_down_delay.is_zero() {
        status.scale_down_at = Some(now + settings.abort_scale_down_delay.as_secs_f64());
    }
    if reverted {
        publish(
            ctx,
            d,
            EventType::Normal,
            "RollbackWindow",
            t.status.message.clone(),
        )
        .await;
    }
    // 4. Confirmed.
    if t.status.unconfirmed.is_some() {
        machine::confirm(&mut t.status);
        record_machine(status, &t.status, plan);
        save_status(ctx, ns, app, status).await?;
    }
    if newly_phase(&previous, &t.status, Phase::Succeeded) {
        publish(
            ctx,
            d,
            EventType::Normal,
            "Promoted",
            t.status.message.clone(),
        )
        .await;
    }
    if let Some(r) = report {
        publish(ctx, d, EventType::Normal, "ExperimentReport", r.to_string()).await;
    }
    Ok(Action::requeue(match t.next {
        NextTick::Now => Duration::from_millis(50),
        NextTick::Soon => ctx.poll,
        NextTick::Interval => {
            let tick = plan.tick_interval().as_secs_f64();
            let due = status.last_analysis_at + tick - now;
            Duration::from_secs_f64(due.clamp(0.05, tick))
        }
        NextTick::Idle => until_scale_down(status, now, Duration::from_secs(60)),
    }))
}

/// `otherwise`, or sooner when a rolled-back canary is due to be scaled
/// down: the scale-down happens on time with no other change.
fn until_scale_down(status: &KubeStatus, now: f64, otherwise: Duration) -> Duration {
    match status.scale_down_at {
        Some(due) => Duration::from_secs_f64((due - now).clamp(0.05, otherwise.as_secs_f64())),
        None => otherwise,
    }
}

/// The end of a release because the Deployment was reverted to the
/// revision the primary runs (`stable`) before the release's revision was
/// promoted: nothing is left to release or analyse, so the release ends
/// at once as rolled back (phase `Failed`, the route at rest, the canary
/// scaled down per `abort-scale-down-delay`), for every
/// `rollback-window` (as Argo Rollouts' return to the stable revision;
/// Flagger would analyse the stable against itself). A release already
/// ended (a rollback not yet carried out) has its action re-issued.
fn revert_to_stable(current: &machine::Status, stable: &str, now: f64) -> machine::Transition {
    let mut s = current.clone();
    if let Some(pending) = s.unconfirmed.clone().filter(|_| s.phase.is_terminal()) {
        return machine::Transition {
            status: s,
            actions: vec![pending],
            next: NextTick::Soon,
        };
    }
    s.message = format!(
        "rolled back: the Deployment was reverted to the stable revision {stable} during the release of {} ({}); the canary was taken out of the traffic at once, without analysis",
        s.revision,
        s.phase.as_str()
    );
    s.phase = Phase::Failed;
    s.canary_weight_bp = 0;
    s.last_transition_at = now;
    s.queued_revision = None;
    s.unconfirmed = Some(MachineAction::Rollback);
    machine::Transition {
        status: s,
        actions: vec![
            MachineAction::Rollback,
            MachineAction::Notify(crate::plan::WebhookKind::PostRollout),
        ],
        next: NextTick::Idle,
    }
}

/// Whether `m` is a release ended by a revert to the stable (a rolled-back
/// release whose revision is not the one recorded as failed).
fn ended_by_revert(status: &KubeStatus, m: &machine::Status) -> bool {
    m.phase == Phase::Failed && status.failed_revision.as_deref() != Some(m.revision.as_str())
}

/// When a canary kept up by `abort-scale-down-delay` is due to be scaled
/// down, with the delay as set now counted from the end of its release:
/// shortening the delay brings a pending scale-down forward, removing it
/// makes it due at once, lengthening it pushes it back.
fn scale_down_due(status: &KubeStatus, settings: &Settings) -> Option<f64> {
    let recorded = status.scale_down_at?;
    let ended_at = status
        .machine
        .as_ref()
        .filter(|m| m.phase.is_terminal())
        .map(|m| m.last_transition_at);
    Some(match ended_at {
        Some(at) => at + settings.abort_scale_down_delay.as_secs_f64(),
        None => recorded,
    })
}

/// The `ScaledDown` Event's note, worded for how the release ended.
fn scaled_down_note(status: &KubeStatus, app: &str) -> String {
    let what = match status.machine.as_ref() {
        Some(m) if m.phase == Phase::Concluded => {
            format!("the concluded experiment's canary {app}")
        }
        Some(m) if ended_by_revert(status, m) => {
            format!("the canary {app} of the release ended by a revert to the stable revision")
        }
        _ => format!("the rolled-back canary {app}"),
    };
    format!("{what} was kept up for its abort-scale-down-delay; scaled to 0")
}

/// Whether `revision` is one of the last `window` revisions promoted
/// before the one the primary runs.
fn in_rollback_window(status: &KubeStatus, revision: &str, window: usize) -> bool {
    window > 0
        && status
            .promoted
            .iter()
            .filter(|p| p.revision != status.primary_revision)
            .take(window)
            .any(|p| p.revision == revision)
}

fn newly_phase(previous: &Option<machine::Status>, now: &machine::Status, p: Phase) -> bool {
    now.phase == p && previous.as_ref().is_none_or(|old| old.phase != p)
}

/// Copies the machine's status into the operator's.
pub(super) fn record_machine(
    status: &mut KubeStatus,
    m: &machine::Status,
    plan: &crate::plan::Plan,
) {
    status.strategy = plan.strategy.name().to_string();
    status.traffic = plan.traffic_text();
    status.phase = m.phase.as_str().to_string();
    status.canary_weight = f64::from(m.canary_weight_bp) / 100.0;
    status.failed_checks = m.failed_checks;
    status.revision = m.revision.clone();
    status.message = m.message.clone();
    status.steps = plan
        .steps_bp
        .iter()
        .map(|b| f64::from(*b) / 100.0)
        .collect();
    status.step = if matches!(m.phase, Phase::Initializing | Phase::Initialized) {
        0
    } else {
        m.step + 1
    };
    status.machine = Some(m.clone());
}
