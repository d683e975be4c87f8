//! The Gateway API router (`sluice.dev/router: gateway-api` with
//! `sluice.dev/httproute: NAME`): a release moves the weights of an
//! HTTPRoute's backendRefs instead of taking Service `app` over with
//! Sluice's proxy. Any Gateway API implementation then serves the split.
//!
//! The rules this module keeps:
//!
//! - **Which rules Sluice manages**: those of the named HTTPRoute (in the
//!   Deployment's namespace) whose backendRefs name Service `app`,
//!   `app-primary` or `app-canary` (core group, kind Service, no other
//!   namespace). Every backendRef of such a rule must be one of those three:
//!   a rule that also sends to another Service is refused with a Warning
//!   Event (`RouteUnsupported`), nothing written, since splitting a share
//!   of a share would change the other Service's traffic too. A route with
//!   no such rule is refused the same way.
//! - **What a managed rule becomes**: exactly two backendRefs, copies of the
//!   rule's first backendRef of the app (its port and filters kept) named
//!   `app-primary` with weight `10000 − w` and `app-canary` with weight `w`,
//!   `w` being the canary's weight in basis points: the split is exact to
//!   0.01 %. Between releases the canary's weight is 0 (it stays listed).
//! - **Field ownership**: the weights are written by server-side apply with
//!   the field manager `sluice`, forced. In the published HTTPRoute schema
//!   `spec.rules` and each rule's `backendRefs` are atomic lists, so an
//!   apply cannot own a weight alone: Sluice applies the route's whole
//!   `spec.rules` (every rule as it is live, the managed rules' backendRefs
//!   replaced) and so owns `spec.rules`; everything else (`hostnames`,
//!   `parentRefs`, labels, annotations but its own) stays with whoever set
//!   it. A GitOps tool re-applying the route must therefore not apply
//!   `spec.rules[].backendRefs` of the managed rules as in Git: with Argo CD,
//!   `ignoreDifferences` on `.spec.rules[].backendRefs` (jqPathExpressions)
//!   with the sync option `RespectIgnoreDifferences=true` (it then applies
//!   the live backendRefs, which is no change and no conflict); with Flux,
//!   the annotation `kustomize.toolkit.fluxcd.io/ssa: IfNotPresent` on the
//!   HTTPRoute (created once, never re-applied). A re-apply that changes
//!   only other fields never undoes a decided weight.
//! - **A fight is repaired**: a write that changes the managed rules'
//!   backendRefs (a forced apply, an update) reconciles the app at once
//!   (the operator watches HTTPRoutes it releases through, see
//!   [`apps_of_route`]; when the Gateway API's CRDs were not installed at
//!   its start, at the next reconcile): Sluice applies the weights in force again
//!   and publishes a Warning Event `RouteDrift`, as it does for Service
//!   drift.
//! - **The way back**: the first apply records, in the route's annotation
//!   `sluice.dev/original-backendrefs`, each managed rule's backendRefs as
//!   they were (by rule index). When the Deployment's `sluice.dev/canary`
//!   annotation is removed (or the Deployment deleted), once the user's
//!   Deployment serves again, the managed rules get those backendRefs back
//!   (a rule with none recorded gets the app's Service on the rule's port)
//!   and the annotation goes, in one merge patch: Sluice stops applying.
//! - Service `app` is never changed; `app-primary` and `app-canary` are
//!   Sluice's copies of it (see [`super::bootstrap`]), so the route's port
//!   is valid on both.
//!
//! What it does not do: wait for the implementation to program the route
//! (implementations report it in `status.parents[].conditions`, and not all
//! do so per generation), or move GRPCRoutes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::{Value, json};

use super::annotations::Router;
use super::api::{merge_patch, publish, rfc3339, save_status, to_value};
use super::knobs::RouteSettings;
use super::objects::{ProxiedPort, canary_service_name, primary_name, rolled_out};
use super::{Context, Error, FIELD_MANAGER, KubeStatus};
use crate::plan::Traffic;

