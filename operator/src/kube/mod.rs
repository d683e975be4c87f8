//! `sluice kube`: the Kubernetes operator. Annotate a Deployment
//! `sluice.dev/canary: "enabled"` and every new revision of it is released as
//! a metric-gated canary through a Sluice proxy.
//!
//! Reconcile is idempotent and tick-based: each call reads the world, steps
//! the same state machine `sluice rollout` uses at most once, carries out its
//! actions, writes the status, and asks to be called again
//! (`Action::requeue`) when the next tick is due. The status lives on
//! `app-primary` (annotation `sluice.dev/status`), so an operator restart
//! resumes where it was, never moving weight backwards or skipping a step.

pub mod annotations;
pub mod leader;
pub mod metrics;
pub mod objects;
pub mod plugin;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;

use crate::analysis::CheckResult;
use crate::http::HttpClient;
use crate::machine::{self, Action as MachineAction, Command, Level, NextTick, Observation, Phase};
use crate::plan::Traffic;
use crate::provider::{PrometheusProvider, Provider, ProxyProvider};
use crate::runner::collect_gates;
use crate::webhook::{WebhookPayload, run_gate};
use annotations::{MetricsSource, PortRef, Settings};
use objects::*;

pub const FIELD_MANAGER: &str = "sluice";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Other(String),
    /// An object with a name Sluice would use exists and is not Sluice's:
    /// nothing is overwritten; the release waits with a Warning Event.
    #[error("{0}")]
    Foreign(String),
}

/// What the operator keeps on `app-primary` as `sluice.dev/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeStatus {
    pub phase: String,
    pub canary_weight: f64,
    pub failed_checks: u32,
    /// The revision of the current (or last) release.
    pub revision: String,
    /// The revision `app-primary` runs.
    pub primary_revision: String,
    /// A rolled-back revision: not released again until it changes (or `retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    pub last_transition: String,
    pub message: String,
    pub original_replicas: i64,
    pub bootstrapped: bool,
    /// The steps in percent, and the 1-based step in force (0 before the first).
    pub steps: Vec<f64>,
    pub step: usize,
    #[serde(default)]
    pub last_checks: Vec<CheckResult>,
    /// Canary traffic sent by A/B rules in the last window (not judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ab: Option<crate::analysis::AbTraffic>,
    #[serde(default)]
    pub last_analysis_at: f64,
    #[serde(default)]
    pub release_started_at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<machine::Status>,
    /// When the operator last ticked this release (wall clock): a longer
    /// gap at its next tick is operator downtime, not held against the release.
    #[serde(default)]
    pub last_tick_at: f64,
    /// The pod template being promoted, recorded when promotion was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoting_template: Option<Value>,
    /// The user's Deployment generation this status reflects: `kubectl
    /// sluice status` trusts the phase only once it is current.
    #[serde(default)]
    pub observed_generation: i64,
    /// `canary`, `blue-green` or `experiment`.
    #[serde(default)]
    pub strategy: String,
    /// Affinity and mirroring of the release, for people (`-`: none).
    #[serde(default)]
    pub traffic: String,
    /// The report of the last experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::report::ExperimentReport>,
}

impl KubeStatus {
    pub fn from_primary(primary: &Deployment) -> Option<Self> {
        primary
            .annotations()
            .get(annotations::STATUS)
            .and_then(|s| serde_json::from_str(s).ok())
    }
}

/// Makes the metric provider of a release.
pub type ProviderFactory = Arc<dyn Fn(&Settings, &str, &str) -> Provider + Send + Sync>;

/// What one ready proxy replica says about the config it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// The pod's name.
    pub pod: String,
    /// The digest it reports, or why it could not be read.
    pub digest: Result<String, String>,
}

/// Asks the ready proxy replicas of (namespace, app) which config they
/// serve: one answer per ready replica.
pub type DigestProbe = Arc<
    dyn Fn(String, String) -> futures::future::BoxFuture<'static, Result<Vec<ReplicaConfig>, Error>>
        + Send
        + Sync,
>;

/// Shared state of the operator.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub prometheus_url: Option<String>,
    pub proxy_image: String,
    pub metrics: Arc<metrics::OperatorMetrics>,
    pub providers: Mutex<HashMap<String, Provider>>,
    /// Releases this process has ticked at least once (`ns/app`).
    pub resumed: Mutex<std::collections::HashSet<String>>,
    pub make_provider: ProviderFactory,
    pub http: HttpClient,
    /// Seconds on a wall clock (statuses outlive the process).
    pub now: Arc<dyn Fn() -> f64 + Send + Sync>,
    /// How long to wait between polls while waiting on the cluster.
    pub poll: Duration,
    /// The (phase, message) last mirrored on each user's Deployment.
    pub mirrored: std::sync::Mutex<HashMap<String, (String, String)>>,
    /// Which config the proxy replicas serve (by default their admin
    /// `/metrics`, read at the pod's IP). None: `--proxy-config-check off`,
    /// where a proxy's readiness is taken as having the config.
    pub proxy_digests: Option<DigestProbe>,
    /// Operator-wide chat notifications (`--notify`).
    pub notifier: crate::notify::Notifier,
    /// Each app's outbound client when it names an access Secret
    /// (`sluice.dev/access`), by `ns/app`.
    pub app_http: std::sync::Mutex<HashMap<String, HttpClient>>,
    /// Each app's own chat channels (`sluice.dev/notify`), by `ns/app`,
    /// with a digest of the Secret's data they were made from.
    pub app_notifiers: std::sync::Mutex<HashMap<String, (String, crate::notify::Notifier)>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        identity: &str,
        prometheus_url: Option<String>,
        proxy_image: String,
    ) -> Self {
        let reporter = Reporter {
            controller: "sluice".into(),
            instance: Some(identity.to_string()),
        };
        let prom = prometheus_url.clone();
        let client_for_probe = client.clone();
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            prometheus_url,
            proxy_image,
            metrics: metrics::OperatorMetrics::new(),
            providers: Mutex::new(HashMap::new()),
            resumed: Mutex::new(std::collections::HashSet::new()),
            make_provider: Arc::new(move |settings, ns, app| {
                default_provider(settings, ns, app, prom.as_deref())
            }),
            http: HttpClient::default(),
            now: Arc::new(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
            }),
            poll: Duration::from_secs(2),
            mirrored: Default::default(),
            proxy_digests: Some({
                let client = client_for_probe.clone();
                let http = HttpClient::default();
                Arc::new(move |ns: String, app: String| {
                    let (client, http) = (client.clone(), http.clone());
                    Box::pin(async move { scrape_proxy_digests(&client, &http, &ns, &app).await })
                })
            }),
            notifier: crate::notify::Notifier::none(),
            app_http: Default::default(),
            app_notifiers: Default::default(),
        }
    }
}

