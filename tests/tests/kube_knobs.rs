//! The per-app knobs of `sluice kube` (`operator/src/kube/knobs.rs`)
//! against the fake API server: the operator runs as its own
//! ServiceAccount with the shipped RBAC, people change annotations with
//! the real `kubectl`, and the proxy config the operator writes is served
//! by a real proxy in front of real backends (cluster DNS stood in for:
//! `app-primary.shop.svc` is the stable backend's address,
//! `app-canary.shop.svc` the canary's).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sluice_operator::analysis::{Analysis, CheckResult, Outcome};
use sluice_operator::kube::{self as op, Context, KubeStatus, ReplicaConfig};
use sluice_operator::provider::Provider;
use sluice_proxy::kube_source::digest;
use sluice_tests::fake_kube::{FakeKube, Options};
use sluice_tests::{BackendHandle, BackendOptions, Faults, Latency, TempDir, backend};

const NS: &str = "shop";
const APPS: &str = "apis/apps/v1";
const HPAS: &str = "apis/autoscaling/v2";

struct World {
    fake: FakeKube,
    ctx: Arc<Context>,
    clock: Arc<AtomicU64>,
    script: Arc<std::sync::Mutex<VecDeque<Outcome>>>,
    /// Ticks that asked the metric provider for an analysis.
    analyses: Arc<AtomicU64>,
    dir: TempDir,
}

impl World {
    /// A Deployment `app` with `replicas` and the given annotations (on
    /// top of a quick plan: steps 20,50, 10 s interval, no baseline),
    /// behind Service `app`.
    async fn new(replicas: i64, annotations: Value) -> Self {
        let fake = FakeKube::start_with(Options {
            tls: true,
            ..Options::default()
        })
        .await;
        fake.create_namespace("shop");
        fake.install_operator_rbac();
        fake.put(
            "api/v1",
            "services",
            NS,
            json!({"metadata": {"name": "app"}, "spec": {"selector": {"app": "app"}, "ports": [{"name": "http", "port": 80, "targetPort": 9898}]}}),
        );
        let mut ann = json!({"sluice.dev/canary": "enabled", "sluice.dev/steps": "20,50", "sluice.dev/interval": "10s", "sluice.dev/failure-limit": "2", "sluice.dev/baseline": "0s"});
        sluice_tests::fake_kube::merge(&mut ann, &annotations);
        fake.put(
            APPS,
            "deployments",
            NS,
            json!({
                "metadata": {"name": "app", "annotations": ann},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": "app"}},
                    "template": {
                        "metadata": {"labels": {"app": "app"}},
                        "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 9898}]}]},
                    },
                },
            }),
        );
        fake.make_ready(NS, "app");
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let script = Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let analyses = Arc::new(AtomicU64::new(0));
        let mut ctx = Context::new(
            fake.operator_client(),
            "test-operator",
            None,
            "sluice-proxy:test".into(),
        );
        let c = clock.clone();
        ctx.now = Arc::new(move || c.load(Ordering::SeqCst) as f64);
        let (s, counted) = (script.clone(), analyses.clone());
        ctx.make_provider = Arc::new(move |_, _, _| {
            let (s, counted) = (s.clone(), counted.clone());
            Provider::Scripted(Box::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let outcome = s.lock().unwrap().pop_front().unwrap_or(Outcome::Pass);
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
                        ..CheckResult::default()
                    }],
                    ..Analysis::default()
                }
            }))
        });
        ctx.poll = Duration::from_millis(10);
        // No proxy process runs in the fake cluster: its two replicas
        // report the config their ConfigMap holds now.
        let f = fake.clone();
        ctx.proxy_digests = Some(Arc::new(move |ns: String, app: String| {
            let digest = f
                .get("api/v1", "configmaps", &ns, &format!("{app}-sluice"))
                .and_then(|cm| cm["data"]["routes.yaml"].as_str().map(digest))
                .ok_or_else(|| "no ConfigMap".to_string());
            let replicas = ["a", "b"]
                .iter()
                .map(|p| ReplicaConfig {
                    pod: format!("{app}-sluice-{p}"),
                    digest: digest.clone(),
                })
                .collect();
            Box::pin(async move { Ok(replicas) })
        }));
        Self {
            fake,
            ctx: Arc::new(ctx),
            clock,
            script,
            analyses,
            dir: TempDir::new("kube-knobs"),
        }
    }

    async fn tick(&self) -> Action {
        let api: Api<Deployment> = Api::namespaced(self.fake.client(), NS);
        let d = api.get("app").await.unwrap();
        op::reconcile(Arc::new(d), self.ctx.clone()).await.unwrap()
    }

    fn advance(&self, secs: u64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    fn deployment(&self, name: &str) -> Value {
        self.fake
            .get(APPS, "deployments", NS, name)
            .unwrap_or_else(|| panic!("no Deployment {name}"))
    }

    fn replicas(&self, name: &str) -> i64 {
        self.deployment(name)["spec"]["replicas"].as_i64().unwrap()
    }

    fn status(&self) -> KubeStatus {
        KubeStatus::from_primary(&serde_json::from_value(self.deployment("app-primary")).unwrap())
            .expect("a status on app-primary")
    }

    /// The proxy config the operator wrote.
    fn config(&self) -> sluice_proxy::Config {
        let cm = self
            .fake
            .get("api/v1", "configmaps", NS, "app-sluice")
            .unwrap();
        sluice_proxy::Config::from_yaml(cm["data"]["routes.yaml"].as_str().unwrap()).unwrap()
    }

    fn weight(&self) -> f64 {
        self.config().routes[0].canary_weight
    }

    fn reasons(&self) -> Vec<(String, String)> {
        self.fake
            .names("apis/events.k8s.io/v1", "events", NS)
            .into_iter()
            .filter_map(|n| self.fake.get("apis/events.k8s.io/v1", "events", NS, &n))
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["note"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// The note of the `DeploymentDrift` Event, if there is one.
    fn drift(&self) -> Option<String> {
        self.reasons()
            .into_iter()
            .find(|(r, _)| r == "DeploymentDrift")
            .map(|(_, note)| note)
    }

    /// `kubectl -n shop ARGS...`, as a person types it.
    fn kubectl(&self, args: &[&str]) {
        let kubeconfig = self.dir.path.join("kubeconfig");
        if !kubeconfig.exists() {
            self.fake.kubeconfig(&kubeconfig);
        }
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
    }

    fn set_image(&self, image: &str) {
        self.fake.merge_into(
            APPS,
            "deployments",
            NS,
            "app",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 9898}]}]}}}}),
        );
    }

    /// Bootstraps: objects created, then the take-over once they are ready.
    async fn bootstrapped(self) -> Self {
        self.tick().await;
        self.tick().await;
        self.fake.make_ready(NS, "app-primary");
        self.fake.make_ready(NS, "app-sluice");
        for _ in 0..5 {
            if self.status().phase == "Initialized" {
                return self;
            }
            self.tick().await;
        }
        panic!("never Initialized: {:?}", self.status());
    }

    /// One tick as the cluster moves on: kubelet makes the Deployments
    /// ready, the clock advances `secs`.
    async fn step(&self, secs: u64) -> Action {
        for d in ["app", "app-primary"] {
            self.fake.make_ready(NS, d);
        }
        self.advance(secs);
        self.tick().await
    }

    /// Steps until the phase is `phase`; the (weight, canary replicas)
    /// seen after each step, without repeats.
    async fn until(&self, phase: &str, limit: usize) -> Vec<(f64, i64)> {
        let mut seen = Vec::new();
        for _ in 0..limit {
            if self.status().phase == phase {
                return seen;
            }
            self.step(10).await;
            let now = (self.weight(), self.replicas("app"));
            if seen.last() != Some(&now) {
                seen.push(now);
            }
        }
        panic!("never reached {phase}; status: {:?}", self.status());
    }
}

