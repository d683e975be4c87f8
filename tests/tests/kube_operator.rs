//! `sluice kube` against the fake API server, through a real `kube::Client`.
//!
//! Most tests call `reconcile` directly with a controllable clock and a
//! scripted metric provider, playing kubelet in between (marking
//! Deployments ready): every step is deterministic and fast. One test runs
//! the real controller under leader election.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::{Value, json};
use sluice_operator::analysis::{Analysis, CheckResult, Outcome};
use sluice_operator::kube::{self as op, Context, KubeStatus, ReplicaConfig};
use sluice_operator::provider::Provider;
use sluice_proxy::kube_source::digest;
use sluice_tests::fake_kube::{FakeKube, Options, Readiness};
use sluice_tests::{argocd_health, eventually};

const NS: &str = "shop";
const APPS: &str = "apis/apps/v1";

struct World {
    fake: FakeKube,
    ctx: Arc<Context>,
    clock: Arc<AtomicU64>,
    script: Arc<std::sync::Mutex<VecDeque<Outcome>>>,
    /// What the proxy replicas answer when asked which config they serve;
    /// None: two replicas that follow their ConfigMap at once.
    proxy_answer: ProxyAnswer,
}

type ProxyAnswer = Arc<std::sync::Mutex<Option<Vec<ReplicaConfig>>>>;

fn verdict(outcome: Outcome) -> Analysis {
    Analysis {
        canary_requests: Some(100),
        checks: vec![CheckResult {
            name: "success-rate".into(),
            outcome,
            value: Some(if outcome == Outcome::Fail {
                80.0
            } else {
                100.0
            }),
            threshold: ">= 99%".into(),
            reason: if outcome == Outcome::Pass {
                String::new()
            } else {
                format!("scripted {outcome:?}")
            },
            ..CheckResult::default()
        }],
        ..Analysis::default()
    }
}

fn context(
    fake: &FakeKube,
    clock: &Arc<AtomicU64>,
    script: &Arc<std::sync::Mutex<VecDeque<Outcome>>>,
    answer: &ProxyAnswer,
) -> Arc<Context> {
    context_with_image(fake, clock, script, answer, "sluice-proxy:test")
}

fn context_with_image(
    fake: &FakeKube,
    clock: &Arc<AtomicU64>,
    script: &Arc<std::sync::Mutex<VecDeque<Outcome>>>,
    answer: &ProxyAnswer,
    proxy_image: &str,
) -> Arc<Context> {
    // The operator runs as its own ServiceAccount, with the shipped RBAC.
    let mut ctx = Context::new(
        fake.operator_client(),
        "test-operator",
        None,
        proxy_image.into(),
    );
    let c = clock.clone();
    ctx.now = Arc::new(move || c.load(Ordering::SeqCst) as f64);
    let s = script.clone();
    // Each tick's analysis comes from the script (pass when it runs out).
    ctx.make_provider = Arc::new(move |_, _, _| {
        let s = s.clone();
        Provider::Scripted(Box::new(move || {
            verdict(s.lock().unwrap().pop_front().unwrap_or(Outcome::Pass))
        }))
    });
    ctx.poll = Duration::from_millis(10);
    // The proxy pods have no process behind them here: by default they
    // report the digest of their ConfigMap as it is now.
    let (fake, answer) = (fake.clone(), answer.clone());
    ctx.proxy_digests = Some(Arc::new(move |ns: String, app: String| {
        let replicas = answer.lock().unwrap().clone().unwrap_or_else(|| {
            let digest = fake
                .get("api/v1", "configmaps", &ns, &format!("{app}-sluice"))
                .and_then(|cm| cm["data"]["routes.yaml"].as_str().map(digest))
                .ok_or_else(|| "no ConfigMap".to_string());
            ["a", "b"]
                .iter()
                .map(|p| ReplicaConfig {
                    pod: format!("{app}-sluice-{p}"),
                    digest: digest.clone(),
                })
                .collect()
        });
        Box::pin(async move { Ok(replicas) })
    }));
    Arc::new(ctx)
}

impl World {
    async fn new(annotations: Value) -> Self {
        Self::with(annotations, Options::default()).await
    }

    async fn with(annotations: Value, options: Options) -> Self {
        let fake = FakeKube::start_with(options).await;
        fake.create_namespace("shop");
        fake.install_operator_rbac();
        fake.put(
            "api/v1",
            "configmaps",
            NS,
            json!({"metadata": {"name": "settings"}, "data": {"greeting": "hello"}}),
        );
        fake.put(
            "api/v1",
            "services",
            NS,
            json!({"metadata": {"name": "app"}, "spec": {"selector": {"app": "app"}, "ports": [{"name": "http", "port": 80, "targetPort": 9898}]}}),
        );
        // No baseline unless a test asks: the scripted analyses start at once.
        let mut ann = json!({"sluice.dev/canary": "enabled", "sluice.dev/steps": "20,50", "sluice.dev/interval": "10s", "sluice.dev/failure-limit": "2", "sluice.dev/baseline": "0s"});
        sluice_tests::fake_kube::merge(&mut ann, &annotations);
        fake.put(
            APPS,
            "deployments",
            NS,
            json!({
                "metadata": {"name": "app", "annotations": ann},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "app"}},
                    "template": {
                        "metadata": {"labels": {"app": "app"}},
                        "spec": {"containers": [{"name": "app", "image": "app:1", "envFrom": [{"configMapRef": {"name": "settings"}}]}]},
                    },
                },
            }),
        );
        fake.make_ready(NS, "app");
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let script = Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let proxy_answer = ProxyAnswer::default();
        let ctx = context(&fake, &clock, &script, &proxy_answer);
        Self {
            fake,
            ctx,
            clock,
            script,
            proxy_answer,
        }
    }

    async fn tick(&self) {
        let api: Api<Deployment> = Api::namespaced(self.fake.client(), NS);
        let d = api.get("app").await.unwrap();
        op::reconcile(Arc::new(d), self.ctx.clone()).await.unwrap();
    }

    fn advance(&self, secs: u64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    fn deployment(&self, name: &str) -> Value {
        self.fake
            .get(APPS, "deployments", NS, name)
            .unwrap_or_else(|| panic!("no Deployment {name}"))
    }

    fn status(&self) -> KubeStatus {
        let p = self.deployment("app-primary");
        serde_json::from_str(
            p["metadata"]["annotations"]["sluice.dev/status"]
                .as_str()
                .unwrap(),
        )
        .unwrap()
    }

    fn weight(&self) -> f64 {
        let cm = self
            .fake
            .get("api/v1", "configmaps", NS, "app-sluice")
            .unwrap();
        let config =
            sluice_proxy::Config::from_yaml(cm["data"]["routes.yaml"].as_str().unwrap()).unwrap();
        config.routes[0].canary_weight
    }

    fn replicas(&self, name: &str) -> i64 {
        self.deployment(name)["spec"]["replicas"].as_i64().unwrap()
    }

    fn events(&self) -> Vec<(String, String, String)> {
        self.fake
            .names("apis/events.k8s.io/v1", "events", NS)
            .into_iter()
            .filter_map(|n| self.fake.get("apis/events.k8s.io/v1", "events", NS, &n))
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or_default().to_string(),
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["note"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// A Warning `reason` whose note holds every one of `needles` was
    /// published, and the release still obeys an abort: it is rolled back
    /// to weight 0.
    async fn warned_then_aborts(&self, reason: &str, needles: &[&str]) {
        let warned = self.events().into_iter().any(|(kind, r, note)| {
            kind == "Warning" && r == reason && needles.iter().all(|n| note.contains(n))
        });
        assert!(warned, "{:?}", self.events());
        self.command("abort");
        self.tick().await;
        assert_eq!(self.status().phase, "Failed", "{:?}", self.status());
        for _ in 0..3 {
            self.tick().await;
        }
        assert_eq!(self.weight(), 0.0, "the abort rolled the release back");
    }

    /// The note of the one Event there is, which must be a Warning
    /// `InvalidAnnotation`.
    fn the_invalid_annotation_event(&self) -> String {
        let events = self.events();
        assert_eq!(events.len(), 1, "{events:?}");
        let (kind, reason, note) = &events[0];
        assert_eq!(
            (kind.as_str(), reason.as_str()),
            ("Warning", "InvalidAnnotation")
        );
        note.clone()
    }

    /// Bootstraps: objects created, then take-over once everything is ready.
    async fn bootstrapped(self) -> Self {
        self.tick().await;
        self.tick().await;
        self.fake.make_ready(NS, "app-primary");
        self.fake.make_ready(NS, "app-sluice");
        // The Service moves to the proxy; its endpoints follow; then the
        // user's Deployment scales down.
        for _ in 0..5 {
            if self.status().phase == "Initialized" {
                return self;
            }
            self.tick().await;
        }
        panic!("never Initialized: {:?}", self.status());
    }

    /// Ticks until the phase is `phase`, playing kubelet and the clock.
    async fn until(&self, phase: &str, limit: usize) -> Vec<f64> {
        let mut weights = Vec::new();
        for _ in 0..limit {
            let s = self.status();
            if s.phase == phase {
                return weights;
            }
            for d in ["app", "app-primary"] {
                self.fake.make_ready(NS, d);
            }
            self.advance(10);
            self.tick().await;
            let w = self.weight();
            if weights.last() != Some(&w) {
                weights.push(w);
            }
        }
        panic!("never reached {phase}; status: {:?}", self.status());
    }

    /// A `kubectl sluice` command, as its annotation on the primary.
    fn command(&self, command: &str) {
        self.fake.merge_into(
            APPS,
            "deployments",
            NS,
            "app-primary",
            json!({"metadata": {"annotations": {"sluice.dev/command": command}}}),
        );
    }

    fn set_image(&self, image: &str) {
        self.fake.merge_into(
            APPS,
            "deployments",
            NS,
            "app",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image, "envFrom": [{"configMapRef": {"name": "settings"}}]}]}}}}),
        );
    }
}

#[tokio::test]
async fn annotating_creates_exactly_the_objects_and_moves_traffic_only_when_ready() {
    let w = World::new(json!({})).await;
    w.tick().await;
    let mut deployments = w.fake.names(APPS, "deployments", NS);
    deployments.sort();
    assert_eq!(deployments, ["app", "app-primary", "app-sluice"]);
    let mut services = w.fake.names("api/v1", "services", NS);
    services.sort();
    assert_eq!(services, ["app", "app-canary", "app-primary", "app-sluice"]);
    let mut cms = w.fake.names("api/v1", "configmaps", NS);
    cms.sort();
    assert_eq!(cms, ["app-primary-settings", "app-sluice", "settings"]);
    assert_eq!(w.fake.names("api/v1", "secrets", NS), ["app-sluice-admin"]);
    for (prefix, plural) in [
        ("api/v1", "serviceaccounts"),
        ("apis/rbac.authorization.k8s.io/v1", "roles"),
        ("apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    ] {
        assert_eq!(w.fake.names(prefix, plural, NS), ["app-sluice"], "{plural}");
    }
    let primary = w.deployment("app-primary");
    assert_eq!(
        primary["spec"]["selector"]["matchLabels"]["app"],
        "app-primary"
    );
    assert_eq!(primary["spec"]["replicas"], 3);
    assert_eq!(
        primary["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"],
        "app-primary-settings"
    );
    let app_uid = w.deployment("app")["metadata"]["uid"].clone();
    for (prefix, plural, name) in [
        (APPS, "deployments", "app-primary"),
        (APPS, "deployments", "app-sluice"),
        ("api/v1", "services", "app-canary"),
        ("api/v1", "configmaps", "app-sluice"),
    ] {
        let o = w.fake.get(prefix, plural, NS, name).unwrap();
        assert_eq!(
            o["metadata"]["ownerReferences"][0]["uid"], app_uid,
            "{name} is owned by app"
        );
    }
    assert_eq!(
        w.fake.get("api/v1", "services", NS, "app-canary").unwrap()["spec"]["selector"],
        json!({"app": "app", "pod-template-hash": "none"}),
        "no canary pods yet: the canary Service selects nothing"
    );
    let proxy = w.deployment("app-sluice");
    let container = &proxy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        json!([
            "--kube-configmap",
            "shop/app-sluice",
            "--log-format",
            "json",
            "--drain-delay=5s",
            "--drain-timeout=20s"
        ])
    );
    // The proxy listens on the port the Service targets, and its pods carry
    // the Service's selector labels besides its own.
    assert_eq!(container["ports"][0]["containerPort"], 9898);
    assert_eq!(
        proxy["spec"]["template"]["metadata"]["labels"],
        json!({"app": "app", "app.kubernetes.io/name": "sluice-proxy", "sluice.dev/release": "app"})
    );
    assert!(
        w.fake
            .get("apis/policy/v1", "poddisruptionbudgets", NS, "app-sluice")
            .is_some(),
        "the proxy has a PodDisruptionBudget"
    );
    assert_eq!(w.weight(), 0.0);

    // Not ready yet: the Service still selects the user's pods.
    w.tick().await;
    assert_eq!(
        w.fake.get("api/v1", "services", NS, "app").unwrap()["spec"]["selector"],
        json!({"app": "app"})
    );
    assert_eq!(w.replicas("app"), 3);
    w.fake.make_ready(NS, "app-primary");
    w.tick().await;
    assert_eq!(
        w.fake.get("api/v1", "services", NS, "app").unwrap()["spec"]["selector"],
        json!({"app": "app"}),
        "the proxy is not ready yet"
    );
    w.fake.make_ready(NS, "app-sluice");
    w.tick().await;
    let svc = w.fake.get("api/v1", "services", NS, "app").unwrap();
    assert_eq!(
        svc["spec"]["selector"],
        json!({"app.kubernetes.io/name": "sluice-proxy", "sluice.dev/release": "app"})
    );
    assert_eq!(
        svc["spec"]["ports"][0]["targetPort"], 9898,
        "the ports stay: the proxy listens on them"
    );
    assert_eq!(
        w.replicas("app"),
        3,
        "not before the Service's endpoints are the proxy's"
    );
    let proxies = w.fake.view(|v| v.ready_endpoints(NS, "app", "http"));
    assert!(proxies >= 1, "the proxy serves Service app");
    w.tick().await;
    assert_eq!(
        w.replicas("app"),
        0,
        "the canary is scaled down after the take-over"
    );
    assert_eq!(w.status().phase, "Initialized");
    // The proxy's ConfigMap holds a config the proxy accepts.
    let cm = w
        .fake
        .get("api/v1", "configmaps", NS, "app-sluice")
        .unwrap();
    let config =
        sluice_proxy::Config::from_yaml(cm["data"]["routes.yaml"].as_str().unwrap()).unwrap();
    let valid = config.validate().unwrap();
    assert_eq!(
        valid.routes[0].stable.as_ref().unwrap().host,
        "app-primary.shop.svc"
    );
    assert_eq!(valid.routes[0].stable.as_ref().unwrap().port, 80);
}