/// The default [`DigestProbe`]: each ready proxy pod's admin `/metrics`,
/// read for `sluice_config_source{sha256}`.
async fn scrape_proxy_digests(
    client: &kube::Client,
    http: &HttpClient,
    ns: &str,
    app: &str,
) -> Result<Vec<ReplicaConfig>, Error> {
    let mut out = Vec::new();
    for pod in proxy_pods(client, ns, app).await? {
        if !pod.ready {
            continue;
        }
        let digest = match &pod.admin {
            Some(admin) => {
                let url = format!("{admin}/metrics");
                match http.get(&url, Duration::from_secs(2)).await {
                    Ok(answer) => served_digest(&answer.text())
                        .ok_or_else(|| format!("{url} reports no sluice_config_source")),
                    Err(e) => Err(format!("{url}: {e}")),
                }
            }
            None => Err("no pod IP yet".into()),
        };
        out.push(ReplicaConfig {
            pod: pod.name,
            digest,
        });
    }
    Ok(out)
}

/// A proxy pod of an app, as the operator reaches it.
struct ProxyPod {
    name: String,
    /// Ready, and not going away.
    ready: bool,
    /// `http://IP:PORT` of its admin listener (the container's
    /// `sluice-admin` port), once it has an IP.
    admin: Option<String>,
}

/// The proxy pods of `app`, by their labels.
async fn proxy_pods(client: &kube::Client, ns: &str, app: &str) -> Result<Vec<ProxyPod>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = proxy_pod_labels(app)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .map(|pod| {
            let ready = pod.metadata.deletion_timestamp.is_none()
                && pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let port = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.ports.as_ref())
                .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("sluice-admin")))
                .map_or(PROXY_ADMIN_PORT, |p| p.container_port);
            let admin = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .map(|ip| format!("http://{ip}:{port}"));
            ProxyPod {
                name: pod.metadata.name.unwrap_or_default(),
                ready,
                admin,
            }
        })
        .collect())
}

/// The digest in a proxy's metrics text, if it reports one.
pub fn served_digest(metrics: &str) -> Option<String> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix("sluice_config_source{sha256=\"")?;
        let (digest, value) = rest.split_once("\"}")?;
        (value.trim() == "1").then(|| digest.to_string())
    })
}

/// Whether every ready proxy replica serves the config now in the proxy's
/// ConfigMap (at least one replica, all agreeing): the data plane has
/// what the operator wrote, and nothing is scaled down before. `Ok(None)`
/// when they do; otherwise what is still missing, naming the replica.
/// A replica that cannot be asked counts as not there yet: the operator
/// never guesses (`--proxy-config-check off` trusts readiness instead).
async fn proxies_lag(ctx: &Context, ns: &str, app: &str) -> Result<Option<String>, Error> {
    let Some(probe) = &ctx.proxy_digests else {
        return Ok(None);
    };
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let Some(text) = cms
        .get_opt(&proxy_name(app))
        .await?
        .and_then(|cm| cm.data)
        .and_then(|d| d.get(sluice_proxy::kube_source::CONFIG_KEY).cloned())
    else {
        return Ok(Some(format!(
            "ConfigMap {} has no {}",
            proxy_name(app),
            sluice_proxy::kube_source::CONFIG_KEY
        )));
    };
    let want = sluice_proxy::kube_source::digest(&text);
    let replicas = probe(ns.to_string(), app.to_string()).await?;
    Ok(config_lag(&want, &replicas))
}

/// What keeps the replicas from all serving config `want`, if anything.
pub fn config_lag(want: &str, replicas: &[ReplicaConfig]) -> Option<String> {
    if replicas.is_empty() {
        return Some("no ready proxy replica".into());
    }
    replicas.iter().find_map(|r| match &r.digest {
        Ok(d) if d == want => None,
        Ok(d) => Some(format!("proxy {} serves config {d}, not {want} yet", r.pod)),
        Err(e) => Some(format!(
            "cannot ask proxy {} which config it serves: {e}",
            r.pod
        )),
    })
}

fn default_provider(
    settings: &Settings,
    ns: &str,
    app: &str,
    prometheus: Option<&str>,
) -> Provider {
    let route = route_name(app);
    match (settings.metrics, prometheus) {
        (MetricsSource::Prometheus, Some(url)) => {
            Provider::Prometheus(PrometheusProvider::new(url, &route).in_namespace(ns))
        }
        _ => Provider::Proxy(ProxyProvider::new(
            &format!("http://{}.{ns}.svc:{PROXY_ADMIN_PORT}", proxy_name(app)),
            &route,
        )),
    }
}

fn rfc3339(secs: f64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, Error> {
    Ok(serde_json::to_value(v)?)
}

/// Typed namespaced objects the operator writes through `Api<K>`.
trait NamespacedResource:
    Resource<Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> NamespacedResource for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

async fn apply<K>(client: &kube::Client, ns: &str, object: &Value) -> Result<(), Error>
where
    K: NamespacedResource,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

async fn merge_patch<K>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    patch: Value,
) -> Result<(), Error>
where
    K: NamespacedResource,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Fails with [`Error::Foreign`] when `name` exists and is not Sluice's for
