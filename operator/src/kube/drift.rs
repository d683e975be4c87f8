//! Drift repair: what a re-apply of the user's manifests (a GitOps sync)
//! undoes is put back. Service `app` selects the proxy again (what the
//! user changed becomes the new original), and between releases the
//! user's Deployment runs no pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::events::EventType;
use serde_json::{Value, json};

use super::annotations;
use super::api::{publish, scale, sluice_post};
use super::objects::*;
use super::services::{original_service, points_at_proxy, proxy_serves};
use super::{Context, Error, FIELD_MANAGER};

/// Puts Service `app` back through the proxy when something changed it. A
/// `kubectl apply` of the original manifest merges the user's selector into
/// the proxy's (still only the proxy's pods match: they carry the user's
/// labels too); a forced server-side apply replaces it (the proxy's pods and
/// the canary's match; nobody loses endpoints). Either way it is put back.
/// What the user changed becomes the new original (the selector without the
/// proxy's keys), so the way back honours it. One update.
pub(super) async fn restore_routing(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    app: &str,
    service: &Value,
) -> Result<bool, Error> {
    if points_at_proxy(service, app) {
        return Ok(false);
    }
    let proxy_labels = proxy_pod_labels(app);
    let mut s = original_service(service);
    if !s["metadata"]["annotations"].is_object() {
        s["metadata"]["annotations"] = json!({});
    }
    let drifted = string_map(&service["spec"]["selector"]);
    let intent: BTreeMap<String, String> = drifted
        .iter()
        .filter(|(k, _)| !proxy_labels.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let selector_drifted = drifted != proxy_labels;
    if !intent.is_empty() {
        s["metadata"]["annotations"][annotations::ORIGINAL_SELECTOR] =
            json!(serde_json::to_string(&intent)?);
    }
    if let Some(a) = s["metadata"]["annotations"].as_object_mut() {
        a.remove(annotations::ORIGINAL_TARGET_PORT);
        a.remove(annotations::ORIGINAL_PORTS);
    }
    s["spec"]["selector"] = json!(proxy_labels);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    services
        .replace(app, &sluice_post(), &serde_json::from_value(s)?)
        .await?;
    if selector_drifted {
        publish(
            ctx,
            d,
            EventType::Warning,
            "ServiceDrift",
            format!(
                "Service {app} was changed to select {} (a re-apply of its manifest?); it selects the Sluice proxy again. Have your GitOps tool ignore spec.selector of this Service (see docs/gitops.md)",
                serde_json::to_string(&drifted)?
            ),
        )
        .await;
    }
    Ok(true)
}

/// Between releases the user's Deployment (the canary) runs no pods. A
/// re-apply of its manifest scales it back up; it is scaled down again,
/// only once Service `app` is served by the proxy.
///
/// Only someone else's scale is drift. Who set `spec.replicas` last is read
/// from `managedFields` (a write that changes a field takes it over): when
/// every owner is Sluice's field manager, the pods are the operator's own
/// (a canary it scaled up, read before its own scale-down reached the
/// cache), scaled to 0 without a `DeploymentDrift` Event; otherwise the
/// Event names the field managers that scaled it.
pub(super) async fn settle_idle_canary(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    app: &str,
) -> Result<(), Error> {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if replicas == 0 || !proxy_serves(ctx, ns, app).await? {
        return Ok(());
    }
    scale(ctx, ns, app, 0).await?;
    let managers = replicas_managers(d);
    let others: Vec<&str> = managers
        .iter()
        .map(String::as_str)
        .filter(|m| *m != FIELD_MANAGER)
        .collect();
    if managers.is_empty() || !others.is_empty() {
        let by = if others.is_empty() {
            String::new()
        } else {
            format!(" by {}", others.join(", "))
        };
        publish(
            ctx,
            d,
            EventType::Normal,
            "DeploymentDrift",
            format!(
                "{app} was scaled to {replicas}{by} outside a release (a re-apply of its manifest?); between releases it runs no pods (the primary {} serves), so it is scaled to 0 again",
                primary_name(app)
            ),
        )
        .await;
    }
    Ok(())
}

/// The field managers that own a Deployment's `spec.replicas`.
fn replicas_managers(d: &Deployment) -> Vec<String> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .is_some_and(|f| f.0["f:spec"]["f:replicas"].is_object())
        })
        .filter_map(|e| e.manager.clone())
        .collect()
}