#[tokio::test]
async fn a_new_image_is_released_step_by_step_and_promoted() {
    let w = World::new(json!({})).await.bootstrapped().await;
    let before = w.status().primary_revision.clone();
    w.set_image("app:2");
    let applied = w.deployment("app")["metadata"]["generation"]
        .as_i64()
        .unwrap();
    w.tick().await;
    assert_eq!(w.status().phase, "Initializing");
    assert_eq!(
        w.status().observed_generation,
        applied,
        "the status says which generation of the user's change it reflects"
    );
    assert_eq!(
        w.replicas("app"),
        3,
        "the canary scales to the primary's replicas"
    );
    let weights = w.until("Succeeded", 20).await;
    assert_eq!(
        weights,
        [0.0, 20.0, 50.0, 0.0],
        "the ConfigMap weights follow the steps"
    );
    let primary = w.deployment("app-primary");
    assert_eq!(
        primary["spec"]["template"]["spec"]["containers"][0]["image"],
        "app:2"
    );
    assert_eq!(
        primary["spec"]["template"]["metadata"]["labels"]["app"],
        "app-primary"
    );
    assert_eq!(w.replicas("app"), 0);
    let s = w.status();
    assert_ne!(s.primary_revision, before);
    assert_eq!(s.canary_weight, 0.0);
    assert!(
        w.events()
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "Promoted"),
        "{:?}",
        w.events()
    );
    let metrics = w.ctx.metrics.encode();
    assert!(
        metrics.contains(
            "sluice_canary_releases_total{namespace=\"shop\",name=\"app\",result=\"succeeded\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_canary_phase{namespace=\"shop\",name=\"app\"} 6"),
        "{metrics}"
    );
}

/// With the shipped admission policy installed (deploy/operator/
/// admission-policy.yaml), the operator's own writes are admitted: the
/// take-over (the proxy Deployment with its spec hash), a release to
/// promotion and the phase and status it mirrors on the user's Deployment.
#[tokio::test]
async fn the_shipped_admission_policy_admits_everything_the_operator_writes() {
    let w = World::new(json!({})).await;
    let text = std::fs::read_to_string(
        sluice_tests::workspace_root().join("deploy/operator/admission-policy.yaml"),
    )
    .expect("read the policy");
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc).expect("YAML");
        let doc = serde_json::to_value(doc).expect("JSON");
        let plural = match doc["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => "validatingadmissionpolicies",
            Some("ValidatingAdmissionPolicyBinding") => "validatingadmissionpolicybindings",
            other => panic!("a document of kind {other:?} in the policy file"),
        };
        w.fake
            .put("apis/admissionregistration.k8s.io/v1", plural, "", doc);
    }
    let w = w.bootstrapped().await;
    let mut deployments = w.fake.names(APPS, "deployments", NS);
    deployments.sort();
    assert_eq!(deployments, ["app", "app-primary", "app-sluice"]);
    w.set_image("app:2");
    w.until("Succeeded", 20).await;
    assert_eq!(
        w.deployment("app-primary")["spec"]["template"]["spec"]["containers"][0]["image"],
        "app:2"
    );
    assert_eq!(
        w.deployment("app")["metadata"]["annotations"]["sluice.dev/phase"],
        "Succeeded"
    );
}

#[tokio::test]
async fn failing_analysis_rolls_back_and_the_same_revision_does_not_restart() {
    let w = World::new(json!({})).await.bootstrapped().await;
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail]);
    w.set_image("app:bad");
    w.until("Failed", 20).await;
    assert_eq!(w.weight(), 0.0);
    assert_eq!(w.replicas("app"), 0);
    assert_eq!(w.primary_image(), "app:1");
    assert!(
        w.events()
            .iter()
            .any(|(t, _, note)| t == "Warning" && note.contains("rolled back")),
        "{:?}",
        w.events()
    );
    // Reconciling again with the same revision changes nothing.
    for _ in 0..3 {
        w.advance(60);
        w.tick().await;
    }
    assert_eq!(w.status().phase, "Failed");
    assert_eq!(w.replicas("app"), 0);
    // `kubectl sluice retry` (a command annotation) releases it again.
    w.command("retry");
    w.tick().await;
    assert_eq!(w.status().phase, "Initializing");
}

#[tokio::test]
async fn a_changed_configmap_is_a_release_and_the_primary_keeps_its_copy_until_promotion() {
    let w = World::new(json!({})).await.bootstrapped().await;
    w.fake.merge_into(
        "api/v1",
        "configmaps",
        NS,
        "settings",
        json!({"data": {"greeting": "bonjour"}}),
    );
    w.tick().await;
    assert_eq!(
        w.status().phase,
        "Initializing",
        "a referenced ConfigMap change is a new revision"
    );
    w.until("Progressing", 10).await;
    let copy = w
        .fake
        .get("api/v1", "configmaps", NS, "app-primary-settings")
        .unwrap();
    assert_eq!(
        copy["data"]["greeting"], "hello",
        "stable keeps its own copy during the release"
    );
    w.until("Succeeded", 20).await;
    let copy = w
        .fake
        .get("api/v1", "configmaps", NS, "app-primary-settings")
        .unwrap();
    assert_eq!(copy["data"]["greeting"], "bonjour");
}

#[tokio::test]
async fn an_operator_restart_mid_release_resumes_at_the_same_step() {
    let mut w = World::new(json!({"sluice.dev/steps": "10,20,30"}))
        .await
        .bootstrapped()
        .await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    w.advance(10);
    w.tick().await;
    assert_eq!(w.weight(), 20.0);
    let before = w.status();
    // A new operator process: fresh memory, same cluster state.
    w.ctx = context(&w.fake, &w.clock, &w.script, &w.proxy_answer);
    w.script.lock().unwrap().push_back(Outcome::Inconclusive);
    w.tick().await;
    assert_eq!(w.weight(), 20.0, "no weight moves backwards");
    assert_eq!(w.status().step, before.step);
    w.advance(10);
    w.tick().await;
    assert_eq!(w.weight(), 20.0, "an inconclusive tick holds");
    w.advance(10);
    w.tick().await;
    assert_eq!(w.weight(), 30.0, "the next step follows, none skipped");
}

#[tokio::test]
async fn an_invalid_annotation_is_a_warning_event_and_nothing_is_created_or_changed() {
    let w = World::new(json!({"sluice.dev/steps": "50,10"})).await;
    let writes_before = w.fake.writes().len();
    w.tick().await;
    let note = w.the_invalid_annotation_event();
    assert!(
        note.contains("sluice.dev/steps") && note.contains("`50,10`") && note.contains("allowed"),
        "{note}"
    );
    let writes: Vec<_> = w.fake.writes()[writes_before..]
        .iter()
        .filter(|(_, p)| !p.contains("/events"))
        .cloned()
        .collect();
    assert!(writes.is_empty(), "writes besides the Event: {writes:?}");
    assert_eq!(w.fake.names(APPS, "deployments", NS), ["app"]);
}

/// Only removing `sluice.dev/canary` lets go of an app: a value other
/// than `enabled` (`Enabled`, `true`) is an invalid annotation like any
/// other, a Warning Event, and the release under way goes on; the
/// primary, the proxy and the Service's selection stay.
#[tokio::test]
async fn a_misspelt_canary_annotation_mid_release_keeps_the_release() {
    let mut w = World::new(json!({})).await.bootstrapped().await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    let weight = w.weight();
    for value in ["Enabled", "true"] {
        w.fake.merge_into(
            APPS,
            "deployments",
            NS,
            "app",
            json!({"metadata": {"annotations": {"sluice.dev/canary": value}}}),
        );
        w.tick().await;
        let events = w.events();
        assert!(
            events.iter().any(|(kind, reason, note)| kind == "Warning"
                && reason == "InvalidAnnotation"
                && note.contains(&format!("sluice.dev/canary: `{value}`"))),
            "{events:?}"
        );
        let mut deployments = w.fake.names(APPS, "deployments", NS);
        deployments.sort();
        assert_eq!(deployments, ["app", "app-primary", "app-sluice"], "{value}");
        assert_eq!(w.status().phase, "Progressing", "{value}");
        assert_eq!(w.weight(), weight, "{value}");
        assert_eq!(
            w.deployment("app-primary")["spec"]["template"]["spec"]["containers"][0]["image"],
            "app:1",
            "{value}"
        );
    }
    // Each value had an Event of its own (a new message is a new Event);
    // the same message again is counted in its Event's series.
    w.tick().await;
    let invalid: Vec<Value> = w
        .fake
        .names("apis/events.k8s.io/v1", "events", NS)
        .into_iter()
        .filter_map(|n| w.fake.get("apis/events.k8s.io/v1", "events", NS, &n))
        .filter(|e| e["reason"] == "InvalidAnnotation")
        .collect();
    assert_eq!(invalid.len(), 2, "{invalid:#?}");
    let repeated = invalid
        .iter()
        .find(|e| e["note"].as_str().unwrap_or_default().contains("`true`"))
        .expect("the Event of `true`");
    assert_eq!(repeated["series"]["count"], 2, "{repeated}");
    // A new operator process (no earlier valid annotations in memory) goes
    // on with the release too, and reads its commands.
    w.ctx = context(&w.fake, &w.clock, &w.script, &w.proxy_answer);
    w.command("abort");
    w.tick().await;
    assert_eq!(w.status().phase, "Failed", "the abort after a restart");
    assert_eq!(w.weight(), 0.0);
}

/// A Deployment Sluice does not manage is taken on only with
/// `sluice.dev/canary: enabled`; another value (`false`) changes nothing
/// and says nothing, as before it was opted in.
#[tokio::test]
async fn a_deployment_with_canary_false_is_left_alone() {
    let w = World::new(json!({"sluice.dev/canary": "false"})).await;
    let writes_before = w.fake.writes().len();
    w.tick().await;
    assert_eq!(w.fake.names(APPS, "deployments", NS), ["app"]);
    assert!(w.events().is_empty(), "{:?}", w.events());
    assert_eq!(w.fake.writes().len(), writes_before);
}

#[tokio::test]
async fn removing_the_annotation_restores_the_service_and_replicas() {
    let w = World::new(json!({})).await.bootstrapped().await;
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/canary": null}}}),
    );
    w.tick().await;
    assert_eq!(w.replicas("app"), 3, "replicas restored first");
    assert!(w.fake.get("api/v1", "services", NS, "app").unwrap()["spec"]["selector"]["app.kubernetes.io/name"].is_string(), "traffic stays on the proxy until the pods are ready");
    w.fake.make_ready(NS, "app");
    w.tick().await;
    let svc = w.fake.get("api/v1", "services", NS, "app").unwrap();
    assert_eq!(svc["spec"]["selector"], json!({"app": "app"}));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 9898);
    assert!(
        svc["metadata"]["annotations"]
            .get("sluice.dev/original-selector")
            .is_none()
    );
    assert!(
        w.fake.get(APPS, "deployments", NS, "app-sluice").is_some(),
        "the proxy stays until the Service's own pods are its endpoints"
    );
    w.tick().await;
    assert_eq!(w.fake.names(APPS, "deployments", NS), ["app"]);
    let mut services = w.fake.names("api/v1", "services", NS);
    services.sort();
    assert_eq!(services, ["app"]);
    assert_eq!(w.fake.names("api/v1", "configmaps", NS), ["settings"]);
    assert!(
        w.deployment("app")["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty())
    );
    let left = w.deployment("app")["metadata"]["annotations"].clone();
    assert!(
        left.get("sluice.dev/phase").is_none() && left.get("sluice.dev/message").is_none(),
        "{left}"
    );
    let said: Vec<_> = w
        .events()
        .into_iter()
        .filter(|(_, reason, _)| reason.starts_with("Released"))
        .map(|(kind, reason, _)| (kind, reason))
        .collect();
    assert_eq!(
        said,
        [("Normal".to_string(), "Released".to_string())],
        "the promoted spec serves: nothing to warn of"
    );
}