pub const GROUP: &str = "gateway.networking.k8s.io";
/// On the HTTPRoute: the managed rules' backendRefs before Sluice (JSON,
/// `{"<rule index>": [backendRef, ...]}`).
pub const ORIGINAL_BACKEND_REFS: &str = "sluice.dev/original-backendrefs";
/// Weights are in basis points: the two weights of a managed rule add up
/// to this.
pub const TOTAL_WEIGHT: u32 = 10_000;

/// The namespaced HTTPRoute API (`gateway.networking.k8s.io/v1`).
pub fn http_routes(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &http_route_resource())
}

/// The HTTPRoute API (`gateway.networking.k8s.io/v1`) of one namespace, or
/// of every namespace the operator watches.
pub fn http_routes_in(client: &kube::Client, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) => http_routes(client, ns),
        None => Api::all_with(client.clone(), &http_route_resource()),
    }
}

/// HTTPRoute's `ApiResource`, the dynamic type of its watch.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// Whether the cluster serves HTTPRoutes (the Gateway API's CRDs are
/// installed), asked once at start: without them the operator does not
/// watch HTTPRoutes (a watch of a missing resource fails at every retry).
/// Installing the CRDs later needs a restart of the operator for the watch;
/// releases through a route work without it, drift then being repaired at
/// the next reconcile.
pub async fn http_routes_served(api: &Api<DynamicObject>) -> bool {
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(e) => {
            tracing::info!(error = %e, "HTTPRoutes are not served (no Gateway API CRDs, or no right to list them): not watching them");
            false
        }
    }
}

/// The Deployments a change to an HTTPRoute should reconcile: a route
/// Sluice releases through (it carries [`ORIGINAL_BACKEND_REFS`]) names
/// `app-primary` and `app-canary` in its managed rules; any write to it (a
/// GitOps re-apply, a forced fight over the backendRefs) reconciles `app`
/// at once, so drift is undone in seconds, as for Services.
pub fn apps_of_route(route: &DynamicObject) -> Vec<(String, String)> {
    let Some(ns) = route.metadata.namespace.clone() else {
        return Vec::new();
    };
    let annotations = route.metadata.annotations.as_ref();
    if !annotations.is_some_and(|a| a.contains_key(ORIGINAL_BACKEND_REFS)) {
        return Vec::new();
    }
    let mut apps: Vec<String> = route.data["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rule| rule["backendRefs"].as_array().into_iter().flatten())
        .filter_map(|r| r["name"].as_str())
        .filter_map(|n| {
            n.strip_suffix("-primary")
                .or_else(|| n.strip_suffix("-canary"))
        })
        .map(str::to_string)
        .collect();
    // The recorded originals name the app itself (a forced re-apply from
    // Git puts those back, without the -primary/-canary copies).
    if let Some(original) = annotations
        .and_then(|a| a.get(ORIGINAL_BACKEND_REFS))
        .and_then(|text| serde_json::from_str::<BTreeMap<String, Value>>(text).ok())
    {
        for refs in original.values() {
            apps.extend(
                refs.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["name"].as_str().map(str::to_string)),
            );
        }
    }
    apps.sort();
    apps.dedup();
    apps.into_iter().map(|app| (ns.clone(), app)).collect()
}

/// Whether a backendRef names Service `app`, `app-primary` or
/// `app-canary` in the route's own namespace.
fn is_app_ref(r: &Value, app: &str, ns: &str) -> bool {
    let group = r["group"].as_str().unwrap_or("");
    let kind = r["kind"].as_str().unwrap_or("Service");
    let namespace = r["namespace"].as_str().unwrap_or(ns);
    let name = r["name"].as_str().unwrap_or_default();
    group.is_empty()
        && kind == "Service"
        && namespace == ns
        && (name == app || name == primary_name(app) || name == canary_service_name(app))
}

/// The indices of the rules Sluice manages: some backendRef names the app.
pub fn managed_rules(route: &Value, app: &str, ns: &str) -> Vec<usize> {
    route["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, rule)| {
            rule["backendRefs"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| is_app_ref(r, app, ns)))
        })
        .map(|(i, _)| i)
        .collect()
}

