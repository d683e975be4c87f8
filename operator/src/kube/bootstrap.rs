//! Bootstrap: the first reconcile of an annotated Deployment creates
//! everything Sluice needs (`app-primary`, Services `app-primary` and
//! `app-canary`, the proxy with its ConfigMap, RBAC, admin Secret and
//! PodDisruptionBudget, `-primary` config copies, HPA twins). Traffic does
//! not move yet: that is [`super::takeover`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use super::annotations::{self, Router, Settings};
use super::api::{add_finalizer, apply, ensure_ours, merge_patch, rfc3339, to_value};
use super::inputs::{config_data, copy_configs};
use super::knobs::CanaryScale;
use super::objects::*;
use super::proxy::{at_rest, ensure_proxy};
use super::services::{TEMPLATE_HASH, original_service};
use super::{Context, Error, KubeStatus};

pub(super) fn random_token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (seed >> (i % 16 * 8)) as u8);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates everything Sluice needs for `app`; traffic does not move yet.
/// First checks that no object it would write exists without being its
/// own: then nothing at all is created.
#[allow(clippy::too_many_arguments)]
pub(super) async fn bootstrap(
    ctx: &Context,
    user: &Deployment,
    ns: &str,
    app: &str,
    d: &Value,
    service: &Value,
    ports: &[ProxiedPort],
    revision: &str,
    settings: &Settings,
) -> Result<(), Error> {
    let owner = owner_reference(d);
    let uid = owner["uid"].as_str().unwrap_or_default().to_string();
    let c = &ctx.client;
    let refs = config_refs(&d["spec"]["template"]);
    for name in [primary_name(app), proxy_name(app)] {
        ensure_ours::<Deployment>(c, ns, &name, &uid).await?;
    }
    for name in [primary_name(app), canary_service_name(app), proxy_name(app)] {
        ensure_ours::<Service>(c, ns, &name, &uid).await?;
    }
    ensure_ours::<ConfigMap>(c, ns, &proxy_name(app), &uid).await?;
    ensure_ours::<Secret>(c, ns, &admin_secret_name(app), &uid).await?;
    for name in &refs.configmaps {
        ensure_ours::<ConfigMap>(c, ns, &config_copy_name(app, name), &uid).await?;
    }
    for name in &refs.secrets {
        ensure_ours::<Secret>(c, ns, &config_copy_name(app, name), &uid).await?;
    }
    ensure_ours::<ServiceAccount>(c, ns, &proxy_name(app), &uid).await?;
    ensure_ours::<Role>(c, ns, &proxy_name(app), &uid).await?;
    ensure_ours::<RoleBinding>(c, ns, &proxy_name(app), &uid).await?;
    ensure_ours::<PodDisruptionBudget>(c, ns, &proxy_name(app), &uid).await?;
    // Nothing in the way: from here on Sluice manages this Deployment.
    if !user
        .finalizers()
        .iter()
        .any(|f| f == annotations::FINALIZER)
    {
        add_finalizer(ctx, user, ns, app).await?;
    }

    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1).max(1);
    copy_configs(ctx, ns, app, &d["spec"]["template"], &owner).await?;
    // After a take-over (app-primary deleted and made again) the Service
    // points at the proxy: its copies take the recorded original ports.
    let original = original_service(service);
    let selector: BTreeMap<String, String> = string_map(&original["spec"]["selector"]);
    apply::<Service>(c, ns, &primary_service(&original, d, app)).await?;
    // The canary Service selects the user's pods of the release under way
    // (their pod-template-hash, set when the canary is ready): the proxy's
    // pods carry the user's labels too and must never be its endpoints.
    let mut canary_selector = selector.clone();
    canary_selector.insert(TEMPLATE_HASH.into(), "none".into());
    apply::<Service>(
        c,
        ns,
        &service_copy(
            &original,
            &canary_service_name(app),
            &canary_selector,
            &owner,
            app,
        ),
    )
    .await?;
    // The Gateway API router moves an HTTPRoute's weights: no proxy.
    if settings.router == Router::Proxy {
        // The admin token is made once: re-applying would change it under the
        // running proxies.
        let secrets: Api<Secret> = Api::namespaced(c.clone(), ns);
        if secrets.get_opt(&admin_secret_name(app)).await?.is_none() {
            apply::<Secret>(c, ns, &admin_secret(app, &random_token(), &owner)).await?;
        }
        for (kind, object) in proxy_rbac(app, &owner) {
            match kind.as_str() {
                "serviceaccounts" => apply::<ServiceAccount>(c, ns, &object).await?,
                "roles" => apply::<Role>(c, ns, &object).await?,
                _ => apply::<RoleBinding>(c, ns, &object).await?,
            }
        }
        apply::<ConfigMap>(
            c,
            ns,
            &proxy_configmap_for(
                app,
                ns,
                ports,
                0,
                &owner,
                &at_rest(&settings.plan.traffic),
                &settings.route.at_rest(),
            ),
        )
        .await?;
        ensure_proxy(ctx, ns, app, d, ports, &selector, &settings.proxy).await?;
        apply::<Service>(c, ns, &proxy_admin_service(app, &owner)).await?;
    }
    let (cm_data, secret_data) = config_data(ctx, ns, &d["spec"]["template"]).await?;
    let mut primary = primary_deployment(d, replicas, &owner, &config_hash(&cm_data, &secret_data));
    let status = KubeStatus {
        phase: "Initializing".into(),
        revision: revision.to_string(),
        primary_revision: revision.to_string(),
        original_replicas: d["spec"]["replicas"].as_i64().unwrap_or(1),
        message: format!(
            "waiting for {} and the proxy to be ready",
            primary_name(app)
        ),
        steps: settings
            .plan
            .steps_bp
            .iter()
            .map(|b| f64::from(*b) / 100.0)
            .collect(),
        last_transition: rfc3339((ctx.now)()),
        observed_generation: d["metadata"]["generation"].as_i64().unwrap_or(0),
        ..KubeStatus::default()
    };
    // The first primary is a promoted revision too: a revert to it later
    // is inside the rollback window.
    let mut status = status;
    status.remember_promoted(revision, settings.rollback_window);
    primary["metadata"]["annotations"] =
        json!({annotations::STATUS: serde_json::to_string(&status)?});
    apply::<Deployment>(c, ns, &primary).await?;
    sync_hpas(ctx, ns, app, d, None).await?;
    Ok(())
}