/// After a rollback the user's Deployment still holds the rolled-back
/// spec. Removing the annotation hands traffic back to it: Sluice lets go
/// as asked, but says so once, in a Warning naming both revisions.
#[tokio::test]
async fn removing_the_annotation_after_a_rollback_warns_that_the_rolled_back_spec_will_serve() {
    let w = World::new(json!({})).await.bootstrapped().await;
    let promoted = w.status().primary_revision.clone();
    assert!(!promoted.is_empty());
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    w.command("abort");
    for _ in 0..4 {
        w.tick().await;
    }
    let status = w.status();
    assert_eq!(status.phase, "Failed", "{status:?}");
    let rolled_back = status
        .failed_revision
        .clone()
        .expect("a rolled-back revision");
    assert_eq!(
        w.replicas("app"),
        0,
        "the rolled-back canary is scaled down"
    );
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/canary": null}}}),
    );
    w.tick().await;
    assert_eq!(w.replicas("app"), 3, "letting go goes on");
    w.fake.make_ready(NS, "app");
    for _ in 0..3 {
        w.tick().await;
    }
    assert_eq!(w.fake.names(APPS, "deployments", NS), ["app"]);
    let note = the_released_unpromoted_warning(&w);
    assert!(
        note.contains(&rolled_back) && note.contains(&promoted) && note.contains("rolled back"),
        "{note}"
    );
}

/// The same mid-release: the canary already runs the primary's replicas
/// (`canary-scale: full`), so nothing is scaled, and the unjudged spec
/// takes all traffic when the Service is handed back; said once.
#[tokio::test]
async fn removing_the_annotation_mid_release_warns_that_the_unjudged_spec_will_serve() {
    let w = World::new(json!({})).await.bootstrapped().await;
    let promoted = w.status().primary_revision.clone();
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    let judged = w.status().revision.clone();
    assert_ne!(judged, promoted);
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/canary": null}}}),
    );
    for _ in 0..4 {
        w.fake.make_ready(NS, "app");
        w.tick().await;
    }
    assert_eq!(w.fake.names(APPS, "deployments", NS), ["app"]);
    let note = the_released_unpromoted_warning(&w);
    assert!(
        note.contains(&judged) && note.contains(&promoted) && note.contains("had not promoted"),
        "{note}"
    );
}

/// The note of the one `ReleasedUnpromoted` Warning there must be.
fn the_released_unpromoted_warning(w: &World) -> String {
    let warnings: Vec<_> = w
        .events()
        .into_iter()
        .filter(|(kind, reason, _)| kind == "Warning" && reason == "ReleasedUnpromoted")
        .map(|(_, _, note)| note)
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", w.events());
    warnings[0].clone()
}

#[tokio::test]
async fn an_hpa_on_the_deployment_gets_a_twin_on_the_primary() {
    let w = World::new(json!({})).await;
    w.fake.put(
        "apis/autoscaling/v2",
        "horizontalpodautoscalers",
        NS,
        json!({"metadata": {"name": "app"}, "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"}, "minReplicas": 2, "maxReplicas": 5}}),
    );
    w.tick().await;
    let twin = w
        .fake
        .get(
            "apis/autoscaling/v2",
            "horizontalpodautoscalers",
            NS,
            "app-primary",
        )
        .expect("HPA twin");
    assert_eq!(twin["spec"]["scaleTargetRef"]["name"], "app-primary");
    assert_eq!(twin["spec"]["maxReplicas"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_runs_under_a_lease_and_a_second_replica_waits() {
    let w = World::new(json!({})).await;
    let client = w.fake.operator_client();
    let cfg = op::leader::LeaderConfig {
        retry_period: Duration::from_millis(200),
        renew_deadline: Duration::from_secs(1),
        lease_duration: Duration::from_secs(2),
        ..op::leader::LeaderConfig::new("sluice-system", "replica-a")
    };
    let ctx = w.ctx.clone();
    let leader = tokio::spawn(op::leader::run_as_leader(
        client.clone(),
        cfg.clone(),
        op::run(ctx, Some(NS.into())),
    ));
    eventually(
        "the leading replica to bootstrap app",
        Duration::from_secs(10),
        || async {
            w.fake
                .get(APPS, "deployments", NS, "app-primary")
                .map(|_| ())
        },
    )
    .await;
    let other = op::leader::LeaderConfig {
        identity: "replica-b".into(),
        ..cfg.clone()
    };
    assert!(
        !op::leader::try_acquire(&client, &other).await.unwrap(),
        "the lease is held"
    );
    let lease = w
        .fake
        .get(
            "apis/coordination.k8s.io/v1",
            "leases",
            "sluice-system",
            "sluice-operator",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
    leader.abort();
    // Once replica-a stops renewing, replica-b takes over: after the record
    // has stood unchanged for the lease duration on replica-b's own clock.
    let mut elector = op::leader::Elector::new(other.clone());
    let watching = std::time::Instant::now();
    let mut taken = false;
    while watching.elapsed() < Duration::from_secs(10) {
        if elector.try_acquire_or_renew(&client).await.unwrap() {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken, "replica-b never took the lease");
    assert!(
        watching.elapsed() >= cfg.lease_duration,
        "taken after {:?}, before the lease duration",
        watching.elapsed()
    );
}

/// A leader whose lease renewals hang (a stuck connection to the API
/// server) stops acting within its renew deadline, before the lease can
/// expire; only then does another replica take over. They never act at once.
#[tokio::test]
async fn a_leader_whose_renewals_hang_stops_before_another_takes_over() {
    let fake = FakeKube::start().await;
    fake.create_namespace("shop");
    fake.install_operator_rbac();
    let cfg = op::leader::LeaderConfig {
        retry_period: Duration::from_millis(100),
        renew_deadline: Duration::from_millis(800),
        lease_duration: Duration::from_millis(2000),
        ..op::leader::LeaderConfig::new("sluice-system", "replica-a")
    };
    let acts = Arc::new(std::sync::Mutex::new(
        Vec::<(&str, std::time::Instant)>::new(),
    ));
    let work = |who: &'static str| {
        let acts = acts.clone();
        async move {
            loop {
                acts.lock().unwrap().push((who, std::time::Instant::now()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let a = tokio::spawn(op::leader::run_as_leader(
        fake.operator_client(),
        cfg.clone(),
        work("a"),
    ));
    eventually("replica-a to lead", Duration::from_secs(5), || {
        let acting = acts.lock().unwrap().iter().any(|(w, _)| *w == "a");
        async move { acting.then_some(()) }
    })
    .await;
    // Replica-a's connection to the API server hangs from now on.
    let hung_at = std::time::Instant::now();
    fake.hang(
        "system:serviceaccount:sluice-system:sluice-operator",
        "leases",
        "sluice-operator",
        Duration::from_secs(60),
    );
    let b = tokio::spawn(op::leader::run_as_leader(
        fake.client(),
        op::leader::LeaderConfig {
            identity: "replica-b".into(),
            ..cfg.clone()
        },
        work("b"),
    ));
    eventually("replica-b to lead", Duration::from_secs(10), || {
        let acting = acts.lock().unwrap().iter().any(|(w, _)| *w == "b");
        async move { acting.then_some(()) }
    })
    .await;
    let acts = acts.lock().unwrap().clone();
    let last_a = acts
        .iter()
        .filter(|(w, _)| *w == "a")
        .map(|(_, t)| *t)
        .max()
        .unwrap();
    let first_b = acts
        .iter()
        .filter(|(w, _)| *w == "b")
        .map(|(_, t)| *t)
        .min()
        .unwrap();
    assert!(last_a < first_b, "both acted at once");
    let stopped_after = last_a.duration_since(hung_at);
    assert!(
        stopped_after <= cfg.renew_deadline + cfg.retry_period + Duration::from_millis(300),
        "replica-a kept acting {stopped_after:?} after its renewals hung"
    );
    assert!(
        first_b.duration_since(hung_at) >= cfg.lease_duration,
        "replica-b took over before the lease could expire"
    );
    assert!(a.is_finished(), "replica-a stepped down");
    b.abort();
}

#[tokio::test]
async fn deleting_the_deployment_restores_the_service_before_it_goes() {
    let w = World::new(json!({})).await.bootstrapped().await;
    assert!(
        w.deployment("app")["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "sluice.dev/cleanup")
    );
    let api: Api<Deployment> = Api::namespaced(w.fake.client(), NS);
    api.delete("app", &Default::default()).await.unwrap();
    // The finalizer holds it until Sluice has cleaned up.
    assert!(w.deployment("app")["metadata"]["deletionTimestamp"].is_string());
    w.tick().await;
    assert!(
        w.fake.get(APPS, "deployments", NS, "app").is_none(),
        "gone once the finalizer is removed"
    );
    assert_eq!(
        w.fake.get("api/v1", "services", NS, "app").unwrap()["spec"]["selector"],
        json!({"app": "app"})
    );
    assert!(w.fake.get(APPS, "deployments", NS, "app-primary").is_none());
    assert!(
        w.fake
            .get("api/v1", "configmaps", NS, "app-sluice")
            .is_none()
    );
}

/// The proxy's traffic as the real gate sees it, at `rps` requests a second
/// in 5 s scrapes (the operator's default), both arms failing one request
/// in a hundred, every request 5 ms.
fn steady_windows(rps: f64) -> Provider {
    let mut served = 0u64;
    Provider::Windows(Box::new(move |weight_bp| {
        let n = (rps * 5.0) as u64;
        let canary = n * u64::from(weight_bp) / 10_000;
        let arm = |requests: u64, served: &mut u64| {
            let failures = (*served + requests) / 100 - *served / 100;
            *served += requests;
            sluice_operator::counters::Arm {
                requests: requests as f64,
                failures: failures as f64,
                buckets: vec![(0.005, requests as f64), (f64::INFINITY, requests as f64)],
            }
        };
        sluice_operator::counters::Window {
            stable: arm(n - canary, &mut served),
            canary: arm(canary, &mut served),
            seconds: 5.0,
            ..Default::default()
        }
    }))
}

#[tokio::test]
async fn a_release_too_quiet_to_decide_states_its_plan_then_waits_for_a_person() {
    let mut w = World::new(json!({
        "sluice.dev/baseline": "30s",
        "sluice.dev/max-duration": "3m",
        "sluice.dev/min-requests": "5",
    }))
    .await;
    // 5 req/s through the real gate instead of scripted verdicts.
    let mut ctx = context(&w.fake, &w.clock, &w.script, &w.proxy_answer);
    Arc::get_mut(&mut ctx)
        .expect("not shared yet")
        .make_provider = Arc::new(|_, _, _| steady_windows(5.0));
    w.ctx = ctx;
    let w = w.bootstrapped().await;
    w.set_image("app:2");
    w.until("WaitingPromotion", 40).await;
    let events = w.events();
    let plan = events
        .iter()
        .find(|(_, reason, _)| reason == "Plan")
        .unwrap_or_else(|| panic!("a Plan Event from the baseline: {events:?}"));
    assert_eq!(plan.0, "Normal");
    assert!(plan.2.contains("5.0 req/s"), "{}", plan.2);
    assert!(
        plan.2.contains("not expected to be shown no worse"),
        "{}",
        plan.2
    );
    let held = events
        .iter()
        .find(|(_, reason, _)| reason == "Undecided")
        .unwrap_or_else(|| panic!("an Undecided Event: {events:?}"));
    assert_eq!(held.0, "Warning");
    assert!(held.2.contains("waiting for a person"), "{}", held.2);
    assert_eq!(w.weight(), 50.0);
    // Nothing is rolled back for lack of evidence while it waits.
    for _ in 0..6 {
        w.advance(10);
        w.tick().await;
    }
    let s = w.status();
    assert_eq!(s.phase, "WaitingPromotion", "{:?}", s);
    w.command("approve");
    w.until("Succeeded", 10).await;
    assert_eq!(w.primary_image(), "app:2");
}

/// A release of `app:2` under `sluice.dev/approval: manual`, held at its
/// last step for a person's approval.
async fn waiting_for_approval() -> World {
    let w = World::new(json!({"sluice.dev/approval": "manual"}))
        .await
        .bootstrapped()
        .await;
    w.set_image("app:2");
    w.until("WaitingPromotion", 20).await;
    w
}

#[tokio::test]
async fn manual_approval_holds_until_the_approve_command() {
    let w = waiting_for_approval().await;
    for _ in 0..3 {
        w.advance(10);
        w.tick().await;
    }
    assert_eq!(
        w.status().phase,
        "WaitingPromotion",
        "held without approval"
    );
    assert_eq!(w.weight(), 50.0);
    assert_eq!(
        argocd_health(&w.deployment("app")).0,
        "Suspended",
        "Argo CD shows a held release as suspended"
    );
    w.command("approve");
    w.until("Succeeded", 10).await;
    assert_eq!(w.primary_image(), "app:2");
    assert!(
        w.deployment("app-primary")["metadata"]["annotations"]
            .get("sluice.dev/command")
            .is_none(),
        "the command is consumed"
    );
}

/// A command left while the operator carries out the one it read (an
/// abort over the approve it is promoting on) is not erased when the
/// operator clears the command it read: it stays for the next reconcile.
#[tokio::test]
async fn a_command_left_while_another_is_carried_out_is_never_erased() {
    let w = waiting_for_approval().await;
    w.command("approve");
    // The operator's writes to the proxy's ConfigMap hang for a while, and
    // a person asks for an abort meanwhile.
    w.fake.hang(
        "system:serviceaccount:sluice-system:sluice-operator",
        "configmaps",
        "app-sluice",
        Duration::from_millis(1500),
    );
    let fake = w.fake.clone();
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        fake.merge_into(
            APPS,
            "deployments",
            NS,
            "app-primary",
            json!({"metadata": {"annotations": {"sluice.dev/command": "abort"}}}),
        );
    });
    w.advance(10);
    w.tick().await;
    late.await.unwrap();
    assert_eq!(
        w.deployment("app-primary")["metadata"]["annotations"]["sluice.dev/command"],
        "abort",
        "the abort left meanwhile was erased"
    );
}

fn machine_unconfirmed(w: &World) -> Option<String> {
    w.status()
        .machine
        .and_then(|m| m.unconfirmed)
        .map(|a| format!("{a:?}"))
}

#[tokio::test]
async fn a_rollback_decided_while_the_api_refuses_writes_is_kept_and_applied_once_it_accepts() {
    let w = World::new(json!({})).await.bootstrapped().await;
    w.set_image("app:bad");
    w.until("Progressing", 10).await;
    assert_eq!(w.weight(), 20.0);
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail]);
    w.advance(10);
    w.tick().await;
    // The tick that decides the rollback finds the API refusing the proxy's
    // ConfigMap three times.
    w.fake.fail_writes("configmaps", "app-sluice", 3);
    w.advance(10);
    w.tick().await;
    assert_eq!(w.status().phase, "Failed", "{}", w.status().message);
    assert_eq!(machine_unconfirmed(&w).as_deref(), Some("Rollback"));
    assert_eq!(w.weight(), 20.0, "not applied yet");
    assert!(w.status().message.contains("could not apply Rollback"));
    // Later ticks would pass (the script runs out), yet nothing advances:
    // they re-apply the rollback until it lands.
    for _ in 0..5 {
        w.advance(10);
        w.tick().await;
        assert!(
            w.weight() <= 20.0,
            "weight went up after the rollback decision"
        );
        assert_eq!(w.status().phase, "Failed");
    }
    assert_eq!(w.weight(), 0.0);
    assert_eq!(machine_unconfirmed(&w), None);
    assert_eq!(w.replicas("app"), 0, "the canary is scaled down");
}

/// The tick that finds a new revision mid-release asks no webhook of the
/// old phase about it (a rollback hook, a load test, a confirmation would
/// hear of a revision whose release has not begun): the release restarts
/// at weight 0, and its hooks are asked in its own phases.
#[tokio::test]
async fn a_new_revision_mid_release_asks_no_hook_of_the_old_phase() {
    let seen: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let log = seen.clone();
    let hook = sluice_tests::serve_http(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            log.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            // A rollback hook's "no".
            http::Response::builder()
                .status(403)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap()
        }
    })
    .await;
    let webhooks = format!("- name: kill-switch\n  type: rollback\n  url: http://{hook}/\n");
    let w = World::new(json!({"sluice.dev/webhooks": webhooks}))
        .await
        .bootstrapped()
        .await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    let asked = seen.lock().unwrap().len();
    assert!(
        asked > 0,
        "the rollback hook is asked while the release runs"
    );
    w.set_image("app:3");
    w.tick().await;
    let status = w.status();
    assert_eq!(status.phase, "Initializing", "{status:?}");
    assert_eq!(w.weight(), 0.0);
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|p| p["checksum"] != status.revision.as_str()),
        "a hook heard of the new revision before its release began: {:?}",
        &seen[asked..]
    );
}

/// A ConfigMap an app's annotations name (here its webhooks) made invalid
/// mid-release keeps the running state, as an invalid annotation does: a
/// Warning says so, the release goes on with what was last read, and an
/// abort rolls it back.
#[tokio::test]
async fn a_configmap_made_invalid_mid_release_keeps_the_release_and_abort_works() {
    let hooks =
        |text: &str| json!({"metadata": {"name": "hooks"}, "data": {"webhooks.yaml": text}});
    let w = World::new(json!({"sluice.dev/webhooks": "hooks"})).await;
    w.fake.put(
        "api/v1",
        "configmaps",
        NS,
        hooks("- {name: announce, type: event, url: 'http://127.0.0.1:9/'}\n"),
    );
    let w = w.bootstrapped().await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    w.fake.put(
        "api/v1",
        "configmaps",
        NS,
        hooks("- {name: announce, type: nope}\n"),
    );
    w.tick().await;
    w.warned_then_aborts(
        "InvalidConfig",
        &["ConfigMap hooks", "goes on with what it last read from it"],
    )
    .await;
}

/// A change to the user's Deployment mid-release that is not a new
/// revision (its annotations, `kubectl scale`) is on record at once: the
/// status says which generation it reflects (`kubectl sluice status`
/// trusts the phase only then), though nothing else changed and no tick
/// was due.
#[tokio::test]
async fn a_new_generation_mid_release_is_saved_at_once() {
    let w = World::new(json!({})).await.bootstrapped().await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    w.tick().await;
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"team": "shop"}}, "spec": {"minReadySeconds": 1}}),
    );
    let generation = w.deployment("app")["metadata"]["generation"]
        .as_i64()
        .unwrap();
    w.tick().await;
    assert_eq!(w.status().observed_generation, generation);
}