/// The route's `spec.rules` with every managed rule's backendRefs set to
/// `app-primary` at `TOTAL_WEIGHT − canary_bp` and `app-canary` at
/// `canary_bp`; Err says why the route cannot be released through.
pub fn weighted_rules(route: &Value, app: &str, ns: &str, canary_bp: u32) -> Result<Value, String> {
    let name = route["metadata"]["name"].as_str().unwrap_or_default();
    let managed = managed_rules(route, app, ns);
    if managed.is_empty() {
        return Err(format!(
            "HTTPRoute {ns}/{name} has no rule whose backendRefs name Service {app} (or {}, {}): nothing to release through",
            primary_name(app),
            canary_service_name(app)
        ));
    }
    let canary_bp = canary_bp.min(TOTAL_WEIGHT);
    let mut rules = route["spec"]["rules"].clone();
    for i in managed {
        let rule = &mut rules[i];
        let refs = rule["backendRefs"].as_array().cloned().unwrap_or_default();
        if let Some(other) = refs.iter().find(|r| !is_app_ref(r, app, ns)) {
            return Err(format!(
                "HTTPRoute {ns}/{name} rule {i} sends to {} as well as to Service {app}: Sluice releases only through rules whose every backendRef is {app}; give {app} a rule of its own",
                other["name"].as_str().unwrap_or("?")
            ));
        }
        let template = refs[0].clone();
        let with = |service: String, weight: u32| {
            let mut r = template.clone();
            r["name"] = json!(service);
            r["weight"] = json!(weight);
            r
        };
        rule["backendRefs"] = json!([
            with(primary_name(app), TOTAL_WEIGHT - canary_bp),
            with(canary_service_name(app), canary_bp),
        ]);
    }
    Ok(rules)
}

/// The canary's weight a managed rule gives, in basis points of the
/// rule's total (None: the rule is not split between primary and canary).
pub fn canary_share_bp(rule: &Value, app: &str) -> Option<u32> {
    let refs = rule["backendRefs"].as_array()?;
    let weight = |name: &str| {
        refs.iter()
            .filter(|r| r["name"].as_str() == Some(name))
            .map(|r| r["weight"].as_u64().unwrap_or(1))
            .sum::<u64>()
    };
    let (p, c) = (
        weight(&primary_name(app)),
        weight(&canary_service_name(app)),
    );
    (p + c > 0).then(|| ((c * u64::from(TOTAL_WEIGHT)) / (p + c)) as u32)
}

/// What the managed rules' backendRefs are now, to record before the
/// first apply: by rule index.
fn current_refs(route: &Value, app: &str, ns: &str) -> BTreeMap<String, Value> {
    managed_rules(route, app, ns)
        .into_iter()
        .map(|i| {
            (
                i.to_string(),
                route["spec"]["rules"][i]["backendRefs"].clone(),
            )
        })
        .collect()
}

async fn get_route(ctx: &Context, ns: &str, route: &str) -> Result<Value, Error> {
    match http_routes(&ctx.client, ns).get_opt(route).await? {
        Some(r) => Ok(serde_json::to_value(r)?),
        None => Err(Error::Other(format!(
            "HTTPRoute {ns}/{route} (sluice.dev/httproute) not found"
        ))),
    }
}

/// Why the route cannot be released through (it is missing, or has no
/// rule or a mixed rule for the app), checked before anything is created.
pub(super) async fn route_problem(
    ctx: &Context,
    ns: &str,
    app: &str,
    route: &str,
) -> Result<Option<String>, Error> {
    match get_route(ctx, ns, route).await {
        Ok(live) => Ok(weighted_rules(&live, app, ns, 0).err()),
        Err(Error::Other(why)) => Ok(Some(why)),
        Err(e) => Err(e),
    }
}

