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
//!
//! # Layout
//!
//! This file holds the shared types ([`Context`], [`KubeStatus`], [`Error`])
//! and the reconcile entry point, which only checks what it was given and
//! dispatches to one phase. One file per phase, in the order an app meets
//! them:
//!
//! - [`bootstrap`]: the first reconcile creates everything Sluice needs;
//!   traffic does not move yet.
//! - [`takeover`]: Service `app` is pointed at the proxy, the user's
//!   Deployment scaled to 0 (with `sluice.dev/router: gateway-api`,
//!   [`gateway`] points the HTTPRoute at `app-primary` instead, and moves
//!   its weights in every later phase).
//! - [`release`]: one tick of the state machine per reconcile, and its
//!   routing actions.
//! - [`commands`]: `sluice.dev/command` (approve, promote-full, abort, retry).
//! - [`drift`]: a re-apply of the user's manifests is undone.
//! - [`cleanup`]: the annotation removed or the Deployment deleted.
//!
//! [`baseline`] runs the baseline arm of a release
//! (`sluice.dev/baseline-arm`) for [`release`] and [`cleanup`].
//!
//! Phases share helper modules, which never call a phase: [`api`] (writes,
//! Events, finalizer, status), [`inputs`] (what the annotations reference,
//! the revision), [`proxy`] (the proxy's Deployment, pods and config),
//! [`services`] (Service `app`'s recorded original, endpoints, Service
//! `app-canary`). Phases call helpers, and a later phase may call an
//! earlier one's pieces (take-over and release use drift repair; release
//! uses commands), never the other way round. [`objects`] builds the
//! manifests (pure), [`annotations`] parses the settings (pure), and
//! [`knobs`] holds the per-app knobs' types and rules (A/B rules, route
//! timeouts, the proxy's replicas, resources and HPA, canary scaling,
//! rollback window, abort scale-down delay).

pub mod annotations;
pub mod knobs;
pub mod leader;
pub mod metrics;
pub mod objects;
pub mod plugin;

mod api;
mod baseline;
mod bootstrap;
mod cleanup;
mod commands;
mod drift;
pub mod gateway;
mod inputs;
pub mod ports;
mod proxy;
mod release;
mod services;
mod takeover;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::analysis::CheckResult;
use crate::http::HttpClient;
use crate::machine;
use crate::provider::{PrometheusProvider, Provider, ProxyProvider};
use annotations::{MetricsSource, Router, Settings};
use api::{add_finalizer, publish, to_value};
use bootstrap::{bootstrap, sync_hpas};
use cleanup::{cleanup, managed};
use drift::restore_routing;
use inputs::{load_configmaps, load_secrets, report_secret_problems, resolve_port, revision_of};
use objects::*;
pub use proxy::{config_lag, served_digest};
use proxy::{ensure_proxy, scrape_proxy_digests};
use release::release_tick;
use services::{original_selector, original_service};
use takeover::take_over;

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
    /// The last promoted revisions, newest first (the primary's own
    /// included), kept while `sluice.dev/rollback-window` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promoted: Vec<PromotedRevision>,
    /// When a rolled-back canary, kept up by
    /// `sluice.dev/abort-scale-down-delay`, is scaled to 0 (wall clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_at: Option<f64>,
    /// The release under way runs a baseline arm (`sluice.dev/baseline-arm`,
    /// as it was when the release started: a change mid-release applies
    /// from the next release).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub baseline_arm: bool,
    /// With `sluice.dev/router: gateway-api`: the HTTPRoute taken over,
    /// given back when Sluice lets the app go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub httproute: Option<String>,
}

/// A promoted revision, remembered for `sluice.dev/rollback-window`.
///
/// Only the revision's identity is kept: the revision hash already covers
/// the pod template and the config it references, so it is all matching
/// needs, and the `sluice.dev/status` annotation stays small (at most
/// 21 short entries for the largest window, 20, far below the 256 KiB
/// annotation limit) and unchanged between promotions. Statuses written
/// by earlier versions also stored each pod template; that field is read
/// and dropped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromotedRevision {
    /// The revision hash (pod template and the config it references).
    pub revision: String,
}

