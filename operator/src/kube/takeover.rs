//! Take-over: once `app-primary` and the proxy are ready, Service `app`
//! selects the proxy; once the proxy's endpoints serve it and every
//! replica has its config, the user's Deployment (from now on the canary)
//! scales to 0 and the app is `Initialized`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::{Value, json};

use super::annotations;
use super::api::{merge_patch, publish, rfc3339, save_status, sluice_post, to_value};
use super::drift::restore_routing;
use super::objects::*;
use super::proxy::proxies_lag;
use super::services::{original_selector, points_at_proxy, proxy_serves};
use super::{Context, Error, KubeStatus};

/// Once `app-primary` and the proxy are ready: Service `app` selects the
/// proxy, then the user's Deployment (now the canary) scales to 0.
#[allow(clippy::too_many_arguments)]
pub(super) async fn take_over(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    app: &str,
    primary: &Deployment,
    service: &Value,
    mut status: KubeStatus,
) -> Result<Action, Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let proxy = deployments.get_opt(&proxy_name(app)).await?;
    let ready = rolled_out(&to_value(primary)?)
        && proxy
            .as_ref()
            .map(to_value)
            .transpose()?
            .is_some_and(|p| rolled_out(&p));
    if !ready {
        return Ok(Action::requeue(ctx.poll));
    }
    if !points_at_proxy(service, app) {
        if !service["metadata"]["annotations"][annotations::ORIGINAL_SELECTOR].is_null() {
            // Taken over before, then changed (a re-apply): restore.
            restore_routing(ctx, d, ns, app, service).await?;
            return Ok(Action::requeue(ctx.poll));
        }
        // Only the selector changes: the proxy listens on the ports the
        // Service already targets.
        let mut s = service.clone();
        let selector = original_selector(service);
        s["spec"]["selector"] = json!(proxy_pod_labels(app));
        if !s["metadata"]["annotations"].is_object() {
            s["metadata"]["annotations"] = json!({});
        }
        s["metadata"]["annotations"][annotations::ORIGINAL_SELECTOR] =
            json!(serde_json::to_string(&selector)?);
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
        services
            .replace(app, &sluice_post(), &serde_json::from_value(s)?)
            .await?;
        // The user's pods go only once the proxy's endpoints are ready.
        return Ok(Action::requeue(ctx.poll));
    }

    if !proxy_serves(ctx, ns, app).await? {
        return Ok(Action::requeue(ctx.poll));
    }
    if let Some(lag) = proxies_lag(ctx, ns, app).await? {
        tracing::info!(namespace = ns, app, "take-over waits: {lag}");
        return Ok(Action::requeue(ctx.poll));
    }
    merge_patch::<Deployment>(&ctx.client, ns, app, json!({"spec": {"replicas": 0}})).await?;
    status.bootstrapped = true;
    status.phase = "Initialized".into();
    status.message = format!(
        "Service {app} now goes through the Sluice proxy to {}",
        primary_name(app)
    );
    status.last_transition = rfc3339((ctx.now)());
    save_status(ctx, ns, app, &status).await?;
    publish(
        ctx,
        d,
        EventType::Normal,
        "Initialized",
        status.message.clone(),
    )
    .await;
    Ok(Action::requeue(ctx.poll))
}