/// Sets the canary's weight on the route's managed rules (no write when
/// they already carry it). Returns whether it wrote.
pub(super) async fn set_route_weight(
    ctx: &Context,
    ns: &str,
    app: &str,
    route: &str,
    canary_bp: u32,
) -> Result<bool, Error> {
    let live = get_route(ctx, ns, route).await?;
    let rules = weighted_rules(&live, app, ns, canary_bp).map_err(Error::Other)?;
    let recorded = live["metadata"]["annotations"][ORIGINAL_BACKEND_REFS]
        .as_str()
        .map(str::to_string);
    if recorded.is_some() && rules == live["spec"]["rules"] {
        return Ok(false);
    }
    let recorded = match recorded {
        Some(r) => r,
        None => serde_json::to_string(&current_refs(&live, app, ns))?,
    };
    let config = json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "HTTPRoute",
        "metadata": {
            "name": route,
            "namespace": ns,
            "annotations": {ORIGINAL_BACKEND_REFS: recorded},
        },
        "spec": {"rules": rules},
    });
    http_routes(&ctx.client, ns)
        .patch(
            route,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&config),
        )
        .await?;
    Ok(true)
}

/// Drift repair: the route carries the weight in force again after
/// another writer changed the managed rules' backendRefs, with a Warning
/// Event. A route recreated without Sluice's record (`kubectl replace
/// --force`, a GitOps tool's delete and create) is repaired too, its
/// backendRefs recorded afresh: left alone it would send every request to
/// the app's Service, which selects only the canary's pods.
pub(super) async fn repair_route(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    app: &str,
    route: &str,
    canary_bp: u32,
) -> Result<(), Error> {
    if set_route_weight(ctx, ns, app, route, canary_bp).await? {
        publish(
            ctx,
            d,
            EventType::Warning,
            "RouteDrift",
            format!(
                "HTTPRoute {ns}/{route}: the backendRefs of the rules that point at {app} were changed by another writer; Sluice applied its weights again (canary {}%). Have your GitOps tool ignore spec.rules[].backendRefs of this route (see docs/kubernetes.md, Gateway API)",
                f64::from(canary_bp) / 100.0
            ),
        )
        .await;
    }
    Ok(())
}