/// A real proxy serving the config the operator wrote, with the in-cluster
/// names resolved to the test's backends (and its listeners on loopback).
async fn serve(
    config: &sluice_proxy::Config,
    stable: &BackendHandle,
    canary: &BackendHandle,
) -> sluice_proxy::ProxyHandle {
    let mut config = config.clone();
    config.listen = "127.0.0.1:0".into();
    config.admin.listen = "127.0.0.1:0".into();
    config.admin.token_file = None;
    for route in &mut config.routes {
        assert_eq!(route.stable, "http://app-primary.shop.svc:80");
        route.stable = stable.url();
        if let Some(c) = &mut route.canary {
            assert_eq!(c, "http://app-canary.shop.svc:80");
            *c = canary.url();
        }
    }
    sluice_proxy::start(config, sluice_proxy::StartOptions::default())
        .await
        .expect("the operator's config starts a proxy")
}

/// Which backend answered a GET through `proxy`, with `header` set.
async fn answered_by(proxy: &sluice_proxy::ProxyHandle, header: Option<(&str, &str)>) -> String {
    let mut req = hyper::Request::get(format!("http://{}/", proxy.addr));
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, headers, _) = sluice_tests::send(&sluice_tests::h1_client(), req)
        .await
        .unwrap();
    assert_eq!(status, 200);
    headers["x-backend"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_rule_reaches_the_canary_at_weight_0_and_nothing_once_promoted() {
    // A 5-minute baseline holds the release at weight 0 for a while.
    let w = World::new(
        3,
        json!({"sluice.dev/match": "[{header: x-canary, value: \"1\"}]", "sluice.dev/baseline": "5m"}),
    )
    .await
    .bootstrapped()
    .await;
    let (stable, canary) = (backend("stable").await, backend("canary").await);
    let rule = Some(("x-canary", "1"));
    // Between releases no rule is written: nothing reaches the canary.
    assert!(w.config().routes[0].canary_match.is_empty());
    let proxy = serve(&w.config(), &stable, &canary).await;
    assert_eq!(answered_by(&proxy, rule).await, "stable");

    w.set_image("app:2");
    for _ in 0..5 {
        w.step(1).await;
    }
    assert_eq!(w.status().phase, "Initializing", "{:?}", w.status());
    assert_eq!(w.weight(), 0.0);
    let selector = w.fake.get("api/v1", "services", NS, "app-canary").unwrap()["spec"]["selector"]
        ["pod-template-hash"]
        .clone();
    assert_ne!(
        selector,
        json!("none"),
        "the canary Service selects the new pods"
    );
    let proxy = serve(&w.config(), &stable, &canary).await;
    for _ in 0..5 {
        assert_eq!(answered_by(&proxy, rule).await, "canary");
        assert_eq!(answered_by(&proxy, Some(("x-canary", "2"))).await, "stable");
        assert_eq!(answered_by(&proxy, None).await, "stable");
    }

    w.until("Succeeded", 100).await;
    assert_eq!(w.weight(), 0.0);
    assert!(w.config().routes[0].canary_match.is_empty());
    let proxy = serve(&w.config(), &stable, &canary).await;
    assert_eq!(answered_by(&proxy, rule).await, "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_release_drops_its_rules_with_its_weight() {
    let w = World::new(
        3,
        json!({"sluice.dev/match": "[{cookie: beta, value: yes}]"}),
    )
    .await
    .bootstrapped()
    .await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    assert_eq!(w.config().routes[0].canary_match.len(), 1);
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail, Outcome::Fail]);
    w.until("Failed", 20).await;
    assert_eq!(w.weight(), 0.0);
    assert!(w.config().routes[0].canary_match.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_deployment_takes_its_replicas_resources_and_an_hpa_it_does_not_fight() {
    let w = World::new(
        3,
        json!({"sluice.dev/proxy-replicas": "3", "sluice.dev/proxy-resources": "{requests: {cpu: 250m, memory: 64Mi}, limits: {cpu: 1, memory: 512Mi}}"}),
    )
    .await
    .bootstrapped()
    .await;
    let proxy = w.deployment("app-sluice");
    assert_eq!(proxy["spec"]["replicas"], 3);
    assert_eq!(
        proxy["spec"]["template"]["spec"]["containers"][0]["resources"],
        json!({"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    assert!(
        w.fake
            .get(HPAS, "horizontalpodautoscalers", NS, "app-sluice")
            .is_none()
    );

    // A person hands the replica count to an HPA.
    w.kubectl(&[
        "annotate",
        "deployment",
        "app",
        "sluice.dev/proxy-replicas-",
        "sluice.dev/proxy-autoscale=min=2,max=6,cpu=60",
    ]);
    w.tick().await;
    let hpa = w
        .fake
        .get(HPAS, "horizontalpodautoscalers", NS, "app-sluice")
        .expect("the proxy's HPA");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "app-sluice"})
    );
    assert_eq!(
        (
            hpa["spec"]["minReplicas"].clone(),
            hpa["spec"]["maxReplicas"].clone()
        ),
        (json!(2), json!(6))
    );
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"],
        json!({"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}})
    );
    assert_eq!(
        hpa["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sluice"
    );

    // The HPA scales the proxy; the operator leaves its count alone, also
    // when it re-applies the proxy for another change.
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app-sluice",
        json!({"spec": {"replicas": 5}}),
    );
    w.tick().await;
    assert_eq!(w.replicas("app-sluice"), 5);
    w.kubectl(&[
        "annotate",
        "--overwrite",
        "deployment",
        "app",
        "sluice.dev/proxy-resources={requests: {cpu: 500m}}",
    ]);
    w.tick().await;
    let proxy = w.deployment("app-sluice");
    assert_eq!(
        proxy["spec"]["template"]["spec"]["containers"][0]["resources"],
        json!({"requests": {"cpu": "500m"}})
    );
    assert_eq!(proxy["spec"]["replicas"], 5, "the HPA's count is kept");

    // The HPA deleted by a person (the proxy's spec unchanged) is back on
    // the next reconcile.
    w.kubectl(&["delete", "hpa", "app-sluice"]);
    assert!(
        w.fake
            .get(HPAS, "horizontalpodautoscalers", NS, "app-sluice")
            .is_none()
    );
    w.tick().await;
    let hpa = w
        .fake
        .get(HPAS, "horizontalpodautoscalers", NS, "app-sluice")
        .expect("the deleted HPA is created again");
    assert_eq!(
        (
            hpa["spec"]["minReplicas"].clone(),
            hpa["spec"]["maxReplicas"].clone()
        ),
        (json!(2), json!(6))
    );
    assert_eq!(w.replicas("app-sluice"), 5, "the count is still the HPA's");

    // Without the annotation the HPA goes and the default count is back.
    w.kubectl(&[
        "annotate",
        "deployment",
        "app",
        "sluice.dev/proxy-autoscale-",
    ]);
    w.tick().await;
    assert!(
        w.fake
            .get(HPAS, "horizontalpodautoscalers", NS, "app-sluice")
            .is_none()
    );
    assert_eq!(w.replicas("app-sluice"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_reaches_the_route_and_a_slow_backend_gets_a_504_at_it() {
    let w = World::new(3, json!({"sluice.dev/request-timeout": "300ms"}))
        .await
        .bootstrapped()
        .await;
    let slow = sluice_loadtest::start_backend(BackendOptions {
        faults: Faults {
            latency: Latency::Fixed(Duration::from_millis(1200)),
            ..Faults::default()
        },
        ..BackendOptions::new("slow-stable")
    })
    .await
    .unwrap();
    let canary = backend("canary").await;
    assert_eq!(w.config().routes[0].timeouts.request, "300ms");
    let proxy = serve(&w.config(), &slow, &canary).await;
    let started = Instant::now();
    let (status, _, _) = sluice_tests::get(&format!("http://{}/", proxy.addr))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1200),
        "answered after {took:?}"
    );

    // A longer timeout, set between releases, reaches the route at once.
    w.kubectl(&[
        "annotate",
        "--overwrite",
        "deployment",
        "app",
        "sluice.dev/request-timeout=3s",
        "sluice.dev/tunnel-idle-timeout=90s",
        "sluice.dev/answer-idle-timeout=2m",
    ]);
    w.tick().await;
    assert_eq!(w.config().routes[0].timeouts.request, "3s");
    assert_eq!(w.config().routes[0].timeouts.tunnel_idle, "90s");
    assert_eq!(w.config().routes[0].timeouts.answer_idle, "2m");
    assert_eq!(w.weight(), 0.0);
    let proxy = serve(&w.config(), &slow, &canary).await;
    let (status, headers, _) = sluice_tests::get(&format!("http://{}/", proxy.addr))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["x-backend"], "slow-stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proportional_canary_runs_replicas_in_step_with_its_weight() {
    let w = World::new(10, json!({"sluice.dev/canary-scale": "proportional"})).await;
    // The user's HPA on the Deployment (it scales the canary in a release).
    w.fake.put(
        HPAS,
        "horizontalpodautoscalers",
        NS,
        json!({"metadata": {"name": "app"}, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
            "minReplicas": 4, "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
        }}),
    );
    let w = w.bootstrapped().await;
    let bounds = |name: &str| {
        let hpa = w
            .fake
            .get(HPAS, "horizontalpodautoscalers", NS, name)
            .unwrap();
        (
            hpa["spec"]["minReplicas"].as_i64().unwrap(),
            hpa["spec"]["maxReplicas"].as_i64().unwrap(),
        )
    };
    assert_eq!(w.replicas("app-primary"), 10);
    assert_eq!(w.replicas("app"), 0);
    w.set_image("app:2");
    w.tick().await;
    assert_eq!(w.replicas("app"), 1, "at weight 0: one pod");
    w.until("Progressing", 10).await;
    w.step(0).await;
    assert_eq!(w.weight(), 20.0);
    assert_eq!(w.replicas("app"), 2, "20% of 10 is 2 pods");
    assert_eq!(bounds("app"), (1, 2), "the canary's HPA scaled to 20%");
    assert_eq!(
        bounds("app-primary"),
        (4, 10),
        "the primary's twin keeps the user's bounds"
    );
    let seen = w.until("Succeeded", 40).await;
    w.step(0).await;
    assert_eq!(bounds("app"), (4, 10), "the user's bounds are back");
    assert!(
        w.fake
            .get(HPAS, "horizontalpodautoscalers", NS, "app")
            .unwrap()["metadata"]["annotations"]["sluice.dev/original-bounds"]
            .is_null()
    );
    // 50% of 10 is 5 pods; scaled to 0 once promoted.
    assert!(seen.contains(&(50.0, 5)), "{seen:?}");
    assert!(
        seen.iter()
            .all(|(weight, replicas)| *replicas <= 5 && (*weight == 0.0 || *replicas >= 1)),
        "{seen:?}"
    );
    assert_eq!(w.replicas("app"), 0);
    assert_eq!(
        w.deployment("app-primary")["spec"]["template"]["spec"]["containers"][0]["image"],
        "app:2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_inside_the_rollback_window_is_promoted_without_analysis() {
    let w = World::new(3, json!({"sluice.dev/rollback-window": "2"}))
        .await
        .bootstrapped()
        .await;
    w.set_image("app:2");
    w.until("Succeeded", 40).await;
    let image = |w: &World| {
        w.deployment("app-primary")["spec"]["template"]["spec"]["containers"][0]["image"].clone()
    };
    assert_eq!(image(&w), "app:2");
    assert_eq!(w.status().promoted.len(), 2, "app:2 and app:1 remembered");

    // Back to app:1. Any analysis would now fail and roll back.
    w.script.lock().unwrap().extend([Outcome::Fail; 10]);
    let analyses_before = w.analyses.load(Ordering::SeqCst);
    w.set_image("app:1");
    w.tick().await;
    assert_eq!(w.status().phase, "Promoting");
    assert!(
        w.reasons()
            .iter()
            .any(|(r, note)| r == "RollbackWindow" && note.contains("without analysis")),
        "{:?}",
        w.reasons()
    );
    let mut weights = vec![w.weight()];
    let mut canary_replicas = vec![w.replicas("app")];
    for _ in 0..10 {
        if w.status().phase == "Succeeded" {
            break;
        }
        w.step(1).await;
        weights.push(w.weight());
        canary_replicas.push(w.replicas("app"));
    }
    assert_eq!(w.status().phase, "Succeeded", "{:?}", w.status());
    assert_eq!(image(&w), "app:1");
    assert!(
        weights.iter().all(|w| *w == 0.0),
        "no canary traffic: {weights:?}"
    );
    assert!(
        canary_replicas.iter().all(|r| *r == 0),
        "no canary pods: {canary_replicas:?}"
    );
    assert_eq!(
        w.analyses.load(Ordering::SeqCst),
        analyses_before,
        "no analysis ran"
    );

    // A revision never promoted is released as usual.
    w.set_image("app:3");
    w.tick().await;
    assert_eq!(w.status().phase, "Initializing");
    assert_eq!(w.replicas("app"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_canary_stays_up_without_traffic_until_its_delay_ends() {
    let w = World::new(3, json!({"sluice.dev/abort-scale-down-delay": "5m"}))
        .await
        .bootstrapped()
        .await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    assert_eq!(w.weight(), 20.0);
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app-primary",
        json!({"metadata": {"annotations": {"sluice.dev/command": "abort"}}}),
    );
    let action = w.tick().await;
    assert_eq!(w.status().phase, "Failed");
    assert_eq!(w.weight(), 0.0, "out of the traffic");
    assert_eq!(w.replicas("app"), 3, "still running");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));

    // Nothing else changes; the requeues come due with the delay.
    let mut waited = 0;
    loop {
        let action = w.step(0).await;
        let due = w.status().scale_down_at.map(|d| d - (w.ctx.now)());
        if waited >= 300 {
            break;
        }
        assert_eq!(w.replicas("app"), 3, "still running after {waited}s");
        assert_eq!(w.weight(), 0.0);
        let wait = due.expect("a scale-down is due");
        assert_eq!(
            action,
            Action::requeue(Duration::from_secs_f64(wait.clamp(0.05, 300.0))),
            "the next call comes when the delay ends at the latest"
        );
        let next = (wait as u64).min(60);
        w.advance(next);
        waited += next;
    }
    assert_eq!(w.replicas("app"), 0, "scaled to 0 once the delay ended");
    assert_eq!(w.status().scale_down_at, None);
    assert!(
        w.reasons().iter().any(|(r, _)| r == "ScaledDown"),
        "{:?}",
        w.reasons()
    );
    // The pods the operator kept up were its own doing, not drift.
    w.tick().await;
    assert_eq!(w.drift(), None, "{:?}", w.reasons());
    // Someone else's scale is, and the Event names who made it.
    w.kubectl(&[
        "patch",
        "deployment",
        "app",
        "-p",
        r#"{"spec":{"replicas":2}}"#,
    ]);
    w.tick().await;
    assert_eq!(w.replicas("app"), 0);
    let drift = w.drift().expect("a DeploymentDrift Event");
    assert!(
        drift.contains("app was scaled to 2 by kubectl-patch outside a release"),
        "{drift:?}"
    );
}

/// A finished release, the annotation removed (cleanup scales the user's
/// Deployment back up, as field manager `sluice`), then the annotation
/// put back for a new release: the take-over scales it to 0 again. A
/// reconcile that still reads the cleanup's 3 replicas (a cache behind
/// the take-over's scale) sees the operator's own scale: no
/// `DeploymentDrift`. A `kubectl scale` afterwards is someone else's
/// (field manager `kubectl`), and the Event names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_own_scales_across_cleanup_and_a_new_take_over_are_no_drift() {
    let w = World::new(3, json!({})).await.bootstrapped().await;
    w.set_image("app:2");
    w.until("Succeeded", 40).await;
    assert_eq!(w.replicas("app"), 0);

    w.kubectl(&["annotate", "deployment", "app", "sluice.dev/canary-"]);
    for _ in 0..10 {
        if w.fake.names(APPS, "deployments", NS) == ["app"] {
            break;
        }
        w.step(1).await;
    }
    assert_eq!(w.fake.names(APPS, "deployments", NS), ["app"], "cleaned up");
    assert_eq!(w.replicas("app"), 3, "the replicas back");

    w.kubectl(&["annotate", "deployment", "app", "sluice.dev/canary=enabled"]);
    // The Deployment as read before the tick that took it over (3
    // replicas, as the cleanup left them): what the operator's cache may
    // still hold after its own scale to 0.
    let deployments: Api<Deployment> = Api::namespaced(w.fake.client(), NS);
    let mut read_before = deployments.get("app").await.unwrap();
    for _ in 0..10 {
        if w.fake
            .get(APPS, "deployments", NS, "app-primary")
            .is_some_and(|_| w.status().phase == "Initialized")
        {
            break;
        }
        w.fake.make_ready(NS, "app-sluice");
        read_before = deployments.get("app").await.unwrap();
        w.step(1).await;
    }
    assert_eq!(w.status().phase, "Initialized", "{:?}", w.status());
    assert_eq!(read_before.spec.as_ref().unwrap().replicas, Some(3));
    op::reconcile(Arc::new(read_before), w.ctx.clone())
        .await
        .unwrap();
    for _ in 0..3 {
        w.step(10).await;
    }
    assert_eq!(w.replicas("app"), 0);
    assert_eq!(w.drift(), None, "{:?}", w.reasons());

    w.kubectl(&["scale", "deployment", "app", "--replicas=2"]);
    assert_eq!(w.replicas("app"), 2);
    w.step(10).await;
    assert_eq!(w.replicas("app"), 0);
    let drift = w.drift().expect("a DeploymentDrift Event");
    assert!(
        drift.contains("app was scaled to 2 by kubectl outside a release"),
        "{drift:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_during_the_scale_down_delay_is_released_as_usual() {
    let w = World::new(3, json!({"sluice.dev/abort-scale-down-delay": "10m"}))
        .await
        .bootstrapped()
        .await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail, Outcome::Fail]);
    w.until("Failed", 20).await;
    assert_eq!(w.replicas("app"), 3);
    assert!(w.status().scale_down_at.is_some());
    w.set_image("app:3");
    w.until("Succeeded", 40).await;
    assert_eq!(w.status().scale_down_at, None);
    assert_eq!(w.replicas("app"), 0);
    assert_eq!(
        w.deployment("app-primary")["spec"]["template"]["spec"]["containers"][0]["image"],
        "app:3"
    );
}

/// `canary-scale: proportional` scales first and moves the weight only
/// once the canary runs that many ready pods (a jump to 50% never lands
/// on the two pods of 20%); the user's HPA has its bounds before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proportional_canary_gets_its_weight_only_once_its_new_pods_are_ready() {
    let w = World::new(10, json!({"sluice.dev/canary-scale": "proportional"})).await;
    w.fake.put(
        HPAS,
        "horizontalpodautoscalers",
        NS,
        json!({"metadata": {"name": "app"}, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
            "minReplicas": 4, "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
        }}),
    );
    let w = w.bootstrapped().await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    w.step(0).await;
    assert_eq!((w.weight(), w.replicas("app")), (20.0, 2));
    // The cluster stops making pods ready: the step to 50% scales to 5
    // pods, and the weight waits for them.
    let mut waited = 0;
    for _ in 0..30 {
        w.advance(10);
        w.tick().await;
        if w.replicas("app") == 5 {
            waited += 1;
            assert_eq!(
                w.weight(),
                20.0,
                "the weight moved before the 5 pods were ready"
            );
            let hpa = w
                .fake
                .get(HPAS, "horizontalpodautoscalers", NS, "app")
                .unwrap();
            assert_eq!(
                (
                    hpa["spec"]["minReplicas"].as_i64(),
                    hpa["spec"]["maxReplicas"].as_i64()
                ),
                (Some(2), Some(5)),
                "the HPA's bounds are the 50% ones"
            );
            if waited == 3 {
                break;
            }
        }
    }
    assert_eq!(waited, 3, "never scaled to 5: {:?}", w.status());
    // Ready now: the weight follows.
    w.fake.make_ready(NS, "app");
    w.tick().await;
    assert_eq!(w.weight(), 50.0);
}

