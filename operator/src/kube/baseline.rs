//! The baseline arm (`sluice.dev/baseline-arm: "true"`): during a release
//! Sluice runs a fresh copy of the PRIMARY's version beside the canary, and
//! the proxy gives it the canary's exact share, so the gate judges the
//! canary against a peer as young as itself (cold caches, JIT and
//! pod-level effects cancel) instead of the long-running primary.
//!
//! What runs, and when:
//!
//! - Deployment `app-baseline`: the primary's pod template (its config
//!   copies too) under selector labels of its own (`-baseline` values, so
//!   Service `app-primary` never selects its pods), at the canary's
//!   replica count. Service `app-baseline` selects exactly those pods.
//! - At a release's start (`Initialize`) both are applied with the
//!   primary's template of that moment, and the route's `baseline` points
//!   at `app-baseline` (weight 0 still). The release leaves
//!   `Initializing` only once the baseline arm is rolled out too, so the
//!   first weighted request finds it ready. While the release runs, the
//!   baseline arm follows the canary's replica count (proportional
//!   scaling, an HPA on the canary), and is started again if deleted.
//! - When the release ends (promoted, rolled back, aborted) the route
//!   loses its `baseline` with the canary's weight, and the baseline arm
//!   is scaled to 0 once every proxy replica serves that config (a kept-up
//!   rolled-back canary, `abort-scale-down-delay`, does not keep it up:
//!   nobody looks at the baseline arm). Between releases it runs no pods
//!   and no route names it; the objects stay, ready for the next release.
//! - The annotation removed (or `"false"`) between releases: both objects
//!   are deleted. Cleanup (Sluice letting the app go) deletes them with
//!   everything else.
//!
//! During `Promoting` the baseline arm keeps its share: it runs the
//! version the primary ran until then, so users see no third version.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use serde_json::Value;

use super::api::{apply_owned, delete_owned, scale, to_value};
use super::objects::*;
use super::proxy::proxies_lag;
use super::services::original_service;
use super::{Context, Error};

/// Applies Service and Deployment `app-baseline` for a release: the
/// primary's current pod template at `replicas`. Anything by those names
/// that is not Sluice's stops the release ([`Error::Foreign`]).
pub(super) async fn start_baseline(
    ctx: &Context,
    ns: &str,
    app: &str,
    dv: &Value,
    replicas: i64,
) -> Result<(), Error> {
    let owner = owner_reference(dv);
    let uid = owner["uid"].as_str().unwrap_or_default().to_string();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let original = original_service(&to_value(&services.get(app).await?)?);
    apply_owned::<Service>(
        &ctx.client,
        ns,
        &service_copy(
            &original,
            &baseline_name(app),
            &baseline_labels(&selector_of(dv)),
            &owner,
            app,
        ),
        &uid,
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let primary = to_value(&deployments.get(&primary_name(app)).await?)?;
    apply_owned::<Deployment>(
        &ctx.client,
        ns,
        &baseline_deployment(dv, &primary, replicas, &owner),
        &uid,
    )
    .await
}

/// Whether the baseline arm runs at least one pod and all of its pods run
/// its current template (a release waits for it in `Initializing`).
pub(super) async fn baseline_ready(ctx: &Context, ns: &str, app: &str) -> Result<bool, Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    Ok(match deployments.get_opt(&baseline_name(app)).await? {
        Some(b) => {
            let b = to_value(&b)?;
            b["spec"]["replicas"].as_i64().unwrap_or(0) >= 1 && rolled_out(&b)
        }
        None => false,
    })
}

/// While a release runs, the baseline arm runs as many pods as the canary
/// (`canary_replicas`, at least 1). Nothing when it already does; one
/// deleted mid-release (by a person, a GitOps prune) is started again.
pub(super) async fn follow_canary(
    ctx: &Context,
    ns: &str,
    app: &str,
    dv: &Value,
    canary_replicas: i64,
) -> Result<(), Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let want = canary_replicas.max(1);
    let Some(b) = deployments.get_opt(&baseline_name(app)).await? else {
        return start_baseline(ctx, ns, app, dv, want).await;
    };
    if b.spec.as_ref().and_then(|s| s.replicas).map(i64::from) != Some(want) {
        scale(ctx, ns, &baseline_name(app), want).await?;
    }
    Ok(())
}

/// Scales the baseline arm to 0 once no proxy replica can send it
/// anything (every one serves the config without `baseline`); until then
/// an error saying what it waits for, so the routing action is retried.
pub(super) async fn scale_down_baseline(ctx: &Context, ns: &str, app: &str) -> Result<(), Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let Some(b) = deployments.get_opt(&baseline_name(app)).await? else {
        return Ok(());
    };
    if b.spec.as_ref().and_then(|s| s.replicas) == Some(0) {
        return Ok(());
    }
    if let Some(lag) = proxies_lag(ctx, ns, app).await? {
        return Err(Error::Other(format!(
            "{lag}; the baseline arm {} is scaled down once every proxy replica serves the config without it",
            baseline_name(app)
        )));
    }
    scale(ctx, ns, &baseline_name(app), 0).await
}

/// Between releases: the baseline arm runs no pods, or, when the app no
/// longer asks for one (`enabled` false), its Deployment and Service are
/// deleted. Either only once every proxy replica serves the at-rest
/// config; until then nothing, and the next reconcile tries again.
pub(super) async fn settle_idle_baseline(
    ctx: &Context,
    ns: &str,
    app: &str,
    dv: &Value,
    enabled: bool,
) -> Result<(), Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let Some(b) = deployments.get_opt(&baseline_name(app)).await? else {
        return Ok(());
    };
    let idle = b.spec.as_ref().and_then(|s| s.replicas) == Some(0);
    if enabled && idle {
        return Ok(());
    }
    if proxies_lag(ctx, ns, app).await?.is_some() {
        return Ok(());
    }
    if enabled {
        return scale(ctx, ns, &baseline_name(app), 0).await;
    }
    remove_baseline(
        ctx,
        ns,
        app,
        dv["metadata"]["uid"].as_str().unwrap_or_default(),
    )
    .await
}

/// Deletes Deployment and Service `app-baseline` when they are Sluice's
/// for the Deployment with `uid`.
pub(super) async fn remove_baseline(
    ctx: &Context,
    ns: &str,
    app: &str,
    uid: &str,
) -> Result<(), Error> {
    delete_owned::<Deployment>(&ctx.client, ns, &baseline_name(app), uid).await?;
    delete_owned::<Service>(&ctx.client, ns, &baseline_name(app), uid).await
}
