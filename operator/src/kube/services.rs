//! Service `app` as Sluice records and reads it: its original selector
//! and ports (kept in annotations while it points at the proxy), its
//! ready endpoints, and Service `app-canary`, pointed at the pods of the
//! release under way.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use super::annotations;
use super::api::{apply, to_value};
use super::objects::*;
use super::{Context, Error};

/// The user's Service as it was before Sluice took it over: the recorded
/// selector and target ports put back (itself when never taken over).
pub(super) fn original_service(service: &Value) -> Value {
    let mut s = service.clone();
    s["spec"]["selector"] = json!(original_selector(service));
    let annotations = &service["metadata"]["annotations"];
    if let Some(ports) = annotations[annotations::ORIGINAL_PORTS]
        .as_str()
        .and_then(|p| serde_json::from_str::<Value>(p).ok())
    {
        s["spec"]["ports"] = ports;
    } else if let Some(target) = annotations[annotations::ORIGINAL_TARGET_PORT]
        .as_str()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        && let Some(ports) = s["spec"]["ports"].as_array_mut()
    {
        // Written by Sluice before per-port records.
        for p in ports
            .iter_mut()
            .filter(|p| p["targetPort"] == json!(PROXY_HTTP_PORT))
        {
            p["targetPort"] = target.clone();
        }
    }
    s
}

/// The user's Service selector before Sluice pointed it at the proxy.
pub(super) fn original_selector(service: &Value) -> BTreeMap<String, String> {
    if let Some(saved) = service["metadata"]["annotations"][annotations::ORIGINAL_SELECTOR].as_str()
        && let Ok(sel) = serde_json::from_str(saved)
    {
        return sel;
    }
    string_map(&service["spec"]["selector"])
}

/// Whether Service `app` routes through the proxy: it selects exactly the
/// proxy's pods, and its ports are the user's own (the proxy listens on
/// them; Services taken over by Sluice before 0.2 targeted port 8080).
pub(super) fn points_at_proxy(service: &Value, app: &str) -> bool {
    string_map(&service["spec"]["selector"]) == proxy_pod_labels(app)
        && service["spec"]["ports"] == original_service(service)["spec"]["ports"]
}

/// Ready endpoints of Service `name` from its EndpointSlices, and how many
/// of them are the proxy's pods (`app-sluice-...`).
pub(super) async fn ready_endpoints(
    ctx: &Context,
    ns: &str,
    name: &str,
    app: &str,
) -> Result<(usize, usize), Error> {
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
    let mut ready = 0;
    let mut proxies = 0;
    let prefix = format!("{}-", proxy_name(app));
    for slice in slices.list(&lp).await?.items {
        for e in &slice.endpoints {
            // The API: an unset `ready` means ready.
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            ready += 1;
            if e.target_ref
                .as_ref()
                .and_then(|r| r.name.as_deref())
                .is_some_and(|n| n.starts_with(&prefix))
            {
                proxies += 1;
            }
        }
    }
    Ok((ready, proxies))
}

/// Whether traffic to Service `app` reaches the proxy now: the Service
/// selects it and its EndpointSlices list a ready proxy pod. Nothing is
/// scaled down before this holds.
pub(super) async fn proxy_serves(ctx: &Context, ns: &str, app: &str) -> Result<bool, Error> {
    let (_, proxies) = ready_endpoints(ctx, ns, app, app).await?;
    Ok(proxies > 0)
}

/// The label the Deployment controller puts on each template's pods.
pub(super) const TEMPLATE_HASH: &str = "pod-template-hash";

/// Points Service `app-canary` at the user's pods of the current release:
/// the Service's original selector plus their `pod-template-hash` (the
/// proxy's pods carry the original labels too, and must never be canary
/// endpoints).
///
/// The hash is the one of the ReplicaSet the Deployment owns whose pod
/// template is the Deployment's current template, as Kubernetes' own
/// Deployment controller finds its "new" ReplicaSet: the newest pod could
/// belong to an older revision still up (a rolled-back canary kept by
/// `sluice.dev/abort-scale-down-delay`, or pods of a rollout in progress).
/// When the Deployment owns ReplicaSets but none has its template yet, the
/// Service is left alone and the action retried. Only when no ReplicaSet
/// of the Deployment is visible at all does it fall back to the newest
/// pod's hash.
pub(super) async fn point_canary(
    ctx: &Context,
    ns: &str,
    app: &str,
    dv: &Value,
    owner: &Value,
) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let service = to_value(&services.get(app).await?)?;
    let mut selector = original_selector(&service);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let deployment_selector = selector_of(dv)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let hash = match current_template_hash(ctx, ns, app, dv, &deployment_selector).await? {
        Some(hash) => hash,
        None => newest_pod_hash(&pods, app, &deployment_selector).await?,
    };
    selector.insert(TEMPLATE_HASH.into(), hash);
    let original = original_service(&service);
    apply::<Service>(
        &ctx.client,
        ns,
        &service_copy(&original, &canary_service_name(app), &selector, owner, app),
    )
    .await
}

