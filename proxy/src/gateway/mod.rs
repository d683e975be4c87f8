//! `sluice-proxy --gateway-api`: the proxy as a Gateway API data plane.
//!
//! The proxy watches (cluster-wide) the `GatewayClass`es whose
//! `controllerName` is its own (`sluice.dev/gateway` by default), the
//! `Gateway`s of those classes, the `HTTPRoute`s, the `GRPCRoute`s and the
//! `Service`s, and
//! after every change (50 ms later, so a burst is one rebuild) translates
//! them into its own config ([`translate`]), swaps it in like a reload
//! (a change of weights is served without a restart), and writes the
//! statuses through the status subresource: `Accepted` on the classes,
//! `Accepted`/`Programmed` (and per-listener conditions) on the Gateways,
//! and its own `status.parents` entries on the HTTPRoutes and GRPCRoutes
//! (entries of other controllers are kept), each with `observedGeneration`. A status
//! is written only when it changed, and a condition keeps its
//! `lastTransitionTime` while its status stays the same.
//!
//! GRPCRoutes are read when the API server serves them (Gateway API
//! v1.1 and later); on a cluster whose CRDs predate GRPCRoute the proxy
//! logs a warning at start and serves HTTPRoutes alone (install the newer
//! CRDs, then restart the proxy to serve GRPCRoutes).
//!
//! The kube client was in the binary already (`--kube-configmap`), so this
//! adds no process and no crate; it is idle unless `--gateway-api` is given.
//!
//! Listening ports are the HTTP listener ports of the Gateways seen at
//! start (the proxy waits for one), bound on `--gateway-bind`: the
//! proxy's listeners are fixed at start, so a port added later is
//! reported `Programmed: False` (reason `Pending`) until the proxy is
//! restarted (a Deployment rollout). Backends are Services, reached at
//! their cluster IP and the backendRef's port (kube-proxy balances over
//! the endpoints; the proxy's split stays exact per Service).

pub mod translate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store as Reader};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::config::Config;
use crate::store::Store;
use translate::{GROUP, Inputs, Layout, Outcome};

/// The controller name this proxy answers for by default.
pub const DEFAULT_CONTROLLER: &str = "sluice.dev/gateway";

/// How the proxy runs as a Gateway.
#[derive(Debug, Clone)]
pub struct Options {
    pub controller: String,
    /// The address the listener ports are bound on (`0.0.0.0` in a pod).
    pub bind: String,
    pub admin_listen: String,
}

fn gateway_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.to_string(),
        version: "v1".to_string(),
        api_version: format!("{GROUP}/v1"),
        kind: kind.to_string(),
        plural: plural.to_string(),
    }
}

struct Kind {
    what: &'static str,
    resource: ApiResource,
    reader: Reader<DynamicObject>,
}