/// Removing `sluice.dev/canary` mid-release of a proportional canary with
/// the user's HPA: the HPA gets its own bounds back before the Deployment
/// is scaled up to the primary's count, so it does not scale it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letting_go_mid_release_puts_the_hpa_bounds_back_before_scaling() {
    let w = World::new(10, json!({"sluice.dev/canary-scale": "proportional"})).await;
    w.fake.put(
        HPAS,
        "horizontalpodautoscalers",
        NS,
        json!({"metadata": {"name": "app"}, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
            "minReplicas": 4, "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
        }}),
    );
    let w = w.bootstrapped().await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    w.step(0).await;
    let bounds = || {
        let hpa = w
            .fake
            .get(HPAS, "horizontalpodautoscalers", NS, "app")
            .unwrap();
        (
            hpa["spec"]["minReplicas"].as_i64().unwrap(),
            hpa["spec"]["maxReplicas"].as_i64().unwrap(),
        )
    };
    assert_eq!((w.replicas("app"), bounds()), (2, (1, 2)));
    w.kubectl(&["annotate", "deploy", "app", "sluice.dev/canary-"]);
    for _ in 0..5 {
        w.tick().await;
        if w.replicas("app") == 10 {
            break;
        }
        w.fake.make_ready(NS, "app");
    }
    assert_eq!(w.replicas("app"), 10, "scaled back to the primary's count");
    assert_eq!(bounds(), (4, 10), "the user's bounds were back first");
}