/// the Deployment `owner_uid` (see [`is_ours`]).
async fn ensure_ours<K>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    owner_uid: &str,
) -> Result<(), Error>
where
    K: NamespacedResource + Serialize,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await? {
        Some(existing) if !is_ours(&to_value(&existing)?, owner_uid) => {
            Err(Error::Foreign(format!(
                "{} {ns}/{name} exists and is not Sluice's (it lacks the label {MANAGED_BY}=sluice or an owner reference to this Deployment); Sluice does not overwrite or delete it: rename or remove it",
                K::kind(&K::DynamicType::default())
            )))
        }
        _ => Ok(()),
    }
}

/// Server-side apply of an object Sluice owns, refusing to take over one it
/// does not.
async fn apply_owned<K>(
    client: &kube::Client,
    ns: &str,
    object: &Value,
    owner_uid: &str,
) -> Result<(), Error>
where
    K: NamespacedResource + Serialize,
    K::DynamicType: Default,
{
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    ensure_ours::<K>(client, ns, name, owner_uid).await?;
    apply::<K>(client, ns, object).await
}

/// Deletes `name` only when it is Sluice's for `owner_uid`, with a uid
/// precondition so a same-named object created meanwhile is never hit.
async fn delete_owned<K>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    owner_uid: &str,
) -> Result<(), Error>
where
    K: NamespacedResource + Serialize,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(());
    };
    let v = to_value(&existing)?;
    if !is_ours(&v, owner_uid) {
        tracing::info!(%ns, %name, "not Sluice's; left alone");
        return Ok(());
    }
    let uid = v["metadata"]["uid"].as_str().map(str::to_string);
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn publish(ctx: &Context, d: &Deployment, level: EventType, reason: &str, note: String) {
    let event = Event {
        type_: level,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &d.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an Event");
    }
}

/// Runs the controller until the stream ends (or the future is dropped).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let api: Api<Deployment> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let services: Api<Service> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    // A change to a Service Sluice took over (a GitOps re-apply) reconciles
    // its Deployment at once, so drift is undone in seconds.
    Controller::new(api, watcher::Config::default())
        .watches(
            services,
            watcher::Config::default().labels(""),
            |svc: Service| {
                let taken_over = svc
                    .annotations()
                    .contains_key(annotations::ORIGINAL_SELECTOR);
                let ns = svc.namespace();
                taken_over
                    .then(|| ns.map(|ns| ObjectRef::new(&svc.name_any()).within(&ns)))
                    .flatten()
            },
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not finish");
            }
        })
        .await;
}