/// The watches and what they have read.
pub struct Gateway {
    client: kube::Client,
    options: Options,
    kinds: Vec<Kind>,
    changed: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    layout: Option<Layout>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Gateway {
    /// Starts the watches and waits (30 s at most) for their first lists.
    pub async fn connect(client: kube::Client, options: Options) -> Result<Self, String> {
        let changed = Arc::new(Notify::new());
        let mut kinds = Vec::new();
        let mut tasks = Vec::new();
        for (what, resource) in [
            (
                "gatewayclasses.gateway.networking.k8s.io",
                gateway_resource("GatewayClass", "gatewayclasses"),
            ),
            (
                "gateways.gateway.networking.k8s.io",
                gateway_resource("Gateway", "gateways"),
            ),
            (
                "httproutes.gateway.networking.k8s.io",
                gateway_resource("HTTPRoute", "httproutes"),
            ),
            (
                "services",
                ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
            ),
            (
                "grpcroutes.gateway.networking.k8s.io",
                gateway_resource("GRPCRoute", "grpcroutes"),
            ),
        ] {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            if resource.kind == "GRPCRoute" && !served(&api).await {
                tracing::warn!(
                    "the API server does not serve grpcroutes.gateway.networking.k8s.io (Gateway API CRDs older than v1.1?): GRPCRoutes are not served; install the CRDs and restart the proxy"
                );
                continue;
            }
            let writer = reflector::store::Writer::new(resource.clone());
            let reader = writer.as_reader();
            let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff();
            let notify = changed.clone();
            tasks.push(tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(_) => notify.notify_one(),
                        Err(e) => {
                            tracing::warn!(resource = what, error = %e, "watch failed; retrying")
                        }
                    }
                }
            }));
            kinds.push(Kind {
                what,
                resource,
                reader,
            });
        }
        for k in &kinds {
            if tokio::time::timeout(Duration::from_secs(30), k.reader.wait_until_ready())
                .await
                .is_err()
            {
                for t in &tasks {
                    t.abort();
                }
                return Err(format!(
                    "--gateway-api: cannot list and watch {} (are the Gateway API CRDs installed, and may this proxy's account list them? see deploy/gateway/)",
                    k.what
                ));
            }
        }
        Ok(Self {
            client,
            options,
            kinds,
            changed,
            tasks,
            layout: None,
        })
    }

    fn inputs(&self) -> Inputs {
        let values = |i: usize| -> Vec<Value> {
            self.kinds[i]
                .reader
                .state()
                .iter()
                .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
                .collect()
        };
        Inputs {
            controller: self.options.controller.clone(),
            classes: values(0),
            gateways: values(1),
            routes: values(2),
            services: values(3),
            grpc_routes: if self.kinds.len() > GRPC_ROUTES {
                values(GRPC_ROUTES)
            } else {
                Vec::new()
            },
        }
    }

    /// The config to start with: waits until a Gateway of this
    /// controller's class has an HTTP listener, whose ports become the
    /// proxy's listeners for the life of the process.
    pub async fn initial_config(&mut self) -> Config {
        let mut said = false;
        loop {
            let notified = self.changed.notified();
            let inputs = self.inputs();
            let ports = translate::wanted_ports(&inputs);
            if !ports.is_empty() {
                let layout = Layout {
                    bind: self.options.bind.clone(),
                    admin_listen: self.options.admin_listen.clone(),
                    ports,
                };
                let outcome = translate::build(&inputs, &layout);
                self.layout = Some(layout);
                self.write_statuses(&inputs, &outcome).await;
                return outcome.config;
            }
            if !said {
                tracing::info!(controller = %self.options.controller, "waiting for a GatewayClass of this controller and a Gateway of it with an HTTP listener");
                said = true;
            }
            notified.await;
        }
    }

    /// Follows every change: rebuilds, swaps the config in, writes statuses.
    pub fn follow(self, store: Arc<Store>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let layout = self.layout.clone().expect("initial_config ran");
            loop {
                self.changed.notified().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // On the blocking pool: the runtime that runs the watches
                // also answers /healthz and /readyz.
                let inputs = self.inputs();
                let layout = layout.clone();
                let built = tokio::task::spawn_blocking(move || {
                    let outcome = translate::build(&inputs, &layout);
                    (inputs, outcome)
                })
                .await;
                let (inputs, outcome) = match built {
                    Ok(built) => built,
                    Err(e) => {
                        tracing::error!(error = %e, "translating the Gateway API objects failed; the last good config keeps serving");
                        continue;
                    }
                };
                if store.load().config != outcome.config {
                    match store.replace(outcome.config.clone()) {
                        Ok(_) => tracing::info!(
                            routes = outcome.config.routes.len(),
                            "config rebuilt from the Gateway API objects"
                        ),
                        Err(errors) => {
                            tracing::error!(%errors, "the config made of the Gateway API objects was refused; the last good one keeps serving")
                        }
                    }
                }
                self.write_statuses(&inputs, &outcome).await;
            }
        })
    }

    async fn patch_status(&self, kind: usize, ns: Option<&str>, name: &str, status: Value) {
        let resource = &self.kinds[kind].resource;
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        };
        let patch = Patch::Merge(json!({ "status": status }));
        if let Err(e) = api
            .patch_status(name, &PatchParams::default(), &patch)
            .await
        {
            tracing::warn!(kind = %resource.kind, namespace = ns.unwrap_or(""), name, error = %e, "cannot write status");
        }
    }

    async fn write_statuses(&self, inputs: &Inputs, outcome: &Outcome) {
        let now = now();
        for c in &inputs.classes {
            let name = c["metadata"]["name"].as_str().unwrap_or("");
            let Some(conds) = outcome.classes.get(name) else {
                continue;
            };
            let old = &c["status"]["conditions"];
            let new = with_times(conds, old, &now);
            if *old != new {
                self.patch_status(0, None, name, json!({"conditions": new}))
                    .await;
            }
        }
        for g in &inputs.gateways {
            let (ns, name) = meta_key(g);
            let Some(status) = outcome.gateways.get(&(ns.clone(), name.clone())) else {
                continue;
            };
            let old = &g["status"];
            let mut new = json!({
                "conditions": with_times(status["conditions"].as_array().unwrap_or(&Vec::new()), &old["conditions"], &now),
                "listeners": [],
            });
            for l in status["listeners"].as_array().into_iter().flatten() {
                let before = old["listeners"]
                    .as_array()
                    .and_then(|ls| ls.iter().find(|o| o["name"] == l["name"]))
                    .map(|o| o["conditions"].clone())
                    .unwrap_or(Value::Null);
                let mut l = l.clone();
                l["conditions"] = with_times(
                    l["conditions"].as_array().unwrap_or(&Vec::new()),
                    &before,
                    &now,
                );
                new["listeners"].as_array_mut().expect("array").push(l);
            }
            let same =
                old["conditions"] == new["conditions"] && old["listeners"] == new["listeners"];
            if !same {
                self.patch_status(1, Some(&ns), &name, new).await;
            }
        }
        let empty = Vec::new();
        let routes = inputs.routes.iter().map(|r| (2, r, &outcome.routes));
        let grpc_routes = inputs
            .grpc_routes
            .iter()
            .map(|r| (GRPC_ROUTES, r, &outcome.grpc_routes));
        for (kind, r, statuses) in routes.chain(grpc_routes) {
            let (ns, name) = meta_key(r);
            let ours = statuses.get(&(ns.clone(), name.clone())).unwrap_or(&empty);
            let old: Vec<Value> = r["status"]["parents"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut new: Vec<Value> = old
                .iter()
                .filter(|p| p["controllerName"] != self.options.controller.as_str())
                .cloned()
                .collect();
            for p in ours {
                let before = old
                    .iter()
                    .find(|o| {
                        o["controllerName"] == p["controllerName"]
                            && o["parentRef"] == p["parentRef"]
                    })
                    .map(|o| o["conditions"].clone())
                    .unwrap_or(Value::Null);
                let mut p = p.clone();
                p["conditions"] = with_times(
                    p["conditions"].as_array().unwrap_or(&Vec::new()),
                    &before,
                    &now,
                );
                new.push(p);
            }
            if new != old {
                self.patch_status(kind, Some(&ns), &name, json!({"parents": new}))
                    .await;
            }
        }
    }
}