/// The pods of Deployment `app` (not the proxy's) running `image`.
fn pods_of(w: &World, image: &str) -> Vec<Value> {
    w.fake
        .names("api/v1", "pods", NS)
        .into_iter()
        .filter_map(|n| w.fake.get("api/v1", "pods", NS, &n))
        .filter(|p| {
            p["spec"]["containers"][0]["image"] == image
                && p["metadata"]["deletionTimestamp"].is_null()
        })
        .collect()
}

/// The `pod-template-hash` of the ReplicaSet of `app` running `image`.
fn replica_set_hash(w: &World, image: &str) -> Value {
    w.fake
        .names(APPS, "replicasets", NS)
        .into_iter()
        .filter_map(|n| w.fake.get(APPS, "replicasets", NS, &n))
        .find(|rs| {
            rs["metadata"]["ownerReferences"][0]["name"] == "app"
                && rs["spec"]["template"]["spec"]["containers"][0]["image"] == image
        })
        .unwrap_or_else(|| panic!("a ReplicaSet of app runs {image}"))["metadata"]["labels"]
        ["pod-template-hash"]
        .clone()
}

/// A rolled-back canary kept up by `abort-scale-down-delay` still has pods
/// (here the newest pod of all: one replaced after a `kubectl delete pod`)
/// when the next revision starts: the canary Service selects the
/// ReplicaSet running the Deployment's current template, never the old
/// revision's pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_service_selects_the_current_replica_set_not_the_newest_pod() {
    let w = World::new(
        3,
        json!({"sluice.dev/abort-scale-down-delay": "10m", "sluice.dev/match": "[{header: x-canary, value: \"1\"}]"}),
    )
    .await
    .bootstrapped()
    .await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail, Outcome::Fail]);
    w.until("Failed", 20).await;
    assert_eq!(w.replicas("app"), 3, "the failed canary is kept up");
    let hash_v2 = replica_set_hash(&w, "app:2");

    w.set_image("app:3");
    // Whole seconds later (creation times have second precision), one of
    // app:2's pods is deleted and replaced: the newest pod is app:2's.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let old = pods_of(&w, "app:2");
    assert!(!old.is_empty(), "app:2 still runs while app:3 rolls out");
    let name = old[0]["metadata"]["name"].as_str().unwrap().to_string();
    w.kubectl(&["delete", "pod", &name, "--wait=false"]);
    let hash_v3 = replica_set_hash(&w, "app:3");
    assert_ne!(hash_v2, hash_v3);
    w.tick().await;
    assert_eq!(w.status().phase, "Initializing", "{:?}", w.status());
    let selected = |w: &World| {
        w.fake.get("api/v1", "services", NS, "app-canary").unwrap()["spec"]["selector"]
            ["pod-template-hash"]
            .clone()
    };
    assert_eq!(
        selected(&w),
        hash_v3,
        "A/B traffic goes to app:3's pods from Initialize on (app:2's is {hash_v2})"
    );
    w.until("Progressing", 20).await;
    assert_eq!(selected(&w), hash_v3);
}