impl KubeStatus {
    pub fn from_primary(primary: &Deployment) -> Option<Self> {
        primary
            .annotations()
            .get(annotations::STATUS)
            .and_then(|s| serde_json::from_str(s).ok())
    }

    /// Records a promoted revision (newest first), keeping the primary's
    /// and `window` before it (`sluice.dev/rollback-window`); nothing when
    /// the window is off.
    pub fn remember_promoted(&mut self, revision: &str, window: usize) {
        if window == 0 {
            self.promoted.clear();
            return;
        }
        self.promoted.retain(|p| p.revision != revision);
        self.promoted.insert(
            0,
            PromotedRevision {
                revision: revision.to_string(),
            },
        );
        self.promoted
            .truncate(window.min(annotations::MAX_ROLLBACK_WINDOW) + 1);
    }
}

/// A pod template without [`CONFIG_HASH`] (config can change while a
/// promotion rolls out; the template is what tells it is done).
pub(crate) fn without_config_hash(template: &Value) -> Value {
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
    /// What each app's access and notify Secrets last gave, and the
    /// problems reported about them, by `ns/app`.
    pub(crate) app_secrets: std::sync::Mutex<HashMap<String, inputs::AppSecrets>>,
    /// Each app's last valid annotations, by `ns/app`: a release in
    /// progress goes on with them while its annotations are invalid.
    pub last_valid: std::sync::Mutex<HashMap<String, annotations::Settings>>,
    /// Each app's settings as last completed from its ConfigMaps (checks,
    /// metrics template, webhooks): what a managed app goes on with while
    /// one of them is missing or invalid.
    pub(crate) last_loaded: std::sync::Mutex<HashMap<String, inputs::Loaded>>,
    /// When each app's webhooks were last asked, by `ns/app` (see
    /// `crate::runner::collect_gates`).
    pub hook_pacing: std::sync::Mutex<HashMap<String, crate::runner::HookPacing>>,
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
            app_secrets: Default::default(),
            last_valid: Default::default(),
            last_loaded: Default::default(),
            hook_pacing: Default::default(),
        }
    }
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
            Provider::Prometheus(prometheus_provider(settings, ns, app, url))
        }
        _ => Provider::Proxy(ProxyProvider::new(
            &format!("http://{}.{ns}.svc:{PROXY_ADMIN_PORT}", proxy_name(app)),
            &route,
        )),
    }
}