#[tokio::test]
async fn an_abort_is_not_lost_when_the_api_refuses_its_rollback() {
    let w = World::new(json!({})).await.bootstrapped().await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    w.command("abort");
    w.fake.fail_writes("configmaps", "app-sluice", 2);
    w.tick().await;
    assert_eq!(w.status().phase, "Failed");
    assert!(
        w.deployment("app-primary")["metadata"]["annotations"]
            .get("sluice.dev/command")
            .is_none(),
        "the command is consumed once its decision is on record"
    );
    assert_eq!(w.weight(), 20.0);
    for _ in 0..3 {
        w.tick().await;
    }
    assert_eq!(w.weight(), 0.0);
    assert_eq!(machine_unconfirmed(&w), None);
}

/// An annotation made invalid mid-release keeps the running state: the
/// release goes on with the last valid annotations, says so in a Warning,
/// and `kubectl sluice abort` still rolls it back.
#[tokio::test]
async fn an_annotation_made_invalid_mid_release_keeps_the_release_and_abort_works() {
    let w = World::new(json!({})).await.bootstrapped().await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    assert_eq!(w.weight(), 20.0);
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/interval": "2s"}}}),
    );
    w.tick().await;
    w.warned_then_aborts(
        "InvalidAnnotation",
        &["sluice.dev/interval", "last valid annotations"],
    )
    .await;
}

#[tokio::test]
async fn operator_downtime_does_not_count_toward_the_progress_deadline() {
    let mut w = World::new(json!({"sluice.dev/progress-deadline": "30s"}))
        .await
        .bootstrapped()
        .await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    // The operator is gone for ten minutes; a new process takes over.
    w.advance(600);
    w.ctx = context(&w.fake, &w.clock, &w.script, &w.proxy_answer);
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Inconclusive, Outcome::Inconclusive]);
    w.tick().await;
    assert_eq!(w.status().phase, "Progressing", "{}", w.status().message);
    w.advance(10);
    w.tick().await;
    assert_eq!(w.status().phase, "Progressing", "{}", w.status().message);
    // The deadline still holds for the release's own time.
    w.script.lock().unwrap().extend([
        Outcome::Inconclusive,
        Outcome::Inconclusive,
        Outcome::Inconclusive,
    ]);
    w.until("Failed", 10).await;
    assert!(w.status().message.contains("no conclusive analysis"));
}

#[tokio::test]
async fn a_new_revision_during_promotion_is_queued_and_released_after_it() {
    let w = World::new(json!({})).await.bootstrapped().await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    // Walk to promotion without letting app-primary finish its rollout.
    for _ in 0..10 {
        if w.status().phase == "Promoting" {
            break;
        }
        w.fake.make_ready(NS, "app");
        w.advance(10);
        w.tick().await;
    }
    assert_eq!(w.status().phase, "Promoting");
    w.set_image("app:3");
    w.tick().await;
    assert_eq!(w.status().phase, "Promoting");
    assert!(
        w.status().message.contains("queued"),
        "{}",
        w.status().message
    );
    w.fake.make_ready(NS, "app-primary");
    w.until("Succeeded", 5).await;
    assert_eq!(
        w.primary_image(),
        "app:2",
        "the promotion finished with the revision it started with"
    );
    w.tick().await;
    w.tick().await;
    assert_eq!(w.status().phase, "Initializing", "{}", w.status().message);
    assert_ne!(w.status().revision, w.status().primary_revision);
}

/// Pods become ready on their own (a kubelet with a readiness delay) and the
/// EndpointSlice controller follows: from the moment the app serves, through
/// the take-over, a release and its promotion, Service `app` never lacks a
/// ready endpoint on its `http` port, checked at every change the API sees.
#[tokio::test]
async fn the_service_always_has_a_ready_endpoint_through_takeover_release_promotion_and_a_drain() {
    let w = World::with(
        json!({}),
        Options {
            readiness: Readiness::After(Duration::from_millis(40)),
            ..Options::default()
        },
    )
    .await;
    eventually("the app serves", Duration::from_secs(10), || {
        let ready = w.fake.view(|v| v.ready_endpoints(NS, "app", "http")) >= 3;
        async move { ready.then_some(()) }
    })
    .await;
    w.fake.invariant("Service app has a ready endpoint", |v| {
        match v.ready_endpoints(NS, "app", "http") {
            0 => Err("Service app has no ready endpoint on port http".into()),
            _ => Ok(()),
        }
    });
    let drive = |phase: &'static str| {
        let w = &w;
        async move {
            for _ in 0..200 {
                if w.fake.get(APPS, "deployments", NS, "app-primary").is_some()
                    && w.status().phase == phase
                {
                    return;
                }
                w.advance(10);
                w.tick().await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            panic!("never reached {phase}");
        }
    };
    drive("Initialized").await;
    let selector = w.fake.get("api/v1", "services", NS, "app").unwrap()["spec"]["selector"].clone();
    assert_ne!(
        selector,
        json!({"app": "app"}),
        "the Service fronts the proxy now"
    );
    w.set_image("app:2");
    w.tick().await;
    drive("Succeeded").await;
    assert_eq!(w.primary_image(), "app:2");
    assert!(w.fake.view(|v| v.ready_endpoints(NS, "app", "http")) >= 1);
    // A node drain evicts one proxy pod: the other serves until the
    // Deployment replaces it (the PodDisruptionBudget allows one at a time).
    let pdb = w
        .fake
        .get("apis/policy/v1", "poddisruptionbudgets", NS, "app-sluice")
        .expect("a PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let proxy_pods: Vec<String> = w
        .fake
        .names("api/v1", "pods", NS)
        .into_iter()
        .filter(|n| n.starts_with("app-sluice-"))
        .collect();
    assert_eq!(proxy_pods.len(), 2, "{proxy_pods:?}");
    w.fake.delete("api/v1", "pods", NS, &proxy_pods[0]);
    eventually(
        "the evicted proxy pod to be replaced",
        Duration::from_secs(10),
        || {
            let ready = w.fake.view(|v| v.ready_endpoints(NS, "app", "http")) == 2;
            async move { ready.then_some(()) }
        },
    )
    .await;
    assert!(w.fake.violations().is_empty(), "{:?}", w.fake.violations());
}

/// Every whole object the operator sends (creates, replaces, server-side
/// applies) through bootstrap, a release, a rollback and the removal of the
/// annotation validates with `kubernetes-validate --strict` for 1.35.
/// (Merge patches are partial objects; the fake's own schema decoding
/// checks those.)
#[tokio::test]
async fn every_object_the_operator_writes_validates_strictly() {
    let w = World::new(json!({})).await.bootstrapped().await;
    w.set_image("app:2");
    w.until("Succeeded", 20).await;
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail, Outcome::Fail]);
    w.set_image("app:3");
    w.until("Failed", 20).await;
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/canary": null}}}),
    );
    w.tick().await;
    let operator = "system:serviceaccount:sluice-system:sluice-operator";
    let mut docs = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for r in w.fake.write_records() {
        let whole = matches!(r.method.as_str(), "POST" | "PUT")
            || r.content_type == "application/apply-patch+yaml";
        if r.user != operator || !whole || !r.body.is_object() {
            continue;
        }
        kinds.insert(r.body["kind"].as_str().unwrap_or("?").to_string());
        // JSON is YAML, and keeps timestamps strings.
        docs.push(format!("{}\n", r.body));
    }
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Event",
    ] {
        assert!(
            kinds.contains(kind),
            "the operator wrote no whole {kind}: {kinds:?}"
        );
    }
    sluice_tests::kubernetes_validate("operator-writes", &docs.join("---\n"));
}

// === adversarial scenarios ===