/// A revert to a revision promoted before, in the middle of a release with
/// canary weight and A/B rules: the route is at rest (weight 0, no rule)
/// from the tick that decides it, not only once the primary has rolled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_mid_release_puts_the_route_at_rest_at_once() {
    let w = World::new(
        3,
        json!({"sluice.dev/rollback-window": "2", "sluice.dev/match": "[{header: x-canary, value: \"1\"}]"}),
    )
    .await
    .bootstrapped()
    .await;
    w.set_image("app:2");
    w.until("Succeeded", 40).await;
    w.set_image("app:3");
    w.until("Progressing", 10).await;
    assert_eq!(w.weight(), 20.0);
    assert_eq!(w.config().routes[0].canary_match.len(), 1);

    // Back to app:1 (promoted before app:2, the primary's) mid-release.
    w.set_image("app:1");
    w.tick().await;
    assert_eq!(w.status().phase, "Promoting", "{:?}", w.status());
    assert!(
        w.reasons().iter().any(|(r, _)| r == "RollbackWindow"),
        "{:?}",
        w.reasons()
    );
    assert_eq!(w.weight(), 0.0, "no canary weight while the primary rolls");
    assert!(
        w.config().routes[0].canary_match.is_empty(),
        "no A/B rule while the primary rolls"
    );
    w.until("Succeeded", 20).await;
    assert_eq!(
        w.deployment("app-primary")["spec"]["template"]["spec"]["containers"][0]["image"],
        "app:1"
    );
    assert_eq!(w.replicas("app"), 0);
}