/// HPAs aimed at `app` get a twin aimed at `app-primary`, with the
/// user's own bounds.
///
/// `canary`: during a release with `sluice.dev/canary-scale:
/// proportional`, the scaling and weight in force. The user's HPA aimed at
/// `app` (which scales the canary) then has its `minReplicas` and
/// `maxReplicas` scaled like the canary's replicas (`ceil(n × weight /
/// 100)`, at least 1), so it does not undo them; its own bounds are kept
/// in its annotation `sluice.dev/original-bounds` and put back when the
/// release ends (`None`), as they are when Sluice lets the app go
/// ([`restore_hpa_bounds`]).
pub(super) async fn sync_hpas(
    ctx: &Context,
    ns: &str,
    app: &str,
    d: &Value,
    canary: Option<(CanaryScale, u32)>,
) -> Result<(), Error> {
    sync_hpas_with(ctx, ns, app, d, canary, false).await
}

/// Scales the bounds of the user's HPA on `app` for a proportional
/// release at `bp` (the canary's weight, or its mirrored share if larger),
/// before the canary itself is scaled.
pub(super) async fn scale_hpa_bounds(
    ctx: &Context,
    ns: &str,
    app: &str,
    d: &Value,
    scaling: CanaryScale,
    bp: u32,
) -> Result<(), Error> {
    sync_hpas_with(ctx, ns, app, d, Some((scaling, bp)), true).await
}