impl World {
    /// One reconcile of Deployment `name`.
    async fn tick_app(&self, name: &str) {
        let api: Api<Deployment> = Api::namespaced(self.fake.client(), NS);
        let d = api.get(name).await.unwrap();
        op::reconcile(Arc::new(d), self.ctx.clone()).await.unwrap();
    }

    /// A Deployment `name` (3 replicas, image app:1) and its Service.
    fn add_app(&self, name: &str, annotations: Value, extra_spec: Value) {
        self.fake.put(
            "api/v1",
            "services",
            NS,
            json!({"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 9898}]}}),
        );
        let mut container = json!({"name": "app", "image": "app:1"});
        sluice_tests::fake_kube::merge(&mut container, &extra_spec);
        self.fake.put(
            APPS,
            "deployments",
            NS,
            json!({
                "metadata": {"name": name, "annotations": annotations},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
                },
            }),
        );
        self.fake.make_ready(NS, name);
    }

    /// Ticks `name` until its status phase is `phase`, playing kubelet.
    async fn settle(&self, name: &str, phase: &str) {
        for _ in 0..20 {
            for d in [
                name.to_string(),
                format!("{name}-primary"),
                format!("{name}-sluice"),
            ] {
                self.fake.make_ready(NS, &d);
            }
            self.tick_app(name).await;
            let status = self
                .fake
                .get(APPS, "deployments", NS, &format!("{name}-primary"))
                .and_then(|p| {
                    p["metadata"]["annotations"]["sluice.dev/status"]
                        .as_str()
                        .map(str::to_string)
                })
                .and_then(|s| serde_json::from_str::<KubeStatus>(&s).ok());
            if status.is_some_and(|s| s.phase == phase) {
                return;
            }
        }
        panic!("{name} never reached {phase}");
    }
}

/// Objects named like Sluice's but made by someone else (here Flagger's,
/// for an app it manages): Sluice neither cleans them up for a Deployment
/// without its annotation, nor takes them over for one with it.
#[tokio::test]
async fn a_primary_sluice_did_not_make_is_never_touched() {
    let w = World::new(json!({"sluice.dev/canary": null})).await;
    let flagger = json!({"app.kubernetes.io/managed-by": "flagger"});
    w.fake.put(
        APPS,
        "deployments",
        NS,
        json!({"metadata": {"name": "app-primary", "labels": flagger}, "spec": {"replicas": 3,
            "selector": {"matchLabels": {"app": "app-primary"}},
            "template": {"metadata": {"labels": {"app": "app-primary"}}, "spec": {"containers": [{"name": "app", "image": "app:0"}]}}}}),
    );
    for svc in ["app-primary", "app-canary"] {
        w.fake.put(
            "api/v1",
            "services",
            NS,
            json!({"metadata": {"name": svc, "labels": flagger}, "spec": {"selector": {"app": svc}, "ports": [{"port": 80}]}}),
        );
    }
    w.fake.put(
        "api/v1",
        "configmaps",
        NS,
        json!({"metadata": {"name": "settings-primary", "labels": flagger}, "data": {"greeting": "hi"}}),
    );
    // What the operator wrote, other than Events.
    let operator_writes = |w: &World| -> Vec<String> {
        w.fake
            .write_records()
            .into_iter()
            .filter(|r| r.user.ends_with(":sluice-operator") && !r.path.contains("/events"))
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    };
    w.tick().await;
    assert_eq!(
        operator_writes(&w),
        Vec::<String>::new(),
        "nothing written for an app Sluice does not manage"
    );
    // Asked to manage `app`, Sluice refuses to take Flagger's objects.
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/canary": "enabled"}}}),
    );
    w.tick().await;
    w.tick().await;
    assert_eq!(
        operator_writes(&w),
        Vec::<String>::new(),
        "no object written, no finalizer added"
    );
    assert!(
        w.events().iter().any(|(t, r, n)| t == "Warning"
            && r == "ForeignObject"
            && n.contains("app-primary")
            && n.contains("not Sluice's")),
        "{:?}",
        w.events()
    );
    assert!(w.fake.get(APPS, "deployments", NS, "app-sluice").is_none());
    assert_eq!(w.replicas("app"), 3);
    assert_eq!(w.replicas("app-primary"), 3);
}

/// Two canaried apps reference one ConfigMap: each primary gets its own
/// copy, and one app's cleanup leaves the other's. A user's own Secret
/// named like an old-style copy (`db-primary`) is never written or deleted.
#[tokio::test]
async fn apps_sharing_a_configmap_keep_their_own_copies_and_a_users_secret_is_left_alone() {
    let w = World::new(json!({})).await;
    w.fake.put(
        "api/v1",
        "secrets",
        NS,
        json!({"metadata": {"name": "db"}, "data": {"password": "czNjcjN0"}}),
    );
    w.fake.put(
        "api/v1",
        "secrets",
        NS,
        json!({"metadata": {"name": "db-primary"}, "data": {"password": "bWluZQ=="}}),
    );
    let users_secret = w.fake.get("api/v1", "secrets", NS, "db-primary").unwrap();
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:1", "envFrom": [{"configMapRef": {"name": "settings"}}, {"secretRef": {"name": "db"}}]}]}}}}),
    );
    w.add_app(
        "web",
        json!({"sluice.dev/canary": "enabled", "sluice.dev/steps": "50"}),
        json!({"envFrom": [{"configMapRef": {"name": "settings"}}]}),
    );
    w.settle("app", "Initialized").await;
    w.settle("web", "Initialized").await;
    let uid = |n: &str| w.deployment(n)["metadata"]["uid"].clone();
    for (copy, owner) in [
        ("app-primary-settings", "app"),
        ("web-primary-settings", "web"),
    ] {
        let cm = w
            .fake
            .get("api/v1", "configmaps", NS, copy)
            .unwrap_or_else(|| panic!("{copy}"));
        assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], uid(owner));
        assert_eq!(cm["data"]["greeting"], "hello");
    }
    assert!(
        w.fake
            .get("api/v1", "secrets", NS, "app-primary-db")
            .is_some()
    );
    // web stops being canaried: its copy goes, app's stays.
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "web",
        json!({"metadata": {"annotations": {"sluice.dev/canary": null}}}),
    );
    for _ in 0..6 {
        w.fake.make_ready(NS, "web");
        w.tick_app("web").await;
    }
    assert!(
        w.fake.get(APPS, "deployments", NS, "web-primary").is_none(),
        "web released"
    );
    assert!(
        w.fake
            .get("api/v1", "configmaps", NS, "web-primary-settings")
            .is_none()
    );
    assert!(
        w.fake
            .get("api/v1", "configmaps", NS, "app-primary-settings")
            .is_some()
    );
    // app stops too: the user's own db-primary survives its cleanup.
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/canary": null}}}),
    );
    for _ in 0..6 {
        w.fake.make_ready(NS, "app");
        w.tick().await;
    }
    assert!(
        w.fake
            .get("api/v1", "secrets", NS, "app-primary-db")
            .is_none()
    );
    let after = w
        .fake
        .get("api/v1", "secrets", NS, "db-primary")
        .expect("the user's Secret stays");
    assert_eq!(
        after["metadata"]["resourceVersion"],
        users_secret["metadata"]["resourceVersion"]
    );
}

/// A 56-character name would make a 64-character Service `<name>-primary`:
/// refused with an Event naming the limit, before anything is created.
#[tokio::test]
async fn a_56_character_name_is_refused_with_an_event_naming_the_limit() {
    let w = World::new(json!({"sluice.dev/canary": null})).await;
    let name = "a".repeat(56);
    w.add_app(&name, json!({"sluice.dev/canary": "enabled"}), json!({}));
    w.tick_app(&name).await;
    let note = w
        .events()
        .into_iter()
        .find(|(t, r, _)| t == "Warning" && r == "Unsupported")
        .map(|(_, _, n)| n)
        .expect("an Unsupported event");
    assert!(
        note.contains("63") && note.contains("at most 55 characters"),
        "{note}"
    );
    assert_eq!(
        w.fake.names(APPS, "deployments", NS).len(),
        2,
        "app and the long one only"
    );
    assert!(w.deployment(&name)["metadata"]["finalizers"].is_null());
}

/// A Service with an HTTP port and a gRPC port (appProtocol grpc, a named
/// target port): both are proxied, the gRPC one over HTTP/2; the Service's
/// ports never change; both have ready endpoints after the take-over.
#[tokio::test]
async fn every_port_of_a_multi_port_service_is_proxied_grpc_over_http2() {
    let w = World::new(json!({})).await;
    w.fake.put(
        "api/v1",
        "services",
        NS,
        json!({"metadata": {"name": "app"}, "spec": {"selector": {"app": "app"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 9898},
            {"name": "grpc", "port": 9090, "targetPort": "grpc-port", "appProtocol": "grpc"},
        ]}}),
    );
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:1",
            "ports": [{"containerPort": 9898}, {"name": "grpc-port", "containerPort": 9091}]}]}}}}),
    );
    let ports_before =
        w.fake.get("api/v1", "services", NS, "app").unwrap()["spec"]["ports"].clone();
    let w = w.bootstrapped().await;
    let cm = w
        .fake
        .get("api/v1", "configmaps", NS, "app-sluice")
        .unwrap();
    let config =
        sluice_proxy::Config::from_yaml(cm["data"]["routes.yaml"].as_str().unwrap()).unwrap();
    let valid = config.validate().expect("the proxy accepts it");
    assert_eq!(valid.listen.port(), 9898);
    assert_eq!(valid.listeners.len(), 1);
    assert_eq!(valid.listeners[0].1.port(), 9091);
    let grpc = valid.routes.iter().find(|r| r.listener == 1).unwrap();
    assert_eq!(grpc.protocol, sluice_proxy::config::Protocol::Http2);
    let grpc_route = config.routes.iter().find(|r| r.listener.is_some()).unwrap();
    assert_eq!(grpc_route.stable, "http://app-primary.shop.svc:9090");
    let proxy = w.deployment("app-sluice");
    let ports = &proxy["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "grpc-port" && p["containerPort"] == 9091),
        "{ports}"
    );
    let svc = w.fake.get("api/v1", "services", NS, "app").unwrap();
    assert_eq!(
        svc["spec"]["ports"], ports_before,
        "the Service's ports are the user's"
    );
    for port in ["http", "grpc"] {
        assert!(
            w.fake.view(|v| v.ready_endpoints(NS, "app", port)) >= 1,
            "no ready endpoint on {port}"
        );
    }
}