/// A revert to the revision the primary runs in the middle of a release
/// (no rollback window set: it always applies) ends the release at once:
/// the route at rest, no analysis, a `RevertedToStable` Event, the canary
/// kept up per `abort-scale-down-delay` (removing the delay scales it down
/// at once); the revision reverted away from is not held as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_to_the_stable_mid_release_ends_it_at_once_without_analysis() {
    let w = World::new(
        3,
        json!({"sluice.dev/abort-scale-down-delay": "10m", "sluice.dev/match": "[{header: x-canary, value: \"1\"}]"}),
    )
    .await
    .bootstrapped()
    .await;
    let stable = w.status().primary_revision.clone();
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    assert_eq!(w.weight(), 20.0);
    assert_eq!(w.config().routes[0].canary_match.len(), 1);
    let releasing = w.status().revision.clone();

    // Back to app:1, the primary's. Any analysis would fail.
    w.script.lock().unwrap().extend([Outcome::Fail; 10]);
    let analyses_before = w.analyses.load(Ordering::SeqCst);
    w.set_image("app:1");
    w.tick().await;
    let s = w.status();
    assert_eq!(s.phase, "Failed", "{s:?}");
    assert_eq!(s.revision, releasing, "the release that ended is app:2's");
    assert_eq!(s.primary_revision, stable);
    assert_eq!(s.failed_revision, None, "app:2 was not found bad");
    assert!(
        s.message.contains("reverted to the stable revision"),
        "{s:?}"
    );
    assert_eq!(w.weight(), 0.0, "out of the traffic at once");
    assert!(w.config().routes[0].canary_match.is_empty(), "no A/B rule");
    let reverted: Vec<_> = w
        .reasons()
        .into_iter()
        .filter(|(r, _)| r == "RevertedToStable")
        .collect();
    assert_eq!(reverted.len(), 1, "{:?}", w.reasons());
    assert!(reverted[0].1.contains(&stable), "{reverted:?}");
    assert!(
        !w.reasons().iter().any(|(r, _)| r == "RolledBack"),
        "not evented as a failed analysis: {:?}",
        w.reasons()
    );
    assert_eq!(w.replicas("app"), 3, "kept up for its delay");
    assert!(w.status().scale_down_at.is_some());

    // Later ticks: nothing is released (the stable against itself) and
    // nothing analysed.
    for _ in 0..5 {
        w.step(10).await;
        assert_eq!(w.status().phase, "Failed", "{:?}", w.status());
        assert_eq!(w.weight(), 0.0);
    }
    assert_eq!(
        w.analyses.load(Ordering::SeqCst),
        analyses_before,
        "no analysis ran"
    );
    assert_eq!(w.replicas("app"), 3, "the delay is not over");
    assert_eq!(
        w.deployment("app-primary")["spec"]["template"]["spec"]["containers"][0]["image"],
        "app:1"
    );

    // The delay removed: the pending scale-down is due at once.
    w.kubectl(&[
        "annotate",
        "deployment",
        "app",
        "sluice.dev/abort-scale-down-delay-",
    ]);
    w.tick().await;
    assert_eq!(w.replicas("app"), 0);
    assert_eq!(w.status().scale_down_at, None);
    let note = w
        .reasons()
        .into_iter()
        .find(|(r, _)| r == "ScaledDown")
        .expect("a ScaledDown Event")
        .1;
    assert!(note.contains("revert"), "{note}");

    // app:2 again is a new release, not held as failed.
    w.script.lock().unwrap().clear();
    w.set_image("app:2");
    w.tick().await;
    assert_eq!(w.status().phase, "Initializing", "{:?}", w.status());
    w.until("Succeeded", 40).await;
    assert_eq!(
        w.deployment("app-primary")["spec"]["template"]["spec"]["containers"][0]["image"],
        "app:2"
    );
}