/// The index of the GRPCRoute watch in `Gateway::kinds` (absent when the
/// API server does not serve GRPCRoutes).
const GRPC_ROUTES: usize = 4;

/// Whether the API server serves `api`'s resource (a 404 means its CRD is
/// not installed; any other answer, even a refusal, is left to the watch
/// to report).
async fn served(api: &Api<DynamicObject>) -> bool {
    !matches!(
        api.list(&kube::api::ListParams::default().limit(1)).await,
        Err(kube::Error::Api(e)) if e.code == 404
    )
}

fn meta_key(v: &Value) -> (String, String) {
    (
        v["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        v["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// `conditions` with `lastTransitionTime`: the old condition's when its
/// status did not change, else `now`.
fn with_times(conditions: &[Value], old: &Value, now: &str) -> Value {
    let old: BTreeMap<&str, &Value> = old
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["type"].as_str()?, c)))
        .collect();
    Value::Array(
        conditions
            .iter()
            .map(|c| {
                let mut c = c.clone();
                let time = match old.get(c["type"].as_str().unwrap_or("")) {
                    Some(o)
                        if o["status"] == c["status"] && o["lastTransitionTime"].is_string() =>
                    {
                        o["lastTransitionTime"].clone()
                    }
                    _ => json!(now),
                };
                c["lastTransitionTime"] = time;
                c
            })
            .collect(),
    )
}