/// GitOps re-applies the user's manifests mid-release with the real kubectl:
/// a client-side apply (the selector is three-way merged into the proxy's),
/// a forced server-side apply (it is replaced), and a re-apply of the
/// Deployment after the release. Service `app` has a ready endpoint at every
/// moment; Sluice restores its routing each time with an Event; the release
/// succeeds; the re-scaled Deployment goes back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitops_re_applies_never_leave_the_service_without_endpoints() {
    let w = World::with(
        json!({}),
        Options {
            tls: true,
            readiness: Readiness::After(Duration::from_millis(30)),
            ..Options::default()
        },
    )
    .await;
    let dir = sluice_tests::TempDir::new("gitops");
    let kubeconfig = dir.path.join("kubeconfig");
    w.fake.kubeconfig(&kubeconfig);
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new(sluice_tests::kubectl())
            .env("KUBECONFIG", &kubeconfig)
            .args(["-n", NS])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let service = dir.path.join("service.yaml");
    std::fs::write(
        &service,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: app\nspec:\n  selector:\n    app: app\n  ports:\n  - name: http\n    port: 80\n    targetPort: 9898\n",
    )
    .unwrap();
    let deployment = |image: &str| {
        let path = dir
            .path
            .join(format!("deployment-{image}.yaml").replace(':', "-"));
        std::fs::write(
            &path,
            format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n  annotations:\n    sluice.dev/canary: enabled\n    sluice.dev/steps: '20,50'\n    sluice.dev/interval: 10s\n    sluice.dev/failure-limit: '2'\nspec:\n  replicas: 3\n  selector:\n    matchLabels:\n      app: app\n  template:\n    metadata:\n      labels:\n        app: app\n    spec:\n      containers:\n      - name: app\n        image: {image}\n        envFrom:\n        - configMapRef:\n            name: settings\n"),
        )
        .unwrap();
        path.display().to_string()
    };
    let service_path = service.display().to_string();
    kubectl(&["apply", "-f", &service_path, "-f", &deployment("app:1")]);
    eventually("the app serves", Duration::from_secs(10), || {
        let ready = w.fake.view(|v| v.ready_endpoints(NS, "app", "http")) >= 3;
        async move { ready.then_some(()) }
    })
    .await;
    w.fake.invariant("Service app has a ready endpoint", |v| {
        match v.ready_endpoints(NS, "app", "http") {
            0 => Err("Service app has no ready endpoint on port http".into()),
            _ => Ok(()),
        }
    });
    let drive = |done: &'static (dyn Fn(&World) -> bool + Sync)| {
        let w = &w;
        async move {
            for _ in 0..300 {
                if w.fake.get(APPS, "deployments", NS, "app-primary").is_some() && done(w) {
                    return;
                }
                w.advance(10);
                w.tick().await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("never got there; status {:?}", w.status());
        }
    };
    drive(&|w| w.status().phase == "Initialized").await;
    kubectl(&["apply", "-f", &deployment("app:2")]);
    drive(&|w| w.status().phase == "Progressing" && w.weight() > 0.0).await;
    let proxy_selector =
        json!({"app.kubernetes.io/name": "sluice-proxy", "sluice.dev/release": "app"});
    let selector =
        || w.fake.get("api/v1", "services", NS, "app").unwrap()["spec"]["selector"].clone();
    // 1. Client-side apply: kubectl merges the file's selector into the live one.
    kubectl(&["apply", "-f", &service_path]);
    assert_eq!(
        selector(),
        json!({"app": "app", "app.kubernetes.io/name": "sluice-proxy", "sluice.dev/release": "app"})
    );
    w.tick().await;
    assert_eq!(selector(), proxy_selector, "restored");
    // 2. A forced server-side apply replaces the selector.
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        "flux",
        "-f",
        &service_path,
    ]);
    assert_eq!(selector(), json!({"app": "app"}));
    w.tick().await;
    assert_eq!(selector(), proxy_selector, "restored");
    // Each drift is on an Event of its own, whose note says who made it.
    let drifts: Vec<String> = w
        .events()
        .into_iter()
        .filter(|(_, reason, _)| reason == "ServiceDrift")
        .map(|(_, _, note)| note)
        .collect();
    assert_eq!(drifts.len(), 2, "{drifts:#?}");
    assert!(
        drifts[0].contains(r#"select {"app":"app","app.kubernetes.io/name""#)
            && drifts[1].contains(r#"select {"app":"app"} "#),
        "{drifts:#?}"
    );
    drive(&|w| w.status().phase == "Succeeded").await;
    assert_eq!(w.primary_image(), "app:2");
    assert_eq!(w.replicas("app"), 0);
    // 3. The Deployment's manifest re-applied after the release: 3 replicas
    //    again, scaled back to 0 by Sluice.
    kubectl(&["apply", "-f", &deployment("app:2")]);
    assert_eq!(w.replicas("app"), 3);
    w.tick().await;
    assert_eq!(w.replicas("app"), 0);
    assert!(w.events().iter().any(|(_, r, _)| r == "DeploymentDrift"));
    assert!(w.fake.violations().is_empty(), "{:?}", w.fake.violations());
}

/// Every call the operator makes through a whole life (the controller and
/// leader election running, a take-over, a promoted and a rolled-back
/// release, an HPA twin, Service drift, the annotation removed) is allowed by
/// the shipped RBAC (the fake refuses anything else with 403), and every
/// permission the shipped RBAC grants is used, save the two the API server
/// itself demands without a request of that kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rbac_is_exactly_what_the_operator_uses() {
    let w = World::new(json!({})).await;
    w.fake.put(
        "apis/autoscaling/v2",
        "horizontalpodautoscalers",
        NS,
        json!({"metadata": {"name": "app"}, "spec": {"minReplicas": 2, "maxReplicas": 5,
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"}}}),
    );
    // The controller and leader election, as `sluice kube` runs them.
    let cfg = op::leader::LeaderConfig {
        retry_period: Duration::from_millis(100),
        renew_deadline: Duration::from_millis(800),
        lease_duration: Duration::from_secs(2),
        ..op::leader::LeaderConfig::new("sluice-system", "replica-a")
    };
    let controller = tokio::spawn(op::leader::run_as_leader(
        w.fake.operator_client(),
        cfg,
        op::run(w.ctx.clone(), Some(NS.into())),
    ));
    eventually(
        "the controller to bootstrap app",
        Duration::from_secs(10),
        || {
            let made = w.fake.get(APPS, "deployments", NS, "app-primary").is_some();
            async move { made.then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    controller.abort();
    let _ = controller.await;
    let w = w.bootstrapped().await;
    w.set_image("app:2");
    w.until("Succeeded", 20).await;
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail, Outcome::Fail]);
    w.set_image("app:3");
    w.until("Failed", 20).await;
    for _ in 0..2 {
        w.fake.merge_into(
            "api/v1",
            "services",
            NS,
            "app",
            json!({"spec": {"selector": {"app": "app"}}}),
        );
        w.tick().await;
    }
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/canary": null}}}),
    );
    for _ in 0..6 {
        w.fake.make_ready(NS, "app");
        w.tick().await;
    }
    assert!(
        w.fake.get(APPS, "deployments", NS, "app-primary").is_none(),
        "cleaned up"
    );
    let operator = "system:serviceaccount:sluice-system:sluice-operator";
    let used: std::collections::BTreeSet<(String, String, String)> = w
        .fake
        .requests()
        .into_iter()
        .filter(|(user, _)| user == operator)
        .map(|(_, a)| {
            let resource = match a.subresource {
                Some(sub) => format!("{}/{sub}", a.resource),
                None => a.resource,
            };
            (a.group, resource, a.verb)
        })
        .collect();
    let rbac =
        std::fs::read_to_string(sluice_tests::workspace_root().join("deploy/operator/rbac.yaml"))
            .unwrap();
    let mut granted = std::collections::BTreeSet::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&rbac) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        for rule in v["rules"].as_array().into_iter().flatten() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        granted.insert((
                            g.as_str().unwrap().to_string(),
                            r.as_str().unwrap().to_string(),
                            verb.as_str().unwrap().to_string(),
                        ));
                    }
                }
            }
        }
    }
    // Demanded by the API server, not called: granting the proxy's Role
    // (get/list/watch on one ConfigMap) needs them held (escalation
    // prevention); blockOwnerDeletion needs update on the owner's finalizers.
    // Listing pods is what the proxy's config probe and the `proxy` metrics
    // provider do, both replaced in this world by the stand-ins `World`
    // installs (the proxy pods have no process behind them here).
    // Reading, watching and applying HTTPRoutes is the Gateway API
    // router's, which this scenario (the proxy router, no Gateway API CRDs)
    // does not take; kube_gateway.rs checks that router uses exactly these.
    let demanded: [(&str, &str, &str); 8] = [
        ("", "configmaps", "list"),
        ("", "configmaps", "watch"),
        ("apps", "deployments/finalizers", "update"),
        ("", "pods", "list"),
        ("gateway.networking.k8s.io", "httproutes", "get"),
        ("gateway.networking.k8s.io", "httproutes", "list"),
        ("gateway.networking.k8s.io", "httproutes", "watch"),
        ("gateway.networking.k8s.io", "httproutes", "patch"),
    ];
    let unused: Vec<_> = granted
        .iter()
        .filter(|(g, r, v)| !used.contains(&(g.clone(), r.clone(), v.clone())))
        .filter(|(g, r, v)| !demanded.contains(&(g.as_str(), r.as_str(), v.as_str())))
        .collect();
    assert!(
        unused.is_empty(),
        "granted but never used: {unused:?}\nused: {used:?}"
    );
    let ungranted: Vec<_> = used.iter().filter(|u| !granted.contains(*u)).collect();
    assert!(ungranted.is_empty(), "used without a rule: {ungranted:?}");
}

/// An upgraded operator (a new proxy image) rolls its proxies to it at the
/// next reconcile, and then leaves them alone.
#[tokio::test]
async fn an_upgraded_operator_upgrades_the_proxies_it_manages() {
    let w = World::new(json!({})).await.bootstrapped().await;
    let image = |w: &World| {
        w.deployment("app-sluice")["spec"]["template"]["spec"]["containers"][0]["image"].clone()
    };
    assert_eq!(image(&w), "sluice-proxy:test");
    let upgraded = context_with_image(
        &w.fake,
        &w.clock,
        &w.script,
        &w.proxy_answer,
        "sluice-proxy:next",
    );
    let api: Api<Deployment> = Api::namespaced(w.fake.client(), NS);
    op::reconcile(Arc::new(api.get("app").await.unwrap()), upgraded.clone())
        .await
        .unwrap();
    assert_eq!(image(&w), "sluice-proxy:next");
    let proxy_writes = || {
        w.fake
            .write_records()
            .iter()
            .filter(|r| {
                r.user.ends_with(":sluice-operator") && r.path.ends_with("/deployments/app-sluice")
            })
            .count()
    };
    let before = proxy_writes();
    op::reconcile(Arc::new(api.get("app").await.unwrap()), upgraded)
        .await
        .unwrap();
    assert_eq!(proxy_writes(), before, "no rewrite when nothing changed");
}

impl World {
    /// The digest of the proxy ConfigMap's text as it is now.
    fn config_digest(&self) -> String {
        let cm = self
            .fake
            .get("api/v1", "configmaps", NS, "app-sluice")
            .expect("the proxy ConfigMap");
        digest(cm["data"]["routes.yaml"].as_str().unwrap())
    }

    /// The proxy replicas answer `answers` (pod name, digest or failure)
    /// from now on; None: they follow their ConfigMap at once again.
    fn proxies_answer(&self, answers: Option<Vec<(&str, Result<String, String>)>>) {
        *self.proxy_answer.lock().unwrap() = answers.map(|a| {
            a.into_iter()
                .map(|(pod, digest)| ReplicaConfig {
                    pod: pod.into(),
                    digest,
                })
                .collect()
        });
    }
}

/// Nothing is scaled down before every proxy replica serves the config the
/// operator wrote: a replica still on an older config, or one that cannot
/// be asked, holds the take-over and a rollback's scale-down of the canary.
#[tokio::test]
async fn nothing_is_scaled_down_while_a_proxy_replica_serves_an_older_config() {
    let w = World::new(json!({})).await;
    w.tick().await;
    w.tick().await;
    let current = w.config_digest();
    w.proxies_answer(Some(vec![
        ("app-sluice-a", Ok(current.clone())),
        ("app-sluice-b", Ok("0123456789abcdef".into())),
    ]));
    w.fake.make_ready(NS, "app-primary");
    w.fake.make_ready(NS, "app-sluice");
    for _ in 0..5 {
        w.tick().await;
    }
    assert_eq!(w.replicas("app"), 3, "scaled down under a stale proxy");
    assert_ne!(w.status().phase, "Initialized");
    w.proxies_answer(Some(vec![
        ("app-sluice-a", Ok(current.clone())),
        ("app-sluice-b", Err("connection refused".into())),
    ]));
    for _ in 0..3 {
        w.tick().await;
    }
    assert_eq!(w.replicas("app"), 3, "scaled down with a proxy unheard");
    w.proxies_answer(None);
    for _ in 0..5 {
        w.tick().await;
    }
    assert_eq!(w.status().phase, "Initialized");
    assert_eq!(w.replicas("app"), 0);

    // A release; the proxies then stop following while the analysis fails.
    w.set_image("app:bad");
    w.until("Progressing", 10).await;
    w.fake.make_ready(NS, "app");
    assert!(w.weight() > 0.0);
    let progressing = w.config_digest();
    w.proxies_answer(Some(vec![
        ("app-sluice-a", Ok(progressing.clone())),
        ("app-sluice-b", Ok(progressing.clone())),
    ]));
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail, Outcome::Fail]);
    for _ in 0..6 {
        w.advance(10);
        w.tick().await;
    }
    assert_eq!(w.weight(), 0.0, "the rollback is written to the proxies");
    assert_ne!(w.config_digest(), progressing);
    assert!(
        w.replicas("app") > 0,
        "the canary was scaled down while the proxies still send it traffic"
    );
    w.proxies_answer(None);
    for _ in 0..3 {
        w.advance(10);
        w.tick().await;
    }
    assert_eq!(w.status().phase, "Failed");
    assert_eq!(w.replicas("app"), 0);
}

/// The shipped Argo CD health check (`deploy/argocd/health.lua`, run by
/// Lua 5.1) reads each phase of a release from the user's Deployment as
/// the operator leaves it, and any other Deployment by Argo CD's own rules.
#[tokio::test]
async fn the_argo_cd_health_check_follows_the_release() {
    let w = World::new(json!({})).await;
    let health = |w: &World| argocd_health(&w.deployment("app"));
    assert_eq!(health(&w).0, "Progressing", "before Sluice has taken it on");
    let w = w.bootstrapped().await;
    assert_eq!(health(&w).0, "Healthy");
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail, Outcome::Fail]);
    w.set_image("app:bad");
    w.until("Progressing", 10).await;
    let (status, message) = health(&w);
    assert_eq!(status, "Progressing");
    assert!(message.starts_with("Sluice Progressing"), "{message}");
    w.until("Failed", 20).await;
    let (status, message) = health(&w);
    assert_eq!(status, "Degraded");
    assert!(message.starts_with("Sluice Failed: "), "{message}");
    w.set_image("app:2");
    w.until("Succeeded", 30).await;
    assert_eq!(health(&w).0, "Healthy");

    // app-primary carries no opt-in annotation: the Deployment rules.
    let primary = w.deployment("app-primary");
    assert_eq!(argocd_health(&primary).0, "Healthy");
    let mut newer = primary.clone();
    newer["metadata"]["generation"] =
        json!(primary["metadata"]["generation"].as_i64().unwrap() + 1);
    assert_eq!(argocd_health(&newer).0, "Progressing");
    let mut rolling = primary.clone();
    rolling["status"]["updatedReplicas"] = json!(1);
    let (status, message) = argocd_health(&rolling);
    assert_eq!(status, "Progressing");
    assert!(message.contains("1 out of 3 new replicas"), "{message}");
    let mut stuck = rolling.clone();
    stuck["status"]["conditions"] =
        json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]);
    assert_eq!(argocd_health(&stuck).0, "Degraded");
    let mut paused = rolling;
    paused["spec"]["paused"] = json!(true);
    assert_eq!(argocd_health(&paused).0, "Suspended");
}

