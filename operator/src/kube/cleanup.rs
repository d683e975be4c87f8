//! Cleanup: when the annotation goes (or the Deployment is deleted), the
//! take-over is undone in order (the user's Deployment back to its
//! replicas, Service `app` back to its selector and ports once those pods
//! are ready), then what Sluice made is deleted, only what is provably its
//! own, and the finalizer is removed.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::annotations;
use super::api::{
    delete_owned, publish, remove_finalizer, scale, sluice_post, to_value, unmirror_phase,
};
use super::bootstrap::restore_hpa_bounds;
use super::objects::*;
use super::services::{original_service, ready_endpoints};
use super::{Context, Error, KubeStatus};

/// Whether Sluice has taken `d` on: its finalizer is on `d`, or an
/// `app-primary` it owns exists. Only then does it clean up.
pub(super) async fn managed(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    name: &str,
) -> Result<bool, Error> {
    if d.finalizers().iter().any(|f| f == annotations::FINALIZER) {
        return Ok(true);
    }
    let primaries: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let uid = d.uid().unwrap_or_default();
    Ok(match primaries.get_opt(&primary_name(name)).await? {
        Some(p) => is_ours(&to_value(&p)?, &uid),
        None => false,
    })
}

/// Undoes the take-over: the user's Deployment back to its replicas, the
/// Service back to its selector and ports, then what Sluice made for this
/// Deployment is deleted: only objects that carry its label and an owner
/// reference to this Deployment ([`is_ours`]); anything else with the same
/// names (a Flagger primary, a user's `db-primary` Secret) is left alone.
pub(super) async fn cleanup(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    app: &str,
    deleting: bool,
) -> Result<Action, Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let uid = d.uid().unwrap_or_default();
    let primary = deployments
        .get_opt(&primary_name(app))
        .await?
        .filter(|p| to_value(p).is_ok_and(|v| is_ours(&v, &uid)));
    let status = primary
        .as_ref()
        .and_then(KubeStatus::from_primary)
        .unwrap_or_default();
    if !deleting && let Some(p) = &primary {
        // The user's HPA gets its own bounds back before the Deployment is
        // scaled, or it would scale it back to a proportional release's.
        restore_hpa_bounds(ctx, ns, app).await?;
        let replicas = p
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .map(i64::from)
            .unwrap_or(status.original_replicas)
            .max(status.original_replicas);
        let user = to_value(d)?;
        if user["spec"]["replicas"].as_i64() != Some(replicas) {
            scale(ctx, ns, app, replicas).await?;
            return Ok(Action::requeue(ctx.poll));
        }
        if status.bootstrapped && !rolled_out(&user) {
            // Traffic moves back only once the user's pods can take it.
            return Ok(Action::requeue(ctx.poll));
        }
    }
    if let Some(service) = services.get_opt(app).await? {
        let s = to_value(&service)?;
        if s["metadata"]["annotations"][annotations::ORIGINAL_SELECTOR].is_string() {
            let mut restored = original_service(&s);
            if let Some(a) = restored["metadata"]["annotations"].as_object_mut() {
                a.remove(annotations::ORIGINAL_SELECTOR);
                a.remove(annotations::ORIGINAL_TARGET_PORT);
                a.remove(annotations::ORIGINAL_PORTS);
            }
            services
                .replace(app, &sluice_post(), &serde_json::from_value(restored)?)
                .await?;
            if !deleting {
                warn_if_unpromoted(ctx, d, ns, app, &status).await?;
                unmirror_phase(ctx, d, ns, app).await?;
                // The proxy goes only once the Service's own pods are its
                // ready endpoints.
                return Ok(Action::requeue(ctx.poll));
            }
        }
    }
    if !deleting && primary.is_some() && d.spec.as_ref().and_then(|s| s.replicas) != Some(0) {
        let (ready, proxies) = ready_endpoints(ctx, ns, app, app).await?;
        if ready <= proxies {
            return Ok(Action::requeue(ctx.poll));
        }
    }
    if let Some(route) = &status.httproute {
        // The Gateway API router: the route's rules go back to Service
        // `app` before `app-primary` and `app-canary` go.
        super::gateway::restore_route(ctx, ns, app, route).await?;
        if !deleting {
            warn_if_unpromoted(ctx, d, ns, app, &status).await?;
        }
    }
    restore_hpa_bounds(ctx, ns, app).await?;
    let c = &ctx.client;
    delete_owned::<Deployment>(c, ns, &proxy_name(app), &uid).await?;
    delete_owned::<Deployment>(c, ns, &primary_name(app), &uid).await?;
    super::baseline::remove_baseline(ctx, ns, app, &uid).await?;
    for svc in [primary_name(app), canary_service_name(app), proxy_name(app)] {
        delete_owned::<Service>(c, ns, &svc, &uid).await?;
    }
    delete_owned::<ConfigMap>(c, ns, &proxy_name(app), &uid).await?;
    delete_owned::<Secret>(c, ns, &admin_secret_name(app), &uid).await?;
    let refs = config_refs(&to_value(d)?["spec"]["template"]);
    for name in &refs.configmaps {
        delete_owned::<ConfigMap>(c, ns, &config_copy_name(app, name), &uid).await?;
        // Copies named by Sluice before per-app names.
        delete_owned::<ConfigMap>(c, ns, &primary_name(name), &uid).await?;
    }
    for name in &refs.secrets {
        delete_owned::<Secret>(c, ns, &config_copy_name(app, name), &uid).await?;
        delete_owned::<Secret>(c, ns, &primary_name(name), &uid).await?;
    }
    delete_owned::<ServiceAccount>(c, ns, &proxy_name(app), &uid).await?;
    delete_owned::<Role>(c, ns, &proxy_name(app), &uid).await?;
    delete_owned::<RoleBinding>(c, ns, &proxy_name(app), &uid).await?;
    delete_owned::<PodDisruptionBudget>(c, ns, &proxy_name(app), &uid).await?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(c.clone(), ns);
    for hpa in hpas
        .list(&ListParams::default().labels(&format!("sluice.dev/release={app}")))
        .await?
        .items
    {
        delete_owned::<HorizontalPodAutoscaler>(c, ns, &hpa.name_any(), &uid).await?;
    }
    if !deleting && unmirror_phase(ctx, d, ns, app).await? {
        // The finalizer's patch is tested against the version just replaced.
        return Ok(Action::requeue(ctx.poll));
    }
    remove_finalizer(ctx, d, ns, app).await?;
    ctx.providers
        .lock()
        .expect("providers lock")
        .remove(&format!("{ns}/{app}"));
    forget(ctx, ns, app);
    ctx.metrics.forget(ns, app);
    if !deleting {
        // Worded for both routers: under the Gateway API router the
        // HTTPRoute, not Service `app`, was what Sluice had changed.
        publish(
            ctx,
            d,
            EventType::Normal,
            "Released",
            format!("Sluice no longer manages {app}; its traffic goes to {app}'s own pods again"),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// When Sluice lets go, `app`'s own pods serve again, with `app`'s own
/// spec. After a rollback, or in the middle of a release, that spec is a
/// revision Sluice did not promote: the one it rolled back, or one it was
/// still judging. Letting go is what was asked, so it goes on, but says
/// so, once, as traffic is handed over (Service `app` restored, or the
/// HTTPRoute): a Warning naming both revisions and how to keep the
/// primary's.
async fn warn_if_unpromoted(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    app: &str,
    status: &KubeStatus,
) -> Result<(), Error> {
    if !status.bootstrapped || status.primary_revision.is_empty() {
        return Ok(());
    }
    let (revision, _) = super::inputs::revision_of(ctx, ns, &to_value(d)?).await?;
    if revision == status.primary_revision {
        return Ok(());
    }
    let judged = if status.failed_revision.as_deref() == Some(revision.as_str()) {
        "which Sluice rolled back".to_string()
    } else if status.revision == revision && !status.phase.is_empty() {
        format!(
            "which Sluice had not promoted (its release was {})",
            status.phase
        )
    } else {
        "which Sluice never released".to_string()
    };
    publish(
        ctx,
        d,
        EventType::Warning,
        "ReleasedUnpromoted",
        format!(
            "sluice.dev/canary was removed: {app}'s own pods serve again, with its own spec, revision {revision}, {judged}, in place of the primary's revision {primary}. To serve {primary} again, put {app}'s spec back to it",
            primary = status.primary_revision
        ),
    )
    .await;
    Ok(())
}

/// Forgets what the operator keeps in memory for app `ns/app`: its hook
/// pacing and queue of background webhook calls (whose tasks end once the
/// calls queued so far are sent), its client, chat channels, last-read
/// Secrets and ConfigMaps. When Sluice lets the app go, or it stops being
/// a candidate before it was taken on.
pub(super) fn forget(ctx: &Context, ns: &str, app: &str) {
    let key = format!("{ns}/{app}");
    ctx.hook_pacing
        .lock()
        .expect("the pacing lock")
        .remove(&key);
    ctx.app_http.lock().expect("the app_http lock").remove(&key);
    ctx.app_notifiers
        .lock()
        .expect("the app_notifiers lock")
        .remove(&key);
    ctx.app_secrets
        .lock()
        .expect("the app_secrets lock")
        .remove(&key);
    ctx.last_loaded
        .lock()
        .expect("the loaded settings lock")
        .remove(&key);
}
