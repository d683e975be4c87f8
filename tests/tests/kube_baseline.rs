//! `sluice.dev/baseline-arm: "true"` in `sluice kube`, against the fake API
//! server (the operator as its own ServiceAccount with the shipped RBAC,
//! people using the real `kubectl`), and the proxy config the operator
//! writes served by a real proxy in front of real backends (cluster DNS
//! stood in for: `app-primary.shop.svc` is the stable backend's address,
//! `app-canary.shop.svc` the canary's, `app-baseline.shop.svc` the
//! baseline arm's).
//!
//! What a user relies on: during a release, Deployment `app-baseline` runs
//! the PRIMARY's pod template (under labels of its own) at the canary's
//! replica count behind Service `app-baseline`, and the proxy route's
//! `baseline` points at it, with the canary's exact share; between
//! releases it runs no pods and no route names it; it goes with
//! everything else when Sluice lets the app go; and a bad value is refused
//! at `kubectl apply` by the admission policy, and by the operator as a
//! Warning Event.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sluice_operator::analysis::{Analysis, CheckResult, Outcome};
use sluice_operator::kube::{self as op, Context, KubeStatus, ReplicaConfig};
use sluice_operator::provider::Provider;
use sluice_proxy::kube_source::digest;
use sluice_tests::fake_kube::{FakeKube, Options};
use sluice_tests::{BackendHandle, TempDir, backend};

const NS: &str = "shop";
const APPS: &str = "apis/apps/v1";

struct World {
    fake: FakeKube,
    ctx: Arc<Context>,
    clock: Arc<AtomicU64>,
    /// Outcomes the next analyses give (then Pass).
    script: Arc<std::sync::Mutex<VecDeque<Outcome>>>,
    dir: TempDir,
}