/// A Deployment whose selector uses `matchExpressions` is refused with a
/// Warning Event that says why; nothing is created.
#[tokio::test]
async fn a_match_expressions_selector_is_refused_with_an_event() {
    let w = World::new(json!({})).await;
    w.fake.put(
        "api/v1",
        "services",
        NS,
        json!({"metadata": {"name": "other"}, "spec": {"selector": {"app": "other"}, "ports": [{"port": 80}]}}),
    );
    w.fake.put(
        APPS,
        "deployments",
        NS,
        json!({
            "metadata": {"name": "other", "annotations": {"sluice.dev/canary": "enabled"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "other"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]},
                "template": {
                    "metadata": {"labels": {"app": "other", "tier": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "app:1"}]},
                },
            },
        }),
    );
    let api: Api<Deployment> = Api::namespaced(w.fake.client(), NS);
    op::reconcile(Arc::new(api.get("other").await.unwrap()), w.ctx.clone())
        .await
        .unwrap();
    let events = w.events();
    assert!(
        events.iter().any(
            |(t, _, note)| t == "Warning" && note.contains("matchExpressions is not supported")
        ),
        "{events:?}"
    );
    let mut deployments = w.fake.names(APPS, "deployments", NS);
    deployments.sort();
    assert_eq!(deployments, ["app", "other"]);
    assert_eq!(
        w.fake.get("api/v1", "services", NS, "other").unwrap()["spec"]["selector"],
        json!({"app": "other"})
    );
}

/// The running controller sees a change to a Deployment it made for an app
/// at once: a deleted `app-primary` (the stable's pods) is made again within
/// seconds, not at the next periodic reconcile (a minute at rest, five
/// after a failure), during which the Service had no endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_primary_is_seen_at_once_by_the_running_controller() {
    let w = World::new(json!({})).await.bootstrapped().await;
    let controller = tokio::spawn(op::run(w.ctx.clone(), Some(NS.into())));
    // The controller's first pass over the Deployment, then quiet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.fake.delete(APPS, "deployments", NS, "app-primary");
    eventually(
        "the controller to make app-primary again",
        Duration::from_secs(10),
        || {
            let made = w.fake.get(APPS, "deployments", NS, "app-primary").is_some();
            async move { made.then_some(()) }
        },
    )
    .await;
    controller.abort();
    let _ = controller.await;
}

/// The Service applied a moment after its annotated Deployment (as
/// `kubectl apply -f dir/` may order them) is fronted as soon as it comes,
/// not at a later periodic look, and the wait is no Warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_made_after_its_deployment_is_fronted_at_once_without_a_warning() {
    let w = World::new(json!({})).await;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    w.clock.store(wall, Ordering::SeqCst);
    let service = w.fake.delete("api/v1", "services", NS, "app").unwrap();
    let controller = tokio::spawn(op::run(w.ctx.clone(), Some(NS.into())));
    eventually(
        "the controller to wait for the Service",
        Duration::from_secs(10),
        || {
            let waiting = w
                .events()
                .iter()
                .any(|(t, r, _)| t == "Normal" && r == "WaitingForService");
            async move { waiting.then_some(()) }
        },
    )
    .await;
    assert!(w.fake.get(APPS, "deployments", NS, "app-primary").is_none());
    // Between looks (every 5 s while waiting): what follows comes from the
    // Service's arrival, or from the next look at least 4 s later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let made_at = std::time::Instant::now();
    w.fake.put(
        "api/v1",
        "services",
        NS,
        json!({"metadata": {"name": "app"}, "spec": service["spec"].clone()}),
    );
    eventually(
        "the controller to front the Service",
        Duration::from_secs(10),
        || {
            let made = w.fake.get(APPS, "deployments", NS, "app-primary").is_some();
            async move { made.then_some(()) }
        },
    )
    .await;
    assert!(
        made_at.elapsed() < Duration::from_millis(3500),
        "fronted {:?} after the Service came: at a later look, not at once",
        made_at.elapsed()
    );
    controller.abort();
    let _ = controller.await;
    let events = w.events();
    assert!(!events.iter().any(|(t, _, _)| t == "Warning"), "{events:?}");
}

/// A user who deletes `app-primary` gets it back from the next reconcile,
/// built from the Service's recorded original selector and ports, not from
/// the Service as taken over (which selects the proxy).
#[tokio::test]
async fn a_deleted_primary_is_bootstrapped_again_from_the_recorded_service() {
    let w = World::new(json!({})).await.bootstrapped().await;
    let recorded = |w: &World| {
        w.fake.get("api/v1", "services", NS, "app").unwrap()["metadata"]["annotations"]
            ["sluice.dev/original-selector"]
            .clone()
    };
    let before = recorded(&w);
    assert!(before.as_str().unwrap().contains("\"app\""), "{before}");
    w.fake.delete(APPS, "deployments", NS, "app-primary");
    for _ in 0..3 {
        w.tick().await;
    }
    w.fake.make_ready(NS, "app-primary");
    w.fake.make_ready(NS, "app-sluice");
    w.fake.make_ready(NS, "app");
    for _ in 0..6 {
        w.tick().await;
    }
    assert_eq!(w.status().phase, "Initialized", "{:?}", w.status());
    assert_eq!(
        recorded(&w),
        before,
        "the recorded selector was overwritten"
    );
    let primary = w.deployment("app-primary");
    assert_eq!(
        primary["spec"]["selector"]["matchLabels"],
        json!({"app": "app-primary"})
    );
    for svc in ["app-primary", "app-canary"] {
        let s = w.fake.get("api/v1", "services", NS, svc).unwrap();
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 9898, "{svc}: {s}");
        assert!(
            s["spec"]["selector"]
                .get("app.kubernetes.io/name")
                .is_none(),
            "{svc} selects the proxy: {s}"
        );
    }
    let canary = w.fake.get("api/v1", "services", NS, "app-canary").unwrap();
    assert_eq!(canary["spec"]["selector"]["app"], "app");
}

impl World {
    /// The proxy route as the operator last wrote it.
    fn route(&self) -> sluice_proxy::config::RouteConfig {
        let cm = self
            .fake
            .get("api/v1", "configmaps", NS, "app-sluice")
            .unwrap();
        sluice_proxy::Config::from_yaml(cm["data"]["routes.yaml"].as_str().unwrap())
            .unwrap()
            .routes[0]
            .clone()
    }

    fn primary_image(&self) -> String {
        self.deployment("app-primary")["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// One tick as in [`World::until`]: kubelet, the clock, the operator.
    async fn step(&self) {
        for d in ["app", "app-primary"] {
            self.fake.make_ready(NS, d);
        }
        self.advance(10);
        self.tick().await;
    }

    /// Ticks until the ConfigMap's weight is `weight`.
    async fn until_weight(&self, weight: f64, limit: usize) {
        for _ in 0..limit {
            if self.weight() == weight && self.status().phase == "Progressing" {
                return;
            }
            self.step().await;
        }
        panic!("never at weight {weight}; status: {:?}", self.status());
    }
}

#[tokio::test]
async fn a_blue_green_release_mirrors_then_switches_in_one_step_and_keeps_blue_until_the_soak_ends()
{
    let w = World::new(json!({
        "sluice.dev/strategy": "blue-green",
        "sluice.dev/soak": "30s",
        "sluice.dev/affinity-cookie": "app-session",
    }))
    .await
    .bootstrapped()
    .await;
    // Affinity is on the route from the start; no mirror between releases.
    assert_eq!(
        w.route().affinity.unwrap().cookie.as_deref(),
        Some("app-session")
    );
    assert!(w.route().mirror.is_none());
    w.set_image("app:2");
    w.tick().await;
    assert_eq!(w.replicas("app"), 3, "green is brought up fully");
    assert_eq!(w.route().mirror.as_ref().map(|m| m.percent), Some(100.0));
    assert_eq!(w.weight(), 0.0, "judged on copies only");
    w.until_weight(100.0, 10).await;
    // Soaking: all traffic on green, blue still scaled and unchanged.
    assert_eq!(w.replicas("app-primary"), 3);
    assert_eq!(w.primary_image(), "app:1");
    assert_eq!(w.status().strategy, "blue-green");
    let weights = w.until("Succeeded", 20).await;
    assert_eq!(weights.first(), Some(&100.0));
    assert_eq!(weights.last(), Some(&0.0), "{weights:?}");
    assert!(
        weights.iter().all(|w| *w == 0.0 || *w == 100.0),
        "one step: {weights:?}"
    );
    assert_eq!(w.primary_image(), "app:2");
    assert!(
        w.route().mirror.is_none(),
        "mirroring ended with the release"
    );
    assert!(w.route().affinity.is_some());
    let table = sluice_operator::kube::plugin::table(
        &[sluice_operator::kube::plugin::Release {
            namespace: "default".into(),
            name: "app".into(),
            generation: 1,
            status: Some(w.status()),
            age: "1m".into(),
        }],
        false,
    );
    assert!(
        table.contains("STRATEGY") && table.contains("blue-green"),
        "{table}"
    );
}

#[tokio::test]
async fn a_blue_green_release_failing_in_its_soak_switches_back_and_blue_never_changed() {
    let w = World::new(json!({"sluice.dev/strategy": "blue-green", "sluice.dev/soak": "60s"}))
        .await
        .bootstrapped()
        .await;
    w.set_image("app:2");
    w.tick().await;
    w.until_weight(100.0, 10).await;
    w.script.lock().unwrap().push_back(Outcome::Fail);
    w.until("Failed", 5).await;
    assert_eq!(w.weight(), 0.0);
    assert_eq!(w.primary_image(), "app:1");
    assert_eq!(w.replicas("app-primary"), 3);
    assert!(
        w.status().message.contains("soak"),
        "{}",
        w.status().message
    );
    assert!(w.route().mirror.is_none());
}

#[tokio::test]
async fn an_experiment_ends_on_stable_with_a_report_and_promotes_nothing() {
    let w = World::new(json!({
        "sluice.dev/strategy": "experiment",
        "sluice.dev/experiment-duration": "30s",
        "sluice.dev/steps": "25",
    }))
    .await
    .bootstrapped()
    .await;
    w.set_image("app:2");
    w.tick().await;
    let weights = w.until("Concluded", 20).await;
    assert!(weights.contains(&25.0), "{weights:?}");
    assert_eq!(weights.last(), Some(&0.0));
    assert_eq!(w.primary_image(), "app:1", "nothing promoted");
    let s = w.status();
    assert!(s.report.is_some(), "{s:?}");
    assert!(
        w.events()
            .iter()
            .any(|(_, r, note)| r == "ExperimentReport" && note.contains("stable")),
        "{:?}",
        w.events()
    );
    let detail = sluice_operator::kube::plugin::detail(&sluice_operator::kube::plugin::Release {
        namespace: "default".into(),
        name: "app".into(),
        generation: 1,
        status: Some(s),
        age: "1m".into(),
    });
    assert!(
        detail.contains("experiment") && detail.contains("experiment report"),
        "{detail}"
    );
    // Stays concluded: the same revision is not released again.
    w.step().await;
    assert_eq!(w.status().phase, "Concluded");
}

#[tokio::test]
async fn bad_strategy_and_traffic_annotations_are_warning_events_and_nothing_is_created() {
    for (annotation, value, expected) in [
        (
            "sluice.dev/strategy",
            "rainbow",
            "not a strategy this version knows",
        ),
        (
            "sluice.dev/affinity-cookie",
            "a b",
            "not a valid cookie name",
        ),
        ("sluice.dev/mirror", "150", "150 is not in 0..=100"),
        ("sluice.dev/soak", "later", "sluice.dev/soak"),
    ] {
        let mut ann = json!({ annotation: value });
        if annotation == "sluice.dev/soak" {
            ann["sluice.dev/strategy"] = json!("blue-green");
        }
        let w = World::new(ann).await;
        w.tick().await;
        let note = w.the_invalid_annotation_event();
        assert!(
            note.contains(annotation) && note.contains(expected),
            "{note}"
        );
        assert_eq!(w.fake.names(APPS, "deployments", NS), ["app"]);
    }
}

/// An app's own Secrets: `sluice.dev/access` gives its webhooks the CA and
/// basic auth of an https endpoint, `sluice.dev/notify` its Slack channel.
/// The operator reads both through the API with its RBAC; no value shows
/// in the Events or the status. A Secret that is not there is a Warning
/// Event that names it, and nothing is created.
#[tokio::test]
async fn an_apps_own_secrets_give_its_webhooks_credentials_and_its_chat_channel() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    const PASSWORD: &str = "app-hook-pass-5e6f";
    let ca = sluice_tests::TestCa::new("app test CA");
    let (cert, key) = ca.leaf(&["localhost"]);
    let hook = sluice_tests::BasicAuthEndpoint::start(&cert, &key, "sluice", PASSWORD).await;
    let notes: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let log = notes.clone();
    let slack = sluice_tests::serve_http(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            use http_body_util::BodyExt;
            let secret_path = req.uri().path() == "/services/T1/B1/app-slack-s3cr3t";
            let body = req.into_body().collect().await.unwrap().to_bytes();
            if secret_path {
                log.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            }
            http::Response::new(http_body_util::Full::new(bytes::Bytes::new()))
        }
    })
    .await;
    let slack_url = format!("http://{slack}/services/T1/B1/app-slack-s3cr3t");
    let webhooks = format!(
        "- name: smoke\n  url: https://localhost:{}/smoke\n",
        hook.addr.port()
    );
    let w = World::new(json!({
        "sluice.dev/webhooks": webhooks,
        "sluice.dev/access": "app-access",
        "sluice.dev/notify": "app-notify",
    }))
    .await;
    // First without the Secrets: refused, naming the one missing.
    w.tick().await;
    let events = w.events();
    assert!(
        events.iter().any(|(kind, reason, note)| kind == "Warning"
            && reason == "InvalidConfig"
            && note.contains("no Secret app-access")),
        "{events:?}"
    );
    assert!(w.fake.get(APPS, "deployments", NS, "app-primary").is_none());
    let access = format!(
        "- url: https://localhost:{}/\n  ca_file: ca.pem\n  basic_auth: {{ username: sluice, password_file: password }}\n",
        hook.addr.port()
    );
    w.fake.put(
        "api/v1",
        "secrets",
        NS,
        json!({"metadata": {"name": "app-access"}, "data": {"access.yaml": b64(&access), "ca.pem": b64(&ca.cert_pem), "password": b64(PASSWORD)}}),
    );
    w.fake.put(
        "api/v1",
        "secrets",
        NS,
        json!({"metadata": {"name": "app-notify"}, "data": {"slack": b64(&slack_url)}}),
    );
    let w = w.bootstrapped().await;
    w.set_image("app:2");
    w.until("Succeeded", 20).await;
    assert!(
        hook.allowed() >= 1 && hook.refused() == 0,
        "the rollout webhook did not get the app's credentials: {} allowed, {} refused",
        hook.allowed(),
        hook.refused()
    );
    let notes = eventually("the Slack notes", Duration::from_secs(10), || {
        let notes = notes.clone();
        async move {
            let seen = notes.lock().unwrap().clone();
            seen.iter()
                .any(|n| n["text"].as_str().is_some_and(|t| t.contains("promoted")))
                .then_some(seen)
        }
    })
    .await;
    assert!(
        notes[0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Sluice: shop/app ")),
        "{notes:?}"
    );
    let mut shown = format!("{:?}", w.events());
    shown.push_str(&w.deployment("app-primary").to_string());
    shown.push_str(&w.deployment("app").to_string());
    assert!(
        !shown.contains(PASSWORD) && !shown.contains("app-slack-s3cr3t"),
        "a secret value shows in the Events or the status"
    );
}