/// The Prometheus provider of an app: its route's series in its namespace,
/// or the series its `sluice.dev/metrics-template` names.
pub fn prometheus_provider(
    settings: &Settings,
    ns: &str,
    app: &str,
    url: &str,
) -> PrometheusProvider {
    let vars = crate::provider::TemplateVars {
        namespace: ns.to_string(),
        app: app.to_string(),
        httproute: match &settings.router {
            Router::GatewayApi { httproute } => httproute.clone(),
            Router::Proxy => String::new(),
        },
    };
    PrometheusProvider::new(url, &route_name(app))
        .in_namespace(ns)
        .with_template(&settings.metrics_template, &vars)
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
    let made: Api<Deployment> = api.clone();
    let routes = gateway::http_routes_in(&ctx.client, namespace.as_deref());
    let watch_routes = gateway::http_routes_served(&routes).await;
    // A change to a Service reconciles the Deployment of its name, if
    // there is one: one Sluice took over (a GitOps re-apply) has drift
    // undone in seconds, and one made after its annotated Deployment is
    // fronted at once (a Deployment that is not Sluice's is left as it is).
    let controller = Controller::new(api, watcher::Config::default()).watches(
        services,
        watcher::Config::default().labels(""),
        |svc: Service| {
            svc.namespace()
                .map(|ns| ObjectRef::new(&svc.name_any()).within(&ns))
        },
    );
    // So does a change to a Deployment Sluice made for an app (its
    // primary, proxy or baseline arm): one deleted or scaled by hand is
    // seen at once, not at the next periodic reconcile.
    let mut controller = controller.watches(
        made,
        watcher::Config::default().labels("app.kubernetes.io/managed-by=sluice"),
        |made: Deployment| {
            let app = made.labels().get("sluice.dev/release")?.clone();
            Some(ObjectRef::new(&app).within(&made.namespace()?))
        },
    );
    // So does a change to an HTTPRoute Sluice releases through.
    if watch_routes {
        controller = controller.watches_with(
            routes,
            gateway::http_route_resource(),
            watcher::Config::default(),
            |route| {
                gateway::apps_of_route(&route)
                    .into_iter()
                    .map(|(ns, app)| ObjectRef::new(&app).within(&ns))
            },
        );
    }
    controller
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
    if !annotations::present(d.annotations()) {
        if managed(&ctx, &d, &ns, &name).await? {
            return cleanup(&ctx, &d, &ns, &name, false).await;
        }
        // Never taken on: what its Secrets gave goes too.
        cleanup::forget(&ctx, &ns, &name);
        return Ok(Action::await_change());
    }
    // Another value than `enabled` keeps an app Sluice manages (an invalid
    // annotation, below) and takes on no new one.
    if !annotations::enabled(d.annotations()) && !managed(&ctx, &d, &ns, &name).await? {
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
    let key = format!("{ns}/{name}");
    let mut settings = match annotations::parse(d.annotations(), ctx.prometheus_url.is_some()) {
        Ok(s) => {
            let mut last = ctx.last_valid.lock().expect("the settings lock");
            last.insert(key.clone(), s.clone());
            s
        }
        Err(e) => {
            // The running state is kept: a release under way goes on with
            // the annotations it had (so `kubectl sluice abort` still
            // works); nothing new starts on invalid ones.
            // Only the opt-in's value is wrong: the app goes on with the
            // rest of its annotations, also after an operator restart
            // (when no earlier valid set is in memory).
            let as_enabled = (e.annotation == annotations::CANARY)
                .then(|| {
                    annotations::parse_as_enabled(d.annotations(), ctx.prometheus_url.is_some())
                        .ok()
                })
                .flatten();
            let last = as_enabled.or_else(|| {
                ctx.last_valid
                    .lock()
                    .expect("the settings lock")
                    .get(&key)
                    .cloned()
            });
            let last = match last {
                Some(last) if managed(&ctx, &d, &ns, &name).await? => Some(last),
                _ => None,
            };
            let Some(last) = last else {
                publish(
                    &ctx,
                    &d,
                    EventType::Warning,
                    "InvalidAnnotation",
                    format!("{e}; nothing was created or changed"),
                )
                .await;
                return Ok(Action::requeue(Duration::from_secs(300)));
            };
            publish(
                &ctx,
                &d,
                EventType::Warning,
                "InvalidAnnotation",
                format!("{e}; Sluice goes on with the last valid annotations until it is fixed"),
            )
            .await;
            last
        }
    };
    if settings.route.baseline_arm
        && let Err(problem) = check_baseline_names(&name, &selector_of(&to_value(&*d)?))
    {
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
    // A Secret's problem never stops a managed app (see `load_secrets`);
    // it only keeps a new one from being taken on, below.
    let secret_problems = load_secrets(&ctx, &ns, &name, &settings).await;
    let annotated = settings.clone();
    let last = ctx
        .last_loaded
        .lock()
        .expect("the loaded settings lock")
        .get(&key)
        .cloned();
    let (problems, covered) = load_configmaps(&ctx, &ns, &mut settings, last.as_ref()).await;
    if problems.is_empty() {
        let mut loaded = ctx.last_loaded.lock().expect("the loaded settings lock");
        loaded.insert(key.clone(), (annotated, settings.clone()));
    } else {
        // A ConfigMap's problem (deleted, invalid) keeps the running
        // state, as an annotation's does: a managed app goes on with what
        // was last read from that same ConfigMap (the others are read
        // afresh), so its analysis, rollback and abort go on; nothing new
        // is taken on. With nothing read from it by this process (after a
        // restart, or a ConfigMap newly named) the app waits: going on
        // without the checks it names could promote what they would stop.
        let problem = problems.join("; ");
        if !(covered && managed(&ctx, &d, &ns, &name).await?) {
            publish(
                &ctx,
                &d,
                EventType::Warning,
                "InvalidConfig",
                format!("{problem}; nothing was created or changed"),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        publish(
            &ctx,
            &d,
            EventType::Warning,
            "InvalidConfig",
            format!("{problem}; Sluice goes on with what it last read from it until it is fixed"),
        )
        .await;
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(service) = services.get_opt(&name).await? else {
        // Applied together, the Service may come a moment after its
        // Deployment (the controller sees it come and acts at once).
        let age = d
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| (ctx.now)() - t.0.as_second() as f64);
        let (kind, reason, requeue) = service_missing(age);
        publish(
            &ctx,
            &d,
            kind,
            reason,
            format!("Service {name} not found in {ns}: Sluice fronts the Service named like the Deployment"),
        )
        .await;
        return Ok(Action::requeue(requeue));
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
    let ports = match proxied_ports(&original, &dv, port, settings.http_ports.as_deref()) {
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
        // Nothing is taken on before its Secrets are right.
        if !secret_problems.is_empty() {
            for p in secret_problems {
                publish(
                    &ctx,
                    &d,
                    EventType::Warning,
                    "InvalidConfig",
                    format!("{}; nothing was created or changed", p.problem),
                )
                .await;
            }
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        if let Router::GatewayApi { httproute } = &settings.router
            && let Some(problem) = gateway::route_problem(&ctx, &ns, &name, httproute).await?
        {
            publish(
                &ctx,
                &d,
                EventType::Warning,
                "RouteUnsupported",
                format!("{problem}; nothing was created or changed"),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
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
    report_secret_problems(&ctx, &d, &key, secret_problems).await;
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
        if let Router::GatewayApi { httproute } = &settings.router {
            return gateway::take_over(&ctx, &d, &ns, &name, httproute, &primary, status).await;
        }
        return take_over(&ctx, &d, &ns, &name, &primary, &service_value, status).await;
    }
    match &settings.router {
        Router::Proxy => {
            restore_routing(&ctx, &d, &ns, &name, &service_value).await?;
            services::sync_primary_ports(&ctx, &ns, &name, &dv, &service_value).await?;
            ensure_proxy(
                &ctx,
                &ns,
                &name,
                &dv,
                &ports,
                &original_selector(&service_value),
                &settings.proxy,
            )
            .await?;
        }
        Router::GatewayApi { httproute } => {
            // A route deleted under a managed app: said where a user looks
            // (kubectl describe, kubectl get events), not only in the log.
            if gateway::http_routes(&ctx.client, &ns)
                .get_opt(httproute)
                .await?
                .is_none()
            {
                publish(
                    &ctx,
                    &d,
                    EventType::Warning,
                    "RouteNotFound",
                    format!("HTTPRoute {ns}/{httproute} (sluice.dev/httproute) not found: Sluice cannot move the app's traffic until it is back; the release holds"),
                )
                .await;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            // The weight in force (a decision not yet carried out is the
            // release's to apply, not drift).
            let in_force = match status.machine.as_ref() {
                Some(m) if m.unconfirmed.is_some() => None,
                // Finalise has put the weight at rest; the machine clears
                // its own at Succeeded.
                Some(m) if m.phase == machine::Phase::Finalising => Some(0),
                Some(m) if !m.phase.is_terminal() => Some(m.canary_weight_bp),
                _ => Some(0),
            };
            if let Some(bp) = in_force {
                gateway::repair_route(&ctx, &d, &ns, &name, httproute, bp).await?;
            }
        }
    }
    // A proportional release scales the bounds of the canary's HPA too.
    let releasing = status.machine.as_ref().filter(|m| !m.phase.is_terminal());
    let canary_bounds = releasing
        .filter(|_| settings.canary_scale == knobs::CanaryScale::Proportional)
        .map(|m| (settings.canary_scale, m.canary_weight_bp));
    sync_hpas(&ctx, &ns, &name, &dv, canary_bounds).await?;
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

/// How long a Deployment may wait for its Service before that is a
/// Warning: `kubectl apply` of a directory, or two applies in a row, makes
/// the Service moments after the Deployment.
pub const SERVICE_GRACE: Duration = Duration::from_secs(30);

/// The Event and the next look for an annotated Deployment whose Service
/// is missing, by the Deployment's age in seconds: while it is young a
/// Normal `WaitingForService` and another look in 5 s; after that (or with
/// no age known, or one the clocks make absurd) a Warning
/// `ServiceNotFound` and a look every 30 s. The
/// Service's arrival reconciles at once either way (the controller watches
/// Services).
pub fn service_missing(age: Option<f64>) -> (EventType, &'static str, Duration) {
    match age {
        // A little below 0: the operator's clock a moment behind the API
        // server's.
        Some(a) if (-10.0..SERVICE_GRACE.as_secs_f64()).contains(&a) => (
            EventType::Normal,
            "WaitingForService",
            Duration::from_secs(5),
        ),
        _ => (
            EventType::Warning,
            "ServiceNotFound",
            Duration::from_secs(30),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_service_is_a_warning_only_once_the_deployment_is_not_new() {
        for (age, reason) in [
            (Some(0.0), "WaitingForService"),
            (Some(29.0), "WaitingForService"),
            (Some(-3.0), "WaitingForService"),
            (Some(30.0), "ServiceNotFound"),
            (Some(3600.0), "ServiceNotFound"),
            (Some(-3600.0), "ServiceNotFound"),
            (None, "ServiceNotFound"),
        ] {
            let (kind, got, requeue) = service_missing(age);
            assert_eq!(got, reason, "{age:?}");
            let warning = matches!(kind, EventType::Warning);
            assert_eq!(warning, reason == "ServiceNotFound", "{age:?}");
            assert!(requeue <= Duration::from_secs(30), "{age:?}");
        }
    }

    #[test]
    fn an_old_status_with_templates_is_read_and_written_without_them() {
        // A status as an earlier version wrote it: every pod template kept.
        let mut old = serde_json::to_value(KubeStatus::default()).expect("serialises");
        old["promoted"] = serde_json::json!([
            {"revision":"b","template":{"spec":{"containers":[{"name":"app","image":"app:2"}]}}},
            {"revision":"a","template":{"spec":{"containers":[{"name":"app","image":"app:1"}]}}}]);
        let s: KubeStatus = serde_json::from_value(old).expect("an old status is read");
        assert_eq!(
            s.promoted
                .iter()
                .map(|p| p.revision.as_str())
                .collect::<Vec<_>>(),
            ["b", "a"]
        );
        let written = serde_json::to_string(&s).expect("serialises");
        assert!(!written.contains("template"), "{written}");
        assert!(!written.contains("app:1"), "{written}");
    }

    #[test]
    fn the_remembered_revisions_are_capped() {
        let mut s = KubeStatus::default();
        for i in 0..100 {
            s.remember_promoted(&format!("rev{i}"), 3);
        }
        assert_eq!(s.promoted.len(), 4, "the primary's and 3 before it");
        assert_eq!(s.promoted[0].revision, "rev99");
        for i in 0..100 {
            s.remember_promoted(&format!("r{i}"), usize::MAX);
        }
        assert_eq!(
            s.promoted.len(),
            annotations::MAX_ROLLBACK_WINDOW + 1,
            "never more than the largest window the parser accepts"
        );
        s.remember_promoted("x", 0);
        assert!(s.promoted.is_empty(), "window off forgets them");
    }
}