/// The way back: the managed rules get their recorded backendRefs again
/// (the app's Service on the rule's port when none is recorded) and the
/// record goes. Nothing to do for a route Sluice never wrote or that is
/// gone.
pub(super) async fn restore_route(
    ctx: &Context,
    ns: &str,
    app: &str,
    route: &str,
) -> Result<(), Error> {
    let api = http_routes(&ctx.client, ns);
    let Some(live) = api.get_opt(route).await? else {
        return Ok(());
    };
    let live = serde_json::to_value(live)?;
    let Some(recorded) = live["metadata"]["annotations"][ORIGINAL_BACKEND_REFS].as_str() else {
        return Ok(());
    };
    let recorded: BTreeMap<String, Value> = serde_json::from_str(recorded).unwrap_or_default();
    let mut rules = live["spec"]["rules"].clone();
    for i in managed_rules(&live, app, ns) {
        let rule = &mut rules[i];
        rule["backendRefs"] = match recorded.get(&i.to_string()) {
            Some(refs) => refs.clone(),
            None => {
                let mut r = rule["backendRefs"][0].clone();
                r["name"] = json!(app);
                if let Some(o) = r.as_object_mut() {
                    o.remove("weight");
                }
                json!([r])
            }
        };
    }
    let patch = json!({
        "metadata": {"annotations": {ORIGINAL_BACKEND_REFS: null}},
        "spec": {"rules": rules},
    });
    api.patch(
        route,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// A release's weight, through the app's router: the proxy's ConfigMap
/// ([`super::proxy::set_weight`]) or the HTTPRoute.
#[allow(clippy::too_many_arguments)]
pub(super) async fn set_weight(
    ctx: &Context,
    ns: &str,
    app: &str,
    ports: &[ProxiedPort],
    bp: u32,
    owner: &Value,
    traffic: &Traffic,
    route: &RouteSettings,
    router: &Router,
) -> Result<(), Error> {
    match router {
        Router::Proxy => {
            super::proxy::set_weight(ctx, ns, app, ports, bp, owner, traffic, route).await
        }
        Router::GatewayApi { httproute } => set_route_weight(ctx, ns, app, httproute, bp)
            .await
            .map(|_| ()),
    }
}

/// Between releases: the proxy's at-rest config
/// ([`super::proxy::settle_route`]), or the HTTPRoute all to the primary.
#[allow(clippy::too_many_arguments)]
pub(super) async fn settle_route(
    ctx: &Context,
    ns: &str,
    app: &str,
    ports: &[ProxiedPort],
    owner: &Value,
    traffic: &Traffic,
    route: &RouteSettings,
    router: &Router,
) -> Result<(), Error> {
    match router {
        Router::Proxy => {
            super::proxy::settle_route(ctx, ns, app, ports, owner, traffic, route).await
        }
        Router::GatewayApi { httproute } => set_route_weight(ctx, ns, app, httproute, 0)
            .await
            .map(|_| ()),
    }
}

/// Take-over through the route: once `app-primary` is ready, the route's
/// managed rules send everything to it, then the user's Deployment (from
/// now on the canary) scales to 0 and the app is `Initialized`. Service
/// `app` is not touched. A route that cannot be released through stops
/// here with a Warning Event (`RouteUnsupported`), nothing scaled.
pub(super) async fn take_over(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    app: &str,
    route: &str,
    primary: &Deployment,
    mut status: KubeStatus,
) -> Result<kube::runtime::controller::Action, Error> {
    use kube::runtime::controller::Action;
    if !rolled_out(&to_value(primary)?) {
        return Ok(Action::requeue(ctx.poll));
    }
    match set_route_weight(ctx, ns, app, route, 0).await {
        Ok(_) => {}
        Err(Error::Other(why)) => {
            publish(ctx, d, EventType::Warning, "RouteUnsupported", why).await;
            return Ok(Action::requeue(std::time::Duration::from_secs(60)));
        }
        Err(e) => return Err(e),
    }
    merge_patch::<Deployment>(&ctx.client, ns, app, json!({"spec": {"replicas": 0}})).await?;
    status.bootstrapped = true;
    status.httproute = Some(route.to_string());
    status.phase = "Initialized".into();
    status.message = format!(
        "HTTPRoute {route} now sends the traffic of Service {app} to {}",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn route(rules: Value) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {"rules": rules}})
    }

    #[test]
    fn only_rules_that_name_the_app_are_managed_and_split_exactly() {
        let r = route(json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": [{"name": "api", "port": 80}]},
            {"backendRefs": [{"group": "", "kind": "Service", "name": "app", "port": 8080, "weight": 3}]},
        ]));
        assert_eq!(managed_rules(&r, "app", "shop"), vec![1]);
        let rules = weighted_rules(&r, "app", "shop", 1234).unwrap();
        assert_eq!(rules[0], r["spec"]["rules"][0], "other rules as they were");
        assert_eq!(
            rules[1]["backendRefs"],
            json!([
                {"group": "", "kind": "Service", "name": "app-primary", "port": 8080, "weight": 8766},
                {"group": "", "kind": "Service", "name": "app-canary", "port": 8080, "weight": 1234},
            ])
        );
        assert_eq!(canary_share_bp(&rules[1], "app"), Some(1234));
        // Applying again to the split rule gives the same rule.
        let again = weighted_rules(&route(rules.clone()), "app", "shop", 1234).unwrap();
        assert_eq!(again, rules);
    }

    #[test]
    fn refs_elsewhere_or_mixed_rules_are_refused() {
        let table = [
            (
                json!([{"backendRefs": [{"name": "other", "port": 80}]}]),
                "no rule",
            ),
            (
                json!([{"backendRefs": [{"name": "app", "port": 80}, {"name": "legacy", "port": 80}]}]),
                "sends to legacy as well",
            ),
            (
                json!([{"backendRefs": [{"name": "app", "namespace": "elsewhere", "port": 80}]}]),
                "no rule",
            ),
            (
                json!([{"backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "app"}]}]),
                "no rule",
            ),
        ];
        for (rules, needle) in table {
            let e = weighted_rules(&route(rules.clone()), "app", "shop", 0).unwrap_err();
            assert!(e.contains(needle), "{rules}: {e}");
            assert!(e.contains("HTTPRoute shop/web"), "{e}");
        }
    }
}