/// An app's Secrets going bad while its release runs: the access Secret
/// deleted (a rotation), the notify Secret given a key that names no
/// service and a key that holds no URL. Each problem is one Warning Event
/// (not one a reconcile), no value shows, and the release goes on: its
/// webhook still gets the access last read, its good channel still gets
/// notes, and an abort rolls it back. After an operator restart with the
/// access Secret still gone, an abort is carried out as well.
#[tokio::test]
async fn a_bad_or_missing_app_secret_is_reported_once_and_the_release_goes_on() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    const PASSWORD: &str = "app-hook-pass-71aa";
    let ca = sluice_tests::TestCa::new("app secrets CA");
    let (cert, key) = ca.leaf(&["localhost"]);
    let hook = sluice_tests::BasicAuthEndpoint::start(&cert, &key, "sluice", PASSWORD).await;
    let notes: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let log = notes.clone();
    let slack = sluice_tests::serve_http(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            log.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            http::Response::new(http_body_util::Full::new(bytes::Bytes::new()))
        }
    })
    .await;
    let slack_url = format!("http://{slack}/services/T1/B1/app-slack-s3cr3t");
    let webhooks = format!(
        "- name: smoke\n  url: https://localhost:{}/smoke\n",
        hook.addr.port()
    );
    let mut w = World::new(json!({
        "sluice.dev/steps": "10,20,30,40,50",
        "sluice.dev/webhooks": webhooks,
        "sluice.dev/access": "app-access",
        "sluice.dev/notify": "app-notify",
    }))
    .await;
    let access = format!(
        "- url: https://localhost:{}/\n  ca_file: ca.pem\n  basic_auth: {{ username: sluice, password_file: password }}\n",
        hook.addr.port()
    );
    w.fake.put(
        "api/v1",
        "secrets",
        NS,
        json!({"metadata": {"name": "app-access"}, "data": {"access.yaml": b64(&access), "ca.pem": b64(&ca.cert_pem), "password": b64(PASSWORD)}}),
    );
    w.fake.put(
        "api/v1",
        "secrets",
        NS,
        json!({"metadata": {"name": "app-notify"}, "data": {"slack": b64(&slack_url)}}),
    );
    w = w.bootstrapped().await;
    w.set_image("app:2");
    w.until_weight(10.0, 20).await;

    // Mid-release: the access Secret is deleted, the notify Secret gets a
    // key Sluice has no service for and one whose value is no URL.
    w.fake.delete("api/v1", "secrets", NS, "app-access");
    w.fake.put(
        "api/v1",
        "secrets",
        NS,
        json!({"metadata": {"name": "app-notify"}, "data": {
            "slack": b64(&slack_url),
            "hipchat": b64("https://hipchat.example/hook"),
            "discord": b64("discord.example/no-scheme"),
        }}),
    );
    let allowed = hook.allowed();
    w.until_weight(30.0, 20).await;
    assert!(
        hook.allowed() > allowed && hook.refused() == 0,
        "the webhook did not keep the access last read: {} allowed, {} refused",
        hook.allowed(),
        hook.refused()
    );
    let warnings = |w: &World, about: &str| {
        w.events()
            .into_iter()
            .filter(|(kind, reason, note)| {
                kind == "Warning" && reason == "InvalidConfig" && note.contains(about)
            })
            .map(|(_, _, note)| note)
            .collect::<Vec<_>>()
    };
    for (about, meanwhile) in [
        ("no Secret app-access", "go on with the access last read"),
        ("key hipchat", "that channel is left out"),
        ("key discord", "that channel is left out"),
    ] {
        let said = warnings(&w, about);
        assert_eq!(said.len(), 1, "{about}: {said:?}");
        assert!(said[0].contains(meanwhile), "{}", said[0]);
    }
    w.command("abort");
    w.until("Failed", 10).await;
    let rolled_back = eventually(
        "the Slack note of the rollback",
        Duration::from_secs(10),
        || {
            let notes = notes.clone();
            async move {
                notes
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|n| {
                        n["text"]
                            .as_str()
                            .is_some_and(|t| t.contains("rolled back"))
                    })
                    .then_some(())
            }
        },
    );
    rolled_back.await;
    let shown = format!("{:?}", w.events());
    assert!(
        !shown.contains(PASSWORD) && !shown.contains("app-slack-s3cr3t"),
        "a secret value shows in the Events"
    );

    // The operator restarts with the access Secret still gone: nothing of
    // it in memory. A new release runs, and an abort is carried out.
    w.ctx = context(&w.fake, &w.clock, &w.script, &w.proxy_answer);
    w.set_image("app:3");
    w.until("Progressing", 10).await;
    let said = warnings(&w, "no Secret app-access");
    assert!(
        said.iter().any(|n| n.contains("without its credentials")),
        "{said:?}"
    );
    w.command("abort");
    w.until("Failed", 10).await;
}

/// An app's chat channel is called with the app's access
/// (`sluice.dev/access`), as its webhooks are: here a `webhook` channel on
/// an https endpoint with the app's CA that wants basic auth.
#[tokio::test]
async fn an_apps_chat_channel_is_called_with_its_access() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    const PASSWORD: &str = "app-notes-pass-9c1d";
    let ca = sluice_tests::TestCa::new("app notes CA");
    let (cert, key) = ca.leaf(&["localhost"]);
    let channel = sluice_tests::BasicAuthEndpoint::start(&cert, &key, "notes", PASSWORD).await;
    let access = format!(
        "- url: https://localhost:{}/\n  ca_file: ca.pem\n  basic_auth: {{ username: notes, password_file: password }}\n",
        channel.addr.port()
    );
    let w = World::new(json!({
        "sluice.dev/access": "app-access",
        "sluice.dev/notify": "app-notify",
    }))
    .await;
    w.fake.put(
        "api/v1",
        "secrets",
        NS,
        json!({"metadata": {"name": "app-access"}, "data": {"access.yaml": b64(&access), "ca.pem": b64(&ca.cert_pem), "password": b64(PASSWORD)}}),
    );
    let url = format!("https://localhost:{}/notes", channel.addr.port());
    w.fake.put(
        "api/v1",
        "secrets",
        NS,
        json!({"metadata": {"name": "app-notify"}, "data": {"webhook": b64(&url)}}),
    );
    let w = w.bootstrapped().await;
    w.set_image("app:2");
    w.until("Succeeded", 20).await;
    eventually(
        "the channel to get a note with the app's credentials",
        Duration::from_secs(15),
        || async { (channel.allowed() >= 1).then_some(()) },
    )
    .await;
    assert_eq!(channel.refused(), 0, "a note went without the credentials");
}

/// An app's notify Secret gets a new Slack URL mid-release (the old one
/// leaked). The old URL, which never answers, was being sent the "release
/// started" note: it gets no further try of it, nor any later note; that
/// note and the rollback's go to the new URL.
#[tokio::test]
async fn a_rotated_notify_url_gets_nothing_more_and_its_queued_notes_go_to_the_new_one() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let old = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old_url = format!(
        "http://{}/services/T1/B1/old-s3cr3t",
        old.local_addr().unwrap()
    );
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = old.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    let notes: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let log = notes.clone();
    let new = sluice_tests::serve_http(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let note: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            log.lock()
                .unwrap()
                .push(note["text"].as_str().unwrap_or_default().to_string());
            http::Response::new(http_body_util::Full::new(bytes::Bytes::new()))
        }
    })
    .await;
    let new_url = format!("http://{new}/services/T1/B1/new-s3cr3t");
    let mut w = World::new(json!({
        "sluice.dev/steps": "10,20,30,40,50",
        "sluice.dev/notify": "app-notify",
    }))
    .await;
    let notify =
        |url: &str| json!({"metadata": {"name": "app-notify"}, "data": {"slack": b64(url)}});
    w.fake.put("api/v1", "secrets", NS, notify(&old_url));
    w = w.bootstrapped().await;
    w.set_image("app:2");
    w.until_weight(10.0, 20).await;
    let conns = connections.clone();
    eventually(
        "the old URL to be tried with the first note",
        Duration::from_secs(10),
        || {
            let conns = conns.clone();
            async move { (conns.load(Ordering::SeqCst) >= 1).then_some(()) }
        },
    )
    .await;
    w.fake.put("api/v1", "secrets", NS, notify(&new_url));
    let tried_before = connections.load(Ordering::SeqCst);
    w.until_weight(20.0, 20).await;
    w.command("abort");
    w.until("Failed", 10).await;
    let seen = eventually(
        "the new URL to get the started and the rollback notes",
        Duration::from_secs(30),
        || {
            let notes = notes.clone();
            async move {
                let seen = notes.lock().unwrap().clone();
                (seen.iter().any(|n| n.contains("release started"))
                    && seen.iter().any(|n| n.contains("rolled back")))
                .then_some(seen)
            }
        },
    )
    .await;
    assert!(seen[0].contains("release started"), "{seen:?}");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        tried_before,
        "the old URL was tried again after its rotation"
    );
}

/// What was read from an app's access Secret never stands in for another
/// Secret the annotation now names: moved to a Secret that is missing,
/// the app's calls go without the old credentials (an endpoint that wants
/// them refuses), not on with them.
#[tokio::test]
async fn the_access_of_a_secret_no_longer_named_is_not_used() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    const PASSWORD: &str = "moved-hook-pass-90bc";
    let ca = sluice_tests::TestCa::new("moved access CA");
    let (cert, key) = ca.leaf(&["localhost"]);
    let hook = sluice_tests::BasicAuthEndpoint::start(&cert, &key, "sluice", PASSWORD).await;
    let webhooks = format!(
        "- name: smoke\n  url: https://localhost:{}/smoke\n",
        hook.addr.port()
    );
    let mut w = World::new(json!({
        "sluice.dev/steps": "10,20,30,40,50",
        "sluice.dev/webhooks": webhooks,
        "sluice.dev/access": "app-access",
    }))
    .await;
    let access = format!(
        "- url: https://localhost:{}/\n  ca_file: ca.pem\n  basic_auth: {{ username: sluice, password_file: password }}\n",
        hook.addr.port()
    );
    w.fake.put(
        "api/v1",
        "secrets",
        NS,
        json!({"metadata": {"name": "app-access"}, "data": {"access.yaml": b64(&access), "ca.pem": b64(&ca.cert_pem), "password": b64(PASSWORD)}}),
    );
    w = w.bootstrapped().await;
    w.set_image("app:2");
    w.until_weight(10.0, 20).await;
    w.until_weight(20.0, 20).await;
    assert!(hook.allowed() > 0, "the hook got the app's credentials");
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"metadata": {"annotations": {"sluice.dev/access": "other-access"}}}),
    );
    let allowed = hook.allowed();
    for _ in 0..6 {
        w.advance(10);
        w.tick().await;
    }
    assert_eq!(
        hook.allowed(),
        allowed,
        "the old Secret's credentials were still used"
    );
}