fn error_policy(d: Arc<Deployment>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(deployment = %d.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// One reconcile of one Deployment. An object in the way that is not
/// Sluice's stops it with a Warning Event, nothing overwritten.
pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    match reconcile_owned(d.clone(), ctx.clone()).await {
        Err(Error::Foreign(why)) => {
            publish(&ctx, &d, EventType::Warning, "ForeignObject", why).await;
            Ok(Action::requeue(Duration::from_secs(60)))
        }
        other => other,
    }
}

/// Whether Sluice has taken `d` on: its finalizer is on `d`, or an
/// `app-primary` it owns exists. Only then does it clean up.
async fn managed(ctx: &Context, d: &Deployment, ns: &str, name: &str) -> Result<bool, Error> {
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

async fn reconcile_owned(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = d.namespace().unwrap_or_else(|| "default".into());
    let name = d.name_any();
    let has_finalizer = d.finalizers().iter().any(|f| f == annotations::FINALIZER);
    let primaries: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    if d.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            cleanup(&ctx, &d, &ns, &name, true).await?;
        }
        return Ok(Action::await_change());
    }
    if !annotations::enabled(d.annotations()) {
        if managed(&ctx, &d, &ns, &name).await? {
            return cleanup(&ctx, &d, &ns, &name, false).await;
        }
        return Ok(Action::await_change());
    }
    let selector_problem = {
        let dv = to_value(&*d)?;
        let sel = &dv["spec"]["selector"];
        if sel["matchExpressions"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
        {
            Some("spec.selector.matchExpressions is not supported: Sluice renames the selector's matchLabels for app-primary, and expressions would still select the canary's pods; use matchLabels only".to_string())
        } else if selector_of(&dv).is_empty() {
            Some("spec.selector.matchLabels is empty: Sluice needs labels to tell the primary's pods from the canary's".to_string())
        } else {
            check_names(&name, &selector_of(&dv)).err()
        }
    };
    if let Some(problem) = selector_problem {
        publish(
            &ctx,
            &d,
            EventType::Warning,
            "Unsupported",
            format!("{problem}; nothing was created or changed"),
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let mut settings = match annotations::parse(d.annotations(), ctx.prometheus_url.is_some()) {
        Ok(s) => s,
        Err(e) => {
            publish(
                &ctx,
                &d,
                EventType::Warning,
                "InvalidAnnotation",
                format!("{e}; nothing was created or changed"),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };
    if let Err(e) = load_extras(&ctx, &ns, &name, &mut settings).await {
        publish(
            &ctx,
            &d,
            EventType::Warning,
            "InvalidConfig",
            format!("{e}; nothing was created or changed"),
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(service) = services.get_opt(&name).await? else {
        publish(
            &ctx,
            &d,
            EventType::Warning,
            "ServiceNotFound",
            format!("Service {name} not found in {ns}: Sluice fronts the Service named like the Deployment"),
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    let service_value = to_value(&service)?;
    let original = original_service(&service_value);
    let port = match resolve_port(&original, settings.port.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            publish(&ctx, &d, EventType::Warning, "InvalidAnnotation", e).await;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };
    let dv = to_value(&*d)?;
    let ports = match proxied_ports(&original, &dv, port) {
        Ok(p) => p,
        Err(e) => {
            publish(
                &ctx,
                &d,
                EventType::Warning,
                "Unsupported",
                format!("{e}; nothing was created or changed"),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };
    if original_selector(&service_value).is_empty() {
        publish(
            &ctx,
            &d,
            EventType::Warning,
            "Unsupported",
            format!("Service {name} has no selector; Sluice fronts Services that select pods. Nothing was created or changed"),
        )
        .await;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let (revision, _) = revision_of(&ctx, &ns, &dv).await?;
    let Some(primary) = primaries.get_opt(&primary_name(&name)).await? else {
        bootstrap(
            &ctx,
            &d,
            &ns,
            &name,
            &dv,
            &service_value,
            &ports,
            &revision,
            &settings,
        )
        .await?;
        return Ok(Action::requeue(ctx.poll));
    };
    if !is_ours(&to_value(&primary)?, &d.uid().unwrap_or_default()) {
        return Err(Error::Foreign(format!(
            "Deployment {ns}/{} exists and is not Sluice's (a Flagger primary or the user's own?); Sluice does not overwrite or delete it: rename or remove it",
            primary_name(&name)
        )));
    }
    if !has_finalizer {
        add_finalizer(&ctx, &d, &ns, &name).await?;
    }
    let mut status = KubeStatus::from_primary(&primary).unwrap_or_default();
    status.observed_generation = d.metadata.generation.unwrap_or(0);
    if !status.bootstrapped {
        return take_over(&ctx, &d, &ns, &name, &primary, &service_value, status).await;
    }
    restore_routing(&ctx, &d, &ns, &name, &service_value).await?;
    ensure_proxy(
        &ctx,
        &ns,
        &name,
        &dv,
        &ports,
        &original_selector(&service_value),
    )
    .await?;
    sync_hpas(&ctx, &ns, &name, &dv).await?;
    release_tick(
        &ctx,
        &d,
        &ns,
        &name,
        &dv,
        &primary,
        &ports,
        &revision,
        &settings,
        &mut status,
    )
    .await
}

/// The data of the Secret `name` that annotation `annotation` names.
async fn secret_data(
    ctx: &Context,
    ns: &str,
    name: &str,
    annotation: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, String> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match secrets.get_opt(name).await {
        Ok(Some(s)) => Ok(s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()),
        Ok(None) => Err(format!(
            "annotation {annotation}: no Secret {name} in namespace {ns}"
        )),
        Err(e) => Err(format!(
            "annotation {annotation}: cannot read Secret {name}: {e}"
        )),
    }
}

/// Reads an app's access and notification Secrets (`sluice.dev/access`,
/// `sluice.dev/notify`) into the context. The values are credentials:
/// errors name the Secret and key, never a value.
async fn load_secrets(
    ctx: &Context,
    ns: &str,
    app: &str,
    settings: &Settings,
) -> Result<(), String> {
    let key = format!("{ns}/{app}");
    match &settings.access_secret {
        Some(name) => {
            let data = secret_data(ctx, ns, name, annotations::ACCESS).await?;
            let access = crate::http::parse_access_data(
                &data,
                &format!("annotation {}: Secret {name}", annotations::ACCESS),
            )?;
            let http = HttpClient::plain().with_access(&access);
            ctx.app_http
                .lock()
                .expect("app_http lock")
                .insert(key.clone(), http);
        }
        None => {
            ctx.app_http.lock().expect("app_http lock").remove(&key);
        }
    }
    match &settings.notify_secret {
        Some(name) => {
            let data = secret_data(ctx, ns, name, annotations::NOTIFY).await?;
            use sha2::Digest;
            let mut digest = sha2::Sha256::new();
            for (k, v) in &data {
                digest.update(k.as_bytes());
                digest.update([0]);
                digest.update(v);
                digest.update([0]);
            }
            let digest = format!("{:x}", digest.finalize());
            let same = ctx
                .app_notifiers
                .lock()
                .expect("app_notifiers lock")
                .get(&key)
                .is_some_and(|(d, _)| *d == digest);
            if !same {
                let mut channels = Vec::new();
                let steps = data.get("steps").is_some_and(|v| v.trim_ascii() == b"true");
                for (k, v) in data.iter().filter(|(k, _)| *k != "steps") {
                    let what = format!("annotation {}: Secret {name} key {k}", annotations::NOTIFY);
                    let service =
                        crate::notify::Service::parse(k).map_err(|e| format!("{what}: {e}"))?;
                    let url =
                        String::from_utf8(v.clone()).map_err(|_| format!("{what}: not UTF-8"))?;
                    channels.push(crate::notify::Channel::from_url(
                        service,
                        url.trim(),
                        &what,
                    )?);
                }
                let notifier = crate::notify::Notifier::start(
                    channels,
                    steps,
                    Some(ctx.metrics.notifications_failed.clone()),
                    HttpClient::plain(),
                );
                ctx.app_notifiers
                    .lock()
                    .expect("app_notifiers lock")
                    .insert(key, (digest, notifier));
            }
        }
        None => {
            ctx.app_notifiers
                .lock()
                .expect("app_notifiers lock")
                .remove(&key);
        }
    }
    Ok(())
}

/// Reads the checks and webhooks ConfigMaps and the Secrets named by the
/// annotations.
async fn load_extras(
    ctx: &Context,
    ns: &str,
    app: &str,
    settings: &mut Settings,
) -> Result<(), String> {
    load_secrets(ctx, ns, app, settings).await?;
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(name) = &settings.checks_configmap {
        let text = configmap_key(&cms, name, "checks.yaml", annotations::CHECKS).await?;
        settings.plan.queries = crate::plan::parse_checks(
            &text,
            &format!(
                "annotation {}: ConfigMap {name} key checks.yaml",
                annotations::CHECKS
            ),
        )?;
        if settings.metrics != annotations::MetricsSource::Prometheus
            && let Some(c) = settings
                .plan
                .queries
                .iter()
                .find(|c| !crate::external::is_external(c))
        {
            return Err(format!(
                "annotation {}: ConfigMap {name}: check `{}` is PromQL and needs the prometheus provider (set sluice.dev/metrics: prometheus and run the operator with --prometheus-url), or give it provider: web or datadog",
                annotations::CHECKS,
                c.name
            ));
        }
    }
    if let Some(name) = &settings.webhooks_configmap {
        let text = configmap_key(&cms, name, "webhooks.yaml", annotations::WEBHOOKS).await?;
        settings.plan.webhooks = crate::plan::parse_webhooks(
            &text,
            &format!(
                "annotation {}: ConfigMap {name} key webhooks.yaml",
                annotations::WEBHOOKS
            ),
        )?;
    }
    Ok(())
}

async fn configmap_key(
    cms: &Api<ConfigMap>,
    name: &str,
    key: &str,
    annotation: &str,
) -> Result<String, String> {
    let cm = cms
        .get_opt(name)
        .await
        .map_err(|e| format!("annotation {annotation}: cannot read ConfigMap {name}: {e}"))?
        .ok_or_else(|| format!("annotation {annotation}: ConfigMap {name} not found"))?;
    cm.data
        .and_then(|d| d.get(key).cloned())
        .ok_or_else(|| format!("annotation {annotation}: ConfigMap {name} has no key {key}"))
}

/// The Service port to proxy: by name or number, else the first.
fn resolve_port(service: &Value, wanted: Option<&PortRef>) -> Result<i32, String> {
    let ports = service["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let found = match wanted {
        None => ports.first(),
        Some(PortRef::Number(n)) => ports
            .iter()
            .find(|p| p["port"].as_i64() == Some(i64::from(*n))),
        Some(PortRef::Name(n)) => ports
            .iter()
            .find(|p| p["name"].as_str() == Some(n.as_str())),
    };
    let allowed: Vec<String> = ports
        .iter()
        .map(|p| format!("{}/{}", p["name"].as_str().unwrap_or("-"), p["port"]))
        .collect();
    found
        .and_then(|p| p["port"].as_i64())
        .map(|p| p as i32)
        .ok_or_else(|| {
            format!(
                "annotation {}: `{}` matches no port of the Service (allowed: {})",
                annotations::PORT,
                match wanted {
                    Some(PortRef::Name(n)) => n.clone(),
                    Some(PortRef::Number(n)) => n.to_string(),
                    None => String::new(),
                },
                allowed.join(", ")
            )
        })
}

/// The revision of the user's pod template and the config it references,
/// and the hash of that config alone (for the primary's pod template).
async fn revision_of(ctx: &Context, ns: &str, d: &Value) -> Result<(String, String), Error> {
    let template = &d["spec"]["template"];
    let (cm_data, secret_data) = config_data(ctx, ns, template).await?;
    Ok((
        revision_hash(template, &cm_data, &secret_data),
        config_hash(&cm_data, &secret_data),
    ))
}

type ConfigData = (BTreeMap<String, Value>, BTreeMap<String, Value>);

/// ConfigMap data and Secret digests of what `template` references
/// (missing ones as null).
async fn config_data(ctx: &Context, ns: &str, template: &Value) -> Result<ConfigData, Error> {
    let refs = config_refs(template);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut cm_data = BTreeMap::new();
    for name in &refs.configmaps {
        let v = match cms.get_opt(name).await? {
            Some(cm) => json!({"data": cm.data, "binaryData": cm.binary_data}),
            None => Value::Null,
        };
        cm_data.insert(name.clone(), v);
    }
    let mut secret_data = BTreeMap::new();
    for name in &refs.secrets {
        let v = match secrets.get_opt(name).await? {
            Some(s) => json!(secret_digest(
                s.metadata.uid.as_deref().unwrap_or_default(),
                &to_value(&s.data)?
            )),
            None => Value::Null,
        };
        secret_data.insert(name.clone(), v);
    }
    Ok((cm_data, secret_data))
}

/// (Re)writes the `-primary` copies of the ConfigMaps and Secrets `template` references.
async fn copy_configs(
    ctx: &Context,
    ns: &str,
    app: &str,
    template: &Value,
    owner: &Value,
) -> Result<(), Error> {
    let refs = config_refs(template);
    let uid = owner["uid"].as_str().unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    for name in &refs.configmaps {
        if let Some(cm) = cms.get_opt(name).await? {
            apply_owned::<ConfigMap>(
                &ctx.client,
                ns,
                &config_copy(&to_value(&cm)?, owner, app),
                uid,
            )
            .await?;
        }
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for name in &refs.secrets {
        if let Some(s) = secrets.get_opt(name).await? {
            apply_owned::<Secret>(
                &ctx.client,
                ns,
                &config_copy(&to_value(&s)?, owner, app),
                uid,
            )
            .await?;
        }
    }
    Ok(())
}

fn random_token() -> String {
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
async fn bootstrap(
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
    apply::<Service>(
        c,
        ns,
        &service_copy(
            &original,
            &primary_name(app),
            &primary_labels(&selector_of(d)),
            &owner,
            app,
        ),
    )
    .await?;
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
        &proxy_configmap_with(app, ns, ports, 0, &owner, &at_rest(&settings.plan.traffic)),
    )
    .await?;
    ensure_proxy(ctx, ns, app, d, ports, &selector).await?;
    apply::<Service>(c, ns, &proxy_admin_service(app, &owner)).await?;
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
    primary["metadata"]["annotations"] =
        json!({annotations::STATUS: serde_json::to_string(&status)?});
    apply::<Deployment>(c, ns, &primary).await?;
    sync_hpas(ctx, ns, app, d).await?;
    Ok(())
}

/// The user's Service as it was before Sluice took it over: the recorded
/// selector and target ports put back (itself when never taken over).
fn original_service(service: &Value) -> Value {
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
fn original_selector(service: &Value) -> BTreeMap<String, String> {
    if let Some(saved) = service["metadata"]["annotations"][annotations::ORIGINAL_SELECTOR].as_str()
        && let Ok(sel) = serde_json::from_str(saved)
    {
        return sel;
    }
    string_map(&service["spec"]["selector"])
}

/// Once `app-primary` and the proxy are ready: Service `app` selects the
/// proxy, then the user's Deployment (now the canary) scales to 0.
#[allow(clippy::too_many_arguments)]
async fn take_over(
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

/// Whether Service `app` routes through the proxy: it selects exactly the
/// proxy's pods, and its ports are the user's own (the proxy listens on
/// them; Services taken over by Sluice before 0.2 targeted port 8080).
fn points_at_proxy(service: &Value, app: &str) -> bool {
    string_map(&service["spec"]["selector"]) == proxy_pod_labels(app)
        && service["spec"]["ports"] == original_service(service)["spec"]["ports"]
}

/// Ready endpoints of Service `name` from its EndpointSlices, and how many
/// of them are the proxy's pods (`app-sluice-...`).
async fn ready_endpoints(
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
async fn proxy_serves(ctx: &Context, ns: &str, app: &str) -> Result<bool, Error> {
    let (_, proxies) = ready_endpoints(ctx, ns, app, app).await?;
    Ok(proxies > 0)
}

/// Puts Service `app` back through the proxy when something changed it. A
/// `kubectl apply` of the original manifest merges the user's selector into
/// the proxy's (still only the proxy's pods match: they carry the user's
/// labels too); a forced server-side apply replaces it (the proxy's pods and
/// the canary's match; nobody loses endpoints). Either way it is put back.
/// What the user changed becomes the new original (the selector without the
/// proxy's keys), so the way back honours it. One update.
async fn restore_routing(
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
                "Service {app} was changed to select {} (a re-apply of its manifest?); it selects the Sluice proxy again. Have your GitOps tool ignore spec.selector of this Service (see the README)",
                serde_json::to_string(&drifted)?
            ),
        )
        .await;
    }
    Ok(true)
}

/// The label the Deployment controller puts on each template's pods.
const TEMPLATE_HASH: &str = "pod-template-hash";

/// Points Service `app-canary` at the user's pods of the current release:
/// the Service's original selector plus their `pod-template-hash` (the
/// proxy's pods carry the original labels too, and must never be canary
/// endpoints).
async fn point_canary(
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
    let proxy = proxy_pod_labels(app);
    let newest = pods
        .list(&ListParams::default().labels(&deployment_selector))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            let labels = p.labels();
            !proxy.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
    let Some(hash) = newest.and_then(|p| p.labels().get(TEMPLATE_HASH).cloned()) else {
        return Err(Error::Other(format!(
            "no pod of {app} carries a {TEMPLATE_HASH} label yet; the canary Service is pointed once there is"
        )));
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

/// Creates or updates the proxy's Deployment and PodDisruptionBudget when
/// what they should be differs from what runs: the ports (the Service's
/// changed), the labels (its selector changed), or the operator itself
/// (an upgraded operator brings its proxy image and settings). The
/// recorded spec hash keeps this to one read per reconcile.
async fn ensure_proxy(
    ctx: &Context,
    ns: &str,
    app: &str,
    dv: &Value,
    ports: &[ProxiedPort],
    service_labels: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let owner = owner_reference(dv);
    let uid = owner["uid"].as_str().unwrap_or_default().to_string();
    let mut desired = proxy_deployment(app, ns, &ctx.proxy_image, &owner, ports, service_labels);
    let hash = {
        let digest = sha2::Sha256::digest(canonical_json(&desired).as_bytes());
        digest
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    desired["metadata"]["annotations"] = json!({SPEC_HASH: hash});
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    match deployments.get_opt(&proxy_name(app)).await? {
        Some(current) if current.annotations().get(SPEC_HASH) == Some(&hash) => {}
        Some(current) if !is_ours(&to_value(&current)?, &uid) => {
            return Err(Error::Foreign(format!(
                "Deployment {ns}/{} exists and is not Sluice's; Sluice does not overwrite or delete it: rename or remove it",
                proxy_name(app)
            )));
        }
        _ => {
            apply::<Deployment>(&ctx.client, ns, &desired).await?;
            apply_owned::<PodDisruptionBudget>(&ctx.client, ns, &proxy_pdb(app, &owner), &uid)
                .await?;
        }
    }
    Ok(())
}

/// Annotation on the proxy Deployment: the hash of the spec Sluice applied.
const SPEC_HASH: &str = "sluice.dev/spec-hash";

/// Between releases the user's Deployment (the canary) runs no pods. A
/// re-apply of its manifest scales it back up; it is scaled down again,
/// only once Service `app` is served by the proxy.
async fn settle_idle_canary(
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
    publish(
        ctx,
        d,
        EventType::Normal,
        "DeploymentDrift",
        format!(
            "{app} was scaled to {replicas} outside a release (a re-apply of its manifest?); between releases it runs no pods (the primary {} serves), so it is scaled to 0 again",
            primary_name(app)
        ),
    )
    .await;
    Ok(())
}

/// Writes as field manager `sluice`, so `managedFields` shows which fields
/// Sluice set (GitOps tools can ignore exactly those).
fn sluice_post() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

async fn save_status(ctx: &Context, ns: &str, app: &str, status: &KubeStatus) -> Result<(), Error> {
    let patch =
        json!({"metadata": {"annotations": {annotations::STATUS: serde_json::to_string(status)?}}});
    merge_patch::<Deployment>(&ctx.client, ns, &primary_name(app), patch).await?;
    ctx.metrics.observe(ns, app, status);
    mirror_phase(ctx, ns, app, status).await;
    Ok(())
}

/// Removes the mirrored phase from the user's Deployment (when Sluice lets
/// it go); whether there was one to remove.
async fn unmirror_phase(ctx: &Context, d: &Deployment, ns: &str, app: &str) -> Result<bool, Error> {
    ctx.mirrored
        .lock()
        .expect("mirrored")
        .remove(&format!("{ns}/{app}"));
    let a = d.annotations();
    if !a.contains_key(annotations::PHASE) && !a.contains_key(annotations::MESSAGE) {
        return Ok(false);
    }
    let patch = json!({"metadata": {"annotations": {annotations::PHASE: null, annotations::MESSAGE: null}}});
    merge_patch::<Deployment>(&ctx.client, ns, app, patch).await?;
    Ok(true)
}

/// Mirrors the phase and message onto the user's Deployment when they
/// change, so a GitOps tool's health check (which sees only the objects it
/// tracks) can read them: `deploy/argocd/health.lua`. Cosmetic: a failed
/// write is logged and tried again at the next status change or restart.
async fn mirror_phase(ctx: &Context, ns: &str, app: &str, status: &KubeStatus) {
    let key = format!("{ns}/{app}");
    let message: String = status.message.chars().take(256).collect();
    let now = (status.phase.clone(), message);
    if ctx.mirrored.lock().expect("mirrored").get(&key) == Some(&now) {
        return;
    }
    let patch = json!({"metadata": {"annotations": {annotations::PHASE: now.0, annotations::MESSAGE: now.1}}});
    match merge_patch::<Deployment>(&ctx.client, ns, app, patch).await {
        Ok(()) => {
            ctx.mirrored.lock().expect("mirrored").insert(key, now);
        }
        Err(e) => tracing::warn!(namespace = ns, app, "cannot mirror the phase on {app}: {e}"),
    }
}

/// HPAs aimed at `app` get a twin aimed at `app-primary`.
async fn sync_hpas(ctx: &Context, ns: &str, app: &str, d: &Value) -> Result<(), Error> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
    let owner = owner_reference(d);
    for hpa in hpas.list(&ListParams::default()).await?.items {
        let target = hpa.spec.as_ref().map(|s| &s.scale_target_ref);
        if target.is_some_and(|t| t.kind == "Deployment" && t.name == app) {
            apply::<HorizontalPodAutoscaler>(
                &ctx.client,
                ns,
                &hpa_twin(&to_value(&hpa)?, app, &owner),
            )
            .await?;
        }
    }
    Ok(())
}

async fn scale(ctx: &Context, ns: &str, name: &str, replicas: i64) -> Result<(), Error> {
    merge_patch::<Deployment>(
        &ctx.client,
        ns,
        name,
        json!({"spec": {"replicas": replicas}}),
    )
    .await
}

async fn set_weight(
    ctx: &Context,
    ns: &str,
    app: &str,
    ports: &[ProxiedPort],
    bp: u32,
    owner: &Value,
    traffic: &Traffic,
) -> Result<(), Error> {
    apply::<ConfigMap>(
        &ctx.client,
        ns,
        &proxy_configmap_with(app, ns, ports, bp, owner, traffic),
    )
    .await
}

/// A release's route settings between releases: affinity stays (it does
/// nothing at weight 0), mirroring ends with the release.
fn at_rest(traffic: &Traffic) -> Traffic {
    Traffic {
        affinity: traffic.affinity.clone(),
        mirror: None,
    }
}

/// Proxy replica admin URLs, for the proxy provider.
async fn proxy_targets(ctx: &Context, ns: &str, app: &str) -> Result<Vec<String>, Error> {
    Ok(proxy_pods(&ctx.client, ns, app)
        .await?
        .into_iter()
        .filter_map(|p| p.admin)
        .collect())
}

fn take_command(primary: &Deployment) -> Option<String> {
    primary.annotations().get(annotations::COMMAND).cloned()
}

/// Puts a release's metric provider back into the context when dropped, so
/// an early return (an API error) never loses its baseline.
struct Borrowed<'a> {
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
#[allow(clippy::too_many_arguments)]
async fn apply_routing(
    ctx: &Context,
    ns: &str,
    app: &str,
    dv: &Value,
    primary: &Deployment,
    ports: &[ProxiedPort],
    owner: &Value,
    status: &KubeStatus,
    action: &MachineAction,
    traffic: &Traffic,
) -> Result<(), Error> {
    match action {
        MachineAction::Initialize => {
            let replicas = primary
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1)
                .max(1);
            scale(ctx, ns, app, i64::from(replicas)).await?;
            if traffic.mirror.is_some() {
                // Copies go to the canary from the start (blue/green).
                point_canary(ctx, ns, app, dv, owner).await?;
            }
            set_weight(ctx, ns, app, ports, 0, owner, traffic).await
        }
        MachineAction::SetWeight(bp) => {
            if *bp > 0 {
                point_canary(ctx, ns, app, dv, owner).await?;
            }
            set_weight(ctx, ns, app, ports, *bp, owner, traffic).await
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
            set_weight(ctx, ns, app, ports, 0, owner, &at_rest(traffic)).await?;
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
        MachineAction::Notify(_) | MachineAction::Event(..) => Ok(()),
    }
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
async fn release_tick(
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
    let plan = &settings.plan;
    let key = format!("{ns}/{app}");
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
    let raw_command = take_command(primary);
    let command = match raw_command.as_deref() {
        None => None,
        Some("approve") => Some(Command::Approve),
        Some("abort") => Some(Command::Abort),
        Some("promote-full") => Some(Command::PromoteNow),
        Some("retry") => {
            status.failed_revision = None;
            Some(Command::Retry)
        }
        Some(other) => {
            publish(
                ctx,
                d,
                EventType::Warning,
                "UnknownCommand",
                format!(
                    "annotation {}: `{other}` is not a command; use approve, promote-full, abort or retry",
                    annotations::COMMAND
                ),
            )
            .await;
            None
        }
    };
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
    if !active && !retrying {
        if raw_command.is_some() {
            clear_command(ctx, ns, app).await?;
        }
        let idle = revision == status.primary_revision
            || status.failed_revision.as_deref() == Some(revision);
        if idle {
            settle_idle_canary(ctx, d, ns, app).await?;
            // A new generation with nothing to release (replicas, a
            // revert): the status says it has been seen.
            let saved = KubeStatus::from_primary(primary).map_or(0, |s| s.observed_generation);
            if saved != status.observed_generation {
                save_status(ctx, ns, app, status).await?;
            }
        }
        if revision == status.primary_revision {
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        if status.failed_revision.as_deref() == Some(revision) {
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    }
    let now = (ctx.now)();
    let phase = status.machine.as_ref().filter(|_| active).map(|m| m.phase);
    let previous = status
        .machine
        .clone()
        .filter(|m| !m.phase.is_terminal() || m.unconfirmed.is_some() || m.revision == revision);
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
    let gates = collect_gates(
        &http,
        plan,
        phase,
        analysis.as_ref(),
        at_last_step,
        &payload,
    )
    .await;
    let target_ready = match phase {
        Some(Phase::Initializing) => {
            let user = to_value(d)?;
            user["spec"]["replicas"].as_i64().unwrap_or(0) >= 1 && rolled_out(&user)
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
        analysis: analysis.clone(),
        gates,
        command,
        paused_for,
    };
    let mut t = machine::step(plan, previous.as_ref(), &obs);
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
        status.release_started_at = now;
    }
    if t.actions.contains(&MachineAction::Promote) && status.promoting_template.is_none() {
        status.promoting_template = Some(dv["spec"]["template"].clone());
    }
    if newly(Phase::Failed) {
        status.failed_revision = Some(m.revision.clone());
        ctx.metrics
            .release_ended(ns, app, "failed", now - status.release_started_at);
    }
    if newly(Phase::Succeeded) {
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
    // 1. The decision is saved before anything is carried out.
    save_status(ctx, ns, app, status).await?;
    // 2. The command is consumed only once its effect is on record.
    if raw_command.is_some() {
        clear_command(ctx, ns, app).await?;
    }
    // 3. Carry it out.
    let mut failed = None;
    for action in &t.actions {
        if action.is_routing() {
            let applied = apply_routing(
                ctx,
                ns,
                app,
                dv,
                primary,
                ports,
                &owner,
                status,
                action,
                &plan.traffic,
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
                let _ = run_gate(&http, plan, *kind, &after).await;
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
                crate::webhook::send_event(&http, plan, &after, *level == Level::Warning, text)
                    .await;
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
        NextTick::Idle => Duration::from_secs(60),
    }))
}

/// A pod template without [`CONFIG_HASH`] (config can change while a
/// promotion rolls out; the template is what tells it is done).
fn without_config_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove(CONFIG_HASH);
        }
        if meta
            .get("annotations")
            .is_some_and(|a| a.as_object().is_none_or(|a| a.is_empty()))
        {
            meta.remove("annotations");
        }
    }
    t
}

fn newly_phase(previous: &Option<machine::Status>, now: &machine::Status, p: Phase) -> bool {
    now.phase == p && previous.as_ref().is_none_or(|old| old.phase != p)
}

/// Copies the machine's status into the operator's.
fn record_machine(status: &mut KubeStatus, m: &machine::Status, plan: &crate::plan::Plan) {
    status.strategy = plan.strategy.name().to_string();
    status.traffic = crate::runner::traffic_text(plan);
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

async fn clear_command(ctx: &Context, ns: &str, app: &str) -> Result<(), Error> {
    merge_patch::<Deployment>(
        &ctx.client,
        ns,
        &primary_name(app),
        json!({"metadata": {"annotations": {annotations::COMMAND: null}}}),
    )
    .await
}

/// Adds Sluice's finalizer with a JSON patch that first tests the
/// resourceVersion it was read at: a stale (cached) object fails the test
/// (422) instead of overwriting a finalizer someone else added meanwhile.
async fn add_finalizer(ctx: &Context, d: &Deployment, ns: &str, name: &str) -> Result<(), Error> {
    let rv = d.resource_version().unwrap_or_default();
    let mut ops = vec![json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv})];
    if d.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| !f.is_empty())
    {
        ops.push(
            json!({"op": "add", "path": "/metadata/finalizers/-", "value": annotations::FINALIZER}),
        );
    } else {
        ops.push(
            json!({"op": "add", "path": "/metadata/finalizers", "value": [annotations::FINALIZER]}),
        );
    }
    json_patch(ctx, ns, name, ops).await
}

/// Removes Sluice's finalizer by index, testing the resourceVersion and the
/// entry at that index first.
async fn remove_finalizer(
    ctx: &Context,
    d: &Deployment,
    ns: &str,
    name: &str,
) -> Result<(), Error> {
    let Some(index) = d
        .finalizers()
        .iter()
        .position(|f| f == annotations::FINALIZER)
    else {
        return Ok(());
    };
    let rv = d.resource_version().unwrap_or_default();
    let path = format!("/metadata/finalizers/{index}");
    json_patch(
        ctx,
        ns,
        name,
        vec![
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
            json!({"op": "test", "path": path, "value": annotations::FINALIZER}),
            json!({"op": "remove", "path": path}),
        ],
    )
    .await
}

async fn json_patch(ctx: &Context, ns: &str, name: &str, ops: Vec<Value>) -> Result<(), Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::<()>::Json(patch)).await?;
    Ok(())
}

/// Undoes the take-over: the user's Deployment back to its replicas, the
/// Service back to its selector and ports, then what Sluice made for this
/// Deployment is deleted: only objects that carry its label and an owner
/// reference to this Deployment ([`is_ours`]); anything else with the same
/// names (a Flagger primary, a user's `db-primary` Secret) is left alone.
async fn cleanup(
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
    let c = &ctx.client;
    delete_owned::<Deployment>(c, ns, &proxy_name(app), &uid).await?;
    delete_owned::<Deployment>(c, ns, &primary_name(app), &uid).await?;
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
    ctx.metrics.forget(ns, app);
    if !deleting {
        publish(
            ctx,
            d,
            EventType::Normal,
            "Released",
            format!("Sluice no longer manages {app}; Service {app} selects its original pods"),
        )
        .await;
    }
    Ok(Action::await_change())
}