/// An experiment's canary kept up by `abort-scale-down-delay` is worded
/// as an experiment's when it goes, and a shortened delay brings its
/// scale-down forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concluded_experiments_canary_goes_when_its_shortened_delay_ends() {
    let w = World::new(
        3,
        json!({"sluice.dev/strategy": "experiment", "sluice.dev/experiment-duration": "30s", "sluice.dev/steps": "25", "sluice.dev/abort-scale-down-delay": "1h"}),
    )
    .await
    .bootstrapped()
    .await;
    w.set_image("app:2");
    w.until("Concluded", 20).await;
    let ended = w.status().machine.unwrap().last_transition_at;
    assert_eq!(w.weight(), 0.0);
    assert_eq!(w.replicas("app"), 3, "kept up for its delay");
    assert_eq!(w.status().scale_down_at, Some(ended + 3600.0));

    // Shortened to 2m, 1m after the end: due 1m later, not in an hour.
    w.advance(60);
    w.kubectl(&[
        "annotate",
        "--overwrite",
        "deployment",
        "app",
        "sluice.dev/abort-scale-down-delay=2m",
    ]);
    let action = w.tick().await;
    assert_eq!(w.status().scale_down_at, Some(ended + 120.0));
    assert_eq!(w.replicas("app"), 3);
    let wait = ended + 120.0 - (w.ctx.now)();
    assert_eq!(action, Action::requeue(Duration::from_secs_f64(wait)));
    w.advance(wait as u64);
    w.tick().await;
    assert_eq!(w.replicas("app"), 0);
    let note = w
        .reasons()
        .into_iter()
        .find(|(r, _)| r == "ScaledDown")
        .expect("a ScaledDown Event")
        .1;
    assert!(note.contains("experiment"), "{note}");
    assert!(!note.contains("rolled-back"), "{note}");
}