async fn sync_hpas_with(
    ctx: &Context,
    ns: &str,
    app: &str,
    d: &Value,
    canary: Option<(CanaryScale, u32)>,
    exact: bool,
) -> Result<(), Error> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
    let owner = owner_reference(d);
    for hpa in hpas.list(&ListParams::default()).await?.items {
        let target = hpa.spec.as_ref().map(|s| &s.scale_target_ref);
        if !target.is_some_and(|t| t.kind == "Deployment" && t.name == app) {
            continue;
        }
        let mut user = to_value(&hpa)?;
        let original = original_bounds(&user);
        if let Some((min, max)) = original {
            user["spec"]["minReplicas"] = json!(min);
            user["spec"]["maxReplicas"] = json!(max);
        }
        apply::<HorizontalPodAutoscaler>(&ctx.client, ns, &hpa_twin(&user, app, &owner)).await?;
        let name = hpa.name_any();
        let (min, max) = bounds(&user);
        match canary {
            // The release's routing action sets the bounds before each
            // scale ([`super::release`]); a reconcile only brings an HPA
            // not scaled yet (created or restored mid-release) in line,
            // so the two never disagree (a mirrored share counts there).
            Some((scaling, bp)) if original.is_none() || exact => {
                let want = (scaling.replicas(min, bp), scaling.replicas(max, bp));
                if bounds(&to_value(&hpa)?) != want || original.is_none() {
                    merge_patch::<HorizontalPodAutoscaler>(
                        &ctx.client,
                        ns,
                        &name,
                        json!({
                            "metadata": {"annotations": {annotations::ORIGINAL_BOUNDS: json!({"minReplicas": min, "maxReplicas": max}).to_string()}},
                            "spec": {"minReplicas": want.0, "maxReplicas": want.1},
                        }),
                    )
                    .await?;
                }
            }
            Some(_) => {}
            None if original.is_some() => put_bounds_back(ctx, ns, &name, min, max).await?,
            None => {}
        }
    }
    Ok(())
}

/// Puts the user's own bounds back on every HPA aimed at `app`.
pub(super) async fn restore_hpa_bounds(ctx: &Context, ns: &str, app: &str) -> Result<(), Error> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
    for hpa in hpas.list(&ListParams::default()).await?.items {
        let target = hpa.spec.as_ref().map(|s| &s.scale_target_ref);
        if !target.is_some_and(|t| t.kind == "Deployment" && t.name == app) {
            continue;
        }
        if let Some((min, max)) = original_bounds(&to_value(&hpa)?) {
            put_bounds_back(ctx, ns, &hpa.name_any(), min, max).await?;
        }
    }
    Ok(())
}

async fn put_bounds_back(
    ctx: &Context,
    ns: &str,
    name: &str,
    min: i64,
    max: i64,
) -> Result<(), Error> {
    merge_patch::<HorizontalPodAutoscaler>(
        &ctx.client,
        ns,
        name,
        json!({
            "metadata": {"annotations": {annotations::ORIGINAL_BOUNDS: null}},
            "spec": {"minReplicas": min, "maxReplicas": max},
        }),
    )
    .await
}

/// An HPA's (min, max); min defaults to 1, as the API's.
fn bounds(hpa: &Value) -> (i64, i64) {
    (
        hpa["spec"]["minReplicas"].as_i64().unwrap_or(1),
        hpa["spec"]["maxReplicas"].as_i64().unwrap_or(1),
    )
}

/// The user's own bounds, recorded while a proportional release scales them.
fn original_bounds(hpa: &Value) -> Option<(i64, i64)> {
    let saved: Value = serde_json::from_str(
        hpa["metadata"]["annotations"][annotations::ORIGINAL_BOUNDS].as_str()?,
    )
    .ok()?;
    Some((
        saved["minReplicas"].as_i64()?,
        saved["maxReplicas"].as_i64()?,
    ))
}