/// Keeps Service `app-primary`'s ports those of the user's Service (its
/// original ones): a port added or changed after the take-over is proxied
/// to the primary on that port, which must exist there too (the
/// `-primary` Service is otherwise written only when it is made). Written
/// only when they differ. `app-canary` takes the ports at each release's
/// start ([`point_canary`]).
pub(super) async fn sync_primary_ports(
    ctx: &Context,
    ns: &str,
    app: &str,
    dv: &Value,
    service: &Value,
) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let Some(current) = services.get_opt(&primary_name(app)).await? else {
        return Ok(());
    };
    let wanted = primary_service(&original_service(service), dv, app);
    if port_set(&to_value(&current)?["spec"]["ports"]) == port_set(&wanted["spec"]["ports"]) {
        return Ok(());
    }
    apply::<Service>(&ctx.client, ns, &wanted).await
}

/// A Service's ports as a sorted set of (name, port, protocol, target
/// port, app protocol), the API server's defaults filled in (TCP; the
/// target port is the port).
fn port_set(ports: &Value) -> Vec<(String, i64, String, String, String)> {
    let mut set: Vec<_> = ports
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p["port"].as_i64().unwrap_or(0);
            let target = match &p["targetPort"] {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => port.to_string(),
            };
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                port,
                p["protocol"].as_str().unwrap_or("TCP").to_string(),
                target,
                p["appProtocol"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    set.sort();
    set
}

/// The `pod-template-hash` of the ReplicaSet of Deployment `dv` that runs
/// its current pod template; None when the Deployment owns no ReplicaSet
/// visible here, an error when it owns some but none runs that template
/// yet.
async fn current_template_hash(
    ctx: &Context,
    ns: &str,
    app: &str,
    dv: &Value,
    deployment_selector: &str,
) -> Result<Option<String>, Error> {
    let uid = dv["metadata"]["uid"].as_str().unwrap_or_default();
    let replica_sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let owned: Vec<Value> = replica_sets
        .list(&ListParams::default().labels(deployment_selector))
        .await?
        .items
        .iter()
        .map(to_value)
        .collect::<Result<_, _>>()?;
    let owned: Vec<&Value> = owned
        .iter()
        .filter(|rs| {
            rs["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| {
                    o["kind"] == "Deployment"
                        && o["controller"] == true
                        && (o["uid"].as_str() == Some(uid) || uid.is_empty() && o["name"] == app)
                })
        })
        .collect();
    if owned.is_empty() {
        return Ok(None);
    }
    let want = canonical_json(&strip_defaults(&dv["spec"]["template"]));
    let current = owned.iter().find(|rs| {
        let mut template = rs["spec"]["template"].clone();
        if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
            labels.remove(TEMPLATE_HASH);
        }
        canonical_json(&strip_defaults(&template)) == want
    });
    match current.and_then(|rs| {
        rs["metadata"]["labels"][TEMPLATE_HASH]
            .as_str()
            .or_else(|| rs["spec"]["template"]["metadata"]["labels"][TEMPLATE_HASH].as_str())
    }) {
        Some(hash) => Ok(Some(hash.to_string())),
        None => Err(Error::Other(format!(
            "no ReplicaSet of {app} runs its current pod template (with a {TEMPLATE_HASH} label) yet; the canary Service is pointed once one does"
        ))),
    }
}

/// The `pod-template-hash` of the newest of the user's pods (not the
/// proxy's), for a cluster that shows no ReplicaSets.
async fn newest_pod_hash(
    pods: &Api<Pod>,
    app: &str,
    deployment_selector: &str,
) -> Result<String, Error> {
    let proxy = proxy_pod_labels(app);
    let newest = pods
        .list(&ListParams::default().labels(deployment_selector))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            let labels = p.labels();
            !proxy.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
    newest
        .and_then(|p| p.labels().get(TEMPLATE_HASH).cloned())
        .ok_or_else(|| {
            Error::Other(format!(
                "no pod of {app} carries a {TEMPLATE_HASH} label yet; the canary Service is pointed once there is"
            ))
        })
}