impl World {
    /// A Deployment `app` with `replicas` and the given annotations (on
    /// top of a quick plan: steps 20,50, 10 s interval, no primary-only
    /// baseline period), behind Service `app`. Every analysis passes.
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
                        "metadata": {"labels": {"app": "app", "tier": "web"}},
                        "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 9898}]}]},
                    },
                },
            }),
        );
        fake.make_ready(NS, "app");
        let clock = Arc::new(AtomicU64::new(1_000_000));
        let mut ctx = Context::new(
            fake.operator_client(),
            "test-operator",
            None,
            "sluice-proxy:test".into(),
        );
        let c = clock.clone();
        ctx.now = Arc::new(move || c.load(Ordering::SeqCst) as f64);
        let script = Arc::new(std::sync::Mutex::new(VecDeque::<Outcome>::new()));
        let scripted = script.clone();
        ctx.make_provider = Arc::new(move |_, _, _| {
            let s = scripted.clone();
            Provider::Scripted(Box::new(move || {
                let outcome = s.lock().unwrap().pop_front().unwrap_or(Outcome::Pass);
                Analysis {
                    canary_requests: Some(100),
                    checks: vec![CheckResult {
                        name: "success-rate".into(),
                        outcome,
                        value: Some(100.0),
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
            dir: TempDir::new("kube-baseline"),
        }
    }

    async fn tick(&self) -> Action {
        let api: Api<Deployment> = Api::namespaced(self.fake.client(), NS);
        let d = api.get("app").await.unwrap();
        op::reconcile(Arc::new(d), self.ctx.clone()).await.unwrap()
    }

    fn deployment(&self, name: &str) -> Option<Value> {
        self.fake.get(APPS, "deployments", NS, name)
    }

    fn replicas(&self, name: &str) -> i64 {
        self.deployment(name).unwrap_or_else(|| panic!("no {name}"))["spec"]["replicas"]
            .as_i64()
            .unwrap()
    }

    fn status(&self) -> KubeStatus {
        KubeStatus::from_primary(
            &serde_json::from_value(self.deployment("app-primary").unwrap()).unwrap(),
        )
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

    fn events(&self) -> Vec<(String, String, String)> {
        self.fake
            .names("apis/events.k8s.io/v1", "events", NS)
            .into_iter()
            .filter_map(|n| self.fake.get("apis/events.k8s.io/v1", "events", NS, &n))
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (text("type"), text("reason"), text("note"))
            })
            .collect()
    }

    /// `kubectl -n shop ARGS...`, as a person types it; (success, output).
    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let kubeconfig = self.dir.path.join("kubeconfig");
        if !kubeconfig.exists() {
            self.fake.kubeconfig(&kubeconfig);
        }
        let out = std::process::Command::new(sluice_tests::kubectl())
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &self.dir.path)
            .args(["-n", NS])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
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

    /// One tick as the cluster moves on: kubelet makes `ready` ready, the
    /// clock advances `secs`.
    async fn step(&self, ready: &[&str], secs: u64) -> Action {
        for d in ready {
            self.fake.make_ready(NS, d);
        }
        self.clock.fetch_add(secs, Ordering::SeqCst);
        self.tick().await
    }

    /// Steps (everything made ready) until the phase is `phase`.
    async fn until(&self, phase: &str, limit: usize) {
        for _ in 0..limit {
            if self.status().phase == phase {
                return;
            }
            self.step(&["app", "app-primary", "app-baseline"], 10).await;
        }
        panic!("never reached {phase}; status: {:?}", self.status());
    }
}

/// A real proxy serving the config the operator wrote, with the in-cluster
/// names resolved to the test's backends.
async fn serve(
    config: &sluice_proxy::Config,
    stable: &BackendHandle,
    canary: &BackendHandle,
    baseline: &BackendHandle,
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
        if let Some(b) = &mut route.baseline {
            assert_eq!(b, "http://app-baseline.shop.svc:80");
            *b = baseline.url();
        }
    }
    sluice_proxy::start(config, sluice_proxy::StartOptions::default())
        .await
        .expect("the operator's config starts a proxy")
}

/// Which backends answered `n` GETs through `proxy`: (stable, canary, baseline).
async fn answers(proxy: &sluice_proxy::ProxyHandle, n: usize) -> (usize, usize, usize) {
    let mut seen = (0, 0, 0);
    for _ in 0..n {
        let (status, headers, _) = sluice_tests::get(&format!("http://{}/", proxy.addr))
            .await
            .unwrap();
        assert_eq!(status, 200);
        match headers["x-backend"].to_str().unwrap() {
            "stable" => seen.0 += 1,
            "canary" => seen.1 += 1,
            "baseline" => seen.2 += 1,
            other => panic!("answered by {other}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baseline_arm_runs_the_primarys_template_at_the_canarys_size_only_during_a_release() {
    let w = World::new(3, json!({"sluice.dev/baseline-arm": "true"}))
        .await
        .bootstrapped()
        .await;
    // Between releases no route names a baseline arm, and none runs.
    assert!(w.config().routes[0].baseline.is_none());
    assert!(
        w.deployment("app-baseline")
            .is_none_or(|b| b["spec"]["replicas"] == 0)
    );

    w.set_image("app:2");
    // The release starts; the baseline arm is not made ready yet.
    for _ in 0..4 {
        w.step(&["app", "app-primary"], 1).await;
    }
    let status = w.status();
    assert_eq!(status.phase, "Initializing", "{status:?}");
    assert!(
        status
            .message
            .contains("waiting for the baseline arm app-baseline to become ready"),
        "{status:?}"
    );
    let baseline = w
        .deployment("app-baseline")
        .expect("Deployment app-baseline");
    assert_eq!(
        baseline["spec"]["replicas"],
        w.replicas("app"),
        "the canary's size"
    );
    assert_eq!(w.replicas("app"), 3);
    let template = &baseline["spec"]["template"];
    assert_eq!(
        template["spec"]["containers"][0]["image"], "app:1",
        "the primary's version, not the canary's"
    );
    assert_eq!(
        template["metadata"]["labels"],
        json!({"app": "app-baseline", "tier": "web"}),
        "its own pod label: Service app-primary never selects it"
    );
    assert_eq!(
        baseline["spec"]["selector"],
        json!({"matchLabels": {"app": "app-baseline"}})
    );
    let primary = w.deployment("app-primary").unwrap();
    assert_eq!(
        primary["spec"]["template"]["spec"], template["spec"],
        "the primary's pod spec, as it runs"
    );
    let service = w
        .fake
        .get("api/v1", "services", NS, "app-baseline")
        .expect("Service app-baseline");
    assert_eq!(service["spec"]["selector"], json!({"app": "app-baseline"}));
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    let route = &w.config().routes[0];
    assert_eq!(
        route.baseline.as_deref(),
        Some("http://app-baseline.shop.svc:80")
    );
    assert_eq!(route.canary_weight, 0.0);

    // Once the baseline arm is ready, the release moves on: at 20% the
    // real proxy gives the baseline arm exactly the canary's share.
    w.until("Progressing", 10).await;
    assert_eq!(w.config().routes[0].canary_weight, 20.0);
    // People see the arm: `kubectl sluice describe` prints this beside
    // the strategy.
    assert_eq!(w.status().traffic, "baseline arm");
    let (stable, canary, baseline_backend) = (
        backend("stable").await,
        backend("canary").await,
        backend("baseline").await,
    );
    let proxy = serve(&w.config(), &stable, &canary, &baseline_backend).await;
    assert_eq!(answers(&proxy, 100).await, (60, 20, 20));
    drop(proxy);

    // The canary's size changes mid-release (its HPA): the arm follows.
    w.fake.merge_into(
        APPS,
        "deployments",
        NS,
        "app",
        json!({"spec": {"replicas": 5}}),
    );
    w.step(&["app", "app-primary", "app-baseline"], 0).await;
    assert_eq!(w.replicas("app-baseline"), 5);
    // Deleted mid-release (a GitOps prune): started again.
    w.fake.delete(APPS, "deployments", NS, "app-baseline");
    w.step(&["app", "app-primary"], 0).await;
    let again = w.deployment("app-baseline").expect("started again");
    assert_eq!(again["spec"]["replicas"], 5);
    assert_eq!(
        again["spec"]["template"]["spec"]["containers"][0]["image"],
        "app:1"
    );

    w.until("Succeeded", 20).await;
    // Promoted: no route names it, and it runs no pods.
    let route = &w.config().routes[0];
    assert!(route.baseline.is_none(), "{route:?}");
    assert_eq!(route.canary_weight, 0.0);
    assert_eq!(w.replicas("app-baseline"), 0);
    let proxy = serve(&w.config(), &stable, &canary, &baseline_backend).await;
    assert_eq!(answers(&proxy, 20).await, (20, 0, 0));
    drop(proxy);

    // The next release starts it again, from the primary's new template.
    w.set_image("app:3");
    w.until("Progressing", 10).await;
    let b = w.deployment("app-baseline").unwrap();
    assert_eq!(
        b["spec"]["template"]["spec"]["containers"][0]["image"],
        "app:2"
    );
    assert_eq!(b["spec"]["replicas"], w.replicas("app"));
    assert!(w.config().routes[0].baseline.is_some());

    // Sluice lets the app go: the baseline arm goes with everything else.
    let (ok, out) = w.kubectl(&["annotate", "deploy", "app", "sluice.dev/canary-"]);
    assert!(ok, "{out}");
    for _ in 0..30 {
        if w.deployment("app-primary").is_none() {
            break;
        }
        w.step(&["app", "app-primary", "app-baseline"], 1).await;
    }
    assert!(w.deployment("app-primary").is_none(), "cleanup finished");
    assert!(w.deployment("app-baseline").is_none());
    assert!(
        w.fake
            .get("api/v1", "services", NS, "app-baseline")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_release_takes_the_arm_off_the_route_and_turning_it_off_removes_it() {
    let w = World::new(2, json!({"sluice.dev/baseline-arm": "true"}))
        .await
        .bootstrapped()
        .await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    assert!(w.config().routes[0].baseline.is_some());
    assert_eq!(w.replicas("app-baseline"), 2);
    // The canary fails its checks (failure limit 2): rolled back.
    w.script
        .lock()
        .unwrap()
        .extend([Outcome::Fail, Outcome::Fail, Outcome::Fail]);
    w.until("Failed", 10).await;
    let route = &w.config().routes[0];
    assert!(route.baseline.is_none(), "{route:?}");
    assert_eq!(route.canary_weight, 0.0);
    assert_eq!(w.replicas("app-baseline"), 0);
    // Turned off between releases: its Deployment and Service go.
    let (ok, out) = w.kubectl(&[
        "annotate",
        "deploy",
        "app",
        "sluice.dev/baseline-arm=false",
        "--overwrite",
    ]);
    assert!(ok, "{out}");
    w.step(&[], 1).await;
    assert!(w.deployment("app-baseline").is_none());
    assert!(
        w.fake
            .get("api/v1", "services", NS, "app-baseline")
            .is_none()
    );
    // The next release runs without one.
    w.set_image("app:3");
    w.until("Progressing", 10).await;
    assert!(w.config().routes[0].baseline.is_none());
    assert!(w.deployment("app-baseline").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_baseline_arm_is_refused_at_apply_and_as_a_warning_event() {
    // The operator's own check: a value it cannot use is a Warning Event
    // naming the annotation, and nothing is created.
    let w = World::new(
        2,
        json!({"sluice.dev/baseline-arm": "true", "sluice.dev/steps": "20,60"}),
    )
    .await;
    w.tick().await;
    assert!(w.deployment("app-primary").is_none(), "nothing was created");
    assert!(w.deployment("app-baseline").is_none());
    let events = w.events();
    assert!(
        events.iter().any(|(ty, reason, note)| ty == "Warning"
            && reason == "InvalidAnnotation"
            && note.contains("sluice.dev/baseline-arm")
            && note.contains("every weight must be at most 50")
            && note.contains("60")),
        "{events:?}"
    );
    // The admission policy, installed as a user does (`kubectl apply -k
    // deploy/operator` into a cluster of its own), refuses the same at
    // `kubectl apply`, naming it.
    let fake = FakeKube::start_with(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    fake.create_namespace("shop");
    let kubeconfig = w.dir.path.join("policy-kubeconfig");
    fake.kubeconfig(&kubeconfig);
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new(sluice_tests::kubectl())
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", &w.dir.path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = kubectl(&[
        "apply",
        "-k",
        &sluice_tests::workspace_root()
            .join("deploy/operator")
            .display()
            .to_string(),
    ]);
    assert!(ok, "kubectl apply -k deploy/operator: {out}");
    for (annotations, what) in [
        (json!({"sluice.dev/baseline-arm": "yes"}), "`yes`"),
        (
            json!({"sluice.dev/baseline-arm": "true", "sluice.dev/steps": "20,60"}),
            "`true`",
        ),
        (
            json!({"sluice.dev/baseline-arm": "true", "sluice.dev/strategy": "blue-green"}),
            "`true`",
        ),
    ] {
        let mut ann = json!({"sluice.dev/canary": "enabled"});
        sluice_tests::fake_kube::merge(&mut ann, &annotations);
        let manifest = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "other", "annotations": ann},
            "spec": {"selector": {"matchLabels": {"app": "other"}}, "template": {
                "metadata": {"labels": {"app": "other"}},
                "spec": {"containers": [{"name": "a", "image": "a:1"}]}}},
        });
        let file = w.dir.path.join("other.json");
        std::fs::write(&file, manifest.to_string()).unwrap();
        let (ok, out) = kubectl(&["apply", "-f", &file.display().to_string()]);
        assert!(!ok, "{annotations} was admitted: {out}");
        assert!(
            out.contains(&format!(
                "annotation sluice.dev/baseline-arm: {what} is invalid"
            )),
            "{annotations}: {out}"
        );
    }
    // A good one is admitted.
    let file = w.dir.path.join("good.json");
    std::fs::write(
        &file,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "good", "annotations": {"sluice.dev/canary": "enabled", "sluice.dev/baseline-arm": "true", "sluice.dev/steps": "10,25,50"}},
            "spec": {"selector": {"matchLabels": {"app": "good"}}, "template": {
                "metadata": {"labels": {"app": "good"}},
                "spec": {"containers": [{"name": "a", "image": "a:1"}]}}},
        })
        .to_string(),
    )
    .unwrap();
    let (ok, out) = kubectl(&["apply", "-f", &file.display().to_string()]);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_the_arm_on_mid_release_applies_from_the_next_release() {
    let w = World::new(2, json!({})).await.bootstrapped().await;
    w.set_image("app:2");
    w.until("Progressing", 10).await;
    let (ok, out) = w.kubectl(&["annotate", "deploy", "app", "sluice.dev/baseline-arm=true"]);
    assert!(ok, "{out}");
    // The release under way keeps running without one: no route names
    // an arm that was never started.
    w.until("Succeeded", 20).await;
    assert!(w.deployment("app-baseline").is_none());
    assert!(w.config().routes[0].baseline.is_none());
    // The next release has one.
    w.set_image("app:3");
    w.until("Progressing", 10).await;
    assert_eq!(w.replicas("app-baseline"), 2);
    assert_eq!(
        w.config().routes[0].baseline.as_deref(),
        Some("http://app-baseline.shop.svc:80")
    );
    assert!(w.status().baseline_arm);
}
